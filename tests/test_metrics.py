"""Fidelity metrics against values worked out by hand (the arithmetic is in each test).

Tolerances: the reference values are written with 5-6 significant digits, so ``rel=1e-5``
(``abs`` where the value is 0); everything else the metrics compute in float64 is far below that.
A mistake in a formula (20·log10 instead of 10·log10, a missing square root) is off by a factor
or more, far outside the tolerance.
"""

import math

import numpy as np
import pytest

from qonnx.errors import UserError
from qonnx.metrics import Accumulator, compare, cosine, sqnr_db, top1_agreement

REL = 1e-5  # the hand-computed references below carry 6 significant digits


# ----------------------------------------------------------------------------------------------
# SQNR = 10 · log10(Σ ref² / Σ (ref - test)²)


def test_sqnr_of_a_hand_computed_pair():
    # ref = [3, 4], test = [3, 3]: signal 3² + 4² = 25, noise 0² + 1² = 1, 10·log10(25) = 13.9794 dB
    # (20·log10(25) = 27.96 dB: a doubled formula fails here).
    assert sqnr_db([3.0, 4.0], [3.0, 3.0]) == pytest.approx(13.9794, rel=REL)


def test_sqnr_of_one_percent_noise_power_is_20_db():
    # ref = [10, 0], test = [9, 0]: signal 100, noise 1, 10·log10(100) = 20 dB exactly.
    assert sqnr_db(np.array([10.0, 0.0]), np.array([9.0, 0.0])) == pytest.approx(20.0, rel=1e-12)


