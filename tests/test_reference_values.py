"""Quantization arithmetic against numbers computed outside qonnx.quant.

The worked examples of the design notes (§10) with their arithmetic written out, per-channel
scales against numpy's per-channel maximum, and the INT32 bias helpers at their boundaries.
Tolerances are stated where the comparison is not exact; float32 division and multiplication are
correctly rounded, so a reference computed with the same float32 operations is compared exactly.
"""

import numpy as np
import pytest

from qonnx import quant

X = np.array([[1.21, -1.31, 0.22], [0.83, 2.11, -1.53], [0.79, -0.54, 0.84]], np.float32)


# ----------------------------------------------------------------------------------------------
# Design notes §10


def test_symmetric_int8_of_the_3x3_example():
    scale, zero_point = quant.symmetric_params(np.abs(X).max(), np.int8)
    # scale = 2.11 / 127 = 0.0166142; the reference has 5 significant digits, hence rel 1e-5.
    assert float(scale) == pytest.approx(2.11 / 127, rel=1e-6)  # float32 of 2.11, then /127
    assert round(float(scale), 6) == 0.016614
    assert zero_point.dtype == np.int8 and int(zero_point) == 0
    q = quant.quantize(X, scale, zero_point, np.int8)
    # 1.21 / 0.0166142 = 72.83 → 73; -1.31 / 0.0166142 = -78.85 → -79; 0.22 → 13.24 → 13; ...
    assert q.dtype == np.int8
    assert q.tolist() == [[73, -79, 13], [50, 127, -92], [48, -33, 51]]
    restored = quant.dequantize(q, scale, zero_point)
    # Worst error: 0.22 vs 13 · 0.0166142 = 0.21598 → 0.00402; 0.79 vs 48 · s = 0.79748 → 0.00748;
    # 0.84 vs 51 · s = 0.84732 → 0.0073; -1.53 vs -92 · s = -1.52850 → 0.0015; 0.54 vs 33 · s =
    # 0.54827 → 0.0083 (the largest), below scale / 2 = 0.0083071.
    worst = float(np.abs(restored - X).max())
    assert worst == pytest.approx(0.0083, abs=5e-5)  # the reference is rounded to 4 decimals
    assert worst < (2.11 / 127) / 2


def test_asymmetric_uint8_of_the_3x3_example():
    scale, zero_point = quant.asymmetric_params(X.min(), X.max(), np.uint8)
    # scale = (2.11 - (-1.53)) / 255 = 3.64 / 255 = 0.0142745; zero point round(1.53 / 0.0142745)
    # = round(107.18) = 107.
    assert float(scale) == pytest.approx(3.64 / 255, rel=1e-6)  # float32 rounding of 2.11 and 1.53
    assert round(float(scale), 7) == 0.0142745
    assert zero_point.dtype == np.uint8 and int(zero_point) == 107
    q = quant.quantize(X, scale, zero_point, np.uint8)
    # 1.21 / s = 84.77 → 85 + 107 = 192; -1.53 / s = -107.18 → -107 + 107 = 0; 2.11 / s = 147.82
    # → 148 + 107 = 255.
    assert q.dtype == np.uint8
    assert q.tolist() == [[192, 15, 122], [165, 255, 0], [162, 69, 166]]
    restored = quant.dequantize(q, scale, zero_point)
    assert restored.dtype == np.float32
    # Worst error 0.0059 (2.11 vs 148 · s = 2.11263 is 0.0026; -1.53 vs -107 · s = -1.52737 is
    # 0.0026; 0.84 vs 59 · s = 0.84220 is 0.0022; -0.54 vs -38 · s = -0.54243; 0.22 vs 15 · s =
    # 0.21412 → 0.0059).
    assert float(np.abs(restored - X).max()) == pytest.approx(0.0059, abs=5e-5)


def test_symmetric_int8_of_a_vector():
    scale, _ = quant.symmetric_params(2.1, np.int8)
    # 2.1 / 127 = 0.0165354; -0.5 / s = -30.24 → -30, 0.3 / s = 18.14 → 18, 1.2 / s = 72.57 → 73
    assert round(float(scale), 6) == 0.016535
    q = quant.quantize(np.array([-0.5, 0.3, 1.2, -2.1], np.float32), scale, 0, np.int8)
    assert q.tolist() == [-30, 18, 73, -127]


