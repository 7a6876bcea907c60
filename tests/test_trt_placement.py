"""The tensorrt target's Q/DQ placement on tiny graphs, its FP16 remainder, and FP8.

Each graph is quantized by the real flow (``qonnx.api.quantize``, calibrated on random feeds) and
then read back: where the Q/DQ are, their types and zero points, and ``qonnx check --target
tensorrt`` (``qonnx.qdq_check``), which must find nothing in our own output.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import graph_model, value_info
from onnx import TensorProto, helper, numpy_helper

from qonnx import api, metrics, runtime
from qonnx.config import CalibrationConfig, ConfigError, QuantizeConfig
from qonnx.errors import UserError
from qonnx.qdq_check import check_model

RNG = np.random.default_rng(0)


def _w(*shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32)


def _quantize(tmp_path, proto, shape, *, name="x", samples=12, **config):
    source = tmp_path / "in.onnx"
    onnx.save(proto, source)
    feeds = [{name: RNG.normal(0, 1, shape).astype(np.float32)} for _ in range(samples)]
    out = tmp_path / "out.onnx"
    result = api.quantize(source, out, feeds, config=QuantizeConfig(target="tensorrt", **config))
    return ir.load(out), result.report, feeds


def _producer(model, value_name):
    values = {v.name: v for n in model.graph for v in n.outputs}
    return values[value_name].producer()


def _node(model, name):
    return next(n for n in model.graph if n.name == name)


def _dequantized(value: ir.Value) -> bool:
    producer = value.producer()
    while producer is not None and producer.op_type == "Cast":  # (an FP16 remainder boundary)
        producer = producer.inputs[0].producer()
    return producer is not None and producer.op_type == "DequantizeLinear"


def _zero_points(model):
    found = []
    for node in model.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.inputs) > 2 and node.inputs[2] is not None:
            found.append(node.inputs[2].const_value.numpy())
    return found


def _residual_block():
    """x → conv1 → relu → conv2 → Add(conv2, relu) → relu2 → conv3: a ResNet-style skip connection."""
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y"], name="conv3"),
    ]
    inits = [
        numpy_helper.from_array(_w(4, 3, 3, 3, seed=1), "W1"),
        numpy_helper.from_array(_w(4, seed=2), "B1"),
        numpy_helper.from_array(_w(4, 4, 3, 3, seed=3), "W2"),
        numpy_helper.from_array(_w(4, seed=4), "B2"),
        numpy_helper.from_array(_w(2, 4, 1, 1, seed=5), "W3"),
    ]
    return graph_model(nodes, [value_info("x", [1, 3, 8, 8])], [value_info("y", [1, 2, 8, 8])], inits)


def test_residual_block_quantizes_the_skip_input_not_the_conv_output(tmp_path):
    model, report, _ = _quantize(tmp_path, _residual_block(), [1, 3, 8, 8], float_remainder="fp32")
    add = _node(model, "add")
    conv_side, skip_side = add.inputs
    assert _dequantized(skip_side), "the skip input (relu1's output) takes a Q/DQ"
    assert not _dequantized(conv_side), "conv2's output is fused into the Add: no Q/DQ on it"
    for name in ("conv1", "conv2", "conv3"):
        conv = _node(model, name)
        assert _dequantized(conv.inputs[0]) and _dequantized(conv.inputs[1])
        if len(conv.inputs) > 2:
            assert conv.inputs[2].producer() is None, "the bias stays float for TensorRT"
    zero_points = _zero_points(model)
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
    assert check_model(model, "tensorrt") == []
    assert report["target_rules"]["violations"] == [] and report["target_rules"]["target"] == "tensorrt"


def test_an_add_of_two_activations_without_a_weighted_producer_stays_float(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Sigmoid", ["x"], ["b"], name="sigmoid"),
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "W"], ["y"], name="conv"),
    ]
    proto = graph_model(nodes, [value_info("x", [1, 2, 4, 4])], [value_info("y", [1, 2, 4, 4])], [numpy_helper.from_array(_w(2, 2, 1, 1), "W")])
    model, report, _ = _quantize(tmp_path, proto, [1, 2, 4, 4], float_remainder="fp32")
    add = _node(model, "add")
    assert not any(_dequantized(v) for v in add.inputs)
    assert report["nodes"]["add"]["reason"].startswith("not a residual Add")


def test_concat_inputs_share_one_scale(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "Wb"], ["b"], name="conv_b"),
        helper.make_node("Concat", ["a", "b"], ["c"], name="concat", axis=1),
        helper.make_node("Conv", ["c", "Wc"], ["y"], name="conv_c"),
    ]
    inits = [numpy_helper.from_array(_w(2, 2, 1, 1, seed=1) * 5, "Wa"), numpy_helper.from_array(_w(2, 2, 1, 1, seed=2), "Wb"), numpy_helper.from_array(_w(2, 4, 1, 1, seed=3), "Wc")]
    proto = graph_model(nodes, [value_info("x", [1, 2, 4, 4])], [value_info("y", [1, 2, 4, 4])], inits)
    model, _, _ = _quantize(tmp_path, proto, [1, 2, 4, 4], float_remainder="fp32")
    concat = _node(model, "concat")
    scales = [v.producer().inputs[1].const_value.numpy() for v in concat.inputs]
    assert all(_dequantized(v) for v in concat.inputs)
    assert scales[0] == scales[1], "one scale for every Concat input: TensorRT concatenates INT8"
    assert _node(model, "conv_c").inputs[0].producer().inputs[1].const_value.numpy() == scales[0]
    assert check_model(model, "tensorrt") == []


def test_maxpool_is_quantized_with_its_input_scale_only_before_a_quantized_op(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c"], name="conv1"),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "W2"], ["y"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),  # read by nothing quantized
    ]
    inits = [numpy_helper.from_array(_w(2, 2, 1, 1, seed=1), "W1"), numpy_helper.from_array(_w(2, 2, 1, 1, seed=2), "W2")]
    proto = graph_model(nodes, [value_info("x", [1, 2, 4, 4])], [value_info("y", [1, 2, 2, 2]), value_info("g", [1, 2, 1, 1])], inits)
    model, _, _ = _quantize(tmp_path, proto, [1, 2, 4, 4], float_remainder="fp32")
    pool, gap = _node(model, "pool"), _node(model, "gap")
    assert _dequantized(pool.inputs[0]) and _dequantized(_node(model, "conv2").inputs[0])
    in_scale = pool.inputs[0].producer().inputs[1].const_value.numpy()
    out_scale = _node(model, "conv2").inputs[0].producer().inputs[1].const_value.numpy()
    assert in_scale == out_scale, "MaxPool commutes with quantization: one scale on both sides"
    assert not any(user.op_type == "QuantizeLinear" for user, _ in gap.outputs[0].uses())
    assert check_model(model, "tensorrt") == []


def _attention_block():
    """LayerNorm → Q, K, V projections → softmax(Q Kᵀ) V → output projection."""
    d, seq = 8, 4
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "Wq"], ["q"], name="proj_q"),
        helper.make_node("MatMul", ["n", "Wk"], ["k"], name="proj_k"),
        helper.make_node("MatMul", ["n", "Wv"], ["v"], name="proj_v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "Wo"], ["o"], name="proj_o"),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    inits = [numpy_helper.from_array(np.ones(d, np.float32), "gamma"), numpy_helper.from_array(np.zeros(d, np.float32), "beta")]
    inits += [numpy_helper.from_array(_w(d, d, seed=i), name) for i, name in enumerate(("Wq", "Wk", "Wv", "Wo"))]
    return graph_model(nodes, [value_info("x", [1, seq, d])], [value_info("y", [1, seq, d])], inits, opset=17)


def test_attention_keeps_softmax_layernorm_and_the_matmul_reading_softmax_in_higher_precision(tmp_path):
    model, report, feeds = _quantize(tmp_path, _attention_block(), [1, 4, 8], float_remainder="fp32")
    qk = _node(model, "qk")
    assert _dequantized(qk.inputs[0]) and _dequantized(qk.inputs[1]), "Q·Kᵀ: both activation operands quantized"
    softmax, layer_norm, pv = _node(model, "softmax"), _node(model, "ln"), _node(model, "pv")
    for node in (softmax, layer_norm, pv):
        assert not any(_dequantized(v) for v in node.inputs if v is not None), node.name
    assert "reads Softmax" in report["nodes"]["pv"]["reason"]
    assert _dequantized(_node(model, "proj_o").inputs[0])
    assert check_model(model, "tensorrt") == []
    session = runtime.session(model, qdq_fusion=False)
    session.run(feeds[0])  # onnxruntime's CPU provider runs it


def test_depthwise_conv_weights_are_per_output_channel_along_axis_0(tmp_path):
    channels = 6
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="dw", group=channels, pads=[1, 1, 1, 1])]
    weight = _w(channels, 1, 3, 3) * np.arange(1, channels + 1, dtype=np.float32).reshape(-1, 1, 1, 1)
    proto = graph_model(nodes, [value_info("x", [1, channels, 5, 5])], [value_info("y", [1, channels, 5, 5])], [numpy_helper.from_array(weight, "W")])
    model, _, _ = _quantize(tmp_path, proto, [1, channels, 5, 5], float_remainder="fp32")
    dq = _node(model, "dw").inputs[1].producer()
    scale = dq.inputs[1].const_value.numpy()
    assert dq.attributes.get_int("axis", 1) == 0 and scale.shape == (channels,)
    np.testing.assert_allclose(scale, np.abs(weight).max(axis=(1, 2, 3)) / 127, rtol=1e-6)  # max|w| / 127 per channel
    assert check_model(model, "tensorrt") == []


def test_the_float_remainder_is_fp16_and_the_q_dq_stay_fp32(tmp_path):
    """The unquantized nodes run in FP16; the quantized ones and their Q/DQ keep FP32 scales, so that
    onnxruntime's CPU provider computes the same with its fused kernels as with reference Q/DQ (with
    FP16 scales its fallback path gave -7 dB on EfficientNet-Lite0 against 16 dB)."""
    model, report, feeds = _quantize(tmp_path, _attention_block(), [1, 4, 8])
    # The MatMul reading the Softmax computes in FP16; the quantized projections stay INT8
    assert report["nodes"]["pv"]["format"] == "fp16" and report["nodes"]["proj_q"]["format"] == "int8"
    scales = {n.inputs[1].const_value.dtype for n in model.graph if n.op_type == "DequantizeLinear"}
    assert scales == {ir.DataType.FLOAT}
    assert any(n.op_type == "Cast" for n in model.graph), "Casts at the borders of the FP16 remainder"
    assert [v.dtype for v in model.graph.inputs] == [ir.DataType.FLOAT] and [v.dtype for v in model.graph.outputs] == [ir.DataType.FLOAT]
    assert check_model(model, "tensorrt") == []
    fused, reference = runtime.session(model), runtime.session(model, qdq_fusion=False)
    for feed in feeds[:4]:
        # INT8 sums are exact in both; only the order of float rescaling differs: a few FP16 ulps
        expected = reference.run(feed)["y"]
        np.testing.assert_allclose(fused.run(feed)["y"], expected, rtol=0, atol=0.02 * float(np.abs(expected).max()))
    (tmp_path / "fp32").mkdir()
    fp32_model, fp32_report, _ = _quantize(tmp_path / "fp32", _attention_block(), [1, 4, 8], float_remainder="fp32")
    assert not any(n.op_type == "Cast" for n in fp32_model.graph)
    # FP16's 11-bit significand adds little to INT8's rounding: within 3 dB of the FP32 remainder
    assert report["fidelity"]["outputs"]["y"]["sqnr_db"] > fp32_report["fidelity"]["outputs"]["y"]["sqnr_db"] - 3
    assert report["fidelity"]["qdq"] == "reference"


def test_fp8_graph_is_e4m3_with_zero_points_0_and_close_to_fp32(tmp_path):
    model, report, feeds = _quantize(tmp_path, _residual_block(), [1, 3, 8, 8], precision="fp8")
    assert model.opset_imports[""] >= 21
    types = {n.inputs[0].const_value.dtype for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None}
    assert types == {ir.DataType.FLOAT8E4M3FN}, "weights stored as E4M3"
    quantizers = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    # (no zero point: FP8's is 0, and onnxruntime 1.32 misreads an FP8 zero point as UINT8, then
    # drops the Relu before the Q as if it clamped: -5.6 dB on this block instead of 22)
    assert quantizers and all(len(q.inputs) == 2 and q.attributes.get_int("output_dtype") == ir.DataType.FLOAT8E4M3FN for q in quantizers)
    assert _zero_points(model) == []
    assert check_model(model, "tensorrt") == []
    # E4M3 keeps 3 mantissa bits: each rounding errs by at most 2⁻⁴ relative (about 30 dB for one
    # tensor); activations and weights of three Convs compound to well above 20 dB.
    assert report["fidelity"]["outputs"]["y"]["sqnr_db"] > 20
    reference = runtime.session(tmp_path / "in.onnx").run(feeds[0])["y"]
    for fused in (True, False):  # onnxruntime's default optimizations keep the Relus
        got = runtime.session(tmp_path / "out.onnx", qdq_fusion=fused).run(feeds[0])["y"]
        assert metrics.sqnr_db(reference, got) > 20


def test_fp8_e5m2_activations_are_offered_and_flagged_by_the_tensorrt_check(tmp_path):
    """E5M2 activations (more range, 2 mantissa bits) run on onnxruntime, but TensorRT's Q/DQ take
    E4M3: ``qonnx check`` says so rather than letting the graph pass."""
    model, report, _ = _quantize(tmp_path, _residual_block(), [1, 3, 8, 8], precision="fp8", fp8_activations="e5m2")
    activation_types = {n.attributes.get_int("output_dtype") for n in model.graph if n.op_type == "QuantizeLinear"}
    assert activation_types == {ir.DataType.FLOAT8E5M2}
    rules = {v["rule"] for v in report["target_rules"]["violations"]}
    assert rules == {"trt-symmetric"}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: QuantizeConfig(precision="fp16", float_remainder="fp16"), "float_remainder: applies to precision int8 or fp8"),
        (lambda: QuantizeConfig(precision="int8", fp8_activations="e5m2"), "fp8_activations: applies to precision fp8, not int8"),
        (lambda: QuantizeConfig(precision="fp8", target="cpu"), "target: cpu does not take precision fp8"),
        (lambda: QuantizeConfig(precision="fp8", mode="dynamic"), "mode: fp8 activations are calibrated"),
    ],
)
def test_fp8_and_float_remainder_settings_are_checked(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_fp8_defaults_to_the_tensorrt_target():
    config = QuantizeConfig(precision="fp8")
    assert config.effective_target == "tensorrt" and config.effective_float_remainder == "fp16"
    assert QuantizeConfig(target="tensorrt", float_remainder="fp32").effective_float_remainder == "fp32"
    assert QuantizeConfig().effective_float_remainder == "fp32"


def test_plan_records_target_and_specs(tmp_path):
    model, _, _ = _quantize(tmp_path, _residual_block(), [1, 3, 8, 8], precision="fp8")
    plan = json.loads(model.metadata_props["qonnx.plan"])
    assert plan["target"] == "tensorrt"
    assert plan["specs"]["fp8"]["activation_dtype"] == "float8e4m3fn" and plan["specs"]["fp8"]["weight_dtype"] == "float8e4m3fn"
    assert TensorProto.FLOAT8E4M3FN == ir.DataType.FLOAT8E4M3FN.value


def test_fp16_remainder_keeps_concat_q_dq_fp32_so_onnxruntime_cpu_loads_it(tmp_path):
    """onnxruntime fuses DQ → Concat → Q into QLinearConcat, whose scales must be FP32 (1.32 refuses
    the model at load otherwise): a Concat between Resize and Conv keeps its Q/DQ FP32 in the FP16
    remainder."""
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["a"], name="conv_a"),
        helper.make_node("Resize", ["a", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["big", "Wb"], ["b"], name="conv_b"),
        helper.make_node("Concat", ["up", "b"], ["c"], name="concat", axis=1),
        helper.make_node("Conv", ["c", "Wc"], ["y"], name="conv_c"),
    ]
    inits = [
        numpy_helper.from_array(_w(2, 2, 1, 1, seed=1), "Wa"),
        numpy_helper.from_array(np.float32([1, 1, 2, 2]), "scales"),
        numpy_helper.from_array(_w(2, 2, 1, 1, seed=2), "Wb"),
        numpy_helper.from_array(_w(2, 4, 1, 1, seed=3), "Wc"),
    ]
    proto = graph_model(nodes, [value_info("x", [1, 2, 4, 4]), value_info("big", [1, 2, 8, 8])], [value_info("y", [1, 2, 8, 8])], inits)
    source = tmp_path / "in.onnx"
    onnx.save(proto, source)
    feeds = [{"x": RNG.normal(0, 1, [1, 2, 4, 4]).astype(np.float32), "big": RNG.normal(0, 1, [1, 2, 8, 8]).astype(np.float32)} for _ in range(8)]
    out = tmp_path / "out.onnx"
    report = api.quantize(source, out, feeds, config=QuantizeConfig(target="tensorrt")).report
    model = ir.load(out)
    concat = _node(model, "concat")
    scales = [v.producer().inputs[1].const_value.dtype for v in concat.inputs]
    assert scales == [ir.DataType.FLOAT, ir.DataType.FLOAT]
    assert report["nodes"]["conv_c"]["format"] == "int8" and check_model(model, "tensorrt") == []
    runtime.session(out).run(feeds[0])  # with onnxruntime's Q/DQ fusion on, as a user's session has it


def _if_conv_model():
    """An If whose branches each hold a Conv with a constant weight (as Silero VAD's sample-rate If)."""
    def branch(name, seed):
        conv = helper.make_node("Conv", ["x", f"W{seed}"], [f"y{seed}"], name=f"conv_{name}")
        weight = numpy_helper.from_array(_w(2, 2, 1, 1, seed=seed), f"W{seed}")
        return helper.make_graph([conv], name, [], [value_info(f"y{seed}", [1, 2, 4, 4])], initializer=[weight])

    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then", 1), else_branch=branch("else", 2))
    inputs = [value_info("x", [1, 2, 4, 4]), value_info("c", [], TensorProto.BOOL)]
    return graph_model([node], inputs, [value_info("y", [1, 2, 4, 4])])


@pytest.mark.parametrize("target, weight_only", [("cpu", True), ("tensorrt", False)])
def test_weights_inside_subgraphs_are_int8_weight_only_except_for_tensorrt(tmp_path, target, weight_only):
    """Calibration cannot reach a subgraph's activations: the cpu target still stores its weights in
    INT8 (weight-only); TensorRT would run such a half-quantized Conv in float (trt-weighted-inputs),
    so there it stays float."""
    source = tmp_path / "in.onnx"
    onnx.save(_if_conv_model(), source)
    feeds = [{"x": RNG.normal(0, 1, [1, 2, 4, 4]).astype(np.float32), "c": np.array(i % 2 == 0)} for i in range(8)]
    out = tmp_path / "out.onnx"
    report = api.quantize(source, out, feeds, config=QuantizeConfig(target=target, float_remainder="fp32" if target == "tensorrt" else None)).report
    model = ir.load(out)
    dequantizers = [n for g in model.graphs() for n in g if n.op_type == "DequantizeLinear"]
    assert bool(dequantizers) is weight_only
    if not weight_only:
        assert report["nodes"]["conv_then"]["reason"].startswith("inside a subgraph")
        assert check_model(model, "tensorrt") == []


def test_fp8_islands_keep_in_fp16_the_nodes_whose_values_reach_beyond_e4m3_after_scaling(tmp_path):
    """A 99th-percentile calibration clips an input's rare outliers (x 50): after scaling they would
    reach about 50 x 448 in E4M3, so the Conv reading it leaves FP8 (the float remainder, FP16); the
    Conv reading the other input, which has no such outlier, stays FP8. With a margin above the
    reach, none leaves."""
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], name="conv1"), helper.make_node("Conv", ["z", "W2"], ["b"], name="conv2")]
    inits = [numpy_helper.from_array(_w(2, 2, 1, 1, seed=1), "W1"), numpy_helper.from_array(_w(2, 2, 1, 1, seed=2), "W2")]
    inputs = [value_info("x", [1, 2, 8, 8]), value_info("z", [1, 2, 8, 8])]
    proto = graph_model(nodes, inputs, [value_info("a", [1, 2, 8, 8]), value_info("b", [1, 2, 8, 8])], inits)
    source = tmp_path / "in.onnx"
    onnx.save(proto, source)
    rng = np.random.default_rng(3)
    feeds = []
    for i in range(12):
        x = rng.uniform(-1, 1, [1, 2, 8, 8]).astype(np.float32)
        if i % 4 == 0:
            x[0, 0, 0, 0] = 50.0  # one value in 512 of every fourth sample
        feeds.append({"x": x, "z": rng.uniform(-1, 1, [1, 2, 8, 8]).astype(np.float32)})
    calibration = CalibrationConfig(method="percentile", percentile=99.0)
    out = tmp_path / "out.onnx"
    report = api.quantize(source, out, feeds, config=QuantizeConfig(precision="fp8", calibration=calibration)).report
    assert report["fp8_islands"]["nodes"] == 1
    assert report["nodes"]["conv1"]["format"] == "fp16" and report["nodes"]["conv2"]["format"] == "fp8"
    assert report["nodes"]["conv1"]["reason"].startswith("FP8 island: 'x' reaches")
    assert check_model(ir.load(out), "tensorrt") == []
    text = "normalize,upgrade-opset(min_version=21),resolve-policy,calibrate(method=percentile,percentile=99),fp8-islands(margin=1000),insert-qdq,remove-dead,finalize,verify"
    wide = api.quantize(source, tmp_path / "wide.onnx", feeds, config=QuantizeConfig(precision="fp8", pipeline=text)).report
    assert wide["fp8_islands"]["nodes"] == 0 and wide["nodes"]["conv1"]["format"] == "fp8"


