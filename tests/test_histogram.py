"""The streaming histogram against hand-worked grids and numpy.

The reference grid is found here by brute force from the rule of ``calib/histogram.py``: the
smallest exponent ``e >= -100`` with ``2**e > max|x| · 2**-20`` (or no such condition when every
value is 0) for which ``floor(max / 2**e) - floor(min / 2**e) < bins``; the bins start at
``floor(min / 2**e)``. Counts are then ``numpy.histogram`` on those edges. Power-of-two widths make
every edge exact, so counts compare exactly.
"""

import math

import numpy as np
import pytest

from qonnx.calib.histogram import StreamingHistogram
from qonnx.calib.observers import PercentileObserver


def reference_grid(values: np.ndarray, bins: int) -> tuple[int, int, np.ndarray]:
    """``(exponent, start, counts)`` of the canonical grid, by trying every exponent from -100 up."""
    values = values.astype(np.float64)
    lo, hi, amax = values.min(), values.max(), np.abs(values).max()
    e = -100
    while not ((amax == 0 or 2.0**e > amax * 2.0**-20) and math.floor(hi / 2.0**e) - math.floor(lo / 2.0**e) < bins):
        e += 1
    start = math.floor(lo / 2.0**e)
    edges = (np.arange(bins + 1, dtype=np.float64) + start) * 2.0**e
    return e, start, np.histogram(values, edges)[0]


def assert_matches_reference(h: StreamingHistogram, values: np.ndarray) -> None:
    e, start, counts = reference_grid(values, h.bins)
    assert (h.exponent, h.start) == (e, start)
    assert h.width == 2.0**e and np.array_equal(h.edges(), (np.arange(h.bins + 1) + start) * 2.0**e)
    assert np.array_equal(h.counts, counts) and h.total == values.size
    assert (h.lo, h.hi) == (float(values.min()), float(values.max()))


def test_a_hand_worked_grid_and_its_rebinning():
    h = StreamingHistogram(4)
    h.update(np.array([0.5, 1.5], np.float32))
    # span 1 over 4 bins: width 0.25 would need floor(1.5/0.25) - floor(0.5/0.25) = 6 - 2 = 4 bins
    # too many, so 0.5: bins [0.5, 1), [1, 1.5), [1.5, 2), [2, 2.5) starting at bin 1.
    assert (h.exponent, h.start, h.width) == (-1, 1, 0.5)
    assert h.counts.tolist() == [1, 0, 1, 0]
    h.update(np.array([3.5], np.float32))
    # [0.5, 3.5]: width 0.5 needs 7 - 1 = 6 >= 4, width 1 needs 3 - 0 = 3: [0, 1), [1, 2), [2, 3), [3, 4).
    # The old bins merge pairwise: [0.5, 1) → [0, 1), [1.5, 2) → [1, 2).
    assert (h.exponent, h.start, h.width) == (0, 0, 1.0)
    assert h.counts.tolist() == [1, 1, 0, 1]
    assert h.edges().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and h.edges().dtype == np.float64
    assert (h.lo, h.hi, h.total) == (0.5, 3.5, 3)


def test_a_hand_worked_grid_with_negative_values():
    h = StreamingHistogram(4)
    h.update(np.array([-1.5, 0.25], np.float32))
    # width 0.25: floor(1) - floor(-6) = 7 >= 4; width 0.5: floor(0.5) - floor(-3) = 0 - (-3) = 3 < 4.
    # Bins [-1.5, -1), [-1, -0.5), [-0.5, 0), [0, 0.5) starting at bin -3.
    assert (h.exponent, h.start) == (-1, -3)
    assert h.counts.tolist() == [1, 0, 0, 1]
    h.update(np.array([-0.25, -0.5], np.float32))  # -0.5 sits on an edge: bin [-0.5, 0)
    assert h.counts.tolist() == [1, 0, 2, 1]
    # 1.9 widens the grid to width 1 (floor(1.9) - floor(-1.5) = 1 - (-2) = 3 < 4) starting at -2;
    # bin k of width 0.5 goes to floor(k / 2): -3 → -2 ([-2, -1)), -1 → -1 ([-1, 0)), 0 → 0.
    h.update(np.array([1.9], np.float32))
    assert (h.exponent, h.start) == (0, -2)
    assert h.counts.tolist() == [1, 2, 1, 1]
    # 2.9 needs floor(2.9) - floor(-1.5) = 4 bins of width 1: width 2 from -2 ([-2, 0), [0, 2), ...)
    h.update(np.array([2.9], np.float32))
    assert (h.exponent, h.start) == (1, -1)
    assert h.counts.tolist() == [3, 2, 1, 0]


