"""Range collection: batching, variable shapes, the memory budget, the range table."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest

from qonnx.calib.collect import collect_ranges, parse_bytes, plan_groups
from qonnx.calib.observers import MSE, Entropy, MinMax, Percentile
from qonnx.calib.ranges import RangeTable
from qonnx.calib.sources import ImagePreprocess, ListSource, input_specs, open_source
from qonnx.errors import UserError
from qonnx.models import tiny
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline

from conftest import to_ir


def _dynamic_chain():
    proto = tiny.conv_chain(dynamic=True)
    return proto, to_ir(proto)


def _feeds(proto, sizes, seed=0):
    return [tiny.random_feed(proto, seed=seed + i, dims={"n": 1, "h": h, "w": w}) for i, (h, w) in enumerate(sizes)]


def test_parse_bytes_and_plan_groups():
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("512MB") == 512_000_000 and parse_bytes("1.5k") == 1500
    with pytest.raises(UserError, match="size"):
        parse_bytes("lots")
    assert plan_groups({"a": 4, "b": 4, "c": 4, "d": 9}, budget=8) == [["a", "b"], ["c"], ["d"]]
    assert plan_groups({"a": 1, "b": 1}, budget=100) == [["a", "b"]]


@pytest.mark.parametrize("method", [MinMax(), Percentile(), Entropy(), MSE()], ids=lambda f: f.method)
def test_variable_shapes_batches_and_a_split_give_one_table(method):
    proto, model = _dynamic_chain()
    # Three image sizes interleaved: batches of 4 break wherever the shape changes.
    feeds = _feeds(proto, [(8, 8), (8, 8), (12, 16), (12, 16), (12, 16), (8, 8), (20, 4)])
    source = ListSource(feeds, input_specs(model))
    tensors = ["x", "r0", "c1", "y"]
    one = collect_ranges(model, source, tensors, observer=method)
    batched = collect_ranges(model, source, tensors, observer=method, batch_size=4)
    split = collect_ranges(model, source, tensors, observer=method, memory_budget=1024)
    assert split.passes > 1 and one.passes == 1
    assert split.ranges == one.ranges  # histograms do not depend on how the data was cut
    for name in tensors:
        # onnxruntime may round a batched Conv differently; the observers add nothing beyond one bin.
        width = max(one[name].resolution, batched[name].resolution, 1e-6)
        assert abs(batched[name].lo - one[name].lo) <= width and abs(batched[name].hi - one[name].hi) <= width
    assert one.data_hash == batched.data_hash == split.data_hash


def test_channel_means_come_from_the_same_runs_and_match_numpy():
    """Means per channel (for bias correction) of a graph input and an intermediate tensor, the
    latter not calibrated itself, taken in the calibration runs, batched and split alike. Tolerance:
    float64 sums of float32 values, 1e-9 relative."""
    proto, model = _dynamic_chain()
    feeds = _feeds(proto, [(8, 8), (12, 16), (8, 8)])
    source = ListSource(feeds, input_specs(model))
    whole = collect_ranges(model, source, ["x"], channel_means=["x", "r1"])
    split = collect_ranges(model, source, ["x"], channel_means=["x", "r1"], memory_budget=512, batch_size=2)
    expected = np.concatenate([f["x"].transpose(1, 0, 2, 3).reshape(3, -1) for f in feeds], axis=1).astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(whole.channel_means["x"], expected, rtol=1e-9)
    assert set(whole.channel_means) == {"x", "r1"} and len(whole.channel_means["r1"]) == 4
    assert min(whole.channel_means["r1"]) >= 0  # after a Relu
    np.testing.assert_allclose(split.channel_means["r1"], whole.channel_means["r1"], rtol=1e-6)


def test_the_table_records_data_and_observer_settings(tmp_path):
    proto, model = _dynamic_chain()
    feeds = _feeds(proto, [(8, 8)] * 3)
    source = ListSource(feeds, input_specs(model))
    table = collect_ranges(model, source, ["r0"], observer=Percentile(99.0), model_hash="m")
    assert table.method == "percentile" and table.observer == {"percentile": 99.0, "symmetric": False, "bins": 4096}
    assert table["r0"].resolution > 0
    other = collect_ranges(model, ListSource(_feeds(proto, [(8, 8)] * 3, seed=5), input_specs(model)), ["r0"])
    assert other.data_hash != table.data_hash
    assert other.method == "minmax" and other.observer == {}  # MinMax() by default
    # The settings are the observers' own: floats where they are floats, even from an int
    whole = collect_ranges(model, source, ["r0"], observer=Percentile(100))
    assert whole.observer == {"percentile": 100.0, "symmetric": False, "bins": 4096}
    assert isinstance(whole.observer["percentile"], float)
    # Nothing to observe: the settings of an observer all the same
    empty = collect_ranges(model, source, [], observer=MSE(dtype="int8", steps=64))
    assert empty.ranges == {} and empty.method == "mse" and empty.observer == {"dtype": "int8", "steps": 64, "bins": 4096}
    table.save(tmp_path / "r.json")
    assert RangeTable.load(tmp_path / "r.json", model_hash="m") == table


def test_batching_a_static_batch_dimension_is_refused():
    proto = tiny.conv_chain()
    model = to_ir(proto)
    source = ListSource([tiny.random_feed(proto)], input_specs(model))
    with pytest.raises(UserError, match="dynamic first dimension"):
        collect_ranges(model, source, ["x"], batch_size=2)


def test_a_shape_the_model_rejects_names_the_sample():
    proto, model = _dynamic_chain()
    good = _feeds(proto, [(8, 8)])[0]
    bad = {"x": np.zeros((1, 5, 8, 8), np.float32)}  # 5 channels where the Conv has 3
    # A source whose own check lets any channel count through: onnxruntime is the one to refuse.
    source = ListSource([good, bad], [dataclasses.replace(s, shape=("n", "c", "h", "w")) for s in input_specs(model)])
    with pytest.raises(UserError, match="calibration sample 1: onnxruntime failed"):
        collect_ranges(model, source, ["r0"])


def test_a_nan_only_tensor_is_a_user_error():
    proto, model = _dynamic_chain()
    # The collector's own check, for tensors a model computes as non-finite: the sources refuse
    # non-finite inputs, so the NaN feed is put in after the source checked a finite one.
    source = ListSource([{"x": np.zeros((1, 3, 4, 4), np.float32)}], input_specs(model))
    source.feeds = [{"x": np.full((1, 3, 4, 4), np.nan, np.float32)}]
    with pytest.raises(UserError, match="held no finite value"):
        collect_ranges(model, source, ["x"], observer=Entropy())


def test_the_observer_must_be_a_factory():
    proto, model = _dynamic_chain()
    source = ListSource(_feeds(proto, [(8, 8)]), input_specs(model))
    with pytest.raises(TypeError, match="^observer must be an ObserverFactory such as MinMax\\(\\) or Percentile\\(99.9\\), not 'entropy'$"):
        collect_ranges(model, source, ["x"], observer="entropy")


@pytest.mark.kit
def test_yolov8n_split_over_two_sessions_gives_the_identical_table(photos):
    from qonnx.models.kit import KIT, fetch
    from qonnx.passes.insert_qdq import tensors_to_calibrate
    from qonnx.targets import get_target

    model = ir.load(fetch("yolov8n"))
    context = Context()
    run_pipeline(model, build(parse_pipeline("normalize,resolve-policy"), context), context)
    tensors = tensors_to_calibrate(model, get_target("cpu"))
    source = open_source(photos[0], model, ImagePreprocess(size=(96, 96), **_kit_norm(KIT["yolov8n"])))
    source = source.subset(range(3))
    whole = collect_ranges(model, source, tensors, observer=Entropy())
    # The tapped outputs of one 96x96 sample take several MB, two in flight twice that: a 4 MB
    # budget needs two sessions or more.
    split = collect_ranges(model, source, tensors, observer=Entropy(), memory_budget="4MB")
    assert whole.passes == 1 and split.passes >= 2
    assert split.ranges == whole.ranges
    assert split.to_dict()["ranges"] == whole.to_dict()["ranges"]


def _kit_norm(entry):
    return {"mean": entry.preprocess.mean, "std": entry.preprocess.std}
