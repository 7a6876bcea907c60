"""Per-layer sensitivity and the automatic policy: the ranking, the bisection, the plan and its
replay. Tiny generated models check the mechanics (an outlier-heavy layer must rank first); the
quality on real models is in the benchmark and the demo."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest

from conftest import input_specs, run_qonnx, run_text, to_ir
from qonnx.api import quantize
from qonnx.calib.sources import ListSource
from qonnx.errors import UserError
from qonnx.models import tiny
from qonnx.passes.auto_policy import AutoPolicy, smallest_prefix
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline
from qonnx.policy import node_spec
from qonnx.report import summary_table
from qonnx.runtime import session
from qonnx.trials import rank_correlation


def test_rank_correlation_by_hand():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (0, 1, 2, 3) against (1, 0, 3, 2): d² = 4 · 1, Spearman 1 - 6·4 / (4·15) = 0.6
    assert rank_correlation([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    # a tie takes the mean rank: (0, 1.5, 1.5, 3) against (0, 1, 2, 3): Pearson of the ranks
    assert rank_correlation([1, 2, 2, 4], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1])
    assert rank_correlation([1, 2], [1, 2]) is None  # too few pairs to say anything
    assert rank_correlation([1, 1, 1], [1, 2, 3]) is None  # one side constant


@pytest.mark.parametrize("n, first", [(100, 37), (100, 1), (100, 100), (1, 1), (139, 110)])
def test_bisection_finds_the_smallest_prefix_of_a_monotone_score(n, first):
    calls = []

    def meets(k):
        calls.append(k)
        assert 0 < k < n, "the ends are known, never evaluated"
        return k >= first

    assert smallest_prefix(n, meets) == first
    assert len(calls) <= math.ceil(math.log2(n)) if n > 1 else not calls


def _outlier_chain() -> onnx.ModelProto:
    """x → conv0 → Relu → conv1 → Relu → conv2 → y, where conv0's channel 0 is a constant 100 (zero
    weights, bias 100) that conv1 ignores (zero weights on it): conv1's input range is set by the
    outlier channel, so its 8-bit activations round the channels it reads to a few levels. conv1
    is the outlier-heavy layer."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w0[0] = 0.0
    b0 = np.array([100.0, 0.1, 0.1, 0.1], np.float32)
    w1 = rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)
    w1[:, 0] = 0.0
    w2 = rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in ((w0, "W0"), (b0, "B0"), (w1, "W1"), (w2, "W2"))]
    h = onnx.helper
    nodes = [
        h.make_node("Conv", ["x", "W0", "B0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        h.make_node("Conv", ["r0", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = h.make_graph(
        nodes, "outlier", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 16, 16])], inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def test_the_outlier_heavy_layer_ranks_first_locally_and_globally():
    _, _, context = run_text(_outlier_chain(), "normalize,resolve-policy,calibrate,layer-sensitivity(top=2)", samples=6, reduce_range=True)
    found = context.records["layer_sensitivity"]
    by_node = {e["node"]: e for e in found.nodes}
    # Locally conv1 is the worst, by its activations (the outlier channel sets their range).
    assert min(by_node, key=lambda n: by_node[n]["local_db"]) == "conv1"
    assert min(by_node, key=lambda n: by_node[n]["local_activations_db"] or 999) == "conv1"
    assert by_node["conv1"]["local_weights_db"] > by_node["conv1"]["local_activations_db"] + 10
    # Globally the outlier tensor costs the same whichever side quantizes it: conv1 reads it, conv0
    # writes it (its INT8 output); both rank before conv2, by far, and one of them comes first.
    assert found.nodes[0]["node"] in ("conv0", "conv1")
    assert max(by_node["conv0"]["global_db"], by_node["conv1"]["global_db"]) + 5 < by_node["conv2"]["global_db"]
    # Every weighted node and the 2 worst others got a global score, one evaluation each.
    scored = [e for e in found.nodes if e["global_db"] is not None]
    assert found.evaluations == len(scored) == 3 + min(2, len(found.nodes) - 3)
    assert -1.0 <= found.rank_correlation <= 1.0
    assert all(e["local_db"] is not None for e in found.nodes)


def test_auto_policy_keeps_the_outlier_layer_float_and_meets_the_target():
    model, _, context = run_text(
        _outlier_chain(),
        "normalize,resolve-policy,calibrate(adjacent=true),layer-sensitivity,auto-policy(metric=sqnr,min=30,speed=false),insert-qdq",
        samples=6,
        reduce_range=True,
    )
    record = context.records["auto_policy"]
    assert record.met and record.achieved >= 30
    assert "conv1" in record.fallback and len(record.fallback) < 5
    assert record.curve[0]["int8_fraction"] == 1.0 and record.curve[0]["value"] < 30  # all-INT8 misses
    assert record.curve[record.chosen]["chosen"] and record.curve[record.chosen]["value"] == record.achieved
    conv1 = next(n for n in model.graph if n.name == "conv1")
    assert all(v.producer() is None or v.producer().op_type != "DequantizeLinear" for v in conv1.inputs)  # left float
    plan = json.loads(model.metadata_props["qonnx.plan"])
    assert plan["reasons"]["conv1"].startswith("auto policy: kept float for sqnr >= 30 (sensitivity rank 1 of")
    assert len(plan["model_hash"]) == 64


