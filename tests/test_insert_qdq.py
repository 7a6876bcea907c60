"""insert-qdq's numbers, checked against references computed here with numpy.

Every expected value below is derived in the test from the float model and the calibration feeds
(never read back from what the pass stored): weight scales ``max|w| / qmax`` per output channel,
activation parameters from the exact extremes of the feeds (``calibrate(method=minmax)``), INT32
biases at ``s_x * s_w`` and the bias correction ``b - Σ ΔW · E[x]`` with ``E[x]`` the mean of the
feeds per channel.

Tolerances: scales are one float32 division (or product) of the same operands, so they agree to
float32 rounding, 1e-6 relative. Integer codes agree exactly, except where noted that a scale one
ulp apart may move a tie by one code. A dequantized INT32 bias is within half its step of the
value it stores.

Weights are given channel magnitudes several times apart (``_spread``), so that one per-tensor
scale copied to every channel is far from each channel's own.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx.calib.sources import ListSource, input_specs
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline
from qonnx.policy import SPEC_KEY

from conftest import graph_model, value_info, outputs, to_ir

F = TensorProto.FLOAT
STATIC = "resolve-policy,calibrate(method=minmax),insert-qdq"
UNCORRECTED = "resolve-policy,calibrate(method=minmax),insert-qdq(bias_correction=false)"
FLOAT32_RTOL = 1e-6  # one float32 operation on the same operands
INT32_MAX = 2147483647


_model, _vi = graph_model, value_info


def _spread(w: np.ndarray, axis: int) -> np.ndarray:
    """``w`` with output channel ``o`` scaled by 1.7**o: per-channel scales then differ by up to 40x."""
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w * (1.7 ** np.arange(w.shape[axis], dtype=np.float32)).reshape(shape)).astype(np.float32)


def _weights(shape, axis, seed=0):
    return _spread(np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.3, axis)


def _feeds(shape, offsets, count=6, seed=0, name="x"):
    """Standard normal feeds plus a constant offset per channel (axis 1): non-zero channel means."""
    rng = np.random.default_rng(seed)
    offset = np.asarray(offsets, np.float32).reshape([1, -1] + [1] * (len(shape) - 2))
    return [{name: (rng.standard_normal(shape).astype(np.float32) + offset).astype(np.float32)} for _ in range(count)]


def _quantize(proto, feeds, text=STATIC, reduce_range=False, **context):
    """Run ``text`` on ``proto`` calibrated on ``feeds``; weights in full 8 bits unless told."""
    model = to_ir(proto)
    ctx = Context(calib=ListSource(feeds, input_specs(model)), reduce_range=reduce_range, **context)
    run_pipeline(model, build(parse_pipeline(text), ctx), ctx)
    return model, ctx


def _node(model, name):
    return next(n for n in model.graph if n.name == name)


def _dq(value: ir.Value):
    """(integers, scale, zero point or None, axis or None) of the DequantizeLinear making ``value``."""
    dq = value.producer()
    assert dq is not None and dq.op_type == "DequantizeLinear", value.name
    zp = dq.inputs[2].const_value.numpy() if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    axis = dq.attributes.get_int("axis", None) if "axis" in dq.attributes else None
    q = dq.inputs[0].const_value.numpy() if dq.inputs[0].const_value is not None else None  # None: an activation
    return q, dq.inputs[1].const_value.numpy(), zp, axis


def _activation_params(feeds, name="x"):
    """UINT8 asymmetric parameters of the exact range of the feeds, widened to contain 0."""
    data = np.concatenate([f[name].ravel() for f in feeds])
    lo, hi = min(float(data.min()), 0.0), max(float(data.max()), 0.0)
    scale = np.float32(hi - lo) / np.float32(255)
    return np.float32(scale), int(np.round(-lo / scale))


def _expected_weight(w, axis, qmax=127):
    """Symmetric INT8 of ``w`` per output channel (``axis``; None: per tensor)."""
    if axis is None:
        scale = np.float32(np.abs(w).max()) / np.float32(qmax)
        return np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8), np.float32(scale)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=reduce) / np.float32(qmax)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8), scale


def _channel_means(feeds, name="x"):
    data = np.concatenate([f[name] for f in feeds]).astype(np.float64)
    return data.mean(axis=tuple(i for i in range(data.ndim) if i != 1))


# ----------------------------------------------------------------------------------------------
# single weighted nodes


def _conv(out_c=6, in_c=4, group=1, bias=True, seed=0, kernel=3):
    w = _weights((out_c, in_c // group, kernel, kernel), 0, seed)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-0.5, 0.5, out_c).astype(np.float32), "B"))
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", pads=[1, 1, 1, 1], group=group)
    return _model([node], [_vi("x", [1, in_c, 5, 5])], [_vi("y", [1, out_c, 5, 5])], inits)


def _gemm(trans_b=1, bias=True, seed=0, c=None, **attributes):
    """x[3, 10] (or [10, 3] with transA) → Gemm(W) + B → y[3, 6]; ``c``: B instead of a 1-D ramp."""
    w = _weights((6, 10) if trans_b else (10, 6), 0 if trans_b else 1, seed)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-0.5, 0.5, 6).astype(np.float32) if c is None else np.asarray(c, np.float32), "B"))
        inputs.append("B")
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", transB=trans_b, **attributes)
    x_shape = [10, 3] if attributes.get("transA") else [3, 10]
    return _model([node], [_vi("x", x_shape)], [_vi("y", [3, 6])], inits)


def _matmul(seed=0):
    w = _weights((10, 6), 1, seed)
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return _model([node], [_vi("x", [1, 3, 10])], [_vi("y", [1, 3, 6])], [numpy_helper.from_array(w, "W")])


def _conv_transpose(group=1, bias=None, seed=0):
    w = _weights((4, 6 // group, 2, 2), 1, seed)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(bias, np.float32), "B"))
        inputs.append("B")
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="deconv", strides=[2, 2], group=group)
    return _model([node], [_vi("x", [1, 4, 3, 3])], [_vi("y", [1, 6, 6, 6])], inits)


def _weight_of(proto):
    return numpy_helper.to_array(proto.graph.initializer[0])


WEIGHTED = {
    "conv": (lambda: _conv(), "conv", 0, [1, 4, 5, 5]),
    "grouped conv": (lambda: _conv(out_c=6, in_c=4, group=2), "conv", 0, [1, 4, 5, 5]),
    "depthwise conv": (lambda: _conv(out_c=4, in_c=4, group=4), "conv", 0, [1, 4, 5, 5]),
    "gemm transB": (lambda: _gemm(trans_b=1), "gemm", 0, [3, 10]),
    "gemm": (lambda: _gemm(trans_b=0), "gemm", 1, [3, 10]),
    "matmul": (_matmul, "mm", 1, [1, 3, 10]),
    "conv transpose": (lambda: _conv_transpose(group=1), "deconv", 1, [1, 4, 3, 3]),
}


@pytest.mark.parametrize("case", list(WEIGHTED))
@pytest.mark.parametrize("reduce_range", [False, True])
def test_weights_are_int8_per_output_channel_with_max_abs_over_qmax(case, reduce_range):
    make, name, axis, shape = WEIGHTED[case]
    proto = make()
    w = _weight_of(proto)
    qmax = 63 if reduce_range else 127
    model, _ = _quantize(proto, _feeds(shape, [0.0] * shape[1]), reduce_range=reduce_range)
    q, scale, zp, dq_axis = _dq(_node(model, name).inputs[1])
    expected_q, expected_scale = _expected_weight(w, axis, qmax)
    assert dq_axis == axis and q.dtype == np.int8 and scale.dtype == np.float32
    assert list(_node(model, name).inputs[1].shape) == list(w.shape)  # the DequantizeLinear's output shape
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    np.testing.assert_array_equal(q, expected_q)  # same float32 quotient, same rounding
    assert np.abs(q).max() == qmax
    # Gemm's DequantizeLinear names its zero point (onnxruntime forms QGemm only then); the others leave it out.
    if name == "gemm":
        assert zp is not None and zp.dtype == np.int8 and zp.shape == expected_scale.shape and not zp.any()
    else:
        assert zp is None
    assert "W" not in model.graph.initializers  # the float weight left the file


def test_a_grouped_conv_transpose_weight_is_per_tensor():
    """A grouped ConvTranspose has no single output-channel axis: one scale, ``max|w| / 127``."""
    proto = _conv_transpose(group=2)
    model, _ = _quantize(proto, _feeds([1, 4, 3, 3], [0] * 4))
    q, scale, zp, axis = _dq(_node(model, "deconv").inputs[1])
    expected_q, expected_scale = _expected_weight(_weight_of(proto), None)
    assert axis is None and scale.shape == () and zp is None
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    np.testing.assert_array_equal(q, expected_q)


def test_a_constant_first_operand_of_matmul_is_stored_per_tensor():
    """MatMul(A, x) with a constant A: A is the weight, stored as INT8 with one scale (4x smaller;
    onnxruntime 1.32 has no S8 x U8 QLinearMatMul, so it dequantizes A at load)."""
    a = _weights((3, 10), 0, seed=4)
    node = helper.make_node("MatMul", ["A", "x"], ["y"], name="mm")
    proto = _model([node], [_vi("x", [10, 5])], [_vi("y", [3, 5])], [numpy_helper.from_array(a, "A")])
    model, _ = _quantize(proto, _feeds([10, 5], [0] * 5))
    q, scale, zp, axis = _dq(_node(model, "mm").inputs[0])
    expected_q, expected_scale = _expected_weight(a, None)
    assert axis is None and scale.shape == ()
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    np.testing.assert_array_equal(q, expected_q)
    # x, the activation operand, is quantized with the range of the feeds.
    _, x_scale, x_zp, _ = _dq(_node(model, "mm").inputs[1])
    s, z = _activation_params(_feeds([10, 5], [0] * 5))
    np.testing.assert_allclose(x_scale, s, rtol=FLOAT32_RTOL)
    assert int(x_zp) == z
    assert "A" not in model.graph.initializers
    model, _ = _quantize(proto, _feeds([10, 5], [0] * 5), text="resolve-policy,calibrate,insert-qdq,verify", reduce_range=None)
    feed = _feeds([10, 5], [0] * 5, count=1, seed=1)[0]
    expected, got = outputs(proto, feed)[0], outputs(model, feed)[0]
    # 8-bit x and A over 10 products: within 3% of the output's scale.
    np.testing.assert_allclose(got, expected, atol=0.03 * np.abs(expected).max())


def test_a_per_tensor_policy_stores_one_scale():
    proto = _conv()
    model, ctx = _quantize(proto, _feeds([1, 4, 5, 5], [0] * 4), text="resolve-policy")
    spec = json.loads(_node(model, "conv").metadata_props[SPEC_KEY])
    spec["per_channel"] = False
    _node(model, "conv").metadata_props[SPEC_KEY] = json.dumps(spec)
    run_pipeline(model, build(parse_pipeline("calibrate(method=minmax),insert-qdq(bias_correction=false)"), ctx), ctx)
    q, scale, _, axis = _dq(_node(model, "conv").inputs[1])
    expected_q, expected_scale = _expected_weight(_weight_of(proto), None)
    assert axis is None and scale.shape == ()
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    np.testing.assert_array_equal(q, expected_q)
    # The INT32 bias then has one scale too: s_x * s_w.
    b_q, b_scale, _, b_axis = _dq(_node(model, "conv").inputs[2])
    x_scale, _ = _activation_params(_feeds([1, 4, 5, 5], [0] * 4))
    assert b_axis is None and b_scale.shape == ()
    np.testing.assert_allclose(b_scale, x_scale * expected_scale, rtol=1e-5)  # two float32 roundings
    bias = numpy_helper.to_array(proto.graph.initializer[1])
    assert np.abs(b_q - np.rint(bias / (x_scale * expected_scale))).max() <= 1  # a tie may move by one code


# ----------------------------------------------------------------------------------------------
# activations


def test_activation_parameters_are_the_calibrated_range_in_uint8():
    proto = _conv()
    feeds = _feeds([1, 4, 5, 5], [0.5, -1.0, 2.0, 0.0])
    model, _ = _quantize(proto, feeds)
    conv = _node(model, "conv")
    q_node = conv.inputs[0].producer().inputs[0].producer()
    assert q_node.op_type == "QuantizeLinear" and q_node.inputs[0].name == "x"
    _, scale, zp, _ = _dq(conv.inputs[0])
    expected_scale, expected_zp = _activation_params(feeds)
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    assert zp.dtype == np.uint8 and int(zp) == expected_zp
    # The Q and the DQ share one scale and one zero-point initializer.
    assert q_node.inputs[1] is conv.inputs[0].producer().inputs[1] and q_node.inputs[2] is conv.inputs[0].producer().inputs[2]
    # A graph output read by nobody else gets no Q/DQ: y is not quantized.
    assert [u.op_type for u, _ in model.graph.outputs[0].uses()] == []


def test_tensorrt_activations_are_symmetric_int8():
    proto = _conv()
    feeds = _feeds([1, 4, 5, 5], [0.5, -1.0, 2.0, 0.0])
    model, _ = _quantize(proto, feeds, target="tensorrt")
    _, scale, zp, _ = _dq(_node(model, "conv").inputs[0])
    peak = max(abs(float(np.concatenate([f["x"].ravel() for f in feeds]).min())), float(np.concatenate([f["x"].ravel() for f in feeds]).max()))
    np.testing.assert_allclose(scale, np.float32(peak) / np.float32(127), rtol=FLOAT32_RTOL)
    assert zp.dtype == np.int8 and int(zp) == 0


def test_generated_initializers_are_named_after_what_they_hold():
    proto = _conv()
    model, _ = _quantize(proto, _feeds([1, 4, 5, 5], [1.0, -1.0, 0.5, 0.0]))
    assert sorted(model.graph.initializers) == ["B_corrected_q", "B_corrected_scale", "W_q", "W_scale", "x_scale", "x_zp"]
    assert sorted(n.name for n in model.graph) == ["B_corrected_DQ", "W_DQ", "conv", "x_DQ", "x_Q"]
    conv = _node(model, "conv")
    assert [v.name for v in conv.inputs] == ["x_dq", "W_dq", "B_corrected_dq"]
    assert conv.inputs[0].producer().inputs[0].name == "x_q"
    # The Gemm without a bias gets one named after the node (the correction needs somewhere to go).
    model, _ = _quantize(_gemm(bias=False), _feeds([3, 10], np.linspace(-1, 1, 10)))
    assert [v.name for v in _node(model, "gemm").inputs] == ["x_dq", "W_dq", "gemm_bias_corrected_dq"]
    assert sorted(model.graph.initializers) == ["W_q", "W_scale", "W_zp", "gemm_bias_corrected_q", "gemm_bias_corrected_scale", "x_scale", "x_zp"]


# ----------------------------------------------------------------------------------------------
# INT32 bias


@pytest.mark.parametrize("case", ["conv", "grouped conv", "gemm transB", "gemm"])
def test_bias_is_int32_at_input_scale_times_weight_scale(case):
    make, name, axis, shape = WEIGHTED[case]
    proto = make()
    feeds = _feeds(shape, np.linspace(-1, 1, shape[1]))
    model, _ = _quantize(proto, feeds, text=UNCORRECTED)
    w = _weight_of(proto)
    bias = numpy_helper.to_array(proto.graph.initializer[1])
    _, w_scale = _expected_weight(w, axis)
    x_scale, _ = _activation_params(feeds)
    q, scale, zp, b_axis = _dq(_node(model, name).inputs[2])
    assert q.dtype == np.int32 and zp is None and b_axis == 0
    np.testing.assert_allclose(scale, x_scale * w_scale, rtol=1e-5)  # two float32 roundings apart at most
    assert np.abs(q.astype(np.int64) - np.rint(bias / (x_scale * w_scale))).max() <= 1  # a tie may move by one code
    assert "B" not in model.graph.initializers


def test_a_bias_that_would_overflow_int32_raises_its_channels_weight_scale():
    """Channel 0 has weights of 1e-6 and a bias of 1e4: at s_x * max|w|/127 the bias would need
    ~1e13 codes. Its weight scale is raised to |b| / (s_x * (2^31 - 1)) (plus 1e-6 relative
    head-room), the other channels keep max|w| / 127."""
    w = _weights((3, 2, 3, 3), 0, seed=1)
    w[0] *= 1e-6
    b = np.array([1e4, 0.3, -0.2], np.float32)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])
    proto = _model([node], [_vi("x", [1, 2, 4, 4])], [_vi("y", [1, 3, 4, 4])], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    feeds = _feeds([1, 2, 4, 4], [0, 0])
    model, _ = _quantize(proto, feeds, text=UNCORRECTED)
    x_scale, _ = _activation_params(feeds)
    _, own = _expected_weight(w, 0)
    needed = abs(float(b[0])) / (float(x_scale) * INT32_MAX)
    assert needed > 100 * own[0]  # the guard matters here
    expected = np.concatenate([[np.float32(needed * (1 + 1e-6))], own[1:]]).astype(np.float32)
    _, w_scale, _, _ = _dq(_node(model, "conv").inputs[1])
    np.testing.assert_allclose(w_scale, expected, rtol=FLOAT32_RTOL)
    q, _, _, _ = _dq(_node(model, "conv").inputs[2])
    _assert_bias_on_grid(q, b, x_scale * expected.astype(np.float64))


def _assert_bias_on_grid(q, bias, step):
    """``q · step`` is ``bias`` rounded to the grid: within half a step, plus the float32 rounding
    of the stored step (2^-24 relative, 1.2e-7 of |bias| for safety)."""
    assert q.dtype == np.int32
    np.testing.assert_array_less(np.abs(q * step - bias), step * 0.5 + np.abs(bias) * 1.2e-7 + 1e-12)


def test_a_per_tensor_weight_scale_is_raised_to_the_largest_channel_need():
    """A grouped ConvTranspose (one weight scale) with a bias of 1e4 on one channel."""
    proto = _conv_transpose(group=2, bias=[1e4, 0.1, 0.2, 0.3, 0.4, 0.5], seed=2)
    w = _weight_of(proto) * np.float32(1e-6)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "W"))
    feeds = _feeds([1, 4, 3, 3], [0] * 4)
    model, _ = _quantize(proto, feeds, text=UNCORRECTED)
    x_scale, _ = _activation_params(feeds)
    _, w_scale, _, axis = _dq(_node(model, "deconv").inputs[1])
    needed = 1e4 / (float(x_scale) * INT32_MAX)
    assert axis is None and needed > 100 * float(np.abs(w).max()) / 127
    expected = np.float32(needed * (1 + 1e-6))  # the 1e-6 head-room of min_weight_scale_for_bias
    np.testing.assert_allclose(w_scale, expected, rtol=FLOAT32_RTOL)
    q, b_scale, _, b_axis = _dq(_node(model, "deconv").inputs[2])
    assert b_scale.shape == () and b_axis is None
    _assert_bias_on_grid(q, np.float32([1e4, 0.1, 0.2, 0.3, 0.4, 0.5]), float(x_scale) * float(expected))


def test_a_shared_weight_keeps_its_scale_and_an_overflowing_bias_stays_float():
    """The weight is stored once for both convolutions, so one node's bias cannot raise it: that
    node's bias stays float (onnxruntime then runs it unfused), the other's becomes INT32."""
    w = _weights((2, 2, 1, 1), 0, seed=3) * np.float32(1e-6)
    nodes = [
        helper.make_node("Conv", ["x", "W", "big"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "W", "small"], ["b"], name="conv_b"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(np.array([1e4, 0], np.float32), "big"), numpy_helper.from_array(np.array([1e-9, 0], np.float32), "small")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    model, _ = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]), text=UNCORRECTED)
    _, w_scale, _, _ = _dq(_node(model, "conv_a").inputs[1])
    np.testing.assert_allclose(w_scale, _expected_weight(w.astype(np.float32), 0)[1], rtol=FLOAT32_RTOL)
    assert _node(model, "conv_a").inputs[1] is _node(model, "conv_b").inputs[1]
    assert _node(model, "conv_a").inputs[2].name == "big" and _node(model, "conv_a").inputs[2].const_value.dtype == ir.DataType.FLOAT
    b_q, _, _, b_axis = _dq(_node(model, "conv_b").inputs[2])
    assert b_q.dtype == np.int32 and b_axis == 0


def test_a_bias_left_float_is_reported_once_and_the_next_run_changes_nothing(caplog):
    w = _weights((2, 2, 1, 1), 0, seed=3) * np.float32(1e-6)
    nodes = [
        helper.make_node("Conv", ["x", "W", "big"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "W"], ["b"], name="conv_b"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(np.array([1e4, 0], np.float32), "big")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    with caplog.at_level("WARNING", logger="qonnx.passes.insert_qdq"):
        model, ctx = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]), text=UNCORRECTED)
    assert [r.getMessage() for r in caplog.records] == ["conv_a: bias does not fit INT32 at scale input*weight; left in float"]
    assert _rerun(model, ctx) is False


def _rerun(model, ctx, text="insert-qdq(bias_correction=false)"):
    """Run insert-qdq again on a quantized model; returns whether it reported a change (and when
    it reports none, checks that no node was added)."""
    ops = [n.op_type for n in model.graph]
    records = run_pipeline(model, build(parse_pipeline(text), ctx), ctx)
    if records[-1].modified is False:
        assert [n.op_type for n in model.graph] == ops
    return records[-1].modified


def test_a_conv_whose_weight_is_overridable_keeps_a_float_bias():
    """A weight that is also a graph input may be replaced at run time: it is no constant, stays
    float, and so does the bias (INT32 needs the weight's scale)."""
    proto = _conv(seed=20)
    proto.graph.input.append(_vi("W", [6, 4, 3, 3]))
    model, ctx = _quantize(proto, _feeds([1, 4, 5, 5], [0.5, 0, 0, 0]))
    conv = _node(model, "conv")
    assert [v.name for v in conv.inputs] == ["x_dq", "W", "B"]
    assert _rerun(model, ctx) is False


def test_a_conv_reading_a_non_finite_input_keeps_it_and_its_bias_float():
    proto = _conv(seed=21)
    feeds = _feeds([1, 4, 5, 5], [0, 0, 0, 0])
    feeds[1]["x"][0, 0, 0, 0] = np.inf
    model, ctx = _quantize(proto, feeds)
    conv = _node(model, "conv")
    # x and the bias stay float (the bias corrected: the weight is rounded all the same).
    assert conv.inputs[0].name == "x" and conv.inputs[2].name == "B_corrected" and conv.inputs[2].const_value.dtype == ir.DataType.FLOAT
    q, scale, _, _ = _dq(conv.inputs[1])
    expected_q, expected_scale = _expected_weight(_weight_of(proto), 0)
    np.testing.assert_array_equal(q, expected_q)
    assert _rerun(model, ctx) is False


def test_a_float_bias_or_operand_in_a_quantized_model_is_quantized_by_the_next_run():
    """A model quantized before, with its INT32 bias and its Add's constant put back in float
    (an edit by hand): the next run stores them again, and says it changed the model."""
    model, ctx = _quantize(_conv(seed=22), _feeds([1, 4, 5, 5], [0] * 4), text=UNCORRECTED)
    conv = _node(model, "conv")
    b_q, b_scale, _, _ = _dq(conv.inputs[2])
    float_bias = ir.Value(name="B_edit", const_value=ir.tensor((b_q * b_scale).astype(np.float32), name="B_edit"))
    model.graph.register_initializer(float_bias)
    conv.replace_input_with(2, float_bias)
    assert _rerun(model, ctx) is True
    again, _, _, _ = _dq(conv.inputs[2])
    np.testing.assert_array_equal(again, b_q)  # the same grid, the same codes
    model, ctx = _quantize(_operand_model([-1.5, 0.5, 2.0]), _feeds([1, 2, 3, 3], [0, 0]), text=UNCORRECTED)
    add = _node(model, "add")
    k = ir.Value(name="k_edit", const_value=ir.tensor(np.float32([-1.5, 0.5, 2.0]).reshape(1, 3, 1, 1), name="k_edit"))
    model.graph.register_initializer(k)
    add.replace_input_with(1, k)
    assert _rerun(model, ctx) is True
    assert _dq(add.inputs[1])[0].dtype == np.uint8


# ----------------------------------------------------------------------------------------------
# bias correction


def _expected_conv_correction(w, q, w_scale, bias, means, group):
    """``b[o] - Σ_{c,k} ΔW[o,c,k] · E[x_{g(o)·C/g + c}]``, written out channel by channel."""
    dw = q.astype(np.float64) * w_scale.reshape(-1, 1, 1, 1).astype(np.float64) - w.astype(np.float64)
    out_c, per_group = w.shape[0], w.shape[1]
    corrected = np.array(bias, np.float64)
    for o in range(out_c):
        g = o // (out_c // group)
        for c in range(per_group):
            corrected[o] -= dw[o, c].sum() * means[g * per_group + c]
    return corrected


def _assert_corrected_bias(model, node: str, feeds, w_scale, expected, original) -> None:
    """The node's INT32 bias is ``expected`` to within half a step of its grid (x_scale · w_scale,
    float32 rounding on top), and the correction is well above that grid, so that the check could fail."""
    x_scale, _ = _activation_params(feeds)
    b_q, _, _, _ = _dq(_node(model, node).inputs[2])
    step = x_scale * w_scale.astype(np.float64)
    tolerance = step * 0.5 * (1 + 1e-5) + 1e-7  # the INT32 grid: half a step (the float32 bias: 1e-7)
    assert np.abs(expected - original).max() > 20 * tolerance.max()  # the correction is well above the grid
    np.testing.assert_array_less(np.abs(b_q * step - expected), tolerance)


@pytest.mark.parametrize("group,out_c,in_c", [(1, 6, 4), (2, 6, 4), (4, 4, 4)])
def test_conv_bias_correction_subtracts_the_mean_shift_of_the_rounded_weights(group, out_c, in_c):
    proto = _conv(out_c=out_c, in_c=in_c, group=group, seed=group)
    feeds = _feeds([1, in_c, 5, 5], np.linspace(-2.0, 3.0, in_c), count=5)
    model, _ = _quantize(proto, feeds)
    w = _weight_of(proto)
    bias = numpy_helper.to_array(proto.graph.initializer[1])
    q, w_scale = _expected_weight(w, 0)
    expected = _expected_conv_correction(w, q, w_scale, bias, _channel_means(feeds), group)
    _assert_corrected_bias(model, "conv", feeds, w_scale, expected, bias)


@pytest.mark.parametrize("trans_b", [1, 0])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_bias_correction_subtracts_the_mean_shift_of_the_rounded_weights(trans_b, bias):
    proto = _gemm(trans_b=trans_b, bias=bias, seed=5)
    feeds = _feeds([3, 10], np.linspace(-2.0, 3.0, 10), count=5)
    model, _ = _quantize(proto, feeds)
    w = _weight_of(proto)
    axis = 0 if trans_b else 1
    q, w_scale = _expected_weight(w, axis)
    dw = q.astype(np.float64) * np.expand_dims(w_scale, 1 - axis).astype(np.float64) - w.astype(np.float64)
    dw = dw if trans_b else dw.T  # [N, K]: y = x · Wᵀ
    means = _channel_means(feeds)
    b = numpy_helper.to_array(proto.graph.initializer[1]).astype(np.float64) if bias else np.zeros(6)
    expected = np.array([b[n] - sum(dw[n, k] * means[k] for k in range(10)) for n in range(6)])
    _assert_corrected_bias(model, "gemm", feeds, w_scale, expected, b)
    assert "B" not in model.graph.initializers and "B_corrected" not in model.graph.initializers


@pytest.mark.parametrize("attributes", [{"alpha": 0.5}, {"beta": 0.5}, {"transA": 1}])
def test_a_scaled_or_transposed_gemm_keeps_its_bias(attributes):
    """Bias correction assumes y = x · W + b; with alpha, beta or transA the bias is stored as given."""
    proto = _gemm(trans_b=1, seed=6, **attributes)
    shape = [10, 3] if attributes.get("transA") else [3, 10]
    feeds = _feeds(shape, np.linspace(-2.0, 3.0, shape[1]), count=5)
    model, ctx = _quantize(proto, feeds)
    assert ctx.analyses["ranges"].channel_means == {}  # no node to correct: no means measured
    b_q, _, _, _ = _dq(_node(model, "gemm").inputs[2])
    x_scale, _ = _activation_params(feeds)
    _, w_scale = _expected_weight(_weight_of(proto), 0)
    _assert_bias_on_grid(b_q, numpy_helper.to_array(proto.graph.initializer[1]), x_scale * w_scale.astype(np.float64))


def test_a_shared_weight_is_not_corrected_for_one_of_its_readers():
    w = _weights((3, 2, 1, 1), 0, seed=7)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B1"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "W", "B2"], ["b"], name="conv_b"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    b1, b2 = np.array([0.1, 0.2, 0.3], np.float32), np.array([-0.1, 0.0, 0.4], np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b1, "B1"), numpy_helper.from_array(b2, "B2")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 3, 3, 3])], inits)
    feeds = _feeds([1, 2, 3, 3], [3.0, -3.0])
    model, ctx = _quantize(proto, feeds)
    assert ctx.analyses["ranges"].channel_means == {}  # no node to correct: no means measured
    x_scale, _ = _activation_params(feeds)
    _, w_scale = _expected_weight(w, 0)
    for name, bias in (("conv_a", b1), ("conv_b", b2)):
        q, _, _, _ = _dq(_node(model, name).inputs[2])
        _assert_bias_on_grid(q, bias, x_scale * w_scale.astype(np.float64))


def test_correction_is_measured_on_the_tensor_the_node_reads():
    """Two convolutions in a row: the second is corrected with the means of the first's output,
    measured here with onnxruntime on the float model."""
    w0, w1 = _weights((3, 2, 1, 1), 0, seed=8), _weights((4, 3, 1, 1), 0, seed=9)
    b0, b1 = np.array([4.0, -3.0, 5.0], np.float32), np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["h"], name="conv0"), helper.make_node("Conv", ["h", "W1", "B1"], ["y"], name="conv1")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w0, "W0"), (b0, "B0"), (w1, "W1"), (b1, "B1"))]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 4, 3, 3])], inits)
    feeds = _feeds([1, 2, 3, 3], [2.0, -1.0])
    model, ctx = _quantize(proto, feeds)
    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    tapped.graph.output.append(_vi("h", [1, 3, 3, 3]))
    h = [{"h": outputs(tapped, f)[1]} for f in feeds]
    means = _channel_means(h, "h")
    assert sorted(ctx.analyses["ranges"].channel_means) == ["h", "x"]
    q, w_scale = _expected_weight(w1, 0)
    expected = _expected_conv_correction(w1, q, w_scale, b1, means, 1)
    h_scale, _ = _activation_params(h, "h")
    b_q, _, _, _ = _dq(_node(model, "conv1").inputs[2])
    step = h_scale * w_scale.astype(np.float64)
    # The INT32 grid (half a step) and the range: calibration sees h in float32 as we do here.
    tolerance = step * 0.5 * (1 + 1e-4) + 1e-6
    assert np.abs(expected - b1).max() > 20 * tolerance.max()
    np.testing.assert_array_less(np.abs(b_q * step - expected), tolerance)


