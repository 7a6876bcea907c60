"""Latency: the input model and the model as it stands, timed side by side on one evaluation sample.

Each runs ``runs`` times after ``warmup`` untimed runs in an onnxruntime session with ``threads``
intra-op threads; the record holds the medians and their ratio (``speedup`` > 1: faster than FP32).
Changes nothing; without evaluation data it records nothing.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qonnx import runtime
from qonnx.errors import UserError
from qonnx.pipeline import Pass, Record, register

__all__ = ["Latency", "LatencyRecord"]


@dataclasses.dataclass
class LatencyRecord(Record):
    report_key = "latency"
    fp32_ms: float
    quantized_ms: float
    speedup: float
    runs: int
    threads: int


@register
class Latency(Pass):
    name = "latency"
    summary = "time the input model and the output model on one evaluation sample (median of runs)"
    read_only = True

    def __init__(self, context=None, *, runs: int = 20, warmup: int = 3, threads: int = 2) -> None:
        super().__init__(context)
        if runs < 1 or warmup < 0 or threads < 1:
            raise UserError(f"latency: runs and threads must be positive and warmup not negative (runs={runs}, warmup={warmup}, threads={threads})")
        self.runs, self.warmup, self.threads = runs, warmup, threads

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        data = self.context.eval_data
        if data is None or self.context.source is None or len(data) == 0:
            return ir.passes.PassResult(model, False)
        feed = data[0]
        timing = {"runs": self.runs, "warmup": self.warmup, "threads": self.threads}
        fp32 = runtime.measure_latency(self.context.source, feed, **timing)
        own = runtime.measure_latency(model, feed, **timing)
        self.publish(
            LatencyRecord(
                fp32_ms=round(fp32["median_s"] * 1e3, 3),
                quantized_ms=round(own["median_s"] * 1e3, 3),
                speedup=round(fp32["median_s"] / own["median_s"], 3),
                runs=own["runs"],
                threads=self.threads,
            )
        )
        return ir.passes.PassResult(model, False)
