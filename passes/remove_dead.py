"""Dead code elimination: nodes whose outputs nobody reads, and unused initializers.

The model's inputs and outputs are never removed, so the signature stays the same.
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
        return ir.passes.PassResult(model, result.modified)