@pytest.mark.parametrize("c_shape", [(1, 6), (3, 6)])
def test_a_gemm_bias_of_two_dimensions_is_kept(c_shape):
    """Gemm's C may be [1, N] or [M, N]: bias correction (which works on a 1-D bias) leaves it as
    it is, and must not put a corrected zero bias in its place."""
    proto = _gemm(trans_b=1, seed=10, c=5.0 + np.linspace(-0.5, 0.5, int(np.prod(c_shape))).reshape(c_shape))
    feeds = _feeds([3, 10], np.linspace(-2.0, 3.0, 10), count=5)
    model, _ = _quantize(proto, feeds, reduce_range=None)  # onnxruntime runs it: weights as this CPU wants them
    gemm = _node(model, "gemm")
    assert gemm.inputs[2].name == "B" and gemm.inputs[2].const_value.numpy().shape == c_shape
    feed = _feeds([3, 10], np.linspace(-2.0, 3.0, 10), count=1, seed=11)[0]
    expected, got = outputs(proto, feed)[0], outputs(model, feed)[0]
    # Outputs reach ~35; 8-bit activations and weights leave errors of a few tenths, while a
    # dropped bias (4.5 to 5.5 here) would cost more than 4.
    np.testing.assert_allclose(got, expected, atol=1.0)


