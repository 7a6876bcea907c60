"""Acceptance benchmark of the tensorrt target: INT8 and FP8 Q/DQ beside the cpu target and onnxruntime.

For every benchmark case of ``benchmarks/bench.py`` (a kit model, its calibration data, its
held-out evaluation data, its task metrics) four variants are made from the same calibration data,
each in a fresh spawned process (``isolation.run_isolated``):

* ``cpu-int8``: ``qonnx.api.quantize`` with its defaults (target ``cpu``: U8 asymmetric
  activations, S8 per-channel weights, Conv/Gemm weights in 7 bits on x86 CPUs without VNNI);
* ``trt-int8``: the same call with target ``tensorrt`` (S8 symmetric activations, zero point 0);
* ``trt-fp8``: target ``tensorrt``, precision ``fp8`` (FLOAT8E4M3FN Q/DQ). Where qonnx refuses the
  precision (``UserError``, the command line's exit code 2) the variant is recorded as
  "not available: <message>", not as a failure;
* ``ort-default``: onnxruntime.quantization's ``quantize_static`` as ``bench.py`` runs its anchor
  (QDQ, per-channel, U8 asymmetric activations, S8 weights), with quantize_static's default
  calibration method, MinMax. It shows what ``qonnx check --target tensorrt`` finds in another
  tool's output; its SQNR is for reference.

Per variant, against FP32 on the held-out samples (``bench.measure_fidelity``):

* SQNR in dB of every output, signal and noise energies pooled over the samples; the table shows
  the worst output, ``min_o 10·log10(Σ‖y_o‖² / Σ‖y_o − ŷ_o‖²)``;
* the case's task metrics (top-1 agreement for classifiers, embedding cosine and nearest-neighbour
  agreement for MiniLM);
* size: the variant's files (model plus external data) over the FP32 model's;
* whether onnxruntime's CPU provider loads the variant and runs it on every held-out sample;
* TensorRT's rules (``qonnx.qdq_rules``): the violations ``qonnx.qdq_check.check_model(path,
  "tensorrt")`` lists, counted per rule id, and the exit code of the command users run,
  ``qonnx check --target tensorrt --json PATH`` (0: none, 3: violations, 2: bad input), whose
  counts must equal the API's.

No latency is measured: fidelity, structure and size only. Results go to ``<out>/trt.json`` and
``<out>/trt.md``, each written atomically, with the versions and machine facts they depend on
(``bench.environment_facts``); the markdown is also printed.

Usage: ``python benchmarks/trt_bench.py [--models yolov8n,ppocr-cls] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from qonnx import ir as qir
from qonnx import runtime
from qonnx.errors import UserError
from qonnx.models import export
from qonnx.qdq_check import check_model

from bench import (  # benchmarks/bench.py, beside this script
    ANCHOR_PREPROCESS_ATTEMPTS,
    CASES,
    EXPORTED,
    REPO_ROOT,
    BenchCase,
    Variant,
    _clip,
    _fmt,
    _task_cell,
    environment_facts,
    measure_fidelity,
    model_bytes,
    model_names,
    open_case_source,
    progress,
    quantize_with_onnxruntime,
    quantize_with_qonnx,
    run_outputs,
    write_results,
)
from isolation import first_line, run_isolated  # benchmarks/isolation.py

CHECK_TARGET = "tensorrt"
ANCHOR_NAME = "ort-default"
ANCHOR_METHOD = "MinMax"  # quantize_static's default calibrate_method
ANCHOR_PREPROCESS = "retry"  # bench.py's default: full pre-processing, then without symbolic shapes, then the raw model
CLI_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class QonnxVariant:
    """One qonnx configuration: ``qonnx.api.quantize(..., target=target, precision=precision)``."""

    name: str
    target: str
    precision: str
    # A precision that this qonnx may not offer yet: its refusal is "not available", not a failure.
    may_be_refused: bool = False


QONNX_VARIANTS = (
    QonnxVariant("cpu-int8", "cpu", "int8"),
    QonnxVariant("trt-int8", "tensorrt", "int8"),
    QonnxVariant("trt-fp8", "tensorrt", "fp8", may_be_refused=True),
)


def quantize_or_refusal(case_name: str, model_path: str, output_path: str, target: str, precision: str) -> dict[str, Any]:
    """``bench.quantize_with_qonnx`` for ``target`` and ``precision``; qonnx's refusal of the
    arguments (``UserError``, exit code 2 on the command line) comes back as ``{"refused": message}``."""
    try:
        return quantize_with_qonnx(case_name, model_path, output_path, "static", "", target, precision)
    except UserError as exc:
        return {"refused": str(exc)}


@dataclasses.dataclass
class RuleCheck:
    """``qonnx check --target tensorrt`` on one variant, through the API and through the command line."""

    violations_by_rule: dict[str, int]  # check_model's violations, counted per rule id
    cli_exit_code: int | None = None
    cli_counts: dict[str, int] | None = None  # the --json document's "counts"
    cli_error: str | None = None  # stderr's last line when the command did not answer with a document

    @property
    def cli_agrees(self) -> bool:
        return self.cli_counts == self.violations_by_rule


@dataclasses.dataclass
class Row:
    """One variant of one model: bench.py's measurements plus the ones of this benchmark."""

    variant: Variant
    not_available: str | None = None  # why qonnx refused the variant's configuration
    ort_cpu: str = "not run"  # "runs", "does not load: …", "loads, fails to run: …"
    check: RuleCheck | None = None

    @property
    def produced(self) -> bool:
        return self.variant.error is None and self.not_available is None


