"""Constant folding: a node whose inputs are all initializers becomes an initializer.

Rewrites, in topological order so that chains fold in one run:

1. ``y = Op(c1, c2, …)`` with every ci an initializer and ``Op`` deterministic → initializer ``y``.

Left alone: QuantizeLinear / DequantizeLinear (folding them would undo weight quantization),
random ops, nodes with subgraphs or outside the standard domain, outputs larger than
``max_elements`` (ConstantOfShape can blow a file up), nodes whose output is a graph output, and
nodes whose value is not a tensor (``SequenceEmpty`` gives a sequence, ``Optional`` an optional:
an initializer can hold neither).
Values are computed with onnx's reference evaluator at the model's own opset.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir

from qonnx.pipeline import Pass, register

logger = logging.getLogger(__name__)

_NEVER_FOLD = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "If",
        "Loop",
        "Scan",
        "SequenceConstruct",
        "Constant",
    }
)


def _evaluate(node: ir.Node, opset: int) -> list[np.ndarray]:
    proto = ir.serde.serialize_node(node)
    inputs = [v for v in node.inputs if v is not None]
    graph = onnx.helper.make_graph(
        [proto],
        "fold",
        [onnx.helper.make_tensor_value_info(v.name, v.const_value.dtype.value, None) for v in inputs],
        [onnx.helper.make_tensor_value_info(o.name, 0, None) for o in node.outputs],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    session = onnx.reference.ReferenceEvaluator(model)
    return session.run(None, {v.name: v.const_value.numpy() for v in inputs})


@register
class FoldConstants(Pass):
    name = "fold-constants"
    summary = "replace nodes whose inputs are all constant by their value"
    preserves = frozenset({"ranges", "plan"})

    def __init__(self, context=None, *, max_elements: int = 1 << 24) -> None:
        super().__init__(context)
        self.max_elements = max_elements

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", 13)
        folded = 0
        for graph in model.graphs():
            for node in list(graph):
                if self._try_fold(graph, node, opset):
                    folded += 1
        if folded:
            logger.info("folded %d constant nodes", folded)
        return ir.passes.PassResult(model, modified=bool(folded))

    def _try_fold(self, graph: ir.Graph, node: ir.Node, opset: int) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
            return False
        inputs = [v for v in node.inputs if v is not None]
        if not all(v.is_initializer() and v.const_value is not None and not v.is_graph_input() for v in inputs):
            return False
        if any(o.is_graph_output() or not o.name for o in node.outputs):
            return False  # a graph output keeps its node; an omitted optional output has no name to give
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return False
        try:
            results = _evaluate(node, opset)
        except Exception as exc:  # an op the reference evaluator lacks: keep the node
            logger.debug("cannot fold %s (%s): %s", node.name, node.op_type, exc)
            return False
        if not all(isinstance(r, np.ndarray) for r in results):
            return self.skip("value is not a tensor", node)
        if len(results) != len(node.outputs) or any(r.size > self.max_elements for r in results):
            return False
        for output, array in zip(node.outputs, results):
            array = np.asarray(array)
            if not array.flags.owndata:  # a view of an input (Transpose, Reshape), perhaps of a memory-mapped external file, which saving releases
                array = array.copy()
            value = ir.Value(name=output.name, const_value=ir.tensor(array, name=output.name))
            value.shape = ir.Shape(array.shape)
            value.dtype = value.const_value.dtype
            output.replace_all_uses_with(value)
            output.name = None  # free the name for the initializer
            graph.register_initializer(value)
        graph.remove(node, safe=True)
        return True
