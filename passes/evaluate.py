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

    def to_report(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        if not self.emulated:
            del entry["emulated"]
        return {self.report_key: entry}


def fidelity(reference: ir.Model | str | os.PathLike, test: ir.Model | str | os.PathLike, data) -> dict[str, Any]:
    """SQNR (dB) and cosine of every output of ``test`` against ``reference`` over ``data`` (a Source)."""
    comparison = metrics.compare(runtime.session(reference), runtime.session(test), data, what="evaluation sample")
    return {"samples": len(data), "data": data.description, "outputs": comparison.to_dict()}


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
        measured = fidelity(self.context.source, test, data)
        record = FidelityRecord(measured["samples"], measured["data"], measured["outputs"], self.context.eval_held_out, emulated)
        self.context.analyses["fidelity"] = record
        self.publish(record)
        return ir.passes.PassResult(model, False)