def test_a_conv_bias_that_is_a_graph_input_is_kept():
    proto = _conv(seed=12)
    proto.graph.input.append(_vi("B", [6]))  # an initializer that is also an input: overridable, not a constant
    model, _ = _quantize(proto, _feeds([1, 4, 5, 5], [1.0, -1.0, 0.5, 2.0]))
    conv = _node(model, "conv")
    assert conv.inputs[2].name == "B" and conv.inputs[2].is_graph_input()


# ----------------------------------------------------------------------------------------------
# constant operands of Add/Mul and Gather tables


def _operand_model(constant):
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "k"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "k"], ["m"], name="mul"),
        helper.make_node("Mul", ["m", "k2"], ["p"], name="mul2"),
        helper.make_node("Conv", ["p", "W2"], ["y"], name="conv2"),
    ]
    inits = [
        numpy_helper.from_array(_weights((3, 2, 1, 1), 0, seed=13), "W"),
        numpy_helper.from_array(np.asarray(constant, np.float32).reshape(1, 3, 1, 1), "k"),
        numpy_helper.from_array((np.asarray(constant, np.float32) * 2).reshape(1, 3, 1, 1), "k2"),
        numpy_helper.from_array(_weights((2, 3, 1, 1), 0, seed=14), "W2"),
    ]
    return _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)