def test_model_size_per_format():
    # 13e9 parameters: 4 bytes each in FP32 = 52 GB, 2 in FP16/BF16 = 26 GB, 1 in INT8 = 13 GB,
    # half a byte in INT4 = 6.5 GB (GB = 1e9 bytes); exact integers.
    params = 13_000_000_000
    assert quant.model_bytes(params, "fp32") == 52_000_000_000
    assert quant.model_bytes(params, "fp16") == 26_000_000_000
    assert quant.model_bytes(params, "bf16") == 26_000_000_000
    assert quant.model_bytes(params, "int8") == 13_000_000_000
    assert quant.model_bytes(params, "uint8") == 13_000_000_000
    assert quant.model_bytes(params, "int4") == 6_500_000_000
    assert quant.model_bytes(params, "uint4") == 6_500_000_000
    assert [quant.bytes_per_parameter(f) for f in ("fp32", "fp16", "bf16", "int8", "int4")] == [4.0, 2.0, 2.0, 1.0, 0.5]
    # An odd number of INT4 values fills the last byte: 3 values → 12 bits → 2 bytes; 1 → 1.
    assert quant.model_bytes(3, "int4") == 2 and quant.model_bytes(1, "int4") == 1
    assert quant.model_bytes(0, "fp32") == 0
    with pytest.raises(ValueError, match="unknown format 'fp8'; known: fp32, fp16, bf16, int8, uint8, int4, uint4$"):
        quant.bytes_per_parameter("fp8")


# ----------------------------------------------------------------------------------------------
# Ranges of the integer types and the parameters of a range


def test_integer_ranges():
    assert quant.qrange(np.int8) == (-128, 127)
    assert quant.qrange(np.uint8) == (0, 255)
    assert quant.qrange(np.int32) == (-(2**31), 2**31 - 1)


def test_symmetric_params_reduced_range_and_floor():
    # qmax 63 (7-bit weights): 6.3 / 63 = 0.1 (float32, exact division of float32(6.3))
    scale, zero_point = quant.symmetric_params(6.3, np.int8, qmax=63)
    assert scale == np.float32(6.3) / np.float32(63)
    assert zero_point.dtype == np.int8 and zero_point == 0
    # UINT8 symmetric: 255 steps up
    assert quant.symmetric_params(2.55, np.uint8)[0] == np.float32(2.55) / np.float32(255)
    # All zeros: the 1e-12 floor, not 0 (a zero scale would divide by zero)
    scale, _ = quant.symmetric_params(0.0)
    assert scale.dtype == np.float32 and scale == np.float32(1e-12)
    # A vector of maxima: one scale each, zero points of the same shape
    scale, zero_point = quant.symmetric_params(np.array([1.27, 0.0, 254.0]), np.int8)
    assert scale.tolist() == [np.float32(0.01), np.float32(1e-12), np.float32(2.0)]
    assert zero_point.shape == (3,) and zero_point.dtype == np.int8


def test_parameters_are_float32_arithmetic_on_float32_inputs():
    # Ranges given as Python floats are float32 first (as the tensors they describe), then
    # divided in float32: bit for bit the float32 reference. In float64 then rounded, about a
    # quarter to a third of these would differ in the last bit.
    rng = np.random.default_rng(3)
    maxima = rng.uniform(0.01, 10, 1000)
    scales = np.array([quant.symmetric_params(float(m))[0] for m in maxima])
    assert np.array_equal(scales, maxima.astype(np.float32) / np.float32(127))
    lows, highs = -rng.uniform(0.01, 10, 1000), rng.uniform(0.01, 10, 1000)
    params = [quant.asymmetric_params(float(a), float(b)) for a, b in zip(lows, highs)]
    expected = (highs.astype(np.float32) - lows.astype(np.float32)) / np.float32(255)
    assert np.array_equal(np.array([p[0] for p in params]), expected)
    # Zero points: round(-lo / scale) in float32, inside [0, 255] without clipping
    zero_points = np.round(-lows.astype(np.float32) / expected)
    assert np.array_equal(np.array([int(p[1]) for p in params]), zero_points) and 0 <= zero_points.min() and zero_points.max() <= 255


