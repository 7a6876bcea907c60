"""Check any QDQ model against a target's rules (``qonnx.qdq_rules``) and list the violations.

Works on models made by any tool: it reads only QuantizeLinear/DequantizeLinear nodes, their scales
and zero points, and the ops around them. ``tensorrt``: the graph itself is read (structure, no
session). ``cpu``: onnxruntime's CPU provider optimizes the model and ``qonnx.fusion.check_fusion``
says which quantized nodes it left unfused.

A *weight* Q/DQ quantizes a constant: a DequantizeLinear of a constant, or the QuantizeLinear of a
constant and the DequantizeLinear after it. Every other Q/DQ quantizes an *activation*.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.qdq_rules import TRT_FLOAT_OPS, TRT_QUANT_DTYPES, TRT_WEIGHTED_OPS, trt_weight_axis

logger = logging.getLogger(__name__)

__all__ = ["Violation", "check_model", "TARGETS"]

TARGETS = ("tensorrt", "cpu")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule: its id, the nodes involved and what is wrong with them."""

    rule: str
    nodes: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "nodes": list(self.nodes), "message": self.message}


def _name(node: ir.Node) -> str:
    return node.name or f"<{node.op_type} without a name>"


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    producer = value.producer() if value is not None else None
    return producer if producer is not None and producer.op_type == op_type else None


def _consumers(value: ir.Value) -> list[ir.Node]:
    return [user for user, _ in value.uses()]


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _is_weight(node: ir.Node) -> bool:
    """Whether a Q/DQ quantizes a constant (see the module docstring)."""
    source = node.inputs[0]
    if qir.constant_array(source) is not None:
        return True
    quantize = _producer(source, "QuantizeLinear") if node.op_type == "DequantizeLinear" else None
    return quantize is not None and qir.constant_array(quantize.inputs[0]) is not None


def _quant_dtype(node: ir.Node) -> ir.DataType | None:
    """The integer (or float8) side's type: the zero point's, else the quantized value's; a Q without
    a zero point or an ``output_dtype`` makes UINT8 (ONNX QuantizeLinear)."""
    zero_point = _input(node, 2)
    if zero_point is not None and zero_point.dtype is not None:
        return zero_point.dtype
    if zero_point is not None and zero_point.const_value is not None:  # (an initializer made in memory carries its type only there)
        return zero_point.const_value.dtype
    quantized = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    if quantized.dtype is not None:
        return quantized.dtype
    if node.op_type == "QuantizeLinear":
        output_dtype = node.attributes.get("output_dtype")
        return ir.DataType(output_dtype.as_int()) if output_dtype is not None and output_dtype.as_int() else ir.DataType.UINT8
    return None


