"""Automatic mixed precision: the fewest nodes kept float for the model to meet an accuracy target,
at the best measured speed.

Starts from the target's full INT8 plan and the ``layer-sensitivity`` ranking (worst first):

1. the all-INT8 plan is evaluated; when it meets the target, nothing changes (and the ranking, the
   costly part, is not computed: the analysis is asked for only past this point);
2. else the smallest prefix of the ranking that, kept float, meets the target is found by
   bisection (the whole ranking in float is the FP32 model and meets any target), assuming the
   metric grows with the prefix: ``1 + ceil(log2(n))`` full-model evaluations for ``n`` nodes;
3. then each node of that prefix, least sensitive first (at most ``max_return``), goes back to INT8
   when the target still holds without it;
4. speed, measured (``cpu`` target): the input model, the chosen plan and the plan with every
   node but Conv/ConvTranspose/Gemm/MatMul in float (integer islands that onnxruntime may run
   slower than float) are timed on one sample, interleaved (``qonnx.timing``: on a shared machine,
   models timed one after the other compare different machines); when the plan runs under
   ``min_speedup`` (default 1: slower than FP32), the weighted-only plan wins when it meets the
   target and was the faster of the two in at least three timing cycles of four (the first
   quartile of their paired ratio above 1: on a shared machine their medians can swap between
   runs);
5. then every other point of the curve is timed against FP32, a few plans at a time interleaved
   with it (``_CURVE_CYCLES`` cycles each: a coarser figure than the step above); the fastest
   points, when they read faster than the plan, are timed again beside it as in step 4
   (``_confirm_fastest``), and one that meets the target replaces the plan when it was the faster
   in three cycles of four. The record names the best reachable points: the fastest plan
   measured, and the fastest that meets the target. A plan under ``min_speedup`` is kept only
   with the record saying so: ``binding`` is "speed" and ``binding_reason`` says whether any plan
   measured reaches that speed on this CPU, and at what accuracy.

With ``groups``, a step of the ranking is a unit of ``qonnx.node_groups`` (a layer with its
activation chain, an attention block, or a single node), ranked by its group score: the bisection
moves whole units, the return pass single nodes. On the ``cpu`` target (static mode), the MatMuls
left in the fallback then try dynamic INT8 (``QuantSpec.dynamic``: activations quantized at run
time from each input's own range, which an outlier-heavy or input-dependent activation needs),
all at once, else one by one; a MatMul keeps dynamic INT8 where the target holds; those still float
then try INT4 weight-only (``int4=true``, the default where the target runs block-quantized weights:
weights in 4-bit blocks of 32, activations float, the format of ``--precision int4``), the same way;
what is left stays float.
On ``cuda`` and ``tensorrt`` the lighter format is FP16 (for the ops the CUDA provider has an FP16
kernel for), tried the same way; the trials convert those nodes with ``convert-float(precision=fp16)``
after ``insert-qdq``, as the pipeline does (``qonnx.flow.pipeline_steps``), and measure them on this
machine's CPU provider (FP16 values, not the CUDA kernels' accumulation). Speed is measured only on
the ``cpu`` target: another target's provider is not this CPU.
The metric can be a Python callable (``metric=custom``: ``Context.score``, the config's
``evaluation.metric``), which scores the trials' outputs in this process.

Every evaluated point goes into the curve (fraction of the ranked nodes in INT8, metric value,
speedup where timed); the fallback nodes get their format and its reason in the plan. The plan document also records
the model hash, so that replaying it (``--policy plan.json``) on another model is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from qonnx import ir as qir
from qonnx import metrics, runtime, timing
from qonnx.errors import UserError
from qonnx.node_groups import NodeGroup, units
from qonnx.pipeline import Pass, Record, register
from qonnx.policy import PLAN_KEY, QuantSpec, node_spec, record_formats, set_node_spec
from qonnx.targets import get_target
from qonnx.trials import Trials
from qonnx.verdict import DEFAULT_FLOORS, DEFAULT_MEET_ON, MEET_ON, choose_metric

logger = logging.getLogger(__name__)

__all__ = ["AutoPolicy", "AutoPolicyRecord", "smallest_prefix"]

_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def smallest_prefix(n: int, meets: Callable[[int], bool]) -> int:
    """The smallest ``k`` in ``1..n`` with ``meets(k)``, by bisection, given that ``meets(0)`` is
    false and ``meets(n)`` true (not evaluated) and assuming ``meets`` monotone: ``ceil(log2(n))``
    calls at most."""
    low, high = 0, n
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return high


@dataclasses.dataclass
class AutoPolicyRecord(Record):
    report_key = "auto_policy"
    metric: str
    target: float
    achieved: float
    met: bool
    fallback: list[str]
    fallback_format: str
    evaluations: int
    binding: str | None  # None: both met; "accuracy": even the plans with most float miss; "speed": under min_speedup
    speedup: float | None
    fp32_ms: float | None
    curve: list[dict[str, Any]]
    chosen: int
    formats: dict[str, str] = dataclasses.field(default_factory=dict)  # fallback node -> "float", "int8-dynamic", "int4" or "fp16"
    units: int | None = None  # steps of the ranking (groups moved whole count as one)
    # How ``achieved`` was taken over the search samples (``qonnx.verdict.MEET_ON``), and how many.
    meet_on: str = "pooled"
    samples: int | None = None
    parts: int | None = None  # the parts judged alone: fewer than the samples where a top-1 target needs several per part
    # The speed step, when the plan ran under min_speedup: the plan's speedup, the nodes other than
    # Conv/ConvTranspose/Gemm/MatMul that it would also keep float, that plan's value and speedup,
    # the quartiles of its paired ratio over the plan (``islands_over_plan``), and which of the two
    # was chosen ("islands" or "plan"); None when it did not run.
    speed_step: dict[str, Any] | None = None
    # What limits the search's judgement, for the person reading the report (a top-1 target finer
    # than the search samples can resolve).
    notes: list[str] = dataclasses.field(default_factory=list)
    # The speed asked for (FP32 time / plan time), the sentence saying what binds and the best
    # reachable points (``fastest`` and ``fastest_meeting``: a curve point's index, speedup, value
    # and fallback size), when the speed was measured.
    min_speedup: float = 1.0
    binding_reason: str | None = None
    reachable: dict[str, dict[str, Any]] | None = None
    # The fastest points of the curve timed again beside the plan (``_confirm_fastest``): each
    # point, its speedup and, where it meets the target, the quartiles of its ratio over the
    # plan; and which was chosen (a point's index, or "plan"); None when none read faster.
    speed_check: dict[str, Any] | None = None


_DYNAMIC = "int8-dynamic"
_INT4 = "int4"
# The INT4 weight-only spec a fallback MatMul/Gemm may take: symmetric blocks of 32 along K.
_INT4_SPEC = QuantSpec("weight-only", weight_bits=4, block_size=32, symmetric_weights=True)
_FP16_TARGETS = ("cuda", "tensorrt")


@register
class AutoPolicy(Pass):
    """Attributes:
    metric: sqnr, cosine, top1, auto (chosen from the outputs' shapes) or custom (the config's
        Python callable, ``Context.score``).
    min: the value to reach (default: the metric's floor, ``qonnx.verdict.DEFAULT_FLOORS``).
    samples: calibration samples per trial (the evaluation data stays held out); default 16, or
        for a top-1 target enough class decisions to resolve it (``1 / (1 - min)``: 100 for 0.99,
        at most 256 samples). With fewer, the record's ``notes`` and a warning say so.
    max_return: fallback nodes tried back in INT8 after the bisection (and, on the cpu target,
        MatMuls tried in dynamic INT8 one at a time).
    speed: time the plans interleaved and, when the plan runs under ``min_speedup``, prefer the
        weighted-only plan where it meets the target and is reliably faster (step 4 above); then
        time every point of the curve (step 5).
    min_speedup: the speed asked for, FP32 time over the plan's (default 1: not slower than
        FP32). A plan under it has the speed step try the weighted-only plan, and, when that
        does not reach it either, is reported with ``binding`` "speed" and the best reachable
        points; it is no gate (no exit code): timings on a shared machine move too much for one.
    groups: rank the node groups of ``qonnx.node_groups`` (a layer with its activation chain, an
        attention block) as one step each, by their group score, instead of node by node.
    dynamic: on the cpu target, a MatMul of the fallback goes to dynamic INT8 (activations
        quantized at run time) rather than float when the target still holds.
    fp16: on the cuda and tensorrt targets, a node of the fallback goes to FP16 rather than FP32
        when the target still holds (and the CUDA provider has an FP16 kernel for it).
    int4: on targets that run block-quantized weights (cpu, cuda), a MatMul or Gemm of the
        fallback with a constant 2-D weight, still float after the lighter step above, goes to INT4
        weight-only (4-bit blocks of 32 along K, activations float) when the target still holds.
    meet_on: the samples a plan must meet the target on (``Trials.value``): ``pooled`` (all of
        them at once), ``halves`` (the first and the second half, each alone) or ``each`` (every
        sample alone, the default; for a top-1 target, every run of samples that holds the
        ``1 / (1 - min)`` class decisions that resolve it, and pooled when there are fewer). The
        last two ask for a margin that grows with how much the samples differ, for data the
        search never saw: pooled over 10 photos, every kit model met 30 dB on them and none did
        on held-out photos (benchmarks/results/auto_pooled.md).
    """

    name = "auto-policy"
    summary = "keep float the fewest most sensitive nodes that let the model meet --min, by bisection, then measured speed"
    preserves = frozenset({"shapes", "ranges", "layer-sensitivity"})
    analyses_required = frozenset({"plan", "ranges", "layer-sensitivity"})
    analyses_produced = frozenset({"plan"})

    def __init__(
        self,
        context=None,
        *,
        metric: str = "auto",
        min: float | None = None,
        samples: int | None = None,
        max_return: int = 16,
        speed: bool = True,
        groups: bool = False,
        dynamic: bool = True,
        fp16: bool = True,
        int4: bool = True,
        meet_on: str = DEFAULT_MEET_ON,
        min_speedup: float = 1.0,
    ) -> None:
        super().__init__(context)
        if metric not in ("auto", "sqnr", "cosine", "top1", "custom"):
            raise UserError(f"auto-policy: metric {metric!r} is not one of auto, sqnr, cosine, top1, custom")
        if (samples is not None and samples < 1) or max_return < 0:
            raise UserError(f"auto-policy: samples must be positive and max_return not negative (samples={samples}, max_return={max_return})")
        if meet_on not in MEET_ON:
            raise UserError(f"auto-policy: meet_on {meet_on!r} is not one of {', '.join(MEET_ON)}")
        if not min_speedup > 0:
            raise UserError(f"auto-policy: min_speedup must be positive (FP32 time over the plan's), not {min_speedup}")
        if metric == "custom" and min is None:
            raise UserError("auto-policy: a custom metric needs a threshold (min)")
        self.metric, self.min, self.samples, self.max_return, self.speed = metric, min, samples, max_return, speed
        self.groups, self.dynamic, self.fp16, self.int4, self.meet_on = groups, dynamic, fp16, int4, meet_on
        self.min_speedup = float(min_speedup)

    def requires(self, model: ir.Model) -> None:
        if self.metric == "custom" and self.context.score is None:
            raise UserError("auto-policy: metric=custom needs a Python metric (the config's evaluation.metric callable)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # The plans are measured on calibration samples: the evaluation data stays held out, and the
        # report's fidelity says whether the choice carries over to data the search never saw.
        data = self.context.calib if self.context.calib is not None else self.context.eval_data
        if data is None or len(data) == 0:
            raise UserError("--policy auto needs data to measure the plans: give --calib DATA")
        custom = self.metric == "custom"
        fp32 = runtime.session(model)  # the search's FP32 reference, made once
        resolving = None  # the samples that resolve a top-1 target
        if custom:
            metric = getattr(self.context.score, "__qualname__", type(self.context.score).__name__)
            target = self.min
        else:
            first_outputs = fp32.run(data[0])
            shapes = metrics.compare([first_outputs], [first_outputs], [data[0]])  # which task metrics the outputs' shapes have
            metric = self.metric
            if metric == "auto":
                token_inputs = any(v.dtype in (ir.DataType.INT64, ir.DataType.INT32) for v in model.graph.inputs)
                metric = choose_metric(shapes.to_dict(), token_inputs)[0]
            target = self.min if self.min is not None else DEFAULT_FLOORS[metric]
            if metric == "top1":
                resolving = _resolving_samples(shapes, target)
        default = _SAMPLES if resolving is None else max(_SAMPLES, min(_MAX_TOP1_SAMPLES, resolving[0]))
        feeds = [data[i] for i in range(min(self.samples or default, len(data)))]
        notes = [] if resolving is None or len(feeds) >= resolving[0] else [_resolution_note(target, len(feeds), *resolving)]
        for note in notes:
            logger.warning("%s", note)
        # A top-1 agreement is a rate over class decisions: a part of the samples judged alone must
        # hold enough of them to resolve the target (0.99 judged on one decision means "agrees").
        min_part = 1 if resolving is None else resolving[0]
        trials = Trials(model, self.context, feeds, self.context.score if custom else metric, meet_on=self.meet_on, min_part=min_part, reference=fp32)
        every = set(trials.candidates)
        nodes = {n.name: n for n in model.graph}
        op_types = {name: node.op_type for name, node in nodes.items()}
        specs = {n.name: node_spec(n.metadata_props) for n in model.graph if n.name in every}
        first = trials.score(every)

        def meets(value: float) -> bool:
            return not math.isnan(value) and value >= target
        measured: dict[int, float] = {0: first}
        sensitivity = None
        if not meets(measured[0]):  # the ranking is only needed, and only computed, when INT8 misses
            sensitivity = self.context.analysis("layer-sensitivity", model)
            if sensitivity is not None and "layer_sensitivity" not in self.context.records:
                self.publish(sensitivity)
        ranked = [e["node"] for e in (sensitivity.nodes if sensitivity is not None else []) if e["node"] in every]
        ranked += sorted(every - set(ranked))
        if self.groups and sensitivity is not None:
            sensitivity = self.context.analysis("group-sensitivity", model)
        steps = _ranked_units(ranked, sensitivity) if self.groups else [(name, [name]) for name in ranked]
        n = len(ranked)
        curve: list[dict[str, Any]] = [{"int8_fraction": 1.0, "value": round(measured[0], 4), "speedup": None, "fallback": 0}]
        plans: list[tuple[frozenset[str], dict[str, str]]] = [(frozenset(), {})]  # each curve point's float nodes and lighter formats
        # The lighter fallback: dynamic INT8 for MatMuls on the cpu, FP16 on cuda/tensorrt.
        if self.dynamic and self.context.target == "cpu" and self.context.mode == "static":
            lighter_kind, fallback_format = _DYNAMIC, "dynamic INT8 for MatMul where it meets the target, else float"
            eligible = {name for name in every if op_types.get(name) == "MatMul"}
        elif self.fp16 and self.context.target in _FP16_TARGETS:
            lighter_kind, fallback_format = "fp16", "FP16 where it meets the target, else FP32"
            eligible = {name for name in every if get_target("cuda").has_kernel(op_types.get(name, ""), "fp16")}
        else:
            lighter_kind, fallback_format, eligible = None, "float", set()
        lighter: dict[str, str] = {}  # fallback node -> its lighter format; the rest of the fallback is float

        def formats(float_nodes: set[str], light: dict[str, str]) -> dict[str, dict]:
            return {name: _spec(kind, specs[name]) for name, kind in light.items()} | {name: {"format": "float"} for name in float_nodes - set(light)}

        def score(fallback: set[str], light: dict[str, str] | None = None) -> float:
            light = light or {}
            value = trials.score(every - fallback, formats(fallback, light))
            curve.append({"int8_fraction": round(1 - len(fallback) / max(n, 1), 4), "value": round(value, 4), "speedup": None, "fallback": len(fallback)})
            plans.append((frozenset(fallback), dict(light)))
            for kind in sorted(set(light.values())):
                curve[-1][kind] = sum(1 for k in light.values() if k == kind)
            return value

        fallback: list[str] = []
        achieved = measured[0]
        if not meets(measured[0]) and n:
            prefix: dict[int, list[str]] = {}

            def prefix_meets(k: int) -> bool:
                prefix[k] = [name for _, members in steps[:k] for name in members]
                measured[k] = score(set(prefix[k]))
                return meets(measured[k])

            high = smallest_prefix(len(steps), prefix_meets)  # all float (the FP32 model) meets any target
            fallback = [name for _, members in steps[:high] for name in members]
            achieved = measured.get(high, math.inf) if high < len(steps) else math.inf
            order = {name: i for i, name in enumerate(ranked)}
            for node in sorted(fallback, key=order.__getitem__, reverse=True)[: self.max_return]:
                value = score(set(fallback) - {node})
                if meets(value):
                    fallback.remove(node)
                    achieved = value
            if lighter_kind is not None:
                candidates = [name for name in fallback if name in eligible]
                achieved = self._lighten(fallback, candidates, lighter_kind, lighter, order, score, meets, achieved)
            if self.int4 and get_target(self.context.target).weight_only:
                candidates = [name for name in fallback if name not in lighter and _has_constant_weight(nodes[name])]
                before = len(lighter)
                achieved = self._lighten(fallback, candidates, _INT4, lighter, order, score, meets, achieved)
                if len(lighter) > before:
                    int4_text = "INT4 weight-only for MatMul/Gemm where it meets the target"
                    fallback_format = f"{int4_text}, else float" if fallback_format == "float" else fallback_format.replace(", else", f"; then {int4_text}, else")
            if math.isinf(achieved):  # only the all-float plan met it: measure it for the record
                achieved = score(set(fallback), lighter)
        chosen_fallback = set(fallback)

        speedup = fp32_ms = speed_step = None
        binding = None if meets(achieved) else "accuracy"
        known: dict[tuple, float] = {}  # a plan's key (``_plan_key``) -> its speedup, from the speed step
        if self.speed and self.context.target == "cpu":  # (other targets' providers are not this CPU)
            timed = [model, trials.quantized(every - chosen_fallback, formats(chosen_fallback, lighter))]
            islands = {name for name in every - chosen_fallback if op_types.get(name) not in _WEIGHTED}
            candidate = chosen_fallback | islands
            if islands:  # integer islands that may run slower than float: the weighted ops alone in INT8
                timed.append(trials.quantized(every - candidate, formats(candidate, lighter)))
            timings, _ = timing.interleaved(timed, feeds[0], min_cycles=_SPEED_CYCLES)
            speedup = timing.speedup(timings[0], timings[1])
            known[_plan_key(chosen_fallback, lighter)] = round(speedup, 3)
            if speedup < self.min_speedup and islands:
                value = score(candidate, lighter)
                islands_speedup = timing.speedup(timings[0], timings[2])
                known[_plan_key(candidate, lighter)] = round(islands_speedup, 3)
                # faster in at least three cycles of four, not by a median within the machine's noise
                over_plan = [round(q, 3) for q in timing.speed_quartiles(timings[1], timings[2])]
                faster = meets(value) and over_plan[0] > 1
                speed_step = {"plan_speedup": round(speedup, 3), "islands": len(islands), "islands_value": round(value, 4),
                              "islands_speedup": round(islands_speedup, 3), "islands_over_plan": over_plan,
                              "chosen": "islands" if faster else "plan"}  # fmt: skip
                if faster:
                    chosen_fallback, speedup, achieved = candidate, islands_speedup, value
            speedup, fp32_ms = round(speedup, 3), round(timings[0].median_s * 1e3, 3)
        speed_check = None
        if speedup is not None:
            build = lambda fallback, light: trials.quantized(every - fallback, formats(fallback, light))  # noqa: E731
            _time_curve(model, build, curve, plans, known, feeds[0])
            speed_check = _confirm_fastest(model, build, curve, plans, _plan_key(chosen_fallback, lighter), speedup, meets, feeds[0])
            if speed_check is not None and speed_check["chosen"] != "plan":
                index = speed_check["chosen"]
                chosen_fallback, lighter = set(plans[index][0]), dict(plans[index][1])
                achieved, speedup = curve[index]["value"], curve[index]["speedup"]
        curve.append({"int8_fraction": round(1 - len(chosen_fallback) / max(n, 1), 4), "value": round(achieved, 4), "speedup": speedup, "fallback": len(chosen_fallback), "chosen": True})
        if speedup is not None:
            curve[-1]["cycles"] = _SPEED_CYCLES
        plans.append((frozenset(chosen_fallback), dict(lighter)))
        for kind in sorted(set(lighter.values())):
            curve[-1][kind] = sum(1 for k in lighter.values() if k == kind)
        reachable = binding_reason = None
        if speedup is not None:
            reachable = _reachable(curve, meets)
            if binding is None and speedup < self.min_speedup:
                binding = "speed"
            binding_reason = _binding_reason(binding, metric, target, achieved, speedup, self.min_speedup, reachable)
            if binding == "speed":
                logger.warning("%s", binding_reason)

        decisions, chosen_formats = {}, {}
        scores = {e["node"]: e for e in (sensitivity.nodes if sensitivity is not None else [])}
        group_of = {name: unit for unit, members in steps if len(members) > 1 for name in members}
        for rank, name in enumerate(ranked, 1):
            if name not in chosen_fallback:
                continue
            entry = scores.get(name, {})
            figures = ", ".join(f"{label} {entry[key]:.1f} dB" for key, label in (("global_db", "global"), ("local_db", "local")) if entry.get(key) is not None)
            where = f"sensitivity rank {rank} of {n}{'; ' + figures if figures else ''}{'; group ' + group_of[name] if name in group_of else ''}"
            if lighter.get(name) == _DYNAMIC:
                chosen_formats[name] = _DYNAMIC
                decisions[name] = {**_spec(_DYNAMIC, specs[name]), "reason": f"auto policy: dynamic INT8 (activations quantized at run time) for {metric} >= {target:g}: static INT8 costs too much ({where})"}
            elif lighter.get(name) == _INT4:
                chosen_formats[name] = _INT4
                decisions[name] = {**_INT4_SPEC.to_dict(), "reason": f"auto policy: INT4 weight-only (activations float) for {metric} >= {target:g}: INT8 activations cost too much ({where})"}
            elif lighter.get(name) == "fp16":
                chosen_formats[name] = "fp16"
                decisions[name] = {"format": "fp16", "reason": f"auto policy: FP16 for {metric} >= {target:g}: INT8 costs too much ({where})"}
            else:
                chosen_formats[name] = "float"
                decisions[name] = {"format": "float", "reason": f"auto policy: kept float for {metric} >= {target:g} ({where})"}
        for node in model.graph:
            if node.name in decisions:
                set_node_spec(node, decisions[node.name])
        if decisions:
            record_formats(model, decisions)
        document = json.loads(model.metadata_props.get(PLAN_KEY, "{}"))
        document["model_hash"] = qir.model_hash(model)
        document["data_hash"] = getattr(self.context.analyses.get("ranges"), "data_hash", "")
        text = json.dumps(document, sort_keys=True, separators=(",", ":"))
        modified = bool(decisions) or model.metadata_props.get(PLAN_KEY) != text
        model.metadata_props[PLAN_KEY] = text
        self.publish(
            AutoPolicyRecord(
                metric=metric,
                target=target,
                achieved=round(achieved, 4),
                met=meets(achieved),
                fallback=[name for name in ranked if name in chosen_fallback],
                fallback_format=fallback_format,
                evaluations=trials.evaluations,
                binding=binding,
                speedup=speedup,
                fp32_ms=fp32_ms,
                curve=curve,
                chosen=len(curve) - 1,
                formats=chosen_formats,
                units=len(steps),
                speed_step=speed_step,
                meet_on=self.meet_on,
                samples=len(feeds),
                parts=len(trials.parts),
                notes=notes,
                min_speedup=self.min_speedup,
                binding_reason=binding_reason,
                reachable=reachable,
                speed_check=speed_check,
            )
        )
        return ir.passes.PassResult(model, modified)

    def _lighten(self, fallback, candidates, kind, lighter, order, score, meets, achieved) -> float:
        """The ``candidates`` of the float ``fallback`` to the lighter format ``kind``: all at once
        when the target holds so, else one at a time, least sensitive first (at most
        ``max_return``). Fills ``lighter``; returns the value of the plan."""
        if not candidates:
            return achieved
        value = score(set(fallback), {**lighter, **{name: kind for name in candidates}})
        if meets(value):
            lighter.update({name: kind for name in candidates})
            return value
        for name in sorted(candidates, key=order.__getitem__, reverse=True)[: self.max_return]:
            value = score(set(fallback), {**lighter, name: kind})
            if meets(value):
                lighter[name] = kind
                achieved = value
        return achieved


_SAMPLES = 16  # search samples by default
_SPEED_CYCLES = 20  # timing cycles of the speed step, for the quartiles of its paired ratios
_CURVE_CYCLES = 6  # timing cycles (and timed runs at least) of the other curve points
_CURVE_BATCH = 4  # curve points timed together with the FP32 model (their sessions held at once)
_CHECK_ROUNDS = 3  # rounds of timing the curve's fastest points again (``_confirm_fastest``)
_MAX_TOP1_SAMPLES = 256  # the most a top-1 target asks for by default


def _plan_key(fallback: set[str] | frozenset[str], light: dict[str, str]) -> tuple:
    """A plan's identity: its float nodes and the lighter formats of its fallback."""
    return frozenset(fallback), tuple(sorted(light.items()))


