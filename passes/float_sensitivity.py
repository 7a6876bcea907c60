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

import json
import logging

import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.errors import UserError
from qonnx.passes.convert_float import COMPUTE_OPS, ConvertFloat
from qonnx.passes.emulate_float import emulated
from qonnx.passes.resolve_policy import record_formats
from qonnx.pipeline import Context, Pass, register
from qonnx.policy import SPEC_KEY, node_spec
from qonnx.targets import FLOAT_PRECISIONS

logger = logging.getLogger(__name__)

__all__ = ["FloatSensitivity"]


@register
class FloatSensitivity(Pass):
    name = "float-sensitivity"
    summary = "with calibration data: keep the leading weighted layers FP32 until the emulated output SQNR reaches a floor"
    preserves = frozenset({"shapes", "ranges"})

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
        candidates = [n for n in model.graph if n.op_type in COMPUTE_OPS and node_spec(n.metadata_props).format == precision]

        def worst_sqnr(prefix: int) -> float:
            trial = model.clone()
            keep = {n.name for n in candidates[:prefix]}
            for node in trial.graph:
                if node.name in keep:
                    node.metadata_props[SPEC_KEY] = json.dumps({"format": "float"})
            ConvertFloat(Context(target=self.context.target, precision=precision))(trial)
            session = runtime.session(emulated(trial))
            accumulators: dict[str, metrics.Accumulator] = {}
            for feed, ref in zip(feeds, expected):
                got = session.run(feed)
                for name, value in ref.items():
                    accumulators.setdefault(name, metrics.Accumulator()).update(value, got[name])
            return min(a.sqnr_db() for a in accumulators.values())

        measured = {0: worst_sqnr(0)}
        note = {"sqnr_floor_db": self.sqnr_floor, "samples": len(feeds), "measured_db": round(measured[0], 2), "fp32_prefix": 0}
        self.context.notes["float_sensitivity"] = note
        if measured[0] >= self.sqnr_floor or not candidates:
            return ir.passes.PassResult(model, False)
        low, high = 0, max(1, int(self.max_share * len(candidates)))
        measured[high] = worst_sqnr(high)
        if measured[high] < self.sqnr_floor:
            note.update(fp32_prefix=0, trials=len(measured), measured_with_max_prefix_db=round(measured[high], 2), max_prefix=high)
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
            node.metadata_props[SPEC_KEY] = json.dumps(decisions[node.name], sort_keys=True)
        record_formats(model, decisions)
        note.update(fp32_prefix=high, measured_with_prefix_db=None if reached is None else round(reached, 2), trials=len(measured))
        return ir.passes.PassResult(model, True)
