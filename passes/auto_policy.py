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
4. speed, measured: the chosen plan, the input model and, when the plan is slower than FP32, the plan
   with every node but Conv/ConvTranspose/Gemm/MatMul in float (integer islands that onnxruntime
   runs slower than float) are timed on one sample; the fastest that meets the target wins. A plan
   slower than FP32 is kept only with the record saying so (``binding``: "speed").

Every evaluated point goes into the curve (fraction of the ranked nodes in INT8, metric value,
speedup where timed); the fallback nodes get the reason in the plan. The plan document also records
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
from qonnx import runtime
from qonnx.errors import UserError
from qonnx.pipeline import Pass, Record, register
from qonnx.policy import PLAN_KEY, record_formats, set_node_spec
from qonnx.trials import Trials
from qonnx.verdict import DEFAULT_FLOORS, choose_metric, metric_value

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
    binding: str | None  # None: met at a speed above FP32; "accuracy": even FP32 islands everywhere miss; "speed": slower than FP32
    speedup: float | None
    fp32_ms: float | None
    curve: list[dict[str, Any]]
    chosen: int


@register
class AutoPolicy(Pass):
    """Attributes:
    metric: sqnr, cosine, top1 or auto (chosen from the outputs' shapes).
    min: the value to reach (default: the metric's floor, ``qonnx.verdict.DEFAULT_FLOORS``).
    samples: calibration samples per trial (the evaluation data stays held out).
    max_return: fallback nodes tried back in INT8 after the bisection.
    speed: time the plans and prefer the fastest that meets the target.
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
        samples: int = 16,
        max_return: int = 16,
        speed: bool = True,
    ) -> None:
        super().__init__(context)
        if metric not in ("auto", "sqnr", "cosine", "top1"):
            raise UserError(f"auto-policy: metric {metric!r} is not one of auto, sqnr, cosine, top1")
        if samples < 1 or max_return < 0:
            raise UserError(f"auto-policy: samples must be positive and max_return not negative (samples={samples}, max_return={max_return})")
        self.metric, self.min, self.samples, self.max_return, self.speed = metric, min, samples, max_return, speed

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # The plans are measured on calibration samples: the evaluation data stays held out, and the
        # report's fidelity says whether the choice carries over to data the search never saw.
        data = self.context.calib if self.context.calib is not None else self.context.eval_data
        if data is None or len(data) == 0:
            raise UserError("--policy auto needs data to measure the plans: give --calib DATA")
        feeds = [data[i] for i in range(min(self.samples, len(data)))]
        trials = Trials(model, self.context, feeds, "sqnr")
        every = set(trials.candidates)
        metric = self.metric
        all_int8 = trials.comparison(trials.quantized(every)).to_dict()
        if metric == "auto":
            token_inputs = any(v.dtype in (ir.DataType.INT64, ir.DataType.INT32) for v in model.graph.inputs)
            metric = choose_metric(all_int8, token_inputs)[0]
        trials.metric = metric
        target = self.min if self.min is not None else DEFAULT_FLOORS[metric]

        def meets(value: float) -> bool:
            return not math.isnan(value) and value >= target
        measured: dict[int, float] = {0: float(metric_value(metric, all_int8))}
        sensitivity = None
        if not meets(measured[0]):  # the ranking is only needed, and only computed, when INT8 misses
            sensitivity = self.context.analysis("layer-sensitivity", model)
            if sensitivity is not None and "layer_sensitivity" not in self.context.records:
                self.publish(sensitivity)
        ranked = [e["node"] for e in (sensitivity.nodes if sensitivity is not None else []) if e["node"] in every]
        ranked += sorted(every - set(ranked))
        n = len(ranked)
        curve: list[dict[str, Any]] = [{"int8_fraction": 1.0, "value": round(measured[0], 4), "speedup": None, "fallback": 0}]

        def score(fallback: set[str]) -> float:
            value = trials.score(every - fallback)
            curve.append({"int8_fraction": round(1 - len(fallback) / max(n, 1), 4), "value": round(value, 4), "speedup": None, "fallback": len(fallback)})
            return value

        fallback: list[str] = []
        achieved = measured[0]
        if not meets(measured[0]) and n:

            def prefix_meets(k: int) -> bool:
                measured[k] = score(set(ranked[:k]))
                return meets(measured[k])

            high = smallest_prefix(n, prefix_meets)  # all float (the FP32 model) meets any target
            fallback = ranked[:high]
            achieved = measured.get(high, math.inf)
            for node in list(reversed(fallback))[: self.max_return]:
                value = score(set(fallback) - {node})
                if meets(value):
                    fallback.remove(node)
                    achieved = value
            if math.isinf(achieved):  # only the all-float plan met it: measure it for the record
                achieved = score(set(fallback))
        chosen_fallback = set(fallback)

        speedup = fp32_ms = None
        binding = None if meets(achieved) else "accuracy"
        if self.speed:
            fp32_s = runtime.measure_latency(model, feeds[0])["median_s"]
            plan_s = runtime.measure_latency(trials.quantized(every - chosen_fallback), feeds[0])["median_s"]
            if plan_s > fp32_s:  # integer islands slower than float: try the weighted ops alone in INT8
                islands = {name for name in every - chosen_fallback if self._op_type(model, name) not in _WEIGHTED}
                if islands:
                    candidate = chosen_fallback | islands
                    value = score(candidate)
                    candidate_s = runtime.measure_latency(trials.quantized(every - candidate), feeds[0])["median_s"]
                    curve[-1]["speedup"] = round(fp32_s / candidate_s, 3)
                    if meets(value) and candidate_s < plan_s:
                        chosen_fallback, plan_s, achieved = candidate, candidate_s, value
            speedup, fp32_ms = round(fp32_s / plan_s, 3), round(fp32_s * 1e3, 3)
            if binding is None and plan_s > fp32_s:
                binding = "speed"
                logger.warning("the chosen plan runs at %.2fx the FP32 speed on this CPU", speedup)
        curve.append({"int8_fraction": round(1 - len(chosen_fallback) / max(n, 1), 4), "value": round(achieved, 4), "speedup": speedup, "fallback": len(chosen_fallback), "chosen": True})

        decisions = {}
        scores = {e["node"]: e for e in (sensitivity.nodes if sensitivity is not None else [])}
        for rank, name in enumerate(ranked, 1):
            if name not in chosen_fallback:
                continue
            entry = scores.get(name, {})
            figures = ", ".join(f"{label} {entry[key]:.1f} dB" for key, label in (("global_db", "global"), ("local_db", "local")) if entry.get(key) is not None)
            decisions[name] = {"format": "float", "reason": f"auto policy: kept float for {metric} >= {target:g} (sensitivity rank {rank} of {n}{'; ' + figures if figures else ''})"}
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
                fallback_format="float",
                evaluations=trials.evaluations,
                binding=binding,
                speedup=speedup,
                fp32_ms=fp32_ms,
                curve=curve,
                chosen=len(curve) - 1,
            )
        )
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _op_type(model: ir.Model, name: str) -> str:
        return next((n.op_type for n in model.graph if n.name == name), "")
