"""Full-model evaluations of plans, the unit of work of sensitivity and automatic mixed precision.

A trial takes the planned FP32 model (``resolve-policy`` and ``calibrate`` have run), keeps in INT8
only the nodes it is given (the others float, or in the format ``formats`` names for them: dynamic
INT8 for a MatMul), quantizes a copy with ``insert-qdq`` (asked for by name, with the calibrated
ranges) and scores its outputs against the FP32 model's on the evaluation feeds.

The metric is one of ``qonnx.verdict``'s by name, or a Python callable ``score(reference_outputs,
test_outputs) -> float`` (the config's ``evaluation.metric``). A callable is never sent to a worker:
a worker runs the trial and returns its outputs, and the callable scores them here. So a lambda or
a closure works as well as a module-level function, and the values are the same as in one process.

Trials are independent: ``Trials.scores`` hands a batch of them to an executor (``qonnx.executor``:
a local process pool, Ray), which sends each worker the model and data once (``TrialSetup``) and
each trial as a set of node names, run by ``run_trial``. A trial's value does not depend on where it
ran.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.errors import UserError
from qonnx.pipeline import Context, apply
from qonnx.policy import node_spec, set_node_spec
from qonnx.targets import get_target
from qonnx.verdict import MEET_ON, metric_value

if TYPE_CHECKING:
    from qonnx.executor import Executor

logger = logging.getLogger(__name__)

__all__ = ["Trials", "TrialSetup", "rank_correlation", "run_trial"]

Metric = str | Callable[[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]], float]
Formats = Mapping[str, dict[str, Any]]  # node name -> spec dict for a node not in INT8 (default: float)


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None with fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return None

    def ranks(values: Sequence[float]) -> np.ndarray:
        values = np.asarray(values, np.float64)
        order = np.argsort(values, kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values):  # ties: their mean rank
            tied = values == value
            result[tied] = result[tied].mean()
        return result

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _parts(meet_on: str, count: int, min_part: int = 1) -> list[slice]:
    """The slices of ``count`` feeds a plan must meet the target on, each pooled alone, each of at
    least ``min_part`` feeds: "each" cuts runs of ``min_part`` (the remainder joins the last run),
    "halves" two halves; too few feeds for two parts: one, pooled."""
    if meet_on == "pooled" or count < 2 * min_part:
        return [slice(None)]
    if meet_on == "halves":
        return [slice(None, count // 2), slice(count // 2, None)]
    starts = list(range(0, count - min_part + 1, min_part))
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], count])]


class Trials:
    """Plans of the planned FP32 ``model`` with only some nodes in INT8, evaluated on ``feeds``.

    ``metric`` is one of ``qonnx.verdict``'s (sqnr, cosine, top1) or a callable scoring the lists
    of reference and test outputs (higher is better); ``evaluations`` counts the full-model
    evaluations run, wherever they ran.
    """

    def __init__(
        self, model: ir.Model, context: Context, feeds: list[dict[str, np.ndarray]], metric: Metric, *,
        meet_on: str = "pooled", min_part: int = 1, reference: runtime.Session | None = None,
    ):  # fmt: skip
        """``reference``: an onnxruntime session of ``model`` the caller already has (else one is made)."""
        if meet_on not in MEET_ON:
            raise UserError(f"meet_on {meet_on!r} is not one of {', '.join(MEET_ON)}")
        if min_part < 1:
            raise UserError(f"min_part must be positive, not {min_part}")
        self.model, self.context, self.feeds, self.metric = model, context, feeds, metric
        reference = reference if reference is not None else runtime.session(model)
        self.reference = [reference.run(feed) for feed in feeds]
        self.parts = _parts(meet_on, len(feeds), min_part)
        if len(self.parts) > 1 and not callable(metric):
            # A part whose FP32 outputs are all zero has no signal to hold an error against (its
            # SQNR is -200 dB at the first rounding error): it is judged pooled with the others only.
            silent = [p for p in self.parts if not any(np.any(out) for ref in self.reference[p] for out in ref.values())]
            if silent and len(silent) < len(self.parts):
                logger.warning("%d of the %d search parts have all-zero FP32 outputs: judged pooled only, not alone", len(silent), len(self.parts))
                self.parts = [p for p in self.parts if p not in silent] + [slice(None)]
        self.candidates = [n.name for n in model.graph if node_spec(n.metadata_props).quantized]
        self.evaluations = 0
        self._setups: dict[int | None, TrialSetup] = {}
        self._qdq_fusion = get_target(context.target).cpu_fused_kernels  # measured as the evaluation measures

    def quantized(self, int8: set[str] | None = None, formats: Formats | None = None) -> ir.Model:
        """A copy with Q/DQ for the nodes in ``int8`` (None: every node the plan quantizes), the
        other candidates in their ``formats`` entry or float."""
        c = self.context
        return _plan_copy(self.model, self.candidates, int8, c.target, c.precision, c.mode, c.reduce_range, c.analyses["ranges"], formats)

    def comparison(self, trial: ir.Model) -> metrics.Comparison:
        """Outputs of ``trial`` against the FP32 model's (one full-model evaluation)."""
        self.evaluations += 1
        return metrics.compare(self.reference, runtime.session(trial, qdq_fusion=self._qdq_fusion), self.feeds, what="evaluation sample")

    def outputs(self, trial: ir.Model) -> list[dict[str, np.ndarray]]:
        """The outputs of ``trial`` on every feed (one full-model evaluation)."""
        self.evaluations += 1
        session = runtime.session(trial, qdq_fusion=self._qdq_fusion)
        return [session.run(feed) for feed in self.feeds]

    def value(self, outputs: Sequence[dict[str, np.ndarray]]) -> float:
        """The metric of ``outputs`` (one dict per feed) against the FP32 outputs: the lowest of its
        values on the parts that ``meet_on`` cuts the feeds into (pooled: one part; halves: the first
        and the second half; each: every feed alone), NaN when any is. A plan must hold on each
        part, which asks for a margin where samples differ, before a plan fitted to the search
        samples is trusted on new data: the lowest of several parts is never above the pooled value."""
        values = []
        for part in self.parts:
            if callable(self.metric):
                values.append(float(self.metric(self.reference[part], list(outputs[part]))))
            else:
                values.append(_value(self.metric, metrics.compare(self.reference[part], list(outputs[part]), self.feeds[part], what="evaluation sample")))
        return float("nan") if any(np.isnan(values)) else min(values)

    def score(self, int8: set[str] | None = None, formats: Formats | None = None) -> float:
        """The metric of the plan with ``int8`` quantized (the others as ``formats`` says, else
        float), as ``value`` takes it; NaN when the outputs do not have it."""
        trial = self.quantized(int8, formats)
        if callable(self.metric) or len(self.parts) > 1:
            return self.value(self.outputs(trial))
        return _value(self.metric, self.comparison(trial))

    def scores(self, plans: Sequence[set[str] | None], executor: Executor | None = None) -> list[float]:
        """``[score(plan) for plan in plans]``, the plans evaluated by ``executor`` (None: here, in order).

        The first plan runs here and is timed; the others go to the executor's workers when that
        saves more than their start-up (``Executor.worth``), else they run here too. The workers
        get the model, feeds, reference outputs and ranges once each (``TrialSetup``) and one set
        of node names per plan. The values are the same wherever they ran.
        """
        plans = list(plans)
        if not plans:
            return []
        started = time.perf_counter()
        values = [self.score(plans[0])]
        each = time.perf_counter() - started
        rest = plans[1:]
        setup = None
        if executor is not None and rest:
            known = self._setups.get(executor.threads)  # workers that already hold it need no start-up
            if executor.worth(len(rest), each, shared=known if known is not None else _NOT_SENT):
                setup = self.setup(executor.threads)
        if setup is None:
            return values + [self.score(plan) for plan in rest]
        logger.info("%d trials on %d workers (%s), about %.2f s each here", len(rest), executor.workers, executor.name, each)
        here = callable(self.metric) or len(self.parts) > 1  # the workers return outputs, scored here
        items = [(None if plan is None else sorted(plan), None if here else self.metric, None) for plan in rest]
        results = executor.map(run_trial, items, shared=setup)
        values += [self.value(r) if here else r for r in results]
        self.evaluations += len(rest)
        return values

    def setup(self, threads: int | None = None) -> TrialSetup | None:
        """What a worker needs to run this model's trials (made once per thread count); None when the
        model cannot travel as one protobuf (external data, over 1 GiB): its trials run here."""
        if threads in self._setups:
            return self._setups[threads]
        total = 0
        for graph in self.model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor):
                    return None
                total += tensor.nbytes if tensor is not None else 0
        if total > _SHIP_LIMIT:
            return None
        c = self.context
        setup = TrialSetup(
            model=ir.to_proto(self.model).SerializeToString(),
            candidates=list(self.candidates),
            target=c.target,
            precision=c.precision,
            mode=c.mode,
            reduce_range=c.reduce_range,
            ranges=c.analyses["ranges"],
            feeds=self.feeds,
            reference=self.reference,
            threads=threads,
        )
        self._setups[threads] = setup
        return setup


