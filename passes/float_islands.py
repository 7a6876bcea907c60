"""FP32 islands: the nodes that FP16 or BF16 would break stay FP32, each with the evidence why.

Before ``convert-float`` turns a graph into FP16/BF16, this pass looks at every node the policy
put in the low format and keeps it FP32 when one of these holds (the first that applies is the
reason recorded in the node's spec and in the plan):

1. it holds a subgraph (If, Loop, Scan): the bodies are left FP32 as a whole;
2. it cannot be converted: a custom domain, or the ONNX schema of the model's opset has no
   float16/bfloat16 form for it (Range; Conv before opset 22 for BF16), or its output type is set by
   a ``dtype`` attribute;
3. the target provider has no kernel for it in that format (``Target.has_kernel``);
4. a constant it reads does not survive the format: a value beyond the format's maximum divided
   by ``margin`` (``-3.4e38`` attention masks, ``1e5`` clamps), or values that flush to zero
   (an ``epsilon`` of ``1e-12`` in FP16);
5. with calibration ranges: a tensor it reads or writes reaches ``max / margin`` on the
   calibration data, or is never above the smallest normal number (FP16 would keep no precision);
6. without calibration ranges, the op kinds known to overflow in FP16: Exp, Pow with an exponent
   of 2 or more (the variance of a decomposed LayerNorm), sums over ``long_reduction`` or more
   elements (or an unknown number); and then every node that reads what such a node makes
   ("may exceed FP16"), until an op whose output is bounded whatever its input (Softmax, Sigmoid,
   Tanh, Erf, Sqrt, Log…): a masked Softmax, the tail of a LayerNorm variance;
7. in either mode, reductions over ``long_reduction`` or more elements (a 16-bit accumulator loses
   the small terms) and, for BF16, where its 8-bit mantissa is the risk: the ops that turn its
   rounding into large errors (Exp, Pow, Log) and sums of two computed tensors (a transformer's
   residual stream plus a small update loses the update's low bits: MiniLM goes from 37.7 to
   40.5 dB with them FP32).

The margin is head-room for inputs beyond what calibration saw: 4 (two bits) by default. The
pass changes only node specs and the plan; ``convert-float`` then places the Casts.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.errors import UserError
from qonnx.float_formats import FloatFormat, get_format
from qonnx.float_slots import float_slots
from qonnx.pipeline import Context, Pass, Record, analysis, register
from qonnx.policy import node_spec, record_formats, set_node_spec
from qonnx.targets import FLOAT_PRECISIONS, get_target

logger = logging.getLogger(__name__)

__all__ = ["FloatIslands", "float_tensors_to_observe"]

_SUMS = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceProd"})
_REDUCTIONS = _SUMS | {"ReduceMean"}
# Ops whose output stays within FP16's range whatever the input's magnitude (Sqrt and Log: of
# anything FP32 can hold, the result is below 2e19 / 89; in practice of a variance of
# FP16-representable values, below 65504).
_BOUNDED = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid", "Tanh", "Erf", "Sqrt", "Log", "Sin", "Cos", "Sign"})
_DTYPE_ATTRIBUTE_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "Multinomial", "Bernoulli"})
_BF16_IMPRECISE = frozenset({"Exp", "Pow", "Log"})


def _low_nodes(model: ir.Model, precision: str) -> list[ir.Node]:
    return [n for n in model.graph if node_spec(n.metadata_props).format == precision]


@analysis("float-tensors", requires=("plan",))
def _float_tensors(model: ir.Model, context: Context) -> list[str]:
    """The ``float-tensors`` analysis: ``float_tensors_to_observe``."""
    return float_tensors_to_observe(model)


def float_tensors_to_observe(model: ir.Model) -> list[str]:
    """Names of the FP32 tensors that nodes planned in FP16/BF16 read or write (for calibration)."""
    low = [node for node in model.graph if node_spec(node.metadata_props).format in FLOAT_PRECISIONS]
    values = [v for node in low for v in [*node.inputs, *node.outputs]]
    names = [v.name for v in values if v is not None and v.dtype == ir.DataType.FLOAT and v.name and not qir.is_constant_initializer(v)]
    return list(dict.fromkeys(names))


def _reduced_elements(node: ir.Node) -> int | None:
    """How many elements each output of a Reduce* node sums; None when unknown."""
    data = node.inputs[0]
    if data.shape is None:
        return None
    dims = list(data.shape)
    axes = node.attributes.get_ints("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = qir.constant_array(node.inputs[1])
        if constant is None:
            return None
        axes = [int(a) for a in constant.ravel()]
    if not axes:
        axes = [] if node.attributes.get_int("noop_with_empty_axes") else list(range(len(dims)))
    count = 1
    for axis in axes:  # (axes are given only for an input of rank 1 or more)
        dim = dims[axis % len(dims)]
        if not isinstance(dim, int):
            return None
        count *= dim
    return count


class _ConstantVerdicts:
    """Whether each constant survives the format, computed once per initializer."""

    def __init__(self, fmt: FloatFormat, margin: float):
        self.fmt, self.margin = fmt, margin
        self.cache: dict[str, str | None] = {}

    def __call__(self, value: ir.Value) -> str | None:
        if value.name not in self.cache:
            self.cache[value.name] = self._judge(value)
        return self.cache[value.name]

    def _judge(self, value: ir.Value) -> str | None:
        array = np.abs(value.const_value.numpy())  # an FP32 slot's constant: float32 already
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            return None
        limit = self.fmt.max / self.margin
        peak = float(finite.max())
        if peak > limit:
            return f"constant {value.name} holds |x| up to {peak:.3g}, beyond {self.fmt.name.upper()}'s {self.fmt.max:.5g} / {self.margin:g}"
        nonzero = finite[finite > 0].astype(np.float64)
        flushed = nonzero < self.fmt.smallest_subnormal
        # It matters when the vanishing values carry a share of the constant (an epsilon, a scale
        # factor), not when they are denormal leftovers beside weights a million times larger.
        if flushed.any() and np.square(nonzero[flushed]).sum() > 1e-6 * np.square(nonzero).sum():
            smallest = float(nonzero[flushed].min())
            return f"constant {value.name} holds {smallest:.3g}, which {self.fmt.name.upper()} flushes to zero"
        return None


@dataclasses.dataclass
class FloatIslandsRecord(Record):
    """How many nodes the rules kept FP32, and on what evidence."""

    report_key = "float_islands"
    precision: str
    evidence: str
    margin: float
    fp32_nodes: int


@register
class FloatIslands(Pass):
    name = "float-islands"
    summary = "keep FP32 the nodes that FP16/BF16 would break (ranges, constants, risky ops, kernels), with reasons"
    preserves = frozenset({"shapes", "ranges"})
    analyses_required = frozenset({"plan"})
    analyses_produced = frozenset({"plan"})  # the nodes it keeps FP32, with their reasons

    def __init__(self, context=None, *, margin: float = 4.0, long_reduction: int = 4096, precision: str | None = None) -> None:
        super().__init__(context)
        if precision is not None and precision not in FLOAT_PRECISIONS:
            raise UserError(f"float-islands: precision must be fp16 or bf16, not {precision!r}")
        self.margin, self.long_reduction, self.precision = margin, long_reduction, precision

    def requires(self, model: ir.Model) -> None:
        if (self.precision or self.context.precision) not in FLOAT_PRECISIONS:
            raise UserError(f"float-islands is for --precision fp16 or bf16, not {self.context.precision}")
        if self.margin < 1:
            raise UserError(f"float-islands(margin) must be at least 1, not {self.margin}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        precision = self.precision or self.context.precision
        fmt = get_format(precision)
        label = precision.upper()
        target = get_target(self.context.target)
        ranges = self.context.analyses.get("ranges")
        ranges = ranges if ranges is not None and ranges.ranges else None
        constants = _ConstantVerdicts(fmt, self.margin)
        opset = model.opset_imports.get("")  # None only in a model without standard ops, which need no schema
        limit = fmt.max / self.margin
        tainted: dict[ir.Value, str] = {}  # without ranges: tensors that may exceed the format
        decisions: dict[str, dict] = {}

        for node in _low_nodes(model, precision):
            slots = float_slots(node, opset, fmt.onnx_type)
            reason = None
            if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
                reason = "holds a subgraph: kept FP32 as a whole"
            elif not slots.convertible:
                reason = slots.why_not
            elif node.op_type in _DTYPE_ATTRIBUTE_OPS:
                reason = "its output type is set by its dtype attribute"
            elif not any(s.role == "node" for s in slots.slots):
                continue  # Shape, Cast to int…: the format of the node is moot
            elif not target.has_kernel(node.op_type, precision):
                reason = f"no {label} kernel for {node.op_type} in {target.providers[0]}"
            elif ranges is not None:
                found = self._evidence(node, slots, fmt, constants)
                reason = found[0] if found else self._observed(slots, fmt, ranges, limit)
            else:
                found = self._evidence(node, slots, fmt, constants) or self._by_kind(node, slots, fmt, tainted)
                if found is not None:
                    reason, overflow = found
                    if overflow and node.op_type not in _BOUNDED:
                        for slot in slots.outputs():
                            tainted.setdefault(slot.value, f"made by {node.name}")
            if reason is not None:
                decisions[node.name] = {"format": "float", "reason": reason}

        # A node decided here is FP32 from now on, so a second run decides nothing: idempotent.
        for node in model.graph:
            if node.name in decisions:
                set_node_spec(node, decisions[node.name])
        if decisions:
            record_formats(model, decisions)
        evidence = "calibration ranges" if ranges is not None else "constants and op kinds (no calibration data)"
        self.publish(FloatIslandsRecord(precision, evidence, self.margin, len(decisions)))
        return ir.passes.PassResult(model, bool(decisions))

    def _evidence(self, node, slots, fmt, constants) -> tuple[str, bool] | None:
        """Why ``node`` must stay FP32 for its constants, reductions or BF16 rounding, and whether
        the reason is overflow (which taints what it makes when there are no ranges)."""
        label = fmt.name.upper()
        op = node.op_type
        node_values = [s.value for s in slots.slots if s.role == "node"]
        for value in node_values:
            if qir.is_constant_initializer(value) and (why := constants(value)):
                return why, "flushes" not in why
        if op in _REDUCTIONS:
            count = _reduced_elements(node)
            if count is not None and count >= self.long_reduction:
                return f"{op} over {count} elements: a {label} accumulator loses the small terms", op in _SUMS
        if fmt.name == "bf16" and op in _BF16_IMPRECISE:
            return f"{op} turns BF16's rounding (2^-9 relative) into a much larger error", False
        if fmt.name == "bf16" and op in ("Add", "Sub") and not any(qir.is_constant_initializer(v) for v in node_values):
            # A residual stream plus a small update: the update's low bits fall off BF16's 8-bit mantissa.
            return f"{op} of two computed tensors (a residual sum): BF16's 8-bit mantissa drops the smaller one's low bits", False
        return None

    def _observed(self, slots, fmt, ranges, limit) -> str | None:
        """With calibration ranges: a tensor the node reads or writes that the format cannot hold."""
        label = fmt.name.upper()
        for value in (s.value for s in slots.slots if s.role == "node"):
            if value.name not in ranges or qir.is_constant_initializer(value):
                continue
            r = ranges[value.name]
            if r.nonfinite:
                return f"{value.name} holds {r.nonfinite} infinite or fill values (masks) on the calibration data"
            peak = r.observed_max_abs  # (the extremes seen, not a clipped calibration range)
            if peak > limit:
                return f"{value.name} reaches |x| = {peak:.3g} on the calibration data, beyond {label}'s {fmt.max:.5g} / {self.margin:g}"
            if 0 < peak < fmt.smallest_normal:
                return f"{value.name} stays below {peak:.3g} on the calibration data: {label} keeps no precision under {fmt.smallest_normal:.2g}"
        return None

    def _by_kind(self, node, slots, fmt, tainted) -> tuple[str, bool] | None:
        """Without calibration ranges: what the op kind says, and what it reads (``tainted``)."""
        label = fmt.name.upper()
        op = node.op_type
        for slot in slots.inputs("node"):
            if slot.value in tainted:
                return f"reads {slot.value.name}, which may exceed {label} ({tainted[slot.value]})", True
        if fmt.name != "fp16":
            return None
        if op == "Exp":
            return f"Exp overflows FP16 above x = {math.log(fmt.max):.1f} and no calibration ranges bound its input", True
        if op == "Pow":
            exponent = qir.constant_array(node.inputs[1])  # Pow always has its two inputs
            if exponent is None or float(np.max(exponent)) >= 2:
                shown = "a variable exponent" if exponent is None else f"exponent {float(np.max(exponent)):g}"
                largest = fmt.max ** (1 / max(float(np.max(exponent)), 2.0)) if exponent is not None else fmt.max ** 0.5
                return f"Pow with {shown} overflows FP16 for |x| > {largest:.0f} (the variance of a LayerNorm) and no calibration ranges bound its input", True
        if op in _SUMS and _reduced_elements(node) is None:
            return f"{op} over an unknown number of elements may exceed FP16 and no calibration ranges bound it", True
        return None
