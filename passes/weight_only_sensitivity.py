"""Sensitivity of INT4 weight-only quantization by layer group, scored on the model's outputs.

Runs after ``resolve-policy`` on a ``precision int4`` plan (``qonnx analyze --precision int4``)
and changes nothing. The plan's weight-only nodes that ``quantize-weights`` rewrites are split
into layer groups:

- the residual branches that hold them (``qonnx.node_groups``, up to ``max_group_nodes`` nodes):
  in a decoder, each layer's attention sublayer (Q/K/V/O projections) and its MLP;
- every other one alone: the embedding table, the lm_head, a layer outside any branch.

Each group is quantized alone, the others float, and the model's outputs are compared with the FP32
model's on the evaluation samples: one full-model evaluation per group, plus one for the whole plan
at once. The weights are rounded to nearest (RTN) in the run's format, bits and block size: the
format's own cost. AWQ or GPTQ would need a calibration per group, and they reduce what RTN loses;
a group that loses much under RTN gains the most from keeping more bits.

For a language model's logits (``qonnx.metrics.TaskAccumulator``) each group has the perplexity of
the evaluation windows, the next-token top-1 agreement and the KL divergence against the FP32
logits, and the groups come out worst first by KL; for other outputs, by the worst output SQNR.
The trials run here, one after another: each is a session of the whole model, and a worker pool
would hold one such session (for an LLM, the size of the model) per worker.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.errors import UserError
from qonnx.node_groups import find_groups
from qonnx.pipeline import Context, Pass, Record, apply, register
from qonnx.policy import node_spec, set_node_spec
from qonnx.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["WeightOnlySensitivity", "WeightOnlySensitivityRecord"]

# The figures of one trial, from the report's fidelity entry of each output.
_FIGURES = ("sqnr_db", "cosine", "perplexity", "next_token_agreement", "kl_divergence")


@dataclasses.dataclass
class WeightOnlySensitivityRecord(Record):
    """The layer groups' scores, worst first, with the whole plan's for scale.

    ``metric``: what orders the groups (``kl_divergence``, higher is worse; ``sqnr_db``, lower is
    worse); ``output``: the output it is read from; ``reference_perplexity``: the FP32 model's on
    the same windows (None without logits); ``evaluations``: full-model runs spent, one per group and
    one for the whole plan.
    """

    report_key = "weight_only_sensitivity"
    metric: str
    output: str
    samples: int
    evaluations: int
    rounding: str
    reference_perplexity: float | None
    whole_plan: dict[str, Any]
    groups: list[dict[str, Any]]


@register
class WeightOnlySensitivity(Pass):
    """Attributes:
    samples: evaluation samples per trial (the first of the calibration data, else of the evaluation data).
    format: the emission of ``quantize-weights`` the trials use (``matmulnbits`` or ``qdq``).
    accuracy_level: MatMulNBits's accuracy level in the trials (as the run would emit it).
    max_group_nodes: the largest residual branch taken as one group (a decoder's attention
        sublayer is about 50 nodes; a skip across the whole network is no layer group).
    """

    name = "weight-only-sensitivity"
    summary = "score INT4 weight-only layer groups on the model's outputs (perplexity, top-1, KL for logits)"
    read_only = True
    analyses_required = frozenset({"plan"})
    analyses_produced = frozenset({"weight-only-sensitivity"})

    def __init__(
        self, context=None, *, samples: int = 4, format: Literal["matmulnbits", "qdq"] = "matmulnbits", accuracy_level: int = 4, max_group_nodes: int = 128
    ) -> None:
        super().__init__(context)
        if samples < 1 or max_group_nodes < 2:
            raise UserError(f"weight-only-sensitivity: samples must be positive and max_group_nodes at least 2 (samples={samples}, max_group_nodes={max_group_nodes})")
        self.samples, self.format, self.accuracy_level, self.max_group_nodes = samples, format, accuracy_level, max_group_nodes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        context = self.context
        data = context.calib if context.calib is not None else context.eval_data
        if data is None or len(data) == 0:
            self.skip("no data to evaluate on")
            return ir.passes.PassResult(model, False)
        planned = [n.name for n in model.graph if node_spec(n.metadata_props).weight_only]
        if not planned:
            self.skip("the plan stores no weight in blocks")
            return ir.passes.PassResult(model, False)
        feeds = [data[i] for i in range(min(self.samples, len(data)))]
        reference = runtime.session(model)
        expected = [reference.run(feed) for feed in feeds]
        del reference
        groups = _layer_groups(model, planned, self.max_group_nodes)
        with Progress(len(groups) + 1, "weight-only sensitivity", enabled=context.progress) as bar:
            whole, quantized = self._trial(model, set(planned), None, expected, feeds)
            bar.advance()
            output, metric = _ranking(whole)
            groups = [(name, kind, [n for n in members if n in quantized]) for name, kind, members in groups]
            groups = [g for g in groups if g[2]]
            entries = []
            for name, kind, members in groups:
                fidelity, _ = self._trial(model, quantized, set(members), expected, feeds)
                entries.append({"name": name, "kind": kind, "nodes": members, **_figures(fidelity[output])})
                bar.advance()
        if metric == "kl_divergence":
            entries.sort(key=lambda e: (-e[metric], e["name"]))
        else:
            entries.sort(key=lambda e: (e[metric], e["name"]))
        record = WeightOnlySensitivityRecord(
            metric=metric,
            output=output,
            samples=len(feeds),
            evaluations=len(groups) + 1,
            rounding="rtn",
            reference_perplexity=whole[output].get("reference_perplexity"),
            whole_plan={"nodes": len(quantized), **_figures(whole[output])},
            groups=entries,
        )
        context.analyses["weight-only-sensitivity"] = record
        self.publish(record)
        return ir.passes.PassResult(model, False)

    def _trial(
        self, model: ir.Model, planned: set[str], keep: set[str] | None, expected: list[dict[str, np.ndarray]], feeds: list[dict[str, np.ndarray]]
    ) -> tuple[dict[str, dict[str, float]], set[str]]:
        """The fidelity of every output (``Comparison.to_dict``) of the plan with only ``keep`` in
        weight-only (None: all of it), and the planned nodes that ``quantize-weights`` rewrote (it
        refuses the others, such as a MatMul of two activations: they stay float)."""
        trial = model.clone()
        if keep is not None:
            for node in trial.graph:
                if node.name in planned and node.name not in keep:
                    set_node_spec(node, {"format": "float"})
        scratch = Context(target=self.context.target, precision=self.context.precision, analyses={"plan": True})
        apply("quantize-weights", trial, scratch, format=self.format, accuracy_level=self.accuracy_level, algorithm="rtn")
        # A rewritten node is now MatMulNBits/GatherBlockQuantized (or reads a blocked DequantizeLinear,
        # its spec kept); one refused keeps its op with a float spec and the reason.
        refused = {n.name for n in trial.graph if n.name in planned and n.domain in ("", "ai.onnx") and not node_spec(n.metadata_props).weight_only}
        comparison = metrics.compare(expected, runtime.session(trial), feeds, what="evaluation sample")
        return comparison.to_dict(), planned - refused


def _layer_groups(model: ir.Model, planned: list[str], max_nodes: int) -> list[tuple[str, str, list[str]]]:
    """(name, kind, members) of the planned nodes: each residual branch that holds one (a node in
    nested branches goes to the outermost), then every other planned node alone, in graph order."""
    wanted = set(planned)
    branches = [g for g in find_groups(model, max_nodes=max_nodes) if g.kind == "residual" and wanted & set(g.nodes)]
    branches.sort(key=lambda g: -len(g.nodes))
    owner: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for group in branches:
        for name in group.nodes:
            if name in wanted and name not in owner:
                owner[name] = group.name
                members.setdefault(group.name, []).append(name)
    order = {name: i for i, name in enumerate(planned)}
    found = [(name, "residual", nodes) for name, nodes in members.items()]
    found += [(name, "node", [name]) for name in planned if name not in owner]
    found.sort(key=lambda g: order[g[2][0]])
    return found


def _figures(entry: dict[str, float]) -> dict[str, float | None]:
    """One output's figures, None where its shape has no such metric."""
    return {key: entry.get(key) for key in _FIGURES}


def _ranking(fidelity: dict[str, dict[str, float]]) -> tuple[str, str]:
    """(output, metric) that orders the groups: a logits output's KL divergence, else the output
    with the worst SQNR under the whole plan."""
    with_kl = [name for name, entry in fidelity.items() if entry.get("kl_divergence") is not None]
    if with_kl:
        return with_kl[0], "kl_divergence"
    return min(fidelity, key=lambda name: fidelity[name]["sqnr_db"]), "sqnr_db"
