"""``qonnx check``: TensorRT and CPU rules on tiny QDQ graphs, clean and with one seeded violation each.

The graphs are written by hand (symmetric INT8, Q/DQ where TensorRT wants them) so that each test
changes exactly one thing; every graph is loaded by onnxruntime through the real command. No
numerics are compared: the checker reads structure only (the cpu rule reads onnxruntime's
optimized graph).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx.qdq_check import check_model
from qonnx.qdq_rules import RULES, rules_for
from tests.conftest import run_qonnx, to_ir

F = TensorProto.FLOAT


class Graph:
    """A small QDQ graph under construction: symmetric INT8 by default, changes by keyword."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qdq(self, x: str, scale=0.05, zero_point=0, dtype=np.int8, axis: int | None = None) -> str:
        """x → QuantizeLinear → DequantizeLinear; returns the dequantized name."""
        s = self.const(f"{x}_scale", np.asarray(scale, np.float32))
        z = self.const(f"{x}_zp", np.full(np.shape(scale), zero_point, dtype))
        extra = {} if axis is None else {"axis": axis}
        self.nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{x}_q"], name=f"{x}_Q", **extra))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{x}_q", s, z], [f"{x}_dq"], name=f"{x}_DQ", **extra))
        return f"{x}_dq"

    def weight(self, name: str, shape, axis: int = 0, zero_point: int = 0) -> str:
        """INT8 codes behind a DequantizeLinear with per-channel scales along ``axis``."""
        codes = self.const(f"{name}_codes", self.rng.integers(-127, 128, shape).astype(np.int8))
        s = self.const(f"{name}_scale", np.full(shape[axis], 0.01, np.float32))
        z = self.const(f"{name}_zp", np.full(shape[axis], zero_point, np.int8))
        self.nodes.append(helper.make_node("DequantizeLinear", [codes, s, z], [name], name=f"{name}_DQ", axis=axis))
        return name

    def node(self, op: str, inputs, output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    def model(self, inputs: dict[str, list[int]], output: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "check", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()], [helper.make_tensor_value_info(output, F, None)], self.inits
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def residual_block(*, zero_point=0, activation_axis=None, weight_axis=0, output_qdq=False) -> onnx.ModelProto:
    """x → Q/DQ → Conv → Relu → r; r → Q/DQ → Conv → (+ r's Q/DQ, the residual input) → y."""
    g = Graph()
    scale = np.full(3, 0.05, np.float32) if activation_axis is not None else 0.05
    x = g.qdq("x", scale, zero_point=zero_point, axis=activation_axis)
    c0 = g.node("Conv", [x, g.weight("W0", (4, 3, 3, 3)), g.const("B0", np.zeros(4, np.float32))], "stem", pads=[1, 1, 1, 1])
    r = g.qdq(g.node("Relu", [c0], "stem_relu"))
    c1 = g.node("Conv", [r, g.weight("W1", (4, 4, 3, 3), axis=weight_axis)], "branch", pads=[1, 1, 1, 1])
    if output_qdq:  # the Conv's output quantized, then read by a float op only
        c1 = g.node("Sigmoid", [g.qdq(c1)], "gate")
    y = g.node("Add", [c1, r], "join")
    return g.model({"x": [1, 3, 8, 8]}, y)


def concat_block(*, second_scale=0.05) -> onnx.ModelProto:
    """Two Conv branches, each output quantized, joined by Concat, read by a quantized Conv."""
    g = Graph()
    x = g.qdq("x")
    a = g.qdq(g.node("Conv", [x, g.weight("Wa", (2, 3, 1, 1))], "branch_a"), 0.05)
    b = g.qdq(g.node("Conv", [x, g.weight("Wb", (2, 3, 1, 1))], "branch_b"), second_scale)
    joined = g.qdq(g.node("Concat", [a, b], "joined", axis=1))
    y = g.node("Conv", [joined, g.weight("Wc", (4, 4, 1, 1))], "head")
    return g.model({"x": [1, 3, 8, 8]}, y)


def depthwise_conv(*, weight_zero_point=0, weight_axis=0) -> onnx.ModelProto:
    g = Graph()
    x = g.qdq("x")
    y = g.node("Conv", [x, g.weight("Wd", (4, 1, 3, 3), axis=weight_axis, zero_point=weight_zero_point)], "depthwise", group=4, pads=[1, 1, 1, 1])
    return g.model({"x": [1, 4, 8, 8]}, y)


def attention_block(*, quantized_softmax=False, quantized_layernorm=False, layernorm_feeds_matmul=False, weight_axis=1) -> onnx.ModelProto:
    """x [8, 16] → Q/DQ → three projections (MatMul, INT8 per-channel weights) → scores (MatMul of
    quantized q and kᵀ) → Softmax (float) → MatMul with quantized v → LayerNormalization (float)."""
    g = Graph()
    x = g.qdq("x")
    q = g.node("MatMul", [x, g.weight("Wq", (16, 16), axis=weight_axis)], "proj_q")
    k = g.node("MatMul", [x, g.weight("Wk", (16, 16), axis=1)], "proj_k")
    v = g.node("MatMul", [x, g.weight("Wv", (16, 16), axis=1)], "proj_v")
    kt = g.node("Transpose", [k], "k_t", perm=[1, 0])
    scores = g.node("MatMul", [g.qdq(q), g.qdq(kt)], "scores")
    if quantized_softmax:  # the Softmax between a DQ and a Q: TensorRT would run it in INT8
        scores = g.qdq(scores)
    probs = g.node("Softmax", [scores], "probs", axis=-1)
    if quantized_softmax:
        probs = g.qdq(probs, 1 / 127)
    context = g.node("MatMul", [probs, g.qdq(v)], "context")
    if quantized_layernorm:
        context = g.qdq(context)
    y = g.node("LayerNormalization", [context, g.const("gamma", np.ones(16, np.float32)), g.const("beta", np.zeros(16, np.float32))], "norm", axis=-1)
    if quantized_layernorm:
        y = g.qdq(y)
    if layernorm_feeds_matmul:  # a Q on the LayerNorm's output alone: the projection's input, allowed
        y = g.node("MatMul", [g.qdq(y), g.weight("Wo", (16, 16), axis=1)], "proj_o")
    return g.model({"x": [8, 16]}, y)


def rules_broken(model: onnx.ModelProto, target: str = "tensorrt") -> dict[str, list[tuple[str, ...]]]:
    found: dict[str, list[tuple[str, ...]]] = {}
    for violation in check_model(to_ir(model), target):
        found.setdefault(violation.rule, []).append(violation.nodes)
    return found


@pytest.mark.parametrize("build", [residual_block, concat_block, depthwise_conv, attention_block])
def test_clean_graphs_pass(build):
    assert rules_broken(build()) == {}


def test_asymmetric_zero_point():
    assert rules_broken(residual_block(zero_point=3)) == {"trt-symmetric": [("x_Q",), ("x_DQ",)]}


def test_asymmetric_weights_of_a_depthwise_conv():
    assert rules_broken(depthwise_conv(weight_zero_point=2)) == {"trt-symmetric": [("Wd_DQ",)]}


def test_unsigned_activation_is_not_symmetric_even_with_zero_point_0():
    g = Graph()
    y = g.node("Conv", [g.qdq("x", dtype=np.uint8), g.weight("W", (2, 3, 1, 1))], "conv")
    assert rules_broken(g.model({"x": [1, 3, 4, 4]}, y)) == {"trt-symmetric": [("x_Q",), ("x_DQ",)]}


def test_per_channel_activation():
    assert rules_broken(residual_block(activation_axis=1)) == {"trt-per-tensor-activations": [("x_Q",), ("x_DQ",)]}


def test_wrong_weight_axis_on_conv_and_matmul():
    assert rules_broken(residual_block(weight_axis=1)) == {"trt-weight-axis": [("W1_DQ", "branch")]}
    assert rules_broken(attention_block(weight_axis=0)) == {"trt-weight-axis": [("Wq_DQ", "proj_q")]}


@pytest.mark.parametrize(("trans_b", "axis", "clean"), [(1, 0, True), (1, 1, False), (0, 1, True), (0, 0, False)])
def test_gemm_weight_axis_follows_trans_b(trans_b, axis, clean):
    g = Graph()
    shape = (6, 4) if trans_b else (4, 6)
    y = g.node("Gemm", [g.qdq("x"), g.weight("W", shape, axis=axis)], "fc", transB=trans_b)
    assert rules_broken(g.model({"x": [2, 4]}, y)) == ({} if clean else {"trt-weight-axis": [("W_DQ", "fc")]})


def test_conv_transpose_weight_axis_is_1():
    for axis, clean in ((1, True), (0, False)):
        g = Graph()
        y = g.node("ConvTranspose", [g.qdq("x"), g.weight("W", (3, 2, 3, 3), axis=axis)], "up")
        assert rules_broken(g.model({"x": [1, 3, 4, 4]}, y)) == ({} if clean else {"trt-weight-axis": [("W_DQ", "up")]})


def test_output_qdq_read_only_by_a_float_op():
    assert rules_broken(residual_block(output_qdq=True)) == {"trt-no-output-qdq": [("branch", "branch_Q")]}


def test_half_quantized_weighted_op():
    g = Graph()
    y = g.node("MatMul", [g.qdq("x"), g.const("W", np.ones((4, 4), np.float32))], "mm")
    assert rules_broken(g.model({"x": [2, 4]}, y)) == {"trt-weighted-inputs": [("mm",)]}


def test_concat_inputs_with_different_scales():
    assert rules_broken(concat_block(second_scale=0.1)) == {"trt-concat-shared-scale": [("joined", "branch_a_DQ", "branch_b_DQ")]}


def test_quantized_softmax_and_layernorm():
    assert rules_broken(attention_block(quantized_softmax=True)) == {"trt-float-ops": [("probs", "probs_Q")]}
    assert rules_broken(attention_block(quantized_layernorm=True)) == {"trt-float-ops": [("norm", "norm_Q")]}


def test_a_q_on_a_layernorm_output_read_by_a_matmul_is_the_matmuls_input():
    assert rules_broken(attention_block(layernorm_feeds_matmul=True)) == {}


def test_every_rule_has_a_statement_and_a_source():
    assert {rule.target for rule in RULES} == {"tensorrt", "cpu"} and len({rule.id for rule in RULES}) == len(RULES)
    assert all(rule.statement and rule.source for rule in RULES)
    assert any("Q/DQ Layer-Placement Recommendations" in rule.source for rule in rules_for("tensorrt"))


def test_cli_exit_codes_and_json(tmp_path):
    clean, broken = tmp_path / "clean.onnx", tmp_path / "broken.onnx"
    onnx.save(residual_block(), str(clean))
    onnx.save(residual_block(zero_point=3, weight_axis=1), str(broken))
    result = run_qonnx("check", "--target", "tensorrt", clean)
    assert result.rc == 0 and "no violation" in result.out
    result = run_qonnx("check", "--target", "tensorrt", broken)
    assert result.rc == 3
    assert "trt-weight-axis: W1_DQ, branch:" in result.out and "3 violations (trt-symmetric 2, trt-weight-axis 1)" in result.out
    result = run_qonnx("check", "--target", "tensorrt", broken, "--json")
    document = json.loads(result.out)
    assert result.rc == 3 and document["counts"] == {"trt-symmetric": 2, "trt-weight-axis": 1}
    assert {r["id"] for r in document["rules"]} == {r.id for r in rules_for("tensorrt")}
    assert document["violations"][0] == {"rule": "trt-symmetric", "nodes": ["x_Q"], "message": document["violations"][0]["message"]}


def test_cli_bad_input_exits_2(tmp_path):
    not_onnx = tmp_path / "text.onnx"
    not_onnx.write_text("not a model")
    unloadable = tmp_path / "unloadable.onnx"  # valid protobuf, but an op onnxruntime does not know
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="nowhere")], "g", [helper.make_tensor_value_info("x", F, [1])], [helper.make_tensor_value_info("y", F, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nowhere", 1)])
    proto.ir_version = 8
    onnx.save(proto, str(unloadable))
    for path in (tmp_path / "missing.onnx", not_onnx):
        result = run_qonnx("check", "--target", "tensorrt", path)
        assert result.rc == 2 and len(result.error_lines) == 1, (path, result.err)
    # cpu's rules come from onnxruntime's graph: a model it cannot load is bad input there; tensorrt's
    # read the file alone, so an op onnxruntime lacks (a TensorRT plugin, say) is no reason to refuse
    result = run_qonnx("check", "--target", "cpu", unloadable)
    assert result.rc == 2 and len(result.error_lines) == 1, result.err
    assert run_qonnx("check", "--target", "tensorrt", unloadable).rc == 0
    result = run_qonnx("check", "--target", "gpu", tmp_path / "missing.onnx")
    assert result.rc == 2


def test_onnxruntime_default_static_output_breaks_tensorrt_rules(tmp_path):
    """quantize_static with its defaults (QDQ, asymmetric INT8 activations, per-tensor weights,
    INT32 biases): zero points are not 0 and biases are INT32, so the command exits 3."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from models import tiny

    source, output = tmp_path / "res.onnx", tmp_path / "res.ort.onnx"
    onnx.save(tiny.residual_convs(), str(source))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(source), str(output), Reader())
    result = run_qonnx("check", "--target", "tensorrt", output, "--json")
    assert result.rc == 3
    counts = json.loads(result.out)["counts"]
    assert counts.get("trt-symmetric", 0) > 0


def test_cpu_rule_lists_unfused_nodes(tmp_path):
    """The cpu rule reads onnxruntime's optimized graph: a symmetric graph with a Sigmoid between a
    DequantizeLinear and a QuantizeLinear keeps a float island there."""
    g = Graph()
    c = g.node("Conv", [g.qdq("x"), g.weight("W", (2, 3, 1, 1))], "conv")
    s = g.node("Sigmoid", [g.qdq(c)], "gate")
    y = g.node("Conv", [g.qdq(s), g.weight("W2", (2, 2, 1, 1))], "head")
    found = rules_broken(g.model({"x": [1, 3, 4, 4]}, y), "cpu")
    assert found and set(found) <= {"cpu-unfused-weighted", "cpu-float-island"}