def test_auto_plan_replays_on_its_model_and_is_refused_on_another(tmp_path, calib_npz):
    model = tmp_path / "m.onnx"
    onnx.save(_outlier_chain(), model)
    first = run_qonnx("quantize", model, "-o", tmp_path / "a.onnx", "--calib", calib_npz, "--policy", "auto", "--metric", "sqnr", "--min", "30",
                      "--reduce-range", "--report", tmp_path / "a.json", "-q")
    assert first.rc == 0, first.err
    plan = tmp_path / "a.plan.json"
    document = json.loads(plan.read_text())
    assert document["nodes"]["conv1"] == "float" and "scores" in document and document["scores"]["conv1"]["local_db"] < 30
    again = run_qonnx("quantize", model, "-o", tmp_path / "b.onnx", "--calib", calib_npz, "--policy", plan, "--reduce-range", "--report", tmp_path / "b.json", "-q")
    assert again.rc == 0, again.err
    formats = [{k: v["format"] for k, v in json.loads((tmp_path / f"{x}.json").read_text())["nodes"].items()} for x in "ab"]
    assert formats[0] == formats[1]
    other = tmp_path / "other.onnx"
    onnx.save(tiny.conv_chain(depth=3, seed=5), other)
    refused = run_qonnx("quantize", other, "-o", tmp_path / "c.onnx", "--calib", calib_npz, "--policy", plan, "-q")
    assert refused.rc == 2 and "is a plan for another model" in refused.err and not (tmp_path / "c.onnx").exists()


def test_analyze_scores_every_node_and_writes_no_model(tmp_path, calib_npz):
    model = tmp_path / "m.onnx"
    onnx.save(_outlier_chain(), model)
    result = run_qonnx("analyze", model, "--calib", calib_npz, "--top", "1", "--report", tmp_path / "s.json", "--reduce-range")
    assert result.rc == 0, result.err
    assert result.out.splitlines()[1].split()[0] in ("conv0", "conv1")  # the table, worst first
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["schema"] == "qonnx.analysis/1" and report["layer_sensitivity"]["nodes"][-1]["node"] not in ("conv0", "conv1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "m.onnx", "s.json"]  # no model written
    refused = run_qonnx("analyze", model)
    assert refused.rc == 2 and refused.error_lines == ["qonnx: error: analyze needs calibration data: give --calib DATA"]


def test_auto_policy_needs_int8_and_calibration_data(tmp_path, calib_npz):
    model = tmp_path / "m.onnx"
    onnx.save(_outlier_chain(), model)
    fp16 = run_qonnx("quantize", model, "-o", tmp_path / "a.onnx", "--calib", calib_npz, "--precision", "fp16", "--policy", "auto")
    assert fp16.rc == 2 and fp16.error_lines == ["qonnx: error: --policy auto chooses between INT8 and float; with --precision fp16 there is no INT8 plan to start from"]
    dynamic = run_qonnx("quantize", model, "-o", tmp_path / "b.onnx", "--mode", "dynamic", "--policy", "auto")
    assert dynamic.rc == 2 and dynamic.error_lines == ["qonnx: error: --policy auto needs calibration data (give --calib DATA): its plans are measured on it"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "m.onnx"]



def _scaled_feeds(scales=(1, 30, 0.05, 3, 100, 0.3), seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs of ``tiny.transformer_block`` whose scale differs by up to 2000x from sample to sample
    (the block has no LayerNorm): one calibrated range per tensor rounds the small samples to a few
    levels, while dynamic INT8 takes each sample's own range."""
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((1, 8, 16)) * scale).astype(np.float32)} for scale in scales]


def _run_on(feeds, text: str, **context):
    model = to_ir(tiny.transformer_block())
    ctx = Context(calib=ListSource(feeds, input_specs(model)), **context)
    run_pipeline(model, build(parse_pipeline(text), ctx), ctx)
    return model, ctx


