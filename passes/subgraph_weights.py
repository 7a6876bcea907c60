"""Weights inside If/Loop/Scan bodies to INT8, weight-only.

Calibration runs the model and taps tensors of the main graph; values inside a subgraph are not
graph outputs there and cannot be tapped from outside, so their activations have no range and
stay float. Their constant weights need no range: for every Conv, ConvTranspose, Gemm and MatMul
node inside a subgraph whose spec is INT8 (``resolve-policy`` gives them one when the weight is a
constant), the weight becomes a symmetric INT8 initializer, per output channel (the axis of
``insert_qdq.node_roles``; a constant first operand of MatMul per tensor), read through a
DequantizeLinear in the same body (``qonnx.weight_only``). Biases stay float: an INT32 bias needs
the input's scale. Recurrent ops inside bodies are ``quantize-recurrent``'s.

Not rewritten, with the reason: a node whose weight is not a constant FP32 initializer; a node
whose weight is stored as INT8 already (a second run changes nothing).
"""

from __future__ import annotations

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.passes.insert_qdq import node_roles
from qonnx.pipeline import register
from qonnx.policy import QuantSpec
from qonnx.targets import WEIGHT_AXIS_OPS
from qonnx.weight_only import ALREADY, WeightOnlyPass

__all__ = ["QuantizeSubgraphWeights"]


@register
class QuantizeSubgraphWeights(WeightOnlyPass):
    name = "quantize-subgraph-weights"
    summary = "store constant weights of INT8 Conv/Gemm/MatMul nodes inside If/Loop/Scan bodies as INT8 (weight-only)"
    op_types = frozenset(WEIGHT_AXIS_OPS)

    def graphs(self, model: ir.Model):
        return (graph for graph in model.graphs() if graph is not model.graph)  # the main graph's weights are insert-qdq's

    def weights(self, node: ir.Node, spec: QuantSpec) -> list[tuple[int, int | None]] | str:
        roles = node_roles(node)
        if roles.weight is None:
            return "inside a subgraph: weight not a constant FP32 initializer"
        if qir.is_dequantized(node.inputs[roles.weight]):
            return ALREADY
        return [(roles.weight, roles.weight_axis if spec.per_channel else None)]