def test_asymmetric_params_widen_the_range_to_hold_zero():
    # [0.5, 2.55] widens to [0, 2.55]: scale 2.55 / 255 = 0.01, zero point 0
    scale, zero_point = quant.asymmetric_params(0.5, 2.55, np.uint8)
    assert scale == np.float32(2.55) / np.float32(255) and zero_point == 0
    # [-2.55, -1] widens to [-2.55, 0]: scale 0.01, zero point 0 - (-2.55 / 0.01) = 255
    scale, zero_point = quant.asymmetric_params(-2.55, -1.0, np.uint8)
    assert scale == np.float32(2.55) / np.float32(255) and zero_point == 255
    # [-1, 3] in INT8 (asymmetric): scale 4 / 255 = 0.0156863, zero point -128 + round(1 / s)
    # = -128 + round(63.75) = -64
    scale, zero_point = quant.asymmetric_params(-1.0, 3.0, np.int8)
    assert scale == np.float32(4.0) / np.float32(255) and zero_point.dtype == np.int8 and zero_point == -64
    # [0, 0]: the 1e-12 floor, zero point 0
    scale, zero_point = quant.asymmetric_params(0.0, 0.0)
    assert scale == np.float32(1e-12) and zero_point == 0 and zero_point.dtype == np.uint8


def test_parameters_without_an_axis_broadcast_as_numpy_does():
    # A scale per column of a [2, 3] matrix, no axis: numpy broadcasting along the last axis,
    # the same as axis 1. Column scales 1, 0.5, 0.25: x / s = [[1, 2, 4], [-1, -2, -4]].
    x = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], np.float32)
    scale = np.array([1.0, 0.5, 0.25], np.float32)
    zero_point = np.array([0, 1, 2], np.int8)
    q = quant.quantize(x, scale, zero_point, np.int8)
    assert q.tolist() == [[1, 3, 6], [-1, -1, -2]]
    assert np.array_equal(q, quant.quantize(x, scale, zero_point, np.int8, axis=1))
    assert np.array_equal(quant.dequantize(q, scale, zero_point), x)


def test_quantize_rounds_half_to_even_and_saturates():
    # x / 1 = 0.5, 1.5, 2.5, -0.5, -1.5: half to even gives 0, 2, 2, -0, -2 (QuantizeLinear's rule)
    q = quant.quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32), np.float32(1.0), 0, np.int8)
    assert q.tolist() == [0, 2, 2, 0, -2]
    # Beyond the range: clipped to [-128, 127] (INT8) and [0, 255] (UINT8 with zero point 10)
    assert quant.quantize(np.array([300.0, -300.0], np.float32), 1.0, 0, np.int8).tolist() == [127, -128]
    assert quant.quantize(np.array([300.0, -300.0, 1.0], np.float32), 1.0, 10, np.uint8).tolist() == [255, 0, 11]
    # dequantize: (q - zero point) · scale; (255 - 10) · 0.5 = 122.5, (0 - 10) · 0.5 = -5
    back = quant.dequantize(np.array([255, 0], np.uint8), 0.5, np.uint8(10))
    assert back.dtype == np.float32 and back.tolist() == [122.5, -5.0]


# ----------------------------------------------------------------------------------------------
# Per-channel scales: numpy's per-channel maximum / 127, for every axis