def test_matmuls_whose_static_int8_costs_too_much_get_dynamic_int8_on_the_cpu(tmp_path):
    feeds = _scaled_feeds()
    text = "normalize,resolve-policy,calibrate(adjacent=true),auto-policy(metric=cosine,min=0.99,speed=false,int4=false),insert-qdq"
    model, ctx = _run_on(feeds, text)
    record = ctx.records["auto_policy"]
    assert record.curve[0]["value"] < 0.9  # all static INT8 misses by far
    assert record.met and record.achieved >= 0.99
    dynamic = sorted(n for n, f in record.formats.items() if f == "int8-dynamic")
    assert dynamic and all(next(x for x in model.graph if x.name == n).op_type == "MatMul" for n in dynamic)
    assert all(f == "float" for n, f in record.formats.items() if n not in dynamic)
    plan = json.loads(model.metadata_props["qonnx.plan"])
    spec = plan["specs"][plan["nodes"][dynamic[0]]]
    assert spec["format"] == "int8" and spec["dynamic"] and spec["activation_dtype"] == "uint8"
    assert plan["reasons"][dynamic[0]].startswith("auto policy: dynamic INT8 (activations quantized at run time) for cosine >= 0.99: static INT8 costs too much (sensitivity rank")
    # The rewritten model quantizes those MatMuls' activations at run time and runs.
    readers = {u.name for n in model.graph if n.op_type == "DynamicQuantizeLinear" for out in n.outputs for u, _ in out.uses()}
    assert readers and session(model).run(feeds[0])["y"].shape == (1, 8, 16)
    # The plan replays as it was made: the same spec for every node (spec ids may be numbered apart).
    path = tmp_path / "plan.json"
    path.write_text(model.metadata_props["qonnx.plan"])
    replayed, _ = _run_on(feeds, "normalize,resolve-policy,calibrate,insert-qdq", policy=str(path))
    again = json.loads(replayed.metadata_props["qonnx.plan"])

    def specs(document):
        return {node: document["specs"].get(spec_id, {"format": spec_id}) for node, spec_id in document["nodes"].items()}

    assert specs(again) == specs(plan)


def test_matmuls_that_activations_make_too_costly_get_int4_weight_only_when_dynamic_is_off(tmp_path):
    """Without dynamic INT8, the MatMuls whose static INT8 activations miss the target try INT4
    weight-only (activations float, weights in 4-bit blocks of 32): the sample-to-sample scale of the
    inputs costs nothing there, 4-bit weights cost about 20 dB per layer."""
    feeds = _scaled_feeds()
    text = "normalize,resolve-policy,calibrate(adjacent=true),auto-policy(metric=cosine,min=0.98,speed=false,dynamic=false),insert-qdq,quantize-weights"
    model, ctx = _run_on(feeds, text)
    record = ctx.records["auto_policy"]
    assert record.curve[0]["value"] < 0.9 and record.met and record.achieved >= 0.98
    int4 = sorted(n for n, f in record.formats.items() if f == "int4")
    assert int4, record.formats
    plan = json.loads(model.metadata_props["qonnx.plan"])
    spec = plan["specs"][plan["nodes"][int4[0]]]
    assert (spec["format"], spec["weight_bits"], spec["block_size"]) == ("weight-only", 4, 32)
    assert plan["reasons"][int4[0]].startswith("auto policy: INT4 weight-only (activations float) for cosine >= 0.98")
    assert record.fallback_format == "INT4 weight-only for MatMul/Gemm where it meets the target, else float"
    # The rewritten model holds MatMulNBits for them and runs
    assert sum(1 for n in model.graph if n.op_type == "MatMulNBits") == len(int4)
    assert session(model).run(feeds[0])["y"].shape == (1, 8, 16)
    # Replayed, the plan stores the same nodes in 4 bits
    path = tmp_path / "plan.json"
    path.write_text(model.metadata_props["qonnx.plan"])
    replayed, _ = _run_on(feeds, "normalize,resolve-policy,calibrate,insert-qdq,quantize-weights", policy=str(path))
    assert sorted(n.name for n in replayed.graph if n.op_type == "MatMulNBits") == sorted(n.name for n in model.graph if n.op_type == "MatMulNBits")


def test_without_int4_the_same_matmuls_stay_float():
    _, ctx = _run_on(_scaled_feeds(), "normalize,resolve-policy,calibrate(adjacent=true),auto-policy(metric=cosine,min=0.98,speed=false,dynamic=false,int4=false),insert-qdq")
    assert set(ctx.records["auto_policy"].formats.values()) == {"float"}


def test_without_dynamic_the_same_matmuls_stay_float():
    _, ctx = _run_on(_scaled_feeds(), "normalize,resolve-policy,calibrate(adjacent=true),auto-policy(metric=cosine,min=0.99,speed=false,dynamic=false,int4=false),insert-qdq")
    record = ctx.records["auto_policy"]
    assert record.met and set(record.formats.values()) == {"float"} and record.fallback_format == "float"