def _time_curve(model: ir.Model, build: Callable[[set[str], dict[str, str]], ir.Model], curve: list[dict[str, Any]],
                plans: list[tuple[frozenset[str], dict[str, str]]], known: dict[tuple, float], feed: dict) -> None:  # fmt: skip
    """The speedup of every curve point: the plans of ``known`` as timed already, every other plan
    once however often the search met it, ``_CURVE_BATCH`` at a time interleaved with ``model``
    (the FP32 reference of each batch) over ``_CURVE_CYCLES`` cycles; ``build`` makes a plan's model."""
    pending: dict[tuple, list[int]] = {}
    for index, (fallback, light) in enumerate(plans):
        key = _plan_key(fallback, light)
        if key in known:
            curve[index].update(speedup=known[key], cycles=_SPEED_CYCLES)
        else:
            pending.setdefault(key, []).append(index)
    batches = [list(pending.items())[i : i + _CURVE_BATCH] for i in range(0, len(pending), _CURVE_BATCH)]
    for number, batch in enumerate(batches, 1):
        logger.info("timing the curve's points: batch %d of %d (%d plans and FP32, interleaved)", number, len(batches), len(batch))
        models = [model] + [build(set(fallback), dict(light)) for (fallback, light), _ in batch]
        timings, _ = timing.interleaved(models, feed, runs=_CURVE_CYCLES, min_cycles=_CURVE_CYCLES)
        for position, (_, indices) in enumerate(batch, 1):
            for index in indices:
                curve[index].update(speedup=round(timing.speedup(timings[0], timings[position]), 3), cycles=_CURVE_CYCLES)


