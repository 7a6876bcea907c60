"""Block-wise weight quantization: 4- or 8-bit codes with one scale (and zero point) per block.

A weight ``W`` of shape ``[K, N]`` (``K`` the reduction axis of ``x @ W``) is cut along ``K`` into
blocks of ``block_size`` rows (the last block may be shorter); each block of each output column
gets its own scale ``s`` and zero point ``z``, and each value is stored as an unsigned code
``q = clamp(round(w / s) + z, 0, 2**bits - 1)``, read back as ``(q - z) * s``.

Range of a block (the formulas of onnxruntime's MLAS ``MlasQuantizeBlockwise``, so that the codes
match its ``MatMulNBits`` quantizer):

- symmetric: ``v`` = the value of largest magnitude (sign kept), ``s = v / -2**(bits-1)``,
  ``z = 2**(bits-1)``; the largest magnitude maps to code 0 exactly and the grid is
  ``-2**(bits-1) .. 2**(bits-1) - 1`` steps around zero;
- asymmetric: ``lo = min(min(w), 0)``, ``hi = max(max(w), 0)``, ``s = (hi - lo) / (2**bits - 1)``,
  ``z = clamp(round(-lo / s), 0, 2**bits - 1)``.

A block of zeros gets ``s = 0`` and decodes to zeros.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qonnx.policy import BLOCK_SIZES  # the block sizes onnxruntime's MatMulNBits runs on its packed fast path (MLAS)

__all__ = ["BlockQuantized", "BLOCK_SIZES", "as_blocks", "block_count", "block_params", "quantize_rows", "quantize_rtn"]



SLICE_BYTES = 16 << 20  # float32 bytes of the output columns quantized at once


def block_count(k: int, block_size: int) -> int:
    return math.ceil(k / block_size)


@dataclasses.dataclass(frozen=True)
class BlockQuantized:
    """``codes`` uint8 ``[K, N]``; ``scales`` float32 and ``zero_points`` uint8, ``[n_blocks, N]``."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    block_size: int
    symmetric: bool

    def dequantize(self) -> np.ndarray:
        """The float weight the codes stand for, ``[K, N]`` float32."""
        k = self.codes.shape[0]
        scales = np.repeat(self.scales, self.block_size, axis=0)[:k]
        zero_points = np.repeat(self.zero_points.astype(np.int32), self.block_size, axis=0)[:k]
        return ((self.codes.astype(np.int32) - zero_points).astype(np.float32) * scales).astype(np.float32)


def block_params(block: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (uint8) of each column of ``block`` (``[rows, N]``; or
    ``[blocks, rows, N]``, many blocks at once, giving ``[blocks, N]``), as in the module docstring."""
    block = block.astype(np.float32)
    levels = (1 << bits) - 1
    if symmetric:
        extreme = _signed_extreme(block)
        scales = (extreme / np.float32(-(1 << (bits - 1)))).astype(np.float32)
        zero_points = np.full(scales.shape, 1 << (bits - 1), dtype=np.uint8)
        return scales, zero_points
    lo = np.minimum(block.min(axis=-2), 0).astype(np.float32)
    hi = np.maximum(block.max(axis=-2), 0).astype(np.float32)
    scales = ((hi - lo) / np.float32(levels)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(scales != 0, np.round(-lo / np.where(scales != 0, scales, 1)), 0)
    return scales, np.clip(zp, 0, levels).astype(np.uint8)


def _signed_extreme(block: np.ndarray) -> np.ndarray:
    """Per column of ``block`` (axis -2), the value of largest magnitude with its sign; of ``+a`` and
    ``-a`` both present, the first (``argmax |block|``'s choice). From the max and the min (two
    reductions, 4x faster than the argmax); only tied columns take the argmax."""
    hi, lo = block.max(axis=-2), block.min(axis=-2)
    extreme = np.where(hi > -lo, hi, lo)
    tied = hi == -lo
    if tied.any():
        columns = np.moveaxis(block, -2, -1)[tied]  # [tied columns, rows]
        extreme[tied] = np.take_along_axis(columns, np.argmax(np.abs(columns), axis=-1)[:, None], axis=-1)[:, 0]
    return extreme


def quantize_rows(rows: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int) -> np.ndarray:
    """Codes (uint8) of ``rows`` (``[r, N]``) on the grid of one block (``scales``, ``zero_points``:
    ``[N]``; or of many blocks, ``rows`` ``[blocks, r, N]`` with ``[blocks, 1, N]`` parameters)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(scales != 0, np.float32(1) / np.where(scales != 0, scales, 1), 0).astype(np.float32)
    codes = np.round(rows.astype(np.float32) * inverse) + zero_points.astype(np.float32)
    return np.clip(codes, 0, (1 << bits) - 1).astype(np.uint8)


def as_blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """``weight`` ``[K, N]`` as float32 ``[n_blocks, block_size, N]``, the last block padded with
    zeros (which change no block's range: both formats' ranges include 0)."""
    k, n = weight.shape
    blocks = block_count(k, block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = weight
    return padded.reshape(blocks, block_size, n)


def quantize_rtn(weight: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = True) -> BlockQuantized:
    """Round-to-nearest: each block's range from its own values (``block_params``), then rounding;
    all blocks at once, on slices of the output columns whose temporaries stay near
    ``SLICE_BYTES`` (an lm_head of 49152 columns is 113 MB of float32)."""
    if weight.ndim != 2:
        raise ValueError(f"block quantization takes a [K, N] weight, not shape {weight.shape}")
    k, n = weight.shape
    count = block_count(k, block_size)
    codes = np.empty((k, n), dtype=np.uint8)
    scales = np.empty((count, n), dtype=np.float32)
    zero_points = np.empty((count, n), dtype=np.uint8)
    width = max(1, SLICE_BYTES // (count * block_size * 4))
    for start in range(0, n, width):
        cols = slice(start, min(start + width, n))
        blocks = as_blocks(weight[:, cols], block_size)
        scales[:, cols], zero_points[:, cols] = block_params(blocks, bits, symmetric)
        q = quantize_rows(blocks, scales[:, None, cols], zero_points[:, None, cols], bits)
        codes[:, cols] = q.reshape(-1, q.shape[2])[:k]
    return BlockQuantized(codes, scales, zero_points, bits, block_size, symmetric)
