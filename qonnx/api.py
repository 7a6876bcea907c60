"""The Python API: build a pipeline from arguments, run it, save the model, measure, report.

Holds no graph logic: everything that rewrites the model is a pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import qonnx
from qonnx import ir as qir
from qonnx import metrics, runtime
from qonnx.calib.sources import ImagePreprocess, Source, open_source
from qonnx.errors import UserError
from qonnx.pipeline import Context, PipelineStep, build, default_pipeline, parse_pipeline, run_pipeline
from qonnx.policy import PLAN_KEY
from qonnx.report import SCHEMA, write_json
from qonnx.targets import FLOAT_PRECISIONS, default_target

logger = logging.getLogger(__name__)

__all__ = ["QuantizeResult", "quantize", "evaluate_fidelity", "split_holdout"]

Data = str | os.PathLike | Iterable[Mapping[str, np.ndarray]] | Source


@dataclasses.dataclass
class QuantizeResult:
    output: Path
    report: dict[str, Any]


def split_holdout(source: Source) -> tuple[Source, Source, bool]:
    """Calibration and evaluation parts of one source: the last quarter (at least one) is held out.

    With a single sample there is nothing to hold out: it serves both, and the flag says so.
    """
    n = len(source)
    if n < 2:
        return source, source, True
    held = max(1, n // 4)
    return source.subset(range(n - held)), source.subset(range(n - held, n)), False


def evaluate_fidelity(reference: ir.Model | str | os.PathLike, test: ir.Model | str | os.PathLike, data: Source) -> dict[str, Any]:
    """SQNR (dB) and cosine of every output of ``test`` against ``reference`` over ``data``."""
    ref_session, test_session = runtime.session(reference), runtime.session(test)
    accumulators: dict[str, metrics.Accumulator] = {}
    for feed in data:
        ref_out, test_out = ref_session.run(feed), test_session.run(feed)
        for name, value in ref_out.items():
            accumulators.setdefault(name, metrics.Accumulator()).update(value, test_out[name])
    return {
        "samples": len(data),
        "data": data.description,
        "outputs": {k: {"sqnr_db": round(a.sqnr_db(), 3), "cosine": round(a.cosine(), 6)} for k, a in accumulators.items()},
    }


def _model_facts(path: Path, model: ir.Model) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": qir.file_hash(path),
        "bytes": qir.file_size(path),
        "opset": model.opset_imports.get("", 0),
        "nodes": sum(1 for _ in qir.all_nodes(model)),
    }


def _node_formats(model: ir.Model) -> dict[str, dict[str, Any]]:
    """The format of every node but the Q/DQ ones, from the plan in the model's metadata."""
    plan = json.loads(model.metadata_props.get(PLAN_KEY, "{}"))
    specs, reasons = plan.get("specs", {}), plan.get("reasons", {})
    formats = {name: specs.get(spec_id, {"format": spec_id})["format"] for name, spec_id in plan.get("nodes", {}).items()}
    result = {}
    for index, node in enumerate(model.graph):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            continue
        name = node.name or f"{node.op_type}_{index}"
        entry = {"op_type": node.op_type, "format": formats.get(name, "float")}
        if name in reasons:
            entry["reason"] = reasons[name]
        result[name] = entry
    return result


