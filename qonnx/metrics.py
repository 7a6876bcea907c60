"""Fidelity metrics of a quantized model's outputs against the FP32 reference.

``sqnr_db = 10 * log10(sum(ref²) / sum((ref - test)²))``: 20 dB means the error carries 1% of the
signal's power; every 10 dB is another factor of ten. ``cosine = <ref, test> / (|ref| |test|)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from qonnx.errors import UserError

__all__ = ["sqnr_db", "cosine", "top1_agreement", "Accumulator", "Comparison", "compare"]

Feed = Mapping[str, np.ndarray]
Outputs = Mapping[str, np.ndarray]

_MAX_DB = 200.0


def _flat(array: np.ndarray) -> np.ndarray:
    """``array`` as one float64 vector (integer outputs would overflow their own type in the sums)."""
    return np.asarray(array, np.float64).ravel()


def _db(signal: float, noise: float) -> float:
    """``10 · log10(signal / noise)``, at most 200 dB; no noise is +200 dB, noise alone -200 dB."""
    if noise == 0:
        return _MAX_DB
    if signal == 0:
        return -_MAX_DB
    return float(min(10 * np.log10(signal / noise), _MAX_DB))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = _flat(reference)
    err = ref - _flat(test)
    return _db(float(np.dot(ref, ref)), float(np.dot(err, err)))


def cosine(reference: np.ndarray, test: np.ndarray) -> float:
    a, b = _flat(reference), _flat(test)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom else float(np.array_equal(a, b))


def top1_agreement(reference: np.ndarray, test: np.ndarray) -> float:
    """Share of rows (samples) whose arg-max over the last axis is the same; any leading shape."""
    return float(np.mean(np.asarray(reference).argmax(axis=-1) == np.asarray(test).argmax(axis=-1)))


class Accumulator:
    """SQNR and cosine over many samples, pooled (signal and noise energies summed first)."""

    def __init__(self):
        self.signal = self.noise = self.dot = self.test_sq = 0.0
        self.samples = 0

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        ref, tst = _flat(reference), _flat(test)
        err = ref - tst
        self.signal += float(np.dot(ref, ref))
        self.noise += float(np.dot(err, err))
        self.dot += float(np.dot(ref, tst))
        self.test_sq += float(np.dot(tst, tst))
        self.samples += 1

    def sqnr_db(self) -> float:
        return _db(self.signal, self.noise)

    def cosine(self) -> float:
        denom = np.sqrt(self.signal * self.test_sq)
        if denom:
            return float(self.dot / denom)
        return float(self.signal == self.test_sq == 0)  # as ``cosine``: 1 only when both are zero


class Runner(Protocol):
    """Anything that maps a feed to named outputs (a ``qonnx.runtime.Session``)."""

    def run(self, feed: Feed) -> Outputs: ...


@dataclasses.dataclass
class Comparison:
    """Pooled SQNR and cosine of every output of a test model against a reference, over ``samples``."""

    samples: int
    outputs: dict[str, Accumulator]

    @property
    def worst_sqnr_db(self) -> float:
        """The lowest SQNR over the outputs (+200 dB when there are none to compare)."""
        return min((a.sqnr_db() for a in self.outputs.values()), default=_MAX_DB)

    def sqnr_db(self, digits: int = 3) -> dict[str, float]:
        return {name: round(a.sqnr_db(), digits) for name, a in self.outputs.items()}

    def cosine(self, digits: int = 6) -> dict[str, float]:
        return {name: round(a.cosine(), digits) for name, a in self.outputs.items()}

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{output: {"sqnr_db", "cosine"}}`` as the report writes it (3 and 6 decimals)."""
        return {name: {"sqnr_db": round(a.sqnr_db(), 3), "cosine": round(a.cosine(), 6)} for name, a in self.outputs.items()}


def compare(reference: Runner | Sequence[Outputs], test: Runner | Sequence[Outputs], data: Iterable[Feed], *, what: str = "sample") -> Comparison:
    """Run ``data`` through ``reference`` and ``test`` and pool the error of every reference output.

    Either side may be a runner or the outputs it gave for ``data``, in order (outputs computed once
    and compared with many variants). A runner that refuses a feed (UserError) is named with the
    feed's index: "``what`` 3: ...".
    """
    accumulators: dict[str, Accumulator] = {}
    samples = 0

    def outputs(side: Runner | Sequence[Outputs], index: int, feed: Feed) -> Outputs:
        if isinstance(side, Sequence):
            return side[index]
        try:
            return side.run(feed)
        except UserError as exc:
            raise UserError(f"{what} {index}: {exc}") from exc

    for index, feed in enumerate(data):
        expected, got = outputs(reference, index, feed), outputs(test, index, feed)
        for name, value in expected.items():
            accumulators.setdefault(name, Accumulator()).update(value, got[name])
        samples += 1
    return Comparison(samples, accumulators)