def test_groups_move_whole_through_the_bisection():
    """With max_return=0 the fallback is the bisection's prefix: whole chains and attention blocks."""
    text = "normalize,resolve-policy,calibrate(adjacent=true),auto-policy(metric=cosine,min=0.99,speed=false,groups=true,max_return=0,dynamic=false)"
    _, ctx = _run_on(_scaled_feeds(), text)
    record, sensitivity = ctx.records["auto_policy"], ctx.records["layer_sensitivity"]
    fallback = set(record.fallback)
    moved = [g for g in sensitivity.groups if g["kind"] in ("chain", "attention") and len(g["quantized"]) > 1]
    assert moved
    assert record.units == len(sensitivity.nodes) - sum(len(g["quantized"]) - 1 for g in moved)
    for group in moved:
        inside = set(group["quantized"]) & fallback
        assert not inside or inside == set(group["quantized"]), group["name"]
    assert record.met and any(set(g["quantized"]) <= fallback for g in moved)


def test_auto_policy_searches_with_a_python_metric(tmp_path):
    """quantize(policy="auto", metric=callable, min=...): the search and the verdict use the callable
    (a closure, which no worker process could unpickle)."""
    model = tmp_path / "block.onnx"
    onnx.save(tiny.transformer_block(), model)
    feeds = _scaled_feeds((1, 30, 0.05, 3, 100, 0.3, 10, 0.1))
    seen = []

    def worst_sample_cosine(reference, test):
        seen.append(len(test))
        values = [float(np.sum(r["y"] * t["y"]) / np.linalg.norm(r["y"]) / np.linalg.norm(t["y"])) for r, t in zip(reference, test)]
        return min(values)

    result = quantize(model, tmp_path / "q.onnx", feeds, policy="auto", metric=worst_sample_cosine, min=0.995)
    record = result.report["auto_policy"]
    assert record["metric"] == "test_auto_policy_searches_with_a_python_metric.<locals>.worst_sample_cosine"
    assert record["curve"][0]["value"] < 0.995 and record["met"] and record["achieved"] >= 0.995
    assert len(seen) >= record["evaluations"] > 1  # every trial scored by the callable (and the verdict once)
    assert result.verdict.metric == record["metric"] and result.report["fidelity"]["custom"]["value"] == pytest.approx(result.verdict.value)


def test_on_cuda_the_fallback_is_fp16_where_the_target_holds(tmp_path):
    """target cuda: the fallback nodes are converted to FP16 (convert-float(precision=fp16) after
    insert-qdq, in the trials and in the pipeline) instead of staying FP32; measured on the CPU
    provider, which computes the FP16 nodes behind Casts."""
    model = tmp_path / "block.onnx"
    onnx.save(tiny.transformer_block(), model)
    feeds = _scaled_feeds((1, 4, 0.25, 2, 8, 0.5, 1, 3))  # milder than the dynamic test's: some MatMuls stay INT8
    result = quantize(model, tmp_path / "q.onnx", feeds, policy="auto", target="cuda", metric="cosine", min=0.997)
    record = result.report["auto_policy"]
    assert record["curve"][0]["value"] < 0.997 and record["met"] and record["speedup"] is None  # no CPU timing for a CUDA plan
    fp16 = sorted(n for n, f in record["formats"].items() if f == "fp16")
    assert fp16 and record["fallback_format"] == "FP16 where it meets the target, else FP32"
    written = onnx.load(tmp_path / "q.onnx")
    plan = json.loads(next(p.value for p in written.metadata_props if p.key == "qonnx.plan"))
    assert plan["nodes"][fp16[0]] == "fp16" and plan["reasons"][fp16[0]].startswith("auto policy: FP16 for cosine >= 0.997: INT8 costs too much")
    assert len(fp16) < 8 and "int8" in plan["nodes"].values()  # the others stay INT8
    weights = {init.name: init.data_type for init in written.graph.initializer}
    read = [name for n in written.graph.node if n.name in fp16 for name in n.input if name in weights]
    assert read and all(weights[name] == onnx.TensorProto.FLOAT16 for name in read)  # their weights stored in FP16
    ops = {n.op_type for n in written.graph.node}
    assert {"Cast", "DequantizeLinear"} <= ops, ops
    assert session(tmp_path / "q.onnx").run(feeds[0])["y"].dtype == np.float32
    assert (tmp_path / "q.plan.json").is_file()


def _assert_speed_step_consistent(record: dict, formats: dict[str, tuple[str, str]], target: float) -> None:
    """The speed step's decision against the timings the record holds (never a time of its own):
    it ran exactly when the plan was under ``min_speedup``; then the chosen plan is the faster of the two
    that meet the target (the islands plan when it was faster in three timing cycles of four),
    and when the islands plan won, every quantized node other than
    Conv/ConvTranspose/Gemm/MatMul is float. ``formats``: node -> (op type, format)."""
    step = record["speed_step"]
    if step is None:
        assert record["speedup"] >= record["min_speedup"] or not any(op not in _WEIGHTED_OPS and fmt != "float" for op, fmt in formats.values()), record
        return
    assert step["plan_speedup"] < record["min_speedup"] and step["islands"] > 0
    low, middle, high = step["islands_over_plan"]
    assert low <= middle <= high
    islands_win = step["islands_value"] >= target and low > 1  # faster in three cycles of four
    assert step["chosen"] == ("islands" if islands_win else "plan"), step
    if (record.get("speed_check") or {}).get("chosen", "plan") == "plan":  # (else a point of the curve replaced it after)
        assert record["speedup"] == (step["islands_speedup"] if islands_win else step["plan_speedup"])
    if islands_win and (record.get("speed_check") or {}).get("chosen", "plan") == "plan":
        assert all(fmt == "float" for op, fmt in formats.values() if op not in _WEIGHTED_OPS), formats
        assert record["achieved"] == step["islands_value"]


