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
