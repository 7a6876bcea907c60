"""QDQ placement for the CPU target on tiny graphs, checked against onnxruntime's own fusions.

Tiny random models quantize to ~30-40 dB; the floors below (25 dB) catch a broken rewrite (a wrong
scale or axis costs far more) without depending on rounding details.
"""

import json

import numpy as np
import onnx_ir as ir
import pytest

from qonnx import quant
from qonnx.fusion import check_fusion
from qonnx.metrics import sqnr_db
from qonnx.models import tiny

from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline

from conftest import outputs, run_text, to_ir

QUANTIZE = "normalize,div-to-mul,resolve-policy,calibrate,insert-qdq,remove-dead,finalize,verify"
FLOOR_DB = 25.0


def _dq_params(value: ir.Value) -> tuple[str, str]:
    """The scale and zero-point initializer names of the DequantizeLinear producing ``value``."""
    producer = value.producer()
    assert producer is not None and producer.op_type == "DequantizeLinear", value.name
    return producer.inputs[1].name, producer.inputs[2].name


def _q_params(value: ir.Value) -> tuple[str, str]:
    q = next(user for user, _ in value.uses() if user.op_type == "QuantizeLinear")
    return q.inputs[1].name, q.inputs[2].name


def _node(model: ir.Model, op_type: str) -> ir.Node:
    return next(n for n in model.graph if n.op_type == op_type)


@pytest.fixture(scope="module")
def neck():
    proto = tiny.detector_neck()
    model, _, ctx = run_text(proto, QUANTIZE, samples=8)
    return proto, model, ctx


def test_every_op_of_the_neck_reads_dequantized_inputs(neck):
    _, model, _ = neck
    for node in model.graph:
        if node.op_type in ("Conv", "Sigmoid", "Mul", "Concat", "Resize", "MaxPool", "Reshape", "Transpose"):
            assert node.inputs[0].producer().op_type == "DequantizeLinear", node.name
    assert "Div" not in {n.op_type for n in model.graph}  # x / 6 became x · (1/6), which QLinearMul runs


def test_passthrough_ops_reuse_their_input_scale(neck):
    _, model, _ = neck
    for op in ("Resize", "MaxPool", "Reshape"):
        node = _node(model, op)
        assert _dq_params(node.inputs[0]) == _q_params(node.outputs[0]), op


def test_concat_inputs_and_output_share_one_scale(neck):
    _, model, _ = neck
    concat = _node(model, "Concat")
    shared = {_dq_params(v) for v in concat.inputs} | {_q_params(concat.outputs[0])}
    assert len(shared) == 1


def test_the_neck_fuses_into_integer_kernels_and_keeps_fidelity(neck):
    proto, model, ctx = neck
    fusion = ctx.records["fusion"].fusion
    kernels = fusion["integer_kernels"]
    assert kernels["QLinearConv"] == 3 and kernels["QLinearSigmoid"] == 2 and kernels["QLinearConcat"] == 1
    assert kernels["QLinearMul"] == 3  # two SiLU products and the former Div
    assert fusion["unfused"] == [] and fusion["float_islands"] == {}
    feed = tiny.random_feed(proto, seed=99)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) >= FLOOR_DB


def test_residual_add_reads_quantized_inputs_but_a_graph_output_stays_float():
    """A model's output is not quantized (one 8-bit scale would flatten e.g. YOLO's mix of box
    coordinates and class scores), so the residual Add that produces it runs in float."""
    proto = tiny.conv_chain()
    model, _, ctx = run_text(proto, QUANTIZE)
    add = _node(model, "Add")
    assert all(v.producer().op_type == "DequantizeLinear" for v in add.inputs)
    assert not any(user.op_type == "QuantizeLinear" for user, _ in add.outputs[0].uses())
    assert ctx.records["fusion"].fusion["integer_kernels"] == {"QLinearConv": 3}
    feed = tiny.random_feed(proto, seed=99)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) >= FLOOR_DB


def test_depthwise_weights_are_per_output_channel():
    model, _, _ = run_text(tiny.conv_chain(channels=4), QUANTIZE)
    depthwise = next(n for n in model.graph if n.op_type == "Conv" and n.attributes.get_int("group", 1) == 4)
    dq = depthwise.inputs[1].producer()
    assert dq.attributes.get_int("axis", 1) == 0
    assert dq.inputs[1].const_value.numpy().shape == (4,)


def test_matmuls_with_constant_and_activation_operands_become_integer_kernels():
    proto = tiny.matmul_model()
    model, _, ctx = run_text(proto, QUANTIZE)
    kernels = ctx.records["fusion"].fusion["integer_kernels"]
    assert kernels.get("QLinearMatMul", 0) + kernels.get("MatMulIntegerToFloat", 0) == 2
    transpose = _node(model, "Transpose")
    assert _dq_params(transpose.inputs[0]) == _q_params(transpose.outputs[0])


def test_embedding_table_is_stored_in_eight_bits_and_gathered_as_integers():
    proto = tiny.embedding_model()
    # 7-bit weights: every CPU then computes the same integers (no U8S8 saturation without VNNI).
    model, _, ctx = run_text(proto, QUANTIZE, reduce_range=True)
    assert "table" not in model.graph.initializers  # the float table left the file
    gather = _node(model, "Gather")
    table_dq = gather.inputs[0].producer()
    assert table_dq.op_type == "DequantizeLinear" and table_dq.inputs[0].const_value.dtype == ir.DataType.UINT8
    assert _dq_params(gather.inputs[0]) == _q_params(gather.outputs[0])  # onnxruntime drops the pair
    fusion = check_fusion(model)
    assert fusion["unfused"] == []
    feed = tiny.random_feed(proto, seed=5)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) >= FLOOR_DB


