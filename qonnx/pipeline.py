"""Pass registry, text pipelines and the instrumented pass manager.

A pipeline is text: ``normalize,calibrate(method=minmax),insert-qdq(target=cpu),verify``. Each name
is looked up in the registry; the options in parentheses are converted to the types that the pass's
``__init__`` annotates, so each option has one typed default, in the pass itself.

The manager runs the passes in order and records, for each, wall time and node counts by op type
before and after. In debug mode every pass is followed by a verify step: the onnx checker and an
onnxruntime session on the model as it stands.

Analyses are facts about the model that passes share: the per-node plan (``plan``), calibration
ranges (``ranges``), the Q/DQ placement (``placement``), fidelity on held-out data (``fidelity``).
A pass declares those it requires (``analyses_required``) and those it produces
(``analyses_produced``); some analyses are computed on demand from the model (``@analysis``) and
cached until a modifying pass drops them. A pass that modifies the model keeps only the analyses it
names in ``preserves`` (the idea of LLVM's PreservedAnalyses). ``build`` checks the order of a
pipeline before any pass runs, and refuses one whose pass needs an analysis that no earlier pass
produced (or that a pass in between did not preserve).

Passes tell the report what they did with typed records (``Pass.publish``); the report is assembled
from them.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import re
import time
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "Context",
    "Pass",
    "Record",
    "analysis",
    "apply",
    "check_order",
    "pass_options",
    "PassRecord",
    "PipelineStep",
    "register",
    "registry",
    "aliases",
    "DEFAULT_PIPELINE",
    "default_pipeline",
    "parse_pipeline",
    "build",
    "check_dump_after",
    "run_pipeline",
    "op_histogram",
]


@dataclasses.dataclass
class Context:
    """What the passes of one run share besides the model.

    ``analyses`` holds results that a pass computed and later passes read ("shapes", "ranges");
    the manager drops those a modifying pass does not preserve.
    """

    target: str = "cpu"
    precision: str = "int8"
    mode: str = "static"  # "dynamic": activations of MatMul quantized at run time
    reduce_range: bool | None = None  # 7-bit weights, for CPUs without VNNI; None: chosen for this CPU
    policy: Any = None  # a MixedPrecisionPolicy, or a policy / plan JSON file, replacing the target's default
    nodes_to_exclude: tuple[str, ...] = ()  # node names or regexes (full match) that stay float
    op_types_to_quantize: tuple[str, ...] | None = None  # None: every op type the policy quantizes
    weight_only: Any = None  # precision int4: a qonnx.config.WeightOnlyConfig (None: its defaults)
    fp8_activations: str = "e4m3"  # precision fp8: the activations' type, "e4m3" or "e5m2" (weights are E4M3)
    float_remainder: str | None = None  # INT8/FP8: the format of the unquantized nodes, "fp16" or "fp32"; None: the target's
    calib: Any = None  # a qonnx.calib.sources.Source, or None
    eval_data: Any = None  # a Source of evaluation samples, or None
    eval_held_out: bool = True  # False: the evaluation samples were also used to calibrate
    source: Path | None = None  # the input model, the reference of evaluation passes
    score: Callable[..., float] | None = None  # a Python metric: score(reference_outputs, test_outputs)
    samples: int | None = None
    progress: bool = False
    debug: bool = False  # stricter checks (verify fails on unfused quantized nodes)
    # Where independent trials and calibration shards run: a qonnx.executor.Executor, or its spec
    # ("serial", "local", "ray", "ray://HOST:PORT"); None: a local process pool of ``workers``.
    executor: Any = None
    workers: int | None = None
    analyses: dict[str, Any] = dataclasses.field(default_factory=dict)
    records: dict[str, Record] = dataclasses.field(default_factory=dict)  # by report key, the latest of each

    def get_executor(self) -> Any:
        """The ``qonnx.executor.Executor`` of this run, made from ``executor`` and ``workers`` on first use
        (and kept, so that its workers serve every pass); ``close_executor`` stops it."""
        from qonnx.executor import Executor, make_executor

        if not isinstance(self.executor, Executor):
            self.executor = make_executor(self.executor, self.workers)
        return self.executor

    def close_executor(self) -> None:
        """Stop the workers of an executor this context started."""
        from qonnx.executor import Executor

        if isinstance(self.executor, Executor):
            self.executor.close()

    def require(self, analysis: str, hint: str) -> Any:
        if analysis not in self.analyses:
            raise UserError(f"no {analysis} available: {hint}")
        return self.analyses[analysis]

    def analysis(self, name: str, model: ir.Model) -> Any:
        """The analysis ``name`` of ``model``: cached, or computed by its ``@analysis`` function."""
        if name in self.analyses:
            return self.analyses[name]
        _load_builtin_passes()
        computed = analyses.get(name)
        if computed is None:
            raise UserError(f"no {name} available: a pass that produces it must run first")
        value = self.analyses[name] = computed.compute(model, self)
        return value

    def record(self, kind: type[R]) -> R | None:
        """The record of type ``kind`` that a pass published, if any."""
        found = self.records.get(kind.report_key)
        return found if isinstance(found, kind) else None


class Record:
    """What a pass tells the report: a dataclass whose fields go under ``report_key``.

    ``to_report()`` returns the report entries (by default ``{report_key: asdict(self)}``).
    """

    report_key: ClassVar[str] = ""

    def to_report(self) -> dict[str, Any]:
        return {self.report_key: dataclasses.asdict(self)}  # type: ignore[call-overload]


R = typing.TypeVar("R", bound=Record)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """An analysis computed on demand: ``compute(model, context)``, valid once ``requires`` hold."""

    name: str
    compute: Callable[[ir.Model, Context], Any]
    requires: frozenset[str]


analyses: dict[str, Analysis] = {}


def analysis(name: str, *, requires: Iterable[str] = ()) -> Callable[[Callable[[ir.Model, Context], Any]], Callable[[ir.Model, Context], Any]]:
    """Decorator that registers ``compute(model, context)`` as the on-demand analysis ``name``."""

    def register_analysis(compute: Callable[[ir.Model, Context], Any]) -> Callable[[ir.Model, Context], Any]:
        if name in analyses and analyses[name].compute is not compute:
            raise TypeError(f"analysis {name!r} registered twice")
        analyses[name] = Analysis(name, compute, frozenset(requires))
        return compute

    return register_analysis


class Pass(ir.passes.InPlacePass):
    """A qonnx pass: an onnx-ir in-place pass with a registry name and a shared context.

    Subclasses set ``name`` and ``summary``; declare the analyses they need (``analyses_required``),
    make (``analyses_produced``) and keep valid when they modify the model (``preserves``), or set
    ``read_only``; take their options as typed keyword-only ``__init__`` parameters after ``context`` and implement
    ``call(model)``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    preserves: ClassVar[frozenset[str]] = frozenset()
    analyses_required: ClassVar[frozenset[str]] = frozenset()
    analyses_produced: ClassVar[frozenset[str]] = frozenset()
    read_only: ClassVar[bool] = False  # never modifies the model: every analysis survives it

    def __init__(self, context: Context | None = None) -> None:
        self.context = context if context is not None else Context()
        self.skipped: collections.Counter[str] = collections.Counter()

    def skip(self, reason: str, node: ir.Node | None = None) -> bool:
        """Record why a rewrite did not apply (counted in the pass record, listed with --debug); returns False.

        ``reason`` is the condition that failed, without the node's name, so that equal reasons add up.
        """
        self.skipped[reason] += 1
        if node is not None:
            logger.debug("%s: %s not rewritten: %s", self.name, node.name or node.op_type, reason)
        return False

    def publish(self, record: Record) -> None:
        """Hand ``record`` to the report (replacing an earlier record of the same key)."""
        self.context.records[record.report_key] = record

    def __repr__(self) -> str:
        return self.name or type(self).__name__


