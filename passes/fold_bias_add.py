"""A constant per-channel Add after Conv / ConvTranspose / Gemm folded into the op's bias.

Rewrites ``Add(Op(x, W, b), c)`` (either operand order) into ``Op(x, W, b + c)`` when c is a
constant holding one value per output channel in a shape that broadcasts along the channel axis
only: ``[1, C, 1, …]`` or ``[C, 1, …]`` after a convolution, ``[C]`` or ``[1, C]`` after a Gemm; and
the Add is the only reader of the op's output. Paddle2ONNX exports convolution biases this way.
Folded, the bias joins the integer kernel (an INT32 bias of QLinearConv) instead of leaving a
float Add between two integer kernels, and a BatchNormalization that follows can fold too.

The candidates are the Adds with an operand that a Conv, ConvTranspose or Gemm computes
(``_pattern``); ``_check`` tests the conditions above one by one and records the first that fails
(``Pass.skip``); ``_rewrite`` folds. Reasons recorded:

- "addend is not constant", "producer is in another graph"
- "<Op> output read by <n> nodes", "<Op> output is a graph output", "Gemm beta is not 1"
- "weight is not constant", "addend type differs from the weight's"
- "addend is not one value per output channel", "addend does not broadcast along the channel axis only"
- "bias is not constant", "bias is not one value per output channel"
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import Pass, register

_WEIGHTED = ("Conv", "ConvTranspose", "Gemm")


@dataclasses.dataclass
class _Match:
    """An Add, the op that computes one operand (``y``), the other operand and its value once checked."""

    graph: ir.Graph
    add: ir.Node
    y: ir.Value
    op: ir.Node
    c: np.ndarray | None  # the other operand's constant value; None when it is not constant
    per_channel: np.ndarray | None = None
    bias: np.ndarray | None = None


def _channels(op: ir.Node, weight: np.ndarray) -> int:
    if op.op_type == "Conv":
        return weight.shape[0]
    if op.op_type == "ConvTranspose":
        return weight.shape[1] * op.attributes.get_int("group", 1)
    return weight.shape[0] if op.attributes.get_int("transB", 0) else weight.shape[1]


def _broadcasts_along_channels(op: ir.Node, c: np.ndarray, channels: int, rank: int) -> bool:
    """Whether ``c`` (``channels`` values) broadcasts along the channel axis of ``op``'s output only."""
    if op.op_type == "Gemm":
        return 0 < c.ndim <= 2 and c.shape[-1] == channels
    # Convolution output [N, C, spatial…]: the channel must sit at axis 1 once broadcast.
    if c.ndim > rank or c.ndim < rank - 1:
        return False
    channel_axis = 1 - (rank - c.ndim)
    return channel_axis >= 0 and c.shape[channel_axis] == channels


@register
class FoldBiasAdd(Pass):
    name = "fold-bias-add"
    summary = "fold a constant per-channel Add after Conv/ConvTranspose/Gemm into its bias"
    preserves = frozenset()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        for graph, add in qir.nodes_of(model, "Add"):
            match = self._pattern(graph, add)
            if match is not None and self._check(match):
                self._rewrite(match)
                folded += 1
        return ir.passes.PassResult(model, modified=bool(folded))

    def _pattern(self, graph: ir.Graph, add: ir.Node) -> _Match | None:
        """The Add as ``Add(Op(…), c)``, preferring the operand order whose c is constant; None if no Op feeds it."""
        candidates = []
        for data_index in (0, 1):
            y = add.inputs[data_index]
            op = y.producer() if y is not None else None
            if op is not None and op.op_type in _WEIGHTED:
                candidates.append(_Match(graph, add, y, op, qir.constant_array(add.inputs[1 - data_index])))
        return next((m for m in candidates if m.c is not None), candidates[0] if candidates else None)

    def _check(self, match: _Match) -> bool:
        add, y, op, c = match.add, match.y, match.op, match.c
        if c is None:
            return self.skip("addend is not constant", add)
        if op.graph is not match.graph:
            return self.skip("producer is in another graph", add)
        if len(y.uses()) != 1:
            return self.skip(f"{op.op_type} output read by {len(y.uses())} nodes", add)
        if y.is_graph_output():
            return self.skip(f"{op.op_type} output is a graph output", add)
        if op.op_type == "Gemm" and op.attributes.get_float("beta", 1.0) != 1.0:
            return self.skip("Gemm beta is not 1", add)
        weight = qir.constant_array(op.inputs[1]) if len(op.inputs) > 1 else None
        if weight is None:
            return self.skip("weight is not constant", add)
        if c.dtype != weight.dtype:
            return self.skip("addend type differs from the weight's", add)
        rank = len(y.shape) if y.shape is not None else (weight.ndim if op.op_type != "Gemm" else 2)
        channels = _channels(op, weight)
        if c.size != channels:
            return self.skip("addend is not one value per output channel", add)
        if not _broadcasts_along_channels(op, c, channels, rank):
            return self.skip("addend does not broadcast along the channel axis only", add)
        match.per_channel = c.reshape(-1)
        bias_value = op.inputs[2] if len(op.inputs) > 2 else None
        bias = qir.constant_array(bias_value) if bias_value is not None else np.zeros_like(match.per_channel)
        if bias is None:
            return self.skip("bias is not constant", add)
        if bias.size != match.per_channel.size:
            return self.skip("bias is not one value per output channel", add)
        match.bias = bias
        return True

    def _rewrite(self, match: _Match) -> None:
        graph, op = match.graph, match.op
        new_bias = qir.make_initializer(graph, f"{op.name or op.op_type}_bias", (match.bias.reshape(-1) + match.per_channel).astype(match.c.dtype))
        if len(op.inputs) < 3:
            op.resize_inputs(3)
        op.replace_input_with(2, new_bias)
        qir.bypass(graph, match.add, match.y)
