"""Observers and range collection."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qonnx.calib.collect import collect_ranges
from qonnx.calib.observers import MinMaxObserver
from qonnx.calib.ranges import RangeTable, TensorRange
from qonnx.calib.sources import ListSource, input_specs
from qonnx.errors import UserError
from qonnx.models import tiny

from conftest import outputs, to_ir

batches = st.lists(arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e6, 1e6, width=32)), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(batches, batches)
def test_merge_equals_one_observer_fed_both_streams(first, second):
    a, b, both = MinMaxObserver(), MinMaxObserver(), MinMaxObserver()
    for batch in first:
        a.update(batch)
        both.update(batch)
    for batch in second:
        b.update(batch)
        both.update(batch)
    a.merge(b)
    assert a.to_dict() == both.to_dict()
    lo, hi = a.compute_range()
    data = np.concatenate(first + second)
    assert lo == data.min() and hi == data.max()  # MinMax covers the data exactly


def test_non_finite_values_and_mask_fills_never_reach_the_range():
    observer = MinMaxObserver()
    observer.update(np.array([np.nan, -np.inf, np.inf, -3.4e38, 0.5, -2.0], np.float32))
    assert observer.compute_range() == (-2.0, 0.5)
    assert observer.nonfinite == 4


def test_a_tensor_without_finite_values_has_no_range():
    observer = MinMaxObserver()
    observer.update(np.array([np.nan, np.inf], np.float32))
    with pytest.raises(ValueError, match="^no finite values observed$"):
        observer.compute_range()


def test_round_trip_through_dict():
    observer = MinMaxObserver()
    observer.update(np.array([1.0, -3.0], np.float32))
    assert MinMaxObserver.from_dict(observer.to_dict()) == observer


def test_collect_ranges_matches_the_tensors_onnxruntime_computes():
    proto = tiny.conv_chain()
    model = to_ir(proto)
    feeds = [tiny.random_feed(proto, seed=i) for i in range(5)]
    table = collect_ranges(model, ListSource(feeds, input_specs(model)), ["x", "y"])
    ys = np.stack([outputs(proto, f)[0] for f in feeds])
    xs = np.stack([f["x"] for f in feeds])
    # (MinMax's range is what it observed: both are the extremes)
    assert table["y"] == TensorRange(float(ys.min()), float(ys.max()), 0, 0.0, float(ys.min()), float(ys.max()))
    assert table["x"].lo == float(xs.min()) and table.samples == 5


def test_collect_ranges_honours_the_sample_limit():
    proto = tiny.conv_chain()
    model = to_ir(proto)
    feeds = [tiny.random_feed(proto, seed=i) for i in range(5)]
    table = collect_ranges(model, ListSource(feeds, input_specs(model)), ["x"], samples=2)
    assert table.samples == 2 and table["x"].hi == float(max(f["x"].max() for f in feeds[:2]))


def test_range_table_refuses_another_model(tmp_path):
    table = RangeTable({"x": TensorRange(-1.0, 1.0)}, model_hash="abc")
    path = tmp_path / "ranges.json"
    table.save(path)
    assert RangeTable.load(path, model_hash="abc").ranges == table.ranges
    with pytest.raises(UserError, match="another model"):
        RangeTable.load(path, model_hash="def")


# --------------------------------------------------------------------------------------------
# Every observer: properties that hold for any data (hypothesis)

from qonnx.calib.histogram import StreamingHistogram  # noqa: E402
from qonnx.calib.observers import (  # noqa: E402
    FACTORIES,
    OBSERVERS,
    EntropyObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    Percentile,
    PercentileObserver,
    factory_for,
    kl_threshold_bins,
    observer_from_dict,
)

HISTOGRAM_METHODS = ["percentile", "entropy", "mse"]
EXACT_MERGE_METHODS = ["minmax", *HISTOGRAM_METHODS]
# Values over many magnitudes; small arrays keep the examples fast.
values = st.one_of(st.floats(-1e6, 1e6, width=32), st.floats(-1.0, 1.0, width=32), st.sampled_from([0.0, -0.0]))
streams = st.lists(arrays(np.float32, st.integers(1, 40), elements=values), min_size=1, max_size=4)
FAST = settings(max_examples=40, deadline=None)


def make_observer(method, **settings):
    """An empty observer of the method named ``method``, from its factory."""
    return FACTORIES[method](**settings).new()


def _fed(method, batches, **kwargs):
    observer = make_observer(method, **kwargs)
    for batch in batches:
        observer.update(batch)
    return observer


@FAST
@given(st.sampled_from(EXACT_MERGE_METHODS), streams, streams)
def test_every_observer_merged_equals_one_fed_both_streams(method, first, second):
    a, b = _fed(method, first), _fed(method, second)
    a.merge(b)
    both = _fed(method, first + second)
    assert a.to_dict() == both.to_dict()
    assert a.compute_range() == both.compute_range()


@FAST
@given(st.sampled_from(list(OBSERVERS)), streams)
def test_every_range_lies_inside_the_observed_values(method, batches):
    data = np.concatenate(batches)
    lo, hi = _fed(method, batches).compute_range()
    assert data.min() <= lo <= hi <= data.max()


@FAST
@given(streams, st.floats(50.5, 99.0), st.floats(0.0, 1.0), st.booleans())
def test_percentile_is_monotone_in_p(batches, p, step, symmetric):
    lower = _fed("percentile", batches, percentile=p, symmetric=symmetric).compute_range()
    higher = _fed("percentile", batches, percentile=p + step, symmetric=symmetric).compute_range()
    assert higher[0] <= lower[0] and lower[1] <= higher[1]


@FAST
@given(streams)
def test_percentile_100_is_minmax(batches):
    assert _fed("percentile", batches, percentile=100).compute_range() == _fed("minmax", batches).compute_range()


poison = st.lists(st.sampled_from([np.nan, np.inf, -np.inf, -3.4e38, 3.4e38, -1e30]), min_size=1, max_size=6)


@FAST
@given(st.sampled_from(list(OBSERVERS)), streams, poison)
def test_nan_and_inf_never_reach_a_range(method, batches, bad):
    poisoned = [np.concatenate([batches[0], np.asarray(bad, np.float32)]), *batches[1:]]
    observer = _fed(method, poisoned)
    assert observer.compute_range() == _fed(method, batches).compute_range()
    assert all(np.isfinite(observer.compute_range()))
    assert observer.nonfinite == len(bad)


@FAST
@given(st.sampled_from(list(OBSERVERS)), st.integers(1, 20).map(lambda n: np.full(n, np.nan, np.float32)))
def test_a_tensor_of_only_nan_has_no_range(method, batch):
    with pytest.raises(ValueError, match="^no finite values observed$"):
        _fed(method, [batch]).compute_range()


@FAST
@given(st.sampled_from(HISTOGRAM_METHODS), arrays(np.float32, st.integers(8, 200), elements=values))
def test_batch_size_1_and_8_agree_within_one_bin(method, data):
    one = _fed(method, np.split(data, data.size))
    eight = _fed(method, np.array_split(data, max(1, data.size // 8)))
    (lo1, hi1), (lo8, hi8) = one.compute_range(), eight.compute_range()
    bin_width = max(one.resolution, eight.resolution)
    assert abs(lo1 - lo8) <= bin_width and abs(hi1 - hi8) <= bin_width
    assert one.histogram == eight.histogram  # the bins are canonical: in fact nothing differs


@FAST
@given(streams)
def test_streaming_histogram_is_independent_of_order_and_batching(batches):
    data = np.concatenate(batches)
    whole, reversed_stream = StreamingHistogram(64), StreamingHistogram(64)
    whole.update(data)
    for batch in reversed(batches):
        reversed_stream.update(batch[::-1])
    assert whole == reversed_stream
    assert whole.total == data.size
    edges = whole.edges()
    assert edges[0] <= data.min() and data.max() < edges[-1]  # every value is in a counter
    assert np.array_equal(np.histogram(data.astype(np.float64), edges)[0], whole.counts)
    assert StreamingHistogram.from_dict(whole.to_dict()) == whole


@FAST
@given(streams)
def test_moving_average_stays_inside_the_data_and_merges_between(batches):
    observer = _fed("moving-minmax", batches)
    data = np.concatenate(batches)
    lo, hi = observer.compute_range()
    assert data.min() <= lo <= hi <= data.max()
    other = _fed("moving-minmax", batches[::-1])
    merged = MovingAverageMinMaxObserver.from_dict(observer.to_dict())
    merged.merge(other)
    assert min(lo, other.lo) <= merged.lo <= max(lo, other.lo)
    assert min(hi, other.hi) <= merged.hi <= max(hi, other.hi)


@FAST
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 6)), elements=values), st.integers(0, 1))
def test_per_channel_minmax_covers_every_channel(weights, axis):
    observer = PerChannelMinMaxObserver(axis)
    observer.update(weights)
    lo, hi = observer.compute_range()
    assert np.array_equal(lo, weights.min(axis=1 - axis)) and np.array_equal(hi, weights.max(axis=1 - axis))
    twin = observer_from_dict(observer.to_dict())
    assert np.array_equal(twin.compute_range()[0], lo)


def _kl_reference(h: np.ndarray, q: int) -> int:
    """TensorRT's search, one candidate at a time, with the same grouping as kl_threshold_bins."""
    divergences = {}
    for i in range(q, h.size + 1):
        p = h[:i].astype(np.float64).copy()
        p[i - 1] += h[i:].sum()
        groups = (np.arange(i) * q) // i
        sums = np.bincount(groups, weights=h[:i], minlength=q)
        nonzero = np.bincount(groups, weights=(p > 0), minlength=q)
        qq = np.where(p > 0, sums[groups] / np.maximum(nonzero[groups], 1), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            pn, qn = p / p.sum(), qq / qq.sum()
            mask = pn > 0
            kl = np.sum(pn[mask] * np.log(pn[mask] / qn[mask]))
        divergences[i] = np.inf if np.isnan(kl) else kl
    best = min(divergences.values())
    return min(i for i, kl in divergences.items() if kl <= best + 1e-9)


@settings(max_examples=25, deadline=None)
@given(arrays(np.int64, st.integers(9, 60), elements=st.integers(0, 50)), st.integers(1, 8))
@pytest.mark.filterwarnings("error::RuntimeWarning")  # log(0) and 0/0 are handled, not warned about
def test_vectorized_kl_search_matches_the_candidate_loop(histogram, quantized_bins):
    # Tolerance: both break ties (divergences within 1e-9, the rounding of a sum of ~60 logs) towards fewer bins.
    if histogram.sum() == 0:
        return
    assert kl_threshold_bins(histogram, quantized_bins) == _kl_reference(histogram, quantized_bins)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, st.integers(9, 40), elements=st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 3.0, 7.5, 40.0])), st.integers(1, 6))
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_vectorized_kl_search_matches_the_candidate_loop_for_any_weights(histogram, quantized_bins):
    # Weights below 1 (a histogram of weighted samples): p log p is negative there, not 0.
    if histogram.sum() == 0:
        return
    assert kl_threshold_bins(histogram, quantized_bins) == _kl_reference(histogram, quantized_bins)


