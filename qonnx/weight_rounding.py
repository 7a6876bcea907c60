"""Data-aware rounding of block-wise INT4 weights: GPTQ-style error feedback, AWQ-style input scaling,
and a clip search of the block ranges, all driven by the statistics of the layer's input.

A MatMul ``y = x @ W`` with ``W`` of shape ``[K, N]`` (``K`` the reduction axis) is quantized in
blocks of ``block_size`` rows (``qonnx.blockwise``). What each layer needs from calibration is its
input's second moment ``X^T X`` (``[K, K]``, over every token ``x`` of the data) and the mean of
``|x|`` per channel: ``qonnx.calib.weight_statistics.InputStatistics``. The output error of a
quantized weight ``Ŵ`` is then known without running the data again:

    ||X W - X Ŵ||_F^2 = tr(ΔW^T (X^T X) ΔW),    ΔW = Ŵ - W            (``layer_error``)

Interface for the rewrite pass::

    q = quantize(W, bits=4, block_size=32, symmetric=True, algorithm="gptq", statistics=stats)
    q.codes, q.scales, q.zero_points      # a qonnx.blockwise.BlockQuantized of W

- ``algorithm="rtn"``: round to nearest (``statistics`` may be None); ``clip=True`` searches a
  shrunk range per block (below).
- ``algorithm="gptq"``: Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
  Pre-trained Transformers" (2022), ``gptq`` below; ``act_order=True`` without ``g_idx``.
- ``algorithm="awq"``: Lin et al., "AWQ: Activation-aware Weight Quantization" (2023). Returns a
  ``ScaledBlockQuantized``: the codes of ``diag(s) W`` and ``input_scales = s``. **The layer's input
  must then be divided by s**, or the model changes: ``qonnx.input_scaling.fold_input_scales(model,
  nodes, s)`` folds ``1/s`` into the op before (exactly) and multiplies the float weights by ``s``.

On a whole model, AWQ is two steps, because a fold may change another layer's weight (down_proj's
``1/s`` goes into up_proj's columns) and so must happen before that layer is quantized::

    scaled = qonnx.input_scaling.scale_inputs(model, statistics, names, bits=4, block_size=32, symmetric=True)
    # every MatMul of ``names`` that could be scaled now holds diag(s) W in the graph, its 1/s is folded
    # upstream (the float model computes the same function), and its statistics describe x / s;
    # scaled[name] says how (or why not). Then, for each MatMul, its weight as it now stands:
    q = quantize(W_now, ..., algorithm="rtn", clip=True, statistics=statistics.get(name))   # or "gptq"

Clip search (``clip_search``, AWQ's "auto clip"): for each block and output column, the range of
``block_params`` is shrunk by each ratio of ``CLIP_RATIOS`` and the ratio with the least error
``Δ_b^T H_bb Δ_b`` (``H_bb`` the block's diagonal part of ``X^T X``; the identity without statistics)
is kept.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np

from qonnx.blockwise import BlockQuantized, as_blocks, block_count, block_params, quantize_rows, quantize_rtn

logger = logging.getLogger(__name__)

__all__ = [
    "ALGORITHMS",
    "AWQ_ALPHAS",
    "CLIP_RATIOS",
    "InputScaleSearch",
    "ScaledBlockQuantized",
    "clip_search",
    "gptq",
    "layer_error",
    "quantize",
    "search_input_scales",
    "weight_means",
]

ALGORITHMS = ("rtn", "gptq", "awq")
Algorithm = Literal["rtn", "gptq", "awq"]

# Shrink factors of a block's range tried by the clip search (1.0: the block's own range).
CLIP_RATIOS = tuple(float(r) for r in np.round(np.arange(1.0, 0.74, -0.025), 3))
_CLIP_SLICE_BYTES = 16 << 20  # a float64 temporary of the clip search (a 49152-token lm_head: 226 MB at once)
# Exponents of AWQ's per-channel scale s = mean|x| ** alpha (0: no scaling).
AWQ_ALPHAS = tuple(float(a) for a in np.round(np.arange(0.0, 1.0001, 0.05), 2))


@dataclasses.dataclass(frozen=True)
class ScaledBlockQuantized(BlockQuantized):
    """Codes of ``diag(input_scales) @ W``: the layer computes ``(x / input_scales) @ dequantize()``."""

    input_scales: np.ndarray | None = None  # float32 [K]


def _hessian_of(statistics) -> np.ndarray | None:
    return None if statistics is None else np.asarray(statistics.hessian, np.float64)


def layer_error(weight: np.ndarray, approximation: np.ndarray, hessian: np.ndarray | None) -> float:
    """``tr(ΔW^T H ΔW)`` with ``ΔW = approximation - weight`` (``||ΔW||_F^2`` when ``hessian`` is None):
    ``||X W - X Ŵ||_F^2`` when ``H = X^T X``."""
    delta = approximation.astype(np.float64) - weight.astype(np.float64)
    if hessian is None:
        return float(np.sum(delta * delta))
    return float(np.sum((hessian @ delta) * delta))


def _diagonal_blocks(hessian: np.ndarray | None, k: int, block_size: int) -> np.ndarray:
    """``[n_blocks, block_size, block_size]``: the blocks of ``hessian`` on its diagonal (zero-padded);
    identity blocks when ``hessian`` is None."""
    blocks = block_count(k, block_size)
    out = np.zeros((blocks, block_size, block_size), np.float64)
    for b in range(blocks):
        rows = slice(b * block_size, min((b + 1) * block_size, k))
        size = rows.stop - rows.start
        out[b, :size, :size] = np.eye(size) if hessian is None else hessian[rows, rows]
    return out


def clip_search(
    weight: np.ndarray,
    *,
    bits: int,
    block_size: int,
    symmetric: bool,
    hessian: np.ndarray | None = None,
    ratios: Sequence[float] = CLIP_RATIOS,
) -> BlockQuantized:
    """RTN with, per block and output column, the range ``block_params(r * block)`` for the ratio
    ``r`` of ``ratios`` whose error ``Δ^T H_bb Δ`` is least (values beyond the shrunk range clip).
    All blocks at once, one batched product ``H_bb Δ_b`` per ratio, on slices of the output columns
    (columns are independent) so that the temporaries stay near ``_CLIP_SLICE_BYTES``; ``weight``
    may be a strided view (a tied lm_head's ``E^T``): only a slice at a time is copied."""
    k, n = weight.shape
    count = block_count(k, block_size)
    diag_blocks = _diagonal_blocks(hessian, k, block_size)
    codes = np.empty((k, n), np.uint8)
    scales = np.zeros((count, n), np.float32)
    zero_points = np.zeros((count, n), np.uint8)
    width = max(1, _CLIP_SLICE_BYTES // (count * block_size * 8))
    for start in range(0, n, width):
        cols = slice(start, min(start + width, n))
        part = as_blocks(weight[:, cols], block_size)
        best_error = np.full((count, part.shape[2]), np.inf)
        best_codes = np.zeros(part.shape, np.uint8)
        for ratio in ratios:
            s, z = block_params(part * np.float32(ratio), bits, symmetric)
            q = quantize_rows(part, s[:, None, :], z[:, None, :], bits)
            delta = ((q.astype(np.int32) - z[:, None, :].astype(np.int32)).astype(np.float32) * s[:, None, :] - part).astype(np.float64)
            error = np.sum(np.matmul(diag_blocks, delta) * delta, axis=1)
            better = error < best_error
            best_error[better] = error[better]
            best_codes = np.where(better[:, None, :], q, best_codes)
            scales[:, cols][better], zero_points[:, cols][better] = s[better], z[better]
        codes[:, cols] = best_codes.reshape(-1, best_codes.shape[2])[:k]
    return BlockQuantized(codes, scales, zero_points, bits, block_size, symmetric)


def _damped(hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """``H`` with dead inputs (zero diagonal) set to 1 on the diagonal and ``damp`` times the mean
    diagonal added to it; and the dead mask."""
    h = np.array(hessian, np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    return h, dead


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), more damping if ``H`` is not
    numerically positive definite."""
    extra = 0.0
    mean_diag = float(np.mean(np.diag(h)))
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(h + extra * mean_diag * np.eye(len(h)))
            inverse_lower = np.linalg.inv(lower)
            inverse = inverse_lower.T @ inverse_lower
            return np.linalg.cholesky(inverse).T
        except np.linalg.LinAlgError:
            extra = 0.01 if extra == 0 else extra * 10
            logger.debug("GPTQ: Hessian not positive definite, dampening by %g of its mean diagonal more", extra)
    raise np.linalg.LinAlgError("GPTQ: the Hessian stays singular after dampening")


def gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    act_order: bool = False,
    damp: float = 0.01,
) -> BlockQuantized:
    """GPTQ on ``W [K, N]``: quantize row ``k`` (input feature ``k``) at a time and spread its error
    over the rows not yet quantized, weighted by the inverse Hessian.

    ``H = 2 X^T X / n`` (any positive multiple gives the same result) plus ``damp`` times its mean
    diagonal; ``U`` the upper Cholesky factor of ``H^-1``. For row ``k``, with ``d = U[k, k]``::

        q_k = Q(w_k);   e = (w_k - q_k) / d;   w_j -= U[k, j] * e   for the rows j after k

    applied lazily: within a batch of rows at once, to the later rows at the batch's end (the same
    result, fewer passes over ``W``). A block's scales and zero points come from ``block_params`` on
    the block's rows as they stand when its first row is reached (earlier errors already added).

    ``act_order``: rows in order of decreasing ``H[k, k]`` (the most active inputs first, while the
    most rows remain to absorb their error). Blocks stay contiguous in natural order (no ``g_idx``:
    onnxruntime's MatMulNBits fast path has none), so every block's range is taken up front from
    the original weights ("static groups") and rows are then quantized in act order on it.

    Dead inputs (``H[k, k] = 0``, never active on the data) get weight 0 before quantization (any
    value is as good; 0 keeps their block's range small).
    """
    k, n = weight.shape
    w = np.array(weight, np.float64, copy=True)
    h, dead = _damped(hessian, damp)
    w[dead] = 0
    blocks = block_count(k, block_size)
    scales = np.zeros((blocks, n), np.float32)
    zero_points = np.zeros((blocks, n), np.uint8)
    if act_order:
        for b in range(blocks):
            scales[b], zero_points[b] = block_params(w[b * block_size : (b + 1) * block_size], bits, symmetric)
        order = np.argsort(-np.diag(h), kind="stable")
    else:
        order = np.arange(k)
    w = w[order]
    u = _inverse_cholesky(h[np.ix_(order, order)])
    codes = np.zeros((k, n), np.uint8)
    batch = block_size * max(1, 128 // block_size)  # a multiple of the block: blocks start at a batch row
    for start in range(0, k, batch):
        stop = min(start + batch, k)
        rows = w[start:stop].copy()
        errors = np.zeros_like(rows)
        u_batch = u[start:stop, start:stop]
        for i in range(stop - start):
            position = start + i
            feature = order[position]
            block = feature // block_size
            if not act_order and feature % block_size == 0:
                scales[block], zero_points[block] = block_params(rows[i : i + block_size], bits, symmetric)
            s, z = scales[block], zero_points[block]
            q = quantize_rows(rows[i : i + 1], s, z, bits)[0]
            codes[feature] = q
            dequantized = (q.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s
            error = (rows[i] - dequantized) / u_batch[i, i]
            rows[i:] -= np.outer(u_batch[i, i:], error)
            errors[i] = error
        w[stop:] -= u[start:stop, stop:].T @ errors
    return BlockQuantized(codes, scales, zero_points, bits, block_size, symmetric)


@dataclasses.dataclass(frozen=True)
class InputScaleSearch:
    """AWQ's choice for a group of layers that read one input: ``scales`` ``[K]`` float32,
    ``alpha``, whether the scales are weight-aware (``weighted``: divided by the weights' relative
    magnitude to the power ``1 - alpha``), and the summed output errors ``tr(ΔW^T H ΔW)`` with
    these scales and with none (RTN)."""

    scales: np.ndarray
    alpha: float
    error: float
    rtn_error: float
    weighted: bool = False


def _normalised(s: np.ndarray) -> np.ndarray:
    s = np.maximum(s, 1e-4)
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def _normalised_scales(mean_abs: np.ndarray, alpha: float, weight_mean: np.ndarray | None = None) -> np.ndarray:
    """``s = m ** alpha`` (``m`` the mean ``|x|`` per channel, clamped at 1e-4 so that a silent
    channel does not get a zero scale), or with ``weight_mean`` ``w``: ``m ** alpha / (w ** (1 - alpha)
    + 1e-4)``; then normalised, ``s / sqrt(max * min)`` (AWQ's)."""
    s = np.maximum(mean_abs.astype(np.float64), 1e-4) ** alpha
    if weight_mean is not None:
        s = s / (weight_mean.astype(np.float64) ** (1 - alpha) + 1e-4)
    return _normalised(s)


def weight_means(weights: Sequence[np.ndarray], block_size: int) -> np.ndarray:
    """Per input channel ``k``, the mean over every output column ``n`` of the weights of
    ``|W[k, n]| / max |W[b, n]|`` (the max over ``k``'s block ``b``): how large the channel's weights
    are within their blocks (AWQ's weight-aware "duo" scaling)."""
    k = weights[0].shape[0]
    relative = []
    for w in weights:
        blocks = as_blocks(np.abs(w), block_size)
        peak = np.maximum(blocks.max(axis=1, keepdims=True), 1e-6)
        relative.append((blocks / peak).reshape(-1, w.shape[1])[:k])
    return np.concatenate(relative, axis=1).mean(axis=1)


class _ScaledError:
    """``tr(ΔW^T H ΔW)`` of the effective weight ``diag(1/s) Q(diag(s) W)`` (RTN) for many ``s``,
    in float32 buffers made once per weight: a search over a few dozen candidates on a layer then
    allocates no layer-sized array per candidate (which a long run would leave in a fragmented heap)."""

    def __init__(self, weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int, symmetric: bool):
        self.weight, self.hessian, self.bits, self.symmetric = weight.astype(np.float32), hessian, bits, symmetric
        k, n = weight.shape
        self.blocks = as_blocks(np.zeros((k, n), np.float32), block_size)  # zero rows pad the last block
        self.rows = self.blocks.reshape(-1, n)[:k]
        self.dequantized = np.zeros_like(self.blocks)
        self.delta = self.dequantized.reshape(-1, n)[:k]
        self.product = np.empty((k, n), np.float32)

    def __call__(self, s: np.ndarray) -> float:
        np.multiply(self.weight, s[:, None], out=self.rows)
        scales, zero_points = block_params(self.blocks, self.bits, self.symmetric)
        with np.errstate(divide="ignore"):
            inverse = np.where(scales != 0, np.float32(1) / np.where(scales != 0, scales, 1), 0).astype(np.float32)
        z = zero_points.astype(np.float32)[:, None, :]
        out = self.dequantized  # (clip(round(w * 1/scale) + z) - z) * scale: what quantize_rtn stores, decoded
        np.multiply(self.blocks, inverse[:, None, :], out=out)
        np.round(out, out=out)
        out += z
        np.clip(out, 0, (1 << self.bits) - 1, out=out)
        out -= z
        out *= scales[:, None, :]
        np.divide(self.delta, s[:, None], out=self.delta)
        self.delta -= self.weight
        np.matmul(self.hessian, self.delta, out=self.product)
        return float(np.einsum("kn,kn->k", self.product, self.delta).sum(dtype=np.float64))


def search_input_scales(
    weights: Sequence[np.ndarray],
    statistics,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    alphas: Sequence[float] = AWQ_ALPHAS,
    weighted: bool = True,
    exhaustive: bool = False,
) -> InputScaleSearch:
    """One per-input-channel scale ``s`` for every weight in ``weights`` (layers reading the same
    ``x``: q/k/v projections), minimising the summed output error ``Σ tr(ΔW^T H ΔW)`` of the
    effective weights ``diag(1/s) Q(diag(s) W)`` (RTN), computed from the Hessian ``H = X^T X``
    alone. Candidates: ``s = mean|x| ** alpha`` for each of ``alphas``, and with ``weighted`` also
    ``mean|x| ** alpha / w ** (1 - alpha)`` (``w`` of ``weight_means``) for each alpha above 0; no
    scaling at all is alpha 0 of the first kind.

    Coarse to fine unless ``exhaustive``: every other alpha of each kind, then the two alphas
    beside that kind's best: the full grid's choice wherever the error is unimodal in alpha, with
    40% fewer candidates measured (on SmolLM2, 87 of 90 groups chose as the full grid did; the
    other three are within 0.4% of its error).

    Cost: ``len(alphas) * K^2 * ΣN`` multiply-adds per kind (float32 products and row sums,
    float64 sums of the rows), about 0.6 of it coarse to fine.
    """
    hessian = _hessian_of(statistics).astype(np.float32)
    mean_abs = np.asarray(statistics.mean_abs, np.float64)
    grid = sorted(set(float(a) for a in alphas))
    kinds = {False: grid}
    w_mean = None
    if weighted:
        w_mean = weight_means(weights, block_size)
        kinds[True] = [alpha for alpha in grid if alpha > 0]
    measures = [_ScaledError(w, hessian, bits, block_size, symmetric) for w in weights]
    errors = {}

    def measure(alpha: float, is_weighted: bool) -> None:
        if (alpha, is_weighted) not in errors:
            s = _normalised_scales(mean_abs, alpha, w_mean if is_weighted else None)
            errors[(alpha, is_weighted)] = sum(m(s) for m in measures)

    for is_weighted, kind in kinds.items():
        coarse = kind if exhaustive else sorted({*kind[::2], kind[-1]})
        for alpha in coarse:
            measure(alpha, is_weighted)
        position = kind.index(min(coarse, key=lambda a: (errors[(a, is_weighted)], a)))
        for neighbour in kind[max(position - 1, 0) : position + 2]:
            measure(neighbour, is_weighted)
    best = min(errors, key=lambda c: (errors[c], c[1], c[0]))
    rtn = errors.get((0.0, False), errors[best])
    alpha, is_weighted = best
    return InputScaleSearch(_normalised_scales(mean_abs, alpha, w_mean if is_weighted else None), alpha, errors[best], rtn, is_weighted)


def _check(weight: np.ndarray, bits: int, block_size: int) -> None:
    if weight.ndim != 2:
        raise ValueError(f"block quantization takes a [K, N] weight, not shape {weight.shape}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, not {block_size}")


def quantize(
    weight: np.ndarray,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    algorithm: Algorithm = "rtn",
    statistics=None,
    clip: bool | None = None,
    act_order: bool = False,
    damp: float = 0.01,
    input_scales: np.ndarray | None = None,
) -> BlockQuantized:
    """Block-quantize ``weight`` ``[K, N]`` with ``algorithm`` (see the module docstring).

    ``statistics``: the layer input's ``InputStatistics`` (``hessian`` = ``X^T X``, ``mean_abs``),
    needed by "gptq" and "awq" and by the clip search. ``clip``: search shrunk block ranges (default:
    on for "awq", off otherwise; with "gptq" it is ignored, GPTQ's error feedback choosing the
    rounding). ``act_order``, ``damp``: GPTQ's. ``input_scales`` ("awq" only): use these ``s``
    (a group's, from ``search_input_scales``) instead of searching this layer's own.
    """
    _check(weight, bits, block_size)
    weight = np.asarray(weight, np.float32)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    if algorithm != "rtn" and statistics is None:
        raise ValueError(f"{algorithm} needs the statistics of the layer's input (X^T X, mean |x|)")
    hessian = _hessian_of(statistics)
    if hessian is not None and hessian.shape != (weight.shape[0],) * 2:
        raise ValueError(f"statistics of {hessian.shape[0]} input channels for a weight of {weight.shape[0]} rows")
    if algorithm == "rtn":
        if clip:
            return clip_search(weight, bits=bits, block_size=block_size, symmetric=symmetric, hessian=hessian)
        return quantize_rtn(weight, bits, block_size, symmetric)
    if algorithm == "gptq":
        return gptq(weight, hessian, bits=bits, block_size=block_size, symmetric=symmetric, act_order=act_order, damp=damp)
    if input_scales is None:
        input_scales = search_input_scales([weight], statistics, bits=bits, block_size=block_size, symmetric=symmetric).scales
    s = np.asarray(input_scales, np.float32)
    scaled = (weight * s[:, None]).astype(np.float32)
    scaled_hessian = hessian / np.outer(s, s).astype(np.float64)  # the statistics of x / s
    if clip is False:
        q = quantize_rtn(scaled, bits, block_size, symmetric)
    else:
        q = clip_search(scaled, bits=bits, block_size=block_size, symmetric=symmetric, hessian=scaled_hessian)
    return ScaledBlockQuantized(q.codes, q.scales, q.zero_points, bits, block_size, symmetric, input_scales=s)
