"""A zero Pad in front of a convolution folded into the convolution's own ``pads``.

Rewrites ``Conv(Pad(x, pads, 0))`` into ``Conv(x)`` with the spatial pads added to the Conv's
``pads`` attribute, when the Pad is constant mode with value 0 (or absent), pads only spatial
axes by non-negative amounts, and the Conv has no ``auto_pad``. TensorFlow-style "same" padding
(EfficientNet-Lite, MobileNet exports) appears as such Pads; left alone, each one is a float
island between two integer kernels once the model is quantized, since onnxruntime has no
quantized Pad fusion. The rewrite is exact: a Conv pads with zeros too.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import Pass, register


def _spatial_pads(pad: ir.Node, rank: int) -> list[int] | None:
    """The Pad's amounts as a Conv ``pads`` list (begins then ends of the spatial axes), or None."""
    if pad.attributes.get_string("mode", "constant") != "constant":
        return None
    if "pads" in pad.attributes:  # opset < 11
        amounts = np.asarray(pad.attributes.get_ints("pads"))
        value = pad.attributes.get_float("value", 0.0)
    else:
        amounts = qir.constant_array(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if amounts is None:
            return None
        constant = pad.inputs[2] if len(pad.inputs) > 2 else None
        fill = qir.constant_array(constant) if constant is not None else np.zeros(())
        if fill is None or fill.size > 1:
            return None
        value = float(fill.reshape(-1)[0]) if fill.size else 0.0
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:  # explicit axes (opset 18)
            return None
    amounts = np.asarray(amounts, dtype=np.int64).reshape(-1)
    if value != 0.0 or amounts.size != 2 * rank or np.any(amounts < 0):
        return None
    begins, ends = amounts[:rank], amounts[rank:]
    if begins[0] or begins[1] or ends[0] or ends[1]:  # batch or channel padding
        return None
    return [int(v) for v in (*begins[2:], *ends[2:])]


@register
class FoldPad(Pass):
    name = "fold-pad"
    summary = "fold a zero Pad in front of Conv into the Conv's pads"
    preserves = frozenset({"shapes"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = sum(self._try_fold(graph, node) for graph, node in qir.nodes_of(model, "Conv"))
        return ir.passes.PassResult(model, modified=bool(folded))

    def _try_fold(self, graph: ir.Graph, conv: ir.Node) -> bool:
        padded = conv.inputs[0]
        pad = padded.producer() if padded is not None else None
        if pad is None or pad.op_type != "Pad" or pad.graph is not graph or padded.is_graph_output():
            return False
        if conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return False
        weight = qir.constant_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if weight is None:
            return False
        extra = _spatial_pads(pad, weight.ndim)
        if extra is None:
            return False
        spatial = weight.ndim - 2
        current = conv.attributes.get_ints("pads", [0] * (2 * spatial))
        conv.attributes["pads"] = ir.AttrInt64s("pads", [a + b for a, b in zip(current, extra)])
        conv.replace_input_with(0, pad.inputs[0])
        if not padded.uses():
            graph.remove(pad, safe=True)
        return True
