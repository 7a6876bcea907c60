"""Roles nodes play in a target's Q/DQ placement, read from the graph around them.

* A **residual Add** adds two computed tensors, one of them made by a weighted op (Conv, Gemm,
  MatMul, or such an op followed by an Add of a constant bias): the skip connection of ResNet-style
  blocks and transformer layers. TensorRT fuses the weighted op's output into the Add (the kernel's
  epilogue adds the residual), so only the *skip* input takes a Q/DQ (TensorRT developer guide,
  "Q/DQ Layer-Placement Recommendations"). When both inputs come from weighted ops, the second is
  the one quantized (either can be fused).
* A weighted op that **reads an op whose output stays in higher precision**
  (``Target.float_input_ops``: attention's Softmax), directly or through data-movement ops, would be
  half-quantized: TensorRT runs such an op in float, so it stays float as a whole.
"""

from __future__ import annotations

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.policy import node_spec
from qonnx.targets import DATA_MOVEMENT_OPS, Target

__all__ = ["residual_skip_inputs", "float_op_read", "made_by_weighted_op"]


def _quantized_weighted(node: ir.Node | None, target: Target) -> bool:
    return node is not None and node.op_type in target.weighted_ops and node_spec(node.metadata_props).quantized


def made_by_weighted_op(value: ir.Value, target: Target) -> bool:
    """Whether ``value`` is the output of a quantized weighted op, or of an Add of a constant to one
    (a bias): an output TensorRT can fuse into a residual Add. (Specs decided earlier in graph order
    count: ``resolve-policy`` reaches producers first.)"""
    producer = value.producer()
    if producer is None:
        return False
    if _quantized_weighted(producer, target):
        return True
    if producer.op_type == "Add" and len(producer.inputs) == 2:
        computed = [v for v in producer.inputs if v is not None and not qir.is_float_constant(v) and qir.constant_array(v) is None]
        return len(computed) == 1 and _quantized_weighted(computed[0].producer(), target)
    return False


def residual_skip_inputs(node: ir.Node, target: Target) -> list[int] | None:
    """The indices of a residual Add's skip inputs (see the module docstring); None when ``node``
    is not a residual Add (a constant operand, or no input made by a weighted op)."""
    if node.op_type != "Add" or len(node.inputs) != 2 or any(v is None or qir.constant_array(v) is not None for v in node.inputs):
        return None
    from_weighted = [made_by_weighted_op(v, target) for v in node.inputs]
    if not any(from_weighted):
        return None
    if all(from_weighted):
        return [1]
    return [i for i, weighted in enumerate(from_weighted) if not weighted]


def float_op_read(node: ir.Node, target: Target) -> ir.Node | None:
    """The op of ``Target.float_input_ops`` whose output a weighted op's data input reads (through
    data-movement ops), or None."""
    if node.op_type not in target.weighted_ops or not target.float_input_ops:
        return None
    for value in node.inputs[:2]:
        while value is not None and (producer := value.producer()) is not None:
            if producer.op_type in target.float_input_ops:
                return producer
            if producer.op_type not in DATA_MOVEMENT_OPS or not producer.inputs:
                break
            value = producer.inputs[0]
    return None
