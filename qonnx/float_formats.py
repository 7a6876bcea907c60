"""The 16-bit float formats: their ONNX types, numpy types and the limits that decide FP32 islands.

=========  ==========  ====================  ==================  ============
format     max         smallest normal       smallest subnormal  mantissa bits
=========  ==========  ====================  ==================  ============
fp16       65504       2**-14 ≈ 6.1e-5       2**-24 ≈ 6.0e-8     10
bf16       ≈ 3.39e38   2**-126 ≈ 1.2e-38     2**-133 ≈ 9.2e-41   7
=========  ==========  ====================  ==================  ============

FP16 has FP32's precision problem halved and a range problem FP32 never had: anything above 65504
becomes infinity, anything below 6e-8 becomes zero. BF16 keeps FP32's range and gives up precision
(three significant decimal digits).
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx_ir as ir

from qonnx.errors import UserError

__all__ = ["FloatFormat", "FORMATS", "get_format"]


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    name: str  # "fp16" or "bf16", as in --precision
    dtype: ir.DataType
    numpy_dtype: np.dtype
    max: float
    smallest_normal: float
    smallest_subnormal: float
    onnx_type: str  # as in ONNX type constraints: "tensor(float16)"

    def convert(self, array: np.ndarray) -> np.ndarray:
        """``array`` rounded to this format (round to nearest even, as a Cast does)."""
        return np.asarray(array, dtype=np.float32).astype(self.numpy_dtype)


FORMATS = {
    "fp16": FloatFormat("fp16", ir.DataType.FLOAT16, np.dtype(np.float16), 65504.0, 2.0**-14, 2.0**-24, "tensor(float16)"),
    "bf16": FloatFormat(
        "bf16",
        ir.DataType.BFLOAT16,
        np.dtype(ml_dtypes.bfloat16),
        float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),
        2.0**-126,
        2.0**-133,
        "tensor(bfloat16)",
    ),
}


def get_format(name: str) -> FloatFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise UserError(f"{name!r} is not a 16-bit float format; known: {', '.join(FORMATS)}") from None