registry: dict[str, type[Pass]] = {}

# Names that stand for a sequence of passes in a text pipeline.
aliases: dict[str, str] = {
    "normalize": "inline-functions,upgrade-opset,constants-to-initializers,fold-constants,infer-shapes,fold-bias-add,fold-batchnorm,fold-pad,remove-dead",
}

# quantize-recurrent and quantize-subgraph-weights store weights whose activations stay float
# (LSTM/GRU/RNN; weighted nodes inside If/Loop/Scan bodies): no calibration, after insert-qdq.
DEFAULT_PIPELINE = "normalize,div-to-mul,resolve-policy,calibrate,insert-qdq,quantize-recurrent,quantize-subgraph-weights,remove-dead,finalize,verify"
# Weight-only: no calibration (data-aware rounding reads its statistics on demand, from the run's data).
INT4_PIPELINE = "normalize,resolve-policy,quantize-weights,remove-dead,finalize,verify"


def default_pipeline(precision: str = "int8", *, calibrated: bool = True, keep_io_types: bool = True) -> str:
    """The pipeline a precision runs when none is given.

    INT8 and FP8: ``DEFAULT_PIPELINE``. INT4: ``INT4_PIPELINE``. FP16/BF16: calibration only when data is given (its ranges are then
    the evidence for FP32 islands, and ``float-sensitivity`` measures the converted graph on it),
    then ``float-islands`` and ``convert-float``.
    """
    if precision in ("int8", "fp8"):
        return DEFAULT_PIPELINE
    if precision == "int4":
        return INT4_PIPELINE
    steps = ["normalize", "resolve-policy"]
    if calibrated:
        steps.append("calibrate")
    steps.append("float-islands")
    if calibrated:
        steps.append("float-sensitivity")
    steps.append("convert-float" if keep_io_types else "convert-float(keep_io_types=false)")
    steps += ["remove-dead", "finalize", "verify"]
    return ",".join(steps)


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator that adds a pass to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no registry name")
    if cls.name in registry and registry[cls.name] is not cls:
        raise TypeError(f"pass name {cls.name!r} registered twice")
    registry[cls.name] = cls
    return cls


