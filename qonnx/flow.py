"""One run, start to end: check the job, build the pipeline from the config, run it in the pass
manager, then save the model and write the report.

The pipeline is the config's (or the precision's default) followed by the measuring passes:
``evaluate`` (fidelity on held-out data), ``sensitivity`` and ``latency`` when asked for. They run
on the model as rewritten, before anything is written, so a failure anywhere leaves no output.
Saving and the report are the final steps: the model is written atomically, then the range table,
then the report and its HTML page; a failure after the model was written withdraws what this run
published.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from qonnx import ir as qir
from qonnx import legacy, quantized_parts, runtime
from qonnx.calib.ranges import RangeTable
from qonnx.calib.sources import ImagePreprocess, Source, open_source
from qonnx.config import CalibrationConfig, QuantizeConfig, WeightOnlyConfig
from qonnx.errors import UserError
from qonnx.executor import check_available
from qonnx.pipeline import (
    Context,
    PassRecord,
    PipelineStep,
    build,
    check_dump_after,
    check_order,
    default_pipeline,
    parse_pipeline,
    run_pipeline,
)
from qonnx.policy import PLAN_KEY
from qonnx.targets import FP8_OPSET, get_target
from qonnx.report import Report, assemble, write_json
from qonnx.report_html import render_html
from qonnx.verdict import DEFAULT_MEET_ON, Verdict, judge

__all__ = ["Job", "QuantizeResult", "analyze", "check_loadable", "plan_path", "run", "split_holdout"]

Data = str | os.PathLike | Iterable[Mapping[str, np.ndarray]] | Source

# The passes that measure rather than rewrite: their time is "fidelity_s", not "pipeline_s".
_MEASURING = ("evaluate", "sensitivity")


@dataclasses.dataclass(frozen=True)
class Job:
    """What one run reads and writes, besides the config: the model, the output and report paths,
    the calibration and evaluation data and how images are read."""

    model: Path
    output: Path
    report: Path | None = None
    calib: Data | None = None
    eval_data: Data | None = None
    preprocess: ImagePreprocess | None = None
    progress: bool = False
    uncalibrated: bool = False  # calibrated on random data: said in the report
    html: Path | None = None  # the report as an HTML page


@dataclasses.dataclass
class QuantizeResult:
    """The written model and the report (also written to the job's report path, if any)."""

    output: Path
    report: Report
    verdict: Verdict

    @property
    def fidelity(self) -> dict[str, Any] | None:
        return self.report.get("fidelity")


def split_holdout(source: Source) -> tuple[Source, Source, bool]:
    """Calibration and evaluation parts of one source: the last quarter (at least one) is held out.

    With a single sample there is nothing to hold out: it serves both, and the flag says so.
    """
    n = len(source)
    if n < 2:
        return source, source, True
    held = max(1, n // 4)
    return source.subset(range(n - held)), source.subset(range(n - held, n)), False


def _calibrate_step(step: PipelineStep, calibration: CalibrationConfig) -> PipelineStep:
    """The ``calibrate`` step with the config's calibration settings; one that the pipeline text sets
    differently is an error."""
    given = [
        ("method", calibration.method),
        ("percentile", calibration.percentile),
        ("batch_size", calibration.batch_size),
        ("memory", calibration.memory),
        ("ranges", calibration.ranges),
    ]
    options = dict(step.options)
    for key, value in given:
        if value is None:
            continue
        if key in options and options[key] != value:
            raise UserError(f"{step.name}: option {key}={value} conflicts with {key}={options[key]} in the pipeline")
        options[key] = value
    return dataclasses.replace(step, options=options)


def weight_rounding(options: WeightOnlyConfig, calibrated: bool) -> str:
    """The rounding algorithm of an int4 run: the config's, or by default ``awq`` with calibration
    data (the best measured) and ``rtn`` without."""
    return options.algorithm or ("awq" if calibrated else "rtn")


def _weights_step(step: PipelineStep, options: WeightOnlyConfig, calibrated: bool) -> PipelineStep:
    """The ``quantize-weights`` step with the config's emission and rounding options (those that
    differ from their defaults); one that the pipeline text sets differently is an error. Bits,
    block size and symmetry go through the policy (each node's spec)."""
    defaults = WeightOnlyConfig()
    algorithm = weight_rounding(options, calibrated)
    given = {"format": options.format, "accuracy_level": options.accuracy_level, "algorithm": None if algorithm == "rtn" else algorithm}
    merged = dict(step.options)
    for key, value in given.items():
        if value is None or value == getattr(defaults, key):
            continue
        if key in merged and merged[key] != value:
            raise UserError(f"{step.name}: option {key}={value} conflicts with {key}={merged[key]} in the pipeline")
        merged[key] = value
    return dataclasses.replace(step, options=merged)


def pipeline_steps(config: QuantizeConfig, *, calibrated: bool, evaluated: bool) -> list[PipelineStep]:
    """The steps of a run: the config's pipeline (or the default for its precision), with the
    calibration settings on ``calibrate``, then the measuring passes the config asks for."""
    text = config.pipeline
    if text is None:
        text = default_pipeline(config.precision, calibrated=calibrated, keep_io_types=config.io_types == "float32")
    steps = [_calibrate_step(s, config.calibration) if s.name == "calibrate" else s for s in parse_pipeline(text)]
    steps = [_weights_step(s, config.weight_only, calibrated) if s.name == "quantize-weights" else s for s in steps]
    names = {s.name for s in steps}
    if "calibrate" not in names:
        cal = config.calibration
        flags = {"--method": cal.method, "--percentile": cal.percentile, "--batch-size": cal.batch_size, "--calib-memory": cal.memory, "--ranges": cal.ranges, "--save-ranges": cal.save_ranges}
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            hint = " (give --calib DATA)" if config.pipeline is None else ""
            raise UserError(f"{', '.join(given)}: the pipeline has no calibrate pass{hint}")
    check_order([s.name for s in steps])
    if config.policy == "auto" or "auto-policy" in names:
        if config.precision != "int8":
            raise UserError(f"--policy auto chooses between INT8 and float; with --precision {config.precision} there is no INT8 plan to start from")
        if "calibrate" not in names or not calibrated:
            raise UserError("--policy auto needs calibration data (give --calib DATA): its plans are measured on it")
        at = [s.name for s in steps].index("calibrate")
        steps[at] = dataclasses.replace(steps[at], options={**steps[at].options, "adjacent": True})  # ranges for every plan tried
        at += 1
    if config.policy == "auto" and "auto-policy" not in names:
        evaluation = config.evaluation
        auto = {"metric": evaluation.metric if isinstance(evaluation.metric, str) else "custom"}  # custom: the callable, Context.score
        if evaluation.min is not None:
            auto["min"] = evaluation.min
        if evaluation.meet_on is not None:
            auto["meet_on"] = evaluation.meet_on
        if evaluation.min_speedup is not None:
            auto["min_speedup"] = evaluation.min_speedup
        steps[at:at] = [PipelineStep("auto-policy", auto)]  # it computes the layer-sensitivity analysis when it needs it
        names = {s.name for s in steps}
        check_order([s.name for s in steps])
    fp16_remainder = config.effective_float_remainder == "fp16"
    if config.pipeline is None and config.precision == "fp8":  # FP8 Q/DQ at FP8_OPSET (see qonnx.targets)
        at = next((i for i, step in enumerate(steps) if step.name == "upgrade-opset"), None)
        if at is None:
            steps.insert(0, PipelineStep("upgrade-opset", {"min_version": FP8_OPSET}))
        else:
            steps[at] = PipelineStep("upgrade-opset", {"min_version": max(steps[at].options.get("min_version", 13), FP8_OPSET)})
    if config.pipeline is None and config.precision == "fp8" and "calibrate" in names:
        at = [s.name for s in steps].index("calibrate") + 1  # FP8 nodes whose values E4M3 cannot hold go to the remainder
        steps[at:at] = [PipelineStep("fp8-islands", {})]
    if config.pipeline is None and fp16_remainder and "calibrate" in names and "float-islands" not in names:
        at = [s.name for s in steps].index("calibrate") + 1 + (config.precision == "fp8")  # FP32 islands where the calibrated ranges overflow FP16
        steps[at:at] = [PipelineStep("float-islands", {"precision": "fp16"})]
    if config.precision == "int8" and config.policy is not None and "insert-qdq" in names and "quantize-weights" not in names:
        if get_target(config.effective_target).weight_only:  # the INT4 weight-only nodes of an auto or replayed plan; none: a no-op
            at = [s.name for s in steps].index("insert-qdq") + 1
            steps[at:at] = [PipelineStep("quantize-weights", {})]
    wants_fp16 = (fp16_remainder and config.pipeline is None) or (config.effective_target in ("cuda", "tensorrt") and config.policy is not None)
    if config.precision in ("int8", "fp8") and wants_fp16 and "insert-qdq" in names and "convert-float" not in names:
        at = [s.name for s in steps].index("insert-qdq") + 1  # the FP16 remainder, or the FP16 nodes of an auto or replayed plan; none: a no-op
        steps[at:at] = [PipelineStep("convert-float", {"precision": "fp16"})]
    names = {s.name for s in steps}
    if evaluated:
        wanted = [PipelineStep("evaluate", {})]
        if config.evaluation.sensitivity and config.precision == "int8":
            wanted.append(PipelineStep("sensitivity", {"samples": config.evaluation.sensitivity}))
        if config.evaluation.latency:
            wanted.append(PipelineStep("latency", {}))
        steps += [s for s in wanted if s.name not in names]
    return steps


def _check_writable(path: Path, what: str) -> None:
    """Fail before the work, not after it, when ``path`` cannot be written; creates nothing."""
    path = qir.output_target(path)
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


def check_loadable(path: Path) -> None:
    """The input model must be one onnxruntime loads (calibration and fidelity run it): if not, it is
    the model's fault (an undefined input, an unknown operator or opset, a type or shape error), and
    it is said before any work. Without graph optimizations a session costs milliseconds; weights in
    external data are not read for it (``qir.hollow_external_data``), so that checking an LLM does not
    load all of it."""
    proto = onnx.load(str(path), load_external_data=False)
    source = proto.SerializeToString() if qir.hollow_external_data(proto) else path
    try:
        runtime.session(source, disable_optimizations=True)
    except RuntimeError as exc:
        reason = re.sub(r"^.*?Load model from .*? failed:\s*", "", str(exc))
        reason = re.sub(r"^/\S+:\d+ [^(]*\(.*?\) (?=[A-Z])", "", reason)  # the C++ source line and signature
        raise UserError(f"{path} is not a model onnxruntime can load: {reason}") from exc


def _check_not_quantized(path: Path, model: ir.Model, config: QuantizeConfig) -> None:
    """A model that already holds quantizers is refused, saying what was found and where, unless
    ``requantize`` (then ``resolve-policy`` keeps those parts as they are)."""
    found = quantized_parts.find(qir.all_nodes(model))
    if found and not config.requantize:
        raise UserError(
            f"{path} is already quantized: {quantized_parts.describe(found)}; quantizing it again would stack a second set "
            f"of quantizers (give --requantize to leave those parts alone and quantize the float rest)"
        )


def _check_outputs(job: Job, save_ranges: Path | None, plan: Path | None) -> None:
    """Every path the run writes can be written, none is the input, no two are the same file."""
    outputs = [("output model", job.output), ("report", job.report), ("HTML report", job.html), ("range table", save_ranges), ("plan", plan)]
    outputs = [(what, path) for what, path in outputs if path is not None]
    for index, (what, path) in enumerate(outputs):
        if path.exists() and path.resolve() == job.model.resolve():
            raise UserError(f"refusing to overwrite the input model {job.model}; choose another {what} path")
        for other_what, other in outputs[:index]:
            if path.resolve() == other.resolve():
                raise UserError(f"the {what} and the {other_what} would be the same file {path}")
        _check_writable(path, what)


def _missing_folders(paths: Iterable[Path | None]) -> list[Path]:
    """The folders above ``paths`` that do not exist yet, deepest first."""
    missing = set()
    for path in filter(None, paths):
        folder = path.parent
        while not folder.exists():
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda f: len(f.parts), reverse=True)


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove the folders a failed run made, deepest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            continue


def _withdraw(path: Path) -> None:
    """Remove a model this run published (with its external data), when a later step failed; through
    a symlink, the file it points to (what was written)."""
    path = Path(os.path.realpath(path))
    for part in qir.external_data_files(path) if path.is_file() else []:
        part.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def plan_path(output: Path) -> Path:
    """Where ``--policy auto`` writes its plan: beside the model, ``NAME.plan.json`` for ``NAME.onnx``."""
    return output.with_name(output.stem + ".plan.json")


def _write_plan(model: ir.Model, context: Context, path: Path) -> None:
    """The plan of the output model (the ``qonnx.plan`` metadata: every node's spec and reason, the
    model and data hashes) with the sensitivity scores, as editable JSON for ``--policy``."""
    document = json.loads(model.metadata_props.get(PLAN_KEY, "{}"))
    sensitivity = context.records.get("layer_sensitivity")
    if sensitivity is not None:
        document["scores"] = {e["node"]: {k: e[k] for k in ("local_db", "global_db") if e.get(k) is not None} for e in sensitivity.nodes}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    qir.atomic_write(path, lambda f: f.write(text.encode()))


def _model_facts(path: Path, model: ir.Model) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": qir.file_hash(path),
        "bytes": qir.file_size(path),
        "opset": model.opset_imports.get("", 0),
        "nodes": sum(1 for _ in qir.all_nodes(model)),
    }


