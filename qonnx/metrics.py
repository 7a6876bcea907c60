"""Fidelity metrics of a quantized model's outputs against the FP32 reference.

``sqnr_db = 10 * log10(sum(ref²) / sum((ref - test)²))``: 20 dB means the error carries 1% of the
signal's power; every 10 dB is another factor of ten. ``cosine = <ref, test> / (|ref| |test|)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sqnr_db", "cosine", "top1_agreement", "Accumulator"]

_MAX_DB = 200.0


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(reference, np.float64).ravel()
    err = ref - np.asarray(test, np.float64).ravel()
    signal, noise = float(np.dot(ref, ref)), float(np.dot(err, err))
    if noise == 0:
        return _MAX_DB
    if signal == 0:
        return -_MAX_DB
    return float(min(10 * np.log10(signal / noise), _MAX_DB))


def cosine(reference: np.ndarray, test: np.ndarray) -> float:
    a = np.asarray(reference, np.float64).ravel()
    b = np.asarray(test, np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom else float(np.array_equal(a, b))


def top1_agreement(reference: np.ndarray, test: np.ndarray) -> float:
    """Share of rows (samples) whose arg-max over the last axis is the same."""
    ref = np.asarray(reference).reshape(-1, np.asarray(reference).shape[-1])
    tst = np.asarray(test).reshape(-1, np.asarray(test).shape[-1])
    return float(np.mean(ref.argmax(-1) == tst.argmax(-1)))


class Accumulator:
    """SQNR and cosine over many samples, pooled (signal and noise energies summed first)."""

    def __init__(self):
        self.signal = self.noise = self.dot = self.test_sq = 0.0
        self.samples = 0

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(reference, np.float64).ravel()
        tst = np.asarray(test, np.float64).ravel()
        err = ref - tst
        self.signal += float(np.dot(ref, ref))
        self.noise += float(np.dot(err, err))
        self.dot += float(np.dot(ref, tst))
        self.test_sq += float(np.dot(tst, tst))
        self.samples += 1

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return _MAX_DB
        if self.signal == 0:
            return -_MAX_DB
        return float(min(10 * np.log10(self.signal / self.noise), _MAX_DB))

    def cosine(self) -> float:
        denom = np.sqrt(self.signal * self.test_sq)
        if denom:
            return float(self.dot / denom)
        return float(self.signal == self.test_sq == 0)  # as ``cosine``: 1 only when both are zero