def _weights() -> np.ndarray:
    """A 4-D weight whose channels have different maxima along every axis."""
    w = np.random.default_rng(7).uniform(-1, 1, (5, 4, 3, 2)).astype(np.float32)
    w *= np.arange(1, 6, dtype=np.float32).reshape(5, 1, 1, 1)  # axis 0: maxima ~1..5
    w *= np.array([1, 3, 0.5, 8], np.float32).reshape(1, 4, 1, 1)  # axis 1 differs as well
    w[0, 0, 0, 0] = 40.0  # one outlier: a per-tensor scale would be 40 / 127 for every channel
    return w


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_per_channel_scales_are_numpy_channel_maxima_over_127(axis):
    w = _weights()
    others = tuple(i for i in range(w.ndim) if i != axis)
    expected = np.abs(w).max(axis=others) / np.float32(127)  # float32, as QuantizeLinear's scale
    q, scale, zero_point = quant.per_channel_symmetric(w, axis)
    assert scale.shape == (w.shape[axis],) and scale.dtype == np.float32
    assert np.array_equal(scale, expected)  # same float32 division: exact
    assert len(set(expected.tolist())) == w.shape[axis]  # the channels differ: a shared scale fails
    assert zero_point.dtype == np.int8 and not zero_point.any()
    # q = round(w / scale) per channel, computed here with numpy broadcasting
    shape = [1] * w.ndim
    shape[axis] = -1
    expected_q = np.clip(np.rint(w / expected.reshape(shape)), -127, 127)
    assert q.dtype == np.int8 and np.array_equal(q, expected_q)
    # Every channel's largest magnitude lands on ±127
    assert np.array_equal(np.abs(q).max(axis=others), np.full(w.shape[axis], 127))


def test_per_channel_scales_of_a_vector_are_one_per_element():
    w = np.array([0.5, -2.54, 0.0], np.float32)
    q, scale, _ = quant.per_channel_symmetric(w, axis=0)
    # |w| / 127 per element; the zero channel gets the 1e-12 floor and quantizes to 0
    assert scale.tolist() == [np.float32(0.5) / np.float32(127), np.float32(2.54) / np.float32(127), np.float32(1e-12)]
    assert q.tolist() == [127, -127, 0]


def test_per_channel_reduced_range_and_minimum_scale():
    w = _weights()
    expected = np.abs(w).max(axis=(1, 2, 3)) / np.float32(63)
    q, scale, _ = quant.per_channel_symmetric(w, 0, qmax=63)
    assert np.array_equal(scale, expected) and np.abs(q).max() == 63
    # A minimum scale raises only the channels below it: max(scale, floor) per channel
    floor = np.array([0.0, 1.0, 0.0, 0.0, 0.0], np.float32)
    q, scale, _ = quant.per_channel_symmetric(w, 0, min_scale=floor.astype(np.float64))
    plain = np.abs(w).max(axis=(1, 2, 3)) / np.float32(127)
    assert scale.dtype == np.float32 and np.array_equal(scale, np.maximum(plain, floor))
    assert scale[1] == 1.0 and np.array_equal(q[1], np.rint(w[1] / np.float32(1.0)))


def test_per_channel_round_trip_is_within_half_an_independent_step():
    # Error bound from numpy's channel maxima, not from the scale the code returns: at most half a
    # step, |x - x̂| <= max|w_c| / 127 / 2, plus 1e-6 relative for the float32 products.
    w = _weights()
    for axis in range(w.ndim):
        others = tuple(i for i in range(w.ndim) if i != axis)
        step = np.abs(w).max(axis=others, keepdims=True).astype(np.float64) / 127
        q, scale, zero_point = quant.per_channel_symmetric(w, axis)
        back = quant.dequantize(q, scale, zero_point, axis)
        assert np.all(np.abs(back - w) <= step / 2 * (1 + 1e-6)), axis


# ----------------------------------------------------------------------------------------------
# INT32 bias


INT32_MAX = 2**31 - 1


def test_minimum_weight_scale_for_a_bias():
    bias = np.array([1.0, -2.0, 0.0], np.float32)
    # |bias| / (input_scale · (2³¹ - 1)) with 1e-6 relative headroom: 1 / (0.5 · 2147483647)
    # = 9.3132e-10; float32 storage rounds to 6e-8 relative, hence rel 2e-7.
    needed = quant.min_weight_scale_for_bias(bias, np.float32(0.5))
    expected = np.abs(bias.astype(np.float64)) / (0.5 * INT32_MAX) * (1 + 1e-6)
    assert needed.dtype == np.float32
    np.testing.assert_allclose(needed, expected, rtol=2e-7)
    assert needed[2] == 0.0
    # The input scale may come as a one-element array
    np.testing.assert_allclose(quant.min_weight_scale_for_bias(bias, np.array([0.5], np.float32)), expected, rtol=2e-7)
    # With that scale the bias fits; 1% below it does not
    assert quant.bias_fits_int32(bias, 0.5, needed)
    assert not quant.bias_fits_int32(bias, 0.5, needed * 0.99)