def _sources(job: Job, model: ir.Model, *, evaluated: bool = True) -> tuple[Source | None, Source | None, bool]:
    """Calibration and evaluation sources; without evaluation data a quarter of the calibration data
    is held out (none when nothing is ``evaluated``). The flag says the evaluation samples also
    calibrated (a single sample)."""
    if job.calib is None:
        return None, None if job.eval_data is None else open_source(job.eval_data, model, job.preprocess), False
    calib = open_source(job.calib, model, job.preprocess)
    if not evaluated:
        return calib, None, False
    if job.eval_data is not None:
        return calib, open_source(job.eval_data, model, job.preprocess), False
    return split_holdout(calib)


def _context(config: QuantizeConfig, job: Job, source: Path | None = None) -> Context:
    """What the passes of this run share: the config's settings and the job's model and progress."""
    return Context(
        target=config.effective_target,
        precision=config.precision,
        mode=config.mode,
        reduce_range=config.reduce_range,
        policy=None if config.policy == "auto" else config.policy,  # auto: the target's plan, then auto-policy
        nodes_to_exclude=config.nodes_to_exclude,
        op_types_to_quantize=config.op_types_to_quantize,
        weight_only=config.weight_only,
        fp8_activations=config.fp8_activations,
        float_remainder=config.effective_float_remainder,
        samples=config.samples,
        progress=job.progress,
        debug=config.debug,
        source=source or job.model,  # the FP32 reference: the input, or its upgraded copy
        score=config.evaluation.metric if callable(config.evaluation.metric) else None,
        executor=config.executor,
        workers=config.workers,
    )


