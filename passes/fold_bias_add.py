"""A constant per-channel Add after Conv / ConvTranspose / Gemm folded into the op's bias.

Rewrites ``Add(Op(x, W, b), c)`` (either operand order) into ``Op(x, W, b + c)`` when c is a
constant holding one value per output channel in a shape that broadcasts along the channel axis
only: ``[1, C, 1, …]`` or ``[C, 1, …]`` after a convolution, ``[C]`` or ``[1, C]`` after a Gemm; and
the Add is the only reader of the op's output. Paddle2ONNX exports convolution biases this way.
Folded, the bias joins the integer kernel (an INT32 bias of QLinearConv) instead of leaving a
float Add between two integer kernels, and a BatchNormalization that follows can fold too.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import Pass, register


def _channels(op: ir.Node, weight: np.ndarray) -> int:
    if op.op_type == "Conv":
        return weight.shape[0]
    if op.op_type == "ConvTranspose":
        return weight.shape[1] * op.attributes.get_int("group", 1)
    return weight.shape[0] if op.attributes.get_int("transB", 0) else weight.shape[1]


def _per_channel(op: ir.Node, c: np.ndarray, channels: int, rank: int | None) -> np.ndarray | None:
    if c.size != channels:
        return None
    if op.op_type == "Gemm":
        return c.reshape(-1) if c.ndim <= 2 and c.shape[-1] == channels else None
    # Convolution output [N, C, spatial…]: the channel must sit at axis 1 once broadcast.
    if rank is None or c.ndim > rank or c.ndim < rank - 1:
        return None
    channel_axis = 1 - (rank - c.ndim)
    if channel_axis < 0 or c.shape[channel_axis] != channels:
        return None
    return c.reshape(-1)


@register
class FoldBiasAdd(Pass):
    name = "fold-bias-add"
    summary = "fold a constant per-channel Add after Conv/ConvTranspose/Gemm into its bias"
    preserves = frozenset()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = sum(self._try_fold(graph, node) for graph, node in qir.nodes_of(model, "Add"))
        return ir.passes.PassResult(model, modified=bool(folded))

    def _try_fold(self, graph: ir.Graph, add: ir.Node) -> bool:
        for data_index in (0, 1):
            y, const = add.inputs[data_index], add.inputs[1 - data_index]
            op = y.producer() if y is not None else None
            c = qir.constant_array(const)
            if op is None or c is None or op.op_type not in ("Conv", "ConvTranspose", "Gemm") or op.graph is not graph:
                continue
            if len(y.uses()) != 1 or y.is_graph_output() or op.op_type == "Gemm" and op.attributes.get_float("beta", 1.0) != 1.0:
                continue
            weight = qir.constant_array(op.inputs[1]) if len(op.inputs) > 1 else None
            if weight is None or c.dtype != weight.dtype:
                continue
            rank = len(y.shape) if y.shape is not None else (weight.ndim if op.op_type != "Gemm" else 2)
            per_channel = _per_channel(op, c, _channels(op, weight), rank)
            if per_channel is None:
                continue
            bias_value = op.inputs[2] if len(op.inputs) > 2 else None
            bias = qir.constant_array(bias_value) if bias_value is not None else np.zeros_like(per_channel)
            if bias is None or bias.size != per_channel.size:
                continue
            new_bias = qir.make_initializer(graph, f"{op.name or op.op_type}_bias", (bias.reshape(-1) + per_channel).astype(c.dtype))
            if len(op.inputs) < 3:
                op.resize_inputs(3)
            op.replace_input_with(2, new_bias)
            qir.bypass(graph, add, y)
            return True
        return False
