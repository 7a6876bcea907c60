"""A streaming histogram whose bins are a canonical function of the data seen, not of its order.

Bins have a power-of-two width ``w = 2**e`` and edges on multiples of ``w``: bin ``k`` holds the
values ``x`` with ``floor(x / w) == k``. The histogram keeps ``bins`` counters for the bins
``start .. start + bins - 1``. After every batch

* ``e`` is the smallest exponent (never smaller than before) such that
  ``floor(max / w) - floor(min / w) < bins`` (everything seen fits) and ``w >= max|x| * 2**-20``
  (so that a constant tensor does not drive ``w`` towards zero, and ``x / w`` fits an int32),
  and ``e >= -100``;
* ``start = floor(min / w)``.

Widening from ``w`` to ``2w`` merges bins pairwise (bin ``k`` goes to ``floor(k / 2)``), which is
exact because the edges of the wide grid are edges of the narrow one. Both conditions only get
stronger as data arrives, so the final ``(e, start, counts)`` depend on the set of values alone:
batch size, batch order and ``merge`` change nothing (``x / w`` is exact in floating point because
``w`` is a power of two). Memory is ``bins`` counters, whatever the number of samples.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

__all__ = ["StreamingHistogram"]

# w >= max|x| * 2**-_MIN_RELATIVE_EXPONENT: bounds |x / w| by 2**20.
_MIN_RELATIVE_EXPONENT = 20
# w >= 2**_MIN_EXPONENT, so that 1 / w is a normal float32 (an all-zero tensor has no other bound).
_MIN_EXPONENT = -100
CHUNK = 1 << 16  # values binned at a time: the scratch arrays stay in cache
_buffers = threading.local()


def _scratch(dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread scratch arrays of CHUNK scaled values and bin numbers."""
    key = np.dtype(dtype).name
    buffers = getattr(_buffers, key, None)
    if buffers is None:
        buffers = (np.empty(CHUNK, dtype), np.empty(CHUNK, np.int64))
        setattr(_buffers, key, buffers)
    return buffers


def _exponent_for(lo: float, hi: float, bins: int, at_least: int) -> int:
    """The smallest exponent ``e >= at_least`` for which [lo, hi] fits ``bins`` aligned bins of 2**e."""
    amax = max(abs(lo), abs(hi))
    e = at_least
    if amax > 0:
        e = max(e, math.frexp(amax)[1] - _MIN_RELATIVE_EXPONENT)
    span = hi - lo
    if span > 0:
        e = max(e, math.frexp(span / bins)[1] - 1)
    while math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) >= bins:
        e += 1
    return e