def test_a_constant_operand_of_add_and_mul_is_stored_in_the_activation_type():
    constant = [-1.5, 0.5, 2.0]
    proto = _operand_model(constant)
    model, _ = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]))
    add, mul, mul2 = _node(model, "add"), _node(model, "mul"), _node(model, "mul2")
    q, scale, zp, axis = _dq(add.inputs[1])
    # Range [-1.5, 2.0] (it contains 0): scale 3.5 / 255, zero point round(1.5 / scale) = 109.
    expected_scale = np.float32(3.5) / np.float32(255)
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    assert zp.dtype == np.uint8 and int(zp) == 109 and axis is None
    np.testing.assert_array_equal(q.ravel(), np.clip(np.rint(np.float32(constant) / expected_scale) + 109, 0, 255))
    assert mul.inputs[1] is add.inputs[1]  # the same constant is stored once
    q2, scale2, zp2, _ = _dq(mul2.inputs[1])
    np.testing.assert_allclose(scale2, np.float32(7.0) / np.float32(255), rtol=FLOAT32_RTOL)  # [-3, 4]
    assert int(zp2) == 109  # round(3 / (7 / 255)) = round(109.29)
    assert not {"k", "k2"} & set(model.graph.initializers)


def test_tensorrt_leaves_an_add_of_a_constant_float_with_the_reason():
    """tensorrt quantizes only residual Adds (two computed inputs, one from a weighted op): an Add of
    a constant is a bias TensorRT adds in float, so the constant stays float and the plan says why."""
    constant = np.float32([-1.5, 0.5, 2.0])
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "k"], ["a"], name="add"),
        helper.make_node("Conv", ["a", "W2"], ["y"], name="conv2"),
    ]
    inits = [
        numpy_helper.from_array(_weights((3, 2, 1, 1), 0, seed=13), "W"),
        numpy_helper.from_array(constant.reshape(1, 3, 1, 1), "k"),
        numpy_helper.from_array(_weights((2, 3, 1, 1), 0, seed=14), "W2"),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    model, _ = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]), target="tensorrt")
    add = _node(model, "add")
    assert add.inputs[1].name == "k" and add.inputs[1].producer() is None  # the float constant itself
    plan = json.loads(model.metadata_props["qonnx.plan"])
    assert plan["reasons"]["add"].startswith("not a residual Add")
    _, scale, zp, _ = _dq(_node(model, "conv2").inputs[0])  # the Conv after it is quantized, symmetric
    assert zp.dtype == np.int8 and int(zp) == 0 and scale.size == 1