def test_entropy_and_percentile_clip_a_heavy_tail_but_keep_post_relu_tensors_at_zero():
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.standard_normal(200_000), 0).astype(np.float32)
    relu[:5] = 40.0  # rare outliers far out
    for observer in (EntropyObserver(), PercentileObserver(99.9)):
        observer.update(relu)
        lo, hi = observer.compute_range()
        assert lo == 0.0, type(observer).__name__
        assert 2.0 < hi < 20.0, (type(observer).__name__, hi)  # clipped well below the outliers' 40


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_mse_clips_a_gaussian_inside_its_extremes(dtype):
    # With 8 bits and 200k samples the squared error is smallest around 3.5-4.5 sigma: clipping
    # the sparse tail costs less than the coarser step of the full range.
    data = np.random.default_rng(2).standard_normal(200_000).astype(np.float32)
    lo, hi = _fed("mse", [data], dtype=dtype).compute_range()
    assert data.min() < lo < -3.0 and 3.0 < hi < data.max()
    relu = _fed("mse", [np.maximum(data, 0)], dtype=dtype).compute_range()
    assert relu[0] == 0.0 and 3.0 < relu[1] < data.max()


def test_two_sided_ranges_are_clipped_per_side_or_symmetric():
    rng = np.random.default_rng(1)
    silu_like = np.concatenate([-0.2 * rng.random(50_000), 6 * rng.random(50_000)]).astype(np.float32)
    lo, hi = _fed("entropy", [silu_like]).compute_range()
    assert lo == pytest.approx(silu_like.min()) and hi <= silu_like.max()
    lo, hi = _fed("entropy", [silu_like], symmetric=True).compute_range()
    assert lo == -hi and hi <= silu_like.max()  # (-t, t), not clipped to the short negative side
    lo, hi = _fed("percentile", [silu_like], percentile=99.0, symmetric=True).compute_range()
    assert lo == -hi and hi <= silu_like.max()