_SHIP_LIMIT = 1 << 30  # bytes of weights above which trials stay in this process
_NOT_SENT = object()  # a payload no worker holds yet


def _plan_copy(
    model: ir.Model, candidates: Sequence[str], int8: Iterable[str] | None, target: str, precision: str, mode: str, reduce_range: bool | None, ranges: Any,
    formats: Formats | None = None,
) -> ir.Model:
    """A copy of ``model`` with Q/DQ for the candidates in ``int8`` (None: all), the others in their
    ``formats`` entry or float."""
    trial = model.clone()
    if int8 is not None:
        keep, planned, formats = set(int8), set(candidates), formats or {}
        for node in trial.graph:
            if node.name in planned and node.name not in keep:
                set_node_spec(node, dict(formats.get(node.name, {"format": "float"})))
    scratch = Context(target=target, precision=precision, mode=mode, reduce_range=reduce_range, analyses={"plan": True, "ranges": ranges})
    apply("insert-qdq", trial, scratch)
    # FP16 islands of the plan and a planned FP16 remainder (tensorrt): converted as the pipeline does
    low = ({spec["format"] for spec in (formats or {}).values()} | {node_spec(n.metadata_props).format for n in trial.graph}) & {"fp16", "bf16"}
    if low:
        _own_types(trial)
    for fmt in sorted(low):
        apply("convert-float", trial, scratch, precision=fmt)
    if any(spec["format"] == "weight-only" for spec in (formats or {}).values()):
        apply("quantize-weights", trial, scratch)  # INT4 weight-only nodes of the plan (RTN), last as in the pipeline
    return trial