def test_a_positive_constant_operand_range_starts_at_zero():
    proto = _operand_model([0.5, 1.1, 2.0])
    model, _ = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]))
    q, scale, zp, _ = _dq(_node(model, "add").inputs[1])
    np.testing.assert_allclose(scale, np.float32(2.0) / np.float32(255), rtol=FLOAT32_RTOL)  # [0, 2]
    assert int(zp) == 0
    np.testing.assert_array_equal(q.ravel(), [64, 140, 255])  # 0.5 / (2 / 255) = 63.75, 1.1 / (2 / 255) = 140.25


def test_a_gather_table_is_stored_with_its_groups_parameters():
    rng = np.random.default_rng(15)
    table = rng.standard_normal((12, 4)).astype(np.float32)
    table[3, 1], table[7, 2] = -2.5, 3.0
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "W"], ["y"], name="proj"),
    ]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(_weights((4, 5), 1, seed=16), "W")]
    proto = _model(nodes, [_vi("ids", [1, 6], TensorProto.INT64)], [_vi("y", [1, 6, 5])], inits)
    feeds = [{"ids": np.arange(6, dtype=np.int64).reshape(1, 6)} for _ in range(2)]
    model, _ = _quantize(proto, feeds)
    q, scale, zp, _ = _dq(_node(model, "embed").inputs[0])
    expected_scale = np.float32(5.5) / np.float32(255)  # the table's range [-2.5, 3.0]
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    expected_zp = int(np.round(2.5 / expected_scale))
    assert zp.dtype == np.uint8 and int(zp) == expected_zp
    np.testing.assert_array_equal(q, np.clip(np.rint(table / expected_scale) + expected_zp, 0, 255))
    # The Gather's output is quantized with the same parameters (onnxruntime gathers bytes).
    e_q = next(u for u, _ in _node(model, "embed").outputs[0].uses() if u.op_type == "QuantizeLinear")
    assert e_q.inputs[1] is _node(model, "embed").inputs[0].producer().inputs[1]
    assert "table" not in model.graph.initializers
    table_dq = _node(model, "embed").inputs[0].producer()
    assert table_dq.name == "table_DQ" and table_dq.outputs[0].name == "table_dq" and table_dq.inputs[0].name == "table_q"


# ----------------------------------------------------------------------------------------------
# dynamic quantization


def test_dynamic_quantization_serves_only_the_dynamic_readers():
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
        helper.make_node("Add", ["x", "one"], ["a"], name="add"),
        helper.make_node("Concat", ["m", "a"], ["y"], name="cat", axis=-1),
    ]
    inits = [numpy_helper.from_array(_weights((6, 6), 1, seed=17), "W"), numpy_helper.from_array(np.ones(6, np.float32), "one")]
    proto = _model(nodes, [_vi("x", [2, 6])], [_vi("y", [2, 12])], inits)
    model = to_ir(proto)
    # onnxruntime runs it: 7-bit weights, so that every CPU computes the same integers (full-range
    # MatMul weights saturate U8S8 products on x86 without VNNI: one output was 10 off here).
    ctx = Context(mode="dynamic", reduce_range=True)
    run_pipeline(model, build(parse_pipeline("resolve-policy,calibrate,insert-qdq"), ctx), ctx)
    dyn = _node(model, "mm").inputs[0].producer().inputs[0].producer()
    assert dyn.op_type == "DynamicQuantizeLinear" and dyn.inputs[0].name == "x"
    assert [v.dtype for v in dyn.outputs] == [ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8]
    assert _node(model, "add").inputs[0].name == "x"  # the float reader reads the exact x
    feed = {"x": np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)}
    expected, got = outputs(proto, feed)[0], outputs(model, feed)[0]
    np.testing.assert_array_equal(got[:, 6:], expected[:, 6:])  # the float half is untouched
    # The MatMul half: 8-bit x and 7- or 8-bit weights over 6 products: within 3% of the output's
    # scale (the float32 half above is exact).
    np.testing.assert_allclose(got[:, :6], expected[:, :6], atol=0.03 * np.abs(expected[:, :6]).max())


