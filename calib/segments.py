"""A model run over the calibration data one segment of its nodes at a time, so that memory holds
one segment's weights and the values that cross between segments, not the whole model.

The main graph's nodes, in graph order (topological), are cut into consecutive segments. A segment
is a model of its own (``segment_model``):

- its nodes, and the initializers they read (the large ones handed to onnxruntime as arrays, read
  from the model's tensors, a file's mapping for external data: no copy in the protobuf);
- as inputs, every value its nodes read (their subgraphs' outer-scope reads too) that the graph's
  inputs or an earlier segment produced;
- as outputs, the values it produces that a later node or the graph's outputs read, and the
  tensors asked for.

``SegmentedRun.run_to(tensors)`` runs forward from where the previous call stopped through the
node that produces the last of ``tensors`` (one onnxruntime session for that stretch), over every
batch, and yields each batch's ``tensors``. The values crossing the cut (the "boundary": the
graph's inputs at first, then a transformer's hidden state, its position tables and mask) are kept
for every batch from one call to the next; nothing else is. Asking for a tensor that an earlier
segment produced starts over from the graph's inputs (logged: one more pass over the data).

Memory: the boundary for every sample, plus one segment's weights twice (the pages of the
model's own, unmapped when the segment is done, and onnxruntime's copy). The cost: one session per segment, and
the boundary values copied in and out of onnxruntime. A rewrite between calls may replace nodes
that already ran (a quantized layer) and fold constants into the segment about to run, as long as
the float function of what ran is unchanged and values keep their names; a value held across the
cut that such a rewrite changes is told with ``divide``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from qonnx import ir as qir
from qonnx import runtime
from qonnx.calib.collect import _batches, _run
from qonnx.calib.sources import Source

logger = logging.getLogger(__name__)

__all__ = ["Segment", "SegmentedRun", "node_reads", "segment_model"]


def node_reads(node: ir.Node) -> list[ir.Value]:
    """The values ``node`` reads: its inputs, and what its subgraphs read from outside themselves."""
    reads = [v for v in node.inputs if v is not None]
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            graphs = [attribute.value]
        elif attribute.type == ir.AttributeType.GRAPHS:
            graphs = list(attribute.value)
        else:
            continue
        for graph in graphs:
            for inner in ir.traversal.RecursiveGraphIterator(graph):
                reads += [v for v in inner.inputs if v is not None and v.graph is node.graph]
    return reads


def _value_info(value: ir.Value, example: np.ndarray | None) -> onnx.ValueInfoProto:
    if value.type is not None:
        return ir.serde.serialize_value(value)
    if example is None:
        return onnx.helper.make_empty_tensor_value_info(value.name)
    return onnx.helper.make_tensor_value_info(value.name, onnx.helper.np_dtype_to_tensor_dtype(example.dtype), None)


_IN_MEMORY = 1024  # initializers of at least this many bytes go to onnxruntime as arrays, not in the protobuf


@dataclasses.dataclass
class Segment:
    """A segment as onnxruntime loads it: the serialized model, whose initializers of
    ``_IN_MEMORY`` bytes or more are external-data placeholders, and their arrays (``initializers``,
    for ``runtime.session``), read from the model's own tensors (``sources``)."""

    proto: bytes
    initializers: dict[str, np.ndarray]
    sources: list[ir.Value]

    def release(self) -> None:
        """Drop the arrays and unmap what they were read from (once the session that was handed them
    is gone: its options keep them)."""
        self.initializers.clear()
        for value in self.sources:
            qir.release_external(value)


