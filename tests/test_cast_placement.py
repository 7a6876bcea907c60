"""Cast placement by minimum cut: the cases that random DAGs against brute force rarely build.

(``tests/test_float.py`` compares ``place_casts`` with brute force on random DAGs.) Here the
expected placements and byte counts are worked out by hand in each test's comment. Byte counts
are integers: compared exactly.
"""

from __future__ import annotations

import itertools

import pytest

from qonnx.cast_placement import FP32, LOW, Tensor, cast_bytes, place_casts


def _best(kinds, tensors):
    """(fewest bytes, then fewest free nodes in FP32) over every assignment of the free nodes."""
    free = [n for n, k in kinds.items() if k == "free"]
    forced = {n for n, k in kinds.items() if k == "low"}
    return min(
        (cast_bytes(tensors, forced | {n for n, b in zip(free, bits) if b}), bits.count(False))
        for bits in itertools.product((False, True), repeat=len(free))
    )


def test_the_low_preference_never_outweighs_a_byte():
    """src (FP32) → 3 B → a → b → c → 2 B → a reader that wants the low format.

    All three free nodes FP32: one Cast of 2 bytes at the end. All low: one Cast of 3 bytes at
    the start. 2 < 3, so FP32 wins although three free nodes then miss their preference."""
    kinds = {"src": "fp32", "a": "free", "b": "free", "c": "free"}
    tensors = [Tensor("src", ("a",), 3), Tensor("a", ("b",), 1000), Tensor("b", ("c",), 1000), Tensor("c", (LOW,), 2)]
    placement = place_casts(kinds, tensors)
    assert placement.low == frozenset() and placement.cast_bytes == 2
    assert (placement.cast_bytes, 3) == _best(kinds, tensors)
    # The other way round (3 bytes at the end), all go low: 2 bytes at the start.
    tensors = [Tensor("src", ("a",), 2), Tensor("a", ("b",), 1000), Tensor("b", ("c",), 1000), Tensor("c", (LOW,), 3)]
    placement = place_casts(kinds, tensors)
    assert placement.low == {"a", "b", "c"} and placement.cast_bytes == 2


def test_equal_bytes_go_to_the_low_format():
    """src (FP32) → 5 B → a → 5 B → LOW: a Cast of 5 bytes either way; the free node goes low."""
    kinds = {"src": "fp32", "a": "free"}
    placement = place_casts(kinds, [Tensor("src", ("a",), 5), Tensor("a", (LOW,), 5)])
    assert placement.low == {"a"} and placement.cast_bytes == 5


def test_a_tensor_is_cast_once_for_all_its_readers():
    """p (low) → 10 B → three FP32 readers: one Cast of 10 bytes, not three."""
    kinds = {"p": "low", "r1": "fp32", "r2": "fp32", "r3": "fp32"}
    tensors = [Tensor("p", ("r1", "r2", "r3", "r1"), 10)]
    placement = place_casts(kinds, tensors)
    assert placement.low == {"p"} and placement.cast_bytes == 10 == cast_bytes(tensors, {"p"})


def test_a_free_reader_joins_the_side_that_costs_less():
    """p (FP32) → 10 B → f (free) and → q (low); f → 4 B → FP32 graph output.

    f low: the 10-byte tensor is cast once anyway (q is low), and f's output costs 4: 14.
    f FP32: 10 (for q) + 0: 10. So f stays FP32."""
    kinds = {"p": "fp32", "f": "free", "q": "low"}
    tensors = [Tensor("p", ("f", "q"), 10), Tensor("f", (FP32,), 4)]
    placement = place_casts(kinds, tensors)
    assert placement.low == {"q"} and placement.cast_bytes == 10


def test_a_tensor_of_zero_bytes_costs_nothing_and_a_negative_size_is_refused():
    kinds = {"p": "fp32", "f": "free"}
    placement = place_casts(kinds, [Tensor("p", ("f",), 0), Tensor("f", (FP32, LOW), 0)])
    assert placement.low == {"f"} and placement.cast_bytes == 0
    # A reader equal to its producer, or no reader at all, costs nothing either.
    placement = place_casts({"p": "low", "f": "free"}, [Tensor("p", ("p",), 7), Tensor("f", (), 9)])
    assert placement.low == {"p", "f"} and placement.cast_bytes == 0
    with pytest.raises(ValueError, match="a tensor of -1 bytes"):
        Tensor("p", ("f",), -1)