class StreamingHistogram:
    """Counts of finite values in ``bins`` aligned power-of-two bins (see the module docstring)."""

    def __init__(self, bins: int = 4096):
        if bins < 2:
            raise ValueError("a histogram needs at least two bins")
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.exponent: int | None = None  # None until the first value
        self.start = 0
        self.lo = math.inf  # exact extremes of the values seen
        self.hi = -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def width(self) -> float:
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

    def edges(self) -> np.ndarray:
        """The ``bins + 1`` edges of the counters (float64)."""
        return (np.arange(self.bins + 1) + self.start) * self.width

    def _rebin(self, exponent: int, start: int) -> None:
        """Move the counts onto the grid of 2**exponent starting at bin ``start`` (exact)."""
        if self.exponent is None:
            self.exponent, self.start = exponent, start
            return
        shift = exponent - self.exponent
        occupied = np.nonzero(self.counts)[0]
        counts = np.zeros(self.bins, np.int64)
        if occupied.size:
            old_bins = occupied + self.start  # absolute bin numbers on the old grid
            new_bins = (old_bins >> shift) - start  # floor division by 2**shift, also for negatives
            np.add.at(counts, new_bins, self.counts[occupied])
        self.counts, self.exponent, self.start = counts, exponent, start

    def _fit(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, self.lo), max(hi, self.hi)
        exponent = _exponent_for(lo, hi, self.bins, _MIN_EXPONENT if self.exponent is None else self.exponent)
        start = math.floor(math.ldexp(lo, -exponent))
        if exponent != self.exponent or start != self.start:
            self._rebin(exponent, start)
        self.lo, self.hi = lo, hi

    def update(self, values: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
        """Fold in ``values``: flat, finite float32 (see ``observers.finite_part``); ``lo``/``hi`` their extremes if known."""
        if values.size == 0:
            return
        lo = float(values.min()) if lo is None else lo
        hi = float(values.max()) if hi is None else hi
        self._fit(lo, hi)
        # values * 2**-e is exact and |.| <= 2**20, so floor and the integer cast are exact. Scaling
        # down (e > 0) could flush a tiny negative value to -0.0 in float32: float64 then.
        # Chunks keep the scratch arrays in cache.
        scratch = np.float64 if self.exponent > 0 else np.float32
        inverse = scratch(math.ldexp(1.0, -self.exponent))
        scaled_buffer, index_buffer = _scratch(scratch)
        for begin in range(0, values.size, CHUNK):
            chunk = values[begin : begin + CHUNK]
            f, i = scaled_buffer[: chunk.size], index_buffer[: chunk.size]
            np.multiply(chunk, inverse, out=f)
            np.floor(f, out=f)
            i[...] = f
            i -= self.start
            self.counts += np.bincount(i, minlength=self.bins)

    def merge(self, other: StreamingHistogram) -> None:
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        if other.exponent is None:
            return
        other = other.copy()
        self._fit(other.lo, other.hi)
        other._rebin(self.exponent, self.start)
        self.counts += other.counts

    def copy(self) -> StreamingHistogram:
        twin = StreamingHistogram(self.bins)
        twin.counts, twin.exponent, twin.start, twin.lo, twin.hi = self.counts.copy(), self.exponent, self.start, self.lo, self.hi
        return twin

    def folded(self, max_bins: int | None = None) -> tuple[np.ndarray, float]:
        """Counts of ``|x|`` on ``[0, n * width)`` and their bin width.

        Negative bin ``k`` (values in ``[k w, (k + 1) w)``) lands in bin ``-k - 1`` of ``|x|``, which is
        exact on the same grid. With ``max_bins`` (at least 1) the result is coarsened by powers of
        two until it has at most that many bins.
        """
        if max_bins is not None and max_bins < 1:
            raise ValueError(f"max_bins must be at least 1, not {max_bins}")
        absolute = np.arange(self.bins) + self.start
        index = np.where(absolute >= 0, absolute, -absolute - 1)
        counts = np.bincount(index, weights=self.counts).astype(np.int64)  # up to the largest |x| bin
        width = self.width
        while max_bins is not None and counts.size > max_bins:
            counts = np.add.reduceat(counts, np.arange(0, counts.size, 2))  # pairs; an odd last bin alone
            width *= 2
        return counts, width

    def to_dict(self) -> dict[str, Any]:
        occupied = np.nonzero(self.counts)[0]
        return {
            "bins": self.bins,
            "exponent": self.exponent,
            "start": self.start,
            "lo": self.lo,
            "hi": self.hi,
            "nonzero": {int(k): int(self.counts[k]) for k in occupied},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamingHistogram:
        histogram = cls(int(data["bins"]))
        histogram.exponent, histogram.start = data["exponent"], int(data["start"])
        histogram.lo, histogram.hi = float(data["lo"]), float(data["hi"])
        for k, v in data["nonzero"].items():
            histogram.counts[int(k)] = int(v)
        return histogram

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamingHistogram):
            return NotImplemented
        return (self.bins, self.exponent, self.start, self.lo, self.hi) == (
            other.bins, other.exponent, other.start, other.lo, other.hi
        ) and np.array_equal(self.counts, other.counts)