def test_dynamic_quantization_names_its_tensors_and_runs_once():
    """MatMul of two activations in dynamic mode: the only change is the run-time quantizer of
    each operand, named after the tensor; a second run changes nothing."""
    nodes = [helper.make_node("MatMul", ["x", "z"], ["y"], name="mm")]
    proto = _model(nodes, [_vi("x", [2, 3]), _vi("z", [3, 4])], [_vi("y", [2, 4])])
    model = to_ir(proto)
    ctx = Context(mode="dynamic")
    records = run_pipeline(model, build(parse_pipeline("resolve-policy,calibrate,insert-qdq"), ctx), ctx)
    assert records[-1].modified is True
    dyn = {n.inputs[0].name: n for n in model.graph if n.op_type == "DynamicQuantizeLinear"}
    assert sorted(dyn) == ["x", "z"]
    assert dyn["x"].name == "x_DynQ" and [v.name for v in dyn["x"].outputs] == ["x_dyn_q", "x_dyn_scale", "x_dyn_zp"]
    assert list(dyn["x"].outputs[0].shape) == [2, 3] and dyn["x"].outputs[1].shape is None
    dq = _node(model, "mm").inputs[0].producer()
    assert [v.name for v in dq.inputs] == ["x_dyn_q", "x_dyn_scale", "x_dyn_zp"] and dq.name == "x_DQ"
    assert _rerun(model, ctx, "resolve-policy,calibrate,insert-qdq") is False


# ----------------------------------------------------------------------------------------------
# more constant operands


def test_a_negative_constant_operand_range_ends_at_zero():
    proto = _operand_model([-2.0, -0.5, -1.0])
    model, _ = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]))
    q, scale, zp, _ = _dq(_node(model, "add").inputs[1])
    expected_scale = np.float32(2.0) / np.float32(255)  # [-2, 0]
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    assert int(zp) == 255
    np.testing.assert_array_equal(q.ravel(), np.clip(np.rint(np.float32([-2.0, -0.5, -1.0]) / expected_scale) + 255, 0, 255))
    dq = _node(model, "add").inputs[1].producer()
    assert [v.name for v in dq.inputs] == ["k_q", "k_scale", "k_zp"] and dq.outputs[0].name == "k_dq"


def test_asymmetric_int8_activations_store_the_operand_in_int8():
    """A policy may ask for INT8 activations that are not symmetric: zero point -128 + round(-lo / s)."""
    proto = _operand_model([-1.5, 0.5, 2.0])
    model = to_ir(proto)
    ctx = Context(reduce_range=False, calib=ListSource(_feeds([1, 2, 3, 3], [0, 0]), input_specs(model)))
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    for node in model.graph:
        spec = json.loads(node.metadata_props[SPEC_KEY])
        if spec["format"] == "int8":
            node.metadata_props[SPEC_KEY] = json.dumps(dict(spec, activation_dtype="int8"))
    run_pipeline(model, build(parse_pipeline("calibrate(method=minmax),insert-qdq"), ctx), ctx)
    q, scale, zp, _ = _dq(_node(model, "add").inputs[1])
    expected_scale = np.float32(3.5) / np.float32(255)
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    assert zp.dtype == np.int8 and int(zp) == -128 + 109  # round(1.5 / (3.5 / 255)) = 109
    np.testing.assert_array_equal(q.ravel(), np.rint(np.float32([-1.5, 0.5, 2.0]) / expected_scale) - 19)


# ----------------------------------------------------------------------------------------------
# models quantized before, in part


