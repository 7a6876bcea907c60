"""Weight-only quantization: constant weights stored in 4 or 8 bits, one scale per block along K.

For every node whose spec (``qonnx.spec``, from ``resolve-policy``) is ``weight-only``, the weight
``W [K, N]`` of ``y = x @ W`` is quantized block-wise (``qonnx.blockwise``; ``W`` rounded by the
``algorithm``) and the node rewritten; activations stay float. Rewrite cases:

1. ``MatMul(x, W)``, ``W`` a constant FP32 ``[K, N]``;
2. ``MatMul(x, Transpose(E))``, ``E`` a constant ``[V, H]`` and ``perm=[1, 0]``: the weight is
   ``E^T`` (a tied lm_head, whose ``E`` is also an embedding table); the Transpose goes once it has
   no other reader;
3. ``Gemm(x, B, C)`` without ``transA``, with ``alpha = beta = 1``: ``W = B``, or ``B^T`` with
   ``transB``; the bias stays float;
4. ``Gather(E, indices)`` along axis 0, ``E`` a constant FP32 ``[V, H]`` (an embedding table): the
   rows are quantized along ``H``, so a tied table gets the blocks of its lm_head.

A tied table in the ``matmulnbits`` format is stored once: the Gather reads the lm_head's
MatMulNBits codes (as ``[V, n_blocks, blob]`` blocks, then a Reshape), with its own copy of the
scales only (the two kernels want them in different shapes).

Emission (``format``):

- ``matmulnbits``: MatMul/Gemm → ``MatMulNBits`` (com.microsoft; a Gemm's bias as its ``bias``
  input when it is one value per output, else an Add after), Gather → ``GatherBlockQuantized``
  (com.microsoft, uint8 data);
- ``qdq``: standard ONNX, opset 21 (the model is upgraded when older): the weight as an INT4/UINT4
  (INT8/UINT8 for 8 bits) initializer read through a blocked ``DequantizeLinear`` (``axis`` along
  K, ``block_size``), then the original MatMul (a Gemm becomes MatMul and Add) or Gather.

Layouts: ``qonnx.nbits_packing``. A candidate that does not qualify stays float, and the plan says
why (``self.skip`` and the plan's reasons). A weight that already comes out of a
DequantizeLinear is left alone, so a second run changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import numpy as np
import onnx_ir as ir

from qonnx import blockwise, weight_rounding
from qonnx import ir as qir
from qonnx.errors import UserError
from qonnx.heap import trim
from qonnx.nbits_packing import NBitsWeight, gather_block_quantized, matmul_nbits, pack_codes, signed_codes
from qonnx.pipeline import Pass, Record, apply, register
from qonnx.policy import SPEC_KEY, QuantSpec, node_spec, record_formats, set_node_spec

logger = logging.getLogger(__name__)

__all__ = ["QuantizeWeights", "WeightOnlyRecord", "ALGORITHMS", "FORMATS"]

MS_DOMAIN = "com.microsoft"
QDQ_OPSET = 21  # DequantizeLinear with block_size, and the INT4/UINT4 types
FORMATS = ("matmulnbits", "qdq")
ALGORITHMS = ("rtn", "gptq", "awq")


@dataclasses.dataclass
class WeightOnlyRecord(Record):
    """What was stored in blocks: rewritten nodes by the op they became and by bits, the bytes of
    the weights before (FP32) and after (codes, scales, zero points), the tied lm_heads."""

    report_key = "weight_only"
    format: str
    algorithm: str
    nodes: dict[str, int]
    bits: dict[str, int]
    bytes_before: int
    bytes_after: int
    tied: list[str]


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """A rewritable node: its weight as ``[K, N]`` float32 (``source``: the initializer it comes
    from, ``transposed``: W is that initializer's transpose, a strided view of it, not a copy)."""

    node: ir.Node
    spec: QuantSpec
    weight: np.ndarray
    source: ir.Value
    transposed: bool
    via_transpose: ir.Node | None = None


@register
class QuantizeWeights(Pass):
    """Store the weights of ``weight-only`` nodes in blocks of 4 or 8 bits.

    Attributes:
        format: ``matmulnbits`` (onnxruntime's MatMulNBits / GatherBlockQuantized) or ``qdq``
            (standard blocked DequantizeLinear, opset 21).
        accuracy_level: MatMulNBits's ``accuracy_level``: the least precise type its kernel may
            compute in (0, unset: float; 4: int8 activations, faster on CPU at the same
            fidelity on ``benchmarks/int4_synthetic.py``). The ``qdq`` format has none: onnxruntime
            fuses its DequantizeLinear → MatMul with the session option
            ``session.qdq_matmulnbits_accuracy_level`` (4 unless set).
        algorithm: how weights are rounded: ``rtn`` (round to nearest), or a data-aware method of
            ``qonnx.weight_rounding`` (``gptq``, ``awq``) fed with the
            ``weight-input-statistics`` analysis; tables of Gathers are always rounded to nearest.
            ``awq`` first scales the inputs of every group of MatMuls that share one, with ``1/s``
            folded exactly into the op before (``qonnx.input_scaling.scale_inputs``; a group with no
            exact fold is not scaled, the skip says why), then rounds each weight with the clip
            search. A weight handed over as ``diag(s) W`` (``input_scales``) gets a Mul by ``1/s``.
    """

    name = "quantize-weights"
    summary = "store MatMul/Gemm weights and Gather tables of weight-only nodes in 4/8-bit blocks"
    analyses_required = frozenset({"plan"})
    preserves = frozenset({"plan"})

    def __init__(
        self,
        context=None,
        *,
        format: Literal["matmulnbits", "qdq"] = "matmulnbits",
        accuracy_level: int = 4,
        algorithm: Literal["rtn", "gptq", "awq"] = "rtn",
    ) -> None:
        super().__init__(context)
        if format not in FORMATS:
            raise UserError(f"quantize-weights: format {format!r} is not one of {', '.join(FORMATS)}")
        if algorithm not in ALGORITHMS:
            raise UserError(f"quantize-weights: algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if accuracy_level not in range(5):
            raise UserError(f"quantize-weights: accuracy_level must be 0 to 4, not {accuracy_level}")
        self.format, self.accuracy_level, self.algorithm = format, accuracy_level, algorithm

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = _weight_only_nodes(model)
        if not nodes:
            return ir.passes.PassResult(model, modified=False)
        modified = False
        if self.format == "qdq" and model.opset_imports.get("", 1) < QDQ_OPSET:
            _upgrade_keeping_specs(model, self.context)
            nodes = _weight_only_nodes(model)
            modified = True
        graph = model.graph
        counts: dict[str, int] = {}
        bits: dict[str, int] = {}
        before = after = 0
        counted: set[ir.Value] = set()  # the float weights whose bytes are counted (a tied table once)
        tied: list[str] = []
        refused: dict[str, dict] = {}
        tables = _embedding_tables(graph)
        shared: dict[ir.Value, tuple[QuantSpec, blockwise.BlockQuantized, ir.Value]] = {}
        groups, group_of = self._statistics_groups(model, nodes)
        scaled = 0  # AWQ: the groups scaled so far, one ahead of the quantized (a fold may reach the group before)
        # a statistics group at a time, in graph order; then the rest; a tied lm_head's codes before its Gather, which may share them
        for node in sorted(nodes, key=lambda n: (n.op_type == "Gather", group_of.get(n.name, len(groups)))):
            while self.algorithm == "awq" and scaled < min(group_of.get(node.name, len(groups)) + 2, len(groups)):
                modified |= self._scale_inputs(model, groups[scaled])
                scaled += 1
            found = self._candidate(node)
            if isinstance(found, str):
                if found:
                    self.skip(found, node)
                    refused[node.name] = {"format": "float", "reason": found}
                    modified |= set_node_spec(node, refused[node.name])
                continue
            table = _tied_table(found, tables) if node.op_type != "Gather" else None
            reuse = shared.get(found.source) if node.op_type == "Gather" else None
            if reuse is not None and reuse[0] == found.spec and _can_share(node, reuse[1]):
                stored, made, codes = self._gather_shared(graph, node, reuse[1], reuse[2], found.source.name), "GatherBlockQuantized", None
            else:
                quantized = self._quantize(model, found)
                stored, made, codes = self._rewrite(model, found, quantized)
                if table is not None and codes is not None:
                    shared[table] = (found.spec, quantized, codes)
            counts[made] = counts.get(made, 0) + 1
            key = str(found.spec.weight_bits)
            bits[key] = bits.get(key, 0) + 1
            after += stored
            weight_key = found.source if table is None else table
            if weight_key not in counted:
                counted.add(weight_key)
                before += found.weight.nbytes
            if table is not None:
                tied.append(node.name)
            source, found = found.source, None  # drop the candidate's views of the float weight first
            _drop_float_weight(graph, source)
            modified = True
        if refused:
            record_formats(model, refused)
        if counts:
            if self.format == "matmulnbits":
                model.opset_imports.setdefault(MS_DOMAIN, 1)
            logger.info("weight-only: %s, %d -> %d bytes", counts, before, after)
        self.publish(WeightOnlyRecord(self.format, self.algorithm, dict(sorted(counts.items())), dict(sorted(bits.items())), before, after, tied))
        return ir.passes.PassResult(model, modified)

    # -- which nodes qualify -------------------------------------------------------------------

    def _candidate(self, node: ir.Node) -> _Candidate | str:
        """The node's weight, or why it is not rewritten ("" when it already was)."""
        spec = node_spec(node.metadata_props)
        if node.op_type == "Gather":
            if node.attributes.get_int("axis", 0) != 0:
                return "gathers along an axis other than 0"
            table = node.inputs[0]
            reason = _weight_problem(table, spec)
            if reason is not None:
                return reason
            array = qir.constant_array(table)
            return _Candidate(node, spec, array.T, table, transposed=True)
        if node.op_type == "Gemm":
            if node.attributes.get_int("transA", 0):
                return "Gemm with transA"
            if node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_float("beta", 1.0) != 1.0:
                return "Gemm with alpha or beta other than 1"
        weight = node.inputs[1]
        via_transpose = qir.transpose_of_constant(weight)
        if via_transpose is not None:
            weight = via_transpose.inputs[0]
        reason = _weight_problem(weight, spec)
        if reason is not None:
            return reason
        array = qir.constant_array(weight)
        transposed = via_transpose is not None
        if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
            transposed = not transposed
        w = array.T if transposed else array  # a view: the rounding copies a slice of columns at a time
        if w.shape[0] < spec.block_size:
            return f"K {w.shape[0]} smaller than the block size {spec.block_size}"
        return _Candidate(node, spec, w, weight, transposed, via_transpose)

    # -- the rewrite ---------------------------------------------------------------------------

    def _statistics_groups(self, model: ir.Model, nodes: list[ir.Node]) -> tuple[list[list[str]], dict[str, int]]:
        """For a data-aware algorithm, the MatMuls of ``nodes`` by statistics group (in the order the
        ``weight-input-statistics`` analysis computes each group once), and each one's group."""
        if self.algorithm == "rtn":
            return [], {}
        statistics = self.context.analysis("weight-input-statistics", model)
        wanted = {n.name for n in nodes if n.op_type == "MatMul"}
        groups = [[name for name in group if name in wanted] for group in statistics.node_groups()]
        groups = [g for g in groups if g]
        return groups, {name: i for i, group in enumerate(groups) for name in group}

    def _scale_inputs(self, model: ir.Model, names: list[str]) -> bool:
        """AWQ on the MatMuls ``names`` (one statistics group), before any of them is quantized
        (``qonnx.input_scaling.scale_inputs``): each set of MatMuls reading one input gets its
        scales, ``1/s`` folded exactly into the op before (a norm's weight, a MatMul's columns) and
        ``diag(s) W`` in the graph; a set with no exact fold is left for the clip search alone (a
        fold into a layer already quantized is none). Returns whether any set was scaled."""
        from qonnx.input_scaling import scale_inputs

        statistics = self.context.analysis("weight-input-statistics", model)
        formats = {n.name: (spec.weight_bits, spec.block_size, spec.symmetric_weights) for n in model.graph if n.name in names for spec in [node_spec(n.metadata_props)]}
        done = scale_inputs(model, statistics, names, formats=formats)
        for scaling in done.values():
            if not scaling.fold:
                self.skip(f"AWQ scales not folded: {scaling.fold.reason}")
        return any(scaling.fold for scaling in done.values())

    def _quantize(self, model: ir.Model, found: _Candidate) -> blockwise.BlockQuantized:
        spec = found.spec
        if self.algorithm == "rtn" or found.node.op_type == "Gather":
            return blockwise.quantize_rtn(found.weight, spec.weight_bits, spec.block_size, spec.symmetric_weights)
        statistics = self.context.analysis("weight-input-statistics", model).get(found.node.name)
        if statistics is None:  # not a MatMul the statistics cover (a Gemm): nothing to be aware of
            return blockwise.quantize_rtn(found.weight, spec.weight_bits, spec.block_size, spec.symmetric_weights)
        # AWQ's scales are in the graph already (_scale_inputs): what is left is its clip search.
        algorithm, clip = ("rtn", True) if self.algorithm == "awq" else (self.algorithm, None)
        return weight_rounding.quantize(
            found.weight, bits=spec.weight_bits, block_size=spec.block_size, symmetric=spec.symmetric_weights, algorithm=algorithm, statistics=statistics, clip=clip
        )

    def _rewrite(self, model: ir.Model, found: _Candidate, quantized: blockwise.BlockQuantized) -> tuple[int, str, ir.Value | None]:
        """Rewrite one node; returns the bytes of its stored weight, the op that now reads it, and
        the MatMulNBits codes (which the Gather of a tied table may share)."""
        graph, node = model.graph, found.node
        base = found.source.name or node.name
        if node.op_type == "Gather":
            if self.format == "matmulnbits":
                return self._gather_block_quantized(graph, node, quantized, base), "GatherBlockQuantized", None
            return self._dequantized(graph, node, quantized, base, index=0, axis=1, transpose=True), "Gather", None
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        input_scales = getattr(quantized, "input_scales", None)  # AWQ: codes of diag(s) W, for the input x / s
        if input_scales is not None:
            _divide_input(graph, node, input_scales)
        codes = None
        if self.format == "matmulnbits":
            stored, codes = self._matmul_nbits(graph, node, quantized, base, bias)
        elif node.op_type == "Gemm":
            stored = self._gemm_as_matmul(graph, node, quantized, base, bias)
        else:
            stored = self._dequantized(graph, node, quantized, base, index=1, axis=0, transpose=False)
        transpose = found.via_transpose
        if transpose is not None and not transpose.outputs[0].uses() and not transpose.outputs[0].is_graph_output():
            graph.remove(transpose, safe=True)
        if input_scales is not None:
            codes = None  # the table's Gather cannot read codes of a scaled weight
        return stored, "MatMulNBits" if self.format == "matmulnbits" else "MatMul", codes

    @staticmethod
    def _initializers(graph: ir.Graph, base: str, packed: NBitsWeight) -> tuple[ir.Value, ir.Value, ir.Value | None]:
        return (
            qir.make_initializer(graph, f"{base}_q", packed.data),
            qir.make_initializer(graph, f"{base}_scales", packed.scales),
            None if packed.zero_points is None else qir.make_initializer(graph, f"{base}_zero_points", packed.zero_points),
        )

    def _matmul_nbits(self, graph: ir.Graph, node: ir.Node, quantized: blockwise.BlockQuantized, base: str, bias: ir.Value | None) -> tuple[int, ir.Value]:
        packed = matmul_nbits(quantized)
        k, n = quantized.codes.shape
        stored, scales, zero_points = self._initializers(graph, base, packed)
        inputs = [node.inputs[0], stored, scales, zero_points]
        add_after = None
        if bias is not None:
            array = qir.constant_array(bias)
            if array is not None and array.dtype == np.float32 and array.size == n and array.ndim in (1, 2):
                inputs += [None, bias if array.ndim == 1 else qir.make_initializer(graph, f"{bias.name or base}_bias", array.reshape(n))]
            else:  # one bias per output row, or computed: added after
                add_after = bias
        while inputs[-1] is None:
            inputs.pop()
        attributes = {"K": k, "N": n, "bits": quantized.bits, "block_size": quantized.block_size}
        if self.accuracy_level:  # left out when 0, as onnxruntime's quantizer does: not every provider reads it
            attributes["accuracy_level"] = self.accuracy_level
        replacement = ir.node("MatMulNBits", inputs, attributes=attributes, domain=MS_DOMAIN, name=node.name)
        _replace(graph, node, [replacement] + ([_add(graph, replacement.outputs[0], add_after, node.name)] if add_after is not None else []))
        return packed.nbytes, stored

    def _gather_block_quantized(self, graph: ir.Graph, node: ir.Node, quantized: blockwise.BlockQuantized, base: str) -> int:
        packed = gather_block_quantized(quantized)
        stored, scales, zero_points = self._initializers(graph, base, packed)
        attributes = {"bits": quantized.bits, "block_size": quantized.block_size, "gather_axis": 0, "quantize_axis": 1}
        inputs = [stored, node.inputs[1], scales] + ([zero_points] if zero_points is not None else [])
        _replace(graph, node, [ir.node("GatherBlockQuantized", inputs, attributes=attributes, domain=MS_DOMAIN, name=node.name)])
        return packed.nbytes

    def _gather_shared(self, graph: ir.Graph, node: ir.Node, quantized: blockwise.BlockQuantized, codes: ir.Value, base: str) -> int:
        """The Gather of a tied table reads its lm_head's MatMulNBits codes ``[V, n_blocks, blob]``
        (``quantize_axis=2``, one block per row of the last axis), then a Reshape to ``[..., H]``;
        only its scales (and zero points) are its own: MatMulNBits wants them ``[V, n_blocks]``,
        GatherBlockQuantized of the same rank as the data. Returns the bytes it added."""
        h, v = quantized.codes.shape
        blocks = quantized.scales.shape[0]
        scales = qir.make_initializer(graph, f"{base}_gather_scales", np.ascontiguousarray(quantized.scales.T).reshape(v, blocks, 1))
        inputs = [codes, node.inputs[1], scales]
        if not quantized.symmetric:
            zero_points = np.ascontiguousarray(quantized.zero_points.T).reshape(v, blocks, 1)
            inputs.append(qir.make_initializer(graph, f"{base}_gather_zero_points", pack_codes(zero_points, quantized.bits, pad=1 << (quantized.bits - 1))))
        attributes = {"bits": quantized.bits, "block_size": quantized.block_size, "gather_axis": 0, "quantize_axis": 2}
        gather = ir.node("GatherBlockQuantized", inputs, attributes=attributes, domain=MS_DOMAIN, name=node.name)
        rank = len(node.inputs[1].shape)
        shape = qir.make_initializer(graph, f"{base}_rows_shape", np.array([0] * rank + [h], np.int64))
        reshape = ir.node("Reshape", [gather.outputs[0], shape], name=qir.unique_name(graph, f"{node.name}_rows"))
        _replace(graph, node, [gather, reshape])
        return sum(int(x.const_value.nbytes) for x in inputs[2:])

    def _dequantized(self, graph: ir.Graph, node: ir.Node, quantized: blockwise.BlockQuantized, base: str, *, index: int, axis: int, transpose: bool) -> int:
        """A blocked ``DequantizeLinear`` (along ``axis``) of the stored weight, read by ``node`` at
        input ``index``; ``transpose``: stored as ``[N, K]`` (a Gather's table)."""
        codes, scales, zero_points = _qdq_tensors(quantized, transpose)
        inputs = [_register(graph, f"{base}_q", codes), qir.make_initializer(graph, f"{base}_scales", scales)]
        if zero_points is not None:
            inputs.append(_register(graph, f"{base}_zero_points", zero_points))
        dequantize = qir.make_dequantize(graph, inputs, node.name, axis=axis)
        dequantize.attributes["block_size"] = ir.AttrInt64("block_size", quantized.block_size)
        graph.insert_before(node, dequantize)
        node.replace_input_with(index, dequantize.outputs[0])
        return sum(_stored_bytes(t) for t in (codes, zero_points) if t is not None) + scales.nbytes

    def _gemm_as_matmul(self, graph: ir.Graph, node: ir.Node, quantized: blockwise.BlockQuantized, base: str, bias: ir.Value | None) -> NBitsWeight:
        matmul = ir.node("MatMul", [node.inputs[0], node.inputs[1]], name=node.name)
        matmul.metadata_props.update(node.metadata_props)
        nodes = [matmul] + ([_add(graph, matmul.outputs[0], bias, node.name)] if bias is not None else [])
        _replace(graph, node, nodes)
        return self._dequantized(graph, matmul, quantized, base, index=1, axis=0, transpose=False)


def _embedding_tables(graph: ir.Graph) -> dict[ir.Value, np.ndarray]:
    """The constant tables of the graph's Gathers, as ``[H, V]`` (the layout of their lm_head's weight)."""
    tables = {}
    for node in graph:
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx"):
            array = qir.constant_array(node.inputs[0])
            if array is not None and array.ndim == 2:
                tables[node.inputs[0]] = array.T
    return tables


def _tied_table(found: _Candidate, tables: dict[ir.Value, np.ndarray]) -> ir.Value | None:
    """The embedding table whose transpose the weight is: read through a Transpose (or Gemm's
    transB), or equal to it (``fold-constants`` folded the Transpose of a table small enough)."""
    if found.source in tables:
        return found.source
    return next((value for value, table in tables.items() if found.weight.shape == table.shape and np.array_equal(found.weight, table)), None)


def _can_share(gather: ir.Node, quantized: blockwise.BlockQuantized) -> bool:
    """Whether a Gather can read its tied lm_head's codes: no padded last block (H a multiple of the
    block size), and indices of known rank (for the Reshape that joins the blocks)."""
    return quantized.codes.shape[0] % quantized.block_size == 0 and gather.inputs[1].shape is not None


def _weight_only_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.domain in ("", "ai.onnx") and node_spec(n.metadata_props).weight_only]


def _upgrade_keeping_specs(model: ir.Model, context) -> None:
    """``upgrade-opset`` to opset 21; onnx's converter drops node metadata, so the specs are put back by node name."""
    specs = {n.name: n.metadata_props[SPEC_KEY] for n in model.graph if SPEC_KEY in n.metadata_props}
    apply("upgrade-opset", model, context, min_version=QDQ_OPSET)
    model.ir_version = max(model.ir_version, 10)  # INT4/UINT4 tensors
    for node in model.graph:
        if node.name in specs:
            node.metadata_props[SPEC_KEY] = specs[node.name]


def _drop_float_weight(graph: ir.Graph, weight: ir.Value) -> None:
    """A float weight no node reads any more leaves the graph now, not at the next ``remove-dead``
    (an AWQ-scaled copy is in memory), one read from external data is unmapped, and the heap's
    free pages go back: memory stays near one layer's weights, not the model's."""
    qir.release_external(weight)
    if weight.is_initializer() and not weight.uses() and not weight.is_graph_output() and weight.name in graph.initializers:
        del graph.initializers[weight.name]
        weight.const_value = None  # the Value may outlive the graph's reference (bookkeeping): its array goes now
    trim()  # and what this layer's arrays freed goes back to the system (qonnx.heap)


def _weight_problem(weight: ir.Value | None, spec: QuantSpec) -> str | None:
    """Why ``weight`` cannot be stored in blocks; "" when it already is (a DequantizeLinear's output)."""
    if weight is None:
        return "no weight"
    producer = weight.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        return ""
    array = qir.constant_array(weight)
    if array is None:
        return "weight is not a constant"
    if array.dtype != np.float32:
        return "weight is not FP32"
    if array.ndim != 2:
        return f"weight is {array.ndim}-D, not 2-D"
    return None


def _register(graph: ir.Graph, base: str, tensor: ir.Tensor) -> ir.Value:
    """Register an ``ir.Tensor`` (a 4-bit one: numpy has no such dtype) as a new initializer."""
    name = qir.unique_name(graph, base)
    tensor.name = name
    value = ir.Value(name=name, const_value=tensor, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype))
    graph.register_initializer(value)
    return value