def test_bias_helpers_compute_in_float64():
    # Random float32 biases: the bound (float64, rounded once to float32) and the INT32 bias
    # (float64 quotient, then rounded) against numpy in float64. In float32 the bound differs in
    # the last bit for about half of them, and quotients near 1e7-1e9 lose their units.
    rng = np.random.default_rng(2)
    bias = rng.uniform(-5, 5, 1000).astype(np.float32)
    expected = (np.abs(bias.astype(np.float64)) / (float(np.float32(0.0123)) * INT32_MAX) * (1 + 1e-6)).astype(np.float32)
    assert np.array_equal(quant.min_weight_scale_for_bias(bias, np.float32(0.0123)), expected)
    weight_scale = rng.uniform(1e-9, 1e-7, 1000).astype(np.float32)
    q, scale = quant.bias_to_int32(bias / 5, np.float32(1.0), weight_scale)
    assert np.array_equal(q, np.rint((bias / 5).astype(np.float64) / weight_scale.astype(np.float64)))
    # float32(3e-8) = 2.99999989e-8 and 1 / that = 33333334.52: 33333335, where the float32
    # quotient (spacing 4 there) gives 33333334
    assert quant.bias_to_int32(np.array([1.0], np.float32), np.float32(1.0), np.float32(3e-8))[0].tolist() == [33333335]


def test_bias_fits_int32_at_the_boundary():
    # |bias| / scale <= 2³¹ - 1 with scale = input_scale · weight_scale (float64)
    assert quant.bias_fits_int32(np.array([float(INT32_MAX)]), 1.0, 1.0)
    assert not quant.bias_fits_int32(np.array([float(INT32_MAX) + 1]), 1.0, 1.0)
    assert quant.bias_fits_int32(np.array([-float(INT32_MAX)]), 1.0, 1.0)
    assert not quant.bias_fits_int32(np.array([-float(INT32_MAX) - 1]), 1.0, 1.0)
    # 2³⁰ / (0.25 · 2) = 2³¹ > 2³¹ - 1; 2³⁰ / (0.5 · 2) = 2³⁰ fits
    assert not quant.bias_fits_int32(np.array([2.0**30]), 0.25, np.array([2.0]))
    assert quant.bias_fits_int32(np.array([2.0**30]), 0.5, np.array([2.0]))
    # A zero scale: a zero bias fits, any other does not
    assert quant.bias_fits_int32(np.array([0.0]), 0.0, 1.0)
    assert not quant.bias_fits_int32(np.array([1e-30]), 0.0, 1.0)
    # The product of two float32 scales is exact in float64; in float32 this one rounds down by
    # 2.3e-8 relative, which would push a bias of (2³¹ - 2) · scale over the limit (by ~48).
    a, b = np.float32(0.05201723054051399), np.float32(0.029294336214661598)
    exact = np.float64(a) * np.float64(b)
    assert np.float64(a * b) < exact  # the float32 product is smaller
    assert quant.bias_fits_int32(np.array([(INT32_MAX - 1) * exact]), a, np.array([b]))


def test_bias_to_int32():
    bias = np.array([0.5, -1.0, 0.0, 0.0123], np.float32)
    weight_scale = np.array([0.01, 0.02, 0.03, 0.001], np.float32)
    q, scale = quant.bias_to_int32(bias, np.float32(0.1), weight_scale)
    # scale = 0.1 · w per channel (float32 product); q = round(bias / scale):
    # 0.5 / 0.001 = 500, -1 / 0.002 = -500, 0, 0.0123 / 0.0001 = 123
    assert scale.dtype == np.float32 and np.array_equal(scale, np.float32(0.1) * weight_scale)
    assert q.dtype == np.int32 and q.tolist() == [500, -500, 0, 123]
    # Saturation at the INT32 limits; a zero weight scale takes the 1e-12 floor
    q, scale = quant.bias_to_int32(np.array([1e3, -1e3], np.float32), np.float32(1.0), np.array([0.0, 0.0], np.float32))
    assert q.tolist() == [INT32_MAX, -(2**31)] and scale.tolist() == [np.float32(1e-12)] * 2
    # An input scale given as a Python or numpy float64 is float32 first: float32(0.1) · float32(0.02)
    for input_scale in (0.1, np.float64(0.1), np.array(0.1)):
        q, scale = quant.bias_to_int32(np.array([1.0], np.float32), input_scale, np.array([0.02], np.float32))
        assert scale.dtype == np.float32 and scale.tolist() == [np.float32(0.1) * np.float32(0.02)]
    # Rounding half to even: 2.5 → 2, 3.5 → 4 (scale 1)
    q, _ = quant.bias_to_int32(np.array([2.5, 3.5], np.float32), np.float32(1.0), np.float32(1.0))
    assert q.tolist() == [2, 4]