def test_a_tensor_already_quantized_for_another_reader_is_quantized_for_the_conv():
    """x feeds a Q → DQ → Relu made elsewhere, and a Conv directly: the Conv gets its own Q/DQ of x
    (the other pair, with its own parameters, is left as it was)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q0"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq0"),
        helper.make_node("Relu", ["xd"], ["r"], name="relu"),
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "r"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "z"), numpy_helper.from_array(_weights((2, 2, 1, 1), 0), "W")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    feeds = _feeds([1, 2, 3, 3], [0, 0])
    model, _ = _quantize(proto, feeds)
    _, scale, zp, _ = _dq(_node(model, "conv").inputs[0])
    expected_scale, expected_zp = _activation_params(feeds)
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    assert int(zp) == expected_zp
    assert [v.name for v in _node(model, "relu").inputs] == ["xd"] and _node(model, "dq0").inputs[1].name == "s"


def test_a_float_weight_in_a_quantized_model_is_stored_by_the_next_run():
    proto = _conv(seed=23)
    model, ctx = _quantize(proto, _feeds([1, 4, 5, 5], [0] * 4), text=UNCORRECTED)
    conv = _node(model, "conv")
    w = ir.Value(name="W_edit", const_value=ir.tensor(_weight_of(proto), name="W_edit"))
    model.graph.register_initializer(w)
    conv.replace_input_with(1, w)
    assert _rerun(model, ctx) is True
    q, scale, _, axis = _dq(conv.inputs[1])
    expected_q, expected_scale = _expected_weight(_weight_of(proto), 0)
    np.testing.assert_array_equal(q, expected_q)
    assert "W_edit" not in model.graph.initializers


def test_a_bias_stored_already_is_left_alone_when_the_weight_is_stored_again():
    """Weight float, bias INT32 (an edit by hand): bias correction cannot change a stored bias."""
    proto = _conv(seed=24)
    feeds = _feeds([1, 4, 5, 5], [1.0, -2.0, 0.5, 3.0])
    model, ctx = _quantize(proto, feeds)
    conv = _node(model, "conv")
    bias_dq = conv.inputs[2]
    w = ir.Value(name="W_edit", const_value=ir.tensor(_weight_of(proto), name="W_edit"))
    model.graph.register_initializer(w)
    conv.replace_input_with(1, w)
    assert _rerun(model, ctx, "insert-qdq") is True
    assert conv.inputs[2] is bias_dq and _dq(conv.inputs[1])[0].dtype == np.int8


def test_a_weight_quantized_elsewhere_along_its_input_channels_leaves_the_bias_float():
    """W from DequantizeLinear with one scale per input channel (axis 1): the INT32 bias needs one
    scale per output channel, so the bias stays float, and a second run changes nothing."""
    w = _weights((3, 2, 1, 1), 1, seed=25)
    w_scale = (np.abs(w).max(axis=(0, 2, 3)) / 127).astype(np.float32)
    w_q = np.rint(w / w_scale.reshape(1, -1, 1, 1)).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["W_q", "W_scale"], ["W"], name="w_dq", axis=1),
        helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv"),
    ]
    inits = [numpy_helper.from_array(w_q, "W_q"), numpy_helper.from_array(w_scale, "W_scale"), numpy_helper.from_array(np.float32([0.1, 0.2, 0.3]), "B")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 3, 3, 3])], inits)
    model, ctx = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]))
    conv = _node(model, "conv")
    assert conv.inputs[1].name == "W" and conv.inputs[2].name == "B"
    assert _rerun(model, ctx) is False


def test_a_gemm_bias_broadcast_from_one_value_is_stored_uncorrected():
    """C of shape [1]: no correction (it has one value for six outputs); the weight then takes one
    scale (so that the INT32 bias has one too), and the bias is 0.25 on that grid."""
    proto = _gemm(trans_b=1, seed=26, c=[0.25])
    feeds = _feeds([3, 10], np.linspace(-2.0, 3.0, 10))
    model, _ = _quantize(proto, feeds)
    _, w_scale, _, w_axis = _dq(_node(model, "gemm").inputs[1])
    _, expected_w_scale = _expected_weight(_weight_of(proto), None)
    assert w_axis is None
    np.testing.assert_allclose(w_scale, expected_w_scale, rtol=FLOAT32_RTOL)
    b_q, _, _, _ = _dq(_node(model, "gemm").inputs[2])
    x_scale, _ = _activation_params(feeds)
    _assert_bias_on_grid(b_q, np.float32([0.25]), float(x_scale) * float(expected_w_scale))


def test_a_gemm_without_a_trans_b_attribute_is_corrected_as_x_times_b():
    proto = _gemm(trans_b=0, seed=27)
    del proto.graph.node[0].attribute[:]  # transB absent: 0 by the ONNX default
    feeds = _feeds([3, 10], np.linspace(-2.0, 3.0, 10), count=5)
    model, _ = _quantize(proto, feeds)
    w = _weight_of(proto)
    q, w_scale = _expected_weight(w, 1)
    dw = (q.astype(np.float64) * w_scale.astype(np.float64) - w).T  # [N, K]
    b = numpy_helper.to_array(proto.graph.initializer[1]).astype(np.float64)
    expected = b - dw @ _channel_means(feeds)
    _assert_corrected_bias(model, "gemm", feeds, w_scale, expected, b)


def test_a_matmul_of_two_constants_stores_b_as_the_weight():
    """Not folded (insert-qdq runs alone here): B is the weight, per output channel; A is left."""
    a, b = _weights((3, 4), 0, seed=28), _weights((4, 5), 1, seed=29)
    nodes = [helper.make_node("MatMul", ["A", "B"], ["m"], name="mm"), helper.make_node("Add", ["m", "x"], ["y"], name="add")]
    proto = _model(nodes, [_vi("x", [3, 5])], [_vi("y", [3, 5])], [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")])
    model, _ = _quantize(proto, _feeds([3, 5], [0] * 5))
    mm = _node(model, "mm")
    q, scale, _, axis = _dq(mm.inputs[1])
    expected_q, expected_scale = _expected_weight(b, 1)
    assert axis == 1 and mm.inputs[0].name == "A"
    np.testing.assert_array_equal(q, expected_q)


def test_two_activation_operands_are_all_a_matmul_needs():
    nodes = [helper.make_node("MatMul", ["x", "z"], ["m"], name="mm"), helper.make_node("Relu", ["m"], ["y"], name="relu")]
    proto = _model(nodes, [_vi("x", [2, 3]), _vi("z", [3, 4])], [_vi("y", [2, 4])])
    feeds = [dict(f, z=g["z"]) for f, g in zip(_feeds([2, 3], [0] * 3), _feeds([3, 4], [0] * 4, name="z", seed=1))]
    model = to_ir(proto)
    ctx = Context(reduce_range=False, calib=ListSource(feeds, input_specs(model)))
    records = run_pipeline(model, build(parse_pipeline(STATIC), ctx), ctx)
    assert records[-1].modified is True
    assert [v.name for v in _node(model, "mm").inputs] == ["x_dq", "z_dq"]
    q = next(n for n in model.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "x")
    assert q.outputs[0].name == "x_q" and list(q.outputs[0].shape) == [2, 3] and q.outputs[0].dtype == ir.DataType.UINT8


# ----------------------------------------------------------------------------------------------
# activation types, ranges


def _with_spec(proto, feeds, **changes):
    """resolve-policy, then the INT8 specs changed by ``changes``, then calibration and insert-qdq."""
    model = to_ir(proto)
    ctx = Context(reduce_range=False, calib=ListSource(feeds, input_specs(model)))
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    for node in model.graph:
        spec = json.loads(node.metadata_props[SPEC_KEY])
        if spec["format"] == "int8":
            node.metadata_props[SPEC_KEY] = json.dumps(dict(spec, **changes))
    run_pipeline(model, build(parse_pipeline("calibrate(method=minmax),insert-qdq(bias_correction=false)"), ctx), ctx)
    return model


def test_symmetric_uint8_activations_use_the_whole_uint8_range():
    """Symmetric UINT8 (an odd choice a policy may make): scale max|x| / 255, zero point 0."""
    feeds = _feeds([1, 2, 3, 3], [0, 0])
    model = _with_spec(_operand_model([-1.5, 0.5, 2.0]), feeds, symmetric_activations=True)
    _, scale, zp, _ = _dq(_node(model, "conv").inputs[0])
    peak = float(np.abs(np.concatenate([f["x"].ravel() for f in feeds])).max())
    np.testing.assert_allclose(scale, np.float32(peak) / np.float32(255), rtol=FLOAT32_RTOL)
    assert zp.dtype == np.uint8 and int(zp) == 0
    _, k_scale, k_zp, _ = _dq(_node(model, "add").inputs[1])
    np.testing.assert_allclose(k_scale, np.float32(2.0) / np.float32(255), rtol=FLOAT32_RTOL)
    assert k_zp.dtype == np.uint8


def test_asymmetric_int8_activations_shift_the_zero_point():
    feeds = _feeds([1, 2, 3, 3], [0, 0])
    model = _with_spec(_operand_model([-1.5, 0.5, 2.0]), feeds, activation_dtype="int8")
    _, scale, zp, _ = _dq(_node(model, "conv").inputs[0])
    expected_scale, expected_zp = _activation_params(feeds)
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    assert zp.dtype == np.int8 and int(zp) == expected_zp - 128


def test_a_range_that_is_not_finite_is_refused():
    from qonnx.calib.ranges import RangeTable, TensorRange
    from qonnx.errors import UserError

    model = to_ir(_conv(seed=30))
    ctx = Context(reduce_range=False)
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    ctx.analyses["ranges"] = RangeTable({"x": TensorRange(-np.inf, 1.0)})
    with pytest.raises(UserError, match="^no calibration range for tensor 'x' or its scale group$"):
        run_pipeline(model, build(parse_pipeline("insert-qdq"), ctx), ctx)


def test_a_tensor_left_float_for_its_non_finite_values_is_logged(caplog):
    feeds = _feeds([1, 4, 5, 5], [0] * 4)
    feeds[0]["x"][0, 1, 2, 2] = -np.inf
    with caplog.at_level("INFO", logger="qonnx.passes.insert_qdq"):
        _quantize(_conv(seed=31), feeds)
    assert "x held non-finite values in calibration; left in float" in [r.getMessage() for r in caplog.records]


def test_a_gather_table_in_a_group_kept_float_stays_float():
    """Gather → e → Concat(e, m) → MatMul, with m holding -inf: the whole group (e, m, the Concat's
    output) stays float, and so does the table; a second run changes nothing."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("Concat", ["e", "m"], ["cat"], name="cat", axis=-1),
        helper.make_node("MatMul", ["cat", "W"], ["y"], name="proj"),
    ]
    inits = [numpy_helper.from_array(_weights((10, 4), 1, seed=32), "table"), numpy_helper.from_array(_weights((6, 3), 1, seed=33), "W")]
    proto = _model(nodes, [_vi("ids", [1, 5], TensorProto.INT64), _vi("m", [1, 5, 2])], [_vi("y", [1, 5, 3])], inits)
    m = np.zeros((1, 5, 2), np.float32)
    m[0, 0, 0] = -np.inf
    feeds = [{"ids": np.arange(5, dtype=np.int64).reshape(1, 5), "m": m}]
    model, ctx = _quantize(proto, feeds)
    assert _node(model, "embed").inputs[0].name == "table" and "table" in model.graph.initializers
    assert _rerun(model, ctx) is False


# ----------------------------------------------------------------------------------------------
# what the pass reports, requires and ensures


