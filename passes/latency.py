"""Latency: the input model and the model as it stands, timed side by side on one evaluation sample.

The two run interleaved (``qonnx.timing``: a shared machine's speed changes by 2x for seconds at a
time), each in an onnxruntime session with ``threads`` intra-op threads after ``warmup`` untimed
runs, at least ``runs`` timed runs each; the record holds each model's median and the median over
cycles of their paired ratio (``speedup`` > 1: faster than FP32), with its quartiles.
Changes nothing; without evaluation data it records nothing.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qonnx import timing
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
    cycles: int | None = None
    speedup_quartiles: list[float] | None = None  # over the cycles: 25th, 50th (= speedup), 75th percentile


@register
class Latency(Pass):
    """Attributes:
    runs: timed runs of each model, at least (interleaved in cycles: ``qonnx.timing``).
    warmup: untimed runs of each model first.
    threads: onnxruntime intra-op threads.
    """

    name = "latency"
    summary = "time the input model and the output model interleaved on one evaluation sample (median ratio over cycles)"
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
        (fp32, own), plan = timing.interleaved([self.context.source, model], data[0], threads=self.threads, warmup=self.warmup, runs=self.runs)
        quartiles = timing.speed_quartiles(fp32, own)
        self.publish(
            LatencyRecord(
                fp32_ms=round(fp32.median_s * 1e3, 3),
                quantized_ms=round(own.median_s * 1e3, 3),
                speedup=round(quartiles[1], 3),
                runs=plan.timed_runs,
                threads=self.threads,
                cycles=plan.cycles,
                speedup_quartiles=[round(q, 3) for q in quartiles],
            )
        )
        return ir.passes.PassResult(model, False)
