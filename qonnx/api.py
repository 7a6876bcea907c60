"""The Python API: check the arguments, build a pipeline, run it, measure the model, then publish it.

Holds no graph logic: everything that rewrites the model is a pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
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
from qonnx.calib.ranges import RangeTable
from qonnx.config import QuantizeConfig
from qonnx.errors import UserError
from qonnx.pipeline import Context, PipelineStep, build, check_dump_after, default_pipeline, parse_pipeline, run_pipeline
from qonnx.policy import PLAN_KEY
from qonnx.report import SCHEMA, write_json
from qonnx.targets import FLOAT_PRECISIONS

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
    for index, feed in enumerate(data):
        try:
            ref_out, test_out = ref_session.run(feed), test_session.run(feed)
        except UserError as exc:  # onnxruntime refused this sample: say which
            raise UserError(f"evaluation sample {index}: {exc}") from exc
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
    """Fail before the work, not after it, when ``path`` cannot be written; creates nothing."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory")
    folder = path.parent
    while not folder.exists():  # the folders still to be made are made when the file is written
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write the {what} into {path.parent}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"cannot write the {what} into {path.parent}: {exc.strerror or exc}") from None


def _check_loadable(path: Path) -> None:
    """The input model must be one onnxruntime loads (calibration and fidelity run it): if not, it is
    the model's fault (an undefined input, an unknown operator or opset, a type or shape error), and
    it is said before any work. Without graph optimizations a session costs milliseconds."""
    try:
        runtime.session(path, disable_optimizations=True)
    except RuntimeError as exc:
        reason = re.sub(r"^.*?Load model from .*? failed:\s*", "", str(exc))
        reason = re.sub(r"^/\S+:\d+ [^(]*\(.*?\) (?=[A-Z])", "", reason)  # the C++ source line and signature
        raise UserError(f"{path} is not a model onnxruntime can load: {reason}") from exc


def _missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove the folders a failed run made, deepest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            continue


def _withdraw(path: Path) -> None:
    """Remove a model this run published (with its external data), when a later step failed."""
    for part in qir.external_data_files(path) if path.is_file() else []:
        part.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


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
    config: QuantizeConfig | None = None,
    eval_data: Data | None = None,
    preprocess: ImagePreprocess | None = None,
    report: str | os.PathLike | None = None,
    progress: bool = False,
    uncalibrated: bool = False,
    **options: Any,
) -> QuantizeResult:
    """Quantize ``model`` into ``output`` as ``config`` says, and return the report (also written to ``report``).

    ``config``: a :class:`qonnx.config.QuantizeConfig` (default: static INT8 for the CPU). The older
    keyword form, ``quantize(model, output, calib, precision="fp16", method="entropy", latency=True)``,
    builds the config from the keywords (its fields, plus ``method``, ``percentile``,
    ``batch_size``, ``calib_memory``, ``ranges``, ``save_ranges``, ``latency`` and ``sensitivity``)
    and runs the same way; giving both is an error.

    ``calib`` and ``eval_data``: a .npz file, a folder of .npz files or images (read with
    ``preprocess``), a Source, or an iterable of feed dicts. Without ``eval_data`` the last quarter
    of ``calib`` is held out for the fidelity figures and not used for calibration.

    The calibration options of the config fill the options the pipeline text leaves out of its
    ``calibrate`` pass; ``save_ranges`` writes the table that pass used.

    Every argument is checked (UserError) before any work. Outputs appear only when everything has
    succeeded: the model is measured on a temporary file beside ``output`` and renamed into place,
    then the range table and the report are written; after a failure none of them is left behind.

    ``reduce_range`` None leaves the choice to the target for this machine (``cpu``: Conv and Gemm
    weights in 7 bits where onnxruntime's U8S8 kernels saturate, on x86 CPUs without VNNI; see
    ``qonnx.host`` and ``Target.seven_bit_ops_without_vnni``).

    ``precision`` "fp16" or "bf16" converts instead of quantizing (target ``cuda`` unless named):
    ``calib`` is then optional (its ranges, when given, are the evidence for FP32 islands) and
    ``io_types`` set to the precision makes the graph's inputs and outputs 16-bit too.
    """
    if options:
        if config is not None:
            raise TypeError("quantize() takes either config or keyword options, not both")
        config = QuantizeConfig.from_keywords(**options)
    elif config is None:
        config = QuantizeConfig()
    elif not isinstance(config, QuantizeConfig):
        raise TypeError(f"config must be a QuantizeConfig, not {type(config).__name__}")
    return _run(model, output, calib, config, eval_data, preprocess, report, progress, uncalibrated)