_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _assert_speed_check_consistent(record: dict, target: float) -> None:
    """The check of the curve's fastest points against the figures the record holds: the points
    timed again carry those figures (over the speed step's 20 cycles); a point replaced the plan
    only when it meets the target and was faster than the plan in three cycles of four, and then
    the chosen point is that plan (its value, speed and fallback)."""
    check, curve = record["speed_check"], record["curve"]
    assert all(p["speedup"] > 0 and p["cycles"] in (6, 20) for p in curve), curve
    if check is None:
        return
    for entry in check["points"]:
        assert curve[entry["point"]]["speedup"] == entry["speedup"] and curve[entry["point"]]["cycles"] == 20 and entry["plan_speedup"] > 0
        assert ("over_plan" in entry) == (curve[entry["point"]]["value"] >= target), entry
    winners = [e for e in check["points"] if e.get("over_plan") and e["over_plan"][0] > 1]  # faster than the plan in three cycles of four
    if check["chosen"] == "plan":
        assert not winners, check
        return
    assert check["chosen"] == max(winners, key=lambda e: e["speedup"])["point"], check
    point, chosen = curve[check["chosen"]], curve[record["chosen"]]
    assert point["value"] >= target
    assert (chosen["value"], chosen["speedup"], chosen["fallback"]) == (point["value"], point["speedup"], point["fallback"])
    assert record["achieved"] == point["value"] and record["speedup"] == point["speedup"] and len(record["fallback"]) == point["fallback"]