def _placeholder(value: ir.Value, array: np.ndarray) -> onnx.TensorProto:
    proto = onnx.TensorProto(name=value.name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
    proto.data_location = onnx.TensorProto.EXTERNAL
    for key, text in (("location", f"qonnx-in-memory/{value.name}"), ("offset", "0"), ("length", str(array.nbytes))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, text
    return proto


def segment_model(
    model: ir.Model,
    nodes: Sequence[ir.Node],
    inputs: Sequence[ir.Value],
    outputs: Sequence[ir.Value],
    examples: dict[str, np.ndarray] | None = None,
) -> Segment:
    """The model of ``nodes`` (in order) computing ``outputs`` from ``inputs`` with the initializers
    the nodes read (``examples``: arrays that give a type to an input without one). Large
    initializers are handed to onnxruntime as arrays: no copy in the protobuf, and one read from
    external data is read from the file's mapping."""
    graph = onnx.GraphProto(name="segment")
    inside = {id(n) for n in nodes}
    arrays: dict[str, np.ndarray] = {}
    sources: list[ir.Value] = []
    seen: set[str] = set()
    for node in nodes:
        for value in node_reads(node):
            producer = value.producer()
            if value.name in seen or (producer is not None and id(producer) in inside) or not qir.is_constant_initializer(value):
                continue
            seen.add(value.name)
            tensor = value.const_value
            if tensor.nbytes >= _IN_MEMORY and tensor.dtype != ir.DataType.STRING:
                array = tensor.numpy()
                arrays[value.name] = array
                sources.append(value)
                graph.initializer.append(_placeholder(value, array))
            else:
                proto = ir.serde.serialize_tensor(ir.Tensor(tensor.numpy(), name=value.name) if isinstance(tensor, ir.ExternalTensor) else tensor)
                proto.name = value.name
                graph.initializer.append(proto)
        graph.node.append(ir.serde.serialize_node(node))
    graph.input.extend(_value_info(v, (examples or {}).get(v.name)) for v in inputs)
    graph.output.extend(_value_info(v, None) for v in outputs)
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    proto.functions.extend(ir.serde.serialize_function(f) for f in model.functions.values())
    return Segment(proto.SerializeToString(), arrays, sources)


class SegmentedRun:
    """The calibration data run forward through ``model`` a segment at a time (module docstring).

    ``source``: the feeds, the first ``count`` of them, ``batch_size`` samples per onnxruntime run.
    ``segments_run`` counts the onnxruntime sessions made; ``restarts`` the times a request went
    back before the cut and the data was run again from the graph's inputs.
    """

    def __init__(self, model: ir.Model, source: Source, count: int, *, batch_size: int = 1):
        self.model, self.source, self.count, self.batch_size = model, source, count, batch_size
        self._boundary: list[tuple[list[int], dict[str, np.ndarray]]] | None = None
        self._done: set[str] = set()  # names of the values the run has produced so far
        self.segments_run = 0
        self.restarts = 0

    @property
    def boundary_bytes(self) -> int:
        """Bytes of the values held across the cut, for every batch."""
        return sum(a.nbytes for _, values in self._boundary or [] for a in values.values())

    def divide(self, tensor: str, scales: np.ndarray, renamed: str | None = None) -> None:
        """A rewrite divided ``tensor`` by ``scales`` (along its last axis) where it is made (AWQ's
        ``1/s`` folded into its producer), or made ``renamed`` = ``tensor / scales`` with a new Mul:
        a copy of ``tensor`` held across the cut follows, since the nodes that made it do not run
        again."""
        for _, values in self._boundary or []:
            if tensor in values:
                array = values[tensor]
                values[renamed or tensor] = (array / np.asarray(scales, np.float32)).astype(array.dtype)
        if renamed is not None and tensor in self._done:
            self._done.add(renamed)

    def _restart(self) -> None:
        self._boundary = [(indices, dict(feed)) for indices, feed in _batches(self.source, range(self.count), self.batch_size, None)]
        self._done = {v.name for v in self.model.graph.inputs}

    def run_to(self, tensors: Sequence[str]) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """``(sample indices, {tensor: array})`` for every batch, the model run through the producer
        of the last of ``tensors``."""
        graph = self.model.graph
        nodes = list(graph)
        produced_at = {v.name: i for i, node in enumerate(nodes) for v in node.outputs if v.name}
        missing = [t for t in tensors if t not in produced_at and t not in {v.name for v in graph.inputs}]
        if missing:
            raise KeyError(f"no tensor named {missing[0]!r} in the model")
        if self._boundary is None or any(t in self._done and t not in self._boundary[0][1] for t in tensors):
            if self._boundary is not None:
                self.restarts += 1
                logger.info("segmented run: %s was computed before the cut; the data runs again from the start", tensors[0])
            self._restart()
        constant = _constant_nodes(nodes)
        # the cut: after the last node that ran (nodes a rewrite put before it count as run)
        start = 1 + max((i for i, n in enumerate(nodes) if any(v.name in self._done for v in n.outputs)), default=-1)
        end = max([produced_at[t] + 1 for t in tensors if t in produced_at] + [start])
        segment = [n for n in nodes[start:end] if id(n) not in constant]
        last_read: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for value in node_reads(node):
                last_read[value.name] = i
        segment = _with_constant_inputs(nodes, segment, constant)
        inside = {v.name for node in segment for v in node.outputs}
        feeds: dict[str, ir.Value] = {}
        for node in segment:
            for value in node_reads(node):
                if value.name not in inside and not qir.is_constant_initializer(value):
                    feeds[value.name] = value
        wanted = set(tensors)
        crossing = [v for node in segment if id(node) not in constant for v in node.outputs if v.name and last_read.get(v.name, -1) >= end]
        outputs = list({v.name: v for v in crossing + [v for node in segment for v in node.outputs if v.name in wanted]}.values())
        session = None
        if segment:
            made = segment_model(self.model, segment, list(feeds.values()), outputs, self._boundary[0][1])
            session = runtime.session(made.proto, initializers=made.initializers, spinning=False)
            self.segments_run += 1
        output_names = [v.name for v in outputs]
        for position, (indices, values) in enumerate(self._boundary):
            computed = _run(session, {n: values[n] for n in feeds}, output_names, indices) if session else {}
            yield indices, {t: computed[t] if t in computed else values[t] for t in tensors}
            kept = {n: a for n, a in values.items() if last_read.get(n, -1) >= end}
            # copied: an array onnxruntime returns keeps its session's memory arena alive
            kept.update((v.name, np.array(computed[v.name], copy=True)) for v in crossing)
            self._boundary[position] = (indices, kept)
            del computed, values
        self._done |= {v.name for node in nodes[start:end] for v in node.outputs if v.name}
        if session is not None:
            del session  # its options hold the arrays handed over: they go with it, then the mappings
            made.release()


def _constant_nodes(nodes: Sequence[ir.Node]) -> set[int]:
    """Ids of the nodes whose reads are all constants or outputs of such nodes (a weight's
    Transpose): they run inside each segment that reads them, never across the boundary, where
    every batch would hold a copy."""
    constant: set[int] = set()
    for node in nodes:
        reads = node_reads(node)
        if all(qir.is_constant_initializer(v) or (v.producer() is not None and id(v.producer()) in constant) for v in reads):
            constant.add(id(node))
    return constant


def _with_constant_inputs(nodes: Sequence[ir.Node], segment: list[ir.Node], constant: set[int]) -> list[ir.Node]:
    """``segment`` with the constant nodes it reads from (transitively), in graph order."""
    needed: set[int] = set()
    stack = list(segment)
    while stack:
        for value in node_reads(stack.pop()):
            producer = value.producer()
            if producer is not None and id(producer) in constant and id(producer) not in needed:
                needed.add(id(producer))
                stack.append(producer)
    members = needed | {id(n) for n in segment}
    return [n for n in nodes if id(n) in members]