def test_observer_settings_are_checked():
    with pytest.raises(UserError, match="percentile"):
        make_observer("percentile", percentile=40)
    with pytest.raises(TypeError, match="percentile"):
        make_observer("entropy", percentile=99.0)  # no such setting
    with pytest.raises(TypeError, match="'lo'"):
        make_observer("minmax", lo=1.0)  # state, not settings
    with pytest.raises(UserError, match="^unknown calibration method 'kl'; known: minmax, moving-minmax, percentile, entropy, mse$"):
        factory_for("kl")
    with pytest.raises(UserError, match="^MSE calibration supports uint8, int8, float8e4m3fn, float8e5m2, not 'float8'$"):
        make_observer("mse", dtype="float8")
    # The percentile lies in (50, 100]
    for bad in (50, 100.5):
        with pytest.raises(UserError, match=f"^percentile must be in \\(50, 100\\], not {bad}$"):
            PercentileObserver(bad)
        with pytest.raises(UserError, match=f"^percentile must be in \\(50, 100\\], not {bad}$"):
            Percentile(bad)  # when the factory is made, before any observer is needed
    assert PercentileObserver(50.01).percentile == 50.01 and PercentileObserver(100).percentile == 100.0


# --------------------------------------------------------------------------------------------
# Every observer against a direct numpy computation on the same data

from qonnx.calib.observers import (  # noqa: E402
    FILL_LIMIT,
    MSEObserver,
    finite_part,
)


def off_grid(values: np.ndarray) -> np.ndarray:
    """``values`` (|x| < 8) moved to the nearest odd multiple of 2**-20, exact in float32.

    No such value lies on the edge of a histogram bin (widths are powers of two >= 2**-19 here),
    so numpy's half-open bins and the histogram's floor agree for negative values too.
    """
    odd = 2 * np.floor(np.asarray(values, np.float64) * 2**19) + 1
    return (odd * 2.0**-20).astype(np.float32)


def test_minmax_is_numpy_min_and_max_of_the_finite_values():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(50).astype(np.float32) * s for s in (1, 3, 0.5)]
    batches[1][[3, 7]] = [np.nan, -np.inf]
    batches[2][0] = 3.4e38
    observer = MinMaxObserver()
    for batch in batches:
        observer.update(batch)
    data = np.concatenate(batches)
    finite = data[np.isfinite(data) & (np.abs(data) < 1e30)]
    assert observer.compute_range() == (float(finite.min()), float(finite.max()))
    assert observer.count == finite.size == 147 and observer.nonfinite == 3
    assert observer.resolution == 0.0  # exact extremes
    twin = MinMaxObserver.from_dict(observer.to_dict())
    assert twin == observer and twin.to_dict()["count"] == 147 and twin.to_dict()["nonfinite"] == 3


def test_finite_part_drops_non_finite_and_fill_values():
    values, dropped = finite_part(np.array([[1.0, np.nan], [-2.0, 1e30], [-1e30, 5e29]], np.float32))
    # 1e30 in magnitude is the fill limit (float32); 5e29 stays
    assert values.tolist() == [1.0, -2.0, np.float32(5e29)] and dropped == 3
    assert FILL_LIMIT == np.float32(1e30)
    values, dropped = finite_part(np.array([[0.5], [-0.25]], np.float64))  # all finite: the fast path
    assert values.dtype == np.float32 and values.shape == (2,) and values.tolist() == [0.5, -0.25] and dropped == 0
    values, dropped = finite_part(np.array([1.0, 1e30], np.float32))  # the fill limit itself is a fill value
    assert values.tolist() == [1.0] and dropped == 1
    values, dropped = finite_part(np.array([-1e30, 1.0], np.float32))
    assert values.tolist() == [1.0] and dropped == 1
    values, dropped = finite_part(np.zeros((0, 3), np.float32))
    assert values.size == 0 and dropped == 0
    values, dropped = finite_part(np.array([np.nan, np.inf], np.float32))
    assert values.size == 0 and dropped == 2


def test_moving_average_is_not_the_global_range():
    # c = 0.5 by hand. Batch 1: min 0, max 1 → (0, 1). Batch 2: min -1, max 3 →
    # lo = 0 + 0.5 (-1 - 0) = -0.5, hi = 1 + 0.5 (3 - 1) = 2. Batch 3: min 0, max 2 →
    # lo = -0.5 + 0.5 (0 + 0.5) = -0.25, hi = 2 + 0.5 (2 - 2) = 2. The global range is (-1, 3).
    batches = [np.array([0.0, 1.0], np.float32), np.array([-1.0, 3.0, 0.5], np.float32), np.array([0.0, 2.0], np.float32)]
    observer = MovingAverageMinMaxObserver(averaging_constant=0.5)
    for batch in batches:
        observer.update(batch)
    assert observer.compute_range() == (-0.25, 2.0)  # sums of halves: exact in binary
    assert observer.batches == 3
    plain = MinMaxObserver()
    for batch in batches:
        plain.update(batch)
    assert plain.compute_range() == (-1.0, 3.0) != observer.compute_range()


def test_moving_average_with_the_default_constant():
    # c = 0.01: (-1, 1), then a batch (-3, 5): lo = -1 + 0.01 (-3 + 1) = -1.02, hi = 1 + 0.01 (5 - 1)
    # = 1.04 (float64 rounding only: 1e-12 absolute).
    observer = make_observer("moving-minmax")
    observer.update(np.array([-1.0, 1.0, np.nan], np.float32))
    observer.update(np.array([-3.0, 5.0], np.float32))
    lo, hi = observer.compute_range()
    assert lo == pytest.approx(-1.02, abs=1e-12) and hi == pytest.approx(1.04, abs=1e-12)
    assert observer.settings() == {"averaging_constant": 0.01}
    # A batch with nothing finite is counted in nonfinite (1 + 2) and moves nothing
    observer.update(np.array([np.nan, np.inf], np.float32))
    assert observer.compute_range() == (lo, hi) and observer.batches == 2 and observer.nonfinite == 3
    # A constant of 1 follows the latest batch: (-3, 5)
    last = MovingAverageMinMaxObserver(averaging_constant=1.0)
    for batch in ([-1.0, 1.0], [-3.0, 5.0]):
        last.update(np.array(batch, np.float32))
    assert last.compute_range() == (-3.0, 5.0)