def _verdict(config: QuantizeConfig, context: Context, *, token_inputs: bool, has_matmul: bool, calibrated: bool) -> Verdict:
    record = context.records.get("fidelity")
    fidelity = record.to_report()["fidelity"] if record is not None else None
    metric = config.evaluation.metric
    custom = None
    if callable(metric):
        custom = fidelity["custom"]["value"] if fidelity is not None else None
        metric = getattr(metric, "__qualname__", type(metric).__name__)
    return judge(
        fidelity,
        metric=metric,
        minimum=config.evaluation.min,
        precision=config.precision,
        mode=config.mode,
        token_inputs=token_inputs,
        has_matmul=has_matmul,
        custom=custom,
        auto_met=auto.achieved if (auto := context.records.get("auto_policy")) is not None and auto.met else None,
        auto_meet_on=auto.meet_on if auto is not None else DEFAULT_MEET_ON,
        skipped=config.evaluation.skip,
        calibrated=calibrated,
    )


def run(config: QuantizeConfig, job: Job) -> QuantizeResult:
    """Check everything, run the pipeline, save and report: the whole flow of one quantization."""
    started = time.perf_counter()
    # Every argument is checked before any work (the config checked its own fields when it was
    # made): a bad one costs nothing and leaves nothing behind.
    calibrated = job.calib is not None or config.calibration.ranges is not None
    evaluated = (job.calib is not None or job.eval_data is not None) and not config.evaluation.skip
    if config.evaluation.skip and job.eval_data is not None:
        raise UserError("--eval DATA and --no-eval: give one of them")
    if config.precision == "int4" and config.weight_only.algorithm not in (None, "rtn") and job.calib is None:
        raise UserError(f"--algorithm {config.weight_only.algorithm} rounds weights from the activations of calibration data: give --calib DATA")
    steps = pipeline_steps(config, calibrated=calibrated, evaluated=evaluated)
    check_dump_after(config.dump_after, [s.name for s in steps])
    qir.check_file(job.model)  # a missing file, a folder, not ONNX, unsafe external data
    scratch = tempfile.TemporaryDirectory(prefix="qonnx-")
    try:
        reference, upgrade_note = legacy.upgraded_if_needed(job.model, Path(scratch.name), check_loadable, runtime.version)
        return _run(config, job, steps, reference, upgrade_note, started)
    finally:
        scratch.cleanup()


