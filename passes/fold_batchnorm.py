"""BatchNormalization folded into the Conv, ConvTranspose or Gemm that feeds it.

Rewrites ``BN(Op(x, W, b))`` with BN in inference mode, all of W, b and the BN parameters constant,
and BN the only reader of Op's output, into ``Op(x, W', b')`` where, per output channel c,

    k[c]  = gamma[c] / sqrt(var[c] + epsilon)
    W'[c] = W[c] * k[c]                  (the output-channel slice of W)
    b'[c] = (b[c] - mean[c]) * k[c] + beta[c]

Output channels are axis 0 of a Conv weight, axis 1 of a ConvTranspose weight (within each group),
and the N axis of a Gemm weight (axis 0 with transB=1, else axis 1). Gemm folds only with
alpha = beta = 1. New initializers are made, so a weight shared with another node is not changed.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import Pass, register

logger = logging.getLogger(__name__)


def _scaled_weight(op: ir.Node, w: np.ndarray, k: np.ndarray) -> np.ndarray | None:
    if op.op_type == "Conv":
        return w * k.reshape((-1,) + (1,) * (w.ndim - 1))
    if op.op_type == "ConvTranspose":
        group = op.attributes.get_int("group", 1)
        c_in, c_out_per_group = w.shape[0], w.shape[1]
        if c_in % group or k.size != c_out_per_group * group:
            return None
        grouped = w.reshape((group, c_in // group, c_out_per_group) + w.shape[2:])
        factor = k.reshape((group, 1, c_out_per_group) + (1,) * (w.ndim - 2))
        return (grouped * factor).reshape(w.shape)
    if op.op_type == "Gemm":
        if op.attributes.get_float("alpha", 1.0) != 1.0 or op.attributes.get_float("beta", 1.0) != 1.0:
            return None
        if op.attributes.get_int("transB", 0):
            return w * k[:, None]
        return w * k[None, :]
    return None


@register
class FoldBatchNorm(Pass):
    name = "fold-batchnorm"
    summary = "fold inference-mode BatchNormalization into the preceding Conv/ConvTranspose/Gemm"
    preserves = frozenset()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = sum(self._try_fold(graph, node) for graph, node in qir.nodes_of(model, "BatchNormalization"))
        return ir.passes.PassResult(model, modified=bool(folded))

    def _try_fold(self, graph: ir.Graph, bn: ir.Node) -> bool:
        if len(bn.outputs) != 1 or bn.attributes.get_int("training_mode", 0):
            return False
        x = bn.inputs[0]
        op = x.producer() if x is not None else None
        if op is None or op.op_type not in ("Conv", "ConvTranspose", "Gemm") or op.graph is not graph:
            return False
        if len(x.uses()) != 1 or x.is_graph_output():
            return False
        params = [qir.constant_array(v) for v in bn.inputs[1:5]]
        weight = qir.constant_array(op.inputs[1]) if len(op.inputs) > 1 else None
        bias_value = op.inputs[2] if len(op.inputs) > 2 else None
        bias = qir.constant_array(bias_value) if bias_value is not None else None
        if weight is None or any(p is None for p in params) or (bias_value is not None and bias is None):
            return False
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        k = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
        new_weight = _scaled_weight(op, weight.astype(np.float64), k)
        if new_weight is None:
            return False
        if bias is None:
            bias = np.zeros_like(k)
        new_bias = (bias.astype(np.float64) - mean) * k + beta
        dtype = weight.dtype
        w_name = op.inputs[1].name or "weight"
        w_value = qir.make_initializer(graph, f"{w_name}_bnfold", new_weight.astype(dtype))
        b_value = qir.make_initializer(graph, f"{w_name}_bnfold_bias", new_bias.astype(dtype).reshape(-1))
        op.replace_input_with(1, w_value)
        if len(op.inputs) > 2:
            op.replace_input_with(2, b_value)
        else:
            op.resize_inputs(3)
            op.replace_input_with(2, b_value)
        qir.bypass(graph, bn, x)
        logger.debug("folded %s into %s", bn.name, op.name)
        return True