def test_an_excluded_conv_stays_fp32_reads_the_exact_tensor_and_the_output_passes_the_check(tmp_path):
    """--exclude conv2 on tensorrt: conv2 is FP32 (float by name, not the FP16 remainder), it reads
    relu1's exact output while conv2's quantized neighbour reads the DequantizeLinear, and the Add
    it feeds is no residual Add of a quantized op any more: nothing half-quantized remains."""
    model, report, _ = _quantize(tmp_path, _residual_block(), [1, 3, 8, 8], nodes_to_exclude=("conv2",))
    assert report["nodes"]["conv2"]["format"] == "float" and report["nodes"]["conv2"]["reason"] == "excluded by the config"
    conv2 = _node(model, "conv2")
    assert not _dequantized(conv2.inputs[0]) and not _dequantized(conv2.inputs[1])
    assert report["nodes"]["add"]["format"] in ("fp16", "float")  # (the FP16 remainder's cast placement decides which)
    assert check_model(model, "tensorrt") == [] and report["target_rules"]["violations"] == []


def test_fp8_in_a_pipeline_without_the_opset_upgrade_is_refused_before_insertion(tmp_path):
    source = tmp_path / "in.onnx"
    onnx.save(_residual_block(), source)
    feeds = [{"x": RNG.normal(0, 1, [1, 3, 8, 8]).astype(np.float32)} for _ in range(4)]
    text = "normalize,resolve-policy,calibrate,insert-qdq,remove-dead,finalize,verify"
    with pytest.raises(UserError, match=r"FP8 Q/DQ need opset 21 .*the model is at 13: put upgrade-opset\(min_version=21\) before insert-qdq"):
        api.quantize(source, tmp_path / "out.onnx", feeds, config=QuantizeConfig(precision="fp8", pipeline=text))
    assert not (tmp_path / "out.onnx").exists()


def test_dynamic_mode_is_refused_on_tensorrt():
    with pytest.raises(ConfigError, match="mode: dynamic INT8 .* is onnxruntime's CPU format"):
        QuantizeConfig(target="tensorrt", mode="dynamic")