def test_the_speed_step_times_the_plan_and_keeps_the_faster_one():
    """A neck of 16x16 tensors with SiLU, Resize, Concat and MaxPool between its Convs: in INT8
    onnxruntime runs it slower than float (0.66-0.82x in three runs here), so the step times the
    plan with only the Convs in INT8 (9 nodes more in float, 36 dB: slower still, 0.29-0.61x, at
    its Q/DQ borders, so the plan was kept in those runs); a target of 20 dB, which both meet."""
    model, _, context = run_text(
        tiny.detector_neck(), "normalize,resolve-policy,calibrate(adjacent=true),layer-sensitivity,auto-policy(metric=sqnr,min=20,min_speedup=1000),insert-qdq",
        samples=4, reduce_range=True,
    )  # fmt: skip
    record = dataclasses.asdict(context.records["auto_policy"])
    formats = {n.name: (n.op_type, node_spec(n.metadata_props).format) for n in model.graph if n.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    _assert_speed_step_consistent(record, formats, 20)
    _assert_speed_check_consistent(record, 20)
    assert record["fp32_ms"] > 0 and record["curve"][record["chosen"]]["speedup"] == record["speedup"]
    # every point of the curve timed, each plan once: points of one plan share their speed
    curve = record["curve"]
    assert curve[0]["fallback"] == 0 and record["reachable"]["fastest"]["speedup"] == max(p["speedup"] for p in curve)
    meeting = max(p["speedup"] for p in curve if p["value"] >= 20)
    assert record["reachable"]["fastest_meeting"]["speedup"] == meeting and record["met"]
    # 1000x FP32 is out of any plan's reach: speed binds, and the reason says no plan reaches it
    assert record["min_speedup"] == 1000 and record["binding"] == "speed"
    assert "no plan measured reaches 1000x on this CPU" in record["binding_reason"], record["binding_reason"]


@pytest.mark.parametrize(
    ("curve", "speedup", "binding", "reason"),
    [
        # the chosen plan (point 2) at 1.2x; full INT8 (point 0) at 1.6x misses the target: accuracy and speed conflict
        ([(30, 1.6, 0), (40, 1.1, 9), (35, 1.2, 4)], 1.2, "speed", "only plans that miss sqnr >= 32 reach it (the fastest plan measured (0 nodes in the fallback) ran at 1.60x with sqnr 30); the fastest meeting the target ran at 1.20x"),
        ([(30, 1.3, 0), (40, 1.1, 9), (35, 1.2, 4)], 1.2, "speed", "no plan measured reaches 1.5x on this CPU: the fastest plan measured (0 nodes in the fallback) ran at 1.30x with sqnr 30"),
        ([(30, 1.9, 0), (40, 1.1, 9), (35, 1.7, 4)], 1.7, None, "none: sqnr 35 >= 32 at 1.70x FP32 (at least 1.5x asked)"),
    ],
)
def test_the_binding_constraint_and_the_best_reachable_points(curve, speedup, binding, reason):
    """``_reachable`` picks the fastest point and the fastest meeting the target from a timed curve;
    ``_binding_reason`` names what binds at a speed target of 1.5x and the target sqnr >= 32."""
    from qonnx.passes.auto_policy import _binding_reason, _reachable

    points = [{"value": v, "speedup": s, "fallback": f} for v, s, f in curve]
    best = _reachable(points, lambda value: value >= 32)
    assert best["fastest"]["point"] == max(range(len(points)), key=lambda i: points[i]["speedup"])
    assert best["fastest_meeting"]["speedup"] == max(s for v, s, _ in curve if v >= 32)
    achieved = curve[-1][0]
    bound = None if speedup >= 1.5 else "speed"
    assert bound == binding
    assert _binding_reason(bound, "sqnr", 32, achieved, speedup, 1.5, best).endswith(reason)


@pytest.mark.kit
def test_the_speed_step_on_ppocr_cls(photos, tmp_path):
    """PP-OCRv4 cls with ``--policy auto --min 30``: the search keeps about 40 of its 139 nodes float
    (HardSigmoid/Mul of its squeeze-excitation blocks among them). That mixed plan ran at 0.8x to
    1.06x the FP32 speed in measured runs on the 2-core test machine; asked for 100x
    (``min_speedup``), the step always runs, and its decision must follow the timings the record
    holds; no plan reaches 100x, and the report says so with the fastest plan measured."""
    from qonnx.api import quantize
    from qonnx.models import kit

    calib, evaluation = photos
    preprocess = kit.KIT["ppocr-cls"].preprocess
    result = quantize(kit.fetch("ppocr-cls"), tmp_path / "cls.onnx", calib, eval_data=evaluation, preprocess=preprocess, policy="auto", metric="sqnr", min=30.0, min_speedup=100)
    report = result.report
    formats = {name: (entry["op_type"], entry["format"]) for name, entry in report["nodes"].items()}
    auto = report["auto_policy"]
    _assert_speed_step_consistent(auto, formats, 30)
    _assert_speed_check_consistent(auto, 30)
    assert auto["met"] and auto["speedup"] > 0 and auto["speed_step"] is not None
    assert all(p["speedup"] > 0 for p in auto["curve"]) and auto["binding"] == "speed"
    assert auto["binding_reason"].startswith(f"speed: {auto['speedup']:.2f}x FP32, under the 100x asked, and no plan measured reaches 100x")


def test_meet_on_judges_a_plan_by_its_lowest_part():
    """``Trials(meet_on=...)``: halves takes the metric on the first and on the second half of the
    samples, each pooled alone, each takes it on every sample alone; the value is the lowest part,
    never above the value pooled over all of them (pooled SQNR is a mediant of the parts'); the
    same plan, the same values as separate trials; one full-model evaluation per plan either way."""
    from qonnx.trials import Trials

    model, _, context = run_text(_outlier_chain(), "normalize,resolve-policy,calibrate(adjacent=true)", samples=6, reduce_range=True)
    feeds = [context.calib[i] for i in range(6)]
    plan = set(Trials(model, context, feeds[:1], "sqnr").candidates) - {"conv2"}
    pooled = Trials(model, context, feeds, "sqnr").score(plan)
    first, second = (Trials(model, context, part, "sqnr").score(plan) for part in (feeds[:3], feeds[3:]))
    alone = [Trials(model, context, [feed], "sqnr").score(plan) for feed in feeds]
    assert first != second and len(set(alone)) > 1
    halves, each = Trials(model, context, feeds, "sqnr", meet_on="halves"), Trials(model, context, feeds, "sqnr", meet_on="each")
    by_halves, by_each = halves.score(plan), each.score(plan)
    assert by_halves == min(first, second) <= pooled
    assert by_each == min(alone) <= by_halves
    assert halves.evaluations == each.evaluations == 1
    for meet_on, size in (("halves", 3.0), ("each", 1.0), ("pooled", 6.0)):  # a Python metric sees each part alone
        assert Trials(model, context, feeds, lambda ref, test: float(len(test)), meet_on=meet_on).score(plan) == size
    with pytest.raises(UserError, match="meet_on 'worst' is not one of pooled, halves, each"):
        Trials(model, context, feeds, "sqnr", meet_on="worst")


def test_a_sample_with_all_zero_fp32_outputs_is_judged_pooled_only(caplog):
    """Under ``each``, a sample whose FP32 outputs are all zero has no SQNR of its own (-200 dB at the
    first rounding error, which would keep every node float): it counts in a pooled part instead."""
    from qonnx.trials import Trials

    proto = _outlier_chain()
    for init in proto.graph.initializer:
        if init.name == "B0":
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(4, np.float32), "B0"))  # no bias: zero in, zero out
    model, _, context = run_text(proto, "normalize,resolve-policy,calibrate(adjacent=true)", samples=4, reduce_range=True)
    feeds = [context.calib[i] for i in range(4)] + [{"x": np.zeros((1, 3, 16, 16), np.float32)}]
    with caplog.at_level("WARNING", logger="qonnx.trials"):
        trials = Trials(model, context, feeds, "sqnr", meet_on="each")
    assert "1 of the 5 search parts have all-zero FP32 outputs" in caplog.text
    assert trials.parts == [slice(i, i + 1) for i in range(4)] + [slice(None)]
    plan = set(trials.candidates)
    alone = [Trials(model, context, [feed], "sqnr").score(plan) for feed in feeds[:4]]
    assert trials.score(plan) == min(alone + [Trials(model, context, feeds, "sqnr").score(plan)])


