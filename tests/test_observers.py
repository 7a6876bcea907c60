"""Observers and range collection."""

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
    with pytest.raises(ValueError):
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
    assert table["y"] == TensorRange(float(ys.min()), float(ys.max()), 0)
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
    OBSERVERS,
    EntropyObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    PercentileObserver,
    kl_threshold_bins,
    make_observer,
    observer_from_dict,
)

HISTOGRAM_METHODS = ["percentile", "entropy", "mse"]
EXACT_MERGE_METHODS = ["minmax", *HISTOGRAM_METHODS]
# Values over many magnitudes; small arrays keep the examples fast.
values = st.one_of(st.floats(-1e6, 1e6, width=32), st.floats(-1.0, 1.0, width=32), st.sampled_from([0.0, -0.0]))
streams = st.lists(arrays(np.float32, st.integers(1, 40), elements=values), min_size=1, max_size=4)
FAST = settings(max_examples=40, deadline=None)


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
    with pytest.raises(ValueError):
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
@given(arrays(np.int64, st.integers(9, 60), elements=st.integers(0, 50)), st.integers(2, 8))
def test_vectorized_kl_search_matches_the_candidate_loop(histogram, quantized_bins):
    # Tolerance: both break ties (divergences within 1e-9, the rounding of a sum of ~60 logs) towards fewer bins.
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
    assert lo == -hi or (lo, hi) == (silu_like.min(), silu_like.max())


def test_observer_settings_are_checked():
    with pytest.raises(UserError, match="percentile"):
        make_observer("percentile", percentile=40)
    with pytest.raises(UserError, match="takes no percentile"):
        make_observer("entropy", percentile=99.0)
    with pytest.raises(UserError, match="unknown calibration method"):
        make_observer("kl")
    with pytest.raises(UserError, match="MSE"):
        make_observer("mse", dtype="float8")
