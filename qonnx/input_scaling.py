"""AWQ's per-input-channel scales in the graph: divide a MatMul's input by ``s`` and multiply its
weight by ``s``, so that the float model computes the same function and the weight is easier to
quantize (``qonnx.weight_rounding``).

``fold_input_scales(model, nodes, s)`` takes MatMuls that read one input ``x`` (with constant
``[K, N]`` weights) and puts ``1/s`` where it costs nothing, in this order:

- ``mul-constant``: ``x = Mul(a, c)`` with ``c`` a constant broadcast along the last axis (an
  RMSNorm's weight once decomposed): ``c ← c / s``;
- ``normalization``: ``x`` is the output of ``LayerNormalization`` / ``RMSNormalization`` /
  ``SimplifiedLayerNormalization`` over the last axis with a constant scale (and bias): both ``/ s``;
- ``matmul-columns``: ``x`` comes from a MatMul with a constant weight ``P`` through ``Mul`` (either
  operand) and ``Div`` (numerator) only, each in the same channel: ``P[:, k] ← P[:, k] / s[k]``
  (``down_proj(silu(gate(h)) * up(h))``: up_proj's columns);
- ``inserted-mul`` (only with ``insert_mul=True``): a new ``Mul(x, 1/s)`` before the nodes, one more
  op at run time.

A fold at ``x``'s producer needs every reader of ``x`` among ``nodes`` (each is scaled), and every
value on a ``matmul-columns`` path read once. Then each node's weight ``W ← diag(s) W``. A constant
shared with other nodes is copied, not changed. Where nothing applies, ``Fold.kind`` is None and
``Fold.reason`` says why; the model is unchanged.

``scale_inputs(model, statistics, names, ...)`` does AWQ for a whole model: the named MatMuls grouped
by input (one ``s`` per group, searched on the sum of their errors), last group first (so that a
fold into an earlier layer's weight, up_proj's columns, happens before that layer is searched and
quantized), each folded and its statistics rescaled.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.weight_rounding import AWQ_ALPHAS, search_input_scales

logger = logging.getLogger(__name__)

__all__ = ["Fold", "InputScaling", "fold_input_scales", "find_fold", "scale_inputs"]

_NORMALIZATIONS = frozenset({"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"})
_PATH_DEPTH = 8  # ops walked back from x looking for the MatMul whose columns take 1/s


@dataclasses.dataclass(frozen=True)
class Fold:
    """Where ``1/s`` went: ``kind`` (None: nowhere, see ``reason``) and ``target``, the node whose
    constant took it (or the inserted Mul)."""

    kind: str | None
    target: str | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.kind is not None


@dataclasses.dataclass(frozen=True)
class _Plan:
    kind: str
    node: ir.Node
    index: int = 1  # the input of ``node`` holding the constant


def _weights_ok(nodes: Sequence[ir.Node], channels: int) -> str | None:
    for node in nodes:
        if node.op_type != "MatMul" or len(node.inputs) != 2:
            return f"{node.name} is not a MatMul"
        weight = qir.constant_array(node.inputs[1])
        if weight is None or weight.ndim != 2 or weight.shape[0] != channels:
            return f"{node.name} has no constant [{channels}, N] weight"
    return None


def _readers_all_in(value: ir.Value, nodes: Sequence[ir.Node]) -> bool:
    if value.is_graph_output():
        return False
    return all(any(user is node for node in nodes) and index == 0 for user, index in value.uses())


def _channel_constant(value: ir.Value | None, channels: int) -> np.ndarray | None:
    """A constant that broadcasts along the last axis only (``[K]``, ``[1, .., K]``, or one value)."""
    array = qir.constant_array(value)
    if array is None or array.dtype.kind != "f":
        return None
    if array.size == 1 or (array.ndim >= 1 and array.shape[-1] == channels and array.size == channels):
        return array
    return None


def _columns_path(value: ir.Value, channels: int, depth: int = 0) -> ir.Node | None:
    """The MatMul with a constant ``[M, K]`` weight that ``value`` is, up to ``Mul`` / ``Div`` ops
    each read once, or None."""
    producer = value.producer()
    if producer is None or depth > _PATH_DEPTH or producer.domain not in ("", "ai.onnx"):
        return None
    if depth and (len(value.uses()) != 1 or value.is_graph_output()):
        return None
    if producer.op_type == "MatMul":
        weight = qir.constant_array(producer.inputs[1])
        if weight is not None and weight.ndim == 2 and weight.shape[1] == channels and qir.constant_array(producer.inputs[0]) is None:
            return producer
        return None
    operands = {"Mul": (0, 1), "Div": (0,)}.get(producer.op_type, ())
    for index in operands:
        # The operand on the path has K channels because the MatMul at its end has K columns.
        operand = producer.inputs[index]
        found = _columns_path(operand, channels, depth + 1) if operand is not None else None
        if found is not None:
            return found
    return None


def _plan(nodes: Sequence[ir.Node], channels: int) -> _Plan | str:
    x = nodes[0].inputs[0]
    if any(node.inputs[0] is not x for node in nodes):
        return "the nodes do not read one input"
    problem = _weights_ok(nodes, channels)
    if problem:
        return problem
    if not _readers_all_in(x, nodes):
        return f"{x.name} is also read by other nodes or is a graph output"
    producer = x.producer()
    if producer is None:
        return f"{x.name} is a graph input"
    if producer.domain in ("", "ai.onnx") and producer.op_type == "Mul":
        constants = [i for i in (0, 1) if _channel_constant(producer.inputs[i], channels) is not None]
        if len(constants) == 1:
            return _Plan("mul-constant", producer, constants[0])
    if producer.op_type in _NORMALIZATIONS and producer.domain in ("", "ai.onnx") and len(producer.outputs) >= 1 and producer.outputs[0] is x:
        axis = producer.attributes.get_int("axis", -1)
        rank = len(x.shape) if x.shape is not None else None
        constant = [i for i in range(1, len(producer.inputs)) if producer.inputs[i] is not None]
        if (axis == -1 or (rank is not None and axis == rank - 1)) and all(
            qir.constant_array(producer.inputs[i]) is not None and qir.constant_array(producer.inputs[i]).shape[-1:] == (channels,) for i in constant
        ) and constant:
            return _Plan("normalization", producer)
    source = _columns_path(x, channels)
    if source is not None:
        return _Plan("matmul-columns", source)
    return f"{x.name} comes from {producer.op_type} {producer.name}: no constant to take 1/s exactly"


def find_fold(nodes: Sequence[ir.Node]) -> str | None:
    """The kind of fold ``fold_input_scales`` would make for ``nodes`` (without ``insert_mul``), or
    None; ``fold_input_scales`` says why not."""
    channels = _channels(nodes)
    plan = _plan(nodes, channels) if channels else "no constant weight"
    return plan.kind if isinstance(plan, _Plan) else None


def _channels(nodes: Sequence[ir.Node]) -> int | None:
    weight = qir.constant_array(nodes[0].inputs[1]) if len(nodes[0].inputs) == 2 else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _set_constant(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Input ``index`` of ``node`` becomes the constant ``array``: in place when only ``node`` reads
    that initializer, else a new initializer (a shared constant is not changed under its other readers)."""
    value = node.inputs[index]
    array = np.ascontiguousarray(array)
    if qir.is_constant_initializer(value) and len(value.uses()) == 1 and not value.is_graph_output():
        value.const_value = ir.tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    base = value.name if value is not None and value.name else f"{node.name}_input{index}"
    node.replace_input_with(index, qir.make_initializer(graph, f"{base}_scaled", array))