@pytest.mark.parametrize("shape, axis", [((8, 3, 3, 3), 0), ((4, 1, 3, 3), 0), ((16, 8), 1), ((6, 4, 2, 2), 1)])
def test_weight_packing_round_trip_is_within_half_a_step(shape, axis):
    w = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    q, scale, zero_point = quant.per_channel_symmetric(w, axis)
    back = quant.dequantize(q, scale, zero_point, axis)
    # The step of each channel from numpy, not from the scale the code returns: max|w_c| / 127.
    step = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True).astype(np.float64) / 127
    # Rounding: at most half a step; 1e-6 relative for the float32 division and product.
    assert q.dtype == np.int8 and np.all(np.abs(back - w) <= step / 2 * (1 + 1e-6))


def test_bias_correction_removes_the_mean_shift_of_quantized_weights():
    """Weights quantized with and without bias correction, activations left in float: the mean
    output error per channel (over many samples) must shrink."""
    proto = tiny.conv_chain(depth=3, channels=8)
    feeds = [tiny.random_feed(proto, seed=100 + i) for i in range(16)]
    reference = np.stack([outputs(proto, f)[0] for f in feeds])

    def mean_error(pipeline: str) -> float:
        # Full-range weights on every machine: with activations float, no integer kernel runs.
        model, _, _ = run_text(proto, pipeline, samples=16, reduce_range=False)
        _strip_activation_qdq(model)
        test = np.stack([outputs(model, f)[0] for f in feeds])
        return float(np.abs((test - reference).mean(axis=(0, 1, 3, 4))).mean())

    plain = mean_error(QUANTIZE.replace("insert-qdq", "insert-qdq(bias_correction=false)"))
    corrected = mean_error(QUANTIZE)
    assert corrected < 0.5 * plain


def _strip_activation_qdq(model: ir.Model) -> None:
    """Bypass every activation Q → DQ pair, keeping weight and bias DequantizeLinear nodes."""
    for node in list(model.graph):
        if node.op_type == "QuantizeLinear":
            for user, _ in list(node.outputs[0].uses()):
                ir.convenience.replace_all_uses_with(user.outputs[0], node.inputs[0])


@pytest.mark.parametrize("trans_b", [1, 0])
def test_gemm_becomes_qgemm(trans_b):
    proto = tiny.gemm_bn(trans_b=trans_b)
    model, _, ctx = run_text(proto, QUANTIZE)
    assert ctx.records["fusion"].fusion["integer_kernels"] == {"QGemm": 1} and ctx.records["fusion"].fusion["unfused"] == []
    feed = tiny.random_feed(proto, seed=99)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) >= FLOOR_DB


def test_dynamic_mode_quantizes_matmuls_at_run_time_without_calibration_data():
    proto = tiny.matmul_model()
    model = to_ir(proto)
    ctx = Context(mode="dynamic", reduce_range=True)  # no calibration data at all; 7-bit weights as above
    run_pipeline(model, build(parse_pipeline(QUANTIZE), ctx), ctx)
    fusion = ctx.records["fusion"].fusion
    assert fusion["integer_kernels"] == {"DynamicQuantizeMatMul": 2} and fusion["unfused"] == []
    feed = tiny.random_feed(proto, seed=5)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) >= FLOOR_DB


def test_dynamic_mode_still_stores_gather_tables_in_eight_bits():
    model = to_ir(tiny.embedding_model())
    ctx = Context(mode="dynamic")
    run_pipeline(model, build(parse_pipeline(QUANTIZE), ctx), ctx)
    assert "table" not in model.graph.initializers
    assert _node(model, "MatMul").inputs[0].producer().inputs[0].producer().op_type == "DynamicQuantizeLinear"


def test_reduce_range_stores_seven_bit_weights():
    proto = tiny.conv_chain()
    model, _, ctx = run_text(proto, QUANTIZE, reduce_range=True)
    for node in model.graph:
        if node.op_type == "Conv":
            q = node.inputs[1].producer().inputs[0].const_value.numpy()
            assert np.abs(q).max() == 63  # the largest weight of each channel lands on ±63
    assert json.loads(model.metadata_props["qonnx.plan"])["specs"]["int8"]["reduce_range"] is True
    feed = tiny.random_feed(proto, seed=99)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) >= FLOOR_DB - 5  # one bit less: ~6 dB less


def test_verify_reports_a_quantized_model_onnxruntime_cannot_load():
    """The fusion check's session doubles as the load check: a failure there is a verification error."""
    from qonnx.passes.verify import Verify, VerificationError

    model, _, ctx = run_text(tiny.conv_chain(), QUANTIZE.replace(",finalize,verify", ",finalize"))
    out = model.graph.outputs[0]
    odd = ir.node("Unknown", [out], domain="com.example", name="odd")
    odd.outputs[0].name, odd.outputs[0].dtype, odd.outputs[0].shape = "odd_y", out.dtype, out.shape
    model.graph.append(odd)
    model.graph.outputs[0] = odd.outputs[0]
    model.opset_imports["com.example"] = 1
    with pytest.raises(VerificationError, match="onnxruntime cannot load"):
        Verify(ctx)(model)