def test_moving_average_merge_weights_by_batches():
    # a: three batches of c = 0.5 → (-0.25, 2) (above); b: one batch → (-4, 8).
    # merged lo = (3 · -0.25 + 1 · -4) / 4 = -1.1875, hi = (3 · 2 + 1 · 8) / 4 = 3.5
    a = MovingAverageMinMaxObserver(averaging_constant=0.5)
    for batch in ([0.0, 1.0], [-1.0, 3.0, 0.5], [0.0, 2.0]):
        a.update(np.array(batch, np.float32))
    b = MovingAverageMinMaxObserver(averaging_constant=0.5)
    b.update(np.array([-4.0, 8.0, np.nan], np.float32))
    a.merge(b)
    assert a.compute_range() == (-1.1875, 3.5) and a.batches == 4 and a.nonfinite == 1
    # Into an empty observer: the other's averages; an empty other changes nothing
    empty = MovingAverageMinMaxObserver(averaging_constant=0.5)
    empty.merge(b)
    assert empty.compute_range() == (-4.0, 8.0) and empty.batches == 1
    empty.merge(MovingAverageMinMaxObserver(averaging_constant=0.5))
    assert empty.compute_range() == (-4.0, 8.0) and empty.batches == 1
    with pytest.raises(ValueError, match="no finite values"):
        MovingAverageMinMaxObserver().compute_range()
    twin = MovingAverageMinMaxObserver.from_dict(a.to_dict())
    assert twin == a and a.to_dict()["observer"] == "moving-minmax"
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(UserError, match="averaging_constant"):
            MovingAverageMinMaxObserver(averaging_constant=bad)


def test_percentile_of_1_to_100_by_hand():
    # 1..100 over 4096 bins: width 1/32 (1/64 would need floor(100·64) - floor(64) = 6336 bins).
    # P = 90: hi = the bin of the 90th value (90) rounded up, 90 + 1/32; lo = the bin of the
    # 10th value (10) rounded down, 10.
    observer = PercentileObserver(90)
    observer.update(np.arange(1, 101, dtype=np.float32))
    assert observer.resolution == 1 / 32
    assert observer.compute_range() == (10.0, 90.03125)
    # Symmetric: magnitudes 1..100 as well, t = 90.03125, range (-t, t) whatever the signs
    symmetric = PercentileObserver(90, symmetric=True)
    symmetric.update(np.arange(1, 101, dtype=np.float32))
    assert symmetric.compute_range() == (-90.03125, 90.03125)


def test_symmetric_percentile_is_minus_t_to_t():
    # Magnitudes of -20..-1 and 1..100: 1..20 twice (40 values) then 21..100 (80): N = 120.
    # P = 90: the 108th magnitude is 21 + (108 - 41) = 88; the grid of [-20, 100] has width 1/32
    # (1/64 needs 6400 + 1280 = 7680 bins), so t = 88 + 1/32 and the range is (-t, t), not
    # (-20, t): symmetric means symmetric.
    data = np.concatenate([-np.arange(1, 21), np.arange(1, 101)]).astype(np.float32)
    observer = PercentileObserver(90, symmetric=True)
    observer.update(data)
    assert observer.compute_range() == (-88.03125, 88.03125)
    # P = 100: t = max|x| = 100
    full = PercentileObserver(100, symmetric=True)
    full.update(data)
    assert full.compute_range() == (-100.0, 100.0)
    two_sided = PercentileObserver(100)
    two_sided.update(data)
    assert two_sided.compute_range() == (-20.0, 100.0)


def test_percentile_when_the_last_counter_is_full():
    # 0..127 over 128 bins: width 1 (width 1/2 needs 254 bins), one value per bin, the last bin
    # [127, 128) holding 127. P = 90: the 115.2th value is the 116th, 115, rounded up to 116; the
    # 12.8th is the 13th, 12, rounded down to 12.
    observer = PercentileObserver(90, bins=128)
    observer.update(np.arange(128, dtype=np.float32))
    assert observer.resolution == 1.0 and observer.histogram.counts[-1] == 1
    assert observer.compute_range() == (12.0, 116.0)
    assert np.percentile(np.arange(128), 90, method="inverted_cdf") == 115


def test_symmetric_threshold_is_capped_at_the_largest_magnitude():
    # [-5, 1]: P = 100 puts t at the top of the bin of |x| = 5, and an entropy search with as many
    # levels as bins keeps them all (t = n·w >= 5); capped at max|x| = 5, not at max = 1.
    entropy = {"quantized_bins": 64, "fine_bins": 64, "bins": 64}
    for method, settings in (("percentile", {"percentile": 100.0}), ("entropy", entropy)):
        observer = make_observer(method, symmetric=True, **settings)
        observer.update(np.array([-5.0, -1.0, 0.5, 1.0], np.float32))
        assert observer.compute_range() == (-5.0, 5.0), method


@pytest.mark.parametrize("p", [90.0, 99.0, 99.9])
def test_percentile_is_numpy_percentile_within_one_bin(p):
    # N = 20001 (q·N is not an integer, so no tie between two definitions of the quantile).
    rng = np.random.default_rng(4)
    data = np.concatenate([rng.standard_normal(20_000) * 2 - 1, [40.0]]).astype(np.float32)
    observer = PercentileObserver(p)
    observer.update(data)
    lo, hi = observer.compute_range()
    w = observer.resolution
    # inverted_cdf: the smallest value with at least that fraction of the data at or below it;
    # the observer rounds outwards to the edge of its bin, so it is at most one bin width out.
    upper = np.percentile(data, p, method="inverted_cdf")
    lower = np.percentile(data, 100 - p, method="inverted_cdf")
    assert upper < hi <= upper + w and lower - w < lo <= lower
    # Never more clipped than P says: at most (100 - P)% of the values lie outside on each side
    assert np.mean(data > hi) <= (100 - p) / 100 and np.mean(data < lo) <= (100 - p) / 100


