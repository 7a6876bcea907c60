"""Per-layer sensitivity: how much fidelity each INT8 node costs, found cheaply.

Runs after ``calibrate``, on the planned FP32 model, and changes nothing. It quantizes a copy with
the whole plan (``insert-qdq``, the same Q/DQ as the output would get), then scores every node that
the copy quantizes:

- **local** (all nodes, from one tapped run of the FP32 model on ``samples`` calibration samples):
  the node alone, cut out of the quantized copy with its own quantizers, is fed the FP32 values of
  its inputs; its output is compared with the FP32 node's output. Three figures: weights and
  activations quantized (``local_db``), weights only, activations only. No full-model run.
- **global** (every weighted node, Conv/ConvTranspose/Gemm/MatMul, and the ``top`` worst others by
  local score; every node with ``exhaustive``): the model's output error with only that node in
  INT8, one full-model evaluation each. The local score misses how much the rest of the network
  amplifies a node's error (on PP-OCRv4 rec the first Conv is 35.0 dB locally, 16.8 dB globally,
  the second worst node), so the weighted nodes, where most of the error is made, are measured.
  The global trials, and the local scores node by node, are independent: they run on the context's
  executor (``Context.get_executor``, a local process pool by default, Ray when asked), with the
  same scores as one after the other.

- **groups** (``qonnx.node_groups``: a layer with the element-wise ops after it, an attention
  block, a residual branch): the model's output error with only the group's INT8 nodes in INT8,
  one full-model evaluation per group of two quantized nodes or more, on the same executor. A
  group with one quantized node takes that node's global score, unmeasured again.

The nodes come out worst first (by global score where measured, else local), with the rank
correlation (Spearman) of local against global over the nodes that have both, which says how far the
cheap local score can be trusted on this model, and the count of full-model evaluations spent; the
groups too, worst first. The ``layer-sensitivity`` analysis holds the result for ``auto-policy``
(computed on demand, without the groups: ``add_group_scores`` adds the chains and attention blocks,
the groups the policy can move, when it moves them).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import onnx
import onnx.utils
import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.errors import UserError
from qonnx.node_groups import find_groups
from qonnx.pipeline import Context, Pass, Record, analysis, register
from qonnx.policy import node_spec
from qonnx.progress import Progress
from qonnx.targets import get_target
from qonnx.trials import Trials, rank_correlation

_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

logger = logging.getLogger(__name__)

__all__ = ["LayerSensitivity", "LayerSensitivityRecord", "add_group_scores", "sensitivity_of"]

def _boundary(value: ir.Value) -> tuple[str | None, bool]:
    """The FP32 tensor behind a node input and whether it reaches the node through a Q/DQ pair:
    (name, quantized); (None, _) for a constant (a weight or bias, quantized or not)."""
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        source = producer.inputs[0]
        quantizer = source.producer()
        if quantizer is not None and quantizer.op_type == "QuantizeLinear":
            return quantizer.inputs[0].name, True
        return None, True
    if value.is_initializer() or value.const_value is not None:
        return None, False
    return value.name, False


@dataclasses.dataclass
class _Local:
    node: str
    op_type: str
    inputs: list[str]  # FP32 tensors fed to the cut-out node
    output: str
    both: onnx.ModelProto
    weights: onnx.ModelProto | None  # activations left FP32
    activations: onnx.ModelProto | None  # weights left FP32


def _cut(extractor: onnx.utils.Extractor, node: ir.Node, fp32: dict[str, ir.Node]) -> _Local | None:
    """The node with its own quantizers as a model of its FP32 inputs, and the two one-sided variants."""
    inputs, rewired_activations, quantized_constants = [], {}, []
    for index, value in enumerate(node.inputs):
        if value is None:
            continue
        name, through_qdq = _boundary(value)
        if name is not None:
            inputs.append(name)
            if through_qdq:
                rewired_activations[index] = name
        elif through_qdq:
            quantized_constants.append(index)
    if not inputs or not (rewired_activations or quantized_constants):
        return None
    inputs = list(dict.fromkeys(inputs))
    output = node.outputs[0].name
    both = extractor.extract_model(inputs, [output])

    def variant(rewire: dict[int, str], constants: dict[int, np.ndarray | None]) -> onnx.ModelProto:
        """``both`` with inputs fed FP32 tensors (``rewire``) or FP32 constants (None: an input the
        FP32 node lacks, such as a bias that bias correction added, is dropped)."""
        copy = onnx.ModelProto()
        copy.CopyFrom(both)
        inner = next(n for n in copy.graph.node if n.name == node.name)
        for index, name in rewire.items():
            inner.input[index] = name
        for index, array in sorted(constants.items(), reverse=True):
            if array is None:
                inner.input[index] = ""
                continue
            name = f"{node.name}_fp32_input{index}"
            copy.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
            inner.input[index] = name
        while inner.input and inner.input[-1] == "":
            del inner.input[-1]
        return copy

    weights = variant(rewired_activations, {}) if rewired_activations and quantized_constants else None
    original = fp32.get(node.name)
    activations = None
    if rewired_activations and quantized_constants and original is not None:
        constants: dict[int, np.ndarray | None] = {}
        for index in quantized_constants:
            value = original.inputs[index] if index < len(original.inputs) else None
            if value is not None and value.const_value is None:
                break  # a computed weight: no FP32 constant to put back
            constants[index] = None if value is None else value.const_value.numpy()
        else:
            activations = variant({}, constants)
    return _Local(node.name, node.op_type, inputs, output, both, weights, activations)


_LOCAL_KEYS = ("local_db", "local_weights_db", "local_activations_db")


def _local_entry(_shared: Any, item: tuple) -> dict[str, Any]:
    """One node's local scores (run here or in a worker): its three cut-out models (serialized; None
    where a variant does not apply) on the FP32 values of its inputs, against its FP32 output."""
    node, op_type, models, feeds, expected, threads, qdq_fusion = item
    entry: dict[str, Any] = {"node": node, "op_type": op_type}
    for key, small in zip(_LOCAL_KEYS, models):
        if small is None:
            entry[key] = None
            continue
        runner = runtime.session(ir.from_proto(onnx.ModelProto.FromString(small)), threads=threads, qdq_fusion=qdq_fusion)
        entry[key] = round(metrics.compare(expected, runner, feeds).worst_sqnr_db, 2)
    return entry


def _local_scores(
    fp32_model: ir.Model, quantized: ir.Model, feeds: list[dict[str, np.ndarray]], progress: bool, executor: Any = None, qdq_fusion: bool = True
) -> list[dict[str, Any]]:
    """Local SQNR of every quantized node, its weights-only and activations-only figures; the nodes
    are independent units of work for ``executor`` (the first runs here and is timed, the rest go to
    the workers when that saves more than their start-up). ``qdq_fusion``: as the run's evaluation
    measures (False: reference Q/DQ, for targets with their own kernels)."""
    fp32 = {n.name: n for n in fp32_model.graph}
    proto = ir.to_proto(quantized)
    extractor = onnx.utils.Extractor(proto)
    cuts = []
    for node in quantized.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") or node.name not in fp32:
            continue
        if not node_spec(fp32[node.name].metadata_props).quantized:
            continue
        cut = _cut(extractor, node, fp32)
        if cut is not None:
            cuts.append(cut)
    wanted = {name for cut in cuts for name in [*cut.inputs, cut.output]}
    graph_inputs = {v.name for v in fp32_model.graph.inputs}
    session = runtime.session(runtime.tapped_model(fp32_model, sorted(wanted - graph_inputs)))
    tapped = [{**feed, **session.run(feed)} for feed in feeds]

    def item(cut: _Local, threads: int | None) -> tuple:
        models = [None if small is None else small.SerializeToString() for small in (cut.both, cut.weights, cut.activations)]
        local_feeds = [{name: values[name] for name in cut.inputs} for values in tapped]
        expected = [{cut.output: values[cut.output]} for values in tapped]
        return cut.node, cut.op_type, models, local_feeds, expected, threads, qdq_fusion

    if not cuts:
        return []
    with Progress(len(cuts), "local sensitivity", enabled=progress) as bar:
        started = time.perf_counter()
        results = [_local_entry(None, item(cuts[0], None))]
        bar.advance()
        rest = cuts[1:]
        if executor is not None and rest and executor.worth(len(rest), time.perf_counter() - started):
            results += executor.map(_local_entry, [item(cut, executor.threads) for cut in rest])
            bar.advance(len(rest))
        else:
            for cut in rest:
                results.append(_local_entry(None, item(cut, None)))
                bar.advance()
    return results


@dataclasses.dataclass
class LayerSensitivityRecord(Record):
    """Every quantized node's local score and, for the worst, its global score; worst first."""

    report_key = "layer_sensitivity"
    metric: str
    samples: int
    evaluations: int
    rank_correlation: float | None
    nodes: list[dict[str, Any]]
    groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@register