def _run(model, output, calib, config: QuantizeConfig, eval_data, preprocess, report, progress: bool, uncalibrated: bool) -> QuantizeResult:
    started = time.perf_counter()
    cal, evaluation = config.calibration, config.evaluation
    precision, mode, debug, ranges = config.precision, config.mode, config.debug, cal.ranges
    target = config.effective_target
    model_path, output_path = Path(model), Path(output)
    report_path = None if report is None else Path(report)
    save_ranges_path = None if cal.save_ranges is None else Path(cal.save_ranges)

    # Every argument is checked before any work (the config checked its own fields when it was
    # made): a bad one costs nothing and leaves nothing behind.
    calibrated = calib is not None or ranges is not None
    pipeline = config.pipeline
    text = pipeline if pipeline is not None else default_pipeline(precision, calibrated=calibrated, keep_io_types=config.io_types == "float32")
    steps = parse_pipeline(text)
    steps = [_with_options(step, cal.pass_options()) if step.name == "calibrate" else step for step in steps]
    names = [step.name for step in steps]
    dump_after = list(config.dump_after)
    check_dump_after(dump_after, names)
    if "calibrate" not in names:
        flags = {"--method": cal.method, "--percentile": cal.percentile, "--batch-size": cal.batch_size, "--calib-memory": cal.memory, "--ranges": ranges, "--save-ranges": cal.save_ranges}
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            hint = " (give --calib DATA)" if pipeline is None else ""
            raise UserError(f"{', '.join(given)}: the pipeline has no calibrate pass{hint}")
    qir.check_file(model_path)  # a missing file, a folder, not ONNX, unsafe external data
    _check_loadable(model_path)
    outputs = [("output model", output_path), ("report", report_path), ("range table", save_ranges_path)]
    outputs = [(what, path) for what, path in outputs if path is not None]
    for index, (what, path) in enumerate(outputs):
        if path.exists() and path.resolve() == model_path.resolve():
            raise UserError(f"refusing to overwrite the input model {model_path}; choose another {what} path")
        for other_what, other in outputs[:index]:
            if path.resolve() == other.resolve():
                raise UserError(f"the {what} and the {other_what} would be the same file {path}")
        _check_writable(path, what)
    if ranges is not None:
        RangeTable.load(ranges)  # a file that is no range table fails here; its model hash is checked by calibrate
    policy = config.policy
    if isinstance(policy, str) and not Path(policy).is_file():
        raise UserError(f"policy file not found: {policy}")
    context = Context(
        target=target,
        precision=precision,
        mode=mode,
        reduce_range=config.reduce_range,
        policy=policy,
        nodes_to_exclude=config.nodes_to_exclude,
        op_types_to_quantize=config.op_types_to_quantize,
        samples=config.samples,
        progress=progress,
        debug=debug,
    )
    passes = build(steps, context)  # the passes check their own options here

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
    context.calib = calib_source

    # From here on outputs appear only at the end. The model is written to a temporary file beside
    # the output and measured there (fidelity, sensitivity, latency); only then is it renamed onto
    # the output path, the range table saved and the report written, last. A failure before the
    # rename leaves no output (and removes the folders made for it); a failure after it withdraws
    # what this run published.
    made = sorted({folder for _, path in outputs for folder in _missing_folders(path)}, key=lambda f: len(f.parts), reverse=True)
    try:
        verify = None
        if debug:
            from qonnx.passes.verify import verify_model

            verify = verify_model
        tables = []

        def keep_table(record) -> None:
            if record.name == "calibrate" and "ranges" in context.analyses:
                tables.append(context.analyses["ranges"])

        t0 = time.perf_counter()
        records = run_pipeline(ir_model, passes, context, dump_after=dump_after, dump_dir=output_path.parent, verify=verify, on_pass=keep_table)
        pipeline_s = time.perf_counter() - t0
        quantized = ir_model  # the passes rewrite it in place

        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "qonnx_version": qonnx.__version__,
            "onnxruntime_version": runtime.version,
            "input": input_facts,
            "output": None,  # filled from the written file before it is renamed into place
            "target": target,
            "precision": precision,
            "mode": mode,
            "config": config.to_dict(),
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
        timing = {"pipeline_s": round(pipeline_s, 3)}

        def measure(written: Path) -> None:
            """Everything read from the output model, on its temporary file (same bytes, same data names)."""
            timing["save_s"] = round(time.perf_counter() - save_started, 3)
            doc["output"] = {**_model_facts(written, quantized), "path": str(output_path)}
            doc["size_ratio"] = round(doc["output"]["bytes"] / doc["input"]["bytes"], 4)
            t0 = time.perf_counter()
            if eval_source is not None:
                test: ir.Model | Path = written
                if precision == "bf16":
                    # onnxruntime's CPU provider has no BF16 kernels: measure the same roundings in FP32.
                    from qonnx.passes.emulate_float import emulated

                    test = emulated(qir.load(written))
                doc["fidelity"] = evaluate_fidelity(model_path, test, eval_source)
                doc["fidelity"]["held_out"] = not eval_on_calibration
                if precision == "bf16":
                    doc["fidelity"]["emulated"] = True
            if evaluation.sensitivity and eval_source is not None and precision == "int8":
                from qonnx.sensitivity import activation_sensitivity

                feeds = [eval_source[i] for i in range(min(evaluation.sensitivity, len(eval_source)))]
                doc["sensitivity"] = activation_sensitivity(model_path, quantized, feeds, progress=progress)
            timing["fidelity_s"] = round(time.perf_counter() - t0, 3)  # measuring, not quantizing
            if evaluation.latency and eval_source is not None:
                feed = eval_source[0]
                fp32 = runtime.measure_latency(model_path, feed)
                q = runtime.measure_latency(written, feed)
                doc["latency"] = {
                    "fp32_ms": round(fp32["median_s"] * 1e3, 3),
                    "quantized_ms": round(q["median_s"] * 1e3, 3),
                    "speedup": round(fp32["median_s"] / q["median_s"], 3),
                    "runs": q["runs"],
                    "threads": 2,
                }

        save_started = time.perf_counter()
        qir.save(quantized, output_path, protect=(model_path,), before_replace=measure)
        published = [output_path]
        try:
            if save_ranges_path is not None and tables:
                tables[-1].save(save_ranges_path)
                published.append(save_ranges_path)
            doc["timing"] = {**timing, "total_s": round(time.perf_counter() - started, 3)}
            if report_path is not None:
                write_json(doc, report_path)
        except BaseException:
            for path in published:
                _withdraw(path)
            raise
        return QuantizeResult(output_path, doc)
    except BaseException:
        _remove_empty(made)
        raise
