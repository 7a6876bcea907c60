"""QDQ insertion: QuantizeLinear/DequantizeLinear around every node that the policy put in INT8.

For a node whose spec (``qonnx.spec`` metadata, from ``resolve-policy``) is INT8:

1. each float activation input x gets ``DQ(Q(x))`` with the calibrated range of x (UINT8
   asymmetric or INT8 symmetric, as the spec says); one Q/DQ pair per tensor, shared by all readers;
2. a constant weight (Conv/ConvTranspose/Gemm input 1, MatMul's constant operand) is stored as an
   INT8 initializer, symmetric and per output channel, read through a DequantizeLinear: the float
   weight leaves the file, which is what makes the model about 4x smaller;
3. a constant bias of Conv/ConvTranspose/Gemm becomes INT32 with ``scale = s_x * s_w`` and zero
   point 0, the layout onnxruntime's QLinearConv/QGemm accumulate in;
4. when the target wants it, the node's output gets ``DQ(Q(y))`` too, so that onnxruntime can fuse
   ``DQ → op → Q`` into one integer kernel; after a Relu / Clip(0, …) that is the op's only reader,
   the clamp's output is quantized instead (see ``output_to_quantize``).

Already-quantized inputs (produced by DequantizeLinear) and outputs (read by QuantizeLinear) are left
alone, so running the pass twice changes nothing the second time. Only main-graph nodes carry an
INT8 spec: calibration cannot tap tensors inside If/Loop bodies, so ``resolve-policy`` keeps those
nodes float and says why in the plan; ``inline-functions`` has already removed local functions.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx import quant
from qonnx.errors import UserError
from qonnx.policy import QuantSpec, node_spec
from qonnx.pipeline import Pass, register
from qonnx.targets import Target, get_target

logger = logging.getLogger(__name__)

__all__ = ["InsertQDQ", "NodeRoles", "node_roles", "tensors_to_calibrate"]


@dataclasses.dataclass
class NodeRoles:
    activations: list[int]
    weight: int | None = None
    weight_axis: int | None = None
    bias: int | None = None


def _is_float_constant(value: ir.Value | None) -> bool:
    return qir.is_constant_initializer(value) and value.const_value.dtype == ir.DataType.FLOAT


def _is_dequantized(value: ir.Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def node_roles(node: ir.Node) -> NodeRoles:
    """Which inputs of a quantized node are activations, the weight and the bias."""
    inputs = list(node.inputs)
    roles = NodeRoles(activations=[])
    weight_index = 1 if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") else None
    for index, value in enumerate(inputs):
        if value is None or value.dtype not in (None, ir.DataType.FLOAT):
            continue
        if index == weight_index and (_is_float_constant(value) or _is_dequantized(value)):
            roles.weight = index
            roles.weight_axis = qir.output_channel_axis(node)
        elif index == 2 and node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            if _is_float_constant(value) and value.const_value.numpy().ndim == 1 or _is_dequantized(value):
                roles.bias = index
        elif node.op_type == "MatMul" and index == 0 and _is_float_constant(value):
            roles.weight, roles.weight_axis = 0, None  # constant A: per-tensor
        elif index < 2 and not value.is_initializer():
            roles.activations.append(index)
    return roles


def _quantized_nodes(model: ir.Model) -> list[tuple[ir.Node, QuantSpec]]:
    return [(n, s) for n in model.graph if (s := node_spec(n.metadata_props)).quantized]


def _output_quantized(value: ir.Value) -> bool:
    return any(user.op_type == "QuantizeLinear" for user, _ in value.uses())


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


def tensors_to_calibrate(model: ir.Model, target: Target) -> list[str]:
    """Names of the activations that insert-qdq will quantize and that have no Q/DQ yet."""
    names: dict[str, None] = {}
    for node, spec in _quantized_nodes(model):
        roles = node_roles(node)
        for index in roles.activations:
            value = node.inputs[index]
            if not _is_dequantized(value):
                names[value.name] = None
        if target.quantize_outputs:
            out = output_to_quantize(node, spec)
            if out.dtype in (None, ir.DataType.FLOAT) and out.uses() and not _output_quantized(out):
                names[out.name] = None
    return list(names)


@register
class InsertQDQ(Pass):
    name = "insert-qdq"
    summary = "insert QuantizeLinear/DequantizeLinear for INT8 nodes; weights become INT8 initializers"
    preserves = frozenset({"shapes", "ranges"})

    def __init__(self, context=None) -> None:
        super().__init__(context)
        self.target = get_target(self.context.target)

    def requires(self, model: ir.Model) -> None:
        needed = tensors_to_calibrate(model, self.target)
        if not needed:
            return
        ranges = self.context.require("ranges", "run the calibrate pass before insert-qdq (or pass --ranges)")
        missing = [name for name in needed if name not in ranges]
        if missing:
            raise UserError(f"no calibration ranges for tensor {missing[0]!r} ({len(missing)} tensors lack one)")

    def ensures(self, model: ir.Model) -> None:
        for node, _ in _quantized_nodes(model):
            roles = node_roles(node)
            for index in roles.activations + [i for i in (roles.weight,) if i is not None]:
                if not _is_dequantized(node.inputs[index]):
                    raise ir.passes.PostconditionError(f"input {index} of {node.name} has no DequantizeLinear producer")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self._activation_params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._dequantized_weights: dict[tuple[str, int | None], ir.Value] = {}
        self._replaced: list[ir.Value] = []
        modified = False
        for node, spec in _quantized_nodes(model):
            roles = node_roles(node)
            for index in roles.activations:
                modified |= self._quantize_activation(graph, node.inputs[index], spec)
            if roles.weight is not None:
                modified |= self._quantize_weight(graph, node, roles, spec)
            if roles.bias is not None and roles.activations:
                modified |= self._quantize_bias(graph, node, roles)
            if self.target.quantize_outputs:
                modified |= self._quantize_activation(graph, output_to_quantize(node, spec), spec)
        for value in self._replaced:  # the float weights and biases now stored as integers
            if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                graph.initializers.pop(value.name, None)
        return ir.passes.PassResult(model, modified)

    def _params(self, name: str, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._activation_params:
            r = self.context.analyses["ranges"][name]
            if spec.symmetric_activations:
                params = quant.symmetric_params(max(abs(r.lo), abs(r.hi)), np.dtype(spec.activation_dtype))
            else:
                params = quant.asymmetric_params(r.lo, r.hi, np.dtype(spec.activation_dtype))
            self._activation_params[name] = params
        return self._activation_params[name]

    def _quantize_activation(self, graph: ir.Graph, value: ir.Value, spec: QuantSpec) -> bool:
        if value.dtype not in (None, ir.DataType.FLOAT) or _is_dequantized(value) or _output_quantized(value):
            return False
        if not value.uses():  # only a graph output reads it: a Q/DQ pair would feed nobody
            return False
        scale, zero_point = self._params(value.name, spec)
        users = list(value.uses())  # before the Q node below becomes a user too
        scale_v = qir.make_initializer(graph, f"{value.name}_scale", scale)
        zp_v = qir.make_initializer(graph, f"{value.name}_zp", zero_point)
        q = ir.node("QuantizeLinear", [value, scale_v, zp_v], name=qir.unique_name(graph, f"{value.name}_Q"))
        q.outputs[0].name = qir.unique_name(graph, f"{value.name}_q")
        q.outputs[0].dtype = ir.DataType.from_numpy(zero_point.dtype)
        q.outputs[0].shape = value.shape
        dq = ir.node("DequantizeLinear", [q.outputs[0], scale_v, zp_v], name=qir.unique_name(graph, f"{value.name}_DQ"))
        dq.outputs[0].name = qir.unique_name(graph, f"{value.name}_dq")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = value.shape
        producer = value.producer()
        if producer is not None:
            graph.insert_after(producer, [q, dq])
        else:
            graph.insert_before(graph.node(0), [q, dq])
        for user, index in users:
            user.replace_input_with(index, dq.outputs[0])
        return True

    def _input_scale(self, node: ir.Node, roles: NodeRoles) -> np.ndarray | None:
        """The scale of the node's first activation input, once it has its DequantizeLinear."""
        if not roles.activations:
            return None
        producer = node.inputs[roles.activations[0]].producer()
        if producer is None or producer.op_type != "DequantizeLinear":
            return None
        return producer.inputs[1].const_value.numpy()

    def _quantize_weight(self, graph: ir.Graph, node: ir.Node, roles: NodeRoles, spec: QuantSpec) -> bool:
        value = node.inputs[roles.weight]
        if _is_dequantized(value):
            return False
        axis = roles.weight_axis if spec.per_channel else None
        key = (value.name, axis)
        if key in self._dequantized_weights:  # a weight shared by several nodes is stored once
            node.replace_input_with(roles.weight, self._dequantized_weights[key])
            return True
        weight = value.const_value.numpy()
        dtype = np.dtype(spec.weight_dtype)
        min_scale = None
        bias = qir.constant_array(node.inputs[roles.bias]) if roles.bias is not None else None
        x_scale = self._input_scale(node, roles)
        if bias is not None and x_scale is not None and len(value.uses()) == 1:
            min_scale = quant.min_weight_scale_for_bias(bias, x_scale)
        if axis is not None and weight.ndim > axis and (min_scale is None or min_scale.size == weight.shape[axis]):
            q, scale, _ = quant.per_channel_symmetric(weight, axis, dtype, min_scale)
        else:
            axis = None
            scale, zero_point = quant.symmetric_params(np.abs(weight).max(), dtype)
            if min_scale is not None:
                scale = np.maximum(scale, min_scale.max()).astype(np.float32)
            q = quant.quantize(weight, scale, zero_point, dtype)
        dq = self._dequantize_constant(graph, value.name, q, scale, axis)
        self._dequantized_weights[key] = dq
        node.replace_input_with(roles.weight, dq)
        self._replaced.append(value)
        return True

    def _quantize_bias(self, graph: ir.Graph, node: ir.Node, roles: NodeRoles) -> bool:
        value = node.inputs[roles.bias]
        if _is_dequantized(value):
            return False
        w_dq = node.inputs[roles.weight].producer() if roles.weight is not None else None
        x_scale = self._input_scale(node, roles)
        if x_scale is None or w_dq is None or w_dq.op_type != "DequantizeLinear":
            return False
        w_scale = w_dq.inputs[1].const_value.numpy()
        bias = value.const_value.numpy()
        if w_scale.size not in (1, bias.size):
            return False
        if not quant.bias_fits_int32(bias, x_scale, w_scale):
            # Only a weight shared with another node can get here (its scale was not raised).
            logger.warning("%s: bias does not fit INT32 at scale input*weight; left in float", node.name)
            return False
        q, scale = quant.bias_to_int32(bias, x_scale, w_scale)
        axis = 0 if scale.size > 1 else None
        dq = self._dequantize_constant(graph, value.name, q, scale, axis)
        node.replace_input_with(roles.bias, dq)
        self._replaced.append(value)
        return True

    def _dequantize_constant(self, graph, base, q, scale, axis) -> ir.Value:
        """``DequantizeLinear(q, scale)`` of a symmetric constant; the absent zero point means 0.

        Leaving the zero point out saves a byte (INT8) or four (INT32 bias) per channel, and
        onnxruntime fuses the group all the same.
        """
        q_v = qir.make_initializer(graph, f"{base}_q", q)
        s_v = qir.make_initializer(graph, f"{base}_scale", np.asarray(scale, np.float32))
        attributes = {"axis": axis} if axis is not None else {}
        dq = ir.node("DequantizeLinear", [q_v, s_v], attributes=attributes, name=qir.unique_name(graph, f"{base}_DQ"))
        dq.outputs[0].name = qir.unique_name(graph, f"{base}_dq")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(q.shape)
        graph.insert_before(graph.node(0), [dq])
        return dq.outputs[0]
