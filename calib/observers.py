"""Observers: streaming statistics of a tensor, folded in batch by batch.

Contract (after torch.ao's observers): ``Observer`` is an abstract base class. ``update(batch)``
folds a batch in; ``merge(other)`` combines two observers of the same tensor as if one had seen
both streams; ``compute_range()`` answers ``(lo, hi)``; ``to_dict()`` / ``from_dict()``
round-trip; ``settings()`` are the keyword arguments that rebuild an empty twin. Memory does not
grow with the number of samples. Non-finite values (NaN, ±inf) and the ±3.4e38 fill values of
attention masks never reach a range: they are counted in ``nonfinite`` and reported.

Methods: each has a factory, a frozen dataclass of its typed settings whose ``new()`` makes an
empty observer (``FACTORIES``, by method name; ``factory_for(name)`` for a name read from text):

* ``MinMax()``: the exact extremes;
* ``MovingAverageMinMax(averaging_constant)``: exponential moving averages of the per-batch
  extremes (torch's MovingAverageMinMaxObserver);
* ``Percentile(percentile, symmetric, bins)``, ``Entropy(quantized_bins, fine_bins, symmetric,
  bins)``, ``MSE(dtype, steps, bins)``: read off one streaming histogram per tensor
  (``calib.histogram.StreamingHistogram``), whose bins depend on the data seen and not on batch
  size or order.

A factory checks its settings when it is made (a bad one is a UserError before any work), and its
defaults are the observers' defaults.

Ranges come back as ``(lo, hi)`` inside the observed ``[min, max]``. For the asymmetric UINT8
activations of the CPU target that is the range to quantize; the symmetric targets take
``max(|lo|, |hi|)``. A post-ReLU tensor (``min >= 0``) gets ``(min, t)``; a two-sided one gets its
lower and upper ends clipped separately. With ``symmetric=True`` (percentile, entropy) the range
is ``(-t, t)`` with ``t <= max|x|``, whatever the signs of the data.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np

from qonnx.calib.histogram import CHUNK, StreamingHistogram
from qonnx.errors import UserError
from qonnx.fp8 import FLOAT8_FORMATS, Float8Format

__all__ = [
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "EntropyObserver",
    "MSEObserver",
    "OBSERVERS",
    "ObserverFactory",
    "MinMax",
    "MovingAverageMinMax",
    "Percentile",
    "Entropy",
    "MSE",
    "FACTORIES",
    "factory_for",
    "FILL_LIMIT",
    "finite_part",
    "observer_from_dict",
    "kl_threshold_bins",
]

# Masks fill with float32's lowest value or -1e30-ish constants; no real activation gets near.
FILL_LIMIT = np.float32(1e30)


def finite_part(batch: np.ndarray) -> tuple[np.ndarray, int]:
    """The values of ``batch`` (flat float32) that are finite and not fill values, and how many were dropped."""
    values, dropped, _, _ = _finite(batch)
    return values, dropped


def _finite(batch: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """``finite_part`` plus the extremes of what is kept (inf, -inf when nothing is)."""
    flat = np.asarray(batch, dtype=np.float32).ravel()
    # NaN propagates through min and max, so one check covers the common all-finite case.
    lo, hi = flat.min(initial=np.inf), flat.max(initial=-np.inf)
    dropped = 0
    if not (-FILL_LIMIT < lo and hi < FILL_LIMIT):  # NaN, ±inf or a fill value (no values: inf, -inf pass)
        keep = np.isfinite(flat) & (np.abs(flat) < FILL_LIMIT)
        dropped = int(flat.size - np.count_nonzero(keep))
        flat = flat[keep]
        lo, hi = flat.min(initial=np.inf), flat.max(initial=-np.inf)
    return flat, dropped, float(lo), float(hi)


class Observer(abc.ABC):
    """Streaming statistics of one tensor: ``update`` folds batches in, ``compute_range`` answers.

    Every observer gives ``update``, ``merge``, ``compute_range``, ``settings``, ``to_dict`` and
    ``from_dict``; ``nonfinite`` counts the values left out of the range (NaN, ±inf, fill values).
    """

    name: ClassVar[str] = ""
    nonfinite: int = 0

    @abc.abstractmethod
    def update(self, batch: np.ndarray) -> None:
        """Fold ``batch`` (any shape) in."""

    @abc.abstractmethod
    def merge(self, other: Observer) -> None:
        """Fold in what ``other`` (of the same kind and settings) saw, as if this one had seen it."""

    @abc.abstractmethod
    def compute_range(self) -> tuple[float, float]:
        """``(lo, hi)``; raises ValueError when no finite value was observed."""

    @property
    def resolution(self) -> float:
        """How finely the observer resolves values (a histogram's bin width; 0 when exact)."""
        return 0.0

    def observed_range(self) -> tuple[float, float]:
        """The extremes of the values seen, before any clipping the method chooses (the method's
        own range where it keeps no extremes, as a moving average)."""
        return self.compute_range()

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The keyword arguments that rebuild an empty twin (recorded in range tables)."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Settings and state as JSON values, with the method's name under ``"observer"``."""

    @classmethod
    @abc.abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Observer:
        """The observer ``to_dict`` described."""


# ----------------------------------------------------------------------------------------------
# Factories: one per method, its typed settings


class ObserverFactory(abc.ABC):
    """Makes the empty observers of one method with one set of settings.

    A subclass is a frozen dataclass of the method's settings, named ``method``; ``new()`` (or
    calling the factory) returns a fresh observer. Making a factory makes one observer, so that
    settings the observer refuses fail there, before any work.
    """

    method: ClassVar[str]

    def __post_init__(self) -> None:
        self.new()

    @abc.abstractmethod
    def new(self) -> Observer:
        """An empty observer of these settings."""

    def __call__(self) -> Observer:
        return self.new()


@dataclasses.dataclass(frozen=True)
class MinMax(ObserverFactory):
    """``MinMaxObserver``: the exact extremes; no settings."""

    method: ClassVar[str] = "minmax"

    def new(self) -> MinMaxObserver:
        return MinMaxObserver()


@dataclasses.dataclass(frozen=True)
class MovingAverageMinMax(ObserverFactory):
    """``MovingAverageMinMaxObserver``: moving averages of the batch extremes.

    Attributes:
        averaging_constant: the weight ``c`` of each new batch, in ``(0, 1]``.
    """

    method: ClassVar[str] = "moving-minmax"
    averaging_constant: float = 0.01

    def new(self) -> MovingAverageMinMaxObserver:
        return MovingAverageMinMaxObserver(self.averaging_constant)


@dataclasses.dataclass(frozen=True)
class Percentile(ObserverFactory):
    """``PercentileObserver``: percentiles read off a histogram.

    Attributes:
        percentile: ``P``, the share of values kept, in ``(50, 100]``.
        symmetric: ``(-t, t)`` from the percentile of ``|x|`` instead of two ends.
        bins: counters of the streaming histogram.
    """

    method: ClassVar[str] = "percentile"
    percentile: float = 99.99
    symmetric: bool = False
    bins: int = 4096

    def new(self) -> PercentileObserver:
        return PercentileObserver(self.percentile, self.symmetric, self.bins)


@dataclasses.dataclass(frozen=True)
class Entropy(ObserverFactory):
    """``EntropyObserver``: TensorRT's entropy (KL divergence) calibration.

    Attributes:
        quantized_bins: levels of the quantized histogram, in ``[2, fine_bins]``.
        fine_bins: at most this many bins of ``|x|`` are searched.
        symmetric: ``(-t, t)`` instead of the observed ends clipped at ``±t``.
        bins: counters of the streaming histogram.
    """

    method: ClassVar[str] = "entropy"
    quantized_bins: int = 128
    fine_bins: int = 2048
    symmetric: bool = False
    bins: int = 4096

    def new(self) -> EntropyObserver:
        return EntropyObserver(self.quantized_bins, self.fine_bins, self.symmetric, self.bins)


@dataclasses.dataclass(frozen=True)
class MSE(ObserverFactory):
    """``MSEObserver``: the range of least expected squared quantization error.

    Attributes:
        dtype: the type the range is for, a key of ``MSE_FORMATS`` (``uint8``, ``int8``,
            ``float8e4m3fn``, ``float8e5m2``).
        steps: candidate ranges, the observed one shrunk by ``k / steps``.
        bins: counters of the streaming histogram.
    """

    method: ClassVar[str] = "mse"
    dtype: str = "uint8"
    steps: int = 256
    bins: int = 4096

    def new(self) -> MSEObserver:
        return MSEObserver(self.dtype, self.steps, self.bins)


FACTORIES: dict[str, type[ObserverFactory]] = {
    cls.method: cls for cls in (MinMax, MovingAverageMinMax, Percentile, Entropy, MSE)
}


def factory_for(method: str) -> type[ObserverFactory]:
    """The factory of the method named ``method`` (as pipeline text and configs name it)."""
    if method not in FACTORIES:
        raise UserError(f"unknown calibration method {method!r}; known: {', '.join(FACTORIES)}")
    return FACTORIES[method]


# ----------------------------------------------------------------------------------------------
# Exact extremes


@dataclasses.dataclass
class MinMaxObserver(Observer):
    """``lo = min over all finite values``, ``hi = max over all finite values``.

    A tensor that never held a finite value has no range: ``compute_range`` raises.
    """

    name: ClassVar[str] = "minmax"
    lo: float = float("inf")
    hi: float = float("-inf")
    count: int = 0
    nonfinite: int = 0

    def update(self, batch: np.ndarray) -> None:
        values, dropped, lo, hi = _finite(batch)
        self.nonfinite += dropped
        if values.size:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
            self.count += int(values.size)

    def merge(self, other: MinMaxObserver) -> None:
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.count += other.count
        self.nonfinite += other.nonfinite

    def compute_range(self) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError("no finite values observed")
        return self.lo, self.hi

    def settings(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"observer": self.name, "lo": self.lo, "hi": self.hi, "count": self.count, "nonfinite": self.nonfinite}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinMaxObserver:
        return cls(float(data["lo"]), float(data["hi"]), int(data["count"]), int(data["nonfinite"]))


@dataclasses.dataclass
class MovingAverageMinMaxObserver(Observer):
    """Exponential moving averages of the per-batch extremes, as torch's MovingAverageMinMaxObserver.

    ``lo ← lo + c · (min(batch) - lo)`` and ``hi ← hi + c · (max(batch) - hi)`` with
    ``c = averaging_constant``; the first batch sets both. The result lies inside the observed
    ``[min, max]``. It depends on the batch order by design, so ``merge`` can only weight the two
    averages by the batches behind them: ``lo = (b₁ lo₁ + b₂ lo₂) / (b₁ + b₂)``.
    """

    name: ClassVar[str] = "moving-minmax"
    averaging_constant: float = MovingAverageMinMax.averaging_constant
    lo: float = float("inf")
    hi: float = float("-inf")
    batches: int = 0
    nonfinite: int = 0

    def __post_init__(self):
        if not 0 < self.averaging_constant <= 1:
            raise UserError(f"averaging_constant must be in (0, 1], not {self.averaging_constant}")

    def update(self, batch: np.ndarray) -> None:
        values, dropped, lo, hi = _finite(batch)
        self.nonfinite += dropped
        if not values.size:
            return
        if self.batches == 0:
            self.lo, self.hi = lo, hi
        else:
            c = self.averaging_constant
            self.lo, self.hi = self.lo + c * (lo - self.lo), self.hi + c * (hi - self.hi)
        self.batches += 1

    def merge(self, other: MovingAverageMinMaxObserver) -> None:
        total = self.batches + other.batches
        if other.batches:
            mine, theirs = self.batches / total, other.batches / total
            self.lo = other.lo if not self.batches else mine * self.lo + theirs * other.lo
            self.hi = other.hi if not self.batches else mine * self.hi + theirs * other.hi
        self.batches = total
        self.nonfinite += other.nonfinite

    def compute_range(self) -> tuple[float, float]:
        if self.batches == 0:
            raise ValueError("no finite values observed")
        return self.lo, self.hi

    def settings(self) -> dict[str, Any]:
        return {"averaging_constant": self.averaging_constant}

    def to_dict(self) -> dict[str, Any]:
        return {"observer": self.name, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MovingAverageMinMaxObserver:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


class PerChannelMinMaxObserver(Observer):
    """Exact extremes per slice along ``axis`` (weights: the output-channel axis).

    ``lo[c] = min over finite x[..., c, ...]``, ``hi[c]`` likewise; ``compute_range`` returns two
    arrays of one entry per channel. A channel without a finite value makes it raise.
    """

    name: ClassVar[str] = "per-channel-minmax"

    def __init__(self, axis: int = 0):
        self.axis = axis
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.nonfinite = 0

    def update(self, batch: np.ndarray) -> None:
        rows = np.moveaxis(np.asarray(batch, dtype=np.float32), self.axis, 0)  # channels first
        others = tuple(range(1, rows.ndim))
        keep = np.isfinite(rows) & (np.abs(rows) < FILL_LIMIT)
        self.nonfinite += int(keep.size - np.count_nonzero(keep))
        # float64, as from_dict gives; a channel of no elements stays (inf, -inf)
        lo = np.asarray(np.where(keep, rows, np.inf).min(axis=others, initial=np.inf), np.float64)
        hi = np.asarray(np.where(keep, rows, -np.inf).max(axis=others, initial=-np.inf), np.float64)
        if self.lo is not None and self.lo.shape != lo.shape:
            raise ValueError(f"{lo.size} channels along axis {self.axis}, {self.lo.size} before")
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def merge(self, other: PerChannelMinMaxObserver) -> None:
        if other.lo is not None:
            self.lo = other.lo.copy() if self.lo is None else np.minimum(self.lo, other.lo)
            self.hi = other.hi.copy() if self.hi is None else np.maximum(self.hi, other.hi)
        self.nonfinite += other.nonfinite

    def compute_range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.lo is None or not np.all(np.isfinite(self.lo)):
            raise ValueError("a channel held no finite value")
        return self.lo.copy(), self.hi.copy()

    def settings(self) -> dict[str, Any]:
        return {"axis": self.axis}

    def to_dict(self) -> dict[str, Any]:
        return {
            "observer": self.name,
            "axis": self.axis,
            "lo": None if self.lo is None else self.lo.tolist(),
            "hi": None if self.hi is None else self.hi.tolist(),
            "nonfinite": self.nonfinite,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerChannelMinMaxObserver:
        observer = cls(int(data["axis"]))
        if data["lo"] is not None:
            observer.lo, observer.hi = np.asarray(data["lo"], np.float64), np.asarray(data["hi"], np.float64)
        observer.nonfinite = int(data["nonfinite"])
        return observer


# ----------------------------------------------------------------------------------------------
# Histogram methods


class HistogramObserver(Observer):
    """Base of the methods read off a ``StreamingHistogram`` of ``bins`` counters.

    A method gives ``_range()``, which ``compute_range`` puts inside the observed ``[min, max]``
    end by end, and, if it can be ``symmetric``, ``_threshold()``: then the range is ``(-t, t)``
    with ``t = min(_threshold(), max|x|)``.
    """

    symmetric: bool = False

    def __init__(self, bins: int):
        self.histogram = StreamingHistogram(bins)
        self.nonfinite = 0

    @property
    def count(self) -> int:
        return self.histogram.total

    @property
    def resolution(self) -> float:
        return self.histogram.width

    def observed_range(self) -> tuple[float, float]:
        if self.histogram.total == 0:
            raise ValueError("no finite values observed")
        return float(self.histogram.lo), float(self.histogram.hi)

    def update(self, batch: np.ndarray) -> None:
        # Chunk by chunk, so that the extremes, the finiteness check and the binning read each
        # value from memory once (a chunk stays in cache); the bins do not depend on the chunks.
        flat = np.ravel(batch)  # float32 chunk by chunk, in _finite
        for begin in range(0, flat.size, CHUNK):
            values, dropped, lo, hi = _finite(flat[begin : begin + CHUNK])
            self.nonfinite += dropped
            self.histogram.update(values, lo, hi)

    def merge(self, other: HistogramObserver) -> None:
        self.histogram.merge(other.histogram)
        self.nonfinite += other.nonfinite

    def compute_range(self) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError("no finite values observed")
        h = self.histogram
        if self.symmetric:
            t = float(min(self._threshold(), max(-h.lo, h.hi)))  # at most max|x|
            return -t, t
        lo, hi = self._range()
        lo, hi = min(max(lo, h.lo), h.hi), min(max(hi, h.lo), h.hi)  # inside the observed range
        return float(min(lo, hi)), float(max(lo, hi))

    @abc.abstractmethod
    def _range(self) -> tuple[float, float]:
        """``(lo, hi)`` before it is put inside the observed range."""

    def _threshold(self) -> float:
        """``t`` of the symmetric range ``(-t, t)``, before it is capped at ``max|x|``."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {"bins": self.histogram.bins}

    def to_dict(self) -> dict[str, Any]:
        return {
            "observer": self.name,
            "settings": self.settings(),
            "histogram": self.histogram.to_dict(),
            "nonfinite": self.nonfinite,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistogramObserver:
        observer = cls(**data["settings"])
        observer.histogram = StreamingHistogram.from_dict(data["histogram"])
        observer.nonfinite = int(data["nonfinite"])
        return observer

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()


def _quantile_bin(counts: np.ndarray, q: float) -> int:
    """The bin in which the fraction ``q`` (``0 <= q <= 1``) of the histogram's count is reached.

    The first ``k`` with ``cumsum(counts)[k] >= q · total``. For ``0 < q · total <= total`` that
    bin exists and holds something (the cumulative count rises there); for ``q = 0`` it is the
    first bin, which holds the minimum on a streaming histogram (its bins start at the minimum).
    """
    cumulative = np.cumsum(counts)
    return int(np.searchsorted(cumulative, q * cumulative[-1]))


class PercentileObserver(HistogramObserver):
    """Percentiles of the streamed values.

    Two-sided (default): ``hi = Q(P / 100)``, ``lo = Q(1 - P / 100)``, with ``Q`` the quantile
    read off the histogram, rounded outwards to the edge of its bin (so it is within one bin of the
    exact quantile, never clips more than ``P`` says, and a post-ReLU tensor keeps ``lo = 0``).
    Symmetric: ``t = Q_|x|(P / 100)``, the quantile of the magnitudes, and ``(-t, t)``.
    Both ends move monotonically with ``P``; ``P = 100`` gives the exact extremes (symmetric:
    ``t = max|x|``).
    """

    name: ClassVar[str] = "percentile"

    def __init__(
        self, percentile: float = Percentile.percentile, symmetric: bool = Percentile.symmetric, bins: int = Percentile.bins
    ):
        if not 50 < percentile <= 100:
            raise UserError(f"percentile must be in (50, 100], not {percentile}")
        super().__init__(bins)
        self.percentile, self.symmetric = float(percentile), bool(symmetric)

    def settings(self) -> dict[str, Any]:
        return {"percentile": self.percentile, "symmetric": self.symmetric, **super().settings()}

    def _range(self) -> tuple[float, float]:
        # P = 100: the bins of the extremes, which compute_range narrows to the extremes themselves
        h, q = self.histogram, self.percentile / 100
        hi = (h.start + _quantile_bin(h.counts, q) + 1) * h.width
        lo = (h.start + _quantile_bin(h.counts, 1 - q)) * h.width
        return lo, hi

    def _threshold(self) -> float:
        counts, width = self.histogram.folded()
        return (_quantile_bin(counts, self.percentile / 100) + 1) * width


_KL_TIE = 1e-9  # divergences closer than this are equal (they are sums of ~n terms rounded)


def _xlogx(v: np.ndarray) -> np.ndarray:
    """``v · log v``, 0 where ``v = 0``."""
    return v * np.log(np.where(v > 0, v, 1.0))


def kl_threshold_bins(histogram: np.ndarray, quantized_bins: int = 128) -> int:
    """How many leading bins of a histogram of ``|x|`` TensorRT's entropy calibration keeps.

    For every candidate ``i`` in ``quantized_bins .. n`` (vectorized, no loop over candidates):

    * ``P``: the first ``i`` bins, with the count of all later bins (the clipped outliers) added to
      bin ``i - 1``;
    * ``Q``: the first ``i`` bins merged into ``quantized_bins`` groups (bin ``j`` in group
      ``floor(j · quantized_bins / i)``), each group's count spread evenly over its bins where
      ``P`` is non-zero;
    * ``KL(P || Q) = Σ_j p_j log(p_j / q_j)`` with both normalized,

    and the ``i`` with the smallest divergence wins. Groups are contiguous, so every sum is a
    difference of cumulative sums: ``Σ_j p̂_j log p̂_j`` from ``cumsum(h log h)`` and
    ``Σ_j p̂_j log q̂_j = Σ_g P_g log(S_g / (Z_g · S))`` from group sums ``S_g`` and non-zero counts
    ``Z_g``, an array of ``candidates × quantized_bins``. A ``q_j = 0`` under ``p_j > 0`` makes the
    divergence infinite (that candidate loses); ``i = n`` is always finite.
    """
    h = np.asarray(histogram)
    n = h.size
    if n <= quantized_bins or h.sum() == 0:
        return n
    total = h.sum()
    cum = np.concatenate([[0.0], np.cumsum(h)])
    nonzero = np.concatenate([[0], np.cumsum(h > 0)])
    cum_hlogh = np.concatenate([[0.0], np.cumsum(_xlogx(h))])

    i = np.arange(quantized_bins, n + 1)
    groups = np.arange(quantized_bins + 1)
    bounds = -((-groups[None, :] * i[:, None]) // quantized_bins)  # ceil(g · i / Q)
    sums = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]  # S_g: counts of h in group g of the first i bins
    counts = nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]  # Z_g: non-zero bins of h in group g
    outliers = total - cum[i]
    last = h[i - 1]
    counts[:, -1] += ((last == 0) & (outliers > 0)).astype(counts.dtype)  # p_{i-1} is non-zero then
    p_mass = sums.copy()
    p_mass[:, -1] += outliers
    p_last = last + outliers
    p_log_p = cum_hlogh[i - 1] + _xlogx(p_last)
    with np.errstate(divide="ignore", invalid="ignore"):
        q_log = np.log(sums / np.maximum(counts, 1)) - np.log(cum[i])[:, None]
        cross = np.where(p_mass > 0, p_mass * q_log, 0.0)
        cross = np.where((p_mass > 0) & (sums == 0), -np.inf, cross).sum(axis=1)
    divergence = (p_log_p - cross) / total  # KL(P || Q) + log(total), a constant: same minimum
    # Ties (equal up to rounding) go to the fewest bins, the finest resolution.
    best = divergence.min()
    return int(i[np.argmax(divergence <= best + _KL_TIE)])


class EntropyObserver(HistogramObserver):
    """TensorRT's entropy calibration: the clipping threshold whose INT8 histogram loses least.

    The magnitudes ``|x|`` are histogrammed exactly from the streaming histogram (negative bin ``k``
    is magnitude bin ``-k - 1``), coarsened by powers of two to at most ``fine_bins`` (2048) bins of
    width ``w``; ``kl_threshold_bins`` picks the number of kept bins ``i`` against
    ``quantized_bins`` (128) levels, and ``t = i · w``. The range is ``(max(min, -t), min(max, t))``,
    or ``(-t, t)`` with ``symmetric=True``.
    """

    name: ClassVar[str] = "entropy"

    def __init__(
        self,
        quantized_bins: int = Entropy.quantized_bins,
        fine_bins: int = Entropy.fine_bins,
        symmetric: bool = Entropy.symmetric,
        bins: int = Entropy.bins,
    ):
        if not 2 <= quantized_bins <= fine_bins:
            raise UserError(f"quantized_bins must be in [2, fine_bins={fine_bins}], not {quantized_bins}")
        super().__init__(bins)
        self.quantized_bins, self.fine_bins, self.symmetric = int(quantized_bins), int(fine_bins), bool(symmetric)

    def settings(self) -> dict[str, Any]:
        return {
            "quantized_bins": self.quantized_bins,
            "fine_bins": self.fine_bins,
            "symmetric": self.symmetric,
            **super().settings(),
        }

    def _range(self) -> tuple[float, float]:
        t = self._threshold()
        return -t, t  # compute_range clips each end to the observed range

    def _threshold(self) -> float:
        counts, width = self.histogram.folded(self.fine_bins)
        return kl_threshold_bins(counts, self.quantized_bins) * width


@dataclasses.dataclass(frozen=True)
class _Grid:
    """A uniform integer grid: ``levels - 1`` steps across the range, symmetric or not."""

    levels: int
    symmetric: bool


# Target formats of MSE calibration: uniform integer grids, and the FP8 formats, whose rounding
# noise depends on a value's magnitude, not on one step size (see _float8_rounding_cost).
MSE_FORMATS: dict[str, _Grid | Float8Format] = {
    "uint8": _Grid(256, symmetric=False),
    "int8": _Grid(255, symmetric=True),
    **FLOAT8_FORMATS,
}


def _float8_rounding_cost(centres: np.ndarray, counts: np.ndarray, scale: np.ndarray, fp8: Float8Format) -> np.ndarray:
    """``Σ n · step(c)² / 12`` over the bins with ``|c| <= fmax · s``, for every scale ``s`` of ``scale``.

    ``step(c) = s · 2**(max(floor(log2(|c| / s)), emin) - M)`` is constant on each binade
    ``s·2ʲ <= |c| < s·2ʲ⁺¹`` (and on ``|c| < s·2^(emin+1)``, where the subnormals keep the step of
    ``emin``), so the sum is ``s² / 12 · Σ_j N_j(s) · 4**(j - M)`` with ``N_j`` the count of the
    binade: differences of the cumulative count of the sorted ``|c|`` at ``s·2ʲ``, a
    ``candidates × binades`` array (15 binades for E4M3, 30 for E5M2).
    """
    order = np.argsort(np.abs(centres), kind="stable")
    magnitudes = np.abs(centres)[order]
    cumulative = np.concatenate([np.zeros(1), np.cumsum(counts[order])])
    exponents = np.arange(fp8.min_exponent, fp8.max_exponent + 1)
    edges = scale[:, None] * np.ldexp(1.0, exponents[1:])[None, :]  # s·2ʲ, j = emin + 1 … emax
    below = cumulative[np.searchsorted(magnitudes, edges)]  # counts with |c| < s·2ʲ
    inside = cumulative[np.searchsorted(magnitudes, fp8.max * scale, side="right")]  # |c| <= fmax·s
    bounds = np.concatenate([np.zeros((scale.size, 1)), below, inside[:, None]], axis=1)
    per_binade = np.diff(bounds, axis=1)  # N_j for j = emin … emax
    return scale**2 / 12.0 * (per_binade @ np.ldexp(1.0, 2 * (exponents - fp8.mantissa_bits)))


class MSEObserver(HistogramObserver):
    """The clipping range that minimizes the expected squared quantization error, from the histogram.

    Candidates shrink the observed range by ``α = k / steps`` (``k = 1 … steps``): ``[α·a, α·b]``
    with ``a = min(lo, 0)``, ``b = max(hi, 0)`` for UINT8 (asymmetric, step ``s = α(b - a) / 255``),
    ``[-α·m, α·m]`` with ``m = max|x|`` for INT8 (symmetric, ``s = α·m / 127``). A value ``x``
    (each bin counted at its centre, weighted by its count) costs ``s² / 12`` inside the range
    (uniform rounding noise) and ``d²`` outside, ``d`` its distance to the range (clipping):
    ``E(α) = Σ_bins n · (d² if clipped else s² / 12)``; the ``α`` with the smallest ``E`` wins.

    FP8 (``float8e4m3fn``, ``float8e5m2``) is symmetric, ``[-α·m, α·m]`` with the scale
    ``s = α·m / fmax`` (448, 57344), and its grid is not uniform: a value inside costs
    ``step(x)² / 12`` with ``step(x) = s · 2**(max(floor(log2(|x| / s)), emin) - M)`` (``emin``
    -6 and ``M`` 3 for E4M3, -14 and 2 for E5M2; the subnormals below ``s·2^emin`` keep the step
    of ``emin``), so ``E(α) = Σ_bins n · (d² if clipped else step(c)² / 12)``. The step grows with
    ``|x|``: a wide range costs the small values little, and FP8 clips less than INT8 does.
    """

    name: ClassVar[str] = "mse"

    def __init__(self, dtype: str = MSE.dtype, steps: int = MSE.steps, bins: int = MSE.bins):
        if dtype not in MSE_FORMATS:
            raise UserError(f"MSE calibration supports {', '.join(MSE_FORMATS)}, not {dtype!r}")
        super().__init__(bins)
        self.dtype, self.steps = dtype, int(steps)

    def settings(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "steps": self.steps, **super().settings()}

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every candidate range and its expected squared error: ``(lo[k], hi[k], E[k])`` for
        ``α = (k + 1) / steps``, as arrays (``compute_range`` takes the smallest ``E``)."""
        h, grid = self.histogram, MSE_FORMATS[self.dtype]
        occupied = np.nonzero(h.counts)[0]
        n = h.counts[occupied]
        centres = np.clip((occupied + h.start + 0.5) * h.width, h.lo, h.hi)
        alpha = np.arange(1, self.steps + 1) / self.steps
        if isinstance(grid, Float8Format) or grid.symmetric:
            m = max(abs(h.lo), abs(h.hi))
            lo, hi = -alpha * m, alpha * m
        else:
            lo, hi = alpha * min(h.lo, 0.0), alpha * max(h.hi, 0.0)
        # Prefix sums of n, n·c and n·c² turn each candidate's sums over the clipped bins (below lo,
        # above hi) into differences: Σ n (c - t)² = Σ n c² - 2 t Σ n c + t² Σ n.
        zero = np.zeros(1)
        s0, s1, s2 = (np.concatenate([zero, np.cumsum(n * centres**k)]) for k in (0, 1, 2))
        below = np.searchsorted(centres, lo)  # bins [0, below) have c < lo
        above = np.searchsorted(centres, hi, side="right")  # bins [above, M) have c > hi
        low_cost = s2[below] - 2 * lo * s1[below] + lo**2 * s0[below]
        high_cost = (s2[-1] - s2[above]) - 2 * hi * (s1[-1] - s1[above]) + hi**2 * (s0[-1] - s0[above])
        if isinstance(grid, Float8Format):
            rounding_cost = _float8_rounding_cost(centres, n, hi / grid.max, grid)
        else:
            step = (hi - lo) / (grid.levels - 1)
            rounding_cost = (s0[above] - s0[below]) * step**2 / 12.0
        return lo, hi, low_cost + high_cost + rounding_cost

    def _range(self) -> tuple[float, float]:
        lo, hi, error = self.candidates()
        best = int(np.argmin(error))
        return float(lo[best]), float(hi[best])


OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls
    for cls in (MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, EntropyObserver, MSEObserver)
}


def observer_from_dict(data: dict[str, Any]) -> Observer:
    cls = {c.name: c for c in (*OBSERVERS.values(), PerChannelMinMaxObserver)}[data["observer"]]
    return cls.from_dict(data)