@pytest.mark.parametrize("meet_on", ["halves", "each"])
def test_auto_policy_meets_the_target_on_each_part(meet_on):
    """The chosen plan holds the target on every part of the search samples, checked by separate
    trials of the same plan; the record says how it was judged (``each`` is the default)."""
    from qonnx.trials import Trials

    option = "" if meet_on == "each" else f",meet_on={meet_on}"
    model, _, context = run_text(
        _outlier_chain(),
        f"normalize,resolve-policy,calibrate(adjacent=true),layer-sensitivity,auto-policy(metric=sqnr,min=30,speed=false{option})",
        samples=6,
        reduce_range=True,
    )
    record = context.records["auto_policy"]
    assert record.met and record.achieved >= 30 and "conv1" in record.fallback
    assert (record.meet_on, record.samples) == (meet_on, 6)
    feeds = [context.calib[i] for i in range(6)]
    parts = [feeds[:3], feeds[3:]] if meet_on == "halves" else [[feed] for feed in feeds]
    int8 = set(Trials(model, context, feeds[:1], "sqnr").candidates) - set(record.fallback)
    assert min(Trials(model, context, part, "sqnr").score(int8) for part in parts) == pytest.approx(record.achieved, abs=1e-4)


def test_meet_on_from_the_command_line_reaches_the_search_and_needs_the_automatic_policy(tmp_path, calib_npz, inproc):
    model = tmp_path / "m.onnx"
    onnx.save(_outlier_chain(), model)
    result = inproc("quantize", model, "-o", tmp_path / "a.onnx", "--calib", calib_npz, "--policy", "auto", "--metric", "sqnr", "--min", "30",
                    "--meet-on", "halves", "--reduce-range", "--report", tmp_path / "a.json", "--print-recipe")  # fmt: skip
    assert result.rc == 0 and 'meet_on = "halves"' in result.out
    result = inproc("quantize", model, "-o", tmp_path / "a.onnx", "--calib", calib_npz, "--policy", "auto", "--metric", "sqnr", "--min", "30",
                    "--meet-on", "halves", "--reduce-range", "--report", tmp_path / "a.json")  # fmt: skip
    assert result.rc == 0, result.err
    report = json.loads((tmp_path / "a.json").read_text())
    assert "meet_on=halves" in report["pipeline"].lower() and report["auto_policy"]["met"] and report["auto_policy"]["meet_on"] == "halves"
    assert "on each half of the" in result.out  # the summary says how the search judged its plans
    refused = inproc("quantize", model, "-o", tmp_path / "b.onnx", "--calib", calib_npz, "--meet-on", "each", "-q")
    assert refused.rc == 2 and "--meet-on" in refused.err and "policy auto" in refused.err
    wrong = inproc("quantize", model, "-o", tmp_path / "b.onnx", "--calib", calib_npz, "--policy", "auto", "--meet-on", "worst", "-q")
    assert wrong.rc == 2 and "worst" in wrong.err


def test_min_speedup_from_the_command_line_is_reported_not_gated(tmp_path, calib_npz, inproc):
    """A speed no plan reaches (1000x FP32): the run still exits 0 (speed is reported, not gated),
    the summary says that speed binds, and the option needs the automatic policy (exit 2)."""
    model = tmp_path / "m.onnx"
    onnx.save(_outlier_chain(), model)
    result = inproc("quantize", model, "-o", tmp_path / "a.onnx", "--calib", calib_npz, "--policy", "auto", "--metric", "sqnr", "--min", "30",
                    "--min-speedup", "1000", "--reduce-range", "--report", tmp_path / "a.json")  # fmt: skip
    assert result.rc == 0, result.err
    report = json.loads((tmp_path / "a.json").read_text())
    auto = report["auto_policy"]
    assert auto["met"] and auto["binding"] == "speed" and auto["min_speedup"] == 1000
    assert "binds: speed:" in result.out and "no plan measured reaches 1000x" in result.out
    # the speed check's line, when the curve's fastest points were timed again
    auto["speed_check"] = {"points": [{"point": 3, "speedup": 1.31, "plan_speedup": 1.2, "over_plan": [1.04, 1.1, 1.2]}, {"point": 5, "speedup": 1.4}], "chosen": 3}
    text = summary_table(report)
    assert ("  speed check: the fastest points timed again beside the plan, FP32 speed (quartiles over the plan): "
            "point 3 1.31x against the plan's 1.20x (1.04-1.20x the plan's), point 5 1.40x (misses the target): point 3 chosen") in text  # fmt: skip
    assert "binding: speed" not in text  # the sentence replaces the bare word
    refused = inproc("quantize", model, "-o", tmp_path / "b.onnx", "--calib", calib_npz, "--min-speedup", "1.5", "-q")
    assert refused.rc == 2 and "--min-speedup" in refused.err and "policy auto" in refused.err


