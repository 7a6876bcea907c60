"""The byte layouts of onnxruntime's block-quantized kernels, from a ``BlockQuantized`` weight.

``MatMulNBits`` (com.microsoft) computes ``y = x @ W`` for a ``[K, N]`` weight stored column by
column (``N`` rows of ``K`` codes):

- ``B``: uint8 ``[N, n_blocks, block_size * bits / 8]``; each block's codes packed along ``K``,
  two 4-bit codes a byte, the first in the low nibble; a ragged last block padded with zero bytes
  (as onnxruntime's quantizer leaves them; the kernel reads only ``K`` rows);
- ``scales``: float32 ``[N, n_blocks]``;
- ``zero_points`` (asymmetric only; without them the kernel takes ``2**(bits-1)``): uint8
  ``[N, ceil(n_blocks * bits / 8)]``, packed along the blocks the same way (an odd last half
  byte holds the default zero point).

``GatherBlockQuantized`` (com.microsoft) with uint8 data gathers rows of an embedding table
``E [V, H]`` quantized along ``H`` (``quantize_axis=1``), the layout of a tied lm_head's weight
``E^T`` as ``[K=H, N=V]``: data ``[V, ceil(H * bits / 8)]`` packed along ``H`` (no block padding),
scales ``[V, n_blocks]``, zero points ``[V, ceil(n_blocks * bits / 8)]`` (asymmetric only; the
default is ``2**(bits-1)``).

Standard ONNX (opset 21): ``DequantizeLinear`` of a ``[K, N]`` INT4/UINT4 (or INT8/UINT8)
initializer with ``axis=0`` and ``block_size``; scales and zero points ``[n_blocks, N]``. A
symmetric weight is stored signed (``code - 2**(bits-1)``) without a zero point.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qonnx.blockwise import BlockQuantized

__all__ = ["NBitsWeight", "pack_codes", "matmul_nbits", "gather_block_quantized", "signed_codes"]


@dataclasses.dataclass(frozen=True)
class NBitsWeight:
    """The initializers of one block-quantized kernel input; ``zero_points`` None when symmetric."""

    data: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


def pack_codes(codes: np.ndarray, bits: int, pad: int = 0) -> np.ndarray:
    """Pack the last axis of unsigned ``codes`` (uint8, each below ``2**bits``) into bytes, low bits
    first; an odd count of 4-bit codes gets ``pad`` in the last high nibble."""
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.copy()
    if bits != 4:
        raise ValueError(f"packing takes 4 or 8 bits, not {bits}")
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.full((*codes.shape[:-1], 1), pad, np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def matmul_nbits(weight: BlockQuantized) -> NBitsWeight:
    """``B``, ``scales`` and ``zero_points`` of ``MatMulNBits`` for ``weight`` (``[K, N]``)."""
    k, n = weight.codes.shape
    blocks = weight.scales.shape[0]
    padded = np.zeros((blocks * weight.block_size, n), np.uint8)
    padded[:k] = weight.codes
    columns = np.ascontiguousarray(padded.T).reshape(n, blocks, weight.block_size)
    data = pack_codes(columns, weight.bits)
    scales = np.ascontiguousarray(weight.scales.T, dtype=np.float32)
    return NBitsWeight(data, scales, _packed_zero_points(weight))


def _packed_zero_points(weight: BlockQuantized) -> np.ndarray | None:
    """``[N, ceil(n_blocks * bits / 8)]``; an odd last half byte holds the default zero point, as
    onnxruntime's quantizer writes it."""
    if weight.symmetric:
        return None
    return pack_codes(np.ascontiguousarray(weight.zero_points.T), weight.bits, pad=1 << (weight.bits - 1))


def gather_block_quantized(table_t: BlockQuantized) -> NBitsWeight:
    """``data``, ``scales`` and ``zero_points`` of ``GatherBlockQuantized`` (uint8 data,
    ``gather_axis=0``, ``quantize_axis=1``) for a table ``E [V, H]`` given as its quantized
    transpose ``table_t`` (``[K=H, N=V]``, blocks along ``H``)."""
    data = pack_codes(np.ascontiguousarray(table_t.codes.T), table_t.bits)
    scales = np.ascontiguousarray(table_t.scales.T, dtype=np.float32)
    return NBitsWeight(data, scales, _packed_zero_points(table_t))


def signed_codes(weight: BlockQuantized) -> np.ndarray:
    """The codes of a symmetric weight as signed integers (int8 ``code - 2**(bits-1)``), for a
    standard INT4/INT8 ``DequantizeLinear`` without a zero point."""
    if not weight.symmetric:
        raise ValueError("signed codes are for a symmetric weight")
    return (weight.codes.astype(np.int16) - (1 << (weight.bits - 1))).astype(np.int8)
