"""FP16/BF16 conversion: every node planned in the low format runs in it; Casts where fewest bytes cross.

Reads the node specs (``resolve-policy``, then ``float-islands`` for the FP32 islands) and rewrites:

1. each node's float inputs and outputs that follow its type (``qonnx.float_slots``: the ONNX
   schema decides; Resize's ``scales`` stay ``tensor(float)``, Shape's input takes any type) become
   FP16/BF16 when the node runs in the low format; Cast(to=FLOAT) nodes then cast to the low type
   and ConstantOfShape/Constant values are converted, so an existing Cast in the middle of the
   graph produces what its readers need;
2. float constants (initializers) are stored in the format their readers need: converted in
   place, or a converted copy beside the FP32 one when readers of both formats share it. Finite
   values beyond the format's range are clipped to its maximum (``float-islands`` keeps the nodes
   that read such constants FP32, so this happens only without it);
3. the formats of the *free* nodes (data movement and cheap element-wise ops) are chosen by a
   minimum cut (``qonnx.cast_placement``) so that the Casts at island boundaries move the fewest
   bytes; each tensor that crosses a boundary gets one Cast, shared by all its readers there. A
   constant an FP32 node reads counts the bytes its FP32 copy keeps in the file the same way;
4. the graph's inputs and outputs keep FP32 (a Cast after each input / before each output that
   needs one, the output keeping its name) unless ``keep_io_types=false``, which makes them FP16/BF16;
5. identity Casts and cascades (a Cast reading a lossless Cast) are folded away; a Cast that
   stays is counted with its reason (``_fold_casts``).

If/Loop/Scan nodes are FP32 as a whole (``float-islands`` says so); an outer tensor their bodies
read is cast back to FP32 for them. Tensor sizes for the cut come from the inferred shapes, with
``unknown_dim`` standing for each symbolic dimension. The converted model is marked in its
metadata (``qonnx.float_format``), so running the pass again changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.cast_placement import FP32, LOW, Tensor, cast_bytes, place_casts
from qonnx.errors import UserError
from qonnx.float_formats import FloatFormat, get_format
from qonnx.float_slots import NodeSlots, float_slots
from qonnx.pipeline import Pass, Record, register
from qonnx.policy import PLAN_KEY, node_spec, record_formats
from qonnx.targets import FLOAT_COMPUTE_OPS, FLOAT_PRECISIONS

logger = logging.getLogger(__name__)

__all__ = ["ConvertFloat", "FORMAT_KEY", "COMPUTE_OPS"]

FORMAT_KEY = "qonnx.float_format"

# The ops the conversion is for (weights halved, tensor cores): always in the low format unless an
# island keeps them FP32. Every other op is free: its format only moves the island boundaries.
COMPUTE_OPS = FLOAT_COMPUTE_OPS
# Casts from these types to the key type keep every value exactly, so a Cast after them can read their input.
_LOSSLESS_INTO = {
    ir.DataType.FLOAT: {ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.BOOL},
    ir.DataType.DOUBLE: {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT32, ir.DataType.UINT32, ir.DataType.BOOL},
    ir.DataType.FLOAT16: {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.BOOL},
    ir.DataType.BFLOAT16: {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.BOOL},
}


def _elements(value: ir.Value, unknown_dim: int) -> int:
    if value.shape is None:
        return unknown_dim**2
    count = 1
    for dim in value.shape:
        count *= dim if isinstance(dim, int) and dim >= 0 else unknown_dim
    return max(count, 1)


def _holders(graph: ir.Graph) -> dict[ir.Node, ir.Node]:
    """Each node inside a subgraph → the main-graph node (If, Loop, Scan) that holds it."""
    holder = {}
    for node in graph:
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                bodies = [attribute.as_graph()]
            elif attribute.type == ir.AttributeType.GRAPHS:
                bodies = list(attribute.as_graphs())
            else:
                continue
            for body in bodies:
                for inner in ir.traversal.RecursiveGraphIterator(body):
                    holder[inner] = node
    return holder


@dataclasses.dataclass
class ConversionRecord(Record):
    """What the conversion did: nodes in each format, Casts and the bytes they move, constants."""

    report_key = "conversion"
    precision: str
    io_types: str
    low_nodes: int
    fp32_nodes: int
    casts_before: int
    casts_after: int
    cast_bytes: int
    constants_converted: int
    constants_clipped: int


@register
class ConvertFloat(Pass):
    """Attributes:
    keep_io_types: the graph's inputs and outputs stay FP32.
    unknown_dim: the size assumed for a symbolic dimension when Casts are placed by tensor bytes.
    precision: fp16 or bf16 (default: the run's precision). Given in an INT8 run, only the nodes
        planned in it convert (FP16 islands of a mixed plan, after ``insert-qdq``); none: nothing.
    """

    name = "convert-float"
    summary = "convert to FP16/BF16 outside the FP32 islands; Casts placed by a minimum cut over tensor bytes"
    preserves = frozenset({"plan"})
    analyses_required = frozenset({"plan"})

    def __init__(self, context=None, *, keep_io_types: bool = True, unknown_dim: int = 64, precision: str | None = None) -> None:
        super().__init__(context)
        if precision is not None and precision not in FLOAT_PRECISIONS:
            raise UserError(f"convert-float: precision must be fp16 or bf16, not {precision!r}")
        self.keep_io_types, self.unknown_dim, self.precision = keep_io_types, unknown_dim, precision

    @property
    def _precision(self) -> str:
        return self.precision or self.context.precision

    def _nothing_planned(self, model: ir.Model) -> bool:
        """In an INT8 run (``precision`` given): no node is planned in the format, nothing to do."""
        return self.precision is not None and self.context.precision not in FLOAT_PRECISIONS and not any(
            node_spec(n.metadata_props).format == self.precision for n in model.graph
        )

    def requires(self, model: ir.Model) -> None:
        if self._precision not in FLOAT_PRECISIONS:
            raise UserError(f"convert-float is for --precision fp16 or bf16, not {self.context.precision}")
        if self._nothing_planned(model):
            return
        if model.metadata_props.get(FORMAT_KEY):
            return
        if PLAN_KEY not in model.metadata_props:
            raise UserError("convert-float needs the per-node plan: run resolve-policy before it")
        untyped = [v.name for node in model.graph for v in node.outputs if v.name and v.dtype is None and v.uses()]
        if untyped:
            raise UserError(f"convert-float needs the type of every tensor; {untyped[0]!r} has none: run infer-shapes first")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        precision = self._precision
        if self._nothing_planned(model):
            return ir.passes.PassResult(model, False)
        done = model.metadata_props.get(FORMAT_KEY)
        if done:
            if done != precision:
                raise UserError(f"the model was already converted to {done}")
            return ir.passes.PassResult(model, False)
        fmt = get_format(precision)
        graph = model.graph
        opset = model.opset_imports.get("", 1)
        holders = _holders(graph)
        holder_nodes = set(holders.values())

        slots: dict[ir.Node, NodeSlots] = {}
        kinds: dict[ir.Node, str] = {}
        for node in graph:
            node_slots = float_slots(node, opset, fmt.onnx_type)
            if not node_slots.slots:
                continue
            slots[node] = node_slots
            if node in holder_nodes:
                kinds[node] = "fp32"
            elif any(s.role == "node" for s in node_slots.slots):
                wanted = node_spec(node.metadata_props).format == precision and node_slots.convertible
                if node.op_type == "Constant" and "value" not in node.attributes:
                    wanted = False
                kinds[node] = ("low" if node.op_type in COMPUTE_OPS else "free") if wanted else "fp32"
        for holder in holder_nodes:
            kinds[holder] = "fp32"
            slots.setdefault(holder, NodeSlots((), False))

        io_side = FP32 if self.keep_io_types else LOW
        def reader_of(user: ir.Node, index: int):
            """The vertex whose format the use of an input follows; None when any format is fine."""
            if user in holders:
                return holders[user]
            for slot in slots.get(user, NodeSlots((), False)).slots:
                if slot.is_input and slot.index == index:
                    if slot.role == "any":
                        return None
                    return user if slot.role == "node" and user in kinds else FP32
            return FP32

        def producer_of(value: ir.Value):
            producer = value.producer()
            if producer is None:
                return io_side  # a graph input
            for slot in slots.get(producer, NodeSlots((), False)).slots:
                if not slot.is_input and slot.value is value:
                    return producer if slot.role == "node" and producer in kinds else FP32
            return FP32

        values = self._float_values(graph)
        tensors = []
        for value in values:
            readers = [reader_of(user, index) for user, index in value.uses()]
            if value.is_graph_output():
                readers.append(io_side)
            readers = tuple(r for r in readers if r is not None)
            tensors.append(Tensor(producer_of(value), readers, 4 * _elements(value, self.unknown_dim)))
        # A constant is stored in the low format unless an FP32 reader needs it: then its FP32 copy
        # costs the bytes it would have saved, so a free node reading a large table (an embedding
        # Gather) does not stay FP32 just to spare a small Cast of its output.
        constant_tensors = []
        for value in graph.initializers.values():
            if qir.is_constant_initializer(value) and value.const_value.dtype == ir.DataType.FLOAT:
                readers = tuple(r for r in (reader_of(user, index) for user, index in value.uses()) if r is not None)
                constant_tensors.append(Tensor(LOW, readers, value.const_value.nbytes // 2))
        placement = place_casts(kinds, [*tensors, *constant_tensors])
        low = placement.low | {LOW}

        # 1. node formats: types of the slots that follow the node, type-setting attributes
        for node in kinds:
            if node not in low:
                continue
            for slot in slots[node].outputs("node"):
                slot.value.dtype = fmt.dtype
            self._convert_attributes(node, fmt)
        if not self.keep_io_types:
            for value in graph.inputs:
                if value.dtype == ir.DataType.FLOAT and not value.is_initializer():
                    value.dtype = fmt.dtype

        # 2. one Cast per tensor that crosses a boundary
        casts_before = sum(1 for n in graph if n.op_type == "Cast")
        for value, tensor in zip(values, tensors):
            source_low = tensor.producer in low
            crossing = [(u, i) for u, i in value.uses() if (r := reader_of(u, i)) is not None and (r in low) != source_low]
            output_crosses = value.is_graph_output() and (io_side in low) != source_low
            if not crossing and not output_crosses:
                continue
            to = ir.DataType.FLOAT if source_low else fmt.dtype
            source_format, target_format = (fmt.name, "fp32") if source_low else ("fp32", fmt.name)
            cast = qir.make_cast(graph, value, to, f"{value.name}_{target_format}")
            qir.insert_after_producer(graph, value, cast)
            qir.redirect(crossing, cast.outputs[0])
            if output_crosses:
                # The graph output keeps its name and I/O type: it is the Cast's output now.
                qir.replace_graph_output(graph, value, cast.outputs[0], f"{value.name}_{source_format}")

        # 3. constants in the format their readers need
        converted, clipped = self._convert_constants(graph, fmt, low, reader_of)

        # 4. fold identity casts and cascades
        _fold_casts(graph, self.skip)

        fp32_free = [n for n, k in kinds.items() if k == "free" and n not in low]
        if fp32_free:
            record_formats(model, {n.name: {"format": "float", "reason": "placed FP32 by the cast placement: fewer bytes cross a Cast"} for n in fp32_free})
        model.metadata_props[FORMAT_KEY] = precision
        self.publish(
            ConversionRecord(
                precision=precision,
                io_types="float32" if self.keep_io_types else precision,
                low_nodes=sum(1 for n in kinds if n in low),
                fp32_nodes=sum(1 for n in kinds if n not in low),
                casts_before=casts_before,
                casts_after=sum(1 for n in graph if n.op_type == "Cast"),
                cast_bytes=cast_bytes(tensors, placement.low),
                constants_converted=converted,
                constants_clipped=clipped,
            )
        )
        if clipped:
            logger.warning("%d constants held values beyond %s's range and were clipped", clipped, fmt.name)
        return ir.passes.PassResult(model, True)

    def ensures(self, model: ir.Model) -> None:
        for node in model.graph:
            if node.op_type != "Cast":
                continue
            source = node.inputs[0]
            if source is not None and source.dtype == node.attributes.get_int("to") and not _signature_needs(node, source):
                raise ir.passes.PostconditionError(f"{node.name} casts to the type it reads")
            producer = source.producer() if source is not None else None
            if producer is not None and producer.op_type == "Cast" and _lossless(producer):
                raise ir.passes.PostconditionError(f"{node.name} reads another Cast ({producer.name})")
        if self.keep_io_types:
            for value in model.graph.outputs:
                if value.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) and value.name:
                    producer = value.producer()
                    if producer is not None and producer.op_type == "Cast":
                        continue
                    raise ir.passes.PostconditionError(f"graph output {value.name} is not FP32")

    def _float_values(self, graph: ir.Graph) -> list[ir.Value]:
        """The FP32 tensors computed at run time: graph inputs and node outputs (not constants)."""
        values = [v for v in graph.inputs if v.dtype == ir.DataType.FLOAT]
        for node in graph:
            values.extend(v for v in node.outputs if v.dtype == ir.DataType.FLOAT)
        return values

    def _convert_attributes(self, node: ir.Node, fmt: FloatFormat) -> None:
        if node.op_type in ("Cast", "CastLike"):
            if node.op_type == "Cast":
                node.attributes["to"] = ir.AttrInt64("to", fmt.dtype)
        elif node.op_type in ("ConstantOfShape", "Constant"):
            attribute = node.attributes.get("value")
            array = attribute.as_tensor().numpy() if attribute is not None else np.zeros(1, np.float32)
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(_to_format(array, fmt)[0]))

    def _convert_constants(self, graph: ir.Graph, fmt: FloatFormat, low, reader_of) -> tuple[int, int]:
        converted = clipped = 0
        for value in list(graph.initializers.values()):
            if not qir.is_constant_initializer(value) or value.const_value.dtype != ir.DataType.FLOAT:
                continue
            low_uses, fp32_uses = [], 0
            for user, index in value.uses():
                reader = reader_of(user, index)
                if reader is None:
                    continue
                if reader in low:
                    low_uses.append((user, index))
                else:
                    fp32_uses += 1
            if value.is_graph_output():
                fp32_uses += 1
            if not low_uses:
                continue
            array, count = _to_format(value.const_value.numpy(), fmt)
            clipped += count
            converted += 1
            if fp32_uses:
                copy = qir.make_initializer(graph, f"{value.name}_{fmt.name}", array)
                for user, index in low_uses:
                    user.replace_input_with(index, copy)
            else:
                value.const_value = ir.tensor(array, name=value.name)
                value.dtype = fmt.dtype
        return converted, clipped


def _to_format(array: np.ndarray, fmt: FloatFormat) -> tuple[np.ndarray, int]:
    """``array`` in the format, finite values beyond its range clipped to ±max (with their count)."""
    array = np.asarray(array, dtype=np.float32)
    beyond = np.isfinite(array) & (np.abs(array) > fmt.max)
    count = int(beyond.sum())
    if count:
        array = np.where(beyond, np.sign(array) * fmt.max, array).astype(np.float32)
    return fmt.convert(array), count


def _lossless(cast: ir.Node) -> bool:
    source = cast.inputs[0]
    to = ir.DataType(cast.attributes.get_int("to"))
    return source is not None and (source.dtype == to or source.dtype in _LOSSLESS_INTO.get(to, ()))


def _signature_needs(cast: ir.Node, source: ir.Value) -> bool:
    """Whether an identity Cast must stay: it gives a graph output its own tensor, apart from a graph input or output."""
    return cast.outputs[0].is_graph_output() and (source.is_graph_input() or source.is_graph_output())


def _fold_casts(graph: ir.Graph, skip: Callable[[str, ir.Node], bool]) -> int:
    """Remove Casts to the type they read, and let a Cast that reads a lossless Cast read its input.

    Each Cast is a candidate for both rewrites. A Cast that reads a lossy Cast keeps reading it
    (``skip`` records "reads a lossy Cast"); an identity Cast from a graph input or output to a
    graph output stays ("identity Cast between graph inputs and outputs"), the signature needs it.
    """
    removed = 0
    for node in list(graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        source = node.inputs[0]
        producer = source.producer() if source is not None else None
        if producer is not None and producer.op_type == "Cast":
            if _lossless(producer):
                node.replace_input_with(0, producer.inputs[0])
                if not producer.outputs[0].uses() and not producer.outputs[0].is_graph_output():
                    graph.remove(producer, safe=True)
                    removed += 1
                source = node.inputs[0]
            else:
                skip("reads a lossy Cast", node)
        if source is not None and source.dtype == node.attributes.get_int("to"):
            if _signature_needs(node, source):
                skip("identity Cast between graph inputs and outputs", node)
                continue
            qir.bypass(graph, node, source)
            removed += 1
    return removed
