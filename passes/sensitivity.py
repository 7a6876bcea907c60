"""Which quantized inputs cost the most fidelity: one weighted node's activations at a time.

For every INT8 Conv/ConvTranspose/Gemm/MatMul of a quantized model, this measures the output SQNR
(against the FP32 model) of a variant in which weights stay as quantized but only that node's
activation input keeps its QuantizeLinear/DequantizeLinear pair; every other activation pair is
bypassed. A node whose variant alone falls far below the weights-only figure is where 8-bit
activations break the model, the place to look for better ranges or a wider format. One session
per node: the cost is linear in the number of weighted nodes, so it runs on request
(``--sensitivity N``: the ``sensitivity`` pass on N evaluation samples), after ``verify``.
Changes nothing; without evaluation data, or for an FP16/BF16 model, it records nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.errors import UserError
from qonnx.pipeline import Pass, Record, register
from qonnx.progress import Progress
from qonnx.targets import get_target

__all__ = ["activation_sensitivity", "ActivationSensitivity", "SensitivityRecord"]

_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _activation_pairs(model: ir.Model) -> list[tuple[ir.Node, ir.Node]]:
    """(Q, DQ) pairs on activations: a QuantizeLinear whose input is not a constant, and its DQ readers."""
    pairs = []
    for node in model.graph:
        if node.op_type != "QuantizeLinear" or node.inputs[0] is None or node.inputs[0].is_initializer():
            continue
        for user, _ in node.outputs[0].uses():
            if user.op_type == "DequantizeLinear":
                pairs.append((node, user))
    return pairs


def _bypass_all(model: ir.Model) -> list[tuple[ir.Node, int, ir.Value]]:
    """Make every activation DQ's readers read the unquantized tensor; returns (reader, index, dq output) to undo."""
    undo = []
    for q, dq in _activation_pairs(model):
        for user, index in list(dq.outputs[0].uses()):
            user.replace_input_with(index, q.inputs[0])
            undo.append((user, index, dq.outputs[0]))
    return undo


def _worst_sqnr(model: ir.Model, feeds: Sequence[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]], qdq_fusion: bool = True) -> float:
    return metrics.compare(reference, runtime.session(model, qdq_fusion=qdq_fusion), feeds).worst_sqnr_db


def activation_sensitivity(
    reference_model: ir.Model | str | os.PathLike,
    quantized: ir.Model,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    top: int = 10,
    progress: bool = False,
    qdq_fusion: bool = True,
) -> dict[str, Any]:
    """Worst-output SQNR with weights quantized and only one node's activation inputs quantized.

    Returns ``weights_only_db`` (no activation quantized), ``all_db`` (the model as quantized) and
    ``nodes``: the ``top`` nodes with the lowest figure, each ``{"node", "op_type", "sqnr_db"}``.
    ``qdq_fusion=False``: the quantized variants run with reference Q/DQ (``runtime.session``).
    """
    reference_session = runtime.session(reference_model)
    reference = [reference_session.run(feed) for feed in feeds]
    all_db = _worst_sqnr(quantized, feeds, reference, qdq_fusion)
    variant = quantized.clone()
    undo = _bypass_all(variant)
    weights_only_db = _worst_sqnr(variant, feeds, reference, qdq_fusion)
    by_node: dict[ir.Node, list[tuple[int, ir.Value]]] = {}
    for user, index, dq_output in undo:
        if user.op_type in _WEIGHTED:
            by_node.setdefault(user, []).append((index, dq_output))
    results = []
    with Progress(len(by_node), "sensitivity", enabled=progress) as bar:
        for node, inputs in by_node.items():
            originals = [(index, node.inputs[index]) for index, _ in inputs]
            for index, dq_output in inputs:
                node.replace_input_with(index, dq_output)
            results.append({"node": node.name, "op_type": node.op_type, "sqnr_db": round(_worst_sqnr(variant, feeds, reference, qdq_fusion), 2)})
            for index, value in originals:
                node.replace_input_with(index, value)
            bar.advance()
    results.sort(key=lambda r: r["sqnr_db"])
    return {"samples": len(feeds), "weights_only_db": round(weights_only_db, 2), "all_db": round(all_db, 2), "nodes": results[:top]}


@dataclasses.dataclass
class SensitivityRecord(Record):
    """``activation_sensitivity``'s figures: weights only, all, and the worst nodes with theirs."""

    report_key = "sensitivity"
    samples: int
    weights_only_db: float
    all_db: float
    nodes: list[dict[str, Any]]


@register
class ActivationSensitivity(Pass):
    name = "sensitivity"
    summary = "rank the INT8 weighted nodes by the output SQNR with only their activations quantized"
    read_only = True

    def __init__(self, context=None, *, samples: int = 4, top: int = 10) -> None:
        super().__init__(context)
        if samples < 1 or top < 1:
            raise UserError(f"sensitivity: samples and top must be positive (samples={samples}, top={top})")
        self.samples, self.top = samples, top

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        data, source = self.context.eval_data, self.context.source
        if data is None or source is None or self.context.precision != "int8":
            return ir.passes.PassResult(model, False)
        feeds = [data[i] for i in range(min(self.samples, len(data)))]
        fused = get_target(self.context.target).cpu_fused_kernels  # (as the evaluation measures)
        found = activation_sensitivity(source, model, feeds, top=self.top, progress=self.context.progress, qdq_fusion=fused)
        self.publish(SensitivityRecord(**found))
        return ir.passes.PassResult(model, False)
