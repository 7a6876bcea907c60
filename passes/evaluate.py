"""Fidelity: the model as it stands against the input model, on held-out data.

Runs the evaluation samples through both with onnxruntime and records, for every output, the SQNR
(dB) and cosine pooled over the samples (``qonnx.metrics.compare``). onnxruntime's CPU provider has
no BF16 kernels, so a BF16 model is measured through its FP32 emulation (``emulate-float``: the
same roundings), and the record says so. Changes nothing; without evaluation data it records
nothing (the report then says that fidelity was not measured).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.pipeline import Context, Pass, Record, apply, register
from qonnx.targets import get_target

__all__ = ["Evaluate", "FidelityRecord", "fidelity"]


@dataclasses.dataclass
class FidelityRecord(Record):
    """SQNR and cosine per output on ``samples`` samples of ``data``; ``held_out``: not used to calibrate."""

    report_key = "fidelity"
    samples: int
    data: str
    outputs: dict[str, dict[str, float]]
    held_out: bool = True
    emulated: bool = False
    custom: dict[str, Any] | None = None  # {"metric": name, "value": score} of a Python metric
    # How onnxruntime's CPU provider ran the Q/DQ: "fused" into its integer kernels (the cpu
    # target's deployment), or "reference" (ONNX's QuantizeLinear/DequantizeLinear arithmetic, for
    # targets whose provider has its own kernels: tensorrt, cuda).
    qdq: str | None = None  # None: the model holds no Q/DQ

    def to_report(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        if self.qdq is None:
            del entry["qdq"]
        if not self.emulated:
            del entry["emulated"]
        if self.custom is None:
            del entry["custom"]
        return {self.report_key: entry}


def fidelity(reference: ir.Model | str | os.PathLike, test: ir.Model | str | os.PathLike, data, score=None, *, qdq_fusion: bool = True) -> dict[str, Any]:
    """SQNR (dB) and cosine of every output of ``test`` against ``reference`` over ``data`` (a Source),
    with the task metrics their shapes allow; ``score(reference_outputs, test_outputs)``, when given,
    is also computed on the lists of outputs (``custom``). ``qdq_fusion=False``: ``test``'s Q/DQ run
    as reference ops (``runtime.session``)."""
    reference_session, test_session = runtime.session(reference), runtime.session(test, qdq_fusion=qdq_fusion)
    result: dict[str, Any] = {"samples": len(data), "data": data.description}
    if score is None:
        result["outputs"] = metrics.compare(reference_session, test_session, data, what="evaluation sample").to_dict()
        return result
    expected = [reference_session.run(feed) for feed in data]
    got: list[dict] = []
    result["outputs"] = metrics.compare(expected, _Recording(test_session, got), data, what="evaluation sample").to_dict()
    name = getattr(score, "__qualname__", type(score).__name__)
    result["custom"] = {"metric": name, "value": round(float(score(expected, got)), 6)}
    return result


class _Recording:
    """A runner that keeps what it returns."""

    def __init__(self, session, kept: list):
        self.session, self.kept = session, kept

    def run(self, feed):
        outputs = self.session.run(feed)
        self.kept.append(outputs)
        return outputs


@register
class Evaluate(Pass):
    name = "evaluate"
    summary = "measure SQNR and cosine of every output against the input model on the evaluation data"
    read_only = True
    analyses_produced = frozenset({"fidelity"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        data = self.context.eval_data
        if data is None or self.context.source is None:
            return ir.passes.PassResult(model, False)
        test = model
        emulated = self.context.precision == "bf16"
        if emulated:
            test = model.clone()
            apply("emulate-float", test, Context(target=self.context.target, precision=self.context.precision))
        fused = get_target(self.context.target).cpu_fused_kernels
        measured = fidelity(self.context.source, test, data, self.context.score, qdq_fusion=fused)
        has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)
        record = FidelityRecord(
            measured["samples"], measured["data"], measured["outputs"], self.context.eval_held_out, emulated, measured.get("custom"),
            ("fused" if fused else "reference") if has_qdq else None,
        )
        self.context.analyses["fidelity"] = record
        self.publish(record)
        return ir.passes.PassResult(model, False)