def test_the_exponent_floor_for_constant_tensors():
    h = StreamingHistogram(16)
    h.update(np.zeros(5, np.float32))
    # Nothing but zeros: only the floor e >= -100 holds, one bin [0, 2**-100).
    assert h.exponent == -100 and h.start == 0 and h.counts[0] == 5
    c = StreamingHistogram(16)
    c.update(np.full(3, 1.0, np.float32))
    # max|x| = 1: the smallest 2**e > 1 · 2**-20 is 2**-19.
    assert c.exponent == -19 and c.start == 2**19 and c.counts[0] == 3
    t = StreamingHistogram(16)
    t.update(np.full(3, 3 * 2.0**-40, np.float32))
    # 3·2**-40 lies in [2**-39, 2**-38): 2**e > 3·2**-60 first at e = -58.
    assert t.exponent == -58 and t.start == 3 * 2**18


@pytest.mark.parametrize("seed", range(4))
def test_streamed_batches_give_numpy_histogram_of_everything(seed):
    rng = np.random.default_rng(seed)
    # Batches of growing spread: every batch after the first widens the grid.
    batches = [(rng.standard_normal(200) * 10.0**k + k).astype(np.float32) for k in range(-2, 3)]
    if seed % 2:
        batches.reverse()
    h = StreamingHistogram(64)
    for batch in batches:
        h.update(batch)
    assert_matches_reference(h, np.concatenate(batches))


def test_rebinning_across_sign_and_magnitude_matches_numpy():
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.uniform(-1e-3, 1e-3, 300), rng.uniform(5, 6, 50), -rng.uniform(100, 200, 20)]).astype(np.float32)
    h = StreamingHistogram(128)
    for part in np.array_split(values, 7):
        h.update(part)
    assert_matches_reference(h, values)


def test_given_extremes_are_used_for_the_grid():
    h = StreamingHistogram(8)
    # The caller passes extremes wider than the values: [-8, 8] over 8 bins. Width 2 needs
    # floor(8/2) - floor(-8/2) = 8, not < 8; width 4 needs 2 - (-2) = 4: start floor(-8/4) = -2,
    # bins [-8, -4), [-4, 0), [0, 4), ...; 1 and 2 land in the third.
    h.update(np.array([1.0, 2.0], np.float32), lo=-8.0, hi=8.0)
    assert (h.exponent, h.start, h.lo, h.hi) == (2, -2, -8.0, 8.0)
    assert h.counts.tolist() == [0, 0, 2, 0, 0, 0, 0, 0]


def test_merge_is_numpy_histogram_of_both_streams():
    rng = np.random.default_rng(3)
    a_values = rng.uniform(-0.1, 0.1, 500).astype(np.float32)
    b_values = rng.uniform(3, 70, 500).astype(np.float32)
    a, b = StreamingHistogram(256), StreamingHistogram(256)
    a.update(a_values)
    b.update(b_values)
    b_before = b.to_dict()
    a.merge(b)
    assert_matches_reference(a, np.concatenate([a_values, b_values]))
    assert b.to_dict() == b_before  # the other histogram is left as it was
    # Merging into an empty histogram, and merging an empty one, change nothing else
    empty = StreamingHistogram(256)
    empty.merge(b)
    assert_matches_reference(empty, b_values)
    a_copy = a.copy()
    a.merge(StreamingHistogram(256))
    assert a == a_copy
    with pytest.raises(ValueError, match="256 and 64 bins"):
        a.merge(StreamingHistogram(64))


def test_copy_is_independent():
    h = StreamingHistogram(32)
    h.update(np.array([1.0, 2.0, 3.0], np.float32))
    twin = h.copy()
    assert twin == h and twin is not h
    twin.update(np.array([2.5], np.float32))
    assert h.total == 3 and twin.total == 4 and twin != h


def test_round_trip_through_dict_and_equality():
    h = StreamingHistogram(32)
    h.update(np.array([-1.0, 0.3, 0.3, 7.0], np.float32))
    data = h.to_dict()
    assert data["bins"] == 32 and data["lo"] == -1.0 and data["hi"] == 7.0 and sum(data["nonzero"].values()) == 4
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in data["nonzero"].items())
    back = StreamingHistogram.from_dict(data)
    assert back == h and np.array_equal(back.counts, h.counts) and back.exponent == h.exponent
    # Each field takes part in equality
    for field, value in (("bins", 31), ("exponent", h.exponent + 1), ("start", h.start + 1), ("lo", -2.0), ("hi", 8.0)):
        other = h.copy()
        setattr(other, field, value)
        assert other != h, field
    other = h.copy()
    other.counts[0] += 1
    assert other != h
    assert h.__eq__("a histogram") is NotImplemented


def test_an_empty_histogram():
    h = StreamingHistogram(8)
    h.update(np.zeros(0, np.float32))
    assert h.exponent is None and h.width == 0.0 and h.total == 0 and (h.lo, h.hi) == (math.inf, -math.inf)
    with pytest.raises(ValueError, match="^a histogram needs at least two bins$"):
        StreamingHistogram(1)
    assert StreamingHistogram(2).bins == 2


