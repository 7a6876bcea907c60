"""qonnx's ``normalize`` rewrites against onnxscript's optimizer and rewrite rules, on every kit model.

onnxscript (built on onnx-ir, like qonnx) has an optimizer (constant folding plus its default
rewrite rules) and rules for some of the jobs ``normalize`` and ``convert-float`` do. For each kit
model this measures, per job, qonnx's pass against onnxscript's rules for the same job, both
started from the same model (the one qonnx's pipeline hands that pass):

* ``fold-constants``: qonnx's ``fold-constants`` vs onnxscript's ``FoldConstantsPass`` (its
  default size limits), each followed by its dead-node removal (``remove-dead`` / onnx-ir's
  ``RemoveUnusedNodesPass``, which onnxscript's optimizer runs);
* ``fold-batchnorm``: vs ``fuse_batchnorm`` rules (Conv, ConvTranspose, Gemm);
* ``fold-pad``: vs the ``fuse_pad_into_conv`` rule set (pad into Conv / ConvInteger, auto_pad made explicit);
* ``cast folding`` (the last step of ``convert-float``, FP16 for the cuda target): qonnx's Cast
  folding vs onnxscript's ``cast_cast_rule`` and ``no_op_cast_rule``, both on the converted model
  before its Casts are folded;

and the whole of ``normalize`` vs ``onnxscript.optimizer.optimize`` (defaults) on the published model.
``fold-bias-add`` and ``div-to-mul`` have no onnxscript counterpart (its affine rule needs scalar
Mul and Add around a Conv), so they are not measured.

Per row: nodes before and after (the job's own op left: BatchNormalization, Pad, Cast), the
function against the job's input model (for whole pipelines, against the published model): the
worst output SQNR in dB over ``--samples`` real inputs (the kit's held-out images / sentences),
energies pooled over the samples, onnxruntime with its graph optimizations off; and the time of
the rewrite alone (median of ``--repeats`` runs on fresh copies). A row passes at >= 60 dB. For
onnxscript's rows, how its result compares with qonnx's: the same bytes, the same ops and
attributes with other node / initializer names or weight values (either changes qonnx's output
files), or a different graph.

Usage: ``python benchmarks/normalize_vs_onnxscript.py [--out benchmarks/results] [--samples 4]``.
Writes ``normalize_vs_onnxscript.md`` and ``.json`` there. Needs ``pip install onnxscript``
(measured with 0.7.2); not a qonnx dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CASES  # noqa: E402

from qonnx import metrics, runtime  # noqa: E402
from qonnx.calib.sources import ListSource, input_specs, open_source  # noqa: E402
from qonnx.ir import atomic_write  # noqa: E402
from qonnx.pipeline import Context, aliases, build, parse_pipeline, run_pipeline  # noqa: E402

MIN_DB = 60.0
NORMALIZE = aliases["normalize"].split(",")
FP16_PREFIX = "normalize,resolve-policy,float-islands,convert-float"


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _nodes(model: ir.Model, op_type: str | None = None) -> int:
    return sum(1 for graph in model.graphs() for node in graph if op_type is None or node.op_type == op_type)


def _qonnx(text: str, feeds: list[dict], **context: Any) -> Callable[[ir.Model], None]:
    def run(model: ir.Model) -> None:
        ctx = Context(calib=ListSource(feeds[:1], input_specs(model)), **context)
        run_pipeline(model, build(parse_pipeline(text), ctx), ctx)

    return run


def _onnxscript_rules(*rules) -> Callable[[ir.Model], None]:
    def run(model: ir.Model) -> None:
        from onnxscript import rewriter

        ir.passes.Sequential(rewriter.RewritePass(list(rules)), ir.passes.common.RemoveUnusedNodesPass())(model)

    return run


def _onnxscript_fold_constants(model: ir.Model) -> None:
    from onnxscript.optimizer import _constant_folding as folding

    ir.passes.Sequential(
        folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
        ),
        ir.passes.common.RemoveUnusedNodesPass(),
    )(model)


def _onnxscript_optimize(model: ir.Model) -> None:
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(model)


def _qonnx_fold_casts(model: ir.Model) -> None:
    from qonnx.passes import convert_float

    convert_float._fold_casts(model.graph, lambda reason, node: False)


@contextlib.contextmanager
def _casts_left_unfolded():
    """convert-float without its last step (and so without the postcondition on that step)."""
    from qonnx.passes import convert_float

    fold, ensures = convert_float._fold_casts, convert_float.ConvertFloat.ensures
    convert_float._fold_casts = lambda graph, skip: 0
    convert_float.ConvertFloat.ensures = lambda self, model: None
    try:
        yield
    finally:
        convert_float._fold_casts, convert_float.ConvertFloat.ensures = fold, ensures


def _outputs(model: ir.Model | Path, feeds: list[dict]) -> dict[str, np.ndarray]:
    session = runtime.session(model, disable_optimizations=True)
    runs = [session.run(feed) for feed in feeds]
    return {name: np.concatenate([np.ravel(r[name]) for r in runs]) for name in session.output_names}


def _worst_sqnr(reference: dict[str, np.ndarray], model: ir.Model, feeds: list[dict]) -> float:
    test = _outputs(model, feeds)
    return min(metrics.sqnr_db(reference[name], test[name]) for name in reference)


@dataclasses.dataclass
class Row:
    model: str
    job: str
    implementation: str
    nodes_before: int
    nodes_after: int
    job_op: str | None
    job_op_before: int | None
    job_op_after: int | None
    sqnr_db: float
    seconds: float
    error: str | None = None
    vs_qonnx: str = ""  # onnxscript rows: "same bytes", "same ops, other names or values" or "different graph" than qonnx's result


def _compare(ours: ir.Model | None, theirs: ir.Model | None) -> str:
    """How onnxscript's result differs from qonnx's: not at all, in names or weight values only, or in its ops."""
    if ours is None or theirs is None:
        return ""
    if ir.to_proto(ours).SerializeToString() == ir.to_proto(theirs).SerializeToString():
        return "same bytes"

    def shape(model: ir.Model) -> list:
        return [(n.op_type, sorted((k, str(a.value)) for k, a in n.attributes.items())) for g in model.graphs() for n in g]

    return "same ops, other names or values" if shape(ours) == shape(theirs) else "different graph"


def _measure(name: str, job: str, implementation: str, start: ir.Model, rewrite: Callable[[ir.Model], None], reference, feeds, job_op, repeats: int) -> tuple[Row, ir.Model | None]:
    times, result = [], None
    try:
        for _ in range(repeats):
            model = _copy(start)
            began = time.perf_counter()
            rewrite(model)
            times.append(time.perf_counter() - began)
            result = model
        sqnr = _worst_sqnr(reference, result, feeds)
        error = None
    except Exception as exc:  # a failure is a result too: shown in the table
        sqnr, error = float("nan"), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
    row = Row(
        name, job, implementation, _nodes(start), _nodes(result) if result is not None else -1,
        job_op, _nodes(start, job_op) if job_op else None, _nodes(result, job_op) if job_op and result is not None else None,
        sqnr, statistics.median(times) if times else float("nan"), error,
    )
    return row, result


def _pair(rows: list[Row], ours: tuple[Row, ir.Model | None], theirs: tuple[Row, ir.Model | None]) -> None:
    theirs[0].vs_qonnx = _compare(ours[1], theirs[1])
    rows += [ours[0], theirs[0]]


def measure_case(name: str, samples: int, repeats: int) -> list[Row]:
    from onnxscript.rewriter.rules.common import _basic_rules, _fuse_batchnorm, _fuse_pad_into_conv

    case = CASES[name]
    path = case.model_path()
    published = ir.load(path)
    feeds = list(open_source(case.eval_data(), published, case.preprocess))[:samples]
    reference = _outputs(path, feeds)
    rows = []

    def prefix(upto: str) -> ir.Model:
        """The published model after the normalize passes that run before ``upto``."""
        model = _copy(published)
        before = NORMALIZE[: NORMALIZE.index(upto)]
        _qonnx(",".join(before), feeds)(model)
        return model

    # Whole pipelines, against the published model.
    _pair(
        rows,
        _measure(name, "normalize (all)", "qonnx normalize", published, _qonnx("normalize", feeds), reference, feeds, "BatchNormalization", repeats),
        _measure(name, "normalize (all)", "onnxscript optimize", published, _onnxscript_optimize, reference, feeds, "BatchNormalization", repeats),
    )

    # Per job, from the model qonnx's pipeline hands the pass, against that model.
    jobs = [
        ("fold-constants", None, _onnxscript_fold_constants),
        ("fold-batchnorm", "BatchNormalization", _onnxscript_rules(*_fuse_batchnorm.rules.rules)),
        ("fold-pad", "Pad", _onnxscript_rules(*_fuse_pad_into_conv.rules.rules)),
    ]
    for job, job_op, theirs in jobs:
        start = prefix(job)
        job_reference = _outputs(start, feeds)
        _pair(
            rows,
            _measure(name, job, "qonnx", start, _qonnx(f"{job},remove-dead", feeds), job_reference, feeds, job_op, repeats),
            _measure(name, job, "onnxscript", start, theirs, job_reference, feeds, job_op, repeats),
        )

    # convert-float's Cast folding, on the FP16 model before it.
    with _casts_left_unfolded():
        start = _copy(published)
        _qonnx(FP16_PREFIX, feeds, precision="fp16", target="cuda")(start)
    job_reference = _outputs(start, feeds)
    _pair(
        rows,
        _measure(name, "cast folding (fp16)", "qonnx", start, _qonnx_fold_casts, job_reference, feeds, "Cast", repeats),
        _measure(name, "cast folding (fp16)", "onnxscript", start, _onnxscript_rules(_basic_rules.cast_cast_rule, _basic_rules.no_op_cast_rule), job_reference, feeds, "Cast", repeats),
    )
    return rows


def _fmt_db(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"


def markdown(rows: list[Row], facts: dict[str, Any]) -> str:
    lines = [
        "# qonnx normalize vs onnxscript",
        "",
        f"onnxscript {facts['onnxscript']}, onnx-ir {facts['onnx_ir']}, onnxruntime {facts['onnxruntime']}; "
        f"{facts['samples']} real inputs per model, time = median of {facts['repeats']} runs of the rewrite alone.",
        f"SQNR: worst output, against the job's input model (whole pipelines: the published model); a row passes at >= {MIN_DB:.0f} dB.",
        "",
        "| model | job | implementation | nodes before | nodes after | job op before → after | SQNR dB | seconds | result vs qonnx's | note |",
        "|---|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        job_op = f"{r.job_op} {r.job_op_before} → {r.job_op_after}" if r.job_op else ""
        note = r.error or ("" if r.sqnr_db >= MIN_DB else f"below {MIN_DB:.0f} dB")
        lines.append(f"| {r.model} | {r.job} | {r.implementation} | {r.nodes_before} | {r.nodes_after} | {job_op} | {_fmt_db(r.sqnr_db)} | {r.seconds:.3f} | {r.vs_qonnx} | {note} |")
    lines += ["", "## Per job: is onnxscript at least as good on every model?", ""]
    lines += ["| job | same or fewer nodes | >= 60 dB everywhere | faster or equal | same bytes as qonnx | models |", "|---|---|---|---|---|---|"]
    for job in dict.fromkeys(r.job for r in rows):
        pairs = []
        for model in dict.fromkeys(r.model for r in rows):
            ours = [r for r in rows if r.model == model and r.job == job and r.implementation.startswith("qonnx")]
            theirs = [r for r in rows if r.model == model and r.job == job and r.implementation.startswith("onnxscript")]
            if ours and theirs:
                pairs.append((ours[0], theirs[0]))
        fewer = all(t.error is None and t.nodes_after <= o.nodes_after for o, t in pairs)
        fidelity = all(t.error is None and t.sqnr_db >= MIN_DB for _, t in pairs)
        faster = all(t.error is None and t.seconds <= o.seconds for o, t in pairs)
        same = all(t.vs_qonnx == "same bytes" for _, t in pairs)
        lines.append(f"| {job} | {'yes' if fewer else 'no'} | {'yes' if fidelity else 'no'} | {'yes' if faster else 'no'} | {'yes' if same else 'no'} | {len(pairs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="*", default=list(CASES))
    args = parser.parse_args(argv)
    import onnxruntime
    import onnxscript

    rows = []
    for name in args.models:
        print(f"{name} …", file=sys.stderr, flush=True)
        rows.extend(measure_case(name, args.samples, args.repeats))
    facts = {"onnxscript": onnxscript.__version__, "onnx_ir": ir.__version__, "onnxruntime": onnxruntime.__version__, "samples": args.samples, "repeats": args.repeats}
    table = markdown(rows, facts)
    print(table)
    payload = {"facts": facts, "min_db": MIN_DB, "rows": [dataclasses.asdict(r) for r in rows]}
    atomic_write(args.out / "normalize_vs_onnxscript.json", lambda f: f.write((json.dumps(payload, indent=1) + "\n").encode()))
    atomic_write(args.out / "normalize_vs_onnxscript.md", lambda f: f.write(table.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