def test_sqnr_below_zero_when_the_noise_is_larger_than_the_signal():
    # ref = [1, 1], test = [-1, -1]: signal 2, noise 2² + 2² = 8, 10·log10(2 / 8) = -6.0206 dB.
    assert sqnr_db([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-6.0206, rel=REL)


def test_sqnr_pools_every_element_of_any_shape():
    # The same four numbers as a 2x2 and as a flat array: signal 1 + 4 + 9 + 16 = 30,
    # noise 0.5² · 2 = 0.5, 10·log10(60) = 17.7815 dB.
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    test = np.array([[1.5, 2.0], [3.0, 3.5]])
    assert sqnr_db(ref, test) == pytest.approx(17.7815, rel=REL)
    assert sqnr_db(ref.ravel(), test.T.T.ravel()) == pytest.approx(17.7815, rel=REL)


def test_sqnr_of_integer_tensors_does_not_overflow():
    # int8 inputs: 100² would overflow int8 arithmetic; in float64, signal 100² · 2 = 20000,
    # noise 10² = 100, 10·log10(200) = 23.0103 dB.
    ref = np.array([100, -100], np.int8)
    test = np.array([90, -100], np.int8)
    assert sqnr_db(ref, test) == pytest.approx(23.0103, rel=REL)


def test_sqnr_edge_cases():
    assert sqnr_db([1.0, -2.0], [1.0, -2.0]) == 200.0  # no noise at all: the 200 dB cap
    assert sqnr_db([0.0, 0.0], [0.0, 0.0]) == 200.0  # both zero: nothing was lost
    assert sqnr_db([0.0, 0.0], [1.0, 0.0]) == -200.0  # noise without a signal: the floor
    # Signal 1, noise (1e-11)²: 10·log10(1e22) = 220 dB, capped at 200.
    assert sqnr_db([1.0], [1.0 + 1e-11]) == 200.0
    # Just under the cap it is not capped: noise (1e-9)² → 10·log10(1e18) = 180 dB; the float64
    # difference 1 - (1 - 1e-9) is 1e-9 to 8 digits, so 1e-6 dB.
    assert sqnr_db([1.0], [1.0 - 1e-9]) == pytest.approx(180.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# cosine = <ref, test> / (|ref| |test|)


def test_cosine_of_hand_computed_pairs():
    # [3, 4]·[4, 3] = 24, |a| = |b| = 5: 24 / 25 = 0.96
    assert cosine([3.0, 4.0], [4.0, 3.0]) == pytest.approx(0.96, rel=1e-12)
    # [1, 0]·[1, 1] = 1, |a| = 1, |b| = √2: 0.707107
    assert cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(0.707107, rel=REL)
    # Opposite directions: -1; scale does not matter: [1, 2] against [-2, -4]
    assert cosine([1.0, 2.0], [-2.0, -4.0]) == pytest.approx(-1.0, rel=1e-12)
    # A 2x2 against itself scaled by 3: 1 (the shape is flattened first)
    assert cosine(np.array([[1.0, -2.0], [0.5, 4.0]]), 3 * np.array([[1.0, -2.0], [0.5, 4.0]])) == pytest.approx(1.0, rel=1e-12)


def test_cosine_of_integer_tensors_does_not_overflow():
    # int8 [100, 100]·[100, 0] = 10000, |a| = 100√2, |b| = 100: 1/√2 = 0.707107
    assert cosine(np.array([100, 100], np.int8), np.array([100, 0], np.int8)) == pytest.approx(0.707107, rel=REL)


def test_cosine_of_zero_vectors():
    assert cosine([0.0, 0.0], [0.0, 0.0]) == 1.0  # both zero: identical
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0  # one zero: no direction in common
    assert cosine([1.0, 0.0], [0.0, 0.0]) == 0.0


# ----------------------------------------------------------------------------------------------
# top-1 agreement: share of rows whose arg-max over the last axis is the same


def test_top1_agreement_counts_rows():
    ref = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    test = np.array([[0.2, 0.6, 0.2], [0.3, 0.6, 0.1], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    # arg-max per row: ref 1, 0, 2, 2; test 1, 1, 2, 0: rows 0 and 2 agree, 2 of 4.
    assert top1_agreement(ref, test) == 0.5
    # The same rows as a [2, 2, 3] batch: still 4 rows over the last axis.
    assert top1_agreement(ref.reshape(2, 2, 3), test.reshape(2, 2, 3)) == 0.5
    # The same twelve numbers as three rows of four: ref rows [.1 .7 .2 .5], [.4 .1 .2 .2],
    # [.6 .3 .3 .4] → 1, 0, 0; test rows [.2 .6 .2 .3], [.6 .1 .1 .2], [.7 .5 .3 .2] → 1, 0, 0.
    assert top1_agreement(ref.reshape(3, 4), test.reshape(3, 4)) == 1.0


def test_top1_agreement_of_one_sample():
    assert top1_agreement(np.array([0.1, 0.9]), np.array([0.8, 0.2])) == 0.0
    assert top1_agreement(np.array([0.1, 0.9]), np.array([0.3, 0.7])) == 1.0


# ----------------------------------------------------------------------------------------------
# Accumulator: energies summed over samples first, then one ratio


def test_pooled_sqnr_and_cosine_are_not_means_of_per_sample_values():
    acc = Accumulator()
    acc.update(np.array([3.0, 4.0]), np.array([3.0, 3.0]))  # signal 25, noise 1: 13.9794 dB
    acc.update(np.array([1.0, 0.0]), np.array([0.0, 0.0]))  # signal 1, noise 1: 0 dB
    assert acc.samples == 2
    # Pooled: 10·log10((25 + 1) / (1 + 1)) = 10·log10(13) = 11.1394 dB;
    # the mean of the per-sample values would be (13.9794 + 0) / 2 = 6.9897 dB.
    assert acc.sqnr_db() == pytest.approx(11.1394, rel=REL)
    per_sample_mean = (sqnr_db([3.0, 4.0], [3.0, 3.0]) + sqnr_db([1.0, 0.0], [0.0, 0.0])) / 2
    assert per_sample_mean == pytest.approx(6.9897, rel=REL)
    # Pooled cosine: <ref, test> = 9 + 12 + 0 = 21, |ref|² = 26, |test|² = 9 + 9 + 0 = 18:
    # 21 / √(26 · 18) = 21 / √468 = 0.970725; per sample 21 / (5 √18) = 0.989949 and 0.
    assert acc.cosine() == pytest.approx(0.970725, rel=REL)
    assert acc.signal == 26.0 and acc.noise == 2.0 and acc.dot == 21.0 and acc.test_sq == 18.0


def test_accumulator_of_one_sample_matches_the_plain_metrics():
    acc = Accumulator()
    acc.update(np.array([[3.0], [4.0]]), np.array([[4.0], [3.0]]))  # shapes are flattened
    # signal 25, noise 1 + 1 = 2: 10·log10(12.5) = 10.9691 dB; cosine 24 / 25 = 0.96
    assert acc.sqnr_db() == pytest.approx(10.9691, rel=REL)
    assert acc.cosine() == pytest.approx(0.96, rel=1e-12)


def test_accumulator_of_integer_tensors_does_not_overflow():
    acc = Accumulator()
    acc.update(np.array([100, -100], np.int8), np.array([90, -100], np.int8))
    # As test_sqnr_of_integer_tensors_does_not_overflow: 23.0103 dB; cosine
    # (9000 + 10000) / (√20000 · √18100) = 19000 / 19026.3 = 0.998618
    assert acc.sqnr_db() == pytest.approx(23.0103, rel=REL)
    assert acc.cosine() == pytest.approx(19000 / math.sqrt(20000 * 18100), rel=1e-12)
    assert acc.cosine() == pytest.approx(0.998618, rel=REL)


def test_accumulator_edge_cases():
    empty = Accumulator()
    assert empty.samples == 0 and empty.signal == empty.noise == empty.dot == empty.test_sq == 0.0
    assert empty.sqnr_db() == 200.0 and empty.cosine() == 1.0  # nothing compared, nothing lost

    exact = Accumulator()
    exact.update(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert exact.sqnr_db() == 200.0 and exact.cosine() == pytest.approx(1.0, rel=1e-12)

    no_signal = Accumulator()
    no_signal.update(np.zeros(2), np.array([0.0, 1.0]))
    assert no_signal.sqnr_db() == -200.0 and no_signal.cosine() == 0.0

    no_test = Accumulator()
    no_test.update(np.array([1.0, 0.0]), np.zeros(2))
    # noise = signal = 1: 0 dB; cosine undefined (|test| = 0): 0, as ``cosine``
    assert no_test.sqnr_db() == pytest.approx(0.0, abs=1e-12) and no_test.cosine() == 0.0

    capped = Accumulator()
    capped.update(np.array([1.0]), np.array([1.0 + 1e-11]))  # 220 dB before the cap
    assert capped.sqnr_db() == 200.0


# ----------------------------------------------------------------------------------------------
# compare: pooled over samples, runners or stored outputs on either side


class _Fixed:
    """A runner that answers each feed's ``i`` with stored outputs, and refuses ``i`` = ``refuse``."""

    def __init__(self, outputs, refuse=None):
        self.outputs, self.refuse = outputs, refuse

    def run(self, feed):
        index = int(feed["i"][0])
        if index == self.refuse:
            raise UserError("onnxruntime failed on this input")
        return self.outputs[index]


_FEEDS = [{"i": np.array([0])}, {"i": np.array([1])}]
_REF = [{"y": np.array([1.0, 2.0]), "z": np.array([1.0])}, {"y": np.array([3.0, 4.0]), "z": np.array([2.0])}]
_TEST = [{"y": np.array([1.0, 2.0]), "z": np.array([1.0])}, {"y": np.array([3.0, 5.0]), "z": np.array([2.5])}]


def test_compare_pools_energies_over_samples_by_hand():
    # y: signal 1+4+9+16 = 30, noise 1: 10·log10(30) = 14.7712 dB; cosine 34 / sqrt(30·39) = 34 / 34.2053 = 0.993999.
    # z: signal 1+4 = 5, noise 0.25: 10·log10(20) = 13.0103 dB, the worst output.
    for reference, test in ((_REF, _TEST), (_Fixed(_REF), _Fixed(_TEST)), (_REF, _Fixed(_TEST))):
        result = compare(reference, test, _FEEDS)
        assert result.samples == 2
        assert result.sqnr_db() == {"y": 14.771, "z": 13.01}
        assert result.cosine()["y"] == 0.993999
        assert result.worst_sqnr_db == pytest.approx(13.0103, abs=1e-4)
        assert result.to_dict()["y"] == {"sqnr_db": 14.771, "cosine": 0.993999}
        assert result.sqnr_db(digits=1) == {"y": 14.8, "z": 13.0}
        assert result.cosine(digits=2)["y"] == 0.99


def test_compare_without_outputs_or_samples():
    assert compare([], [], []).samples == 0
    assert compare([], [], []).worst_sqnr_db == 200.0
    assert compare([{}], [{}], [{"i": np.array([0])}]).samples == 1


def test_compare_leaves_out_outputs_that_hold_strings():
    # A string output (onnxruntime gives object arrays) has no SQNR; the numeric outputs beside it count as before.
    words = np.array(["monday", "tuesday"], dtype=object)
    reference = [{**r, "w": words} for r in _REF]
    test = [{**t, "w": words} for t in _TEST]
    result = compare(reference, test, _FEEDS)
    assert result.sqnr_db() == {"y": 14.771, "z": 13.01}


def test_compare_names_the_sample_a_runner_refuses():
    with pytest.raises(UserError, match="^evaluation sample 1: onnxruntime failed on this input$"):
        compare(_Fixed(_REF), _Fixed(_TEST, refuse=1), _FEEDS, what="evaluation sample")
    with pytest.raises(UserError, match="^sample 0: "):
        compare(_Fixed(_REF, refuse=0), _TEST, _FEEDS)


def test_task_metrics_follow_the_output_shape():
    # Class scores [N=2, C=3]: arg-max 2 vs 2 agrees, 0 vs 1 does not: 1 of 2 rows.
    scores_ref = np.array([[0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    scores_test = np.array([[0.1, 0.3, 0.6], [0.4, 0.5, 0.1]])
    # Token embeddings [N=1, T=2, H=2]: pooled ref (1, 1), test (1, 0): cosine 1/sqrt(2) = 0.707107.
    tokens_ref = np.array([[[1.0, 0.0], [1.0, 2.0]]])
    tokens_test = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    result = compare([{"s": scores_ref, "t": tokens_ref, "one": np.ones((2, 1)), "v": np.ones(3)}],
                     [{"s": scores_test, "t": tokens_test, "one": np.ones((2, 1)), "v": np.ones(3)}], [{}])
    entries = result.to_dict()
    assert entries["s"]["top1_agreement"] == 0.5 and "pooled_cosine" not in entries["s"]
    assert entries["t"]["pooled_cosine"] == 0.707107 and "top1_agreement" not in entries["t"]  # 6 decimals, as reported
    # One column is no class score, a vector no embedding: neither metric.
    assert set(entries["one"]) == set(entries["v"]) == {"sqnr_db", "cosine"}


def test_task_metrics_pool_rows_over_samples():
    agree = {"s": np.array([[0.0, 1.0]])}
    differ = {"s": np.array([[1.0, 0.0]])}
    # Three samples of one row each: 2 of 3 agree.
    result = compare([agree, agree, agree], [agree, differ, agree], [{}, {}, {}])
    assert result.to_dict()["s"]["top1_agreement"] == 0.666667  # 6 decimals, as reported
    # Rows of one sample are compared row by row: both rows agree here.
    rows = {"s": np.array([[0.0, 1.0], [1.0, 0.0]])}
    assert compare([rows], [rows], [{}]).to_dict()["s"]["top1_agreement"] == 1.0
    two = {"t": np.array([[[1.0, 0.0]], [[0.0, 1.0]]])}
    half = {"t": np.array([[[1.0, 0.0]], [[1.0, 0.0]]])}
    # Two rows, cosines 1 and 0: their mean 0.5 (not the cosine of the pooled batch).
    assert compare([two], [half], [{}]).to_dict()["t"]["pooled_cosine"] == 0.5


def test_next_token_agreement_of_logits_counts_positions_over_samples():
    # Logits [N=2, T=2, V=3]; positions' arg-max: ref (2, 0), (1, 1); test (2, 1), (1, 1): 3 of 4.
    ref = np.array([[[0.0, 0.1, 0.9], [0.8, 0.1, 0.1]], [[0.0, 1.0, 0.0], [0.2, 0.7, 0.1]]])
    test = np.array([[[0.0, 0.2, 0.8], [0.1, 0.8, 0.1]], [[0.0, 1.0, 0.0], [0.2, 0.7, 0.1]]])
    entries = compare([{"logits": ref, "hidden": ref}], [{"logits": test, "hidden": test}], [{}]).to_dict()
    assert entries["logits"]["next_token_agreement"] == 0.75
    assert "next_token_agreement" not in entries["hidden"]  # not named as logits: an embedding
    # A second sample of 2x2 positions, all agreeing: 7 of 8, pooled over positions of both.
    pooled = compare([{"Logits": ref}, {"Logits": ref}], [{"Logits": test}, {"Logits": ref}], [{}, {}]).to_dict()
    assert pooled["Logits"]["next_token_agreement"] == 0.875
    # One position of one sample: 1 of 1, and 0 of 1.
    one = np.array([[[0.0, 1.0]]])
    assert compare([{"logits": one}], [{"logits": one}], [{}]).to_dict()["logits"]["next_token_agreement"] == 1.0
    assert compare([{"logits": one}], [{"logits": one[..., ::-1]}], [{}]).to_dict()["logits"]["next_token_agreement"] == 0.0


def test_is_logits_reads_the_name():
    from qonnx.metrics import is_logits

    assert is_logits("logits") and is_logits("lm_logits") and is_logits("LOGITS")
    assert not is_logits("last_hidden_state") and not is_logits("logit")


def test_next_token_agreement_counts_every_position_of_a_long_row():
    # [N=1, T=3, V=2]: arg-max ref (1, 1, 0), test (1, 0, 0): 2 of 3, reported to 6 decimals.
    ref = np.array([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    test = np.array([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    assert compare([{"logits": ref}], [{"logits": test}], [{}]).to_dict()["logits"]["next_token_agreement"] == 0.666667


def test_no_positions_no_next_token_agreement():
    from qonnx.metrics import TaskAccumulator

    assert TaskAccumulator().next_token_top1() is None


def test_string_outputs_are_left_out_and_the_numbers_after_them_compared():
    texts = np.array(["a", "b"])
    entries = compare([{"text": texts, "flags": np.array([True, False]), "y": np.ones(2)}], [{"text": texts, "flags": np.array([True, False]), "y": np.ones(2)}], [{}]).to_dict()
    assert set(entries) == {"flags", "y"}


def test_perplexity_and_kl_of_logits_pool_over_samples_and_chunks(monkeypatch):
    """Against ``qonnx.lm_metrics`` on all samples at once: the pooled NLL and KL sums are the same
    sums (float64; tolerance 1e-9 relative for the order of summation), whatever the chunking."""
    import qonnx.lm_metrics as lm_metrics
    from qonnx.lm_metrics import kl_divergence, perplexity

    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(1, 7, 11)) for _ in range(3)]
    test = [r + rng.normal(size=r.shape) * 0.3 for r in ref]
    ids = [rng.integers(0, 11, size=(1, 7)) for _ in range(3)]
    feeds = [{"input_ids": i, "mask": np.ones((1, 7), np.float32)} for i in ids]
    expected = (perplexity(np.concatenate(test), np.concatenate(ids)), perplexity(np.concatenate(ref), np.concatenate(ids)), kl_divergence(np.concatenate(ref), np.concatenate(test)))
    for chunk in (1 << 21, 11, 23):  # whole windows; one position at a time; two
        monkeypatch.setattr(lm_metrics, "CHUNK_VALUES", chunk)
        entry = compare([{"logits": r} for r in ref], [{"logits": t} for t in test], feeds).to_dict()["logits"]
        np.testing.assert_allclose((entry["perplexity"], entry["reference_perplexity"], entry["kl_divergence"]), expected, rtol=1e-4)  # rounded to 4 and 6 decimals
    same = compare([{"logits": ref[0]}], [{"logits": ref[0]}], feeds[:1]).to_dict()["logits"]
    assert same["kl_divergence"] == 0 and same["perplexity"] == same["reference_perplexity"]


def test_no_token_input_no_perplexity():
    """Perplexity needs the tokens: no integer input of the logits' [N, T] shape (or two of them),
    or an output not named as logits, and the entry has none."""
    logits = np.zeros((1, 4, 5))
    for feed in ({}, {"ids": np.zeros((1, 4), np.float32)}, {"a": np.zeros((1, 4), np.int64), "b": np.zeros((1, 4), np.int64)}):
        assert "perplexity" not in compare([{"logits": logits}], [{"logits": logits}], [feed]).to_dict()["logits"]
    feed = {"input_ids": np.zeros((1, 4), np.int64)}
    assert "perplexity" not in compare([{"hidden": logits}], [{"hidden": logits}], [feed]).to_dict()["hidden"]
    assert compare([{"logits": logits}], [{"logits": logits}], [feed]).to_dict()["logits"]["perplexity"] == 5.0  # uniform over 5 tokens


def test_perplexity_only_from_token_ids_shaped_like_the_logits():
    """A TaskAccumulator scores perplexity only for 3-D logits with tokens of their [N, T] shape;
    anything else leaves it unset (None), without an error; and the KL is reported to 6 decimals."""
    from qonnx.metrics import TaskAccumulator

    task = TaskAccumulator()
    assert task.perplexity() is None and task.kl_divergence() is None
    task.update(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3), np.int64))  # class scores: no positions
    task.update(np.zeros((1, 4, 5)), np.zeros((1, 4, 5)), np.zeros((1, 3), np.int64))  # tokens of another shape
    assert task.perplexity() is None and task.kl_divergence() is None
    feed = {"input_ids": np.array([[0, 1, 2, 3]])}
    logits = np.zeros((1, 4, 5))
    hidden = compare([{"hidden": logits}], [{"hidden": logits}], [feed])
    assert hidden.tasks["hidden"].perplexity() is None  # not named as logits: its tokens are not looked for
    rng = np.random.default_rng(1)
    ref, test = rng.normal(size=(1, 4, 5)), rng.normal(size=(1, 4, 5))
    result = compare([{"logits": ref}], [{"logits": test}], [feed])
    assert result.to_dict()["logits"]["kl_divergence"] == round(result.tasks["logits"].kl_divergence(), 6)
    assert result.to_dict()["logits"]["kl_divergence"] != round(result.tasks["logits"].kl_divergence(), 7)