def _run(config: QuantizeConfig, job: Job, steps: list[PipelineStep], reference: Path, upgrade_note: str | None, started: float) -> QuantizeResult:
    """``run`` once the model is known to load in onnxruntime: ``reference`` is the FP32 model
    (the input, or its upgraded copy, then ``upgrade_note`` says so)."""
    cal = config.calibration
    save_ranges = None if cal.save_ranges is None else Path(cal.save_ranges)
    plan = plan_path(job.output) if config.policy == "auto" else None
    _check_outputs(job, save_ranges, plan)
    if cal.ranges is not None:
        RangeTable.load(cal.ranges)  # a file that is no range table fails here; its model hash is checked by calibrate
    if isinstance(config.policy, str) and config.policy != "auto" and not Path(config.policy).is_file():
        raise UserError(f"policy file not found: {config.policy}")
    check_available(config.executor)
    context = _context(config, job, reference)
    passes = build(steps, context)  # the order of the pipeline and the passes' options are checked here

    model = qir.load(reference)
    _check_not_quantized(job.model, model, config)
    input_facts = _model_facts(job.model, model)
    if upgrade_note is not None:
        input_facts["upgraded"] = upgrade_note
    context.calib, context.eval_data, shared = _sources(job, model, evaluated=not config.evaluation.skip)
    context.eval_held_out = not shared

    made = _missing_folders([job.output, job.report, job.html, save_ranges, plan])
    try:
        verify = None
        if config.debug:
            from qonnx.passes.verify import verify_model

            verify = verify_model
        ranges_used: list[RangeTable] = []

        def keep_ranges(record: PassRecord) -> None:
            if record.name == "calibrate" and "ranges" in context.analyses:
                ranges_used.append(context.analyses["ranges"])

        # token ids [N, T]: not a rank-0 integer such as silero-vad's sample rate
        token_inputs = any(v.dtype in (ir.DataType.INT64, ir.DataType.INT32) and v.shape is not None and len(v.shape) == 2 for v in model.graph.inputs)
        ops = [n.op_type for n in model.graph]
        # a transformer rather than a CNN, on a target where dynamic INT8 is a format (onnxruntime's CPU kernels)
        has_matmul = ops.count("MatMul") > ops.count("Conv") and config.effective_target == "cpu"
        records = run_pipeline(model, passes, context, dump_after=config.dump_after, dump_dir=job.output.parent, verify=verify, on_pass=keep_ranges)
        verdict = _verdict(config, context, token_inputs=token_inputs, has_matmul=has_matmul, calibrated=job.calib is not None)
        timing = {
            "pipeline_s": round(sum(r.seconds for r in records if r.name not in (*_MEASURING, "latency")), 3),
            "fidelity_s": round(sum(r.seconds for r in records if r.name in _MEASURING), 3),
        }
        save_started = time.perf_counter()
        qir.save(model, job.output, protect=(job.model,))
        timing["save_s"] = round(time.perf_counter() - save_started, 3)
        published = [job.output]
        try:
            report = assemble(
                config=config,
                input_facts=input_facts,
                output_facts=_model_facts(job.output, model),
                steps=steps,
                records=records,
                published=list(context.records.values()),
                model=model,
                uncalibrated=job.uncalibrated,
                onnxruntime_version=runtime.version,
            )
            if save_ranges is not None and ranges_used:
                ranges_used[-1].save(save_ranges)
                published.append(save_ranges)
            if plan is not None:
                _write_plan(model, context, plan)
                published.append(plan)
                report["plan"] = str(plan)
            report["verdict"] = verdict.to_dict()
            report["timing"] = {**timing, "total_s": round(time.perf_counter() - started, 3)}
            page = None if job.html is None else render_html(report)  # before anything more is written
            written: list[Path] = []
            try:
                if job.report is not None:
                    write_json(report, job.report)
                    written.append(job.report)
                if job.html is not None:
                    qir.atomic_write(job.html, lambda f: f.write(page.encode("utf-8")))
            except BaseException:
                for path in written:
                    Path(os.path.realpath(path)).unlink(missing_ok=True)  # through a symlink: what was written
                raise
        except BaseException:
            for path in published:
                _withdraw(path)
            raise
        return QuantizeResult(job.output, report, verdict)
    except BaseException:
        _remove_empty(made)
        raise
    finally:
        context.close_executor()


