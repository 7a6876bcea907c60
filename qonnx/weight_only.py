"""Weight-only INT8: a float constant stored as symmetric INT8, read through a DequantizeLinear.

For weights whose activations stay float: the W and R of recurrent ops (onnxruntime has no integer
LSTM/GRU/RNN kernel in the standard domain) and the weights of nodes inside If/Loop/Scan bodies
(calibration cannot tap values there). Per channel along ``axis``::

    scale[c] = max |w[..., c, ...]| / 127        q = clip(round(w / scale[c]), -127, 127)

and the zero point is 0 (left out of the DequantizeLinear). onnxruntime keeps a DequantizeLinear of
a constant in the graph (its constant folding leaves them for the QDQ fusions) and runs it on each
call: a cost proportional to the weight, not to the batch or the sequence length.

The DequantizeLinear goes into the graph of the node that reads the weight, so that an If branch
dequantizes only when it runs; a weight read in several graphs gets one per graph.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx import quant
from qonnx.pipeline import Pass
from qonnx.policy import QuantSpec, node_spec, record_formats

__all__ = ["WeightStore", "WeightOnlyPass", "ALREADY"]

ALREADY = "weights stored as INT8 already"  # a second run changes nothing, and keeps the node's plan


class WeightStore:
    """Rewrites float constants of one model as INT8 behind DequantizeLinear nodes.

    Names are made unique across every graph of the model (ONNX forbids a subgraph to reuse a
    name of an enclosing graph). ``drop_replaced()`` removes the float initializers no node reads
    any more.
    """

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self._taken: set[str] = set()
        for graph in model.graphs():
            self._taken.update(v.name for v in graph.inputs)
            self._taken.update(graph.initializers)
            for node in graph:
                self._taken.add(node.name)
                self._taken.update(v.name for v in node.outputs)
        self._stored: dict[tuple[int, str, int | None], ir.Value] = {}
        self._replaced: list[ir.Value] = []

    def _name(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        for graph in self.model.graphs():  # names handed out by qonnx.ir.unique_name later must avoid it too
            cached = graph.meta.get("qonnx.names")
            if cached is not None:
                cached.add(name)
        return name

    def _initializer(self, graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
        name = self._name(base)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape, value.dtype = ir.Shape(array.shape), value.const_value.dtype
        graph.register_initializer(value)
        return value

    def dequantized(self, graph: ir.Graph, value: ir.Value, axis: int | None) -> ir.Value:
        """``value`` (a float constant) as ``DequantizeLinear(q, scale)`` in ``graph``: per channel
        along ``axis`` (None: one scale for the tensor). Stored once per graph, weight and axis."""
        key = (id(graph), value.name, axis)
        if key not in self._stored:
            weight = value.const_value.numpy()
            if axis is None:
                scale, zero_point = quant.symmetric_params(np.abs(weight).max(), np.int8)
                q = quant.quantize(weight, scale, zero_point, np.int8)
            else:
                q, scale, _ = quant.per_channel_symmetric(weight, axis, np.int8)
            q_v = self._initializer(graph, f"{value.name}_q", q)
            s_v = self._initializer(graph, f"{value.name}_scale", np.asarray(scale, np.float32))
            dq = ir.node("DequantizeLinear", [q_v, s_v], attributes={"axis": axis}, name=self._name(f"{value.name}_DQ"))
            out = dq.outputs[0]
            out.name, out.dtype, out.shape = self._name(f"{value.name}_dq"), ir.DataType.FLOAT, value.shape
            qir.insert_after_producer(graph, q_v, dq)  # (an initializer: at the top of the graph)
            self._stored[key] = out
            self._replaced.append(value)
        return self._stored[key]

    def drop_replaced(self) -> None:
        """Remove the float initializers that were stored as INT8 and that nothing reads any more."""
        for value in self._replaced:
            if value.uses() or value.is_graph_output() or value.is_graph_input():
                continue
            for graph in self.model.graphs():
                if graph.initializers.get(value.name) is value:
                    graph.initializers.pop(value.name)
                    break


class WeightOnlyPass(Pass):
    """A pass that stores the constant weights of INT8-planned nodes as INT8 behind DequantizeLinear.

    Subclasses say where to look (``graphs``), which nodes (``op_types``) and, per node, which
    inputs to store along which axis (``weights``), or why not (a reason string: the node stays
    float with it in the plan; ``ALREADY`` only skips). Nodes the plan keeps float are left alone.
    """

    preserves = frozenset({"shapes", "ranges", "plan", "placement"})
    analyses_required = frozenset({"plan"})
    op_types: frozenset[str] = frozenset()

    def graphs(self, model: ir.Model):
        return model.graphs()

    def weights(self, node: ir.Node, spec: QuantSpec) -> list[tuple[int, int | None]] | str:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        store = WeightStore(model)
        modified = False
        refused: dict[str, dict] = {}
        for graph in self.graphs(model):
            for node in list(graph):
                if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx"):
                    continue
                spec = node_spec(node.metadata_props)
                if not spec.quantized:
                    continue  # float by the plan, which says why
                found = self.weights(node, spec)
                if isinstance(found, str):
                    self.skip(found, node)
                    if found != ALREADY:
                        refused[node.name] = {"format": "float", "reason": found}
                    continue
                for index, axis in found:
                    node.replace_input_with(index, store.dequantized(graph, node.inputs[index], axis))
                modified = True
        store.drop_replaced()
        if refused:
            record_formats(model, refused)
            modified = True
        return ir.passes.PassResult(model, modified)
