"""QDQ insertion: QuantizeLinear/DequantizeLinear where ``qdq_placement`` put them; weights as integers.

For the nodes whose spec (``qonnx.spec`` metadata, from ``resolve-policy``) is INT8:

1. every tensor that the placement chose gets ``DQ(Q(x))`` right after its producer, shared by
   all readers, with the parameters of its scale group (UINT8 asymmetric or INT8 symmetric, as the
   spec says; a passthrough op's outputs reuse its input's parameters);
2. a constant weight (Conv/ConvTranspose/Gemm input 1, MatMul's constant operand) is stored as an
   INT8 initializer, symmetric and per output channel, read through a DequantizeLinear: the float
   weight leaves the file, which is what makes the model about 4x smaller;
3. a constant bias of Conv/ConvTranspose/Gemm becomes INT32 with ``scale = s_x * s_w`` and zero
   point 0, the layout onnxruntime's QLinearConv/QGemm accumulate in;
4. a float constant operand of Add/Mul is stored quantized per tensor in the activation type, and a
   Gather's constant table (a word embedding) with its group's parameters, so that onnxruntime
   gathers int8 rows instead of dequantizing the whole table.

Already-quantized tensors (produced by DequantizeLinear) are left alone, so running the pass twice
changes nothing the second time. Only main-graph nodes carry an INT8 spec: calibration cannot tap
tensors inside If/Loop bodies, so ``resolve-policy`` keeps those nodes float and says why in the
plan; ``inline-functions`` has already removed local functions.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx import quant
from qonnx.errors import UserError
from qonnx.passes.qdq_placement import (
    activation_inputs,
    constant_operands,
    is_dequantized,
    is_float_constant,
    output_to_quantize,
    plan_placement,
    quantized_nodes,
)
from qonnx.policy import QuantSpec, node_spec
from qonnx.pipeline import Context, Pass, analysis, register
from qonnx.targets import FP8_OPSET, Target, get_target

logger = logging.getLogger(__name__)

__all__ = ["InsertQDQ", "NodeRoles", "node_roles", "tensors_to_calibrate", "output_to_quantize"]


@dataclasses.dataclass
class NodeRoles:
    weight: int | None = None
    weight_axis: int | None = None
    bias: int | None = None


def _is_stored_weight(value: ir.Value) -> bool:
    """Made by a DequantizeLinear of a constant: a weight this pass (or another tool) stored."""
    producer = value.producer()
    return producer is not None and producer.op_type == "DequantizeLinear" and qir.is_constant_initializer(producer.inputs[0])


def _output_channel_axis(node: ir.Node) -> int | None:
    """The axis of ``node``'s weight (input 1) that indexes its output channels.

    Conv: 0 of [M, C/g, k…]; ConvTranspose: 1 of [C, M/g, k…] (None when grouped: the channels
    of each group sit at axis 1 separately); Gemm: 0 with transB, else 1; MatMul: the last axis.
    """
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul":
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        rank = len(weight.shape) if weight is not None and weight.shape is not None else 0
        return rank - 1 if rank >= 2 else None
    return None


def node_roles(node: ir.Node) -> NodeRoles:
    """Which inputs of a weighted node are its constant weight and bias."""
    roles = NodeRoles()
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return roles
    inputs = list(node.inputs)
    weight = inputs[1]  # each of these ops has at least two inputs
    if is_float_constant(weight) or _is_stored_weight(weight):
        roles.weight, roles.weight_axis = 1, _output_channel_axis(node)
    elif node.op_type == "MatMul" and (is_float_constant(inputs[0]) or _is_stored_weight(inputs[0])):
        roles.weight, roles.weight_axis = 0, None  # constant A: per tensor
    elif is_dequantized(weight):  # an activation in the weight's place, quantized already
        roles.weight, roles.weight_axis = 1, _output_channel_axis(node)
    if len(inputs) > 2 and inputs[2] is not None:  # (MatMul has two inputs)
        bias = inputs[2]
        if (is_float_constant(bias) and bias.const_value.numpy().ndim == 1) or is_dequantized(bias):
            roles.bias = 2
    return roles


def correctable_nodes(model: ir.Model) -> list[ir.Node]:
    """INT8 Conv and plain Gemm nodes with a constant weight: the ops whose bias can absorb the shift."""
    nodes = []
    for node, spec in quantized_nodes(model):
        if node.op_type not in ("Conv", "Gemm") or spec.dynamic:
            continue
        weight = node.inputs[1]
        if not is_float_constant(weight) or len(weight.uses()) != 1:
            continue  # computed, or shared: one bias cannot absorb the shift of another node
        attributes = node.attributes
        if node.op_type == "Gemm" and (
            attributes.get_int("transA") or attributes.get_float("alpha", 1.0) != 1.0 or attributes.get_float("beta", 1.0) != 1.0
        ):
            continue  # the correction assumes y = x · B + C
        nodes.append(node)
    return nodes


@analysis("bias-correction-inputs", requires=("plan",))
def _bias_correction_inputs(model: ir.Model, context: Context) -> list[str]:
    """The ``bias-correction-inputs`` analysis: ``bias_correction_inputs``."""
    return bias_correction_inputs(model)


def bias_correction_inputs(model: ir.Model) -> list[str]:
    """The tensors whose mean per channel bias correction needs (see ``qonnx.calib.means``)."""
    return list(dict.fromkeys(node.inputs[0].name for node in correctable_nodes(model)))


def tensors_to_calibrate(model: ir.Model, target: Target) -> list[str]:
    """Names of the activations that insert-qdq will quantize with a calibrated range."""
    return plan_placement(model, target).calibrated


def _dequantize_for(graph: ir.Graph, value: ir.Value, quantizer: ir.Node, dq_inputs: list[ir.Value], users) -> None:
    """Insert ``quantizer → DequantizeLinear(dq_inputs)`` right after ``value``'s producer and make
    ``users`` (reader, input index) read the dequantized tensor."""
    dq = qir.make_dequantize(graph, dq_inputs, value.name, shape=value.shape)
    qir.insert_after_producer(graph, value, [quantizer, dq])
    qir.redirect(users, dq.outputs[0])


@register
class InsertQDQ(Pass):
    name = "insert-qdq"
    summary = "insert QuantizeLinear/DequantizeLinear for INT8 nodes; weights become INT8 initializers"
    preserves = frozenset({"shapes", "ranges", "plan"})
    analyses_required = frozenset({"plan", "placement", "ranges"})

    def __init__(self, context=None, *, bias_correction: bool = True) -> None:
        super().__init__(context)
        self.target = get_target(self.context.target)
        self.bias_correction = bias_correction

    def requires(self, model: ir.Model) -> None:
        opset = model.opset_imports.get("", 1)
        if opset < FP8_OPSET and any(spec.format == "fp8" for _, spec in quantized_nodes(model)):
            raise UserError(f"FP8 Q/DQ need opset {FP8_OPSET} (QuantizeLinear's output_dtype); the model is at {opset}: put upgrade-opset(min_version={FP8_OPSET}) before insert-qdq")
        needed = self.context.analysis("placement", model).calibrated
        if not needed:
            return
        ranges = self.context.require("ranges", "run the calibrate pass before insert-qdq (or pass --ranges)")
        missing = [name for name in needed if name not in ranges]
        if missing:
            raise UserError(f"no calibration ranges for tensor {missing[0]!r} ({len(missing)} tensors lack one)")

    def ensures(self, model: ir.Model) -> None:
        left_float = getattr(self, "_nonfinite", set())  # tensors kept float on purpose (see below)
        for node, _ in quantized_nodes(model):
            if node.op_type not in self.target.weighted_ops:
                continue
            roles = node_roles(node)
            for index in activation_inputs(node, self.target) + [i for i in (roles.weight,) if i is not None]:
                if not is_dequantized(node.inputs[index]) and node.inputs[index].name not in left_float:
                    raise ir.passes.PostconditionError(f"input {index} of {node.name} has no DequantizeLinear producer")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        placement = self.context.analysis("placement", model)
        self._placement, self._graph = placement, graph
        # Before activations and weights get their DQ producers, which renames what the nodes read.
        self._mean_of_input = {node: node.inputs[0].name for node in correctable_nodes(model)}
        self._group_params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._group_initializers: dict[str, tuple[ir.Value, ir.Value]] = {}
        self._dequantized_weights: dict[tuple[str, int | None], ir.Value] = {}
        self._dequantized_operands: dict[tuple, ir.Value] = {}
        self._replaced: list[ir.Value] = []
        self._nonfinite: set[str] = set()
        modified = False
        values = {v.name: v for v in graph.inputs}
        for node in graph:
            values.update((v.name, v) for v in node.outputs)
        # Tensors in graph order, so that a passthrough output follows its input's DQ.
        for name in [*placement.calibrated, *placement.passthrough]:
            modified |= self._quantize_activation(graph, values[name], placement.spec_of[name])
        for name in placement.dynamic:
            self._quantize_dynamically(graph, values[name])
            modified = True
        for table_root, table in placement.tables.items():
            if table_root in self._group_initializers:  # else its Gather output stayed float: so does the table
                self._quantize_table(graph, table, table_root)
        for node, spec in quantized_nodes(model):
            if node.op_type in self.target.weighted_ops:
                roles = node_roles(node)
                if roles.weight is not None:
                    modified |= self._quantize_weight(graph, node, roles, spec)
                if roles.bias is not None and self.target.int32_bias and spec.format == "int8":
                    modified |= self._quantize_bias(graph, node, roles)
            for index in constant_operands(node):
                if any(is_dequantized(v) for v in node.inputs):
                    self._quantize_operand(graph, node, index, spec)
                    modified = True
        for value in self._replaced:  # the float weights and biases now stored as integers
            if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                graph.initializers.pop(value.name, None)
        return ir.passes.PassResult(model, modified)

    def _holds_nonfinite(self, name: str) -> bool:
        ranges = self.context.analyses.get("ranges")
        return ranges is not None and any(m in ranges and ranges[m].nonfinite for m in self._placement.members(name))

    def _group_range(self, name: str) -> tuple[float, float]:
        ranges = self.context.analyses.get("ranges")
        placement = self._placement
        root = placement.group_of[name]
        lo, hi = np.inf, -np.inf
        for member in placement.members(name):
            if ranges is not None and member in ranges:
                lo, hi = min(lo, ranges[member].lo), max(hi, ranges[member].hi)
        table = placement.tables.get(root)
        if table is not None:
            data = self._table_values(table)
            lo, hi = min(lo, float(data.min())), max(hi, float(data.max()))
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise UserError(f"no calibration range for tensor {name!r} or its scale group")
        return lo, hi

    def _table_values(self, name: str) -> np.ndarray:
        return self._graph.initializers[name].const_value.numpy()

    def _params(self, name: str, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
        root = self._placement.group_of[name]
        if root not in self._group_params:
            lo, hi = self._group_range(name)
            if spec.symmetric_activations:
                params = quant.symmetric_params(max(abs(lo), abs(hi)), quant.numpy_dtype(spec.activation_dtype))
            else:
                params = quant.asymmetric_params(lo, hi, quant.numpy_dtype(spec.activation_dtype))
            self._group_params[root] = params
        return self._group_params[root]

    def _quantize_activation(self, graph: ir.Graph, value: ir.Value, spec: QuantSpec) -> bool:
        # Placement lists only float tensors that some node reads and no DequantizeLinear makes.
        if self._holds_nonfinite(value.name):
            # An attention mask's -inf (or -3.4e38) would be clamped to the range's low end, and
            # masked positions would then get weight in the Softmax: such tensors stay float.
            logger.info("%s held non-finite values in calibration; left in float", value.name)
            self._nonfinite.add(value.name)
            return False
        scale, zero_point = self._params(value.name, spec)
        users = list(value.uses())  # before the Q node below becomes a user too
        if not self.target.quantize_outputs:
            # (tensorrt, cuda: a float weighted op keeps the exact tensor; reading the DequantizeLinear
            # its quantized neighbour reads would half-quantize it: rule trt-weighted-inputs)
            users = [(u, i) for u, i in users if u.op_type not in self.target.weighted_ops or node_spec(u.metadata_props).quantized]
        scale_v, zp_v = self._group_initializers_of(graph, value.name, scale, zero_point)
        dtype = ir.DataType.from_numpy(zero_point.dtype)
        # FP8: the type by QuantizeLinear's output_dtype (opset 21), no zero point. onnxruntime 1.32
        # reads an FP8 zero point as UINT8 and then drops a Relu before the Q as if it clamped.
        params = [scale_v] if zp_v is None else [scale_v, zp_v]
        attributes = {"output_dtype": int(dtype)} if zp_v is None else {}
        q = ir.node("QuantizeLinear", [value, *params], attributes=attributes, name=qir.unique_name(graph, f"{value.name}_Q"))
        q.outputs[0].name = qir.unique_name(graph, f"{value.name}_q")
        q.outputs[0].dtype = dtype
        q.outputs[0].shape = value.shape
        _dequantize_for(graph, value, q, [q.outputs[0], *params], users)
        return True

    def _quantize_dynamically(self, graph: ir.Graph, value: ir.Value) -> None:
        """``DQ(DynamicQuantizeLinear(x))`` for the readers of x whose spec is dynamic.

        onnxruntime fuses it with the weight's DequantizeLinear and the MatMul into
        DynamicQuantizeMatMul; float readers of x keep reading the exact x.
        """
        users = [(u, i) for u, i in value.uses() if node_spec(u.metadata_props).dynamic]  # placement: at least one
        dynamic = ir.node("DynamicQuantizeLinear", [value], num_outputs=3, name=qir.unique_name(graph, f"{value.name}_DynQ"))
        for out, suffix, dtype in zip(dynamic.outputs, ("q", "scale", "zp"), (ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8)):
            out.name, out.dtype = qir.unique_name(graph, f"{value.name}_dyn_{suffix}"), dtype
        dynamic.outputs[0].shape = value.shape
        _dequantize_for(graph, value, dynamic, list(dynamic.outputs), users)

    def _group_initializers_of(self, graph, name, scale, zero_point) -> tuple[ir.Value, ir.Value | None]:
        """One scale and one zero-point initializer per scale group, shared by all its Q/DQ nodes
        (no zero point for FP8: it is 0, and the type is the Q's ``output_dtype``)."""
        root = self._placement.group_of[name]
        if root not in self._group_initializers:
            self._group_initializers[root] = (
                qir.make_initializer(graph, f"{name}_scale", scale),
                None if quant.is_float8(zero_point.dtype) else qir.make_initializer(graph, f"{name}_zp", zero_point),
            )
        return self._group_initializers[root]

    def _quantize_table(self, graph: ir.Graph, name: str, root: str) -> None:
        """A Gather's constant table, stored with the parameters of the Gather output's Q/DQ, so that
        onnxruntime gathers integers."""
        value = graph.initializers[name]
        scale, zero_point = self._group_params[root]
        scale_v, zp_v = self._group_initializers[root]
        q = quant.quantize(value.const_value.numpy(), scale, zero_point, zero_point.dtype)
        q_v = qir.make_initializer(graph, f"{name}_q", q)
        dq = qir.make_dequantize(graph, [q_v, scale_v] + ([zp_v] if zp_v is not None else []), name)
        qir.insert_after_producer(graph, q_v, dq)  # (an initializer: before the first node)
        qir.redirect(list(value.uses()), dq.outputs[0])
        self._replaced.append(value)

    def _quantize_operand(self, graph: ir.Graph, node: ir.Node, index: int, spec: QuantSpec) -> None:
        """A float constant input of Add/Mul, per tensor in the activation type, so QLinearAdd/Mul can take it."""
        value = node.inputs[index]
        data = value.const_value.numpy()
        if spec.symmetric_activations:
            scale, zero_point = quant.symmetric_params(np.abs(data).max(), quant.numpy_dtype(spec.activation_dtype))
        else:  # (the range is widened to contain 0 there)
            scale, zero_point = quant.asymmetric_params(data.min(), data.max(), quant.numpy_dtype(spec.activation_dtype))
        key = (data.dtype.str, data.shape, data.tobytes(), spec.activation_dtype, spec.symmetric_activations)
        if key not in self._dequantized_operands:  # HardSwish's "+3" and "/6" recur in every block: store once
            q = quant.quantize(data, scale, zero_point, zero_point.dtype)
            stored_zero_point = None if quant.is_float8(zero_point.dtype) else zero_point
            self._dequantized_operands[key] = self._dequantize_constant(graph, value.name, q, scale, None, stored_zero_point)
        node.replace_input_with(index, self._dequantized_operands[key])
        self._replaced.append(value)

    def _input_scale(self, node: ir.Node) -> np.ndarray | None:
        """The scale of the node's first input, once it has its DequantizeLinear."""
        producer = node.inputs[0].producer()
        if producer is None or producer.op_type != "DequantizeLinear":
            return None  # not quantized
        scale = producer.inputs[1].const_value
        return None if scale is None else scale.numpy()  # None: quantized at run time

    def _quantize_weight(self, graph: ir.Graph, node: ir.Node, roles: NodeRoles, spec: QuantSpec) -> bool:
        value = node.inputs[roles.weight]
        if is_dequantized(value):
            return False
        axis = roles.weight_axis if spec.per_channel else None
        key = (value.name, axis)
        dq = self._dequantized_weights.get(key)  # a weight shared by several nodes is stored once
        if dq is None:
            dq = self._dequantized_weights[key] = self._store_weight(graph, node, roles, spec, value, axis)
            self._replaced.append(value)
        node.replace_input_with(roles.weight, dq)
        return True

    def _store_weight(self, graph, node, roles: NodeRoles, spec: QuantSpec, value: ir.Value, axis: int | None) -> ir.Value:
        """The weight as INT8 (per channel along ``axis``, else per tensor) behind a DequantizeLinear."""
        weight = value.const_value.numpy()
        dtype = quant.numpy_dtype(spec.weight_dtype)
        min_scale = None
        bias = qir.constant_array(node.inputs[roles.bias]) if roles.bias is not None else None
        if bias is not None and len(value.uses()) == 1 and self.target.int32_bias and spec.format == "int8":  # (an INT32 bias: weight input 1, activation input 0)
            x_scale = self._input_scale(node)
            if x_scale is not None:
                min_scale = quant.min_weight_scale_for_bias(bias, x_scale)
        qmax = 63 if spec.reduce_range else None  # (never for FP8: QuantSpec refuses the pairing)
        if axis is not None and (min_scale is None or min_scale.size == weight.shape[axis]):
            q, scale, _ = quant.per_channel_symmetric(weight, axis, dtype, min_scale, qmax)
        else:
            axis = None
            scale, zero_point = quant.symmetric_params(np.abs(weight).max(), dtype, qmax)
            if min_scale is not None:
                scale = np.maximum(scale, min_scale.max())  # float32, as both are
            q = quant.quantize(weight, scale, zero_point, dtype)
        if self.bias_correction and roles.weight == 1:
            self._correct_bias(graph, node, roles, weight, quant.dequantize(q, scale, 0, axis))
        # onnxruntime (1.32) forms QGemm only when the weight's DequantizeLinear names its zero point.
        zero_point = np.zeros(np.shape(scale), dtype) if node.op_type == "Gemm" and not quant.is_float8(dtype) else None
        return self._dequantize_constant(graph, value.name, q, scale, axis, zero_point)

    def _correct_bias(self, graph: ir.Graph, node: ir.Node, roles: NodeRoles, weight: np.ndarray, dequantized: np.ndarray) -> None:
        """Subtract the mean output shift that quantizing the weight causes (see ``qonnx.calib.means``)."""
        table = self.context.analyses.get("ranges")
        if table is None or node not in self._mean_of_input:
            return  # no calibration, or not a node whose bias can absorb the shift
        means = table.channel_means.get(self._mean_of_input[node])
        if means is None:
            return
        means = np.asarray(means)  # Python floats: float64
        error = dequantized.astype(np.float64) - weight.astype(np.float64)
        out = error.shape[0]
        if node.op_type == "Conv":
            groups = node.attributes.get_int("group", 1)
            per_group_in = error.shape[1]
            if means.size != groups * per_group_in:
                return
            error = error.sum(axis=tuple(range(2, error.ndim)))  # [O, C/g]: summed over the kernel
            group_means = means.reshape(groups, per_group_in)[np.arange(out) // (out // groups)]  # [O, C/g]
            shift = (error * group_means).sum(axis=1)
        else:  # Gemm, y = x · B or x · Bᵀ
            error = error if node.attributes.get_int("transB") else error.T  # [N, K]
            if means.size != error.shape[1]:
                return
            shift = error @ means
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        if bias_value is None:
            bias = np.zeros(shift.size)
        elif roles.bias is not None and is_float_constant(bias_value):
            bias = bias_value.const_value.numpy()
        else:
            return  # stored as INT32 already, or not a 1-D constant (Gemm's C of shape [1, N], a graph input)
        if bias.size != shift.size:
            return  # Gemm's C of shape [1], broadcast
        corrected = (bias.astype(np.float64) - shift).astype(np.float32)
        name = bias_value.name if bias_value is not None else f"{node.name}_bias"
        node.resize_inputs(3)  # (a no-op when the bias is there)
        node.replace_input_with(2, qir.make_initializer(graph, f"{name}_corrected", corrected))
        if bias_value is not None and not bias_value.uses():
            graph.initializers.pop(bias_value.name)
        roles.bias = 2

    def _quantize_bias(self, graph: ir.Graph, node: ir.Node, roles: NodeRoles) -> bool:
        value = node.inputs[roles.bias]
        if is_dequantized(value):
            return False
        w_dq = node.inputs[roles.weight].producer() if roles.weight == 1 else None
        x_scale = self._input_scale(node)
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

    def _dequantize_constant(self, graph, base, q, scale, axis, zero_point=None) -> ir.Value:
        """``DequantizeLinear(q, scale[, zero_point])`` of a constant.

        A symmetric constant leaves the zero point out (it means 0): that saves a byte (INT8) or
        four (INT32 bias) per channel, and onnxruntime fuses the group all the same.
        """
        q_v = qir.make_initializer(graph, f"{base}_q", q)
        s_v = qir.make_initializer(graph, f"{base}_scale", np.asarray(scale))  # float32 from qonnx.quant
        inputs = [q_v, s_v]
        if zero_point is not None:
            inputs.append(qir.make_initializer(graph, f"{base}_zp", np.asarray(zero_point)))
        dq = qir.make_dequantize(graph, inputs, base, axis=axis)  # axis None: per tensor
        qir.insert_after_producer(graph, q_v, dq)  # (an initializer: before the first node)
        return dq.outputs[0]
