"""Benchmark qonnx against FP32 and against onnxruntime's own static INT8 quantizer, on real models.

For every benchmark case (a model, its calibration data, its held-out evaluation data, its task
metrics) one run on this machine measures three kinds of variant:

* ``FP32``: the model as published;
* ``qonnx``: ``qonnx.api.quantize`` with the default pipeline (calibrated on the calibration data);
* ``ORT <method>``: the anchor, ``onnxruntime.quantization``: ``quant_pre_process``, then
  ``quantize_static`` in QDQ format, per-channel, U8 activations, S8 weights, once per calibration
  method (MinMax, Entropy, Percentile). Its calibration reader feeds the very tensors qonnx
  calibrates on (the same ``open_source`` call). The method whose worst output SQNR is highest is
  "the anchor" that speed is compared with.
  An anchor attempt fails when ``quant_pre_process`` raises (its symbolic shape inference gives
  up on many real models), when ``quantize_static`` raises, or when onnxruntime refuses the
  result; the next attempt then follows. With ``--anchor-preprocess retry`` (default) the
  attempts are: full pre-processing, pre-processing with ``skip_symbolic_shape=True`` (still
  folds constants and BatchNormalization), the raw model; with ``strict``: full pre-processing,
  the raw model. Every failed attempt is recorded, and a method whose attempts all fail is shown
  as failed with its error, not fatal.

Per variant:

* fidelity: SQNR in dB of every output against FP32, energies pooled over the held-out samples
  (``qonnx.metrics.Accumulator``), plus the case's task metrics (top-1 agreement for classifiers);
* latency: ``qonnx.runtime.measure_latency`` (2 intra-op threads, warm-up, median of ``--runs``) on
  the first evaluation sample, in ``--rounds`` rounds whose variant order alternates; the lowest
  round median is reported, since interference from other processes only ever adds time. Shown as
  speed ratios: FP32 time / variant time, and anchor time / variant time (> 1 is faster);
* size: the variant's files (model plus any external data) over the FP32 model file;
* cost of quantizing: wall time and peak resident memory, each quantization run in a fresh
  spawned process so that no quantizer inherits another's memory high-water mark. Peak RSS
  includes the interpreter and library imports (``rss_at_start_mib`` in the JSON). qonnx's
  quantize() also checks fidelity on the evaluation data; that part of its time is subtracted.

Results go to ``<out>/bench.json`` and ``<out>/bench.md`` (written atomically) with the versions,
CPU flags and thread counts they depend on; the markdown is also printed. Quantized models live
in a temporary folder that is removed at the end.

Usage: ``python benchmarks/bench.py [--models yolov8n,ppocr-det,ppocr-cls] [--runs 20] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import qonnx
from qonnx import metrics, runtime
from qonnx.calib.sources import ImagePreprocess, Source, open_source
from qonnx.models.data import photo_folders
from qonnx.models.kit import KIT, fetch

LATENCY_THREADS = 2
ANCHOR_METHODS = ("MinMax", "Entropy", "Percentile")
# quant_pre_process attempts, in order, per --anchor-preprocess; the raw model comes after the last.
ANCHOR_PREPROCESS_ATTEMPTS = {
    "retry": (("pre-processed", {}), ("pre-processed with skip_symbolic_shape", {"skip_symbolic_shape": True})),
    "strict": (("pre-processed", {}),),
}
CPU_FLAGS_FOR_INT8 = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
REPO_ROOT = Path(__file__).resolve().parent.parent

Feed = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------
# What is benchmarked: one entry per model


@dataclasses.dataclass(frozen=True)
class TaskMetric:
    """A task-level comparison of a variant's outputs with FP32's over the evaluation samples."""

    label: str  # table column header
    key: str  # JSON key
    compute: Callable[[list[Feed], list[Outputs], list[Outputs]], float]  # (feeds, fp32, variant)
    as_percent: bool = True


def top1_agreement(output_index: int = 0) -> TaskMetric:
    """Share of samples whose arg-max class (last axis of one output) is FP32's."""

    def compute(feeds: list[Feed], reference: list[Outputs], test: list[Outputs]) -> float:
        name = list(reference[0])[output_index]
        ref = np.concatenate([r[name].reshape(-1, r[name].shape[-1]) for r in reference])
        tst = np.concatenate([t[name].reshape(-1, t[name].shape[-1]) for t in test])
        return metrics.top1_agreement(ref, tst)

    return TaskMetric("top-1 agr.", "top1_agreement", compute)


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """A model and everything needed to quantize and judge it.

    ``calib_data`` and ``eval_data`` return anything ``qonnx.api.quantize`` and
    ``qonnx.calib.sources.open_source`` accept: a folder of images or .npz files, a .npz file, a
    Source, or a list of feed dicts. They must not overlap.
    """

    name: str
    description: str
    model_path: Callable[[], Path]
    calib_data: Callable[[], Any]
    eval_data: Callable[[], Any]
    preprocess: ImagePreprocess | None = None
    task_metrics: tuple[TaskMetric, ...] = ()


