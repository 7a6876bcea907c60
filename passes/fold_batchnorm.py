"""BatchNormalization folded into the Conv, ConvTranspose or Gemm that feeds it.

Rewrites ``BN(Op(x, W, b))`` with BN in inference mode, all of W, b and the BN parameters constant,
and BN the only reader of Op's output, into ``Op(x, W', b')`` where, per output channel c,

    k[c]  = gamma[c] / sqrt(var[c] + epsilon)
    W'[c] = W[c] * k[c]                  (the output-channel slice of W)
    b'[c] = (b[c] - mean[c]) * k[c] + beta[c]

Output channels are axis 0 of a Conv weight, axis 1 of a ConvTranspose weight (within each group),
and the N axis of a Gemm weight (axis 0 with transB=1, else axis 1). Gemm folds only with
alpha = beta = 1. New initializers are made, so a weight shared with another node is not changed.

Each BatchNormalization is a candidate: ``_pattern`` reads the op that feeds it, ``_check`` tests
the conditions above one by one and records the first that fails (``Pass.skip``), ``_rewrite``
folds. Reasons recorded:

- "BatchNormalization in training mode", "BatchNormalization with more than one output"
- "input is not a Conv, ConvTranspose or Gemm output", "producer is in another graph"
- "<Op> output read by <n> nodes", "<Op> output is a graph output"
- "BatchNormalization parameters are not constant", "weight is not constant", "bias is not constant"
- "ConvTranspose input channels not divisible by group",
  "BatchNormalization channels do not match the ConvTranspose output", "Gemm alpha or beta is not 1"
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import Pass, register

logger = logging.getLogger(__name__)

_WEIGHTED = ("Conv", "ConvTranspose", "Gemm")


@dataclasses.dataclass
class _Match:
    """A BatchNormalization, the op that feeds it, and (once checked) the constants of both."""

    graph: ir.Graph
    bn: ir.Node
    x: ir.Value | None  # the op's output, the BatchNormalization's input
    op: ir.Node | None
    params: list[np.ndarray] = dataclasses.field(default_factory=list)  # gamma, beta, mean, var
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def _scaled_weight(op: ir.Node, w: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``w`` with each output channel c scaled by ``k[c]`` (the op's conditions are checked)."""
    if op.op_type == "Conv":
        return w * k.reshape((-1,) + (1,) * (w.ndim - 1))
    if op.op_type == "ConvTranspose":
        group = op.attributes.get_int("group", 1)
        c_in, c_out_per_group = w.shape[0], w.shape[1]
        grouped = w.reshape((group, c_in // group, c_out_per_group) + w.shape[2:])
        factor = k.reshape((group, 1, c_out_per_group) + (1,) * (w.ndim - 2))
        return (grouped * factor).reshape(w.shape)
    if op.attributes.get_int("transB", 0):
        return w * k[:, None]
    return w * k[None, :]


@register
class FoldBatchNorm(Pass):
    name = "fold-batchnorm"
    summary = "fold inference-mode BatchNormalization into the preceding Conv/ConvTranspose/Gemm"
    preserves = frozenset()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        for graph, bn in qir.nodes_of(model, "BatchNormalization"):
            match = self._pattern(graph, bn)
            if self._check(match):
                self._rewrite(match)
                folded += 1
        return ir.passes.PassResult(model, modified=bool(folded))

    def _pattern(self, graph: ir.Graph, bn: ir.Node) -> _Match:
        x = bn.inputs[0]
        return _Match(graph, bn, x, x.producer() if x is not None else None)

    def _check(self, match: _Match) -> bool:
        bn, x, op = match.bn, match.x, match.op
        if bn.attributes.get_int("training_mode", 0):
            return self.skip("BatchNormalization in training mode", bn)
        if len(bn.outputs) != 1:
            return self.skip("BatchNormalization with more than one output", bn)
        if op is None or op.op_type not in _WEIGHTED:
            return self.skip("input is not a Conv, ConvTranspose or Gemm output", bn)
        if op.graph is not match.graph:
            return self.skip("producer is in another graph", bn)
        if len(x.uses()) != 1:
            return self.skip(f"{op.op_type} output read by {len(x.uses())} nodes", bn)
        if x.is_graph_output():
            return self.skip(f"{op.op_type} output is a graph output", bn)
        params = [qir.constant_array(v) for v in bn.inputs[1:5]]
        if any(p is None for p in params):
            return self.skip("BatchNormalization parameters are not constant", bn)
        weight = qir.constant_array(op.inputs[1]) if len(op.inputs) > 1 else None
        if weight is None:
            return self.skip("weight is not constant", bn)
        bias_value = op.inputs[2] if len(op.inputs) > 2 else None
        bias = qir.constant_array(bias_value) if bias_value is not None else None
        if bias_value is not None and bias is None:
            return self.skip("bias is not constant", bn)
        match.params, match.weight, match.bias = [p.astype(np.float64) for p in params], weight, bias
        if op.op_type == "ConvTranspose":
            group = op.attributes.get_int("group", 1)
            if weight.shape[0] % group:
                return self.skip("ConvTranspose input channels not divisible by group", bn)
            gamma, _, _, var = match.params
            if np.broadcast(gamma, var).size != weight.shape[1] * group:
                return self.skip("BatchNormalization channels do not match the ConvTranspose output", bn)
        if op.op_type == "Gemm" and (op.attributes.get_float("alpha", 1.0) != 1.0 or op.attributes.get_float("beta", 1.0) != 1.0):
            return self.skip("Gemm alpha or beta is not 1", bn)
        return True

    def _rewrite(self, match: _Match) -> None:
        graph, bn, x, op = match.graph, match.bn, match.x, match.op
        gamma, beta, mean, var = match.params
        k = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
        new_weight = _scaled_weight(op, match.weight.astype(np.float64), k)
        bias = match.bias if match.bias is not None else np.zeros_like(k)
        new_bias = (bias.astype(np.float64) - mean) * k + beta
        dtype = match.weight.dtype
        w_name = op.inputs[1].name or "weight"
        w_value = qir.make_initializer(graph, f"{w_name}_bnfold", new_weight.astype(dtype))
        b_value = qir.make_initializer(graph, f"{w_name}_bnfold_bias", new_bias.astype(dtype).reshape(-1))
        op.replace_input_with(1, w_value)
        if len(op.inputs) <= 2:
            op.resize_inputs(3)
        op.replace_input_with(2, b_value)
        qir.bypass(graph, bn, x)
        logger.debug("folded %s into %s", bn.name, op.name)
