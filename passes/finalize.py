"""Finalization: remove what only the passes needed, before the model is written.

Rewrites:

1. the ``qonnx.spec`` metadata of every node goes (the plan in the model's metadata keeps it all);
2. types and shapes of intermediate values and initializers go (graph inputs and outputs keep
   theirs): onnxruntime
   infers them at load time, and on a small model their ``value_info`` entries weigh as much as a
   tenth of the INT8 file.
"""

from __future__ import annotations

import onnx_ir as ir

from qonnx.pipeline import Pass, register
from qonnx.policy import SPEC_KEY


def _forget_type(value: ir.Value, keep: set[ir.Value]) -> bool:
    if value in keep or (value.type is None and value.shape is None):
        return False
    value.type, value.shape = None, None
    return True


@register
class Finalize(Pass):
    name = "finalize"
    summary = "drop per-node specs and intermediate value_info before saving"
    preserves = frozenset({"ranges", "plan"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in model.graphs():
            boundary = set(graph.inputs) | set(graph.outputs)
            for node in graph:
                if node.metadata_props.pop(SPEC_KEY, None) is not None:
                    modified = True
                for value in node.outputs:
                    modified |= _forget_type(value, boundary)
            for value in graph.initializers.values():  # the tensor itself says its type and shape
                modified |= _forget_type(value, boundary)
        return ir.passes.PassResult(model, modified)
