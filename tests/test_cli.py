"""The ``qonnx`` command, both as ``python -m qonnx`` in a subprocess and as ``qonnx.cli.main`` in-process.

Exit codes: 0 success, 2 bad input or usage (one ``qonnx: error:`` line, no traceback), 1 internal
error (no traceback unless ``--debug``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qonnx import cli, pipeline
from qonnx.models import tiny

from conftest import Result, calib_arrays, in_process, run_qonnx


@pytest.fixture(params=["subprocess", "inprocess"])
def qonnx_cmd(request, capsys):
    """Runs the CLI one way or the other and returns rc, stdout and stderr."""
    return run_qonnx if request.param == "subprocess" else in_process(capsys)


def _assert_user_error(result: Result, match: str):
    assert result.rc == 2, (result.rc, result.err)
    assert "Traceback" not in result.err
    assert len(result.error_lines) == 1, result.err
    assert result.err.strip().splitlines()[-1] == result.error_lines[0]
    assert match in result.error_lines[0], result.error_lines[0]


# --------------------------------------------------------------------------------------------
# passes, inspect


def test_passes_lists_every_registered_pass(qonnx_cmd):
    result = qonnx_cmd("passes")
    assert result.rc == 0, result.err
    pipeline._load_builtin_passes()
    listing, _, rest = result.out.partition("\n\n")
    aliases_text, _, tail = rest.partition("\n\n")
    # A pass's row, then one indented row per option ("name: type = default") and the analyses it needs and makes.
    passes: dict[str, str] = {}
    details: dict[str, list[str]] = {}
    last = ""
    for line in listing.splitlines():
        if line.startswith(" "):
            details[last].append(line.strip())
        else:
            last, summary = line.split(None, 1)
            passes[last], details[last] = summary, []
    aliases = {name: rest[2:] for name, rest in (line.split(None, 1) for line in aliases_text.splitlines())}
    builtin = {n for n, cls in pipeline.registry.items() if cls.__module__.startswith("qonnx.passes")}
    assert builtin <= set(passes)
    assert set(passes) <= set(pipeline.registry)
    for name in passes:
        assert passes[name] == pipeline.registry[name].summary
        options = [str(o) for o in pipeline.pass_options(pipeline.registry[name])]
        assert details[name][: len(options)] == options
    assert details["calibrate"][:3] == ["method: str | None = None", "percentile: float | None = None", "batch_size: int = 1"]
    assert details["insert-qdq"] == ["bias_correction: bool = True", "(needs placement, plan, ranges)"]
    assert details["resolve-policy"][-1] == "(makes plan)"
    assert details["remove-dead"] == []
    assert aliases == pipeline.aliases
    assert f"default pipeline: {pipeline.DEFAULT_PIPELINE}" in tail


def _op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in proto.graph.node))


def _float_params(proto: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer)


def test_inspect_text(qonnx_cmd, model_path):
    proto = tiny.conv_chain()
    result = qonnx_cmd("inspect", model_path)
    assert result.rc == 0, result.err
    out = result.out
    assert "opsets       ai.onnx:13" in out
    assert "input        x: FLOAT [1, 3, 16, 16]" in out
    assert f"parameters   FLOAT: {_float_params(proto):,}" in out
    ops_line = next(line for line in out.splitlines() if line.startswith("ops "))
    for op, count in _op_counts(proto).items():
        assert f"{op} {count}" in ops_line
    assert "quantizable  3 nodes (Conv 3), 3 with constant weights" in out


def test_inspect_json(qonnx_cmd, model_path):
    proto = tiny.conv_chain()
    result = qonnx_cmd("inspect", model_path, "--json")
    assert result.rc == 0, result.err
    facts = json.loads(result.out)
    assert facts["opsets"] == {"": 13}
    assert facts["op_histogram"] == _op_counts(proto)
    assert facts["parameters"] == {"FLOAT": _float_params(proto)}
    assert facts["parameter_bytes"] == {"FLOAT": 4 * _float_params(proto)}
    assert facts["bytes"] == model_path.stat().st_size
    assert facts["inputs"] == [{"name": "x", "dtype": "FLOAT", "shape": [1, 3, 16, 16], "dynamic": False}]
    assert facts["outputs"] == ["y"]
    assert facts["quantizable"] == [
        {"name": f"conv{i}", "op_type": "Conv", "constant_weight": True} for i in range(3)
    ]


def test_inspect_dynamic_model_json(inproc, tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(tiny.conv_chain(dynamic=True), str(path))
    result = inproc("inspect", path, "--json")
    assert result.rc == 0
    (inp,) = json.loads(result.out)["inputs"]
    assert inp["shape"] == ["n", 3, "h", "w"] and inp["dynamic"] is True


# --------------------------------------------------------------------------------------------
# quantize


def _check_quantized_model(path: Path):
    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8, f"{conv.name}: weight is not INT8"
    # The float weights left the file.
    float_weights = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4]
    assert float_weights == []
    return model


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_quantize_writes_model_and_report(qonnx_cmd, tmp_path, model_path, calib_npz):
    out, report_path = tmp_path / "out" / "q.onnx", tmp_path / "report.json"
    input_bytes = model_path.read_bytes()
    result = qonnx_cmd("quantize", model_path, "-o", out, "--calib", calib_npz, "--report", report_path)
    assert result.rc == 0, result.err
    assert "Traceback" not in result.err and "error" not in result.err
    assert model_path.read_bytes() == input_bytes

    _check_quantized_model(out)
    # onnxruntime loads it and it still computes roughly the same function. Cosine > 0.99: INT8
    # with MinMax ranges on a 3-conv chain lands around 0.9999 (SQNR ~35 dB); 0.99 only catches a
    # broken rewrite (wrong scales, wrong axis), it is no quality claim for real models.
    feed = {"x": calib_arrays()["x"][7]}
    want = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert got.shape == want.shape
    assert _cosine(got, want) > 0.99

    report = json.loads(report_path.read_text())
    assert {"schema", "input", "output", "passes", "nodes", "fidelity", "timing"} <= set(report)
    assert report["schema"] == "qonnx.report/1"
    assert report["uncalibrated"] is False
    assert report["input"]["sha256"] == hashlib.sha256(input_bytes).hexdigest()
    assert report["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report["output"]["bytes"] == out.stat().st_size
    # The default pipeline, then the measuring pass: fidelity is measured in the pass manager.
    assert [p["name"] for p in report["passes"]] == [s.name for s in pipeline.parse_pipeline(pipeline.DEFAULT_PIPELINE)] + ["evaluate"]
    assert {name: n["format"] for name, n in report["nodes"].items() if n["op_type"] == "Conv"} == {
        "conv0": "int8",
        "conv1": "int8",
        "conv2": "int8",
    }
    fidelity = report["fidelity"]
    assert fidelity["samples"] == 2 and fidelity["held_out"] is True  # last quarter of 8
    # 20 dB is a loose floor for the same reason as the cosine above (observed ~37 dB).
    assert fidelity["outputs"]["y"]["sqnr_db"] > 20
    assert set(report["timing"]) >= {"pipeline_s", "save_s", "fidelity_s", "total_s"}
    assert all(v >= 0 for v in report["timing"].values())
    # Only the model and the report were written: no temp files, no dumps.
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx"]
    assert "fidelity" in result.out


def test_quantize_quiet_prints_nothing(inproc, tmp_path, model_path, calib_npz):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "-q")
    assert result.rc == 0
    assert result.out == ""


def test_quantize_random_calibration(qonnx_cmd, tmp_path, model_path):
    out, report_path = tmp_path / "q.onnx", tmp_path / "r.json"
    result = qonnx_cmd("quantize", model_path, "-o", out, "--calib", "random", "--samples", "4", "--report", report_path)
    assert result.rc == 0, result.err
    assert "WARNING" in result.err and "random" in result.err
    assert "Traceback" not in result.err
    _check_quantized_model(out)
    report = json.loads(report_path.read_text())
    assert report["uncalibrated"] is True
    assert "random" in report["calibration"]["data"]  # also in a range table saved from this run


def test_quantize_random_calibration_needs_static_shapes(inproc, tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(tiny.conv_chain(dynamic=True), str(path))
    result = inproc("quantize", path, "-o", tmp_path / "q.onnx", "--calib", "random")
    _assert_user_error(result, "static input shapes")
    assert not (tmp_path / "q.onnx").exists()


# --------------------------------------------------------------------------------------------
# user errors: exit code 2, one line, no traceback. Run in-process here; test_cli_failures.py runs
# every documented failure as the real command and checks that nothing is written.

_BAD = {}


def _case(fn):
    _BAD[fn.__name__] = fn
    return fn


@_case
def missing_model(tmp, model, calib):
    return ["quantize", tmp / "nope.onnx", "-o", tmp / "q.onnx", "--calib", calib], "model file not found"


@_case
def wrong_input_name(tmp, model, calib):
    np.savez(tmp / "bad.npz", **calib_arrays(name="input"))
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", tmp / "bad.npz"], "the model expects inputs: x"


@_case
def wrong_dtype(tmp, model, calib):
    np.savez(tmp / "bad.npz", **calib_arrays(dtype=np.float64))
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", tmp / "bad.npz"], "has dtype float64, the model expects float32"


@_case
def empty_calibration_folder(tmp, model, calib):
    (tmp / "empty").mkdir()
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", tmp / "empty"], "no samples"


@_case
def unknown_pass(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--pipeline", "normalize,bogus"], "unknown pass 'bogus'"


@_case
def output_is_input(tmp, model, calib):
    return ["quantize", model, "-o", model, "--calib", calib], "refusing to overwrite the input model"


@_case
def output_is_input_other_spelling(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "." / model.name, "--calib", calib], "refusing to overwrite the input model"


@_case
def bad_size(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--size", "320y240"], "--size"


@_case
def no_command(tmp, model, calib):
    return [], "required"


@_case
def not_a_model(tmp, model, calib):
    (tmp / "notes.onnx").write_text("not a model\n")
    return ["inspect", tmp / "notes.onnx"], "not an ONNX model"


@_case
def zero_samples_option(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--samples", "0"], "--samples"


@_case
def output_is_a_directory(tmp, model, calib):
    return ["quantize", model, "-o", tmp, "--calib", calib], "is a directory"


@_case
def report_folder_cannot_be_made(tmp, model, calib):
    (tmp / "file").write_text("")
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--report", tmp / "file" / "r.json"], "cannot write the report"


@pytest.mark.parametrize("case", list(_BAD))
def test_user_errors(inproc, tmp_path, model_path, calib_npz, case):
    args, match = _BAD[case](tmp_path, model_path, calib_npz)
    before = model_path.read_bytes()
    result = inproc(*args)
    _assert_user_error(result, match)
    assert model_path.read_bytes() == before, "the input model changed"
    assert not (tmp_path / "q.onnx").exists(), "an output was written although the command failed"


def test_unknown_pass_error_lists_known_passes(inproc, tmp_path, model_path, calib_npz):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--pipeline", "bogus")
    _assert_user_error(result, "known passes:")
    assert "insert-qdq" in result.error_lines[0]


def test_truncated_calibration_npz_is_a_user_error(inproc, tmp_path, model_path, calib_npz):
    content = calib_npz.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(content[: len(content) // 2])
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", tmp_path / "trunc.npz")
    _assert_user_error(result, "trunc.npz")


def test_empty_model_file_is_a_user_error(inproc, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    _assert_user_error(inproc("inspect", tmp_path / "empty.onnx"), "not an ONNX model")


def test_policy_file_keeps_named_nodes_float(inproc, tmp_path, model_path, calib_npz):
    plan = {"default": {"format": "float"}, "rules": [{"op_type": "Conv", "spec": {"format": "int8"}}, {"name": "conv1", "spec": {"format": "float"}}]}
    policy = tmp_path / "my policy, v1.json"  # a comma in the path must not confuse the pipeline text
    policy.write_text(json.dumps(plan))
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--policy", policy, "--report", tmp_path / "r.json")
    assert result.rc == 0, result.err
    nodes = json.loads((tmp_path / "r.json").read_text())["nodes"]
    assert nodes["conv1"]["format"] == "float" and nodes["conv0"]["format"] == "int8"


def test_missing_policy_file_is_a_user_error(inproc, tmp_path, model_path, calib_npz):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--policy", tmp_path / "none.json")
    _assert_user_error(result, "policy file not found")


def test_quantize_reports_fusion_and_sensitivity(inproc, tmp_path, model_path, calib_npz):
    report_path = tmp_path / "r.json"
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--report", report_path, "--sensitivity", "2")
    assert result.rc == 0, result.err
    report = json.loads(report_path.read_text())
    assert report["fusion"]["integer_kernels"]["QLinearConv"] == 3 and report["fusion"]["unfused"] == []
    sensitivity = report["sensitivity"]
    assert sensitivity["samples"] == 2 and {e["node"] for e in sensitivity["nodes"]} == {"conv0", "conv1", "conv2"}
    # One node's 8-bit activations cost no more than all of them together (5 dB of slack for rounding noise).
    assert all(e["sqnr_db"] >= sensitivity["all_db"] - 5 for e in sensitivity["nodes"])
    assert "fusion" in result.out and "one node's activations at a time" in result.out


def test_quantize_dynamic_mode_writes_a_run_time_quantized_model(inproc, tmp_path, calib_npz):
    path = tmp_path / "mm.onnx"
    onnx.save(tiny.matmul_model(), str(path))
    feeds = tmp_path / "mm.npz"
    np.savez(feeds, x=np.random.default_rng(0).standard_normal((8, 1, 4, 16)).astype(np.float32))
    report_path = tmp_path / "r.json"
    result = inproc("quantize", path, "-o", tmp_path / "q.onnx", "--calib", feeds, "--mode", "dynamic", "--report", report_path)
    assert result.rc == 0, result.err
    report = json.loads(report_path.read_text())
    assert report["mode"] == "dynamic" and report["fusion"]["integer_kernels"] == {"DynamicQuantizeMatMul": 2}
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
# --------------------------------------------------------------------------------------------
# calibration options


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_quantize_with_a_method_saves_a_table_that_replays(inproc, tmp_path, model_path, calib_npz, method):
    table_path, first, again = tmp_path / "ranges.json", tmp_path / "a.onnx", tmp_path / "b.onnx"
    extra = ["--percentile", "99.9"] if method == "percentile" else []
    result = inproc("quantize", model_path, "-o", first, "--calib", calib_npz, "--method", method, *extra, "--save-ranges", table_path, "-q")
    assert result.rc == 0, result.err
    table = json.loads(table_path.read_text())
    assert table["method"] == method and table["data_hash"] and table["samples"] == 6  # 8 minus the held-out quarter
    if method == "percentile":
        assert table["observer"]["percentile"] == 99.9
    # The saved table replaces calibration (no --calib needed) and gives the same model.
    result = inproc("quantize", model_path, "-o", again, "--ranges", table_path, "-q")
    assert result.rc == 0, result.err
    assert onnx.load(str(first)).graph == onnx.load(str(again)).graph


def test_batch_size_and_memory_budget_reach_the_report(inproc, tmp_path, calib_npz):
    path = tmp_path / "dyn.onnx"
    onnx.save(tiny.conv_chain(dynamic=True), str(path))
    report = tmp_path / "r.json"
    result = inproc("quantize", path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--method", "entropy",
                    "--batch-size", "4", "--calib-memory", "1KiB", "--report", report, "-q")
    assert result.rc == 0, result.err
    calibration = json.loads(report.read_text())["calibration"]
    assert calibration["batch_size"] == 4 and calibration["passes"] > 1 and calibration["method"] == "entropy"


def _strict_conv(path: Path) -> Path:
    """x[n, 3, h, w] → Conv 3x3 without padding → Relu → Conv 1x1: onnxruntime refuses images under 3x3."""
    w = onnx.numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "W")
    w2 = onnx.numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "W2")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), onnx.helper.make_node("Relu", ["c"], ["r"], name="relu"),
         onnx.helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2")],
        "strict",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [w, w2],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(path))
    return path


@_case
def nan_only_calibration(tmp, model, calib):
    np.savez(tmp / "nan.npz", x=np.full((4, 1, 3, 16, 16), np.nan, np.float32))
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", tmp / "nan.npz"], "sample 0: input 'x' holds 768 NaN values"


@_case
def shape_the_model_rejects(tmp, model, calib):
    np.savez(tmp / "tiny.npz", x=np.zeros((4, 1, 3, 2, 2), np.float32))
    strict = _strict_conv(tmp / "strict.onnx")
    return ["quantize", strict, "-o", tmp / "q.onnx", "--calib", tmp / "tiny.npz"], "calibration sample 0: onnxruntime failed"


@_case
def batch_size_on_a_static_batch(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--batch-size", "4"], "dynamic first dimension"


@_case
def percentile_without_percentile_method(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--method", "entropy", "--percentile", "99"], "--method percentile"


@_case
def percentile_out_of_range(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--method", "percentile", "--percentile", "120"], "percentile must be"


@_case
def bad_memory_budget(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--calib-memory", "plenty"], "2GiB"


@_case
def unknown_method(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--calib", calib, "--method", "kl"], "--method: 'kl' is not one of"


@_case
def no_calibration_data(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx"], "give --calib DATA (or --ranges FILE)"


@_case
def ranges_of_another_model(tmp, model, calib):
    other = tmp / "other.onnx"
    onnx.save(tiny.conv_chain(seed=1), str(other))
    table = tmp / "other.json"
    assert cli.main(["quantize", str(other), "-o", str(tmp / "other.q.onnx"), "--calib", str(calib), "--save-ranges", str(table), "-q"]) == 0
    return ["quantize", model, "-o", tmp / "q.onnx", "--ranges", table], "made for another model"


@_case
def missing_range_table(tmp, model, calib):
    return ["quantize", model, "-o", tmp / "q.onnx", "--ranges", tmp / "none.json"], "range table not found"


@pytest.mark.parametrize("case", [c for c in _BAD if c in {
    "nan_only_calibration", "shape_the_model_rejects", "batch_size_on_a_static_batch", "percentile_without_percentile_method",
    "percentile_out_of_range", "bad_memory_budget", "unknown_method", "no_calibration_data", "ranges_of_another_model",
    "missing_range_table"}])
def test_calibration_user_errors(inproc, tmp_path, model_path, calib_npz, case):
    args, match = _BAD[case](tmp_path, model_path, calib_npz)
    result = inproc(*args)
    _assert_user_error(result, match)
    assert not (tmp_path / "q.onnx").exists()


# --------------------------------------------------------------------------------------------
# Usage, --json, --exclude / --op-types, report permissions, help


def test_a_misspelled_option_gets_a_did_you_mean(inproc, tmp_path, model_path):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--precison", "int8")
    _assert_user_error(result, "unrecognized arguments: --precison int8; did you mean --precision?")
    assert result.err.splitlines()[0].startswith("usage: qonnx quantize MODEL -o OUTPUT")


def test_a_usage_error_says_qonnx_once(qonnx_cmd, tmp_path, model_path):
    result = qonnx_cmd("quantize", model_path, "--calib", "x.npz")
    lines = result.err.strip().splitlines()
    assert result.rc == 2 and len(lines) == 2, result.err
    assert lines[0].startswith("usage: qonnx quantize") and "\n" not in lines[0]
    assert lines[1] == "qonnx: error: the following arguments are required: -o/--output"


@pytest.mark.parametrize("flag", [["--json"], ["--report", "-"]])
def test_json_goes_to_stdout_and_the_summary_to_stderr(inproc, tmp_path, model_path, calib_npz, flag):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, *flag)
    assert result.rc == 0, result.err
    report = json.loads(result.out)
    assert report["schema"] == "qonnx.report/1" and report["config"]["precision"] == "int8"
    assert "fidelity   on" in result.err and not (tmp_path / "-").exists()


def test_exclude_and_op_types_reach_the_plan(inproc, tmp_path, model_path, calib_npz):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--exclude", "conv0", "--exclude", "conv[2]", "--op-types", "Conv", "--json", "-q")
    assert result.rc == 0, result.err
    nodes = json.loads(result.out)["nodes"]
    assert [n for n, e in nodes.items() if e["format"] == "int8"] == ["conv1"]
    assert nodes["conv0"]["reason"] == nodes["conv2"]["reason"] == "excluded by the config"
    assert nodes["residual"]["reason"] == "op type Add not in op_types_to_quantize"


def test_reports_and_range_tables_get_the_models_permissions(inproc, tmp_path, model_path, calib_npz):
    import os

    old = os.umask(0o022)
    try:
        args = ["quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--report", tmp_path / "r.json", "--save-ranges", tmp_path / "t.json", "-q"]
        assert inproc(*args).rc == 0
    finally:
        os.umask(old)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("q.onnx", "r.json", "t.json")}
    assert modes == {"q.onnx": 0o644, "r.json": 0o644, "t.json": 0o644}


def test_an_fp16_summary_names_the_output_and_the_missing_fidelity(inproc, tmp_path, model_path, calib_npz):
    result = inproc("quantize", model_path, "-o", tmp_path / "h.onnx", "--precision", "fp16")
    assert result.rc == 0 and "fidelity   not measured (no data)" in result.out
    result = inproc("quantize", model_path, "-o", tmp_path / "h2.onnx", "--precision", "fp16", "--calib", calib_npz, "--latency")
    assert result.rc == 0 and ", fp16 " in result.out and "quantized" not in result.out
    line = next(line for line in result.out.splitlines() if line.startswith("latency    "))
    assert re.search(r"\(\d+\.\d\dx, quartiles \d+\.\d\d-\d+\.\d\d over \d+ cycles, \d+ runs each, interleaved, 2 threads\)$", line), line


@pytest.mark.parametrize("command", ["quantize", "inspect", "passes"])
def test_every_help_ends_with_examples(capsys, command):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "\nexamples:\n" in text
    assert text.rstrip().splitlines()[-1].startswith("  qonnx ")


def test_quantize_help_explains_images(capsys):
    with pytest.raises(SystemExit):
        cli.main(["quantize", "--help"])
    text = capsys.readouterr().out
    assert "examples:\n  qonnx quantize" in text and "no letterbox" in text and "greyscale" in text and "alpha" in text
    assert "--recipe" in text and "--print-recipe" in text and "--exclude" in text and "--op-types" in text
