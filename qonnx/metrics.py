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
from qonnx.lm_metrics import PooledLanguageModelMetrics

__all__ = ["sqnr_db", "cosine", "top1_agreement", "Accumulator", "TaskAccumulator", "Comparison", "compare", "is_logits"]

Feed = Mapping[str, np.ndarray]
Outputs = Mapping[str, np.ndarray]

_MAX_DB = 200.0


def _flat(array: np.ndarray) -> np.ndarray:
    """``array`` as one float64 vector (integer outputs would overflow their own type in the sums)."""
    return np.asarray(array, np.float64).ravel()


def _numeric(array) -> bool:
    """Whether ``array`` holds numbers (or booleans), as opposed to strings or other objects."""
    return isinstance(array, np.ndarray) and (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_)


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


def is_logits(output_name: str) -> bool:
    """Whether an output is a language model's next-token logits, by the name exporters give it."""
    return "logits" in output_name.lower()


class TaskAccumulator:
    """Task metrics of one output over many samples, where its shape says what it holds.

    ``top1``: rows of a 2-D output ``[N, C]`` with ``C >= 2`` (class scores) whose arg-max agrees.
    ``pooled_cosine``: rows of a 3-D output ``[N, T, H]`` (token embeddings) mean-pooled over ``T``,
    then the cosine of each pooled row, averaged over rows. ``next_token_top1``: positions of a 3-D
    output ``[N, T, V]`` (a language model's logits) whose arg-max over ``V`` agrees. Given the
    ``tokens`` ``[N, T]`` the logits were computed from, also the ``perplexity`` of each side (position
    ``t`` scored on token ``t + 1``) and the mean ``kl_divergence`` ``KL(P_ref || P_test)`` over
    positions (``qonnx.lm_metrics``'s formulas, pooled over samples). None where the shape does not apply.
    """

    def __init__(self):
        self.rows = self.agree = 0
        self.pooled_rows = 0
        self.pooled_sum = 0.0
        self.positions = self.positions_agree = 0
        self.language: PooledLanguageModelMetrics | None = None

    def update(self, reference: np.ndarray, test: np.ndarray, tokens: np.ndarray | None = None) -> None:
        ref, tst = np.asarray(reference), np.asarray(test)  # argmax and mean need no float64; cosine converts
        if tokens is not None and ref.ndim == 3 and np.shape(tokens) == ref.shape[:2]:
            self.language = self.language or PooledLanguageModelMetrics()
            self.language.update(ref, tst, np.asarray(tokens))
        if ref.ndim == 2 and ref.shape[1] >= 2:
            self.rows += ref.shape[0]
            self.agree += int(np.sum(ref.argmax(axis=1) == tst.argmax(axis=1)))
        if ref.ndim == 3:
            for a, b in zip(ref.mean(axis=1), tst.mean(axis=1)):
                self.pooled_sum += cosine(a, b)
                self.pooled_rows += 1
            self.positions += ref.shape[0] * ref.shape[1]
            self.positions_agree += int(np.sum(ref.argmax(axis=2) == tst.argmax(axis=2)))

    def top1(self) -> float | None:
        return self.agree / self.rows if self.rows else None

    def pooled_cosine(self) -> float | None:
        return self.pooled_sum / self.pooled_rows if self.pooled_rows else None

    def next_token_top1(self) -> float | None:
        return self.positions_agree / self.positions if self.positions else None

    def perplexity(self, side: str = "test") -> float | None:
        return self.language.perplexity(side) if self.language is not None else None

    def kl_divergence(self) -> float | None:
        return self.language.kl_divergence() if self.language is not None else None


@dataclasses.dataclass
class Comparison:
    """Pooled SQNR and cosine of every output of a test model against a reference, over ``samples``,
    and the task metrics its shape allows (``tasks``)."""

    samples: int
    outputs: dict[str, Accumulator]
    tasks: dict[str, TaskAccumulator] = dataclasses.field(default_factory=dict)

    @property
    def worst_sqnr_db(self) -> float:
        """The lowest SQNR over the outputs (+200 dB when there are none to compare)."""
        return min((a.sqnr_db() for a in self.outputs.values()), default=_MAX_DB)

    def sqnr_db(self, digits: int = 3) -> dict[str, float]:
        return {name: round(a.sqnr_db(), digits) for name, a in self.outputs.items()}

    def cosine(self, digits: int = 6) -> dict[str, float]:
        return {name: round(a.cosine(), digits) for name, a in self.outputs.items()}

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{output: {"sqnr_db", "cosine"}}`` as the report writes it (3 and 6 decimals), with
        ``top1_agreement`` / ``pooled_cosine`` (6 decimals) for the outputs whose shape has them."""
        result = {}
        for name, a in self.outputs.items():
            entry = {"sqnr_db": round(a.sqnr_db(), 3), "cosine": round(a.cosine(), 6)}
            task = self.tasks.get(name)
            if task is not None and (top1 := task.top1()) is not None:
                entry["top1_agreement"] = round(top1, 6)
            if task is not None and (pooled := task.pooled_cosine()) is not None:
                entry["pooled_cosine"] = round(pooled, 6)
            if task is not None and is_logits(name) and (next_token := task.next_token_top1()) is not None:
                entry["next_token_agreement"] = round(next_token, 6)
            if task is not None and is_logits(name) and (perplexity := task.perplexity()) is not None:
                entry["perplexity"] = round(perplexity, 4)
                entry["reference_perplexity"] = round(task.perplexity("reference"), 4)
                entry["kl_divergence"] = round(task.kl_divergence(), 6)
            result[name] = entry
        return result


def _tokens(feed: Feed, logits: np.ndarray) -> np.ndarray | None:
    """The one integer input of ``feed`` shaped like the first two axes of ``logits`` (the token
    ids they predict from), or None."""
    if np.ndim(logits) != 3:
        return None
    found = [a for a in feed.values() if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.integer) and a.shape == np.shape(logits)[:2]]
    return found[0] if len(found) == 1 else None


def compare(reference: Runner | Sequence[Outputs], test: Runner | Sequence[Outputs], data: Iterable[Feed], *, what: str = "sample") -> Comparison:
    """Run ``data`` through ``reference`` and ``test`` and pool the error of every reference output
    that holds numbers (strings have no SQNR: they are left out).

    Either side may be a runner or the outputs it gave for ``data``, in order (outputs computed once
    and compared with many variants). A runner that refuses a feed (UserError) is named with the
    feed's index: "``what`` 3: ...".
    """
    accumulators: dict[str, Accumulator] = {}
    tasks: dict[str, TaskAccumulator] = {}
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
            if not _numeric(value):
                continue
            accumulators.setdefault(name, Accumulator()).update(value, got[name])
            tasks.setdefault(name, TaskAccumulator()).update(value, got[name], _tokens(feed, value) if is_logits(name) else None)
        samples += 1
    return Comparison(samples, accumulators, tasks)