def _kit_image_case(name: str, task_metrics: tuple[TaskMetric, ...] = ()) -> BenchCase:
    entry = KIT[name]
    return BenchCase(
        name=name,
        description=entry.description,
        model_path=lambda: fetch(name),
        calib_data=lambda: photo_folders()[0],
        eval_data=lambda: photo_folders()[1],
        preprocess=entry.preprocess,
        task_metrics=task_metrics,
    )


# model name -> how to get the model, calibration data, evaluation data, task metrics.
# A text encoder would add e.g. BenchCase("minilm", ..., calib_data=<list of tokenized feeds from
# qonnx.models.data.sentences()>, task_metrics=(<pooled-embedding cosine>, <NN agreement>)).
CASES: dict[str, BenchCase] = {
    case.name: case
    for case in [
        _kit_image_case("yolov8n"),
        _kit_image_case("ppocr-det"),
        _kit_image_case("ppocr-cls", task_metrics=(top1_agreement(),)),
    ]
}


def open_case_source(case: BenchCase, model_path: Path, which: str) -> Source:
    data = case.calib_data() if which == "calib" else case.eval_data()
    return open_source(data, ir.load(model_path), case.preprocess)


# ----------------------------------------------------------------------------------------------
# Quantizers, each run in a fresh process


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def quantize_with_qonnx(case_name: str, model_path: str, output_path: str) -> dict[str, Any]:
    import qonnx.api

    case = CASES[case_name]
    started = time.perf_counter()
    result = qonnx.api.quantize(
        model_path, output_path, calib=case.calib_data(), eval_data=case.eval_data(), preprocess=case.preprocess
    )
    wall_s = time.perf_counter() - started
    timing = result.report.get("timing", {})
    fidelity = result.report.get("fidelity") or {}
    return {
        "quant_s": wall_s - timing.get("fidelity_s", 0.0),
        "quantize_call_s": wall_s,
        "pipeline": result.report.get("pipeline"),
        "self_reported_sqnr_db": {k: v["sqnr_db"] for k, v in fidelity.get("outputs", {}).items()},
        "calibration": result.report.get("calibration"),
    }