def _own_types(model: ir.Model) -> None:
    """Give every value of ``model`` (a clone) a type object of its own: onnx-ir 1.1's
    ``Model.clone`` shares them with the original, so setting a dtype in the clone (as
    ``convert-float`` does) would change the original's too."""
    graph = model.graph
    values = [*graph.inputs, *graph.initializers.values(), *(out for node in graph for out in node.outputs)]
    for value in values:
        if isinstance(value.type, ir.TensorType):
            value.type = ir.TensorType(value.type.dtype)


def _value(metric: str, comparison: metrics.Comparison) -> float:
    value = metric_value(metric, comparison.to_dict())
    return float("nan") if value is None else float(value)


@dataclasses.dataclass
class TrialSetup:
    """Everything a worker needs for the trials of one model, sent once per worker: the planned FP32
    model as protobuf bytes, the plan's INT8 candidates, the target settings, the range table (a
    plain dataclass, pickled as it is), the evaluation feeds and the FP32 reference outputs, and
    the onnxruntime threads of a trial's session. The worker parses the model once and keeps it."""

    model: bytes
    candidates: list[str]
    target: str
    precision: str
    mode: str
    reduce_range: bool | None
    ranges: Any
    feeds: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    threads: int | None = None
    _parsed: ir.Model | None = dataclasses.field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_parsed": None}

    def parsed(self) -> ir.Model:
        if self._parsed is None:
            self._parsed = ir.from_proto(onnx.ModelProto.FromString(self.model))
        return self._parsed


def run_trial(setup: TrialSetup, item: tuple[list[str] | None, str | None, dict[str, dict] | None]) -> float | list[dict[str, np.ndarray]]:
    """One trial in a worker: the plan with the nodes ``item[0]`` in INT8 (None: all; the others in
    their ``item[2]`` format, else float), scored by the metric ``item[1]`` against the reference
    outputs: the same value ``Trials.score`` gives. With no metric named (a Python callable scores
    in the caller) the trial's outputs, one dict per feed."""
    int8, metric, formats = item
    trial = _plan_copy(setup.parsed(), setup.candidates, int8, setup.target, setup.precision, setup.mode, setup.reduce_range, setup.ranges, formats)
    session = runtime.session(trial, threads=setup.threads, qdq_fusion=get_target(setup.target).cpu_fused_kernels)
    if metric is None:
        return [session.run(feed) for feed in setup.feeds]
    return _value(metric, metrics.compare(setup.reference, session, setup.feeds, what="evaluation sample"))