def _confirm_fastest(model: ir.Model, build: Callable[[set[str], dict[str, str]], ir.Model], curve: list[dict[str, Any]],
                     plans: list[tuple[frozenset[str], dict[str, str]]], chosen: tuple, plan_speedup: float,
                     meets: Callable[[float], bool], feed: dict) -> dict[str, Any] | None:  # fmt: skip
    """The curve's fastest points, by their coarse figures, timed again beside FP32 and the chosen
    plan over ``_SPEED_CYCLES`` cycles: the fastest of many coarse figures is biased up (identical
    models timed four at a time over 6 cycles read 0.93x to 1.15x of each other on the 2-core
    machine of ``benchmarks/``). Each round takes the fastest point and the two fastest that meet
    the target among those not timed again yet that read faster than the plan's ``plan_speedup``,
    until none is left or after ``_CHECK_ROUNDS`` rounds; their curve points get the new figure.
    A point that meets the target replaces the plan when it was the faster of the two in three
    cycles of four (the first quartile of their paired ratio above 1, as in the speed step); of
    several, the fastest. The record: each point timed again (``point``, ``speedup``, the plan's
    speedup in the same cycles ``plan_speedup``, and for a point meeting the target ``over_plan``,
    the quartiles of its ratio over the plan) and which was chosen (a point's index, or "plan");
    None when no point read faster than the plan."""
    check: dict[str, Any] = {"points": [], "chosen": "plan"}
    best = None  # (speedup, index) of the fastest point meeting the target and reliably faster than the plan
    keys = [_plan_key(*plan) for plan in plans]
    plan_model = None  # the chosen plan's model, built once for every round

    def speed(index: int) -> float:
        return curve[index]["speedup"]

    for _ in range(_CHECK_ROUNDS):
        open_points = {}  # one point per plan, not timed again yet, faster than the plan by its coarse figure
        for index, point in enumerate(curve):
            if keys[index] != chosen and point.get("cycles") == _CURVE_CYCLES and point["speedup"] > plan_speedup:
                open_points.setdefault(keys[index], index)
        if not open_points:
            break
        candidates = sorted(open_points.values(), key=speed, reverse=True)
        points = sorted({candidates[0], *[i for i in candidates if meets(curve[i]["value"])][:2]})
        logger.info("timing the fastest points of the curve again beside the plan: %s", ", ".join(map(str, points)))
        if plan_model is None:
            plan_model = build(set(chosen[0]), dict(chosen[1]))
        timed = [model, plan_model] + [build(set(plans[i][0]), dict(plans[i][1])) for i in points]
        timings, _ = timing.interleaved(timed, feed, min_cycles=_SPEED_CYCLES)
        plan_figure = round(timing.speedup(timings[0], timings[1]), 3)  # the plan in the same cycles
        for position, index in enumerate(points, 2):
            figure = round(timing.speedup(timings[0], timings[position]), 3)
            for other, key in enumerate(keys):
                if key == keys[index]:
                    curve[other].update(speedup=figure, cycles=_SPEED_CYCLES)
            entry: dict[str, Any] = {"point": index, "speedup": figure, "plan_speedup": plan_figure}
            if meets(curve[index]["value"]):
                entry["over_plan"] = [round(q, 3) for q in timing.speed_quartiles(timings[1], timings[position])]
                if entry["over_plan"][0] > 1 and (best is None or figure > best[0]):
                    best = (figure, index)
            check["points"].append(entry)
    if not check["points"]:
        return None
    if best is not None:
        check["chosen"] = best[1]
    return check