def quantize_with_onnxruntime(
    case_name: str, model_path: str, output_path: str, method: str, preprocess_mode: str
) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    case = CASES[case_name]
    calib_source = open_case_source(case, Path(model_path), "calib")

    class SourceReader(CalibrationDataReader):
        def __init__(self, source: Source):
            self.source = source
            self.rewind()

        def get_next(self):
            return next(self.feeds, None)

        def rewind(self):
            self.feeds = iter(self.source)

    work = Path(output_path).parent
    preprocessed = work / "preprocessed.onnx"
    attempts = [*ANCHOR_PREPROCESS_ATTEMPTS[preprocess_mode], ("raw", None)]
    attempt_errors: dict[str, str] = {}
    started = time.perf_counter()
    for attempt, options in attempts:
        # An attempt fails when quant_pre_process raises, quantize_static raises, or onnxruntime
        # refuses the result; the next attempt then starts over from the model as published.
        attempt_started = time.perf_counter()
        stage = "quant_pre_process"
        try:
            quant_input = model_path
            if options is not None:
                quant_pre_process(model_path, str(preprocessed), **options)
                quant_input = str(preprocessed)
            preprocess_s = time.perf_counter() - attempt_started
            stage = "quantize_static"
            quantize_static(
                quant_input,
                output_path,
                SourceReader(calib_source),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
            )
            stage = "loading the result"
            runtime.session(output_path)
        except Exception as exc:
            attempt_errors[attempt] = f"{stage}: {_first_line(exc)}"
            if attempt == attempts[-1][0]:
                raise
            continue
        break
    if preprocessed.exists():
        preprocessed.unlink()  # so that the size counts only the quantized model
    return {
        "quant_s": time.perf_counter() - attempt_started,  # the attempt that succeeded
        "all_attempts_s": time.perf_counter() - started,
        "pre_process_s": preprocess_s,
        "quantized_input": attempt,
        "attempt_errors": attempt_errors,
        "calibration_samples": len(calib_source),
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if text:
        # onnxruntime's load errors carry the file path and a full node dump before the reason.
        text = re.sub(r"Load model from \S+ failed:\s*", "", text.splitlines()[0])
        text = re.sub(r"In Node, \(.*\) , ", "", text)
        return f"{type(exc).__name__}: {text}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}{where}"


class _LogCollector(logging.Handler):
    """Keeps the distinct log warnings of a quantizer (with counts) instead of printing them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # Messages that differ only in a tensor name count as one kind.
        kind = re.sub(r"'[^']*'", "'…'", record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else "")
        self.counts[kind] = self.counts.get(kind, 0) + 1


def _isolated_entry(connection, workdir: str, function_name: str, args: tuple) -> None:
    os.chdir(workdir)  # quantizers that drop scratch files drop them here, not in the repository
    collector = _LogCollector()
    logging.basicConfig(handlers=[collector], level=logging.WARNING, force=True)
    rss_at_start = _peak_rss_mib()
    try:
        outcome = {"ok": True, "result": globals()[function_name](*args)}
    except BaseException as exc:
        outcome = {"ok": False, "error": _first_line(exc), "traceback": traceback.format_exc(limit=-6)}
    outcome.update(rss_at_start_mib=rss_at_start, peak_rss_mib=_peak_rss_mib(), log_warnings=collector.counts)
    try:
        connection.send(outcome)
    finally:
        connection.close()


def run_isolated(function: Callable[..., dict[str, Any]], args: tuple, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``function(*args)`` in a freshly spawned interpreter; its result, or the failure, plus peak RSS."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_isolated_entry, args=(sender, str(workdir), function.__name__, args))
    started = time.perf_counter()
    process.start()
    sender.close()
    message = None
    try:
        if receiver.poll(timeout_s):
            message = receiver.recv()
    except EOFError:  # the child died before answering
        pass
    process.join(10 if message is not None else 1)
    timed_out = process.is_alive()
    if timed_out:
        process.kill()
        process.join()
    wall_s = time.perf_counter() - started
    if message is None:
        reason = f"no answer within {timeout_s:.0f} s" if timed_out else f"process died (exit code {process.exitcode})"
        return {"ok": False, "error": reason, "process_s": wall_s}
    message["process_s"] = wall_s
    return message


# ----------------------------------------------------------------------------------------------
# Measurements


@dataclasses.dataclass
class Variant:
    name: str
    path: Path | None = None
    kind: str = "fp32"  # fp32 | qonnx | anchor
    error: str | None = None
    quantization: dict[str, Any] = dataclasses.field(default_factory=dict)
    sqnr_db: dict[str, float] = dataclasses.field(default_factory=dict)
    cosine: dict[str, float] = dataclasses.field(default_factory=dict)
    task: dict[str, float] = dataclasses.field(default_factory=dict)
    latency_round_medians_ms: list[float] = dataclasses.field(default_factory=list)
    size_bytes: int | None = None

    @property
    def latency_ms(self) -> float | None:
        return min(self.latency_round_medians_ms) if self.latency_round_medians_ms else None

    @property
    def worst_sqnr_db(self) -> float | None:
        return min(self.sqnr_db.values()) if self.sqnr_db else None


def run_outputs(model_path: Path, feeds: list[Feed]) -> list[Outputs]:
    session = runtime.session(model_path)
    return [session.run(feed) for feed in feeds]


def measure_fidelity(variant: Variant, case: BenchCase, feeds: list[Feed], reference: list[Outputs]) -> None:
    test = run_outputs(variant.path, feeds)
    accumulators: dict[str, metrics.Accumulator] = {}
    for ref_out, test_out in zip(reference, test):
        for name, value in ref_out.items():
            accumulators.setdefault(name, metrics.Accumulator()).update(value, test_out[name])
    variant.sqnr_db = {name: round(acc.sqnr_db(), 3) for name, acc in accumulators.items()}
    variant.cosine = {name: round(acc.cosine(), 6) for name, acc in accumulators.items()}
    variant.task = {m.key: m.compute(feeds, reference, test) for m in case.task_metrics}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure_latencies(variants: Sequence[Variant], feed: Feed, runs: int, rounds: int) -> None:
    for round_index in range(rounds):
        order = variants if round_index % 2 == 0 else list(reversed(variants))
        for variant in order:
            timing = runtime.measure_latency(variant.path, feed, runs=runs, threads=LATENCY_THREADS)
            variant.latency_round_medians_ms.append(round(timing["median_s"] * 1e3, 3))


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench_case(
    case: BenchCase, scratch: Path, runs: int, rounds: int, timeout_s: float, anchor_preprocess: str
) -> dict[str, Any]:
    model_path = case.model_path()
    eval_source = open_case_source(case, model_path, "eval")
    calib_source = open_case_source(case, model_path, "calib")
    feeds = list(eval_source)
    progress(f"{case.name}: {model_path.name}, {len(calib_source)} calibration / {len(feeds)} evaluation samples")

    fp32 = Variant("FP32", model_path, "fp32", size_bytes=model_path.stat().st_size)
    variants = [fp32]

    def quantize(name: str, kind: str, function: Callable[..., dict[str, Any]], *extra: str) -> Variant:
        folder = scratch / case.name / name.replace(" ", "-")
        folder.mkdir(parents=True)
        output = folder / "model.onnx"
        progress(f"{case.name}: quantizing with {name} ...")
        outcome = run_isolated(function, (case.name, str(model_path), str(output), *extra), folder, timeout_s)
        variant = Variant(name, output, kind)
        variant.quantization = {k: v for k, v in outcome.items() if k not in ("ok", "result")}
        variant.quantization.update(outcome.get("result") or {})
        if not outcome["ok"]:
            variant.error = outcome["error"]
            progress(f"{case.name}: {name} failed: {variant.error}")
        else:
            variant.size_bytes = folder_bytes(folder)
            progress(
                f"{case.name}: {name} done in {variant.quantization['quant_s']:.1f} s, "
                f"peak RSS {variant.quantization['peak_rss_mib']:.0f} MiB"
            )
        variants.append(variant)
        return variant

    quantize("qonnx", "qonnx", quantize_with_qonnx)
    for method in ANCHOR_METHODS:
        quantize(f"ORT {method}", "anchor", quantize_with_onnxruntime, method, anchor_preprocess)

    progress(f"{case.name}: fidelity on {len(feeds)} held-out samples")
    reference = run_outputs(model_path, feeds)
    for variant in variants:
        if variant.error is not None:
            continue
        try:
            measure_fidelity(variant, case, feeds, reference)
        except Exception as exc:
            variant.error = f"evaluation: {_first_line(exc)}"
            progress(f"{case.name}: {variant.name} {variant.error}")

    working = [v for v in variants if v.error is None]
    progress(f"{case.name}: latency of {len(working)} variants, {rounds} x {runs} runs each, {LATENCY_THREADS} threads")
    measure_latencies(working, feeds[0], runs, rounds)

    anchors = [v for v in working if v.kind == "anchor"]
    best_anchor = max(anchors, key=lambda v: v.worst_sqnr_db) if anchors else None
    return summarize_case(case, model_path, variants, fp32, best_anchor, len(calib_source), len(feeds))


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def summarize_case(
    case: BenchCase,
    model_path: Path,
    variants: list[Variant],
    fp32: Variant,
    best_anchor: Variant | None,
    calib_samples: int,
    eval_samples: int,
) -> dict[str, Any]:
    rows = []
    for v in variants:
        quant = v.quantization
        rows.append(
            {
                "variant": v.name,
                "kind": v.kind,
                "best_anchor": v is best_anchor,
                "error": v.error,
                "sqnr_db": v.sqnr_db,
                "cosine": v.cosine,
                "task": v.task,
                "latency_ms": v.latency_ms,
                "latency_round_medians_ms": v.latency_round_medians_ms,
                "speed_vs_fp32": _ratio(fp32.latency_ms, v.latency_ms),
                "speed_vs_anchor": _ratio(best_anchor.latency_ms, v.latency_ms) if best_anchor else None,
                "size_bytes": v.size_bytes,
                "size_vs_fp32": _ratio(v.size_bytes, fp32.size_bytes),
                "quant_s": round(quant["quant_s"], 2) if "quant_s" in quant else None,
                "peak_rss_mib": round(quant["peak_rss_mib"]) if "peak_rss_mib" in quant else None,
                "quantization": {k: v for k, v in quant.items() if k not in ("quant_s", "peak_rss_mib")},
            }
        )
    return {
        "model": case.name,
        "description": case.description,
        "model_file": str(model_path),
        "calibration_samples": calib_samples,
        "evaluation_samples": eval_samples,
        "task_metrics": [{"key": m.key, "label": m.label, "as_percent": m.as_percent} for m in case.task_metrics],
        "best_anchor": best_anchor.name if best_anchor else None,
        "variants": rows,
    }


# ----------------------------------------------------------------------------------------------
# Environment and report


def cpu_facts() -> dict[str, Any]:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's entry
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or "unknown",
        "int8_flags": {flag: flag in flags for flag in CPU_FLAGS_FOR_INT8},
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def source_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def environment(runs: int, rounds: int, anchor_preprocess: str) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "qonnx_version": qonnx.__version__,
        "qonnx_revision": source_revision(),
        "onnxruntime_version": runtime.version,
        "numpy_version": np.__version__,
        "onnx_ir_version": ir.__version__,
        "python_version": platform.python_version(),
        "cpu": cpu_facts(),
        "latency": {"intra_op_threads": LATENCY_THREADS, "inter_op_threads": 1, "runs": runs, "rounds": rounds, "warmup": 3},
        "anchor": {
            "quantizer": "onnxruntime.quantization.quantize_static after quant_pre_process",
            "input_attempts": [name for name, _ in ANCHOR_PREPROCESS_ATTEMPTS[anchor_preprocess]] + ["raw"],
            "quant_format": "QDQ",
            "per_channel": True,
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "methods": list(ANCHOR_METHODS),
            "best_by": "highest worst-output SQNR",
        },
    }


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def _speed(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _task_cell(value: float | None, as_percent: bool) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.1f}%" if as_percent else f"{value:.3f}"


def _clip(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _case_notes(case: dict[str, Any]) -> list[str]:
    """Failures and pre-processing outcomes, each stated once with the variants it applies to."""
    variants_by_note: dict[str, list[str]] = {}
    for row in case["variants"]:
        quant = row["quantization"]
        found = [f"failed: {_clip(row['error'])}"] if row["error"] else []
        found += [f"{attempt} model: failed in {_clip(error)}" for attempt, error in (quant.get("attempt_errors") or {}).items()]
        if quant.get("quantized_input"):
            found.append(f"quantized the {quant['quantized_input']} model")
        for note in found:
            variants_by_note.setdefault(note, []).append(row["variant"])
    notes = [f"{', '.join(names)}: {note}" for note, names in variants_by_note.items()]
    fp32_ms = next((r["latency_ms"] for r in case["variants"] if r["kind"] == "fp32"), None)
    return notes + [f"FP32 latency {_fmt(fp32_ms, '.2f')} ms"]


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    cpu = env["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["int8_flags"].items())
    lines = [
        "# qonnx benchmark",
        "",
        f"- date: {env['date']}; qonnx {env['qonnx_version']} ({env['qonnx_revision'] or 'revision unknown'})",
        f"- onnxruntime {env['onnxruntime_version']}, numpy {env['numpy_version']}, onnx-ir {env['onnx_ir_version']}, "
        f"Python {env['python_version']}",
        f"- CPU: {cpu['model']}, {cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical CPUs; {flags}",
        f"- latency: {env['latency']['intra_op_threads']} intra-op threads, median of {env['latency']['runs']} runs after "
        f"{env['latency']['warmup']} warm-up, lowest of {env['latency']['rounds']} rounds; "
        "speed = reference time / variant time (> 1: faster)",
        "- SQNR: per output (` / ` between outputs), signal and noise energies pooled over the held-out samples",
        "- anchor: onnxruntime quant_pre_process + quantize_static on the first input that works (attempts: "
        + " → ".join(env["anchor"]["input_attempts"]) + "), quantize_static (QDQ, per-channel, U8 activations, S8 weights); "
        "★ marks the method with the best worst-output SQNR, the one \"vs anchor\" compares with",
        "- quant time excludes qonnx's built-in fidelity check; peak RSS is the quantizing process's, imports included",
        f"- total benchmark time: {doc['total_s']:.0f} s",
    ]
    for case in doc["models"]:
        # Every table keeps a task-metric column so that tables line up; "—" where the case has none.
        task_columns = case["task_metrics"] or [{"key": None, "label": "top-1 agr.", "as_percent": True}]
        lines += [
            "",
            f"## {case['model']}",
            "",
            f"{case['description']}; {case['calibration_samples']} calibration and {case['evaluation_samples']} "
            "held-out evaluation samples.",
            "",
            "| variant | SQNR dB | " + " | ".join(c["label"] for c in task_columns)
            + " | speed vs FP32 | speed vs anchor | size vs FP32 | quant time s | peak RSS MiB |",
            "|---|---:|" + "---:|" * len(task_columns) + "---:|---:|---:|---:|---:|",
        ]
        for row in case["variants"]:
            name = row["variant"] + (" ★" if row["best_anchor"] else "")
            cost = [_fmt(row["quant_s"], ".1f"), _fmt(row["peak_rss_mib"], ".0f")]
            if row["error"]:
                cells = [name, "failed", *["—"] * (len(task_columns) + 3), *cost]
            else:
                quantized = row["kind"] != "fp32"
                sqnr = " / ".join(f"{v:.1f}" for v in row["sqnr_db"].values()) if quantized else "—"
                task_cells = [
                    _task_cell(row["task"].get(c["key"]) if quantized else None, c["as_percent"]) for c in task_columns
                ]
                cells = [
                    name,
                    sqnr,
                    *task_cells,
                    _speed(row["speed_vs_fp32"]),
                    _speed(row["speed_vs_anchor"]),
                    _fmt(row["size_vs_fp32"], ".2f"),
                    *cost,
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {note}" for note in _case_notes(case)]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency round (at least 20)")
    parser.add_argument("--rounds", type=int, default=2, help="latency rounds per variant, order alternating")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to one quantization")
    parser.add_argument(
        "--anchor-preprocess",
        choices=sorted(ANCHOR_PREPROCESS_ATTEMPTS),
        default="retry",
        help="when quant_pre_process fails: retry without symbolic shape inference (retry) or quantize the raw model (strict)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.runs < 20:
        parser.error("--runs must be at least 20")

    started = time.perf_counter()
    doc: dict[str, Any] = {"environment": environment(args.runs, args.rounds, args.anchor_preprocess), "models": []}
    with tempfile.TemporaryDirectory(prefix="qonnx-bench-") as scratch:
        for name in names:
            case = CASES[name]
            doc["models"].append(bench_case(case, Path(scratch), args.runs, args.rounds, args.timeout, args.anchor_preprocess))
    doc["total_s"] = round(time.perf_counter() - started, 1)
    report = markdown(doc)
    write_atomically(args.out / "bench.json", json.dumps(doc, indent=2) + "\n")
    write_atomically(args.out / "bench.md", report)
    print(report)
    progress(f"done in {doc['total_s']:.0f} s; wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
