"""The 8-bit float formats of QuantizeLinear / DequantizeLinear: their layout, limits and grid.

============  ======  ====  =====  ================  ===================  ==========
format        layout  bias  max    smallest normal   smallest subnormal   infinities
============  ======  ====  =====  ================  ===================  ==========
float8e4m3fn  1-4-3   7     448    2**-6             2**-9                none
float8e5m2    1-5-2   15    57344  2**-14            2**-16               ±inf
============  ======  ====  =====  ================  ===================  ==========

A value with sign ``s``, exponent field ``e`` and mantissa field ``m`` (``M`` mantissa bits, bias
``b``) is ``(-1)**s · 2**(e - b) · (1 + m / 2**M)`` for ``e >= 1`` and the subnormal
``(-1)**s · 2**(1 - b) · m / 2**M`` for ``e = 0``. E4M3FN gives up its infinities: only
``e = 15, m = 7`` is NaN, so ``1.75 · 2**8 = 448`` is its largest value; E5M2 keeps IEEE's
``e = 31`` for ±inf and NaN, so its largest is ``1.75 · 2**15 = 57344``.

The grid is not uniform: between ``2**j`` and ``2**(j + 1)`` (``j >= emin = 1 - b``) the values
are ``2**(j - M)`` apart, and below ``2**emin`` the subnormals keep the step ``2**(emin - M)``.

>>> f = FLOAT8_FORMATS["float8e4m3fn"]
>>> f.min_exponent, f.smallest_subnormal, f.step(np.array([0.0, 0.01, 1.0, 300.0])).tolist()
(-6, 0.001953125, [0.001953125, 0.001953125, 0.125, 32.0])
>>> f.convert(np.array([1.06, 1.07, 460.0, -1e9, np.nan], np.float32)).astype(np.float32).tolist()
[1.0, 1.125, 448.0, -448.0, nan]
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx_ir as ir

__all__ = ["Float8Format", "FLOAT8_FORMATS", "float8_format"]


@dataclasses.dataclass(frozen=True)
class Float8Format:
    """One FP8 format: ``1 + exponent_bits + mantissa_bits`` bits, the largest finite value ``max``."""

    name: str  # as in ONNX's type names, lower case: "float8e4m3fn"
    dtype: ir.DataType
    numpy_dtype: np.dtype  # ml_dtypes' type
    exponent_bits: int
    mantissa_bits: int
    max: float

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def min_exponent(self) -> int:
        """``emin = 1 - bias``: the exponent of the smallest normal value (and the subnormals' step)."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        """``floor(log2(max))``: the exponent of the top binade."""
        return int(np.floor(np.log2(self.max)))

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    def step(self, magnitude: np.ndarray) -> np.ndarray:
        """The grid spacing at ``|v|`` (in the format's own units, ``|v| <= max``):
        ``2**(max(floor(log2|v|), emin) - M)``; 0 and the subnormals get ``2**(emin - M)``."""
        magnitude = np.abs(np.asarray(magnitude, np.float64))
        _, exponent = np.frexp(magnitude)  # |v| = f · 2**exponent, f in [0.5, 1): floor(log2|v|) = exponent - 1
        binade = np.where(magnitude > 0, exponent - 1, self.min_exponent)  # frexp(0) has exponent 0
        return np.ldexp(1.0, np.maximum(binade, self.min_exponent) - self.mantissa_bits)

    def convert(self, values: np.ndarray) -> np.ndarray:
        """``values`` (float32) in this format as a saturating Cast does: beyond ``±max``
        (±inf included) to ``±max``, NaN to NaN, the rest rounded to nearest even."""
        values = np.asarray(values, np.float32)
        return np.clip(values, -self.max, self.max).astype(self.numpy_dtype)


FLOAT8_FORMATS = {
    "float8e4m3fn": Float8Format(
        "float8e4m3fn", ir.DataType.FLOAT8E4M3FN, np.dtype(ml_dtypes.float8_e4m3fn), 4, 3, 448.0
    ),
    "float8e5m2": Float8Format("float8e5m2", ir.DataType.FLOAT8E5M2, np.dtype(ml_dtypes.float8_e5m2), 5, 2, 57344.0),
}


def float8_format(dtype) -> Float8Format | None:
    """The FP8 format named or typed ``dtype`` (a name of ``FLOAT8_FORMATS`` or an ml_dtypes type),
    None for any other type."""
    if isinstance(dtype, str):
        return FLOAT8_FORMATS.get(dtype)
    try:
        numpy_dtype = np.dtype(dtype)
    except TypeError:
        return None
    return next((f for f in FLOAT8_FORMATS.values() if f.numpy_dtype == numpy_dtype), None)
