"""Dead code elimination: nodes whose outputs nobody reads, and unused initializers.

The model's inputs and outputs are never removed, so the signature stays the same. onnx-ir's pass
drops unused initializers of the main graph only; those of If/Loop/Scan bodies (constants lifted
and folded there, float weights stored as INT8) are dropped here.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from qonnx.pipeline import Pass, register


@register
class RemoveDead(Pass):
    name = "remove-dead"
    summary = "remove nodes and initializers that no output depends on"
    preserves = frozenset({"shapes", "ranges", "plan"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = RemoveUnusedNodesPass()(model)
        RemoveUnusedOpsetsPass()(model)
        removed = 0
        for graph in model.graphs():
            if graph is model.graph:
                continue
            kept = set(graph.outputs)
            for value in list(graph.initializers.values()):
                if not value.uses() and value not in kept:
                    graph.initializers.pop(value.name)
                    removed += 1
        return ir.passes.PassResult(model, result.modified or bool(removed))
