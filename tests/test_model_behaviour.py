"""Export-friendliness by construction, geometry validation, training mode."""

import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fastervit import UnsupportedResolutionError, create_model, list_models, suggest_windows
from fastervit.registry import build_meta

from .helpers import TINY


class RankRecorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.max_rank = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_rank = max(self.max_rank, t.ndim)
        return out


def test_registry_lists_every_released_variant():
    names = list_models()
    for n in [f"faster_vit_{i}_224" for i in range(7)] + [f"faster_vit_{i}_any_res" for i in range(7)] + \
             [f"faster_vit_4_21k_{r}" for r in (224, 384, 512, 768)]:
        assert n in names
    assert list_models("faster_vit_4_21k_*") == sorted(n for n in names if n.startswith("faster_vit_4_21k_"))


@pytest.mark.parametrize("name,kw", [("faster_vit_0_224", {}), ("faster_vit_3_224", {}),
                                     ("faster_vit_0_any_res", dict(resolution=[160, 288], window_size=[7, 7, 12, 6]))])
def test_no_tensor_above_rank_5_and_no_tracer_warnings(name, kw):
    overrides = {**TINY, **kw} if name != "faster_vit_3_224" else {**TINY, "layer_scale": 1e-5, "do_propagation": True}
    model = create_model(name, **overrides).deploy()
    x = torch.randn(2, 3, *model.input_size)
    rec = RankRecorder()
    with rec, torch.no_grad():
        model(x)
    assert rec.max_rank <= 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    with torch.no_grad():  # the trace generalises over the batch: no batch size was frozen
        y = torch.randn(3, 3, *model.input_size)
        assert torch.allclose(traced(y), model(y), atol=1e-5)


def test_wrong_input_size_is_a_clear_error():
    model = create_model("faster_vit_0_224", **TINY)
    with pytest.raises(ValueError, match=r"expected input \[B, 3, 224, 224\].*got \[1, 3, 448, 448\]"):
        model(torch.randn(1, 3, 448, 448))


def test_impossible_resolutions_explain_what_works():
    with pytest.raises(UnsupportedResolutionError, match=r"not a multiple of its window 7.*sizes that work nearby: 224x224"):
        build_meta("faster_vit_0_224", resolution=240)
    with pytest.raises(ValueError, match="resolution must be positive"):
        build_meta("faster_vit_0_any_res", resolution=[-1, 960])


def test_window_suggestion_divides_stage_maps():
    assert suggest_windows((576, 960)) == [7, 7, 6, 6]  # maps 36x60 and 18x30
    assert suggest_windows((224, 224)) == [7, 7, 7, 7]
    assert suggest_windows((544, 544)) == [7, 7, 7, 7]  # 34x34 and 17x17: no divisor in 3..16, keep 7 and pad
    assert suggest_windows((512, 512)) == [7, 7, 8, 8]  # 32x32 and 16x16


def test_any_res_padding_and_non_square_carriers():
    model = build_meta("faster_vit_0_any_res")  # 576x960, w=7: pads 36x60 -> 42x63
    s2, s3 = model.plans[2], model.plans[3]
    assert s2.pad == (6, 3) and s2.windows == (6, 9) and s2.carrier_grid == (6, 9)
    assert s2.pool_kernel == (9, 12) and s2.pool_stride == (3, 3)
    assert s3.pad == (3, 5) and not s3.has_carriers


def test_training_mode_drop_path_is_stochastic_and_backpropagates():
    torch.manual_seed(0)
    model = create_model("faster_vit_0_224", **{**TINY, "drop_path_rate": 0.5}).train()
    x = torch.randn(4, 3, 224, 224)
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
