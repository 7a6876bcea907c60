"""Quantization arithmetic: scales, zero points, quantize and dequantize.

Symmetric INT8 (weights): ``scale = max|x| / 127``, ``zero_point = 0``.
Asymmetric UINT8 (activations): the range is widened to contain 0 (so that zero padding is exact),
``scale = (max - min) / 255``, ``zero_point = round(-min / scale)``.
``q = clip(round(x / scale) + zero_point, qmin, qmax)`` with round-half-to-even, as QuantizeLinear
does; ``x ≈ (q - zero_point) * scale``.

The worked example of the design notes:

>>> import numpy as np
>>> x = np.array([[1.21, -1.31, 0.22], [0.83, 2.11, -1.53], [0.79, -0.54, 0.84]], np.float32)
>>> scale, zp = symmetric_params(np.abs(x).max(), np.int8)
>>> round(float(scale), 6), int(zp)
(0.016614, 0)
>>> quantize(x, scale, zp, np.int8).tolist()
[[73, -79, 13], [50, 127, -92], [48, -33, 51]]
>>> round(float(np.abs(dequantize(quantize(x, scale, zp, np.int8), scale, zp) - x).max()), 4)
0.0083
>>> scale, zp = asymmetric_params(x.min(), x.max(), np.uint8)
>>> round(float(scale), 7), int(zp)
(0.0142745, 107)
>>> quantize(x, scale, zp, np.uint8).tolist()
[[192, 15, 122], [165, 255, 0], [162, 69, 166]]
>>> round(float(np.abs(dequantize(quantize(x, scale, zp, np.uint8), scale, zp) - x).max()), 4)
0.0059
>>> s, _ = symmetric_params(2.1, np.int8)
>>> quantize(np.array([-0.5, 0.3, 1.2, -2.1], np.float32), s, 0, np.int8).tolist()
[-30, 18, 73, -127]

FP8 (``"float8e4m3fn"``, ``"float8e5m2"``; the formats are in ``qonnx.fp8``) is symmetric:
``scale = max|x| / fmax`` with ``fmax`` 448 (E4M3: sign, 4 exponent bits of bias 7, 3 mantissa
bits, no infinities, smallest subnormal 2⁻⁹) or 57344 (E5M2: 1-5-2, bias 15, smallest subnormal
2⁻¹⁶), and ``zero_point = 0`` of the FP8 type. ``q = fp8(saturate(x / scale))``, the quotient in
float32, clamped to ``±fmax`` (±inf too; NaN stays NaN) and rounded to the nearest FP8 value, ties
to even, as QuantizeLinear with ``saturate=1`` does; ``x ≈ float32(q) · scale``. The grid is
relative: a quotient between 2ʲ and 2ʲ⁺¹ lands on a step of 2ʲ⁻³ (E4M3), so small values keep
their precision where INT8 rounds them to a few levels.

>>> scale, zp = symmetric_params(np.abs(x).max(), "float8e4m3fn")
>>> round(float(scale), 7), zp.dtype.name, float(zp)
(0.0047098, 'float8_e4m3fn', 0.0)
>>> q = quantize(x, scale, zp, "float8e4m3fn")
>>> q.astype(np.float32).tolist()
[[256.0, -288.0, 48.0], [176.0, 448.0, -320.0], [160.0, -112.0, 176.0]]
>>> round(float(np.abs(dequantize(q, scale, zp) - x).max()), 4)
0.0464
>>> quantize(np.array([0.001, 0.01, 5.0, np.inf, np.nan], np.float32), scale, zp, "float8e4m3fn").astype(np.float32).tolist()
[0.21875, 2.0, 448.0, 448.0, nan]
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qonnx.fp8 import FLOAT8_FORMATS, float8_format

__all__ = [
    "numpy_dtype",
    "is_float8",
    "ir_dtype",
    "qrange",
    "symmetric_params",
    "asymmetric_params",
    "quantize",
    "dequantize",
    "per_channel_symmetric",
    "min_weight_scale_for_bias",
    "bias_fits_int32",
    "bias_to_int32",
    "BITS_PER_PARAMETER",
    "bytes_per_parameter",
    "model_bytes",
]

# The smallest scale we emit: a tensor that is all zeros still needs a positive scale.
_TINY = np.float32(1e-12)


_INTEGER_TYPES = {"int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8)}


def numpy_dtype(dtype) -> np.dtype:
    """The numpy type of a quantized type given by name (``"int8"``, ``"uint8"``, ``"float8e4m3fn"``,
    ``"float8e5m2"``; FP8 as ml_dtypes' types) or by a numpy type.

    >>> [numpy_dtype(t).name for t in ("int8", "float8e4m3fn", "float8e5m2", np.uint8)]
    ['int8', 'float8_e4m3fn', 'float8_e5m2', 'uint8']
    """
    if isinstance(dtype, str):
        fp8 = FLOAT8_FORMATS.get(dtype)
        if fp8 is not None:
            return fp8.numpy_dtype
        if dtype not in _INTEGER_TYPES:
            known = ", ".join([*_INTEGER_TYPES, *FLOAT8_FORMATS])
            raise ValueError(f"unknown quantized type {dtype!r}; known: {known}")
        return _INTEGER_TYPES[dtype]
    return np.dtype(dtype)


def is_float8(dtype) -> bool:
    """Whether ``dtype`` (a name or a numpy type) is one of the FP8 formats of ``qonnx.fp8``."""
    return float8_format(dtype) is not None


def ir_dtype(dtype) -> ir.DataType:
    """The ONNX element type of ``dtype`` (``INT8``, ``UINT8``, ``FLOAT8E4M3FN``, ``FLOAT8E5M2``, ...)."""
    return ir.DataType.from_numpy(numpy_dtype(dtype))


def qrange(dtype) -> tuple[int, int]:
    """The full range of ``dtype``: integer limits, or ``±max`` of an FP8 format (±448 for E4M3,
    ±57344 for E5M2, both integers); INT8 symmetric uses [-127, 127] (see symmetric_params)."""
    fp8 = float8_format(dtype)
    if fp8 is not None:
        return -int(fp8.max), int(fp8.max)
    info = np.iinfo(numpy_dtype(dtype))
    return int(info.min), int(info.max)


def symmetric_params(max_abs, dtype=np.int8, qmax: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``max|x| / qmax`` and zero point 0 (restricted range: -127..127 for INT8; ``qmax`` 63
    for the 7-bit weights of ``reduce_range``; 448 for E4M3 and 57344 for E5M2, a zero point of
    the FP8 type)."""
    qmax = qmax or qrange(dtype)[1]
    max_abs = np.asarray(max_abs, np.float32)
    scale = np.maximum(max_abs / np.float32(qmax), _TINY).astype(np.float32)
    return scale, np.zeros(scale.shape, numpy_dtype(dtype))


def asymmetric_params(lo, hi, dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``(hi - lo) / (qmax - qmin)`` and zero point ``qmin + round(-lo / scale)``, 0 inside [lo, hi]."""
    if is_float8(dtype):
        raise ValueError(f"{numpy_dtype(dtype).name} is symmetric (zero point 0): use symmetric_params")
    qmin, qmax = qrange(dtype)
    lo = np.minimum(np.asarray(lo, np.float32), 0)
    hi = np.maximum(np.asarray(hi, np.float32), 0)
    scale = np.maximum((hi - lo) / np.float32(qmax - qmin), _TINY).astype(np.float32)
    # lo <= 0 <= hi puts -lo / scale in [0, qmax - qmin]: the zero point is in range unclipped
    zero_point = np.round(qmin - lo / scale).astype(numpy_dtype(dtype))
    return scale, zero_point


def _broadcast(param: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    param = np.asarray(param)
    if axis is None or param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis] = param.size
    return param.reshape(shape)


def quantize(x: np.ndarray, scale, zero_point, dtype, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear: ``clip(round_half_even(x / scale) + zero_point)``; per-channel along ``axis``.

    FP8 (``dtype`` an FP8 name or type): ``fp8(clip(x / scale, -fmax, fmax))`` rounded to nearest
    even, NaN kept, as QuantizeLinear with ``saturate=1``; the zero point must be 0.
    """
    fp8 = float8_format(dtype)
    s = _broadcast(scale, x.ndim, axis).astype(np.float32)
    z = _broadcast(zero_point, x.ndim, axis)
    if fp8 is not None:
        if np.any(np.asarray(z, np.float32) != 0):
            raise ValueError(f"an FP8 zero point is 0, not {np.asarray(zero_point).astype(np.float32).tolist()}")
        with np.errstate(over="ignore"):
            return fp8.convert(np.asarray(x, np.float32) / s)
    qmin, qmax = qrange(dtype)
    # Divided in float32, as QuantizeLinear does, and saturated while still a float: a quotient
    # beyond the int64 range (or an overflow to inf) would wrap in an integer cast.
    with np.errstate(over="ignore"):
        q = np.rint(np.asarray(x, np.float32) / s) + z
    return np.clip(q, qmin, qmax).astype(dtype)


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """DequantizeLinear: ``(q - zero_point) * scale``; FP8: ``float32(q) * scale``."""
    s = _broadcast(scale, q.ndim, axis).astype(np.float32)
    z = _broadcast(zero_point, q.ndim, axis)
    if is_float8(q.dtype):
        # An FP8 value has at most 4 significant bits: its float32 product with the scale is
        # DequantizeLinear's (one rounding); the zero point, 0, only matters for its type.
        return (q.astype(np.float32) - np.asarray(z).astype(np.float32)) * s
    # q - z in int64 (UINT8 would wrap); the product of a small integer and a float32 scale is
    # exact in float64, so one rounding to float32 gives QuantizeLinear's float32 product.
    return (np.subtract(q, z, dtype=np.int64) * s).astype(np.float32)


def per_channel_symmetric(
    w: np.ndarray, axis: int, dtype=np.int8, min_scale: np.ndarray | None = None, qmax: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize a weight per output channel: returns ``(q, scale[C], zero_point[C])``.

    ``min_scale`` (per channel) raises a scale where the INT32 bias needs it (see
    ``min_weight_scale_for_bias``); ``qmax`` narrows the integer range (``reduce_range``). With an
    FP8 ``dtype`` the scale is ``max|w| / fmax`` per channel and ``q`` is of the FP8 type.
    """
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    max_abs = np.abs(w).max(axis=reduce_axes)  # a vector (no other axis): its own magnitudes
    scale, zero_point = symmetric_params(max_abs, dtype, qmax)
    if min_scale is not None:
        scale = np.maximum(scale, min_scale).astype(np.float32)
    return quantize(w, scale, zero_point, dtype, axis), scale, zero_point


_INT32_MAX = float(np.iinfo(np.int32).max)


def min_weight_scale_for_bias(bias: np.ndarray, input_scale) -> np.ndarray:
    """The smallest weight scale per channel for which ``bias / (input_scale * scale)`` fits INT32.

    A channel whose weights are all zero gets the 1e-12 floor scale, and then any bias overflows:
    such a channel's scale is free (zeros are exact at any scale), so it is raised to this bound.
    """
    needed = np.abs(np.asarray(bias, np.float64)) / (float(np.asarray(input_scale).item()) * _INT32_MAX)
    return (needed * (1 + 1e-6)).astype(np.float32)  # float64 throughout, rounded once


def bias_fits_int32(bias: np.ndarray, input_scale, weight_scale) -> bool:
    """Whether ``|bias| / (input_scale · weight_scale) <= 2³¹ - 1`` for every channel (float64)."""
    scale = np.multiply(input_scale, weight_scale, dtype=np.float64)  # exact for float32 factors
    return bool(np.all(np.abs(bias) / np.maximum(scale, 1e-45) <= _INT32_MAX))


def bias_to_int32(bias: np.ndarray, input_scale, weight_scale) -> tuple[np.ndarray, np.ndarray]:
    """Bias of a quantized Conv/Gemm as INT32 with ``scale = input_scale * weight_scale``, zero point 0.

    This is the layout onnxruntime's QLinearConv / QGemm kernels accumulate in.
    """
    scale = np.maximum(np.multiply(input_scale, weight_scale, dtype=np.float32), _TINY)
    info = np.iinfo(np.int32)
    q = np.clip(np.rint(np.asarray(bias, np.float64) / scale), info.min, info.max).astype(np.int32)
    return q, scale


# Storage of one parameter per format; INT4 packs two parameters into a byte (ONNX's INT4/UINT4).
BITS_PER_PARAMETER = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "uint8": 8, "int4": 4, "uint4": 4}


def bytes_per_parameter(fmt: str) -> float:
    """Bytes one parameter takes in ``fmt``: ``bits / 8``.

    >>> [bytes_per_parameter(f) for f in ("fp32", "fp16", "bf16", "int8", "int4")]
    [4.0, 2.0, 2.0, 1.0, 0.5]
    """
    try:
        return BITS_PER_PARAMETER[fmt] / 8
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(BITS_PER_PARAMETER)}") from None


def model_bytes(parameters: int, fmt: str) -> int:
    """Bytes of ``parameters`` weights stored in ``fmt``: ``ceil(parameters · bits / 8)`` (an odd
    count of INT4 values still fills its last byte).

    A 13-billion-parameter model, in GB (10⁹ bytes):

    >>> [model_bytes(13_000_000_000, f) / 1e9 for f in ("fp32", "fp16", "bf16", "int8", "int4")]
    [52.0, 26.0, 26.0, 13.0, 6.5]
    >>> model_bytes(3, "int4")
    2
    """
    bits = int(bytes_per_parameter(fmt) * 8)
    return -(-int(parameters) * bits // 8)