def test_a_conv_after_ops_it_cannot_correct_is_corrected():
    """x → Sigmoid → Mul (SiLU) → Conv: the first two quantized nodes have no bias; the Conv's is corrected."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
        helper.make_node("Mul", ["x", "s"], ["m"], name="silu"),
        helper.make_node("Conv", ["m", "W", "B"], ["y"], name="conv"),
    ]
    inits = [numpy_helper.from_array(_weights((3, 2, 1, 1), 0, seed=34), "W"), numpy_helper.from_array(np.float32([0.1, 0.2, 0.3]), "B")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 3, 3, 3])], inits)
    model, ctx = _quantize(proto, _feeds([1, 2, 3, 3], [2.0, -1.0]))
    assert list(ctx.analyses["ranges"].channel_means) == ["m"]
    assert _node(model, "conv").inputs[2].name == "B_corrected_dq"


def test_the_pass_reports_a_change_when_the_last_tensor_stays_float():
    """MatMul(x, m) with m holding -inf: x is quantized, m (the last one planned) is not."""
    nodes = [helper.make_node("MatMul", ["x", "m"], ["y"], name="mm")]
    proto = _model(nodes, [_vi("x", [2, 3]), _vi("m", [3, 2])], [_vi("y", [2, 2])])
    m = np.zeros((3, 2), np.float32)
    m[0, 0] = -np.inf
    feeds = [{"x": np.ones((2, 3), np.float32), "m": m}]
    model = to_ir(proto)
    ctx = Context(reduce_range=False, calib=ListSource(feeds, input_specs(model)))
    records = run_pipeline(model, build(parse_pipeline(STATIC), ctx), ctx)
    assert records[-1].modified is True
    assert [v.name for v in _node(model, "mm").inputs] == ["x_dq", "m"]


def test_the_pass_reports_a_change_when_the_last_bias_stays_float():
    """A Conv whose input stays float (non-finite): only its weight changes, its bias cannot."""
    proto = _conv(seed=35)
    feeds = _feeds([1, 4, 5, 5], [0] * 4)
    model = to_ir(proto)
    ctx = Context(reduce_range=False, calib=ListSource(feeds, input_specs(model)))
    feeds[0]["x"][0, 0, 0, 0] = np.nan  # after the source's check, which refuses non-finite data files
    records = run_pipeline(model, build(parse_pipeline(UNCORRECTED), ctx), ctx)
    assert records[-1].modified is True
    assert _node(model, "conv").inputs[2].name == "B"


def test_a_weight_that_a_float_node_reads_too_stays_in_the_file():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["y"], name="conv"),
        helper.make_node("ReduceMean", ["W"], ["wm"], name="mean", keepdims=0),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3]), _vi("wm", [])], [numpy_helper.from_array(_weights((2, 2, 1, 1), 0), "W")])
    model, _ = _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]))
    assert "W" in model.graph.initializers and _node(model, "mean").inputs[0].name == "W"
    assert _dq(_node(model, "conv").inputs[1])[0].dtype == np.int8


def test_insert_qdq_requires_ranges_for_every_planned_tensor():
    from qonnx.calib.ranges import RangeTable, TensorRange
    from qonnx.errors import UserError

    proto = _operand_model([1.0, 2.0, 3.0])
    with pytest.raises(UserError, match=r"^insert-qdq needs the ranges analysis, which no earlier pass produces: put calibrate before insert-qdq$"):
        _quantize(proto, _feeds([1, 2, 3, 3], [0, 0]), text="resolve-policy,insert-qdq")
    model = to_ir(proto)
    ctx = Context(reduce_range=False)
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    ctx.analyses["ranges"] = RangeTable({"x": TensorRange(-1.0, 1.0), "a": TensorRange(-1.0, 1.0)})
    # Planned: x, c, a, m, p; c, m and p lack a range.
    with pytest.raises(UserError, match=r"^no calibration ranges for tensor 'c' \(3 tensors lack one\)$"):
        run_pipeline(model, build(parse_pipeline("insert-qdq"), ctx), ctx)


def test_ensures_names_the_weighted_input_without_a_dequantize_linear():
    """The postcondition, checked on a model quantized in part (here: not at all, after a
    quantized Sigmoid that it skips)."""
    from qonnx.passes.insert_qdq import InsertQDQ

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"), helper.make_node("Conv", ["s", "W"], ["y"], name="conv")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], [numpy_helper.from_array(_weights((2, 2, 1, 1), 0), "W")])
    model = to_ir(proto)
    ctx = Context(reduce_range=False)
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    with pytest.raises(ir.passes.PostconditionError, match="^input 0 of conv has no DequantizeLinear producer$"):
        InsertQDQ(ctx).ensures(model)


def test_a_conv_after_one_with_a_shared_weight_is_corrected():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "W"], ["b"], name="conv_b"),
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "W2", "B2"], ["y"], name="conv_c"),
    ]
    inits = [
        numpy_helper.from_array(_weights((2, 2, 1, 1), 0, seed=36), "W"),
        numpy_helper.from_array(_weights((2, 2, 1, 1), 0, seed=37), "W2"),
        numpy_helper.from_array(np.float32([0.1, 0.2]), "B2"),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    model, ctx = _quantize(proto, _feeds([1, 2, 3, 3], [2.0, -1.0]))
    assert list(ctx.analyses["ranges"].channel_means) == ["s"]
    assert _node(model, "conv_c").inputs[2].name == "B2_corrected_dq"


def test_node_roles_name_the_weight_before_and_after_quantization():
    from qonnx.passes.insert_qdq import node_roles

    a = _weights((3, 10), 0, seed=38)
    nodes = [helper.make_node("MatMul", ["A", "x"], ["h"], name="mm"), helper.make_node("MatMul", ["h", "W"], ["y"], name="mm2")]
    inits = [numpy_helper.from_array(a, "A"), numpy_helper.from_array(_weights((5, 4), 1, seed=39), "W")]
    proto = _model(nodes, [_vi("x", [10, 5])], [_vi("y", [3, 4])], inits)
    before = to_ir(proto)
    roles = {n.name: node_roles(n) for n in before.graph}
    assert (roles["mm"].weight, roles["mm"].weight_axis) == (0, None) and (roles["mm2"].weight, roles["mm2"].weight_axis) == (1, 1)
    model, _ = _quantize(proto, _feeds([10, 5], [0] * 5))
    roles = {n.name: node_roles(n) for n in model.graph if n.op_type == "MatMul"}
    assert (roles["mm"].weight, roles["mm"].weight_axis) == (0, None) and (roles["mm2"].weight, roles["mm2"].weight_axis) == (1, 1)
    assert roles["mm"].bias is None


def test_a_conv_of_a_constant_input_with_a_computed_kernel_stores_no_weight():
    """Conv(X constant, W computed): the kernel is the activation here, X is no weight."""
    nodes = [helper.make_node("Relu", ["k"], ["w"], name="relu"), helper.make_node("Conv", ["X", "w"], ["y"], name="conv")]
    proto = _model(nodes, [_vi("k", [2, 2, 1, 1])], [_vi("y", [1, 2, 3, 3])], [numpy_helper.from_array(_weights((1, 2, 3, 3), 1, seed=40), "X")])
    model, _ = _quantize(proto, _feeds([2, 2, 1, 1], [0, 0], name="k"))
    conv = _node(model, "conv")
    assert conv.inputs[0].name == "X" and conv.inputs[1].name == "w_dq"


def test_a_conv_quantized_at_run_time_keeps_its_bias_float():
    """A policy that quantizes a Conv's input at run time: there is no input scale to put an INT32
    bias on, so the bias stays float (and the weight is INT8)."""
    feeds = _feeds([1, 4, 5, 5], [0] * 4)
    model = _with_spec(_conv(seed=41), feeds, dynamic=True)
    conv = _node(model, "conv")
    assert conv.inputs[0].producer().inputs[0].producer().op_type == "DynamicQuantizeLinear"
    assert conv.inputs[2].name == "B" and _dq(conv.inputs[1])[0].dtype == np.int8


def test_seven_bit_weights_per_tensor():
    proto = _conv_transpose(group=2, seed=42)
    model, _ = _quantize(proto, _feeds([1, 4, 3, 3], [0] * 4), reduce_range=True)
    q, scale, _, axis = _dq(_node(model, "deconv").inputs[1])
    expected_q, expected_scale = _expected_weight(_weight_of(proto), None, qmax=63)
    assert axis is None
    np.testing.assert_allclose(scale, expected_scale, rtol=FLOAT32_RTOL)
    np.testing.assert_array_equal(q, expected_q)


def test_a_gemm_after_a_scaled_one_is_corrected():
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="gemm1", transB=1, alpha=0.5),
        helper.make_node("Gemm", ["h", "W2", "B2"], ["y"], name="gemm2", transB=1),
    ]
    inits = [
        numpy_helper.from_array(_weights((6, 10), 0, seed=43), "W1"),
        numpy_helper.from_array(np.linspace(1.0, 3.0, 6).astype(np.float32), "B1"),
        numpy_helper.from_array(_weights((4, 6), 0, seed=44), "W2"),
        numpy_helper.from_array(np.float32([0.1, 0.2, 0.3, 0.4]), "B2"),
    ]
    proto = _model(nodes, [_vi("x", [3, 10])], [_vi("y", [3, 4])], inits)
    model, ctx = _quantize(proto, _feeds([3, 10], np.linspace(-2.0, 3.0, 10)))
    assert list(ctx.analyses["ranges"].channel_means) == ["h"]
    assert _node(model, "gemm1").inputs[2].name == "B1_dq" and _node(model, "gemm2").inputs[2].name == "B2_corrected_dq"
