"""Emulation of an FP16/BF16 graph in FP32: the same roundings, runnable on any provider.

onnxruntime's CPU provider has no BF16 compute kernels at all and computes many FP16 ops in FP32
behind Casts it inserts, so neither shows what a GPU would compute. This rewrite widens every
FP16/BF16 tensor to FP32 and rounds it where the low-precision graph would store it:

1. FP16/BF16 constants (initializers, ConstantOfShape/Constant values) become FP32 holding the
   same (already rounded) values;
2. every node output that was FP16/BF16 is computed in FP32 and then rounded by a
   ``Cast(to=low) → Cast(to=FLOAT)`` pair, so each stored tensor carries the format's rounding,
   overflow to infinity and flush to zero; a Cast to the low type becomes such a pair too;
3. FP16/BF16 graph inputs are widened after reading, outputs are rounded and narrowed at the end,
   so the signature stays the same.

What it does not reproduce: rounding *inside* an op (accumulators), which GPU kernels keep in
FP32 for Conv, MatMul and reductions anyway. The model is rewritten in place (the pass) or on a
copy (``emulated``).

The rewrite is idempotent: the low-typed values it leaves are already in emulated form and are
recognized as such, so a second run changes nothing. These are a ``Cast(to=low)`` of an FP32 tensor
whose result is only widened back (``Cast(to=FLOAT)``) or is a graph output, and a low-typed graph
input read only by ``Cast(to=FLOAT)``; either computes exactly the rounding the rewrite would make.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from qonnx import ir as qir
from qonnx.pipeline import Pass, register

__all__ = ["EmulateFloat", "emulated", "LOW_TYPES"]

LOW_TYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _cast(graph: ir.Graph, value: ir.Value, to: ir.DataType, base: str) -> ir.Node:
    """``Cast(value, to)``, its output named ``base`` and the node ``Cast_<base>`` (named first)."""
    return qir.make_cast(graph, value, to, base, node_name=qir.unique_name(graph, f"Cast_{base}"))


def _widens(node: ir.Node) -> bool:
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and node.attributes.get_int("to") == ir.DataType.FLOAT


def _only_widened(value: ir.Value) -> bool:
    """Every reader of ``value`` casts it to FP32 (true for a graph output nobody reads)."""
    return all(_widens(user) for user, _ in value.uses())


def _is_rounding(node: ir.Node) -> bool:
    """A ``Cast(to=low)`` of an FP32 tensor that is only widened back or is a graph output: a rounding."""
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.attributes.get_int("to") not in LOW_TYPES:
        return False
    source = node.inputs[0] if node.inputs else None
    return source is not None and source.dtype == ir.DataType.FLOAT and _only_widened(node.outputs[0])


def _round_after(graph: ir.Graph, value: ir.Value, low: ir.DataType) -> None:
    """Readers of FP32 ``value`` read it rounded through ``low`` instead."""
    uses = list(value.uses())
    narrow = _cast(graph, value, low, f"{value.name}_round")
    widen = _cast(graph, narrow.outputs[0], ir.DataType.FLOAT, f"{value.name}_rounded")
    qir.insert_after_producer(graph, value, [narrow, widen])
    qir.redirect(uses, widen.outputs[0])
    if value.is_graph_output():
        # The graph output keeps its name and low type: it is the rounded, narrowed tensor.
        qir.replace_graph_output(graph, value, narrow.outputs[0], f"{value.name}_fp32")


def emulate_in_place(model: ir.Model) -> bool:
    graph = model.graph
    if any(v.dtype is None for node in graph for v in node.outputs if v.name):
        # A saved model keeps no intermediate types (finalize drops them): infer them again.
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    modified = False
    for value in list(graph.initializers.values()):
        if value.const_value is not None and value.const_value.dtype in LOW_TYPES:
            array = value.const_value.numpy().astype(np.float32)
            value.const_value = ir.tensor(array, name=value.name)
            value.dtype = ir.DataType.FLOAT
            modified = True
    for value in list(graph.inputs):
        if value.dtype in LOW_TYPES and not _only_widened(value):
            uses = list(value.uses())
            widen = _cast(graph, value, ir.DataType.FLOAT, f"{value.name}_fp32")
            qir.insert_after_producer(graph, value, widen)
            qir.redirect(uses, widen.outputs[0])
            modified = True
    for node in list(graph):
        if _is_rounding(node):
            continue
        if node.op_type in ("ConstantOfShape", "Constant") and (attr := node.attributes.get("value")) is not None:
            tensor = attr.as_tensor()
            if tensor.dtype in LOW_TYPES:
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(tensor.numpy().astype(np.float32)))
                modified = True
        if node.op_type == "Cast" and node.attributes.get_int("to") in LOW_TYPES:
            node.attributes["to"] = ir.AttrInt64("to", ir.DataType.FLOAT)
            modified = True
        for value in node.outputs:
            if value.dtype in LOW_TYPES:
                low = value.dtype
                value.dtype = ir.DataType.FLOAT
                _round_after(graph, value, low)
                modified = True
    return modified


def emulated(model: ir.Model) -> ir.Model:
    """A copy of ``model`` in FP32 with the FP16/BF16 roundings as Cast pairs."""
    copy = model.clone()
    emulate_in_place(copy)
    return copy


@register
class EmulateFloat(Pass):
    name = "emulate-float"
    summary = "widen FP16/BF16 tensors to FP32 with a rounding Cast pair each: the same numerics on any provider"
    preserves = frozenset({"plan"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, emulate_in_place(model))