ANALYZE_PIPELINE = "normalize,div-to-mul,resolve-policy,calibrate(adjacent=true)"
ANALYZE_INT4_PIPELINE = "normalize,resolve-policy"


def _analyze_steps(config: QuantizeConfig, *, top: int, exhaustive: bool, samples: int) -> list[PipelineStep]:
    """INT8: the pipeline up to calibration, then ``layer-sensitivity``; INT4: the plan, then
    ``weight-only-sensitivity`` in the config's emission (every layer group is scored: ``top`` and
    ``exhaustive`` have nothing to choose)."""
    if config.precision == "int4":
        options = config.weight_only
        scoring = {"samples": samples, "format": options.format}
        if options.accuracy_level is not None:
            scoring["accuracy_level"] = options.accuracy_level
        return [*parse_pipeline(ANALYZE_INT4_PIPELINE), PipelineStep("weight-only-sensitivity", scoring)]
    steps = [_calibrate_step(s, config.calibration) if s.name == "calibrate" else s for s in parse_pipeline(ANALYZE_PIPELINE)]
    return [*steps, PipelineStep("layer-sensitivity", {"top": top, "exhaustive": exhaustive, "samples": samples})]


def analyze(config: QuantizeConfig, job: Job, *, top: int = 8, exhaustive: bool = False, samples: int = 4) -> Report:
    """Per-layer sensitivity of ``job.model`` under the config's plan (``qonnx analyze``): INT8
    (``layer-sensitivity``) or INT4 weight-only by layer group (``weight-only-sensitivity``); no
    model is written, the report is (to ``job.report`` when given) and returned."""
    started = time.perf_counter()
    if config.precision not in ("int8", "int4"):
        raise UserError(f"analyze measures INT8 and INT4 weight-only sensitivity; --precision {config.precision} has none")
    if job.calib is None:
        raise UserError("analyze needs calibration data: give --calib DATA")
    steps = _analyze_steps(config, top=top, exhaustive=exhaustive, samples=samples)
    qir.check_file(job.model)
    check_loadable(job.model)
    for what, path in (("report", job.report), ("HTML report", job.html)):
        if path is not None:
            if path.exists() and path.resolve() == job.model.resolve():
                raise UserError(f"refusing to overwrite the input model {job.model}; choose another {what} path")
            _check_writable(path, what)
    context = _context(config, job)
    passes = build(steps, context)
    check_available(config.executor)
    model = qir.load(job.model)
    input_facts = _model_facts(job.model, model)
    context.calib, context.eval_data, shared = _sources(job, model)
    context.eval_held_out = not shared
    made = _missing_folders([job.report, job.html])
    try:
        records = run_pipeline(model, passes, context)
        sensitivity = context.records.get("layer_sensitivity")
        weight_only = context.records.get("weight_only_sensitivity")
        report: Report = {
            "schema": "qonnx.analysis/1",
            "qonnx_version": qonnx_version(),
            "onnxruntime_version": runtime.version,
            "input": input_facts,
            "target": config.effective_target,
            "precision": config.precision,
            "config": config.to_dict(),
            "pipeline": ",".join(str(s) for s in steps),
            "passes": [r.to_dict() for r in records],
            "calibration": context.records["calibration"].to_report()["calibration"] if "calibration" in context.records else None,
            "layer_sensitivity": None if sensitivity is None else sensitivity.to_report()["layer_sensitivity"],
            **({} if weight_only is None else weight_only.to_report()),
            "timing": {"total_s": round(time.perf_counter() - started, 3)},
        }
        page = None if job.html is None else render_html(report)
        if job.report is not None:
            write_json(report, job.report)
        if job.html is not None:
            qir.atomic_write(job.html, lambda f: f.write(page.encode("utf-8")))
        return report
    except BaseException:
        _remove_empty(made)
        raise
    finally:
        context.close_executor()


def qonnx_version() -> str:
    import qonnx

    return qonnx.__version__
