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

import logging

import onnx_ir as ir

from qonnx.passes.insert_qdq import node_roles
from qonnx.passes.qdq_placement import is_dequantized
from qonnx.pipeline import Pass, register
from qonnx.policy import node_spec, record_formats
from qonnx.targets import WEIGHT_AXIS_OPS
from qonnx.weight_only import WeightStore

logger = logging.getLogger(__name__)

__all__ = ["QuantizeSubgraphWeights"]


@register
class QuantizeSubgraphWeights(Pass):
    name = "quantize-subgraph-weights"
    summary = "store constant weights of INT8 Conv/Gemm/MatMul nodes inside If/Loop/Scan bodies as INT8 (weight-only)"
    preserves = frozenset({"shapes", "ranges", "plan", "placement"})
    analyses_required = frozenset({"plan"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        store = WeightStore(model)
        modified = False
        refused: dict[str, dict] = {}
        for graph in model.graphs():
            if graph is model.graph:
                continue  # the main graph's weights are insert-qdq's
            for node in list(graph):
                if node.op_type not in WEIGHT_AXIS_OPS or node.domain not in ("", "ai.onnx"):
                    continue
                spec = node_spec(node.metadata_props)
                if not spec.quantized:
                    continue  # float by the plan, which says why
                roles = node_roles(node)
                weight = node.inputs[roles.weight] if roles.weight is not None else None
                if weight is not None and is_dequantized(weight):
                    self.skip("weight stored as INT8 already", node)
                    continue
                if weight is None:
                    reason = "inside a subgraph: weight not a constant FP32 initializer"
                    self.skip(reason, node)
                    refused[node.name] = {"format": "float", "reason": reason}
                    continue
                axis = roles.weight_axis if spec.per_channel else None
                node.replace_input_with(roles.weight, store.dequantized(graph, weight, axis))
                modified = True
        store.drop_replaced()
        if refused:
            record_formats(model, refused)
            modified = True
        return ir.passes.PassResult(model, modified)
