"""FP8 islands: the nodes whose activations E4M3 cannot hold after scaling stay in the float remainder.

An FP8 activation is quantized per tensor with ``scale = t / max_fp8`` (``t`` the calibrated
threshold, ``max_fp8`` 448 for E4M3, 57344 for E5M2); every value beyond ``t`` saturates. When the
calibration method clipped (percentile, MSE), the extremes the tensor was seen to reach (recorded
in the range table beside the chosen range, the evidence ``float-islands`` reads for FP16) can lie far beyond: ``reach = max|x| / scale``.
A node of the FP8 plan whose activation input (or that input's scale group) reaches beyond
``max_fp8 · margin`` is moved to the float remainder (FP16, or FP32 with ``--float fp32``) with the
evidence as its reason, before ``insert-qdq`` places the Q/DQ.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from qonnx.errors import UserError
from qonnx.fp8 import float8_format
from qonnx.pipeline import Pass, Record, register
from qonnx.policy import node_spec, record_formats, set_node_spec
from qonnx.targets import get_target

logger = logging.getLogger(__name__)

__all__ = ["Fp8Islands", "Fp8IslandsRecord"]


@dataclasses.dataclass
class Fp8IslandsRecord(Record):
    """How many FP8 nodes went to the float remainder, and the margin the evidence was judged with."""

    report_key = "fp8_islands"
    margin: float
    nodes: int


@register
class Fp8Islands(Pass):
    """Attributes:
    margin: how far beyond the format's largest value (after scaling) the observed extremes may
        reach before the node leaves FP8 (4: two bits of head-room, as ``float-islands``).
    """

    name = "fp8-islands"
    summary = "move to the float remainder the FP8 nodes whose calibrated extremes reach beyond E4M3's 448 after scaling, with the evidence"
    preserves = frozenset({"shapes", "ranges"})
    analyses_required = frozenset({"plan", "placement", "ranges"})
    analyses_produced = frozenset({"plan"})

    def __init__(self, context=None, *, margin: float = 4.0) -> None:
        super().__init__(context)
        if margin < 1:
            raise UserError(f"fp8-islands(margin) must be at least 1, not {margin}")
        self.margin = margin

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        placement = self.context.analysis("placement", model)
        ranges = self.context.require("ranges", "run the calibrate pass before fp8-islands")
        remainder = "fp16" if get_target(self.context.target).remainder(self.context.precision, self.context.float_remainder) == "fp16" else "float"
        decisions: dict[str, dict] = {}
        for node in model.graph:
            spec = node_spec(node.metadata_props)
            if spec.format != "fp8":
                continue
            fmt = float8_format(spec.activation_dtype)
            for value in node.inputs:
                if value is None or value.name not in placement.group_of:
                    continue
                members = [ranges[m] for m in placement.members(value.name) if m in ranges]
                if not members:
                    continue
                threshold = max(max(abs(r.lo), abs(r.hi)) for r in members)
                observed = max(r.observed_max_abs for r in members)
                reach = observed / max(threshold, 1e-30) * fmt.max
                if reach > fmt.max * self.margin:
                    decisions[node.name] = {
                        "format": remainder,
                        "reason": f"FP8 island: {value.name!r} reaches {reach:.4g} after scaling, beyond {fmt.name}'s {fmt.max:g} x{self.margin:g} "
                        f"(calibrated to {threshold:.4g}, seen up to {observed:.4g})",
                    }
                    break
        for node in model.graph:
            if node.name in decisions:
                set_node_spec(node, decisions[node.name])
        if decisions:
            record_formats(model, decisions)
            logger.info("%d FP8 nodes moved to the float remainder (values beyond the format after scaling)", len(decisions))
        self.publish(Fp8IslandsRecord(self.margin, len(decisions)))
        return ir.passes.PassResult(model, bool(decisions))