def _load_builtin_passes() -> None:
    import qonnx.passes  # noqa: F401  (registers every pass module)


@dataclasses.dataclass(frozen=True)
class PipelineStep:
    name: str
    options: dict[str, Any]

    def __str__(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})"


_STEP = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*(?:\(([^()]*)\))?\s*(?:,|$)")


def _convert(value: str, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value.lower() == "none":
            return None
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    try:
        if annotation is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if annotation in (int, float, str):
            return annotation(value)
    except ValueError:
        raise UserError(f"{where}: {value!r} is not a valid {annotation.__name__}") from None
    return value


def _parameters(cls: type[Pass]) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)
    return {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclasses.dataclass(frozen=True)
class PassOption:
    """One option of a pass, as its ``__init__`` annotates it: the parser and ``qonnx passes`` read these."""

    name: str
    annotation: Any
    default: Any

    @property
    def type_text(self) -> str:
        text = self.annotation if isinstance(self.annotation, str) else getattr(self.annotation, "__name__", None)
        return text if text and not typing.get_args(self.annotation) else str(self.annotation).replace("typing.", "")

    def __str__(self) -> str:
        return f"{self.name}: {self.type_text} = {self.default!r}"


def pass_options(cls: type[Pass]) -> list[PassOption]:
    """The typed options of a pass, in the order its ``__init__`` declares them."""
    hints = typing.get_type_hints(cls.__init__)
    return [PassOption(name, hints.get(name, str), p.default) for name, p in _parameters(cls).items()]


def parse_pipeline(text: str) -> list[PipelineStep]:
    """Parse ``a,b(x=1,y=foo),c`` into steps, checking names and option types against the registry."""
    _load_builtin_passes()
    text = text.strip()
    if not text:
        raise UserError("empty pipeline")
    steps, pos = [], 0
    while pos < len(text):
        match = _STEP.match(text, pos)
        if not match or match.end() == pos:
            raise UserError(f"cannot parse pipeline at {text[pos:]!r}")
        name, args = match.group(1), match.group(2)
        pos = match.end()
        if name in aliases:
            if args:
                raise UserError(f"{name} stands for several passes and takes no options")
            steps.extend(parse_pipeline(aliases[name]))
            continue
        if name not in registry:
            raise UserError(f"unknown pass {name!r}; known passes: {', '.join(sorted(registry))}")
        params = {option.name: option for option in pass_options(registry[name])}
        options: dict[str, Any] = {}
        for item in filter(None, (a.strip() for a in (args or "").split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep:
                raise UserError(f"{name}: option {item!r} needs the form key=value")
            if key not in params:
                known = ", ".join(params) or "none"
                raise UserError(f"{name}: unknown option {key!r} (options: {known})")
            options[key] = _convert(raw.strip(), params[key].annotation, f"{name}({key})")
        steps.append(PipelineStep(name, options))
    return steps


def _producers(name: str) -> list[str]:
    """The passes that make ``name`` from nothing (not those that only update it)."""
    return sorted(n for n, cls in registry.items() if name in cls.analyses_produced and name not in cls.analyses_required)


def check_order(names: Iterable[str], available: Iterable[str] = ()) -> None:
    """Refuse a pipeline (pass names in order) in which a pass needs an analysis that no earlier pass
    produced, or that a pass in between may have invalidated; ``available``: analyses already held.

    Every pass is assumed to modify the model, so an analysis survives a pass only when the pass
    preserves it. On-demand analyses are available when what they require is.
    """
    _load_builtin_passes()
    held = set(available)
    made_by: dict[str, str] = {}
    dropped_by: dict[str, str] = {}

    def obtainable(name: str) -> bool:
        if name in held:
            return True
        computed = analyses.get(name)
        return computed is not None and all(obtainable(r) for r in computed.requires)

    def missing(name: str) -> str:
        computed = analyses.get(name)
        if name not in held and computed is not None:
            return next(missing(r) for r in sorted(computed.requires) if not obtainable(r))
        return name

    for name in names:
        cls = registry[name]
        for needed in sorted(cls.analyses_required, key=lambda n: (n in analyses, n)):  # made by passes first
            if obtainable(needed):
                continue
            lacking = missing(needed)
            what = f"the {lacking} analysis" + (f" (for {needed})" if lacking != needed else "")
            if lacking in dropped_by:
                raise UserError(
                    f"{name} needs {what}, which {dropped_by[lacking]} (after {made_by[lacking]}) does not preserve: "
                    f"put {made_by[lacking]} after {dropped_by[lacking]}"
                )
            producers = _producers(lacking)
            hint = f"put {' or '.join(producers)} before {name}" if producers else "no pass produces it"
            raise UserError(f"{name} needs {what}, which no earlier pass produces: {hint}")
        if not cls.read_only:
            for lost in held - cls.preserves - cls.analyses_produced:
                dropped_by[lost] = name
            held &= cls.preserves
        held |= cls.analyses_produced
        for made in cls.analyses_produced:
            made_by[made] = name
            dropped_by.pop(made, None)


def build(steps: Iterable[PipelineStep], context: Context) -> list[Pass]:
    """The passes of ``steps``, after checking their order (``check_order``) against what ``context`` holds."""
    _load_builtin_passes()
    steps = list(steps)
    check_order([s.name for s in steps], context.analyses)
    return [registry[s.name](context, **s.options) for s in steps]


def apply(name: str, model: ir.Model, context: Context, **options: Any) -> ir.passes.PassResult:
    """Run the registered pass ``name`` on ``model`` (a pass that needs another pass's rewrite on a
    copy asks for it by name, instead of importing its module)."""
    _load_builtin_passes()
    return registry[name](context, **options)(model)


def check_dump_after(dump_after: Iterable[str], names: Iterable[str]) -> None:
    """Refuse a ``--dump-after`` name that no pass of the pipeline has (it would dump nothing)."""
    names = list(dict.fromkeys(names))
    for wanted in dump_after:
        if wanted not in names:
            raise UserError(f"--dump-after {wanted}: no pass of that name in the pipeline (its passes: {', '.join(names)})")


def op_histogram(model: ir.Model) -> collections.Counter:
    return collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in qir.all_nodes(model)
    )


@dataclasses.dataclass
class PassRecord:
    """What one pass did: its time, whether it changed the model, and node counts by op type."""

    name: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int
    op_delta: dict[str, int]
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count of rewrites not applied

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_pipeline(
    model: ir.Model,
    passes: list[Pass],
    context: Context,
    *,
    dump_after: Iterable[str] = (),
    dump_dir: str | Path = ".",
    verify: Callable[[ir.Model, str], None] | None = None,
    on_pass: Callable[[PassRecord], None] | None = None,
) -> list[PassRecord]:
    """Run ``passes`` over ``model`` in place and return one record per pass.

    ``verify(model, after)`` runs after every pass when given (debug mode). ``dump_after`` names
    passes whose output is saved as ``<dump_dir>/after-<NN>-<name>.onnx``; a name that no pass has
    is refused before the first pass runs.
    """
    dump_after = set(dump_after)
    check_dump_after(sorted(dump_after), (p.name for p in passes))
    records = []
    for index, pass_ in enumerate(passes):
        before = op_histogram(model)
        pass_.skipped = collections.Counter()
        start = time.perf_counter()
        try:
            result = pass_(model)
        except (ir.passes.PreconditionError, ir.passes.PostconditionError) as exc:
            cause = exc.__cause__
            if isinstance(cause, UserError):
                raise cause from None
            raise
        seconds = time.perf_counter() - start
        model = result.model
        for made in pass_.analyses_produced:
            if made not in analyses:  # a pass that keeps its analysis in the model (the plan) marks it held
                context.analyses.setdefault(made, True)
        if result.modified:
            kept = {k: v for k, v in context.analyses.items() if k in pass_.preserves or k in pass_.analyses_produced}
            dropped = set(context.analyses) - set(kept)
            if dropped:
                logger.info("%s dropped analyses %s", pass_.name, sorted(dropped))
            context.analyses = kept
        after = op_histogram(model)
        delta = {op: after[op] - before[op] for op in sorted(set(before) | set(after)) if after[op] != before[op]}
        skipped = dict(sorted(pass_.skipped.items(), key=lambda item: (-item[1], item[0])))
        record = PassRecord(pass_.name, seconds, result.modified, sum(before.values()), sum(after.values()), delta, skipped)
        for reason, count in skipped.items():
            logger.info("%s: %d not rewritten: %s", pass_.name, count, reason)
        records.append(record)
        if on_pass:
            on_pass(record)
        if verify is not None and not pass_.read_only:  # a read-only pass left the model as verified
            verify(model, pass_.name)
        if pass_.name in dump_after:
            target = Path(dump_dir) / f"after-{index:02d}-{pass_.name}.onnx"
            qir.save(model, target)
            logger.info("dumped %s", target)
    return records