# ----------------------------------------------------------------------------------------------
# quantize / dequantize against onnxruntime's QuantizeLinear / DequantizeLinear


def _qdq_model(dtype: np.dtype):
    """QuantizeLinear and DequantizeLinear per row (axis 0): x[N, 1], scale[N], zero_point[N]."""
    import onnx
    from onnx import TensorProto, helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"], axis=0),
            helper.make_node("DequantizeLinear", ["q_in", "scale", "zero_point"], ["x_out"], axis=0),
        ],
        "qdq",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("zero_point", elem, ["n"]),
            helper.make_tensor_value_info("q_in", elem, ["n", 1]),
        ],
        [helper.make_tensor_value_info("q", elem, ["n", 1]), helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["n", 1])],
    )
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_quantize_and_dequantize_match_onnxruntime(dtype):
    import onnxruntime as ort

    rng = np.random.default_rng(21)
    n = 4000
    scale = rng.uniform(1e-3, 0.1, n).astype(np.float32)
    qmin, qmax = quant.qrange(dtype)
    zero_point = rng.integers(qmin // 4 if qmin else 0, qmax // 2, n).astype(dtype)
    # Half the values exactly on a rounding tie in float64, (k + 1/2) · scale, where float32 and
    # float64 division round differently for about half of them; the rest anywhere, some far
    # beyond the range (saturation).
    k = rng.integers(-140, 140, n)
    x = np.where(np.arange(n) % 2 == 0, (k + 0.5) * scale.astype(np.float64), rng.uniform(-40, 40, n) * scale).astype(np.float32)
    q_in = rng.integers(qmin, qmax + 1, n).astype(dtype)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(_qdq_model(dtype).SerializeToString(), options, providers=["CPUExecutionProvider"])
    ort_q, ort_x = session.run(None, {"x": x[:, None], "scale": scale, "zero_point": zero_point, "q_in": q_in[:, None]})
    q = quant.quantize(x[:, None], scale, zero_point, dtype, axis=0)
    assert q.dtype == dtype and np.array_equal(q, ort_q)  # integers: exact
    # The float64 quotient would round differently on many of the ties: the check above sees it.
    assert (np.rint(x.astype(np.float64) / scale) != np.rint(x / scale)).sum() > 100
    back = quant.dequantize(q_in[:, None], scale, zero_point, axis=0)
    assert back.dtype == np.float32 and np.array_equal(back, ort_x)  # (q - z) · s in float32: exact
    # The same values given as float64 (x) and Python floats (a scalar scale): converted to
    # float32 first, as the model's tensors are.
    assert np.array_equal(quant.quantize(x.astype(np.float64)[:, None], scale, zero_point, dtype, axis=0), ort_q)
    assert np.array_equal(quant.dequantize(q_in, 0.1, 0), ((q_in.astype(np.int64)) * np.float32(0.1)).astype(np.float32))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # saturation is intended: no overflow warning
def test_quantize_saturates_beyond_any_integer_range():
    # x / scale = 1e30 / 1e-12 overflows float32 to inf: the result saturates, sign kept
    # (QuantizeLinear saturates), rather than wrapping through a 64-bit integer cast.
    x = np.array([1e30, -1e30, 3e38, -3e38], np.float32)
    assert quant.quantize(x, np.float32(1e-12), 0, np.int8).tolist() == [127, -128, 127, -128]
    assert quant.quantize(x, np.float32(1e-12), 0, np.uint8).tolist() == [255, 0, 255, 0]
