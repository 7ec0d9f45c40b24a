"""The graph checker on graphs built to break each rule."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastervit_deploy.graph.inspect import inspect_model


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def tensor(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def finding(model, check):
    return next(f for f in inspect_model(model).findings if f.check == check)


def attention_model(scale_first=True, bias_const=True):
    """x [B,4,8] → q=k=v=x; Mul(q, s) → MatMul(kᵀ) → Add(bias) → Softmax → MatMul(v)."""
    nodes = [helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 2, 1])]
    if scale_first:
        nodes += [helper.make_node("Mul", ["x", "scale"], ["qs"]), helper.make_node("MatMul", ["qs", "kt"], ["a"])]
    else:
        nodes += [helper.make_node("MatMul", ["x", "kt"], ["a0"]), helper.make_node("Mul", ["a0", "scale"], ["a"])]
    inits = [const("scale", np.float32(0.5))]
    if bias_const:
        inits.append(const("bias", np.zeros((1, 4, 4), np.float32)))
        nodes.append(helper.make_node("Add", ["a", "bias"], ["ab"]))
    else:
        nodes += [helper.make_node("ReduceSum", ["x"], ["bias"], keepdims=1), helper.make_node("Add", ["a", "bias"], ["ab"])]
    nodes += [helper.make_node("Softmax", ["ab"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "x"], ["y"])]
    return make_model(nodes, [tensor("x", ["batch", 4, 8])], [tensor("y", ["batch", 4, 8])], inits)


def test_good_attention_pattern_passes():
    report = inspect_model(attention_model())
    assert report.attention_blocks == 1
    assert finding(attention_model(), "attention").ok


def test_scale_after_qk_is_flagged():
    f = finding(attention_model(scale_first=False), "attention")
    assert not f.ok and "scale is applied after q·kᵀ" in f.detail


def test_runtime_bias_is_flagged():
    f = finding(attention_model(bias_const=False), "attention")
    assert not f.ok and "not a constant" in f.detail


def test_shape_driven_reshape_and_batchnorm_are_flagged():
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("Shape", ["bn"], ["shape"]),
        helper.make_node("Reshape", ["bn", "shape"], ["y"]),
    ]
    inits = [const(n, np.ones(3, np.float32)) for n in "sbmv"]
    model = make_model(nodes, [tensor("x", ["batch", 3, 4, 4])], [tensor("y", ["batch", 3, 4, 4])], inits)
    assert not finding(model, "forbidden-ops").ok
    assert "BatchNormalization x1" in finding(model, "forbidden-ops").detail
    f = finding(model, "runtime-shapes")
    assert not f.ok and "Reshape" in f.detail
    assert not inspect_model(model).passed


def test_rank_6_tensor_is_flagged():
    nodes = [helper.make_node("Reshape", ["x", "shape6"], ["r"]), helper.make_node("Reshape", ["r", "shape4"], ["y"])]
    inits = [const("shape6", np.array([-1, 1, 2, 2, 2, 2], np.int64)), const("shape4", np.array([-1, 1, 4, 4], np.int64))]
    model = make_model(nodes, [tensor("x", ["batch", 1, 4, 4])], [tensor("y", ["batch", 1, 4, 4])], inits)
    f = finding(model, "rank")
    assert not f.ok and "rank > 5" in f.detail
    assert finding(model, "runtime-shapes").ok


def test_fixed_batch_and_decomposed_layernorm_and_foreign_ops():
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["p"]),
        helper.make_node("NonMaxSuppression", ["p", "p"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 3, 4, 4])], [const("two", np.float32(2))])
    assert not finding(model, "io").ok and "not symbolic" in finding(model, "io").detail
    assert not finding(model, "layernorm").ok
    f = finding(model, "tensorrt-ops")
    assert not f.ok and "NonMaxSuppression" in f.detail


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x08\x01garbage"])
def test_non_onnx_files_are_rejected(tmp_path, content):
    from fastervit_deploy.system.errors import FvdeployError
    from fastervit_deploy.graph.inspect import inspect_path

    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(FvdeployError, match="is not an ONNX model"):
        inspect_path(path)
