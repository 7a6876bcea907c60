"""The verdict: which metric judges a run, the threshold, the advice, and the exit code 3 gate.

Unit cases are built from fidelity entries as ``evaluate`` writes them; the gate runs the real
command on a tiny model (a rewrite check, not a quality claim)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_qonnx
from qonnx.verdict import DEFAULT_FLOORS, Verdict, choose_metric, judge

_SCORES = {"logits": {"sqnr_db": 17.1, "cosine": 0.99, "top1_agreement": 0.995}}
_BOXES = {"boxes": {"sqnr_db": 31.2, "cosine": 0.9996}, "scores": {"sqnr_db": 28.4, "cosine": 0.999}}
_TOKENS = {"hidden": {"sqnr_db": 6.3, "cosine": 0.875, "pooled_cosine": 0.9991}}


def _judge(outputs, metric="auto", minimum=None, *, tokens=False, matmul=False, precision="int8", mode="static"):
    return judge(
        {"outputs": outputs}, metric=metric, minimum=minimum, precision=precision, mode=mode, token_inputs=tokens, has_matmul=matmul
    )


def test_auto_chooses_top1_for_class_scores_cosine_for_token_embeddings_else_sqnr():
    assert choose_metric(_SCORES, token_inputs=False)[0] == "top1"
    assert choose_metric(_TOKENS, token_inputs=True)[0] == "cosine"
    assert choose_metric(_TOKENS, token_inputs=False)[0] == "sqnr"  # a 3-D output of an image model is no embedding
    assert choose_metric(_BOXES, token_inputs=False) == ("sqnr", "no output is shaped like class scores or token embeddings")


def test_the_worst_output_decides_against_the_default_floor():
    verdict = _judge(_BOXES)
    assert (verdict.metric, verdict.value, verdict.threshold, verdict.source) == ("sqnr", 28.4, DEFAULT_FLOORS["sqnr"], "default")
    assert verdict.met is False and not verdict.gate_failed  # advice only, exit 0
    assert verdict.advice[0] == "--policy auto --metric sqnr --min 30 (keep the most sensitive layers in float)"
    assert verdict.line().startswith("verdict    BELOW sqnr 28.4 dB < 30 dB (default floor); try: --policy auto")


def test_min_sets_the_threshold_and_a_miss_fails_the_gate():
    passed = _judge(_BOXES, "sqnr", 28.0)
    assert passed.met and passed.source == "--min" and not passed.gate_failed and passed.advice == []
    assert passed.line() == "verdict    PASS sqnr 28.4 dB >= 28 dB (--min)"
    failed = _judge(_SCORES, "top1", 0.999)
    assert (failed.value, failed.met, failed.gate_failed) == (0.995, False, True)


def test_token_embeddings_are_judged_by_pooled_cosine_and_dynamic_mode_is_advised():
    verdict = _judge(_TOKENS, tokens=True, matmul=True)
    assert (verdict.metric, verdict.value, verdict.met) == ("cosine", 0.9991, True)
    below = _judge(_TOKENS, "cosine", 0.9995, tokens=True, matmul=True)
    assert below.met is False and any(a.startswith("--mode dynamic") for a in below.advice)
    assert not any(a.startswith("--mode dynamic") for a in _judge(_BOXES).advice)  # a CNN: no such advice
    assert not any(a.startswith("--mode dynamic") for a in _judge(_TOKENS, "cosine", 0.9995, tokens=True, matmul=True, mode="dynamic").advice)


def test_cosine_without_embeddings_falls_back_to_the_output_cosine_and_top1_without_scores_is_not_measured():
    assert _judge(_BOXES, "cosine").value == 0.999
    verdict = _judge(_BOXES, "top1")
    assert verdict.met is None and "choose --metric sqnr" in verdict.advice[0]


def test_no_data_is_not_measured_and_says_what_to_give():
    verdict = judge(None, metric="auto", minimum=None, precision="int8", mode="static", token_inputs=False, has_matmul=False)
    assert verdict.met is None and verdict.line() == "verdict    NOT MEASURED: give --calib or --eval data to measure fidelity"
    assert Verdict(**verdict.to_dict()) == verdict


def test_a_python_metric_is_judged_by_its_own_value():
    verdict = judge({"outputs": _BOXES}, metric="my_score", minimum=0.5, precision="int8", mode="static", token_inputs=False, has_matmul=False, custom=0.4)
    assert (verdict.metric, verdict.value, verdict.met, verdict.gate_failed) == ("my_score", 0.4, False, True)


@pytest.mark.parametrize("minimum, rc", [("1", 0), ("150", 3)])
def test_min_is_a_gate_for_ci(tmp_path, model_path, calib_npz, minimum, rc):
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    result = run_qonnx("quantize", model_path, "-o", out, "--calib", calib_npz, "--metric", "sqnr", "--min", minimum, "--report", report, "-q")
    assert result.rc == rc, result.err
    assert out.is_file() and report.is_file()  # written either way: the gate judges, it does not withdraw
    verdict = json.loads(report.read_text())["verdict"]
    assert (verdict["metric"], verdict["threshold"], verdict["source"], verdict["met"]) == ("sqnr", float(minimum), "--min", rc == 0)
    assert (rc == 3) == result.err.startswith("verdict    BELOW sqnr")


def test_logits_of_token_inputs_are_judged_by_next_token_agreement():
    from qonnx.verdict import choose_metric, metric_value

    outputs = {"logits": {"sqnr_db": 12.0, "cosine": 0.99, "pooled_cosine": 0.999, "next_token_agreement": 0.82}}
    metric, why = choose_metric(outputs, token_inputs=True)
    assert metric == "top1" and "next-token logits" in why
    assert metric_value("top1", outputs) == 0.82
    # without token inputs (a float model whose output happens to be called logits): not a language model
    assert choose_metric(outputs, token_inputs=False)[0] == "sqnr"


def test_an_auto_plan_that_met_the_target_on_calibration_data_but_not_held_out_says_so():
    verdict = judge({"outputs": _BOXES}, metric="sqnr", minimum=30, precision="int8", mode="static", token_inputs=False, has_matmul=False, auto_met=32.56)
    assert verdict.met is False
    assert verdict.advice[0].startswith("the auto plan met sqnr 32.56 on the calibration samples, not on held-out data")
    assert not any(a.startswith("--policy auto") for a in verdict.advice), "auto already ran: advising it again helps no one"
    assert not any(a.startswith("--meet-on") for a in verdict.advice), "judged on each sample already"
    pooled = judge({"outputs": _BOXES}, metric="sqnr", minimum=30, precision="int8", mode="static", token_inputs=False, has_matmul=False, auto_met=32.56, auto_meet_on="pooled")
    assert "--meet-on each (every calibration sample must meet it, not pooled)" in pooled.advice


def test_fp8_advice_names_fp8_options():
    verdict = _judge(_BOXES, precision="fp8")
    assert verdict.advice[0].startswith("--precision int8") and verdict.advice[-1].startswith("--fp8-activations e5m2")


def test_no_eval_measures_nothing_calibrates_on_all_the_data_and_says_so(tmp_path, model_path, calib_npz):
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    result = run_qonnx("quantize", model_path, "-o", out, "--calib", calib_npz, "--no-eval", "--report", report)
    assert result.rc == 0, result.err
    data = json.loads(report.read_text())
    assert "fidelity" not in data and data["config"]["evaluation"]["skip"] is True
    assert not any(p["name"] == "evaluate" for p in data["passes"])
    with np.load(calib_npz) as arrays:
        assert data["calibration"]["samples"] == len(next(iter(arrays.values())))  # nothing held out
    assert "fidelity   not measured (--no-eval)" in result.out
    assert "verdict    NOT MEASURED: run without --no-eval" in result.out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min", "20"], "--no-eval: no evaluation, so nothing to hold to min"),
        (["--eval", "EVAL"], "--eval DATA and --no-eval: give one of them"),
        (["--policy", "auto"], "auto measures its trials"),
    ],
)
def test_no_eval_refuses_what_needs_an_evaluation(tmp_path, model_path, calib_npz, extra, message):
    extra = [str(calib_npz) if x == "EVAL" else x for x in extra]
    result = run_qonnx("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--no-eval", *extra)
    assert result.rc == 2 and message in result.err, result.err
    assert not (tmp_path / "q.onnx").exists()


def test_int4_advice_asks_for_calibration_data_only_without_it():
    """An INT4 run below its floor: the options to try; --calib is among them only when the run had
    no calibration data (with data, AWQ already rounded from it)."""
    logits = {"logits": {"sqnr_db": 17.0, "cosine": 0.99, "next_token_agreement": 0.82}}
    for calibrated in (False, True):
        verdict = judge({"outputs": logits}, metric="auto", minimum=None, precision="int4", mode="static", token_inputs=True, has_matmul=True, calibrated=calibrated)
        assert verdict.met is False and any("--block-size 16" in a for a in verdict.advice)
        assert any("--calib" in a for a in verdict.advice) is not calibrated


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"meet_on": "each", "samples": 10, "parts": 10}, "on each of the 10 calibration samples (the lowest)"),
        ({"meet_on": "each", "samples": 200, "parts": 2}, "on each of 2 runs of the 200 calibration samples (the lowest)"),
        ({"meet_on": "each", "samples": 40, "parts": 1}, "pooled over the 40 calibration samples (too few to judge parts alone)"),
        ({"meet_on": "halves", "samples": 10, "parts": 2}, "on each half of the 10 calibration samples (the lower)"),
        ({"meet_on": "pooled", "samples": 10, "parts": 1}, "pooled over the 10 calibration samples"),
        ({"samples": 10}, "pooled over the 10 calibration samples"),  # a record from before meet_on
    ],
)
def test_the_summary_says_how_the_search_judged(record, words):
    from qonnx.verdict import search_samples

    assert search_samples(record) == words