class LayerSensitivity(Pass):
    """Attributes:
    samples: calibration samples for the tapped run and the global trials.
    top: nodes other than the weighted ones (worst by local score) that also get a global score.
    exhaustive: a global score for every node (one full evaluation each).
    groups: a global score for the node groups too (chains, attention blocks, residual branches).
    """

    name = "layer-sensitivity"
    summary = "score every INT8 node: local (its own output error, one tapped run) and global (model output, the worst few)"
    read_only = True
    analyses_required = frozenset({"plan", "ranges"})
    analyses_produced = frozenset({"layer-sensitivity"})

    def __init__(self, context=None, *, samples: int = 4, top: int = 8, exhaustive: bool = False, groups: bool = True) -> None:
        super().__init__(context)
        if samples < 1 or top < 0:
            raise UserError(f"layer-sensitivity: samples must be positive and top not negative (samples={samples}, top={top})")
        self.samples, self.top, self.exhaustive, self.groups = samples, top, exhaustive, GROUP_KINDS if groups else ()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        record = sensitivity_of(model, self.context, samples=self.samples, top=self.top, exhaustive=self.exhaustive, groups=self.groups)
        if record is not None:
            self.context.analyses["layer-sensitivity"] = record
            self.publish(record)
        return ir.passes.PassResult(model, False)