def test_folded_counts_are_numpy_histogram_of_magnitudes():
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.uniform(-3, -0.01, 400), rng.uniform(0.01, 1.2, 300)]).astype(np.float32)
    h = StreamingHistogram(64)
    h.update(values)
    counts, width = h.folded()
    assert width == h.width
    # |x| on [0, n·w): no value lies on an edge (drawn from continuous distributions; checked).
    edges = np.arange(counts.size + 1) * width
    assert not np.isin(np.abs(values), edges).any()
    assert np.array_equal(counts, np.histogram(np.abs(values).astype(np.float64), edges)[0])
    # n: the largest magnitude bin any counter maps to; here the grid starts at bin start < 0, so
    # -start bins of magnitude below 0 and start + 64 above: max(-start, start + 64).
    assert counts.size == max(-h.start, h.start + 64)
    # Coarsened to at most 16 bins: widths double until they fit (an odd count keeps its last bin)
    coarse, coarse_width = h.folded(16)
    factor = coarse_width / width
    assert factor == 2 ** math.ceil(math.log2(counts.size / 16)) and coarse.size <= 16
    edges = np.arange(coarse.size + 1) * coarse_width
    assert np.array_equal(coarse, np.histogram(np.abs(values).astype(np.float64), edges)[0])
    assert coarse.dtype == np.int64 and coarse.sum() == values.size
    # max_bins at least as large as n changes nothing
    same, same_width = h.folded(counts.size)
    assert np.array_equal(same, counts) and same_width == width


def test_folding_an_odd_number_of_bins_keeps_the_last():
    h = StreamingHistogram(5)
    h.update(np.array([0.5, 1.5, 2.5, 3.5, 4.5], np.float32))
    # width 1, bins 0..4 → folded counts [1, 1, 1, 1, 1]; to at most 2 bins: [2, 2, 1] → [4, 1]
    counts, width = h.folded()
    assert counts.tolist() == [1, 1, 1, 1, 1] and width == 1.0
    coarse, coarse_width = h.folded(2)
    assert coarse.tolist() == [4, 1] and coarse_width == 4.0
    one, one_width = h.folded(1)
    assert one.tolist() == [5] and one_width == 8.0
    with pytest.raises(ValueError, match="at least 1"):
        h.folded(0)


def test_a_tiny_negative_value_keeps_its_bin_when_the_width_is_above_one():
    # Width 2 (e = 1, forced by values near 2**20): scaling -1.4e-45 by 1/2 in float32 would round
    # to -0.0 and land in bin 0; the bin of [-2, 0) is right (numpy on float64 agrees).
    bins = 2**20
    values = np.array([-1.4e-45, 1.5 * 2**20], np.float32)
    h = StreamingHistogram(bins)
    h.update(values)
    assert (h.exponent, h.start) == (1, -1)
    assert h.counts[0] == 1 and h.counts[786432 + 1] == 1 and h.total == 2


def test_nan_and_infinities_are_counted_and_left_out_of_the_bins():
    data = np.array([0.5, np.nan, -np.inf, 2.0, np.inf, -3.4e38, 1e30, -1.0, 9.9e29], np.float32)
    observer = PercentileObserver(100, bins=32)
    observer.update(data)
    finite = np.array([0.5, 2.0, -1.0, 9.9e29], np.float32)  # |x| < 1e30 is kept, 1e30 and beyond are fill values
    assert observer.nonfinite == 5 and observer.count == 4
    assert_matches_reference(observer.histogram, finite)


def test_scratch_arrays_are_cached_per_thread_and_type():
    import threading

    from qonnx.calib.histogram import CHUNK, _scratch

    def fresh_thread() -> dict:
        # A new thread starts without cached arrays (this one may hold some already)
        seen = {}

        def take():
            seen["narrow"], seen["again"], seen["wide"] = _scratch(np.float32), _scratch(np.float32), _scratch(np.float64)

        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
        return seen

    seen = fresh_thread()
    (values, index), (wide, wide_index) = seen["narrow"], seen["wide"]
    assert values.dtype == np.float32 and index.dtype == np.int64 and values.size == index.size == CHUNK
    assert wide.dtype == np.float64 and wide_index.dtype == np.int64 and wide.size == CHUNK
    assert seen["again"][0] is values and seen["again"][1] is index  # cached
    assert wide is not values and wide_index is not index  # one set per type
    assert fresh_thread()["narrow"][0] is not values  # and per thread


def test_an_empty_histogram_as_a_dict():
    assert StreamingHistogram().bins == 4096  # the README's bins
    h = StreamingHistogram(8)
    assert h.counts.dtype == np.int64
    assert h.to_dict() == {"bins": 8, "exponent": None, "start": 0, "lo": math.inf, "hi": -math.inf, "nonzero": {}}
    assert StreamingHistogram.from_dict(h.to_dict()) == h