def _reachable(curve: list[dict[str, Any]], meets: Callable[[float], bool]) -> dict[str, dict[str, Any]]:
    """The best reachable points of a timed curve: the fastest plan measured (``fastest``) and the
    fastest that meets the target (``fastest_meeting``, absent when none does)."""
    timed = [i for i, p in enumerate(curve) if p.get("speedup") is not None]

    def point(index: int) -> dict[str, Any]:
        return {"point": index} | {key: curve[index].get(key) for key in ("speedup", "value", "fallback", "cycles")}

    best = {"fastest": point(max(timed, key=lambda i: curve[i]["speedup"]))}
    meeting = [i for i in timed if meets(curve[i]["value"])]
    if meeting:
        best["fastest_meeting"] = point(max(meeting, key=lambda i: curve[i]["speedup"]))
    return best


def _binding_reason(binding: str | None, metric: str, target: float, achieved: float, speedup: float, min_speedup: float,
                    reachable: dict[str, dict[str, Any]]) -> str:  # fmt: skip
    """The sentence a person acts on: which constraint binds and the best reachable point."""
    fastest = reachable["fastest"]
    cycles = f" over {fastest['cycles']} timing cycles" if fastest.get("cycles") else ""
    at = f"the fastest plan measured ({fastest['fallback']} nodes in the fallback) ran at {fastest['speedup']:.2f}x{cycles} with {metric} {fastest['value']:g}"
    if binding == "accuracy":
        return f"accuracy: {metric} {achieved:g}, under the {target:g} asked, at {speedup:.2f}x FP32; {at}"
    if binding is None:
        return f"none: {metric} {achieved:g} >= {target:g} at {speedup:.2f}x FP32 (at least {min_speedup:g}x asked)"
    if fastest["speedup"] < min_speedup:
        return f"speed: {speedup:.2f}x FP32, under the {min_speedup:g}x asked, and no plan measured reaches {min_speedup:g}x on this CPU: {at}"
    meeting = reachable.get("fastest_meeting")
    also = f"; the fastest meeting the target ran at {meeting['speedup']:.2f}x" if meeting else ""
    return f"speed: {speedup:.2f}x FP32, under the {min_speedup:g}x asked: only plans that miss {metric} >= {target:g} reach it ({at}){also}"


