"""State_dict compatibility with every released variant (official key lists in the spec)."""

import argparse
import ast
import re

import pytest
import torch

from fastervit import build_meta, create_model, load_checkpoint

from .helpers import KEYS

KEY_FILES = sorted(KEYS.glob("*.txt")) if KEYS.is_dir() else []
pytestmark = pytest.mark.skipif(not KEY_FILES, reason=f"no key lists at {KEYS}")


def read_keys(path):
    lines = path.read_text().splitlines()
    name, kwargs = re.match(r"# model=(\S+) kwargs=(.*)", lines[0]).groups()
    total = int(lines[2].split("=")[1])
    keys = {}
    for line in lines[3:]:
        key, shape, dtype, _ = line.split("\t")
        keys[key] = (tuple(ast.literal_eval(shape)), dtype)
    return name, ast.literal_eval(kwargs), total, keys


@pytest.mark.parametrize("path", KEY_FILES, ids=lambda p: p.stem)
def test_keys_shapes_and_param_count(path):
    name, kwargs, total, ref = read_keys(path)
    model = build_meta(name, **kwargs)  # meta device: the 1.3 B-parameter variants cost nothing
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert list(ours) == list(ref)  # same names in the same order
    assert ours == ref
    assert model.num_params() == total


@pytest.mark.parametrize("stem", ["faster_vit_0_224", "faster_vit_0_any_res_576x960_w7-7-12-6"])
def test_strict_load_of_state_dict_built_from_key_list(stem, tmp_path):
    name, kwargs, _, ref = read_keys(KEYS / f"{stem}.txt")
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=g) if dt == "float32" else torch.zeros(shape, dtype=torch.int64)
             for k, (shape, dt) in ref.items()}
    for k in state:  # the tokenizer conv is one tensor under two names
        if ".to_global_feature.pos." in k:
            state[k] = state[k.replace("to_global_feature.pos", "pos_embed")]
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 3, "state_dict": state, "args": argparse.Namespace(lr=0.005, model=name)}, path)
    model = create_model(name, **kwargs)
    report = load_checkpoint(model, path)
    derived = [k for k in ref if k.rsplit(".", 1)[-1] in ("relative_coords_table", "relative_position_index", "relative_bias")]
    assert report.loaded == len(ref) - len(derived)
    assert not report.dropped and not report.recomputed
    loaded = model.state_dict()
    for k in ref:
        if k not in derived:
            assert torch.equal(loaded[k], state[k]), k
