"""Executors: the serial, process-pool and Ray executors give the same results, in order, on real
trials and on sharded calibration. The Ray tests start a real local Ray instance (2 CPUs)."""

from __future__ import annotations

import math
import sys

import pytest

from conftest import run_text, to_ir
from qonnx import executor as executors
from qonnx.calib import collect
from qonnx.calib.observers import MSE, Entropy, MinMax, MovingAverageMinMax, Percentile
from qonnx.calib.sources import ImageFolderSource, ListSource, input_specs
from qonnx.config import ConfigError, QuantizeConfig
from qonnx.errors import UserError
from qonnx.executor import ProcessExecutor, RayExecutor, SerialExecutor, check_spec, make_executor
from qonnx.models import tiny
from qonnx.passes.calibrate import Calibrate
from qonnx.pipeline import Context, apply, build, parse_pipeline, run_pipeline
from qonnx.trials import Trials


@pytest.fixture(scope="module")
def ray_instance():
    """A real local Ray instance of 2 CPUs, shut down after the module's tests."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool():
    with ProcessExecutor(2, startup_s=0) as running:
        yield running


@pytest.fixture(scope="module")
def chain_trials():
    model, _, ctx = run_text(tiny.conv_chain(depth=4), "normalize,resolve-policy,calibrate", samples=4, reduce_range=True)
    trials = Trials(model, ctx, [ctx.calib[i] for i in range(3)], "sqnr")
    plans = [{name} for name in trials.candidates] + [None, set(), set(trials.candidates[:2])]
    return trials, plans


def same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------
# The seam


@pytest.mark.parametrize("spec", ["spark", "ray://", "ray://host", "ray://host:port", "Local", ""])
def test_a_bad_executor_spec_is_a_user_error_naming_it(spec):
    with pytest.raises(UserError, match=f"unknown executor {spec!r}"):
        make_executor(spec)
    with pytest.raises(ConfigError, match="executor"):
        QuantizeConfig(executor=spec)


@pytest.mark.parametrize("workers", [0, -1, True, 1.5])
def test_a_bad_worker_count_is_a_user_error(workers):
    with pytest.raises(UserError, match="workers"):
        make_executor("local", workers)


def test_specs_make_their_executors():
    assert isinstance(make_executor("serial"), SerialExecutor)
    local = make_executor(None)
    assert isinstance(local, ProcessExecutor) and local.workers == executors.default_workers() and local.name == "local"
    assert make_executor("local", 3).workers == 3
    ray = make_executor("ray", 2)
    assert isinstance(ray, RayExecutor) and ray.address is None
    remote = make_executor("ray://10.0.0.1:10001")
    assert isinstance(remote, RayExecutor) and remote.address == "ray://10.0.0.1:10001"
    assert check_spec("ray://head.cluster.local:10001") == "ray://head.cluster.local:10001"
    assert isinstance(Context().get_executor(), ProcessExecutor)
    assert isinstance(Context(executor="serial").get_executor(), SerialExecutor)


def test_ray_missing_is_a_user_error_that_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    with pytest.raises(UserError, match=r"pip install 'qonnx\[ray\]'"):
        RayExecutor().map(pow, [1, 2], shared=2)


def test_worker_start_up_is_weighed_against_the_work():
    local = ProcessExecutor(2, startup_s=2.0)
    assert not local.worth(1, 100.0)  # one item: nothing to share
    assert not local.worth(10, 0.01)  # 0.05 s saved < 2 s to start
    assert local.worth(62, 0.8)  # PP-OCR cls's global trials: ~25 s saved
    assert not ProcessExecutor(1).worth(100, 10.0)
    assert not SerialExecutor().worth(100, 10.0)


def test_map_keeps_the_order_and_sends_shared_data(pool, ray_instance):
    items = list(range(12))
    expected = [pow(3, i) for i in items]
    assert SerialExecutor().map(pow, items, shared=3) == expected
    assert pool.map(pow, items, shared=3) == expected
    assert pool.map(pow, items, shared=3) == expected  # the warm pool, same payload
    started = pool._pool
    assert pool.map(pow, items, shared=2) == [pow(2, i) for i in items]  # another payload: the same pool
    assert pool.map(isinstance, [int, type(None)]) == [False, True]  # no payload: fn(None, item)
    assert pool._pool is started
    with RayExecutor() as ray:
        assert ray.map(pow, items, shared=3) == expected
        assert ray.workers == 2  # the instance's CPUs
    assert ray_instance.is_initialized()  # an instance it did not start is left running


def test_a_user_error_in_a_worker_reaches_the_caller_as_itself(pool, ray_instance):
    # make_executor("bogus", 1) raises in the worker: fn(shared, item) = make_executor(spec, workers)
    with RayExecutor() as ray:
        for chosen in (SerialExecutor(), pool, ray):
            with pytest.raises(UserError) as caught:
                chosen.map(make_executor, [1, 2], shared="bogus")
            assert type(caught.value) is UserError and str(caught.value).startswith("unknown executor 'bogus'")
            assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Trials


def test_trials_give_the_same_scores_on_every_executor(chain_trials, pool, ray_instance):
    trials, plans = chain_trials
    serial = [trials.score(plan) for plan in plans]
    before = trials.evaluations
    assert same(trials.scores(plans, SerialExecutor()), serial)
    assert same(trials.scores(plans, pool), serial)
    with RayExecutor(startup_s=0) as ray:
        assert same(trials.scores(plans, ray), serial)
    assert trials.evaluations == before + 3 * len(plans)  # every evaluation counted, wherever it ran


def test_few_short_trials_stay_in_this_process(chain_trials):
    trials, plans = chain_trials
    slow_to_start = ProcessExecutor(2, startup_s=3600)
    assert same(trials.scores(plans, slow_to_start), [trials.score(plan) for plan in plans])
    assert slow_to_start._pool is None  # no worker was started


def test_layer_sensitivity_uses_the_contexts_executor(pool):
    records = {}
    for name, chosen in (("serial", "serial"), ("pool", pool)):
        _, _, ctx = run_text(tiny.conv_chain(depth=4), "normalize,resolve-policy,calibrate,layer-sensitivity(top=8)", reduce_range=True, executor=chosen)
        records[name] = ctx.analyses["layer-sensitivity"]
    assert records["serial"].nodes == records["pool"].nodes
    assert records["serial"].evaluations == records["pool"].evaluations
    assert sum(e["global_db"] is not None for e in records["pool"].nodes) >= 3


# --------------------------------------------------------------------------------------------
# Sharded calibration


@pytest.fixture(scope="module")
def chain_data():
    proto = tiny.conv_chain(depth=3)
    model = to_ir(proto)
    source = ListSource([tiny.random_feed(proto, seed=i) for i in range(11)], input_specs(model))
    tensors = [v.name for node in model.graph for v in node.outputs]
    return model, source, tensors, [model.graph.inputs[0].name]


def assert_same_table(sharded, whole):
    a, b = sharded.to_dict(), whole.to_dict()
    means_a, means_b = a.pop("channel_means"), b.pop("channel_means")
    assert a == b  # ranges, samples, data description and hash, observer settings, passes
    assert means_a.keys() == means_b.keys()
    for name in means_a:  # float64 sums added in another order
        assert means_a[name] == pytest.approx(means_b[name], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("observer", [MinMax(), Percentile(99.9), Entropy(), MSE()], ids=lambda o: o.method)
def test_sharded_calibration_equals_one_pass(chain_data, pool, observer):
    model, source, tensors, means = chain_data
    whole = collect.collect_ranges(model, source, tensors, observer=observer, channel_means=means)
    for shards in (1, 3, 11):
        assert_same_table(collect.collect_ranges_sharded(model, source, tensors, observer=observer, shards=shards, channel_means=means), whole)
    assert_same_table(collect.collect_ranges_sharded(model, source, tensors, observer=observer, executor=pool, shards=4, channel_means=means), whole)


def test_sharded_calibration_on_ray_and_with_feeds_sent_per_shard(chain_data, ray_instance, monkeypatch):
    model, source, tensors, means = chain_data
    whole = collect.collect_ranges(model, source, tensors, observer=Percentile(99.9), samples=9, channel_means=means)
    with RayExecutor() as ray:
        assert_same_table(collect.collect_ranges_sharded(model, source, tensors, observer=Percentile(99.9), executor=ray, samples=9, channel_means=means), whole)
        monkeypatch.setattr(collect, "_PORTABLE_BYTES", 0)  # the source stays here; each shard carries its feeds
        assert_same_table(collect.collect_ranges_sharded(model, source, tensors, observer=Percentile(99.9), executor=ray, shards=3, samples=9, channel_means=means), whole)


def test_shards_cover_the_samples_once():
    assert collect.shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert collect.shard_bounds(2, 5) == [(0, 1), (1, 2)]
    for count in range(1, 30):
        for shards in range(1, 8):
            bounds = collect.shard_bounds(count, shards)
            assert [i for a, b in bounds for i in range(a, b)] == list(range(count)) and all(b > a for a, b in bounds)


def test_moving_minmax_cannot_be_sharded(chain_data):
    model, source, tensors, _ = chain_data
    with pytest.raises(UserError, match="moving-minmax"):
        collect.collect_ranges_sharded(model, source, tensors, observer=MovingAverageMinMax(), shards=2)
    with pytest.raises(UserError, match="moving-minmax"):
        Calibrate(Context(), method="moving-minmax", shards=2)


def test_the_calibrate_pass_shards_on_the_contexts_executor(pool):
    text = "normalize,resolve-policy,calibrate(method=percentile{})"
    _, _, whole = run_text(tiny.conv_chain(), text.format(""), samples=6, reduce_range=True)
    _, _, sharded = run_text(tiny.conv_chain(), text.format(",shards=3"), samples=6, reduce_range=True, executor=pool)
    assert_same_table(sharded.analyses["ranges"], whole.analyses["ranges"])


# --------------------------------------------------------------------------------------------
# The command line


def test_the_command_line_takes_an_executor(tmp_path, model_path, calib_npz, inproc, monkeypatch):
    result = inproc("quantize", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_npz, "--executor", "spark")
    assert result.rc == 2 and "--executor" in result.err and "'spark'" in result.err
    result = inproc("quantize", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_npz, "--workers", "0")
    assert result.rc == 2 and "--workers" in result.err
    result = inproc("quantize", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_npz, "--executor", "serial", "--workers", "1", "--print-recipe")
    assert result.rc == 0 and 'executor = "serial"' in result.out and "workers = 1" in result.out
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed: said before any work
        result = inproc("quantize", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_npz, "--executor", "ray")
        assert result.rc == 2 and "pip install 'qonnx[ray]'" in result.err and not (tmp_path / "out.onnx").exists()
    result = inproc("quantize", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_npz, "--policy", "auto", "--executor", "local", "--workers", "2", "--min", "20")
    assert result.rc == 0, result.err
    assert (tmp_path / "out.plan.json").is_file()


# --------------------------------------------------------------------------------------------
# A real model: PP-OCR cls on photos, its global scores from the process pool and from Ray


@pytest.mark.kit
def test_ppocr_cls_global_scores_are_the_same_on_the_pool_and_on_ray(photos, pool, ray_instance):
    from qonnx import ir as qir
    from qonnx.models import kit

    path = kit.fetch("ppocr-cls")
    model = qir.load(path)
    calib, evaluation = photos
    context = Context(
        calib=ImageFolderSource(calib, input_specs(model), kit.KIT["ppocr-cls"].preprocess),
        eval_data=ImageFolderSource(evaluation, input_specs(model), kit.KIT["ppocr-cls"].preprocess),
        samples=8,
        reduce_range=True,
    )
    run_pipeline(model, build(parse_pipeline("normalize,div-to-mul,resolve-policy,calibrate(adjacent=true)"), context), context)
    records = {}
    for name, chosen in (("pool", pool), ("ray", RayExecutor(startup_s=0))):
        context.executor = chosen
        apply("layer-sensitivity", model, context, samples=2, top=0)
        records[name] = context.analyses.pop("layer-sensitivity")
        context.close_executor() if name == "ray" else None
    measured = [e for e in records["pool"].nodes if e["global_db"] is not None]
    assert len(measured) >= 20  # every Conv/Gemm/MatMul
    assert records["pool"].nodes == records["ray"].nodes  # the same scores, the same ranking
    assert records["pool"].groups == records["ray"].groups
    # one full-model evaluation per measured node and per group of two or more INT8 nodes
    group_trials = sum(1 for g in records["pool"].groups if g["measured"])
    assert records["pool"].evaluations == records["ray"].evaluations == len(measured) + group_trials