def _resolving_samples(shapes: metrics.Comparison, target: float) -> tuple[int, int] | None:
    """``(samples, class decisions per sample)`` for a top-1 agreement of ``target`` to differ from
    all-but-one agreeing: ``1 / (1 - target)`` decisions (100 for 0.99), a sample holding the rows
    of class scores or the positions of next-token logits of its outputs (the fewest over them).
    None for a target of 1 (every decision must agree) or outputs without class decisions."""
    counts = [t.rows for t in shapes.tasks.values() if t.rows]
    counts += [t.positions for name, t in shapes.tasks.items() if metrics.is_logits(name) and t.positions]
    if not counts or target >= 1:
        return None
    per_sample = min(counts)
    return math.ceil(math.ceil(round(1 / (1 - target), 6)) / per_sample), per_sample


def _resolution_note(target: float, samples: int, resolving: int, per_sample: int) -> str:
    """Why a top-1 target is finer than ``samples`` resolve: on 10 samples of one class decision
    each, agreement moves in steps of 0.1, so a plan that agrees on all 10 meets 0.99 while it may
    disagree on one new input in ten (EfficientNet-Lite0 in pure INT8: all 10 calibration photos
    agreed, 81 of 100 held-out views did)."""
    return (
        f"top-1 agreement >= {target:g} is judged on {samples} search samples of {per_sample} class decision(s) each: "
        f"one disagreement moves it by {1 / (samples * per_sample):.3g}, so the search cannot tell {target:g} from less; "
        f"give at least {resolving} calibration samples"
    )


