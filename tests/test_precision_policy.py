"""The precision policy's checks on hand-built graphs: one that follows it, and one breaking each rule."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastervit_deploy.tensorrt.audit import audit, datatype, precision_counts
from fastervit_deploy.graph.inspect import inspect_model
from fastervit_deploy.graph.placement import plan_placement
from fastervit_deploy.graph.policy_checks import check_precision, check_qdq

C = 8


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


class Block:
    """x → LayerNorm → [Q/DQ] MatMul(W, per-channel) + b → residual Add (skip x [Q/DQ]) → attention → head.

    ``breaks`` names the rule to break; without any, the graph follows the policy."""

    def __init__(self, *breaks: str) -> None:
        self.breaks, self.nodes, self.inits, self.n = set(breaks), [], [], 0
        rng = np.random.default_rng(0)
        add = self.inits.append
        add(_const("ln_s", np.ones(C, np.float32)))
        add(_const("ln_b", np.zeros(C, np.float32)))
        add(_const("W", rng.standard_normal((C, C)).astype(np.float32)))
        add(_const("b", np.zeros(C, np.float32)))
        add(_const("Wh", rng.standard_normal((C, 4)).astype(np.float32)))
        add(_const("axes", np.array([1], np.int64)))
        ln_in = self.qdq("x") if "ln_input" in breaks else "x"
        self.node("LayerNormalization", [ln_in, "ln_s", "ln_b"], ["ln"], axis=-1)
        act = "ln" if "half_weight_only" in breaks else self.qdq("ln")
        weight = "W" if "half" in breaks else self.qdq_weight("W", per_tensor="per_tensor_weight" in breaks)
        self.node("MatMul", [act, weight], ["mm"], name="fc")
        self.node("Add", ["mm", "b"], ["branch"])
        skip = self.qdq("x", zero_point=3 if "zero_point" in breaks else 0)
        branch = self.qdq("branch") if "branch" in breaks else "branch"
        self.node("Add", [skip, branch], ["res"], name="residual")
        attn_in = self.qdq("res") if "attention" in breaks else "res"
        self.node("Transpose", [attn_in], ["resT"], perm=[0, 2, 1])
        self.node("MatMul", [attn_in, "resT"], ["scores"])
        soft_in = self.qdq("scores") if "softmax_input" in breaks else "scores"
        self.node("Softmax", [soft_in], ["probs"], axis=-1)
        self.node("MatMul", ["probs", "res"], ["ctx"])
        self.node("ReduceMean", ["ctx", "axes"], ["pooled"], keepdims=0)
        head_in, head_w = (self.qdq("pooled"), self.qdq_weight("Wh")) if "head" in breaks else ("pooled", "Wh")
        self.node("MatMul", [head_in, head_w], ["logits"])
        if "no_qdq" in breaks:
            self.strip_qdq()

    def node(self, op, inputs, outputs, name=None, **attrs):
        self.n += 1
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or f"{op}_{self.n}", **attrs))

    def qdq(self, tensor, zero_point=0):
        k = self.n = self.n + 1
        s, z, q, dq = f"s{k}", f"z{k}", f"{tensor}_q{k}", f"{tensor}_dq{k}"
        self.inits += [_const(s, np.float32(0.05)), _const(z, np.int8(zero_point))]
        self.node("QuantizeLinear", [tensor, s, z], [q])
        self.node("DequantizeLinear", [q, s, z], [dq])
        return dq

    def qdq_weight(self, name, per_tensor=False):
        w = next(numpy_helper.to_array(t) for t in self.inits if t.name == name)
        scale = np.abs(w).max(0) / 127 if not per_tensor else np.float32(np.abs(w).max() / 127)
        q = np.round(w / scale).astype(np.int8)
        self.inits += [_const(f"{name}_i8", q), _const(f"{name}_s", scale.astype(np.float32)),
                       _const(f"{name}_z", np.zeros(np.shape(scale), np.int8))]
        attrs = {} if per_tensor else {"axis": 1}
        self.node("DequantizeLinear", [f"{name}_i8", f"{name}_s", f"{name}_z"], [f"{name}_dq"], **attrs)
        return f"{name}_dq"

    def strip_qdq(self):
        rename = {}
        for n in self.nodes:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                rename[n.output[0]] = rename.get(n.input[0], n.input[0])
        self.nodes = [n for n in self.nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        for n in self.nodes:
            n.input[:] = [rename.get(i, i) for i in n.input]

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, C])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 4])], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_a_graph_that_follows_the_policy_passes():
    model = Block().model()
    onnx.checker.check_model(model)
    finding = check_qdq(model)
    assert finding.ok, finding.detail
    assert (finding.facts["quantized_ops"], finding.facts["weighted_ops"], finding.facts["qdq_pairs"]) == (1, 1, 2)
    assert inspect_model(model, expect="int8").finding("qdq-placement").ok


def test_the_policy_places_the_same_as_the_good_graph():
    placement = plan_placement(Block("no_qdq").model())
    assert placement.ops == ("fc",)  # the weighted MatMul; not the head, not attention
    assert placement.residual_adds == {"residual": 0}  # Q/DQ on the skip (input 0), not the branch


@pytest.mark.parametrize("rule,message", [
    ("half", "half-quantized fc (activation only)"),
    ("half_weight_only", "half-quantized fc (weight only)"),
    ("per_tensor_weight", "weight scales must be per output channel (axis 1, 8 scales)"),
    ("zero_point", "zero point must be int8 0"),
    ("ln_input", "Q/DQ on a LayerNormalization input"),
    ("softmax_input", "Q/DQ on a Softmax input"),
    ("attention", "Q/DQ on a MatMul input"),
    ("branch", "Q/DQ on the branch input of a residual Add"),
    ("head", "the classifier head is quantized"),
])
def test_each_broken_rule_is_a_failing_finding(rule, message):
    finding = check_qdq(Block(rule).model())
    assert not finding.ok and message in finding.detail, finding.detail


def test_an_int8_label_without_qdq_fails():
    report = inspect_model(Block("no_qdq").model(), expect="int8")
    assert not report.finding("qdq-placement").ok and "labelled int8 but has no Q/DQ" in report.failure_summary()


def fp16_graph(ln="fp32", out="fp32", relu="fp16"):
    """x (fp32) → Cast → LayerNorm → Relu → Cast → y, each part in the named precision."""
    t = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}
    nodes = [helper.make_node("Cast", ["x"], ["x_ln"], to=t[ln], name="cast_in"),
             helper.make_node("LayerNormalization", ["x_ln", "s", "b"], ["ln"], axis=-1, name="ln"),
             helper.make_node("Cast", ["ln"], ["ln_r"], to=t[relu], name="cast_mid"),
             helper.make_node("Relu", ["ln_r"], ["r"], name="relu"),
             helper.make_node("Cast", ["r"], ["y"], to=t[out], name="cast_out")]
    inits = [numpy_helper.from_array(np.ones(4, np.float32 if ln == "fp32" else np.float16), n) for n in ("s", "b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", t[out], ["b", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_precision_finding():
    good = check_precision(fp16_graph())
    assert good.ok and (good.facts["layernorm_fp32"], good.facts["fp16_ops"]) == (1, 1)
    ln16 = check_precision(fp16_graph(ln="fp16"))
    assert not ln16.ok and "ln (LayerNormalization) computes in fp16 (policy: fp32)" in ln16.detail
    out16 = check_precision(fp16_graph(out="fp16"))
    assert not out16.ok and "graph output y is not fp32" in out16.detail
    relu32 = check_precision(fp16_graph(relu="fp32"))
    assert not relu32.ok and "relu (Relu) computes in fp32 (policy: fp16)" in relu32.detail
    # A node the FP16 lowering recorded as kept in fp32 (its overflow guard) is accepted.
    assert check_precision(fp16_graph(relu="fp32"), allowed_fp32=("relu",)).ok


LAYER_INFO = {"Layers": [
    {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [8, 3, 224, 224], "Format/Datatype": "Int8"}],
     "Outputs": [{"Name": "y", "Location": "Device", "Dimensions": [8, 64, 56, 56], "Format/Datatype": "Int8 NC/32HW32"}],
     "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32"},
    {"Name": "Reformatting CopyNode for Input Tensor 0 to ln", "LayerType": "Reformat",
     "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}], "Outputs": []},
    {"Name": "ln", "LayerType": "Normalization",
     "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32 format"}], "Outputs": []},
    {"Name": "{ForeignNode[attention]}", "LayerType": "Myelin",
     "Inputs": [{"Name": "y", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}], "Outputs": []},
    {"Name": "head", "LayerType": "gemm", "Inputs": [{"Name": "p", "Format/Datatype": "Half"}], "Outputs": []},
], "Bindings": ["x", "logits"]}


def test_engine_audit_counts_layer_precisions_from_tensorrt_layer_information():
    assert [datatype(s) for s in ("Int8 NC/32HW32", "Half", "Row major linear FP32 format", "Float",
                                  "Channel major FP16 format where channel % 8 == 0")] == ["int8", "fp16", "fp32", "fp32", "fp16"]
    counts = precision_counts(LAYER_INFO)
    assert counts["compute"] == {"int8": 1, "fp32": 1, "fp16": 2} and counts["all"]["fp16"] == 3
    assert audit(LAYER_INFO, "int8").passed and audit(json_text := __import__("json").dumps(LAYER_INFO), "fp16").passed
    assert json_text


def test_engine_audit_refuses_a_silent_fp32_fallback():
    fp32 = {"Layers": [{"Name": f"l{i}", "LayerType": "CaskConvolution",
                        "Inputs": [{"Format/Datatype": "Row major linear FP32 format"}]} for i in range(5)]}
    report = audit(fp32, "int8")
    assert not report.passed
    assert "an --int8 engine without INT8 layers" in report.failure_summary()
    assert "the engine is mostly FP32" in report.failure_summary()
    assert not audit(fp32, "fp16").passed and audit(fp32, "fp32").passed
    with pytest.raises(ValueError, match="DETAILED"):
        precision_counts({"Layers": ["conv1", "conv2"]})