def _check_writable(path: Path, what: str) -> None:
    """Fail before the work, not after it, when ``path`` cannot be written."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise UserError(f"cannot write the {what} into {path.parent}: {exc.strerror or exc}") from None


def _with_options(step: PipelineStep, options: Mapping[str, Any]) -> PipelineStep:
    """``step`` with the given (not None) options added; an option the pipeline text sets differently is an error."""
    merged = dict(step.options)
    for key, value in options.items():
        if value is None:
            continue
        if key in merged and merged[key] != value:
            raise UserError(f"{step.name}: option {key}={value} conflicts with {key}={merged[key]} in the pipeline")
        merged[key] = value
    return dataclasses.replace(step, options=merged)


def quantize(
    model: str | os.PathLike,
    output: str | os.PathLike,
    calib: Data | None = None,
    *,
    eval_data: Data | None = None,
    precision: str = "int8",
    target: str | None = None,
    mode: str = "static",
    reduce_range: bool | None = None,
    io_types: str = "float32",
    samples: int | None = None,
    pipeline: str | None = None,
    policy: str | os.PathLike | None = None,
    preprocess: ImagePreprocess | None = None,
    report: str | os.PathLike | None = None,
    latency: bool = False,
    sensitivity: int = 0,
    debug: bool = False,
    progress: bool = False,
    dump_after: Iterable[str] = (),
    uncalibrated: bool = False,
    method: str | None = None,
    percentile: float | None = None,
    batch_size: int | None = None,
    calib_memory: str | None = None,
    ranges: str | os.PathLike | None = None,
    save_ranges: str | os.PathLike | None = None,
) -> QuantizeResult:
    """Quantize ``model`` into ``output`` and return the report (also written to ``report``).

    ``calib`` and ``eval_data``: a .npz file, a folder of .npz files or images, a Source, or an
    iterable of feed dicts. Without ``eval_data`` the last quarter of ``calib`` is held out for the
    fidelity figures and not used for calibration.

    ``method``, ``percentile``, ``batch_size``, ``calib_memory``, ``ranges`` (a saved range table to
    reuse) and ``save_ranges`` are the options of the pipeline's ``calibrate`` pass; given here they
    fill the options the pipeline text leaves out.

    ``reduce_range``: 7-bit INT8 weights (True), full-range (False), or None: the target's choice
    for this machine (``cpu``: Conv and Gemm weights in 7 bits where onnxruntime's U8S8 kernels
    saturate, on x86 CPUs without VNNI; see ``qonnx.host`` and ``Target.seven_bit_ops_without_vnni``).

    ``precision`` "fp16" or "bf16" converts instead of quantizing (target ``cuda`` unless named):
    ``calib`` is then optional (its ranges, when given, are the evidence for FP32 islands) and
    ``io_types`` set to the precision makes the graph's inputs and outputs 16-bit too.
    """
    started = time.perf_counter()
    target = target or default_target(precision)
    if precision not in ("int8", *FLOAT_PRECISIONS):
        raise UserError(f"unknown precision {precision!r}; known: int8, {', '.join(FLOAT_PRECISIONS)}")
    if io_types not in ("float32", precision) or (io_types != "float32" and precision not in FLOAT_PRECISIONS):
        raise UserError(f"--io-types {io_types} does not go with --precision {precision} (choose float32 or {precision})")
    model_path, output_path = Path(model), Path(output)
    if output_path.exists() and model_path.exists() and output_path.resolve() == model_path.resolve():
        raise UserError(f"refusing to overwrite the input model {model_path}; choose another output path")
    _check_writable(output_path, "output model")
    if report is not None:
        _check_writable(Path(report), "report")
    if samples is not None and samples <= 0:
        raise UserError("--samples must be a positive number")
    ir_model = qir.load(model_path)
    input_facts = _model_facts(model_path, ir_model)

    calib_source = eval_source = None
    eval_on_calibration = False
    if calib is not None:
        calib_source = open_source(calib, ir_model, preprocess)
        if eval_data is not None:
            eval_source = open_source(eval_data, ir_model, preprocess)
        else:
            calib_source, eval_source, eval_on_calibration = split_holdout(calib_source)
    elif eval_data is not None:
        eval_source = open_source(eval_data, ir_model, preprocess)

    text = pipeline or default_pipeline(precision, calibrated=calib_source is not None, keep_io_types=io_types == "float32")
    steps = parse_pipeline(text)
    calibrate_options = {
        "method": method,
        "percentile": percentile,
        "batch_size": batch_size,
        "memory": calib_memory,
        "ranges": None if ranges is None else str(ranges),
        "save": None if save_ranges is None else str(save_ranges),
    }
    steps = [_with_options(step, calibrate_options) if step.name == "calibrate" else step for step in steps]
    if ranges is not None and not Path(ranges).is_file():
        raise UserError(f"range table not found: {ranges}")
    if save_ranges is not None:
        _check_writable(Path(save_ranges), "range table")
    if policy is not None and not Path(policy).is_file():
        raise UserError(f"policy file not found: {policy}")
    if mode not in ("static", "dynamic"):
        raise UserError(f"unknown mode {mode!r}; known modes: static, dynamic")
    context = Context(target=target, precision=precision, mode=mode, reduce_range=reduce_range, policy=None if policy is None else str(policy), calib=calib_source, samples=samples, progress=progress, debug=debug)
    passes = build(steps, context)
    verify = None
    if debug:
        from qonnx.passes.verify import verify_model

        verify = verify_model
    t0 = time.perf_counter()
    records = run_pipeline(ir_model, passes, context, dump_after=dump_after, dump_dir=output_path.parent, verify=verify)
    pipeline_s = time.perf_counter() - t0
    quantized = ir_model  # the passes rewrite it in place
    t0 = time.perf_counter()
    qir.save(quantized, output_path, protect=(model_path,))
    save_s = time.perf_counter() - t0

    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "qonnx_version": qonnx.__version__,
        "onnxruntime_version": runtime.version,
        "input": input_facts,
        "output": _model_facts(output_path, quantized),
        "target": target,
        "precision": precision,
        "mode": mode,
        "reduce_range": bool(context.notes.get("reduce_range_ops")),
        "reduce_range_ops": context.notes.get("reduce_range_ops", []),
        "pipeline": ",".join(str(s) for s in steps),
        "passes": [r.to_dict() for r in records],
        "calibration": context.notes.get("calibration"),
        "fusion": context.notes.get("fusion"),
        "uncalibrated": uncalibrated,
        "nodes": _node_formats(quantized),
    }
    if precision in FLOAT_PRECISIONS:
        doc["float_islands"] = context.notes.get("float_islands")
        doc["float_sensitivity"] = context.notes.get("float_sensitivity")
        doc["conversion"] = context.notes.get("conversion")
    doc["size_ratio"] = round(doc["output"]["bytes"] / doc["input"]["bytes"], 4)
    t0 = time.perf_counter()
    if eval_source is not None:
        test: ir.Model | Path = output_path
        if precision == "bf16":
            # onnxruntime's CPU provider has no BF16 kernels: measure the same roundings in FP32.
            from qonnx.passes.emulate_float import emulated

            test = emulated(qir.load(output_path))
        doc["fidelity"] = evaluate_fidelity(model_path, test, eval_source)
        doc["fidelity"]["held_out"] = not eval_on_calibration
        if precision == "bf16":
            doc["fidelity"]["emulated"] = True
    if sensitivity and eval_source is not None and precision == "int8":
        from qonnx.sensitivity import activation_sensitivity

        feeds = [eval_source[i] for i in range(min(sensitivity, len(eval_source)))]
        doc["sensitivity"] = activation_sensitivity(model_path, quantized, feeds, progress=progress)
    fidelity_s = time.perf_counter() - t0  # measuring, not quantizing
    if latency and eval_source is not None:
        feed = eval_source[0]
        fp32 = runtime.measure_latency(model_path, feed)
        q = runtime.measure_latency(output_path, feed)
        doc["latency"] = {
            "fp32_ms": round(fp32["median_s"] * 1e3, 3),
            "quantized_ms": round(q["median_s"] * 1e3, 3),
            "speedup": round(fp32["median_s"] / q["median_s"], 3),
            "runs": q["runs"],
            "threads": 2,
        }
    doc["timing"] = {
        "pipeline_s": round(pipeline_s, 3),
        "save_s": round(save_s, 3),
        "fidelity_s": round(fidelity_s, 3),
        "total_s": round(time.perf_counter() - started, 3),
    }
    if report is not None:
        write_json(doc, report)
    return QuantizeResult(output_path, doc)