@analysis("layer-sensitivity", requires=("plan", "ranges"))
def _layer_sensitivity(model: ir.Model, context: Context) -> LayerSensitivityRecord | None:
    """The ``layer-sensitivity`` analysis on demand (``auto-policy`` asks for it only when the
    all-INT8 plan misses its target), with the pass's default options but no group scores (the
    policy asks for those, ``add_group_scores``, only when it moves groups)."""
    return sensitivity_of(model, context, groups=())


GROUP_KINDS = ("chain", "attention", "residual")


def sensitivity_of(
    model: ir.Model, context: Context, *, samples: int = 4, top: int = 8, exhaustive: bool = False, groups: tuple[str, ...] = GROUP_KINDS
) -> LayerSensitivityRecord | None:
    """Local and global scores of the planned model's INT8 nodes, worst first (None without data)."""
    data = context.calib if context.calib is not None else context.eval_data  # evaluation data stays held out
    if data is None or len(data) == 0 or context.precision != "int8":
        return None
    feeds = [data[i] for i in range(min(samples, len(data)))]
    trials = Trials(model, context, feeds, "sqnr")
    fused = get_target(context.target).cpu_fused_kernels
    nodes = _local_scores(model, trials.quantized(), feeds, context.progress, context.get_executor(), qdq_fusion=fused)
    nodes.sort(key=lambda e: (e["local_db"], e["node"]))
    others = [e for e in nodes if e["op_type"] not in _WEIGHTED]
    chosen = {e["node"] for e in nodes if e["op_type"] in _WEIGHTED} | {e["node"] for e in others[:top]}
    measured = nodes if exhaustive else [e for e in nodes if e["node"] in chosen]
    for entry in nodes:
        entry["global_db"] = None
    with Progress(len(measured), "global sensitivity", enabled=context.progress) as bar:
        values = trials.scores([{entry["node"]} for entry in measured], context.get_executor())
        bar.advance(len(measured))
    for entry, value in zip(measured, values):
        entry["global_db"] = round(value, 2)
    pairs = [(e["local_db"], e["global_db"]) for e in nodes if e["global_db"] is not None]
    correlation = rank_correlation([p[0] for p in pairs], [p[1] for p in pairs])
    nodes.sort(key=lambda e: (e["global_db"] if e["global_db"] is not None else np.inf, e["local_db"], e["node"]))
    group_entries = _group_scores(model, trials, nodes, groups, context)
    return LayerSensitivityRecord("sqnr_db", len(feeds), trials.evaluations, None if correlation is None else round(correlation, 3), nodes, group_entries)


@analysis("group-sensitivity", requires=("plan", "ranges"))
def _group_sensitivity(model: ir.Model, context: Context) -> LayerSensitivityRecord | None:
    """The ``layer-sensitivity`` analysis with the chain and attention groups scored too (what
    ``auto-policy(groups=true)`` ranks): the same record, its group scores added once."""
    record = context.analysis("layer-sensitivity", model)
    if record is not None:
        add_group_scores(model, context, record)
    return record


def add_group_scores(model: ir.Model, context: Context, record: LayerSensitivityRecord, kinds: tuple[str, ...] = ("chain", "attention")) -> None:
    """Score the groups of ``kinds`` into ``record`` (when it has none yet), on the record's samples
    and metric, so that group and node scores rank on one scale; the evaluations are counted."""
    if record.groups:
        return
    data = context.calib if context.calib is not None else context.eval_data
    trials = Trials(model, context, [data[i] for i in range(record.samples)], "sqnr")
    record.groups = _group_scores(model, trials, record.nodes, kinds, context)
    record.evaluations += trials.evaluations


def _group_scores(model: ir.Model, trials: Trials, nodes: list[dict[str, Any]], kinds: tuple[str, ...], context: Context) -> list[dict[str, Any]]:
    """The groups of ``kinds`` that hold a quantized node, with their global score, worst first:
    one evaluation per group of two quantized nodes or more (only those nodes in INT8), a single
    quantized node's own global score otherwise."""
    if not kinds:
        return []
    candidates = set(trials.candidates)
    by_node = {e["node"]: e for e in nodes}
    entries = []
    for group in find_groups(model):
        quantized = [n for n in group.nodes if n in candidates]
        if group.kind in kinds and quantized:
            entries.append({**group.to_dict(), "quantized": quantized, "global_db": None, "measured": len(quantized) > 1})
    measured = [e for e in entries if e["measured"]]
    with Progress(len(measured), "group sensitivity", enabled=context.progress) as bar:
        values = trials.scores([set(e["quantized"]) for e in measured], context.get_executor())
        bar.advance(len(measured))
    for entry, value in zip(measured, values):
        entry["global_db"] = round(value, 2)
    for entry in entries:
        if not entry["measured"]:
            entry["global_db"] = by_node.get(entry["quantized"][0], {}).get("global_db")
    entries.sort(key=lambda e: (e["global_db"] if e["global_db"] is not None else np.inf, e["name"]))
    return entries
