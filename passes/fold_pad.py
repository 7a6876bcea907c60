"""A zero Pad in front of a convolution folded into the convolution's own ``pads``.

Rewrites ``Conv(Pad(x, pads, 0))`` into ``Conv(x)`` with the spatial pads added to the Conv's
``pads`` attribute, when the Pad is constant mode with value 0 (or absent), pads only spatial
axes by non-negative amounts, and the Conv has no ``auto_pad``. TensorFlow-style "same" padding
(EfficientNet-Lite, MobileNet exports) appears as such Pads; left alone, each one is a float
island between two integer kernels once the model is quantized, since onnxruntime has no
quantized Pad fusion. The rewrite is exact: a Conv pads with zeros too.

The candidates are the Convs that read a Pad's output (``_pattern``); ``_check`` tests the
conditions above one by one and records the first that fails (``Pass.skip``); ``_rewrite`` folds.
Reasons recorded:

- "Pad is in another graph", "padded tensor is a graph output", "Conv has auto_pad", "weight is not constant"
- "Pad mode is not constant", "pads are not constant", "Pad has explicit axes"
- "pad value is not constant", "pad value is not a scalar", "pad value is not zero"
- "pads do not match the Conv's rank", "negative pads", "pads the batch or channel axis"
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import Pass, register


@dataclasses.dataclass
class _Match:
    """A Conv, the Pad in front of it, and (once checked) the spatial pads to add to the Conv's."""

    graph: ir.Graph
    conv: ir.Node
    padded: ir.Value
    pad: ir.Node
    extra: list[int] = dataclasses.field(default_factory=list)  # begins then ends of the spatial axes


@register
class FoldPad(Pass):
    name = "fold-pad"
    summary = "fold a zero Pad in front of Conv into the Conv's pads"
    preserves = frozenset({"shapes"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        for graph, conv in qir.nodes_of(model, "Conv"):
            match = self._pattern(graph, conv)
            if match is not None and self._check(match):
                self._rewrite(match)
                folded += 1
        return ir.passes.PassResult(model, modified=bool(folded))

    def _pattern(self, graph: ir.Graph, conv: ir.Node) -> _Match | None:
        padded = conv.inputs[0]
        pad = padded.producer() if padded is not None else None
        if pad is None or pad.op_type != "Pad":
            return None
        return _Match(graph, conv, padded, pad)

    def _check(self, match: _Match) -> bool:
        conv, pad = match.conv, match.pad
        if pad.graph is not match.graph:
            return self.skip("Pad is in another graph", conv)
        if match.padded.is_graph_output():
            return self.skip("padded tensor is a graph output", conv)
        if conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return self.skip("Conv has auto_pad", conv)
        weight = qir.constant_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if weight is None:
            return self.skip("weight is not constant", conv)
        rank = weight.ndim
        if pad.attributes.get_string("mode", "constant") != "constant":
            return self.skip("Pad mode is not constant", conv)
        if "pads" in pad.attributes:  # opset < 11
            amounts = np.asarray(pad.attributes.get_ints("pads"))
            value = pad.attributes.get_float("value", 0.0)
        else:
            amounts = qir.constant_array(pad.inputs[1]) if len(pad.inputs) > 1 else None
            if amounts is None:
                return self.skip("pads are not constant", conv)
            constant = pad.inputs[2] if len(pad.inputs) > 2 else None
            fill = qir.constant_array(constant) if constant is not None else np.zeros(())
            if fill is None:
                return self.skip("pad value is not constant", conv)
            if fill.size > 1:
                return self.skip("pad value is not a scalar", conv)
            value = float(fill.reshape(-1)[0]) if fill.size else 0.0
            if len(pad.inputs) > 3 and pad.inputs[3] is not None:  # explicit axes (opset 18)
                return self.skip("Pad has explicit axes", conv)
        amounts = np.asarray(amounts, dtype=np.int64).reshape(-1)
        if value != 0.0:
            return self.skip("pad value is not zero", conv)
        if amounts.size != 2 * rank:
            return self.skip("pads do not match the Conv's rank", conv)
        if np.any(amounts < 0):
            return self.skip("negative pads", conv)
        begins, ends = amounts[:rank], amounts[rank:]
        if begins[0] or begins[1] or ends[0] or ends[1]:
            return self.skip("pads the batch or channel axis", conv)
        match.extra = [int(v) for v in (*begins[2:], *ends[2:])]
        return True

    def _rewrite(self, match: _Match) -> None:
        conv, pad, padded = match.conv, match.pad, match.padded
        spatial = len(match.extra) // 2
        current = conv.attributes.get_ints("pads", [0] * (2 * spatial))
        conv.attributes["pads"] = ir.AttrInt64s("pads", [a + b for a, b in zip(current, match.extra)])
        conv.replace_input_with(0, pad.inputs[0])
        if not padded.uses():
            match.graph.remove(pad, safe=True)