def _has_constant_weight(node: ir.Node) -> bool:
    """A MatMul or Gemm whose weight (input 1) is a constant FP32 matrix with at least one block
    along K: what INT4 weight-only stores (``quantize-weights`` keeps a shorter K float)."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    weight = node.inputs[1]
    if not qir.is_constant_initializer(weight) or weight.const_value.dtype != ir.DataType.FLOAT or len(weight.const_value.shape) != 2:
        return False
    if node.op_type == "Gemm" and (
        node.attributes.get_int("transA", 0) or node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_float("beta", 1.0) != 1.0
    ):
        return False  # (quantize-weights rewrites y = x · B + C only)
    k = weight.const_value.shape[1 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 0]
    return k >= _INT4_SPEC.block_size


def _spec(kind: str, spec: QuantSpec) -> dict[str, Any]:
    """The plan entry of a node in a lighter fallback format: ``fp16``, INT4 weight-only, or the
    node's INT8 spec with its activations quantized at run time (UINT8 asymmetric, as ``--mode
    dynamic`` makes them: onnxruntime's DynamicQuantizeLinear)."""
    if kind == "fp16":
        return {"format": "fp16"}
    if kind == _INT4:
        return _INT4_SPEC.to_dict()
    return dataclasses.replace(spec, dynamic=True, activation_dtype="uint8", symmetric_activations=False).to_dict()


def _ranked_units(ranked: list[str], sensitivity: Any) -> list[tuple[str, list[str]]]:
    """The steps of the ranking when groups move whole: the chains and attention blocks of the
    sensitivity record (two quantized nodes or more) and the other nodes alone, worst first by the
    group's global score (a group) or the node's rank (a node). A group whose score is missing
    takes the place of its worst member."""
    position = {name: i for i, name in enumerate(ranked)}
    scores = {e["node"]: e.get("global_db") for e in (sensitivity.nodes if sensitivity is not None else [])}
    groups = [] if sensitivity is None else [NodeGroup(g["name"], g["kind"], tuple(g["nodes"])) for g in getattr(sensitivity, "groups", [])]
    group_scores = {} if sensitivity is None else {g["name"]: g.get("global_db") for g in getattr(sensitivity, "groups", [])}

    def key(unit: tuple[str, list[str]]) -> tuple[float, int]:
        name, members = unit
        value = group_scores.get(name) if len(members) > 1 else scores.get(name)
        return (math.inf if value is None else value, min(position[m] for m in members))

    return sorted(units(ranked, groups), key=key)
