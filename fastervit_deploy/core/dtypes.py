"""Element types, one table: fvdeploy's names and what ONNX, onnxruntime, Triton, torch and TensorRT call them."""

from __future__ import annotations

from dataclasses import dataclass

from ..system.errors import FvdeployError


@dataclass(frozen=True)
class DType:
    name: str  # numpy's name, and fvdeploy's (records, TensorSpec)
    onnx: int  # onnx.TensorProto.DataType value
    ort: str  # onnxruntime's NodeArg.type
    triton: str | None  # config.pbtxt data_type
    torch: str | None  # attribute of the torch module
    tensorrt: str | None  # attribute of the tensorrt module
    precision: str | None = None  # the compute precision a float tensor of this type implies


TABLE = (
    DType("float32", 1, "tensor(float)", "TYPE_FP32", "float32", "float32", "fp32"),
    DType("float16", 10, "tensor(float16)", "TYPE_FP16", "float16", "float16", "fp16"),
    DType("bfloat16", 16, "tensor(bfloat16)", "TYPE_BF16", "bfloat16", "bfloat16", "bf16"),
    DType("uint8", 2, "tensor(uint8)", "TYPE_UINT8", "uint8", "uint8"),
    DType("int8", 3, "tensor(int8)", "TYPE_INT8", "int8", "int8", "int8"),
    DType("int32", 6, "tensor(int32)", "TYPE_INT32", "int32", "int32"),
    DType("int64", 7, "tensor(int64)", "TYPE_INT64", "int64", "int64"),
    DType("bool", 9, "tensor(bool)", "TYPE_BOOL", "bool", "bool"),
    DType("float8_e4m3fn", 17, "tensor(float8e4m3fn)", None, "float8_e4m3fn", "fp8", "fp8"),
)
_BY = {key: {getattr(d, key): d for d in TABLE} for key in ("name", "onnx", "ort", "triton")}


def _find(key: str, value) -> DType:
    try:
        return _BY[key][value]
    except KeyError as err:
        raise FvdeployError(f"element type {value!r} is not one fvdeploy handles") from err


def by_name(name: str) -> DType:
    return _find("name", name)


def from_onnx(elem_type: int) -> DType:
    return _find("onnx", elem_type)


def from_ort(type_text: str) -> DType:
    return _find("ort", type_text)


def from_triton(type_text: str) -> DType:
    return _find("triton", type_text)


def onnx_precision(elem_type: int) -> str | None:
    """``fp32``/``fp16``/... for a float ONNX element type, None for the others."""
    dtype = _BY["onnx"].get(elem_type)
    return dtype.precision if dtype is not None else None


def torch_dtype(name: str):
    import torch

    return getattr(torch, by_name(name).torch)


def from_tensorrt(trt, dtype) -> DType:
    """The row of a ``tensorrt.DataType`` (TensorRT 10 and 11 name their types like this table)."""
    for d in TABLE:
        if d.tensorrt and getattr(trt, d.tensorrt, None) == dtype:
            return d
    raise FvdeployError(f"TensorRT type {dtype} is not one fvdeploy handles")