def _qdq_tensors(quantized: blockwise.BlockQuantized, transpose: bool) -> tuple[ir.Tensor, np.ndarray, ir.Tensor | None]:
    """The standard-ONNX initializers (codes, scales, zero points) of ``quantized``, ``[K, N]``
    (``[N, K]`` with ``transpose``): signed without a zero point when symmetric, else unsigned."""
    four = quantized.bits == 4

    def orient(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array.T) if transpose else array

    if quantized.symmetric:
        codes = ir.Tensor(orient(signed_codes(quantized)), dtype=ir.DataType.INT4 if four else ir.DataType.INT8)
        return codes, orient(quantized.scales), None
    dtype = ir.DataType.UINT4 if four else ir.DataType.UINT8
    return ir.Tensor(orient(quantized.codes), dtype=dtype), orient(quantized.scales), ir.Tensor(orient(quantized.zero_points), dtype=dtype)


def _stored_bytes(tensor: ir.Tensor) -> int:
    """Bytes of a tensor as the file stores it (4-bit types two values a byte)."""
    count = int(np.prod(tensor.shape.numpy()))
    return (count + 1) // 2 if tensor.dtype in (ir.DataType.INT4, ir.DataType.UINT4) else count * tensor.dtype.itemsize


def _divide_input(graph: ir.Graph, node: ir.Node, input_scales: np.ndarray) -> None:
    """``node`` reads ``x / s`` (a Mul by ``1 / s`` along K), for a weight stored as ``diag(s) W``:
    ``(x / s) @ (diag(s) W) = x @ W``."""
    inverse = qir.make_initializer(graph, f"{node.name}_input_scales", (1.0 / np.asarray(input_scales, np.float64)).astype(np.float32))
    scale = ir.node("Mul", [node.inputs[0], inverse], name=qir.unique_name(graph, f"{node.name}_input_scale"))
    scale.outputs[0].name = qir.unique_name(graph, f"{node.name}_scaled_input")
    scale.outputs[0].dtype = ir.DataType.FLOAT
    graph.insert_before(node, scale)
    node.replace_input_with(0, scale.outputs[0])


def _add(graph: ir.Graph, value: ir.Value, bias: ir.Value, name: str) -> ir.Node:
    node = ir.node("Add", [value, bias], name=qir.unique_name(graph, f"{name}_bias"))
    return node


def _replace(graph: ir.Graph, node: ir.Node, nodes: list[ir.Node]) -> None:
    """Put ``nodes`` where ``node`` was: the last one's output takes over the node's output (its
    readers, its name, its type and shape)."""
    old = node.outputs[0]
    new = nodes[-1].outputs[0]
    new.dtype, new.shape = old.dtype, old.shape
    for made in nodes[:-1]:
        made.outputs[0].name = qir.unique_name(graph, f"{made.name}_out")
        made.outputs[0].dtype = old.dtype
    graph.insert_before(node, nodes)
    name = old.name
    qir.bypass(graph, node, new)
    new.name = name
