"""Fusion check: what onnxruntime's CPU provider actually runs after its own QDQ fusions.

A QDQ model is only fast when onnxruntime turns each ``DQ → op → Q`` group into an integer kernel.
``check_fusion`` builds a session with graph optimizations on, reads back the optimized graph and
counts:

* ``integer_kernels``: QLinearConv, QGemm, QLinearMatMul, MatMulIntegerToFloat, QLinearAdd… by type;
* ``quantize_linear`` / ``dequantize_linear``: the Q/DQ nodes left as conversions (at the model's
  edges they are expected; between integer kernels each one is a float round trip);
* ``float_islands``: float compute nodes that read a DequantizeLinear output and feed a
  QuantizeLinear, i.e. float work wedged between integer kernels, by type (``float_island_nodes``:
  their names and types);
* ``unfused``: weighted nodes (Conv, MatMul, Gemm) that still read a DequantizeLinear output, i.e.
  a quantized node that did not become an integer kernel. ConvTranspose has no integer kernel in
  onnxruntime's CPU provider and is counted apart (``no_integer_kernel``).
"""

from __future__ import annotations

import collections
import os
from typing import Any

import onnx_ir as ir

from qonnx import runtime

__all__ = ["check_fusion", "INTEGER_KERNELS"]

INTEGER_KERNELS = frozenset(
    {
        "QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
        "MatMulInteger", "ConvInteger", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
        "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearWhere",
        "QAttention", "DynamicQuantizeLSTM",
    }
)  # fmt: skip
_WEIGHTED = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm"})
_CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _reads_dequantized(node: ir.Node) -> bool:
    for value in node.inputs:
        producer = value.producer() if value is not None else None
        if producer is not None and producer.op_type == "DequantizeLinear":
            return True
    return False


def _feeds_quantize(node: ir.Node) -> bool:
    return any(user.op_type == "QuantizeLinear" for out in node.outputs if out is not None for user, _ in out.uses())


def check_fusion(model: ir.Model | str | os.PathLike) -> dict[str, Any]:
    """Counts of integer kernels, leftover Q/DQ and float work in onnxruntime's optimized graph."""
    optimized = runtime.optimized_model(model)
    kernels: collections.Counter[str] = collections.Counter()
    islands: collections.Counter[str] = collections.Counter()
    island_nodes: list[tuple[str, str]] = []
    unfused: list[str] = []
    no_kernel: list[str] = []
    conversions: collections.Counter[str] = collections.Counter()
    for node in optimized.graph:
        op = node.op_type
        if op in INTEGER_KERNELS:
            kernels[op] += 1
        elif op in _CONVERSIONS:
            conversions[op] += 1
        elif _reads_dequantized(node):
            if op in _WEIGHTED:
                unfused.append(node.name)
            elif op == "ConvTranspose":
                no_kernel.append(node.name)
            elif _feeds_quantize(node):
                islands[op] += 1
                island_nodes.append((node.name, op))
    return {
        "integer_kernels": dict(sorted(kernels.items())),
        "quantize_linear": conversions["QuantizeLinear"] + conversions["DynamicQuantizeLinear"],
        "dequantize_linear": conversions["DequantizeLinear"],
        "float_islands": dict(sorted(islands.items())),
        "float_island_nodes": island_nodes,
        "unfused": unfused,
        "no_integer_kernel": no_kernel,
    }
