"""Observers: streaming statistics of a tensor, folded in batch by batch.

Contract (after torch.ao's observers): ``update(batch)`` folds a batch in; ``merge(other)`` combines
two observers of the same tensor as if one had seen both streams; ``compute_range()`` answers
``(lo, hi)``; ``to_dict()`` / ``from_dict()`` round-trip. Memory does not grow with the number of
samples. Non-finite values (NaN, ±inf) and the ±3.4e38 fill values of attention masks never reach
a range: they are counted in ``nonfinite`` and reported.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

__all__ = ["Observer", "MinMaxObserver", "OBSERVERS", "FILL_LIMIT"]

# Masks fill with float32's lowest value or -1e30-ish constants; no real activation gets near.
FILL_LIMIT = np.float32(1e30)


def finite_part(batch: np.ndarray) -> tuple[np.ndarray, int]:
    """The values of ``batch`` that are finite and not fill values, and how many were dropped."""
    flat = np.asarray(batch, dtype=np.float32).reshape(-1)
    keep = np.isfinite(flat) & (np.abs(flat) < FILL_LIMIT)
    dropped = int(flat.size - np.count_nonzero(keep))
    return (flat if dropped == 0 else flat[keep]), dropped


class Observer:
    name: ClassVar[str] = ""

    def update(self, batch: np.ndarray) -> None:
        raise NotImplementedError

    def merge(self, other: Observer) -> None:
        raise NotImplementedError

    def compute_range(self) -> tuple[float, float]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


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
        values, dropped = finite_part(batch)
        self.nonfinite += dropped
        if values.size:
            self.lo = min(self.lo, float(values.min()))
            self.hi = max(self.hi, float(values.max()))
            self.count += int(values.size)

    def merge(self, other: MinMaxObserver) -> None:
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.count += other.count
        self.nonfinite += other.nonfinite

    def compute_range(self) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError("no finite values observed")
        return self.lo, self.hi

    def to_dict(self) -> dict[str, Any]:
        return {"observer": self.name, "lo": self.lo, "hi": self.hi, "count": self.count, "nonfinite": self.nonfinite}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinMaxObserver:
        return cls(float(data["lo"]), float(data["hi"]), int(data["count"]), int(data["nonfinite"]))


OBSERVERS: dict[str, type[Observer]] = {MinMaxObserver.name: MinMaxObserver}
