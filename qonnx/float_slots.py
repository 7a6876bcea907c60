"""Which float inputs and outputs of a node change type with the node, read from the ONNX schema.

Converting a node to FP16 or BF16 converts the inputs and outputs bound to its *primary* type
parameter (the type of its first float output, else of its first float input), when the schema
allows the low-precision type there. The other float slots keep their own types:

* ``"node"``: bound to the primary parameter; FP32 or low with the node (Conv's X, W, B and Y);
* ``"any"``: an input whose parameter binds nothing else and allows the low type (Shape's data,
  Cast's input, Pow's exponent, Resize's roi): it accepts whatever its producer gives;
* ``"fp32"``: fixed ``tensor(float)`` in the schema (Resize's and Upsample's ``scales``), or a
  parameter without the low type (LayerNormalization's Mean and InvStdDev in FP16): stays FP32.

Only FP32 slots are listed; integer, boolean and already-16-bit values play no part.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import onnx
import onnx_ir as ir

__all__ = ["Slot", "NodeSlots", "float_slots", "STANDARD_DOMAINS"]

STANDARD_DOMAINS = ("", "ai.onnx")

Role = Literal["node", "any", "fp32"]


@dataclasses.dataclass(frozen=True)
class Slot:
    value: ir.Value
    index: int
    is_input: bool
    role: Role


@dataclasses.dataclass(frozen=True)
class NodeSlots:
    slots: tuple[Slot, ...]
    convertible: bool  # the schema allows the low type for the node's primary parameter
    why_not: str = ""  # when not convertible

    def inputs(self, role: Role | None = None) -> list[Slot]:
        return [s for s in self.slots if s.is_input and (role is None or s.role == role)]

    def outputs(self, role: Role | None = None) -> list[Slot]:
        return [s for s in self.slots if not s.is_input and (role is None or s.role == role)]


@functools.lru_cache(maxsize=None)
def _schema(op_type: str, domain: str, opset: int):
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _is_fp32(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def float_slots(node: ir.Node, opset: int, low_type: str) -> NodeSlots:
    """The FP32 inputs and outputs of ``node`` with their roles, for the low type ``low_type``
    ("tensor(float16)" or "tensor(bfloat16)")."""
    inputs = [(i, v) for i, v in enumerate(node.inputs) if _is_fp32(v)]
    outputs = [(i, v) for i, v in enumerate(node.outputs) if _is_fp32(v)]
    if not inputs and not outputs:
        return NodeSlots((), False, "no FP32 data")
    if node.domain not in STANDARD_DOMAINS:
        return _all_fp32(inputs, outputs, f"op of domain {node.domain!r}: no schema to convert it by")
    schema = _schema(node.op_type, "", opset)
    if schema is None:
        return _all_fp32(inputs, outputs, f"no ONNX schema for {node.op_type} at opset {opset}")
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def param(index: int, is_input: bool) -> str:
        formal = _formal(schema.inputs if is_input else schema.outputs, index)
        return formal.type_str if formal is not None else "tensor(float)"

    in_params = {i: param(i, True) for i, _ in inputs}
    out_params = {i: param(i, False) for i, _ in outputs}
    primary = next(iter(out_params.values()), None) or next(iter(in_params.values()))
    all_outputs = {param(i, False) for i in range(len(node.outputs))}
    primary_ok = low_type in allowed.get(primary, ())
    uses = [p for p in [*in_params.values(), *out_params.values()]]

    def role(p: str, is_input: bool) -> Role:
        if p not in allowed or low_type not in allowed[p]:
            return "fp32"
        if is_input and p not in all_outputs and uses.count(p) == 1:
            return "any"
        if p == primary:
            return "node" if primary_ok else "fp32"
        return "fp32"

    slots = [Slot(v, i, True, role(in_params[i], True)) for i, v in inputs]
    slots += [Slot(v, i, False, role(out_params[i], False)) for i, v in outputs]
    follows_node = any(s.role == "node" for s in slots) or any(
        s.role == "fp32" and (in_params[s.index] if s.is_input else out_params[s.index]) == primary for s in slots
    )
    if not follows_node:
        return NodeSlots(tuple(slots), True)  # nothing follows the node: its format is moot
    if not primary_ok:
        return NodeSlots(tuple(slots), False, f"ONNX {node.op_type} (opset {opset}) has no {low_type[7:-1]} form")
    return NodeSlots(tuple(slots), True)


def _all_fp32(inputs, outputs, why: str) -> NodeSlots:
    slots = [Slot(v, i, True, "fp32") for i, v in inputs] + [Slot(v, i, False, "fp32") for i, v in outputs]
    return NodeSlots(tuple(slots), False, why)