def test_min_speedup_reaches_the_search_and_needs_the_automatic_policy():
    from qonnx.config import ConfigError, QuantizeConfig
    from qonnx.flow import pipeline_steps

    config = QuantizeConfig.from_keywords(policy="auto", min_speedup=1.5)
    assert config.evaluation.min_speedup == 1.5
    step = next(s for s in pipeline_steps(config, calibrated=True, evaluated=True) if s.name == "auto-policy")
    assert step.options["min_speedup"] == 1.5
    with pytest.raises(ConfigError, match="policy auto"):
        QuantizeConfig.from_keywords(min_speedup=1.5)
    with pytest.raises(ConfigError, match="positive"):
        QuantizeConfig.from_keywords(policy="auto", min_speedup=0)
    with pytest.raises(UserError, match="min_speedup must be positive"):
        AutoPolicy(min_speedup=-1)


def test_meet_on_in_the_python_keyword_form():
    from qonnx.config import ConfigError, QuantizeConfig

    assert QuantizeConfig.from_keywords(policy="auto", meet_on="pooled").evaluation.meet_on == "pooled"
    assert QuantizeConfig.from_keywords(policy="auto").evaluation.meet_on is None  # the pass's default, each
    with pytest.raises(ConfigError, match="policy auto"):
        QuantizeConfig.from_keywords(meet_on="each")
    with pytest.raises(ConfigError, match="'worst' is not one of pooled, halves, each"):
        QuantizeConfig.from_keywords(policy="auto", meet_on="worst")


@pytest.mark.parametrize(
    ("options", "samples", "parts", "note"),
    [
        # 0.99 needs 100 class decisions, 50 samples of y[2, 8]'s 2 rows; 40 are there: a note, and
        # the 40 are judged pooled (--meet-on each would otherwise ask every sample to agree)
        ("metric=top1,min=0.99", 40, 1, "judged on 40 search samples of 2 class decision(s) each: one disagreement moves it by 0.0125"),
        ("metric=top1,min=0.9", 16, 3, None),  # 10 decisions, 5 samples: the usual 16 resolve it, in runs 5, 5, 6
        ("metric=top1,min=0.9,samples=8", 8, 1, None),  # 16 decisions >= 10, but not twice
        ("metric=top1,min=0.9,samples=4", 4, 1, "give at least 5 calibration samples"),  # 8 < 10
        ("metric=top1,min=1.0", 16, 16, None),  # every decision must agree: each sample alone says as much
        ("metric=sqnr,min=20", 16, 16, None),
        ("metric=sqnr,min=20,meet_on=halves", 16, 2, None),
    ],
)
def test_a_top1_target_searches_on_the_samples_that_resolve_it(options, samples, parts, note, caplog):
    """A top-1 agreement of 0.99 can only be told from 0.9 on at least 100 class decisions: the
    search takes that many calibration samples by default (here y[2, 8] has 2 rows per sample),
    judges parts of at least that many, and says so, in the record and the log, when the data has
    fewer."""
    with caplog.at_level("WARNING"):
        _, _, context = run_text(tiny.gemm_bn(), f"normalize,resolve-policy,calibrate(adjacent=true),auto-policy({options},speed=false)", samples=40)
    record = context.records["auto_policy"]
    assert (record.samples, record.parts) == (samples, parts)
    if note is None:
        assert record.notes == [] and "class decision" not in caplog.text
    else:
        assert len(record.notes) == 1 and note in record.notes[0], record.notes
        assert note in caplog.text


def test_parts_hold_at_least_min_part_samples():
    from qonnx.trials import _parts

    assert _parts("each", 3) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert _parts("each", 10, 3) == [slice(0, 3), slice(3, 6), slice(6, 10)]  # the remainder joins the last run
    assert _parts("each", 10, 5) == [slice(0, 5), slice(5, 10)]
    assert _parts("each", 9, 5) == _parts("halves", 9, 5) == _parts("pooled", 10) == [slice(None)]  # too few for two parts
    assert _parts("halves", 10, 5) == [slice(None, 5), slice(5, None)]