def _params(node: ir.Node) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Scale and zero point as arrays (None where not constant; a missing zero point is 0)."""
    scale = qir.constant_array(_input(node, 1))
    zero_value = _input(node, 2)
    zero_point = np.zeros(1) if zero_value is None else qir.constant_array(zero_value)
    return scale, zero_point


def _axis(node: ir.Node, rank: int | None) -> int:
    attr = node.attributes.get("axis")
    axis = 1 if attr is None else attr.as_int()
    return axis + rank if axis < 0 and rank is not None else axis


class _TensorrtChecker:
    def __init__(self, model: ir.Model):
        self.nodes = list(qir.all_nodes(model))
        self.violations: list[Violation] = []

    def add(self, rule: str, nodes: Iterable[ir.Node], message: str) -> None:
        self.violations.append(Violation(rule, tuple(_name(n) for n in nodes), message))

    def run(self) -> list[Violation]:
        for node in self.nodes:
            if node.op_type in _QDQ and node.domain in ("", "ai.onnx"):
                self.symmetric(node)
                self.per_tensor_activation(node)
            if node.op_type in TRT_WEIGHTED_OPS:
                self.weight_axis(node)
                self.weighted_inputs(node)
                self.output_qdq(node)
            elif node.op_type == "Concat":
                self.concat_scales(node)
            elif node.op_type in TRT_FLOAT_OPS:
                self.float_op(node)
        return self.violations

    def symmetric(self, node: ir.Node) -> None:
        """trt-symmetric: signed type, zero point 0."""
        dtype = _quant_dtype(node)
        if dtype == ir.DataType.INT32:
            self.add("trt-symmetric", [node], "an INT32 value (a bias) behind a DequantizeLinear: TensorRT dequantizes INT8, FP8 or INT4 only (keep the bias float)")
            return
        if dtype is not None and dtype not in TRT_QUANT_DTYPES:
            self.add("trt-symmetric", [node], f"{node.op_type} uses {dtype.name}; TensorRT takes INT8 or FP8 E4M3 with zero point 0")
            return
        _, zero_point = _params(node)
        if zero_point is not None and np.any(zero_point.astype(np.float64) != 0):
            values = np.unique(zero_point)
            shown = ", ".join(str(v) for v in values[:4]) + (", ..." if values.size > 4 else "")
            self.add("trt-symmetric", [node], f"{node.op_type} has zero point {shown}; TensorRT's quantization is symmetric (zero point 0)")

    def per_tensor_activation(self, node: ir.Node) -> None:
        """trt-per-tensor-activations."""
        scale, _ = _params(node)
        if scale is not None and scale.size > 1 and not _is_weight(node):
            self.add("trt-per-tensor-activations", [node], f"{node.op_type} quantizes an activation with {scale.size} scales (axis {_axis(node, None)}); activations take one scale")

    def weight_dequantize(self, node: ir.Node) -> ir.Node | None:
        dequantize = _producer(_input(node, 1), "DequantizeLinear")
        return dequantize if dequantize is not None and _is_weight(dequantize) else None

    def weight_axis(self, node: ir.Node) -> None:
        """trt-weight-axis: per-channel scales along the output channels (per-tensor weights pass)."""
        dequantize = self.weight_dequantize(node)
        if dequantize is None:
            return
        scale, _ = _params(dequantize)
        if scale is None or scale.size <= 1:
            return
        shape = dequantize.outputs[0].shape or dequantize.inputs[0].shape
        rank = len(shape) if shape is not None else None
        if rank is None:
            weight = qir.constant_array(dequantize.inputs[0])
            rank = weight.ndim if weight is not None else None
        if rank is None:
            return
        expected = trt_weight_axis(node, rank)
        actual = _axis(dequantize, rank)
        if expected is not None and actual != expected:
            self.add("trt-weight-axis", [dequantize, node], f"{node.op_type} weight quantized per channel along axis {actual}; TensorRT expects axis {expected} (output channels)")

    def weighted_inputs(self, node: ir.Node) -> None:
        """trt-weighted-inputs: both data operands quantized, or neither. An operand made by an op
        that stays in higher precision (Softmax in attention) is left out."""
        operands = [v for v in node.inputs[:2] if v is not None]
        quantized = [_producer(v, "DequantizeLinear") is not None for v in operands]
        if not any(quantized) or all(quantized):
            return
        missing = [v for v, q in zip(operands, quantized) if not q]
        if all(v.producer() is not None and v.producer().op_type in TRT_FLOAT_OPS for v in missing):
            return
        names = ", ".join(repr(v.name) for v in missing)
        self.add("trt-weighted-inputs", [node], f"{node.op_type} has a Q/DQ on one operand but not on {names}: TensorRT runs it in float")

    def quantized_consumer(self, node: ir.Node) -> bool:
        """A node that reads INT8 in TensorRT: a weighted op, an op whose output is quantized, or
        a residual Add (its other input comes from a weighted op or a DequantizeLinear)."""
        if node.op_type in TRT_WEIGHTED_OPS:
            return True
        if any(user.op_type == "QuantizeLinear" for out in node.outputs for user in _consumers(out)):
            return True
        return node.op_type == "Add"

    def output_qdq(self, node: ir.Node) -> None:
        """trt-no-output-qdq: a Q on a weighted op's output whose dequantized value only float ops read."""
        for quantize in _consumers(node.outputs[0]):
            if quantize.op_type != "QuantizeLinear":
                continue
            readers = [user for dequantize in _consumers(quantize.outputs[0]) if dequantize.op_type == "DequantizeLinear" for user in _consumers(dequantize.outputs[0])]
            if readers and not any(self.quantized_consumer(user) for user in readers):
                kinds = ", ".join(sorted({user.op_type for user in readers}))
                self.add("trt-no-output-qdq", [node, quantize], f"the output of {node.op_type} is quantized but only float ops read it ({kinds})")

    def concat_scales(self, node: ir.Node) -> None:
        """trt-concat-shared-scale."""
        dequantizers = [d for v in node.inputs if (d := _producer(v, "DequantizeLinear")) is not None]
        params = [_params(d) for d in dequantizers]
        known = [(d, s, z) for d, (s, z) in zip(dequantizers, params) if s is not None and z is not None]
        if len(known) < 2:
            return
        _, scale0, zero0 = known[0]
        if any(s.shape != scale0.shape or not np.array_equal(s, scale0) or not np.array_equal(z.astype(np.float64), zero0.astype(np.float64)) for _, s, z in known[1:]):
            scales = ", ".join(f"{float(np.ravel(s)[0]):.6g}" for _, s, _ in known)
            self.add("trt-concat-shared-scale", [node, *(d for d, _, _ in known)], f"Concat inputs are dequantized with different scales or zero points ({scales})")

    def float_op(self, node: ir.Node) -> None:
        """trt-float-ops: not a DequantizeLinear before and a QuantizeLinear after (the op itself quantized)."""
        read = any(_producer(v, "DequantizeLinear") is not None for v in node.inputs if v is not None)
        written = [user for out in node.outputs for user in _consumers(out) if user.op_type == "QuantizeLinear"]
        if read and written:
            self.add("trt-float-ops", [node, *written], f"{node.op_type} is quantized (Q/DQ on its inputs and its output); TensorRT keeps it in higher precision")


def _check_cpu(model: ir.Model) -> list[Violation]:
    from qonnx.fusion import check_fusion

    fusion = check_fusion(model)
    violations = [
        Violation("cpu-unfused-weighted", (name,), "reads a DequantizeLinear output after onnxruntime's CPU optimizations: no integer kernel took it")
        for name in fusion["unfused"]
    ]
    violations += [
        Violation("cpu-float-island", (name,), f"{op_type} runs in float between a DequantizeLinear and a QuantizeLinear (a float round trip)")
        for name, op_type in fusion["float_island_nodes"]
    ]
    return violations


def check_model(model: ir.Model | str | os.PathLike, target: str) -> list[Violation]:
    """The violations of ``target``'s rules (``qonnx.qdq_rules``) in ``model``, in graph order."""
    if target not in TARGETS:
        raise ValueError(f"unknown check target {target!r}; known: {', '.join(TARGETS)}")
    if not isinstance(model, ir.Model):
        model = qir.load(model)
    if target == "cpu":
        return _check_cpu(model)
    return _TensorrtChecker(model).run()
