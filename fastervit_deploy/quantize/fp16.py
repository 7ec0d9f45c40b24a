"""FP16 lowering with NVIDIA ModelOpt AutoCast, TensorRT 11's documented FP16 route.

Compared with fvdeploy's own converter on FasterViT-0 224 and the card model 576x960 (README,
"Precision policy"): the same graph (742/740 nodes, 76 Casts, 37 LayerNorms in fp32, fp32 inputs and
outputs), the same parity (max |Δ| 6.2e-4 vs 5.9e-4 on photos, cosine 1.000000), both pass the policy
checks; AutoCast takes 17-21 s where ours took 1 s. It met our checks, so it is the one converter.

* FP16 graphs: ``convert_to_mixed_precision`` with the policy's fp32 op types excluded, fp32 I/O, and
  real images as its reference data: a node whose values exceed fp16's safe range there stays fp32
  (recorded, and accepted by the precision check).
* The float part of INT8 graphs: ``convert_to_f16``, what ModelOpt's own INT8 path runs, so both INT8
  backends lower the same way.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx

from ..core.dtypes import onnx_precision
from ..core.precision import FP32_OPS
from ..system.errors import MissingDependency


def quiet_modelopt() -> None:
    """ModelOpt sets its loggers to INFO/WARNING on import and logs every node: keep errors only."""
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("modelopt")] + ["modelopt"]:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _autocast():
    """ModelOpt's AutoCast module, quiet."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            from modelopt.onnx.autocast import convert as autocast

            quiet_modelopt()
            yield autocast
    except ImportError as err:
        raise MissingDependency(f"FP16 and INT8 graphs are lowered with NVIDIA ModelOpt AutoCast, which needs "
                                f"nvidia-modelopt and polygraphy (`make install` installs them): {err.name} is missing") from err


def convert_to_fp16(source: Path, reference: np.ndarray, workdir: Path,
                    keep_fp32: tuple[str, ...] = FP32_OPS) -> onnx.ModelProto:
    """The FP16 graph of ``source``; ``reference`` (real inputs) drives AutoCast's overflow guard."""
    model = onnx.load(str(source), load_external_data=False)
    data = workdir / "reference.npz"
    np.savez(data, **{model.graph.input[0].name: reference})
    with _autocast() as autocast:
        lowered = autocast.convert_to_mixed_precision(str(source), "fp16", op_types_to_exclude=list(keep_fp32),
                                                      keep_io_types=True, calibration_data=str(data),
                                                      providers=["cpu"])
    return lowered


def lower_float_part(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = FP32_OPS) -> onnx.ModelProto:
    """A Q/DQ graph's float part to FP16 (``keep_fp32`` op types excepted), fp32 I/O kept."""
    with _autocast() as autocast:
        return autocast.convert_to_f16(model, keep_io_types=True, op_block_list=list(keep_fp32))


def float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of initializer element types by precision (to report what a conversion produced)."""
    return dict(collections.Counter(p for p in (onnx_precision(t.data_type) for t in model.graph.initializer) if p))
