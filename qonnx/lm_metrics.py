"""Language-model metrics on logits: perplexity, top-1 agreement, KL divergence.

All three read logits ``[B, T, V]`` (batch, positions, vocabulary) as numpy arrays and compute in
float64, so that a float32 model's logits lose nothing to the metric itself. The softmax is taken
stably: ``log_softmax(z)_v = (z_v - m) - log(sum_u exp(z_u - m))`` with ``m = max_u z_u``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "perplexity", "top1_agreement", "kl_divergence", "PooledLanguageModelMetrics"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log p_v = (z_v - m) - log(sum_u exp(z_u - m))``, ``m = max_u z_u``, over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _check_logits(logits: np.ndarray, name: str) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"{name} must be [batch, positions, vocabulary], got shape {list(logits.shape)}")
    return logits


def _check_pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, test = _check_logits(reference, "reference_logits"), _check_logits(test, "test_logits")
    if reference.shape != test.shape:
        raise ValueError(f"logits differ in shape: reference {list(reference.shape)}, test {list(test.shape)}")
    return reference, test


def perplexity(logits: np.ndarray, input_ids: np.ndarray) -> float:
    """Perplexity of ``input_ids [B, T]`` under next-token predictions ``logits [B, T, V]``.

    Position ``t`` predicts token ``t + 1``, so positions ``0 .. T-2`` are scored against tokens
    ``1 .. T-1`` (the last position predicts beyond the window and is not scored)::

        NLL = -1 / (B (T-1)) * sum_b sum_{t=0}^{T-2} log_softmax(logits[b, t])[input_ids[b, t+1]]
        perplexity = exp(NLL)

    Uniform logits over ``V`` tokens give perplexity ``V``; a perfect prediction gives 1. Position 0
    gives token 1 probability 3/4 and the last position is not scored, so here perplexity is 4/3:

    >>> import math
    >>> logits = np.array([[[0.0, math.log(3)], [9.0, -9.0]]])
    >>> round(perplexity(logits, np.array([[0, 1]])), 6)
    1.333333
    """
    logits = _check_logits(logits, "logits")
    ids = np.asarray(input_ids)
    if ids.shape != logits.shape[:2]:
        raise ValueError(f"input_ids shape {list(ids.shape)} does not match logits {list(logits.shape)}")
    if ids.shape[1] < 2:
        raise ValueError("perplexity needs at least two positions: position t predicts token t + 1")
    return float(np.exp(_nll_sum(log_softmax(logits[:, :-1]), ids[:, 1:]) / ids[:, 1:].size))


def top1_agreement(reference_logits: np.ndarray, test_logits: np.ndarray) -> float:
    """Share of positions ``(b, t)`` where ``argmax_v test[b, t, v] == argmax_v reference[b, t, v]``.

    Every position counts, the last included: this compares two models' predictions, not text.
    """
    reference, test = _check_pair(reference_logits, test_logits)
    return float(np.mean(reference.argmax(axis=-1) == test.argmax(axis=-1)))


def kl_divergence(reference_logits: np.ndarray, test_logits: np.ndarray) -> float:
    """Mean over positions of ``KL(P_ref || P_test)`` in nats, ``P = softmax(logits)`` per position::

        KL = 1 / (B T) * sum_{b, t} sum_v P_ref[b, t, v] * (log P_ref[b, t, v] - log P_test[b, t, v])

    Zero when the two distributions agree; never negative (up to float64 rounding). P_ref = [1/4, 3/4]
    against a uniform P_test gives ``3/4 ln 3 - ln 2``:

    >>> import math
    >>> round(kl_divergence(np.array([[[0.0, math.log(3)]]]), np.zeros((1, 1, 2))), 6)
    0.130812
    """
    reference, test = _check_pair(reference_logits, test_logits)
    return _kl_sum(log_softmax(reference), log_softmax(test)) / (reference.shape[0] * reference.shape[1])


def _nll_sum(log_p: np.ndarray, targets: np.ndarray) -> float:
    """``-sum log p[b, t, targets[b, t]]``: the negative log-likelihood of the tokens ``targets``."""
    return -float(np.take_along_axis(log_p, targets[..., None].astype(np.int64), axis=-1).sum())


def _kl_sum(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """``sum over positions of sum_v P (log P - log Q)``."""
    return float((np.exp(log_p) * (log_p - log_q)).sum())


CHUNK_VALUES = 1 << 21  # logits per float64 chunk of PooledLanguageModelMetrics (16 MiB)


class PooledLanguageModelMetrics:
    """Perplexity of both sides and KL between them, pooled over many samples of logits ``[B, T, V]``
    (a quantize run's held-out windows): the sums behind ``perplexity`` and ``kl_divergence`` above,
    kept across samples and computed a few positions at a time (one window of 512 positions of
    49152-token logits is 200 MB in float64)::

        perplexity(side) = exp(sum of -log P_side(token t + 1 | position t) / positions scored)
        kl_divergence = sum over positions of KL(P_ref || P_test) / positions
    """

    def __init__(self):
        self.nll = {"reference": 0.0, "test": 0.0}
        self.scored = 0
        self.kl_sum = 0.0
        self.positions = 0

    def update(self, reference_logits: np.ndarray, test_logits: np.ndarray, input_ids: np.ndarray) -> None:
        reference, test = _check_pair(reference_logits, test_logits)
        ids = np.asarray(input_ids)
        if ids.shape != reference.shape[:2]:
            raise ValueError(f"input_ids shape {list(ids.shape)} does not match logits {list(reference.shape)}")
        n, t, v = reference.shape
        step = max(1, CHUNK_VALUES // (v * n))
        for start in range(0, t, step):
            stop = min(start + step, t)
            log_p, log_q = log_softmax(reference[:, start:stop]), log_softmax(test[:, start:stop])
            self.kl_sum += _kl_sum(log_p, log_q)
            self.positions += n * (stop - start)
            scored = min(stop, t - 1) - start  # position t predicts token t + 1: the last one scores nothing
            if scored > 0:
                targets = ids[:, start + 1 : start + 1 + scored]
                self.nll["reference"] += _nll_sum(log_p[:, :scored], targets)
                self.nll["test"] += _nll_sum(log_q[:, :scored], targets)
                self.scored += n * scored

    def perplexity(self, side: str = "test") -> float | None:
        """Of ``side`` ("reference" or "test"); None before a position was scored."""
        return float(np.exp(self.nll[side] / self.scored)) if self.scored else None

    def kl_divergence(self) -> float | None:
        return self.kl_sum / self.positions if self.positions else None