@pytest.mark.parametrize("p", [90.0, 99.9])
def test_symmetric_percentile_is_numpy_percentile_of_magnitudes_within_one_bin(p):
    rng = np.random.default_rng(8)
    data = off_grid(np.concatenate([rng.uniform(-1, 0, 5_001), rng.uniform(0, 7, 5_000)]))
    observer = PercentileObserver(p, symmetric=True)
    observer.update(data)
    lo, hi = observer.compute_range()
    t = np.percentile(np.abs(data), p, method="inverted_cdf")
    assert lo == -hi and t < hi <= t + observer.resolution  # within one bin of the exact quantile
    assert lo < data.min()  # symmetric: not clipped to the short negative side


def _folded_reference(data: np.ndarray, observer, max_bins: int) -> tuple[np.ndarray, float]:
    """|x| counted by numpy on the observer's grid, coarsened to at most ``max_bins`` bins."""
    h = observer.histogram
    n, w = max(-h.start, h.start + h.bins), h.width  # the magnitude bins the grid reaches
    while n > max_bins:
        n, w = -(-n // 2), 2 * w
    return np.histogram(np.abs(data).astype(np.float64), np.arange(n + 1) * w)[0], w


@pytest.mark.parametrize("symmetric", [False, True])
def test_entropy_is_the_candidate_loop_on_numpy_counts(symmetric):
    rng = np.random.default_rng(6)
    data = off_grid(np.concatenate([rng.laplace(0.5, 0.4, 3000), -rng.exponential(0.2, 500)]).clip(-7.9, 7.9))
    observer = EntropyObserver(quantized_bins=8, fine_bins=48, symmetric=symmetric, bins=128)
    observer.update(data)
    counts, w = _folded_reference(data, observer, 48)
    t = _kl_reference(counts, 8) * w  # TensorRT's search, one candidate at a time (above)
    assert t < np.abs(data).max()  # the search clips here
    expected = (-t, t) if symmetric else (max(float(data.min()), -t), min(float(data.max()), t))
    assert observer.compute_range() == expected  # the same products of powers of two: exact


def test_entropy_with_default_settings_is_the_candidate_loop():
    rng = np.random.default_rng(9)
    data = off_grid(np.concatenate([np.abs(rng.standard_normal(20_000)), [7.5]]))
    observer = EntropyObserver()
    observer.update(data)
    assert observer.settings() == {"quantized_bins": 128, "fine_bins": 2048, "symmetric": False, "bins": 4096}
    counts, w = _folded_reference(data, observer, 2048)
    t = _kl_reference(counts, 128) * w
    assert observer.compute_range() == (float(data.min()), t)
    with pytest.raises(UserError, match="quantized_bins"):
        EntropyObserver(quantized_bins=1)
    with pytest.raises(UserError, match="quantized_bins"):
        EntropyObserver(quantized_bins=65, fine_bins=64)
    assert EntropyObserver(quantized_bins=2).quantized_bins == 2 and EntropyObserver(quantized_bins=64, fine_bins=64).fine_bins == 64


def _mse_reference(data: np.ndarray, observer: MSEObserver) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate ``(lo, hi)`` and its expected squared error, by a loop over candidates.

    Counts from numpy on the observer's grid, each bin at its centre (clipped into [min, max]);
    a centre outside the candidate range costs its squared distance, one inside ``step² / 12``.
    """
    h = observer.histogram
    edges = (np.arange(h.bins + 1) + h.start) * h.width
    counts = np.histogram(data.astype(np.float64), edges)[0].astype(np.float64)
    centres = np.clip((edges[:-1] + edges[1:]) / 2, data.min(), data.max())
    los, his, errors = [], [], []
    for k in range(1, observer.steps + 1):
        alpha = k / observer.steps
        if observer.dtype == "int8":
            m = float(np.abs(data).max())
            lo, hi, levels = -alpha * m, alpha * m, 255
        else:
            lo, hi, levels = alpha * min(float(data.min()), 0.0), alpha * max(float(data.max()), 0.0), 256
        step = (hi - lo) / (levels - 1)
        distance = np.where(centres < lo, lo - centres, np.where(centres > hi, centres - hi, 0.0))
        inside = (centres >= lo) & (centres <= hi)
        errors.append(float(np.sum(counts * np.where(inside, step**2 / 12, distance**2))))
        los.append(lo)
        his.append(hi)
    return np.array(los), np.array(his), np.array(errors)


def _mse_data(shape: str) -> np.ndarray:
    rng = np.random.default_rng(12)
    data = np.concatenate([rng.standard_normal(30_000), rng.standard_normal(30) * 8])
    return {
        "two-sided": data,
        "post-relu": np.maximum(data, 0),  # min exactly 0
        "positive": 0.5 + np.abs(data),  # min in (0, 1): the UINT8 range still reaches down to 0
        "negative": -0.5 - np.abs(data),  # max in (-1, 0): the range reaches up to 0
        "small": 0.05 * data,  # |x| < 1
    }[shape].astype(np.float32)


MSE_SHAPES = ["two-sided", "post-relu", "positive", "negative", "small"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("shape", MSE_SHAPES)
@pytest.mark.parametrize("bins", [32, 4096])
def test_mse_error_of_every_candidate_is_the_brute_force_sum(dtype, shape, bins):
    data = _mse_data(shape)
    observer = MSEObserver(dtype=dtype, steps=64, bins=bins)
    observer.update(data)
    los, his, errors = _mse_reference(data, observer)
    lo, hi, error = observer.candidates()
    assert np.array_equal(lo, los) and np.array_equal(hi, his)  # the same products k / steps · bound
    # Prefix sums subtract large sums: absolute rounding up to ~1e-16 of Σ n c² per operation.
    h = observer.histogram
    centres = np.clip((np.arange(h.bins) + h.start + 0.5) * h.width, data.min(), data.max())
    scale = float(np.sum(h.counts * centres**2))
    np.testing.assert_allclose(error, errors, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("shape", MSE_SHAPES)
def test_mse_is_the_brute_force_minimum_over_candidate_ranges(dtype, shape):
    data = _mse_data(shape)
    observer = MSEObserver(dtype=dtype, steps=64)
    observer.update(data)
    los, his, errors = _mse_reference(data, observer)
    # Prefix sums and the loop round differently: candidates within 1e-9 relative of the
    # smallest error are equally good.
    best = errors.min()
    good = {(lo, hi) for lo, hi, e in zip(los, his, errors) if e <= best * (1 + 1e-9)}
    lo, hi = observer.compute_range()
    expected_lo, expected_hi = los[np.argmin(errors)], his[np.argmin(errors)]
    assert (lo, hi) in {(max(a, float(data.min())), min(b, float(data.max()))) for a, b in good}
    # The argmin itself (rel 1e-12: the same float64 products), put inside the observed range
    assert hi == pytest.approx(min(expected_hi, float(data.max())), rel=1e-12)
    assert lo == pytest.approx(max(expected_lo, float(data.min())), rel=1e-12)
    assert max(-lo, hi) == pytest.approx(max(-expected_lo, expected_hi), rel=1e-12)  # what a symmetric target takes
    if shape in ("two-sided", "post-relu", "small"):
        assert max(-lo, hi) < np.abs(data).max()  # the outliers are clipped
    if shape == "post-relu":
        assert lo == 0.0


def test_mse_settings_and_round_trip():
    observer = make_observer("mse", dtype="int8")
    assert observer.settings() == {"dtype": "int8", "steps": 256, "bins": 4096}
    observer.update(np.linspace(-1, 1, 101, dtype=np.float32))
    twin = observer_from_dict(observer.to_dict())
    assert type(twin) is MSEObserver and twin == observer and twin.compute_range() == observer.compute_range()
    assert MSEObserver().dtype == "uint8"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_minmax_is_numpy_per_channel_extremes(axis):
    rng = np.random.default_rng(axis)
    first = rng.standard_normal((3, 4, 5)).astype(np.float32)
    second = (rng.standard_normal((3, 4, 5)) * 3).astype(np.float32)
    first[0, 0, 0], first[1, 2, 3], second[2, 3, 4] = np.nan, -np.inf, -3.4e38
    observer = PerChannelMinMaxObserver(axis)
    observer.update(first)
    observer.update(second)
    both = np.stack([first, second])
    kept = np.isfinite(both) & (np.abs(both) < 1e30)
    others = tuple(i for i in range(4) if i != axis + 1)
    lo, hi = observer.compute_range()
    assert np.array_equal(lo, np.where(kept, both, np.inf).min(axis=others))
    assert np.array_equal(hi, np.where(kept, both, -np.inf).max(axis=others))
    assert lo.dtype == hi.dtype == np.float64 and lo.shape == hi.shape == (both.shape[axis + 1],) and observer.nonfinite == 3
    # The other order (each batch holds some channels' extremes): the same
    reverse = PerChannelMinMaxObserver(axis)
    reverse.update(second)
    reverse.update(first)
    assert np.array_equal(reverse.compute_range()[0], lo) and np.array_equal(reverse.compute_range()[1], hi)
    assert observer.settings() == {"axis": axis}
    # Merge: as if one observer saw both
    a, b = PerChannelMinMaxObserver(axis), PerChannelMinMaxObserver(axis)
    a.update(first)
    b.update(second)
    a.merge(b)
    assert np.array_equal(a.compute_range()[0], lo) and np.array_equal(a.compute_range()[1], hi) and a.nonfinite == 3
    c = PerChannelMinMaxObserver(axis)  # the other way round
    c.update(second)
    c.merge(PerChannelMinMaxObserver.from_dict(PerChannelMinMaxObserver(axis).to_dict()))
    first_only = PerChannelMinMaxObserver(axis)
    first_only.update(first)
    c.merge(first_only)
    assert np.array_equal(c.compute_range()[0], lo) and np.array_equal(c.compute_range()[1], hi)
    empty = PerChannelMinMaxObserver(axis)
    empty.merge(b)
    assert np.array_equal(empty.compute_range()[1], b.compute_range()[1])
    b.merge(PerChannelMinMaxObserver(axis))
    assert np.array_equal(empty.compute_range()[0], b.compute_range()[0]) and b.nonfinite == 1
    twin = observer_from_dict(observer.to_dict())
    assert type(twin) is PerChannelMinMaxObserver and twin.axis == axis and twin.nonfinite == 3
    assert np.array_equal(twin.compute_range()[0], lo) and np.array_equal(twin.compute_range()[1], hi)


def test_per_channel_minmax_refuses_what_it_cannot_answer():
    observer = PerChannelMinMaxObserver(0)
    with pytest.raises(ValueError, match="^a channel held no finite value$"):
        observer.compute_range()
    observer.update(np.array([[1.0, np.nan], [np.nan, np.inf]], np.float32))  # channel 1: nothing finite
    with pytest.raises(ValueError, match="^a channel held no finite value$"):
        observer.compute_range()
    with pytest.raises(ValueError, match="3 channels along axis 0, 2 before"):
        observer.update(np.zeros((3, 2), np.float32))
    empty = observer_from_dict(PerChannelMinMaxObserver(1).to_dict())
    assert empty.lo is None and empty.axis == 1 and empty.nonfinite == 0
    hollow = PerChannelMinMaxObserver(0)
    hollow.update(np.zeros((3, 0), np.float32))  # three channels of no elements
    with pytest.raises(ValueError, match="a channel held no finite value"):
        hollow.compute_range()


def test_per_channel_minmax_defaults_and_conversions():
    # Axis 0 by default (weights [out, in, ...]); negative axes count from the end.
    w = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -6.0]], np.float32)
    observer = PerChannelMinMaxObserver()
    observer.update(w)
    assert observer.compute_range()[0].tolist() == [-2.0, -6.0] and observer.compute_range()[1].tolist() == [3.0, 4.0]
    last = PerChannelMinMaxObserver(-1)
    last.update(w)
    assert last.compute_range()[0].tolist() == [0.5, -2.0, -6.0]
    # Values are float32 first, as weights are: float64 1e30 becomes float32(1e30), the fill
    # limit, and is dropped like -1e30; float64 1e-50 becomes 0.
    fills = PerChannelMinMaxObserver(0)
    fills.update(np.array([[1e30, 2.0], [-1e30, 1e-50]], np.float64))
    assert fills.nonfinite == 2 and fills.compute_range()[1].tolist() == [2.0, 0.0]
    # A range table written elsewhere may hold integers: the ranges are floats all the same
    loaded = observer_from_dict({"observer": "per-channel-minmax", "axis": 0, "lo": [0, -1], "hi": [2, 3], "nonfinite": 0})
    lo, hi = loaded.compute_range()
    assert lo.dtype == hi.dtype == np.float64 and lo.tolist() == [0.0, -1.0] and hi.tolist() == [2.0, 3.0]


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histogram_observers_count_non_finite_values_and_bin_the_rest(method):
    data = np.array([0.5, np.nan, -1.0, np.inf, 2.0, -3.4e38, 0.75], np.float32)
    observer = make_observer(method, bins=64)
    observer.update(data)
    observer.update(np.array([np.nan], np.float32))
    finite = np.array([0.5, -1.0, 2.0, 0.75], np.float32)
    assert observer.nonfinite == 4 and observer.count == 4
    h = observer.histogram
    edges = (np.arange(65) + h.start) * h.width
    assert np.array_equal(h.counts, np.histogram(finite.astype(np.float64), edges)[0])
    assert observer.resolution == h.width > 0
    twin = observer_from_dict(observer.to_dict())
    assert twin == observer and twin.nonfinite == 4 and twin.settings() == observer.settings()
    other = make_observer(method, bins=64)
    other.update(np.array([np.inf, 3.0], np.float32))
    observer.merge(other)
    assert observer.nonfinite == 5 and observer.count == 5 and observer.histogram.hi == 3.0
    assert observer.__eq__(MinMaxObserver()) is NotImplemented


def test_every_method_has_a_factory_of_its_observer():
    assert list(FACTORIES) == list(OBSERVERS) == ["minmax", "moving-minmax", "percentile", "entropy", "mse"]
    for method in OBSERVERS:
        assert factory_for(method) is FACTORIES[method] and FACTORIES[method].method == method
        observer = make_observer(method)
        assert type(observer) is OBSERVERS[method] and observer.name == method
        assert type(make_observer(method, **observer.settings())) is type(observer)
        # The factory's defaults are the observer's
        assert observer.settings() == OBSERVERS[method]().settings()
    assert type(make_observer("minmax")) is MinMaxObserver


def test_kl_search_of_short_or_empty_histograms_keeps_every_bin():
    # Nothing to merge (n <= quantized_bins) or nothing counted: all n bins are kept.
    assert kl_threshold_bins(np.array([3, 0, 1, 2]), 8) == 4
    assert kl_threshold_bins(np.arange(8), 8) == 8
    assert kl_threshold_bins(np.zeros(200, np.int64), 8) == 200
    # Everything in the first bin: keeping 1, 2, 3 or 4 bins all lose nothing (divergence 0), but
    # the candidates start at quantized_bins = 2, the fewest bins that hold both levels.
    assert kl_threshold_bins(np.array([5, 0, 0, 0]), 2) == 2 == _kl_reference(np.array([5, 0, 0, 0]), 2)


def test_kl_search_by_hand():
    # h = [4, 4, 0, 1], 2 levels. i = 2: P = [4, 5] (the outlier bins added to the last),
    # Q = [4, 4] → KL = 4/9 log((4/9)/(1/2)) + 5/9 log((5/9)/(1/2)) = 0.00619. i = 3: P = [4, 4, 1],
    # groups {0, 1} and {2} (floor(j · 2 / 3)): Q = [4, 4, 0] spread over the non-zero P bins; P's
    # last bin 1 has q = 0 → infinite. i = 4: groups {0, 1}, {2, 3}: Q = [4, 4, 0, 1] → KL = 0.
    assert kl_threshold_bins(np.array([4, 4, 0, 1]), 2) == 4
    # h = [6, 2, 1, 1], 2 levels. i = 2: P = [6, 4] / 10, Q = [6, 2] / 8 → 0.6 log(0.6/0.75) +
    # 0.4 log(0.4/0.25) = 0.05412. i = 3: P = [6, 2, 2] / 10, Q = [4, 4, 1] / 9 → 0.13792.
    # i = 4: P = [6, 2, 1, 1] / 10, Q = [4, 4, 1, 1] / 10 → 0.6 log 1.5 + 0.2 log 0.5 = 0.10465.
    # Two bins win: the two outlier bins are clipped into the second.
    assert kl_threshold_bins(np.array([6, 2, 1, 1]), 2) == 2
    assert _kl_reference(np.array([6, 2, 1, 1]), 2) == 2


@pytest.mark.parametrize("method", list(OBSERVERS))
def test_merge_adds_the_non_finite_counts_and_dicts_name_their_observer(method):
    a, b = make_observer(method), make_observer(method)
    a.update(np.array([1.0, np.nan], np.float32))
    b.update(np.array([2.0, np.inf, -np.inf], np.float32))
    a.merge(b)
    assert a.nonfinite == 3  # 1 + 2
    data = a.to_dict()
    assert data["observer"] == method
    twin = observer_from_dict(json.loads(json.dumps(data)))  # through JSON, as in a range table
    assert type(twin) is type(a) and twin.compute_range() == a.compute_range() and twin.nonfinite == 3


def test_kl_search_ties_and_candidates_past_the_last_bin():
    # A flat histogram with one level: keeping 1 bin (everything merged into it) and keeping all
    # 53 (P and Q both flat) both have divergence 0, up to rounding of sums near 6000 log 6000;
    # the tie goes to the fewest bins.
    flat = np.full(53, 116)
    assert kl_threshold_bins(flat, 1) == 1 == _kl_reference(flat, 1)
    # Here the winner keeps a trailing empty bin: with 8 bins the groups are {0, 1, 2}, {3, 4, 5},
    # {6, 7}, and the empty last bin is no outlier bin (nothing lies beyond it), so it does not
    # count among the bins its group's mass is spread over. The candidate loop agrees.
    h = np.array([0, 2, 3, 0, 0, 2, 4, 0])
    assert kl_threshold_bins(h, 3) == 8 == _kl_reference(h, 3)
    # Weights below 1 count with their negative p log p: taking them as 0 would pick 3 bins here.
    weighted = np.array([0.0, 1.0, 7.5, 0.25, 0.25, 0.0, 0.0, 40.0, 0.0])
    assert kl_threshold_bins(weighted, 3) == 8 == _kl_reference(weighted, 3)


def test_kl_search_defaults_to_128_levels():
    # TensorRT's 128 levels by default: an exponential histogram of |x| with a few far outliers,
    # where 128 and 129 levels choose different thresholds (the candidate loop agrees on 128).
    rng = np.random.default_rng(0)
    h = rng.poisson(np.exp(-np.arange(400) / 40.0) * 200).astype(float)
    h[rng.integers(300, 400)] += 3
    assert kl_threshold_bins(h) == kl_threshold_bins(h, 128) == _kl_reference(h, 128)
    assert kl_threshold_bins(h, 129) != kl_threshold_bins(h, 128)


# --------------------------------------------------------------------------------------------
# The factories, one per method, and the abstract base

import dataclasses  # noqa: E402

from qonnx.calib.observers import (  # noqa: E402
    MSE,
    Entropy,
    HistogramObserver,
    MinMax,
    MovingAverageMinMax,
    Observer,
    ObserverFactory,
)


@pytest.mark.parametrize(
    ("factory", "observer_class", "expected"),
    [
        (MinMax(), MinMaxObserver, {}),
        (MovingAverageMinMax(), MovingAverageMinMaxObserver, {"averaging_constant": 0.01}),
        (MovingAverageMinMax(0.5), MovingAverageMinMaxObserver, {"averaging_constant": 0.5}),
        (Percentile(), PercentileObserver, {"percentile": 99.99, "symmetric": False, "bins": 4096}),
        (Percentile(99.5, True, 64), PercentileObserver, {"percentile": 99.5, "symmetric": True, "bins": 64}),
        (Entropy(), EntropyObserver, {"quantized_bins": 128, "fine_bins": 2048, "symmetric": False, "bins": 4096}),
        (Entropy(8, 48, True, 128), EntropyObserver, {"quantized_bins": 8, "fine_bins": 48, "symmetric": True, "bins": 128}),
        (MSE(), MSEObserver, {"dtype": "uint8", "steps": 256, "bins": 4096}),
        (MSE("int8", 64, 32), MSEObserver, {"dtype": "int8", "steps": 64, "bins": 32}),
        (MSE(dtype="int8"), MSEObserver, {"dtype": "int8", "steps": 256, "bins": 4096}),
    ],
    ids=repr,
)
def test_a_factory_makes_empty_observers_of_its_method_and_settings(factory, observer_class, expected):
    first, second = factory.new(), factory()
    assert type(first) is type(second) is observer_class and first is not second
    assert first.name == factory.method == observer_class.name
    assert first.settings() == second.settings() == expected
    assert dataclasses.asdict(factory) == expected  # the factory's fields are the settings, in order
    assert observer_class(**expected).settings() == expected  # and rebuild the observer directly
    # Each observer is new and empty: what one saw is not in the next
    first.update(np.array([2.0, np.nan, -2.0], np.float32))
    assert first.compute_range() == (-2.0, 2.0) and first.nonfinite == 1
    third = factory.new()
    assert third.nonfinite == 0 and third.to_dict() == observer_class(**expected).to_dict()
    with pytest.raises(ValueError, match="^no finite values observed$"):
        third.compute_range()


def test_factories_are_frozen_values():
    assert Percentile(99.9) == Percentile(percentile=99.9) != Percentile(99.0)
    assert hash(MSE("int8")) == hash(MSE(dtype="int8")) and MinMax() == MinMax()
    assert Percentile(100).new().settings()["percentile"] == 100.0  # the observer's float
    with pytest.raises(dataclasses.FrozenInstanceError):
        Percentile().percentile = 90.0
    assert isinstance(Percentile(), ObserverFactory) and callable(Percentile())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Percentile(40), r"^percentile must be in \(50, 100\], not 40$"),
        (lambda: Percentile(100.5), r"^percentile must be in \(50, 100\], not 100.5$"),
        (lambda: MovingAverageMinMax(0.0), r"^averaging_constant must be in \(0, 1\], not 0.0$"),
        (lambda: MovingAverageMinMax(1.5), r"^averaging_constant must be in \(0, 1\], not 1.5$"),
        (lambda: Entropy(quantized_bins=1), r"^quantized_bins must be in \[2, fine_bins=2048\], not 1$"),
        (lambda: Entropy(quantized_bins=65, fine_bins=64), r"^quantized_bins must be in \[2, fine_bins=64\], not 65$"),
        (lambda: MSE(dtype="float8"), r"^MSE calibration supports uint8, int8, float8e4m3fn, float8e5m2, not 'float8'$"),
        (lambda: factory_for("kl"), r"^unknown calibration method 'kl'; known: minmax, moving-minmax, percentile, entropy, mse$"),
    ],
)
def test_a_bad_setting_fails_when_the_factory_is_made(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_a_setting_of_another_method_is_no_keyword():
    with pytest.raises(TypeError, match="percentile"):
        Entropy(percentile=99.0)
    with pytest.raises(TypeError, match="dtype"):
        Percentile(dtype="int8")
    with pytest.raises(TypeError):
        MinMax(99.0)
    assert factory_for("entropy") is Entropy and factory_for("mse") is MSE and factory_for("minmax") is MinMax
    assert factory_for("percentile") is Percentile and factory_for("moving-minmax") is MovingAverageMinMax


_OBSERVER_METHODS = ["update", "merge", "compute_range", "settings", "to_dict", "from_dict"]


def _observer_without(missing: str | None) -> type:
    """A subclass of Observer that gives every required method but ``missing`` (None: all of them)."""
    body = {
        "update": lambda self, batch: None,
        "merge": lambda self, other: None,
        "compute_range": lambda self: (0.0, 1.0),
        "settings": lambda self: {},
        "to_dict": lambda self: {},
        "from_dict": classmethod(lambda cls, data: cls()),
    }
    body.pop(missing, None)
    return type(f"Without_{missing}", (Observer,), body)


def test_observer_is_an_abstract_base():
    with pytest.raises(TypeError, match="abstract"):
        Observer()
    with pytest.raises(TypeError, match="abstract.*_range"):
        HistogramObserver(64)  # a histogram method gives _range
    assert sorted(Observer.__abstractmethods__) == sorted(_OBSERVER_METHODS)
    assert HistogramObserver.__abstractmethods__ == {"_range"}
    complete = _observer_without(None)()  # every method given: it can be made
    assert complete.compute_range() == (0.0, 1.0) and complete.resolution == 0.0 and complete.nonfinite == 0


@pytest.mark.parametrize("missing", _OBSERVER_METHODS)
def test_an_observer_without_a_required_method_cannot_be_made(missing):
    with pytest.raises(TypeError, match=f"abstract.*{missing}"):
        _observer_without(missing)()


def test_an_observer_factory_must_give_new():
    with pytest.raises(TypeError, match="abstract.*new"):
        ObserverFactory()

    @dataclasses.dataclass(frozen=True)
    class NoNew(ObserverFactory):
        method = "none"

    with pytest.raises(TypeError, match="abstract.*new"):
        NoNew()
