"""Parts of a model that are already quantized, found before quantizing it again.

A model that already holds quantizers (QDQ pairs, QOperator ops such as QLinearConv, integer
kernels fed by DynamicQuantizeLinear, block-quantized MatMulNBits) would get a second set stacked
on the first. The flow refuses such a model unless asked to re-quantize; then ``resolve-policy``
keeps every node quantized before in float (``already_quantized``), so only the
float rest is quantized.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import onnx_ir as ir

__all__ = ["QUANTIZATION_OPS", "find", "describe", "already_quantized"]

QUANTIZATION_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulNBits", "GatherBlockQuantized", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QAttention", "QEmbedLayerNormalization",
})  # fmt: skip
# Ops whose output is a float value computed from quantized data: a node reading it is quantized already.
_DEQUANTIZING_OPS = frozenset({"DequantizeLinear", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits", "GatherBlockQuantized"})


def _is_quantization_op(node: ir.Node) -> bool:
    return node.op_type in QUANTIZATION_OPS or node.op_type.startswith("QLinear")


def find(nodes: Iterable[ir.Node]) -> dict[str, list[str]]:
    """The quantization ops among ``nodes``: op type to the names of its nodes, in graph order."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for node in nodes:
        if _is_quantization_op(node):
            found[node.op_type].append(node.name or "(unnamed)")
    return dict(found)


def describe(found: dict[str, list[str]]) -> str:
    """``"12 DequantizeLinear (first: 'conv1_dq'), 3 MatMulInteger (first: 'mm')"``, most frequent first."""
    parts = sorted(found.items(), key=lambda item: (-len(item[1]), item[0]))
    return ", ".join(f"{len(names)} {op} (first: {names[0]!r})" for op, names in parts)


def already_quantized(node: ir.Node) -> bool:
    """Whether ``node`` was quantized before: it is a quantization op, or reads a weight stored
    quantized (a dequantizing op of a constant).

    A node that reads a dequantized activation or whose output is quantized already is not: it may
    be quantized, and placement leaves an existing Q/DQ pair alone (no second pair on one tensor).
    """
    if _is_quantization_op(node):
        return True
    for value in node.inputs:
        producer = None if value is None else value.producer()
        if producer is not None and producer.op_type in _DEQUANTIZING_OPS and _reads_constant(producer):
            return True
    return False


def _reads_constant(node: ir.Node) -> bool:
    first = node.inputs[0] if node.inputs else None
    return first is not None and (first.const_value is not None or (first.producer() is not None and first.producer().op_type == "Constant"))
