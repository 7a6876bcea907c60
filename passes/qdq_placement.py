"""QDQ placement: which tensors get a QuantizeLinear/DequantizeLinear pair, and which share scales.

onnxruntime fuses ``DQ → op → Q`` groups into integer kernels; a Q/DQ pair that no group uses
costs a float round trip and buys nothing. Placement therefore follows the target's three lists
of ops (see ``qonnx.targets``):

* **weighted** ops (Conv, Gemm, MatMul…): activation inputs are quantized with their calibrated
  ranges; the output too when the target fuses the output Q (``Target.quantize_outputs``);
* **integer** ops (Add, Mul, Concat, Sigmoid, GlobalAveragePool… where onnxruntime has a QLinear
  kernel): the same, so that ``Conv → Sigmoid → Mul`` becomes an integer chain instead of float
  islands between quantized convolutions;
* **passthrough** ops (Reshape, Transpose, MaxPool, Slice, Resize…), which only move or select
  values: when their data input is quantized, their outputs get the *same* scale and zero point
  (onnxruntime drops such a ``DQ → op → Q`` group and moves int8 data), never a new calibration.

Tensors joined by a passthrough op, and the inputs and output of a quantized Concat, form one
*scale group*: every member is quantized with the union of the members' calibrated ranges, so
a Concat copies bytes instead of requantizing. After Relu or Clip(0, …) the clamp's output is
quantized in place of the op's (see ``output_to_quantize``).

The tensorrt target adds its own placement rules, each a field of ``Target`` (``qonnx.targets``):
only the skip inputs of residual Adds are quantized (``residual_adds``, ``qonnx.graph_roles``); an
integer op is worth quantizing when a quantized op reads its output through ``transparent_ops``
(Relu-like activations and data movement, which TensorRT fuses or commutes); pooling ops share
their input's scale (``shared_scale_ops``); and no output of a weighted op takes a Q/DQ
(``quantize_outputs``).

A tensor that already has a DequantizeLinear producer (a model quantized before) is left alone.
Recurrent ops (LSTM, GRU, RNN) in INT8 get their weights stored as integers and no activation
Q/DQ: no kernel would consume one.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.graph_roles import residual_skip_inputs
from qonnx.pipeline import Context, analysis
from qonnx.policy import QuantSpec, node_spec
from qonnx.targets import Target, get_target

__all__ = ["Placement", "plan_placement", "output_to_quantize", "is_dequantized", "is_float_constant", "quantized_nodes"]


is_float_constant = qir.is_float_constant
is_dequantized = qir.is_dequantized


def _is_float(value: ir.Value) -> bool:
    return value.dtype in (None, ir.DataType.FLOAT)  # None: not inferred, FP32 in these graphs


def quantized_nodes(model: ir.Model) -> list[tuple[ir.Node, QuantSpec]]:
    return [(n, s) for n in model.graph if (s := node_spec(n.metadata_props)).quantized]


def _absorbs_clamp(node: ir.Node) -> bool:
    """Relu, or Clip with a constant lower bound >= 0: a UINT8 Q right after it clamps the same."""
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip" and len(node.inputs) > 1 and node.inputs[1] is not None:
        low = qir.constant_array(node.inputs[1])
        return low is not None and low.size == 1 and float(low) >= 0
    return False


def output_to_quantize(node: ir.Node, spec: QuantSpec) -> ir.Value:
    """The tensor that carries the node's quantized output.

    ``Conv → Relu`` (or ``Clip(0, 6)``) is quantized after the clamp: onnxruntime removes a Relu/Clip
    that feeds a UINT8 QuantizeLinear whose range starts at 0 and fuses ``DQ → Conv → Q`` into one
    QLinearConv, and the clamped range wastes no codes on negative values.
    """
    out = node.outputs[0]
    uses = list(out.uses())
    if spec.symmetric_activations or out.is_graph_output() or len(uses) != 1:
        return out
    user = uses[0][0]
    if uses[0][1] == 0 and _absorbs_clamp(user) and user.graph is node.graph:
        return user.outputs[0]
    return out


def activation_inputs(node: ir.Node, target: Target) -> list[int]:
    """Indices of the inputs of a weighted or integer op that are quantized as activations (of a
    residual Add, with ``Target.residual_adds``, only its skip inputs: ``qonnx.graph_roles``)."""
    if node.op_type in target.weighted_ops:
        candidates = [0, 1]
    elif node.op_type == "Add" and target.residual_adds:
        candidates = residual_skip_inputs(node, target) or []
    elif node.op_type in ("Add", "Mul", "Concat"):
        candidates = range(len(node.inputs))
    else:
        candidates = [0]
    # (Every weighted op has at least two inputs, every other op at least one.)
    return [i for i in candidates if _is_float(node.inputs[i]) and not node.inputs[i].is_initializer()]


def constant_operands(node: ir.Node) -> list[int]:
    """Float constant inputs of Add/Mul: quantized per tensor in the activation type (QLinearAdd/Mul want both sides quantized)."""
    if node.op_type not in ("Add", "Mul"):
        return []
    return [i for i, v in enumerate(node.inputs) if is_float_constant(v)]


def _integer_op_usable(node: ir.Node) -> bool:
    """Concat needs every input quantized with the shared scale: a constant input would break the group."""
    if node.op_type == "Concat":
        return all(_is_float(v) and not v.is_initializer() for v in node.inputs)
    return True


def _active_integer_ops(nodes: list[tuple[ir.Node, QuantSpec]], target: Target) -> set[ir.Node]:
    """The integer ops worth quantizing: those whose output reaches a quantized consumer.

    An integer kernel needs a Q on its output; when every reader is float (a residual Add feeding
    LayerNorm, the model's last Add), that Q would only add rounding, so the op stays float.
    Readers are followed through passthrough ops. Visited in reverse graph order, so every
    reader is decided before its producer.
    """
    static = {node for node, spec in nodes if not spec.dynamic and node.op_type not in target.recurrent_ops}
    wants: dict[ir.Node, bool] = {}
    active: set[ir.Node] = set()
    through: dict[ir.Node, bool] = {}

    def reader_wants_quantized(user: ir.Node) -> bool:
        if user not in static:
            if user.op_type in target.transparent_ops:  # (Conv + Add + Relu: TensorRT fuses the Relu)
                if user not in through:
                    through[user] = False  # (a cycle cannot happen in a DAG; this only guards recursion)
                    through[user] = any(reader_wants_quantized(u) for out in user.outputs for u, _ in out.uses())
                return through[user]
            return False  # float, or quantizing its own inputs at run time
        if user.op_type in target.weighted_ops:
            return True
        return wants.get(user, False)  # decided already: readers come later in the graph

    for node, _ in reversed(nodes):
        if node.op_type in target.weighted_ops:
            continue
        readers = [user for out in node.outputs for user, _ in out.uses()]
        wanted = any(reader_wants_quantized(user) for user in readers)
        if node.op_type in target.integer_ops:
            wanted = wanted and _integer_op_usable(node)  # an integer op runs quantized or not at all
            if wanted:
                active.add(node)
        wants[node] = wanted
    return active


@dataclasses.dataclass
class Placement:
    """Tensors to quantize, in graph order, and their scale groups.

    ``calibrated``: tensors whose range is observed; ``dynamic``: activations of nodes with a
    dynamic spec, quantized at run time for those nodes only; ``passthrough``: tensors quantized with
    the group's parameters only (outputs of passthrough ops); ``group_of``: tensor → group root and
    ``by_group`` its inverse;
    ``spec_of``: tensor → the spec it is quantized under; ``tables``: group root → the constant
    table (a Gather's data, e.g. a word embedding) whose parameters the group takes.
    """

    calibrated: list[str] = dataclasses.field(default_factory=list)
    dynamic: list[str] = dataclasses.field(default_factory=list)
    passthrough: list[str] = dataclasses.field(default_factory=list)
    group_of: dict[str, str] = dataclasses.field(default_factory=dict)
    spec_of: dict[str, QuantSpec] = dataclasses.field(default_factory=dict)
    tables: dict[str, str] = dataclasses.field(default_factory=dict)
    by_group: dict[str, list[str]] = dataclasses.field(default_factory=dict, repr=False)

    def members(self, name: str) -> list[str]:
        """The tensors that share ``name``'s scale and zero point (``name`` alone when it has no group)."""
        return self.by_group.get(self.group_of.get(name, name), [name])


class _Groups:
    """Union-find over tensor names."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@analysis("placement", requires=("plan",))
def placement_of(model: ir.Model, context: Context) -> Placement:
    """The ``placement`` analysis: ``plan_placement`` for the run's target, computed once per run
    (``calibrate`` and ``insert-qdq`` share it)."""
    return plan_placement(model, get_target(context.target))


def plan_placement(model: ir.Model, target: Target) -> Placement:
    """Decide the quantized tensors of ``model`` (main graph) for ``target``."""
    placement = Placement()
    calibrated: dict[str, None] = {}
    passthrough: dict[str, None] = {}
    groups = _Groups()

    def mark(value: ir.Value, spec: QuantSpec) -> None:
        if not _is_float(value) or is_dequantized(value) or value.is_initializer():
            return
        calibrated.setdefault(value.name)
        placement.spec_of.setdefault(value.name, spec)

    nodes = quantized_nodes(model)
    active = _active_integer_ops(nodes, target)
    dynamic: dict[str, None] = {}
    for node, spec in nodes:
        if node.op_type in target.passthrough_ops or node.op_type in target.recurrent_ops:
            continue  # (a recurrent op's INT8 is its weights only: passes/quantize_recurrent.py)
        if spec.dynamic:
            for index in activation_inputs(node, target):
                value = node.inputs[index]
                if not is_dequantized(value):
                    dynamic.setdefault(value.name)
            continue
        if node.op_type in target.integer_ops and node not in active:
            continue
        for index in activation_inputs(node, target):
            mark(node.inputs[index], spec)
        if target.quantize_outputs and (node.op_type in target.integer_ops or node.op_type in target.weighted_ops):
            out = output_to_quantize(node, spec)
            if out.uses() and not any(user.op_type == "QuantizeLinear" for user, _ in out.uses()):
                mark(out, spec)
        if node.op_type in target.shared_scale_ops and node.op_type in target.integer_ops:
            data = node.inputs if node.op_type == "Concat" else node.inputs[:1]
            for value in [*data, node.outputs[0]]:
                groups.union(node.outputs[0].name, value.name)

    # Passthrough ops carry their input's parameters forward, in graph order so that chains
    # (Reshape → Transpose → Reshape) pass them along.
    tables: list[str] = []
    for node, spec in nodes:
        if node.op_type not in target.passthrough_ops:
            continue
        data = node.inputs[0]
        table = node.op_type == "Gather" and is_float_constant(data)
        if not table and data.name not in calibrated and data.name not in passthrough:
            continue
        read = [out for out in node.outputs if out.uses()]  # (float, as their data is)
        for out in read:
            calibrated.pop(out.name, None)
            passthrough.setdefault(out.name)
            placement.spec_of[out.name] = placement.spec_of.get(data.name, spec)
            groups.union(data.name, out.name)
        if table and read:  # (a table whose Gather output only leaves the graph stays float)
            tables.append(data.name)

    placement.calibrated = list(calibrated)
    placement.dynamic = list(dynamic)
    placement.passthrough = list(passthrough)
    for name in [*calibrated, *passthrough]:
        placement.group_of[name] = groups.find(name)
    placement.tables = {groups.find(name): name for name in tables}
    for name, root in placement.group_of.items():
        placement.by_group.setdefault(root, []).append(name)
    return placement
