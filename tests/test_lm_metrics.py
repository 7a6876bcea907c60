"""Language-model metrics against values computed by hand on tiny logits.

Every expected value below is a closed form (ln 2, ln 3 ...); the metrics compute in float64, so
the tolerance is 1e-12 relative: a few float64 operations, far below any real discrepancy.
"""

import math

import numpy as np
import pytest

from qonnx.lm_metrics import kl_divergence, log_softmax, perplexity, top1_agreement

RTOL = 1e-12
LN3 = math.log(3.0)


def test_uniform_logits_give_the_vocabulary_size():
    logits = np.zeros((2, 5, 7), np.float32)
    ids = np.arange(10).reshape(2, 5) % 7
    assert perplexity(logits, ids) == pytest.approx(7.0, rel=RTOL)


def test_perplexity_scores_position_t_against_token_t_plus_1_and_ignores_the_last_position():
    # Position 0 gives token 1 probability 3/4 (logits [0, ln 3]); position 1 gives token 0
    # probability 3/4. The last position predicts beyond the window: its absurd logits must not count.
    # NLL = -ln(3/4) at both scored positions, perplexity = 4/3.
    logits = np.array([[[0.0, LN3], [LN3, 0.0], [-1e6, 1e6]]])  # float64: ln 3 exact to 1e-16
    ids = np.array([[0, 1, 0]])
    assert perplexity(logits, ids) == pytest.approx(4.0 / 3.0, rel=RTOL)


def test_perplexity_averages_the_log_likelihood_over_rows_and_positions():
    # Row 0 scores p = 3/4 (one position), row 1 p = 1/4: exp(-(ln 3/4 + ln 1/4) / 2) = 4 / sqrt(3).
    logits = np.array([[[0.0, LN3], [0.0, 0.0]], [[0.0, LN3], [0.0, 0.0]]])
    ids = np.array([[0, 1], [0, 0]])
    assert perplexity(logits, ids) == pytest.approx(4.0 / math.sqrt(3.0), rel=RTOL)


def test_log_softmax_is_stable_for_large_logits():
    # exp(1000) overflows float64; shifting by the maximum does not. Same answer as the small case.
    logits = np.array([[[1000.0, 1000.0 + LN3], [1000.0 + LN3, 1000.0], [0.0, 0.0]]])
    assert perplexity(logits, np.array([[0, 1, 0]])) == pytest.approx(4.0 / 3.0, rel=RTOL)
    np.testing.assert_allclose(np.exp(log_softmax(np.array([1e4, 1e4 + LN3]))), [0.25, 0.75], rtol=RTOL)


def test_top1_agreement_counts_matching_argmaxes_over_every_position():
    reference = np.array([[[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]], [[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]]])
    test = np.array([[[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]], [[0.0, 0.0, 1.0], [9.0, 0.0, 0.0]]])
    assert top1_agreement(reference, test) == 0.75  # 3 of 4 positions: only (0, 1) differs
    assert top1_agreement(reference, reference) == 1.0


def test_kl_divergence_by_hand():
    # P_ref = softmax([0, ln 3]) = [1/4, 3/4], P_test = [1/2, 1/2]:
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2 = 0.130812...
    reference = np.array([[[0.0, LN3], [5.0, 5.0]]])
    test = np.array([[[0.0, 0.0], [-2.0, -2.0]]])  # second position: both uniform, KL 0
    expected = (0.75 * LN3 - math.log(2.0)) / 2  # mean over the two positions
    assert kl_divergence(reference, test) == pytest.approx(expected, rel=RTOL)


def test_kl_divergence_is_zero_for_logits_that_differ_by_a_constant_and_not_symmetric():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, 3, 11))
    assert kl_divergence(reference, reference + 4.0) == pytest.approx(0.0, abs=1e-12)
    test = rng.standard_normal((2, 3, 11))
    assert kl_divergence(reference, test) > 0
    assert kl_divergence(reference, test) != pytest.approx(kl_divergence(test, reference), rel=1e-3)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        top1_agreement(np.zeros((1, 2, 3)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="does not match"):
        perplexity(np.zeros((1, 3, 4)), np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="at least two positions"):
        perplexity(np.zeros((1, 1, 4)), np.zeros((1, 1), np.int64))
    with pytest.raises(ValueError, match="batch, positions, vocabulary"):
        kl_divergence(np.zeros((2, 3)), np.zeros((2, 3)))
