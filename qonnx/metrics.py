"""Fidelity metrics of a quantized model's outputs against the FP32 reference.

``sqnr_db = 10 * log10(sum(ref²) / sum((ref - test)²))``: 20 dB means the error carries 1% of the
signal's power; every 10 dB is another factor of ten. ``cosine = <ref, test> / (|ref| |test|)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sqnr_db", "cosine", "top1_agreement", "Accumulator"]

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
