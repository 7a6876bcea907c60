"""Measured FP32 islands: when the converted graph loses too much on the calibration data, the
leading weighted layers stay FP32.

The rules of ``float-islands`` look at one node at a time. Some networks are sensitive as a whole:
in PP-OCRv4's detector, rounding the weights of the first depthwise convolution alone to FP16
costs the output 35 dB SQNR, because every later layer amplifies what enters early (and its
edge-detecting filters sum to almost zero, so the rounding error is large against their response
to smooth image regions). Rounding errors made early travel through the whole network; those made
late do not, so the FP32 island that helps most for its size is a prefix.

With calibration data, this pass converts a copy of the graph as ``convert-float`` would, runs its
FP32 emulation (``emulate-float``: the roundings of the format, on the CPU) on ``samples``
calibration samples and measures the SQNR of every output against the FP32 graph. When the worst
output is under ``sqnr_floor``, it finds by bisection the fewest leading weighted nodes (Conv,
ConvTranspose, MatMul, Gemm in graph order) that must stay FP32 for the floor to hold, and records
each of them with the measurement as its reason. When more than ``max_share`` of the weighted
nodes would be needed, the network is sensitive throughout (PP-OCRv4's detector needs 55 of 62:
its activations alone cost it the floor) and an FP32 prefix is a poor trade: it keeps none, and the
measurement goes into the report for the user to judge. Without calibration data it does nothing.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.errors import UserError
from qonnx.pipeline import Context, Pass, Record, apply, register
from qonnx.policy import node_spec, record_formats, set_node_spec
from qonnx.targets import FLOAT_COMPUTE_OPS, FLOAT_PRECISIONS

logger = logging.getLogger(__name__)

__all__ = ["FloatSensitivity"]


@dataclasses.dataclass
class FloatSensitivityRecord(Record):
    """The emulated output SQNR against the floor, and the FP32 prefix chosen (0: none)."""

    report_key = "float_sensitivity"
    sqnr_floor_db: float
    samples: int
    measured_db: float
    fp32_prefix: int = 0
    trials: int | None = None
    measured_with_prefix_db: float | None = None
    measured_with_max_prefix_db: float | None = None
    max_prefix: int | None = None

    def to_report(self) -> dict:
        return {self.report_key: {k: v for k, v in dataclasses.asdict(self).items() if v is not None}}


@register
class FloatSensitivity(Pass):
    name = "float-sensitivity"
    summary = "with calibration data: keep the leading weighted layers FP32 until the emulated output SQNR reaches a floor"
    preserves = frozenset({"shapes", "ranges"})
    analyses_required = frozenset({"plan"})
    analyses_produced = frozenset({"plan"})  # the FP32 prefix it keeps, with its reason

    def __init__(self, context=None, *, sqnr_floor: float = 40.0, samples: int = 2, max_share: float = 0.25) -> None:
        super().__init__(context)
        self.sqnr_floor, self.samples, self.max_share = sqnr_floor, samples, max_share

    def requires(self, model: ir.Model) -> None:
        if self.context.precision not in FLOAT_PRECISIONS:
            raise UserError(f"float-sensitivity is for --precision fp16 or bf16, not {self.context.precision}")
        if self.samples < 1:
            raise UserError("float-sensitivity(samples) must be at least 1")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        source = self.context.calib
        if source is None or len(source) == 0:
            return ir.passes.PassResult(model, False)
        precision = self.context.precision
        feeds = [source[i] for i in range(min(self.samples, len(source)))]
        reference = runtime.session(model)
        expected = [reference.run(feed) for feed in feeds]
        candidates = [n for n in model.graph if n.op_type in FLOAT_COMPUTE_OPS and node_spec(n.metadata_props).format == precision]

        def worst_sqnr(prefix: int) -> float:
            """The worst output's SQNR of the converted copy with the first ``prefix`` candidates FP32,
            emulated in FP32 (the conversion and emulation passes run on the copy, by name)."""
            trial = model.clone()
            keep = {n.name for n in candidates[:prefix]}
            for node in trial.graph:
                if node.name in keep:
                    set_node_spec(node, {"format": "float"})
            scratch = Context(target=self.context.target, precision=precision)
            apply("convert-float", trial, scratch)
            apply("emulate-float", trial, scratch)
            return metrics.compare(expected, runtime.session(trial), feeds).worst_sqnr_db

        measured = {0: worst_sqnr(0)}
        record = FloatSensitivityRecord(self.sqnr_floor, len(feeds), round(measured[0], 2))
        self.publish(record)
        if measured[0] >= self.sqnr_floor or not candidates:
            return ir.passes.PassResult(model, False)
        low, high = 0, max(1, int(self.max_share * len(candidates)))
        measured[high] = worst_sqnr(high)
        if measured[high] < self.sqnr_floor:
            record.trials, record.measured_with_max_prefix_db, record.max_prefix = len(measured), round(measured[high], 2), high
            logger.warning(
                "%s: the emulated output reaches %.1f dB SQNR on the calibration data, under the %g dB floor, "
                "and %d leading weighted layers in FP32 do not lift it over (%.1f dB): left as is",
                precision, measured[0], self.sqnr_floor, high, measured[high],
            )
            return ir.passes.PassResult(model, False)
        while high - low > 1:
            middle = (low + high) // 2
            measured[middle] = worst_sqnr(middle)
            if measured[middle] >= self.sqnr_floor:
                high = middle
            else:
                low = middle
        reached = measured.get(high)
        reason = (
            f"the first {high} weighted layers stay FP32: with all in {precision.upper()} the emulated output reaches "
            f"{measured[0]:.1f} dB SQNR on {len(feeds)} calibration samples, under the {self.sqnr_floor:g} dB floor"
            + (f"; with these FP32, {reached:.1f} dB" if reached is not None else "")
        )
        decisions = {n.name: {"format": "float", "reason": reason} for n in candidates[:high]}
        for node in candidates[:high]:
            set_node_spec(node, decisions[node.name])
        record_formats(model, decisions)
        record.fp32_prefix, record.trials = high, len(measured)
        record.measured_with_prefix_db = None if reached is None else round(reached, 2)
        return ir.passes.PassResult(model, True)