def qonnx_cli() -> list[str]:
    """The ``qonnx`` console script of this interpreter's environment (``python -m qonnx`` without one)."""
    script = Path(sys.executable).with_name("qonnx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "qonnx"]


def check_rules(path: Path) -> RuleCheck:
    """The TensorRT rule violations of ``path`` per rule id, and the command line's verdict on it."""
    counts: dict[str, int] = {}
    for violation in check_model(path, CHECK_TARGET):
        counts[violation.rule] = counts.get(violation.rule, 0) + 1
    outcome = RuleCheck(dict(sorted(counts.items())))
    command = [*qonnx_cli(), "check", "--target", CHECK_TARGET, "--json", str(path)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        outcome.cli_error = f"no answer within {CLI_TIMEOUT_S} s"
        return outcome
    outcome.cli_exit_code = finished.returncode
    try:
        outcome.cli_counts = dict(sorted(json.loads(finished.stdout)["counts"].items()))
    except (json.JSONDecodeError, KeyError, TypeError):
        lines = finished.stderr.strip().splitlines()
        outcome.cli_error = lines[-1] if lines else "no JSON document on stdout"
    return outcome


def runs_on_cpu(row: Row, case: BenchCase, feeds: list, reference: list) -> None:
    """Load the variant in onnxruntime's CPU provider, then measure its fidelity on every held-out sample."""
    try:
        runtime.session(row.variant.path)
    except Exception as exc:
        row.ort_cpu = f"does not load: {first_line(exc)}"
        return
    try:
        measure_fidelity(row.variant, case, feeds, reference)
    except Exception as exc:
        row.ort_cpu = f"loads, fails to run: {first_line(exc)}"
        return
    row.ort_cpu = "runs"


def has_convolutions(model_path: Path) -> bool:
    return any(node.op_type == "Conv" for node in qir.all_nodes(ir.load(model_path)))


def bench_case(case: BenchCase, scratch: Path, timeout_s: float) -> dict[str, Any]:
    model_path = case.model_path()
    feeds = list(open_case_source(case, model_path, "eval"))
    calibration_samples = len(open_case_source(case, model_path, "calib"))
    fp32_bytes = model_bytes(model_path)
    progress(f"{case.name}: {model_path.name}, {calibration_samples} calibration / {len(feeds)} evaluation samples")

    rows: list[Row] = []

    def quantize(name: str, kind: str, function, *extra: str) -> Row:
        folder = scratch / case.name / name
        folder.mkdir(parents=True)
        output = folder / "model.onnx"
        progress(f"{case.name}: {name} ...")
        outcome = run_isolated(function, (case.name, str(model_path), str(output), *extra), timeout_s, folder)
        row = Row(Variant(name, output, kind))
        row.variant.quantization = {k: v for k, v in outcome.items() if k not in ("ok", "result", "traceback")}
        row.variant.quantization.update(outcome.get("result") or {})
        refusal = row.variant.quantization.pop("refused", None)
        if not outcome["ok"]:
            row.variant.error = outcome["error"]
        elif refusal is not None:
            row.not_available = refusal
        else:
            row.variant.size_bytes = model_bytes(output)
        progress(f"{case.name}: {name}: {row.variant.error or (row.not_available and 'not available: ' + row.not_available) or 'done'}")
        rows.append(row)
        return row

    for spec in QONNX_VARIANTS:
        row = quantize(spec.name, "qonnx", quantize_or_refusal, spec.target, spec.precision)
        if row.not_available is not None and not spec.may_be_refused:
            row.variant.error, row.not_available = f"refused: {row.not_available}", None
    quantize(ANCHOR_NAME, "anchor", quantize_with_onnxruntime, ANCHOR_METHOD, ANCHOR_PREPROCESS)

    progress(f"{case.name}: fidelity on {len(feeds)} held-out samples, {CHECK_TARGET} rules")
    reference = run_outputs(model_path, feeds)
    for row in rows:
        if row.produced:
            runs_on_cpu(row, case, feeds, reference)
            row.check = check_rules(row.variant.path)
    return summarize(case, model_path, rows, fp32_bytes, calibration_samples, len(feeds))


def summarize(
    case: BenchCase, model_path: Path, rows: list[Row], fp32_bytes: int, calibration_samples: int, evaluation_samples: int
) -> dict[str, Any]:
    variants = []
    for row in rows:
        v, check = row.variant, row.check
        quantization = v.quantization
        variants.append(
            {
                "variant": v.name,
                "kind": v.kind,
                "error": v.error,
                "not_available": row.not_available,
                "sqnr_db": v.sqnr_db,
                "worst_sqnr_db": v.worst_sqnr_db,
                "cosine": v.cosine,
                "task": v.task,
                "size_bytes": v.size_bytes,
                "size_vs_fp32": None if v.size_bytes is None else round(v.size_bytes / fp32_bytes, 4),
                "ort_cpu": row.ort_cpu,
                "trt_violations_by_rule": None if check is None else check.violations_by_rule,
                "trt_violations": None if check is None else sum(check.violations_by_rule.values()),
                "check_cli_exit_code": None if check is None else check.cli_exit_code,
                "check_cli_counts": None if check is None else check.cli_counts,
                "check_cli_error": None if check is None else check.cli_error,
                "check_cli_agrees": None if check is None else check.cli_agrees,
                "quant_s": round(quantization["quant_s"], 2) if "quant_s" in quantization else None,
                "quantization": {k: val for k, val in quantization.items() if k != "quant_s"},
            }
        )
    return {
        "model": case.name,
        "description": case.description,
        "model_file": str(model_path),
        "convolutional": has_convolutions(model_path),
        "fp32_size_bytes": fp32_bytes,
        "calibration_samples": calibration_samples,
        "evaluation_samples": evaluation_samples,
        "task_metrics": [{"key": m.key, "label": m.label, "as_percent": m.as_percent} for m in case.task_metrics],
        "variants": variants,
    }


# ----------------------------------------------------------------------------------------------
# Report


def _task_text(case: dict[str, Any], row: dict[str, Any]) -> str:
    cells = [
        f"{m['label']} {_task_cell(row['task'][m['key']], m['as_percent'])}" for m in case["task_metrics"] if m["key"] in row["task"]
    ]
    return "; ".join(cells) or "—"


def _violations_text(row: dict[str, Any]) -> str:
    counts = row["trt_violations_by_rule"]
    if counts is None:
        return "—"
    return ", ".join(f"{rule} {n}" for rule, n in counts.items()) or "none"


def _exit_code_text(row: dict[str, Any]) -> str:
    if row["trt_violations_by_rule"] is None:
        return "—"
    if row["check_cli_exit_code"] is None:
        return f"— ({row['check_cli_error']})"
    return str(row["check_cli_exit_code"]) + ("" if row["check_cli_agrees"] else " (counts differ from the API's)")


def _table_row(case: dict[str, Any], row: dict[str, Any]) -> str:
    if row["error"]:
        cells = [row["variant"], f"failed: {_clip(row['error'], 160)}", *["—"] * 5]
    elif row["not_available"]:
        cells = [row["variant"], f"not available: {_clip(row['not_available'], 160)}", *["—"] * 5]
    else:
        cells = [
            row["variant"],
            _fmt(row["worst_sqnr_db"], ".1f"),
            _task_text(case, row),
            _fmt(row["size_vs_fp32"], ".3f"),
            "yes" if row["ort_cpu"] == "runs" else f"no: {_clip(row['ort_cpu'], 160)}",
            _violations_text(row),
            _exit_code_text(row),
        ]
    return "| " + " | ".join(cells) + " |"


def _worst(case: dict[str, Any], name: str) -> float | None:
    row = next((r for r in case["variants"] if r["variant"] == name), None)
    return None if row is None else row["worst_sqnr_db"]


def _difference(minuend: float | None, subtrahend: float | None) -> float | None:
    return None if minuend is None or subtrahend is None else minuend - subtrahend


def _case_notes(case: dict[str, Any]) -> list[str]:
    rows = {r["variant"]: r for r in case["variants"]}
    notes = []
    cpu_ops = (rows["cpu-int8"]["quantization"].get("reduce_range_ops") or []) if "cpu-int8" in rows else []
    if cpu_ops:
        notes.append(f"cpu-int8 stores {', '.join(cpu_ops)} weights in 7 bits (no VNNI on this CPU); the tensorrt target in 8")
    anchor = rows.get(ANCHOR_NAME)
    if anchor and anchor["quantization"].get("quantized_input"):
        failed = "; ".join(f"{a}: {_clip(e, 160)}" for a, e in (anchor["quantization"].get("attempt_errors") or {}).items())
        notes.append(f"{ANCHOR_NAME} quantized the {anchor['quantization']['quantized_input']} model" + (f" (failed before: {failed})" if failed else ""))
    trt_cost = _difference(_worst(case, "trt-int8"), _worst(case, "cpu-int8"))
    if trt_cost is not None:
        notes.append(f"symmetric TRT INT8 against CPU INT8: {trt_cost:+.1f} dB worst-output SQNR")
    fp8 = rows.get("trt-fp8")
    if case["convolutional"] and fp8 is not None:
        fp8_gain = _difference(_worst(case, "trt-fp8"), _worst(case, "trt-int8"))
        if fp8_gain is not None:
            notes.append(f"FP8 E4M3 against TRT INT8: {fp8_gain:+.1f} dB worst-output SQNR")
        elif fp8["not_available"]:
            notes.append("FP8 against TRT INT8: not measured, qonnx does not offer precision fp8 here")
        else:
            notes.append(f"FP8 against TRT INT8: not measured ({_clip(fp8['error'] or fp8['ort_cpu'], 160)})")
    return notes


def _summary(doc: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Symmetric INT8 and FP8 for TensorRT against CPU INT8 (worst-output SQNR dB)",
        "",
        "| model | cpu-int8 | trt-int8 | trt-int8 − cpu-int8 | trt-fp8 | trt-fp8 − trt-int8 | ort-default |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in doc["models"]:
        cpu, trt, fp8, anchor = (_worst(case, n) for n in ("cpu-int8", "trt-int8", "trt-fp8", ANCHOR_NAME))
        fp8_cell = _fmt(fp8, ".1f")
        if fp8 is None and any(r["variant"] == "trt-fp8" and r["not_available"] for r in case["variants"]):
            fp8_cell = "not available"
        gain = _difference(fp8, trt) if case["convolutional"] else None
        lines.append(
            f"| {case['model']} | {_fmt(cpu, '.1f')} | {_fmt(trt, '.1f')} | {_fmt(_difference(trt, cpu), '+.1f')} | "
            f"{fp8_cell} | {_fmt(gain, '+.1f')} | {_fmt(anchor, '.1f')} |"
        )
    others = [case["model"] for case in doc["models"] if not case["convolutional"]]
    if others:
        lines += ["", f"trt-fp8 − trt-int8 is given for the convolutional models only (not for {', '.join(others)})."]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    cpu = env["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["int8_flags"].items())
    samples = "; ".join(f"{c['model']} {c['calibration_samples']} / {c['evaluation_samples']}" for c in doc["models"])
    lines = [
        "# TensorRT target and FP8: fidelity, structure and size",
        "",
        f"- date: {env['date']}; qonnx {env['qonnx_version']} ({env['qonnx_revision'] or 'revision unknown'})",
        (
            f"- onnxruntime {env['onnxruntime_version']}, numpy {env['numpy_version']}, "
            f"onnx-ir {env['onnx_ir_version']}, Python {env['python_version']}"
        ),
        f"- CPU: {cpu['model']}, {cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical CPUs; {flags}",
        f"- samples (calibration / held-out evaluation): {samples}",
        (
            "- variants: cpu-int8 = `qonnx.api.quantize` defaults (target cpu); trt-int8 = target tensorrt; "
            "trt-fp8 = target tensorrt, precision fp8 (FLOAT8E4M3FN); ort-default = onnxruntime `quantize_static` "
            f"as bench.py's anchor (QDQ, per-channel, U8 asymmetric activations, S8 weights), {env['anchor']['method']} "
            "calibration (its default), on the first input that quantizes into a loadable model: "
            f"{' → '.join(env['anchor']['input_attempts'])}"
        ),
        "- SQNR: worst output, signal and noise energies pooled over the held-out samples, against FP32 on onnxruntime's CPU provider",
        "- size: the variant's files over the FP32 model's",
        "- ORT CPU runs: onnxruntime's CPU provider loads the variant and runs every held-out sample",
        (
            "- TRT check: violations per rule of `qonnx.qdq_check.check_model(path, \"tensorrt\")`; exit code of "
            "`qonnx check --target tensorrt --json PATH` (0: none, 3: violations, 2: bad input), whose per-rule "
            "counts equal the API's unless the cell says otherwise"
        ),
        "- no latency is measured",
        (
            f"- total time: {doc['total_s']:.0f} s; load average (1, 5, 15 min) at start "
            f"{env['load_average_at_start']}, at end {env.get('load_average_at_end')}"
        ),
    ]
    for case in doc["models"]:
        lines += [
            "",
            f"## {case['model']}",
            "",
            (f"{case['description']}; {case['calibration_samples']} calibration and {case['evaluation_samples']} "
            f"held-out evaluation samples; FP32 {case['fp32_size_bytes'] / 2**20:.2f} MiB."),
            "",
            "| variant | SQNR dB | task metric | size vs FP32 | ORT CPU runs | TRT check violations (by rule) | check exit code |",
            "|---|---:|---|---:|---|---|---:|",
            *(_table_row(case, row) for row in case["variants"]),
            "",
            *(f"- {note}" for note in _case_notes(case)),
        ]
    lines += _summary(doc)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to one quantization")
    args = parser.parse_args(argv)
    names = model_names(parser, args.models)
    if not export.available():
        skipped = [n for n in names if n in EXPORTED]
        if skipped:
            progress(f"skipping {', '.join(skipped)}: exporting them needs {export.INSTALL_HINT}")
        names = [n for n in names if n not in EXPORTED]

    started = time.perf_counter()
    environment = {
        **environment_facts(),
        "anchor": {
            "quantizer": "onnxruntime.quantization.quantize_static after quant_pre_process",
            "input_attempts": [name for name, _ in ANCHOR_PREPROCESS_ATTEMPTS[ANCHOR_PREPROCESS]] + ["raw"],
            "quant_format": "QDQ",
            "per_channel": True,
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "method": ANCHOR_METHOD,
        },
        "qonnx_variants": [dataclasses.asdict(spec) for spec in QONNX_VARIANTS],
        "check_cli": " ".join(Path(part).name if i == 0 else part for i, part in enumerate(qonnx_cli())),
    }
    doc: dict[str, Any] = {"environment": environment, "models": []}
    with tempfile.TemporaryDirectory(prefix="qonnx-trt-bench-") as scratch:
        for name in names:
            doc["models"].append(bench_case(CASES[name], Path(scratch), args.timeout))
    return write_results(doc, started, args.out, "trt", markdown)


if __name__ == "__main__":
    sys.exit(main())