def fold_input_scales(model: ir.Model, nodes: Sequence[ir.Node], scales: np.ndarray, *, insert_mul: bool = False) -> Fold:
    """Divide the input of ``nodes`` (MatMuls reading one ``x``) by ``scales`` ``[K]`` and multiply their
    weights by it, exactly (module docstring); the float function is unchanged up to float32 rounding."""
    nodes = list(nodes)
    s = np.asarray(scales, np.float32)
    channels = _channels(nodes)
    if channels is None or channels != len(s):
        return Fold(None, reason=f"{nodes[0].name}: no constant weight of {len(s)} rows")
    graph = nodes[0].graph or model.graph
    plan = _plan(nodes, channels)
    if isinstance(plan, str) and not insert_mul:
        return Fold(None, reason=plan)
    if isinstance(plan, str):
        x = nodes[0].inputs[0]
        inverse = qir.make_initializer(graph, f"{x.name}_awq_inverse_scales", (np.float32(1) / s).astype(np.float32))
        mul = ir.node("Mul", [x, inverse], name=qir.unique_name(graph, f"{nodes[0].name}_awq_scale"))
        out = mul.outputs[0]
        out.name = qir.unique_name(graph, f"{x.name}_awq_scaled")
        if x.dtype is not None:
            out.dtype, out.shape = x.dtype, x.shape
        uses = [(user, index) for user, index in x.uses() if any(user is n for n in nodes)]
        qir.insert_after_producer(graph, x, mul)
        qir.redirect(uses, out)
        fold = Fold("inserted-mul", mul.name, reason=plan)
    else:
        target = plan.node
        if plan.kind == "mul-constant":
            constant = qir.constant_array(target.inputs[plan.index]).astype(np.float32)
            shape = constant.shape if constant.size == channels else (channels,)
            _set_constant(graph, target, plan.index, (constant.reshape(-1) / s).reshape(shape).astype(constant.dtype))
        elif plan.kind == "normalization":
            for index in range(1, len(target.inputs)):
                if target.inputs[index] is not None:
                    constant = qir.constant_array(target.inputs[index])
                    _set_constant(graph, target, index, (constant / s).astype(constant.dtype))
        else:  # matmul-columns
            weight = qir.constant_array(target.inputs[1])
            _set_constant(graph, target, 1, (weight / s[None, :]).astype(weight.dtype))
        fold = Fold(plan.kind, target.name)
    for node in nodes:
        weight = qir.constant_array(node.inputs[1])
        _set_constant(graph, node, 1, (weight * s[:, None]).astype(weight.dtype))
    return fold


