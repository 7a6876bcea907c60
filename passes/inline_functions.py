"""Model-local functions inlined into the graph that calls them.

Exporters wrap repeated blocks (a transformer layer, a residual unit) in model-local functions.
Calibration taps graph outputs and Q/DQ insertion rewrites graph nodes, so a Conv inside a
function body would stay invisible to both. After this pass every call of a local function is
replaced by the function's body and the functions are gone; the later passes then see every node.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from qonnx.pipeline import Pass, register


@register
class InlineFunctions(Pass):
    name = "inline-functions"
    summary = "inline model-local functions into the graphs that call them"
    preserves = frozenset()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not model.functions:
            return ir.passes.PassResult(model, modified=False)
        return InlinePass()(model)

    def ensures(self, model: ir.Model) -> None:
        if model.functions:
            raise ir.passes.PostconditionError(f"functions left after inlining: {', '.join(map(str, model.functions))}")
