"""Quantization arithmetic: the worked examples, and round-trip error bounds."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qonnx import quant


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4)), elements=finite))
def test_per_channel_round_trip_error_is_at_most_half_a_step(w):
    # Round-to-nearest makes every element's error at most half a step, the step being the
    # channel's max|w| / 127 (computed here, not taken from the code), or the 1e-12 floor of a
    # scale for channels below 127e-12; the 1e-6 relative slack covers the float32 rounding of
    # the division and the multiplication.
    q, scale, _ = quant.per_channel_symmetric(w, axis=0)
    assert q.dtype == np.int8 and q.min() >= -127
    restored = quant.dequantize(q, scale, np.zeros_like(scale, np.int8), axis=0)
    step = np.maximum(np.abs(w).max(axis=(1, 2), keepdims=True).astype(np.float64) / 127, 1e-12)
    assert np.all(np.abs(restored - w) <= step / 2 * (1 + 1e-6))


@settings(max_examples=60, deadline=None)
@given(finite, finite)
def test_asymmetric_range_holds_zero_exactly(a, b):
    lo, hi = min(a, b), max(a, b)
    scale, zp = quant.asymmetric_params(lo, hi, np.uint8)
    assert scale > 0 and 0 <= int(zp) <= 255
    zero = quant.quantize(np.zeros(1, np.float32), scale, zp, np.uint8)
    assert quant.dequantize(zero, scale, zp)[0] == 0.0  # zero padding stays exact


def test_bias_scale_is_input_scale_times_weight_scale():
    bias = np.array([0.5, -1.0, 0.0], np.float32)
    q, scale = quant.bias_to_int32(bias, np.float32(0.1), np.array([0.01, 0.02, 0.03], np.float32))
    np.testing.assert_allclose(scale, [0.001, 0.002, 0.003], rtol=1e-6)
    assert q.dtype == np.int32 and q.tolist() == [500, -500, 0]


# --- FP8 edges that the arithmetic tests of tests/test_fp8.py leave open


def test_asymmetric_scales_are_float32():
    scale, _ = quant.asymmetric_params(-1.0, 2.0, np.uint8)
    assert scale.dtype == np.float32


def test_fp8_has_no_asymmetric_parameters_and_no_nonzero_zero_point():
    import ml_dtypes
    import pytest

    with pytest.raises(ValueError, match=r"^float8_e4m3fn is symmetric \(zero point 0\): use symmetric_params$"):
        quant.asymmetric_params(-1.0, 2.0, "float8e4m3fn")
    with pytest.raises(ValueError, match=r"^an FP8 zero point is 0, not 1\.0$"):
        quant.quantize(np.ones(2, np.float32), np.float32(1), np.array(1.0, ml_dtypes.float8_e4m3fn), "float8e4m3fn")
    with pytest.raises(ValueError, match=r"^unknown quantized type 'int3'; known: int8, uint8, float8e4m3fn, float8e5m2$"):
        quant.numpy_dtype("int3")