@dataclasses.dataclass(frozen=True)
class InputScaling:
    """What ``scale_inputs`` did for one MatMul: ``fold`` (falsy: not scaled, ``fold.reason``),
    ``scales`` and ``alpha`` of its group, the group's output errors with these scales and with none
    (RTN), and the group's node names."""

    fold: Fold
    scales: np.ndarray | None = None
    alpha: float | None = None
    error: float | None = None
    rtn_error: float | None = None
    group: tuple[str, ...] = ()


def scale_inputs(
    model: ir.Model,
    statistics,
    names: Iterable[str] | None = None,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    insert_mul: bool = False,
    alphas: Sequence[float] = AWQ_ALPHAS,
    formats: Mapping[str, tuple[int, int, bool]] | None = None,
) -> dict[str, InputScaling]:
    """AWQ on the MatMuls ``names`` of ``model`` (default: every one ``statistics`` covers).

    ``statistics``: a ``WeightInputStatistics`` (node name → ``InputStatistics``, with
    ``input_scaled``). Groups of named MatMuls reading one input, last first: a group with no exact
    fold (and ``insert_mul`` off) is left alone, with the reason; otherwise one ``s`` is searched for
    it (``search_input_scales``), ``1/s`` folded (``fold_input_scales``), its weights become
    ``diag(s) W`` and its statistics those of ``x / s``. A group whose best alpha is 0 is left alone.
    ``formats``: node name to ``(bits, block_size, symmetric)`` where a node's differs from the
    arguments (a plan's 8-bit lm_head); a group is searched with its first node's.
    """
    by_name = {node.name: node for node in model.graph}
    wanted = list(names) if names is not None else list(statistics)
    position = {node.name: i for i, node in enumerate(model.graph)}
    groups: dict[int, list[ir.Node]] = {}
    for name in wanted:
        node = by_name.get(name)
        if node is None or node.op_type != "MatMul":
            raise ValueError(f"no MatMul named {name!r} in the main graph")
        groups.setdefault(id(node.inputs[0]), []).append(node)
    results: dict[str, InputScaling] = {}
    for group in sorted(groups.values(), key=lambda g: -max(position[n.name] for n in g)):
        names_of = tuple(n.name for n in group)
        channels = _channels(group)
        plan = _plan(group, channels) if channels else "no constant weight"
        if isinstance(plan, str) and not insert_mul:
            logger.info("AWQ: %s not scaled: %s", ", ".join(names_of), plan)
            for name in names_of:
                results[name] = InputScaling(Fold(None, reason=plan), group=names_of)
            continue
        stats = statistics[group[0].name]
        weights = [qir.constant_array(n.inputs[1]).astype(np.float32) for n in group]
        group_bits, group_block, group_symmetric = (formats or {}).get(group[0].name, (bits, block_size, symmetric))
        search = search_input_scales(weights, stats, bits=group_bits, block_size=group_block, symmetric=group_symmetric, alphas=alphas)
        if search.alpha == 0:
            fold = Fold(None, reason="no scaling lowers the error (alpha 0)")
        else:
            fold = fold_input_scales(model, group, search.scales, insert_mul=insert_mul)
            renamed = group[0].inputs[0].name if fold.kind == "inserted-mul" else None
            statistics.input_scaled(list(names_of), search.scales, tensor=renamed)
        kind = "weight-aware " if search.weighted else ""
        logger.info("AWQ: %s %salpha %.2f, error %.4g (RTN %.4g), %s", ", ".join(names_of), kind, search.alpha, search.error, search.rtn_error, fold.kind or fold.reason)
        for name in names_of:
            results[name] = InputScaling(fold, search.scales if fold else None, search.alpha, search.error, search.rtn_error, names_of)
    return results
