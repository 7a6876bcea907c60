"""Policy resolution: decide the format of every node once, and write it into the node.

Each node of the main graph whose op the target quantizes gets the spec that the mixed-precision
policy resolves for it, stored as JSON in ``metadata_props["qonnx.spec"]``; later passes read only
that. A node that the policy wants in INT8 but that cannot be (its data is not FP32) is written as
float with the reason. With precision
``int4`` the nodes decided are MatMul, Gemm and Gather (their weights stored in blocks, the
``weight-only`` format); a weight that is not FP32 keeps its node float.

Inside If/Loop/Scan bodies calibration cannot reach the activations: there (INT8) only the weighted
ops (Conv, ConvTranspose, Gemm, MatMul) and the recurrent ops (LSTM, GRU, RNN) with a constant FP32
weight get the policy's INT8 spec, as weight-only INT8 (full 8 bits: no integer kernel saturates),
with the reason "weights only" in the plan; every other node the target would quantize stays
float with the reason. Recurrent ops are weight-only in the main graph too. The whole plan (the
policy, each distinct spec once, each node's spec and the reasons for float fallbacks) is stored
in the model's metadata as compact JSON (``qonnx.plan``) for the report and for replaying with
``--policy plan.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import onnx_ir as ir

from qonnx import host
from qonnx import ir as qir
from qonnx.errors import UserError
from qonnx.graph_roles import float_op_read, residual_skip_inputs
from qonnx.policy import FLOAT, PLAN_KEY, MixedPrecisionPolicy, Plan, Rule, load_policy, node_spec, set_node_spec
from qonnx.pipeline import Pass, Record, register
from qonnx.quantized_parts import already_quantized
from qonnx.targets import FLOAT_PRECISIONS, WEIGHT_AXIS_OPS, WEIGHT_ONLY_OPS, get_target

logger = logging.getLogger(__name__)


def _name_unnamed_nodes(model: ir.Model) -> bool:
    """Give every unnamed node of every graph a name no other node has (``<OpType>_<n>``)."""
    nodes = list(qir.all_nodes(model))
    taken = {n.name for n in nodes if n.name}
    named = False
    counter = 0
    for node in nodes:
        if node.name:
            continue
        while f"{node.op_type}_{counter}" in taken:
            counter += 1
        node.name = f"{node.op_type}_{counter}"
        taken.add(node.name)
        named = True
    return named


def _refusal(node: ir.Node, target) -> str | None:
    """Why ``node`` cannot run in INT8, or None. Only data inputs count: Reshape's shape, Resize's
    scales and Gather's indices are not quantized. The target's placement rules may refuse too
    (``qonnx.graph_roles``): an Add that is no residual Add, a weighted op that reads an op the
    target keeps in higher precision."""
    if already_quantized(node):
        return "already quantized"
    if target.residual_adds and node.op_type == "Add" and residual_skip_inputs(node, target) is None:
        return f"not a residual Add (no input made by a weighted op): {target.name} quantizes only the skip input of residual Adds"
    if (float_op := float_op_read(node, target)) is not None:
        return f"reads {float_op.op_type} {float_op.name!r}, which {target.name} keeps in higher precision: a half-quantized {node.op_type} runs in float"
    if node.op_type in target.passthrough_ops:
        data = node.inputs[:1]
    elif node.op_type in target.weighted_ops:
        data = node.inputs[:2]
    else:
        data = node.inputs
    if any(v is not None and v.dtype is not None and v.dtype != ir.DataType.FLOAT for v in data):
        return "inputs are not FP32"
    if node.outputs[0].dtype not in (None, ir.DataType.FLOAT):
        return "output is not FP32"
    return None


def _weight_only_refusal(node: ir.Node) -> str | None:
    """Why ``node``'s weight (a Gather's table, a MatMul/Gemm's input 1) cannot be stored in blocks,
    or None; whether it is a constant 2-D weight the ``quantize-weights`` pass checks and records."""
    if already_quantized(node):
        return "already quantized"
    weight = node.inputs[0 if node.op_type == "Gather" else 1]
    if weight is not None and weight.dtype is not None and weight.dtype != ir.DataType.FLOAT:
        return "weight is not FP32"
    return None


def _weight_refusal(node: ir.Node, target) -> str | None:
    """Why a weight-only node (recurrent, or weighted inside a subgraph) cannot have INT8 weights, or None."""
    if already_quantized(node):
        return "already quantized"
    indices = (1, 2) if node.op_type in target.recurrent_ops else (1,) if node.op_type != "MatMul" else (0, 1)
    weights = [node.inputs[i] for i in indices if i < len(node.inputs) and node.inputs[i] is not None]
    constant = [w for w in weights if qir.is_constant_initializer(w) and w.const_value.dtype == ir.DataType.FLOAT]
    if node.op_type in target.recurrent_ops and len(constant) < 2:
        return "W or R is not a constant FP32 initializer"
    if not constant:
        return "weight is not a constant FP32 initializer"
    return None


SUBGRAPH_FLOAT = "inside a subgraph: calibration cannot reach its activations"
SUBGRAPH_WEIGHTS = "weights only: inside a subgraph, calibration cannot reach its activations"
RECURRENT_WEIGHTS = "weights only: onnxruntime has no integer kernel for this op"


def _has_fp32_data(node: ir.Node) -> bool:
    return any(v is not None and v.dtype == ir.DataType.FLOAT for v in [*node.inputs, *node.outputs])



EXCLUDED = "excluded by the config"


def config_rules(candidates: list[ir.Node], nodes_to_exclude, op_types_to_quantize) -> list[Rule]:
    """The config's choices as exact-name float rules, each with its reason.

    ``nodes_to_exclude``: node names or regular expressions (full match); one that matches no node
    is an error (it would silently do nothing). ``op_types_to_quantize``: nodes of other op types
    stay float. Exact-name rules are the most specific kind, so these win over a policy file's.
    """
    rules: dict[str, Rule] = {}
    names = [node.name for node in candidates]
    for pattern in nodes_to_exclude:
        matched = [name for name in names if name == pattern or re.fullmatch(pattern, name)]
        if not matched:
            raise UserError(f"nodes_to_exclude: {pattern!r} matches no node the policy decides (nodes: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
        for name in matched:
            rules.setdefault(name, Rule(FLOAT, name=name, reason=EXCLUDED))
    if op_types_to_quantize is not None:
        wanted = set(op_types_to_quantize)
        for node in candidates:
            if node.op_type not in wanted and node.name not in rules:
                rules[node.name] = Rule(FLOAT, name=node.name, reason=f"op type {node.op_type} not in op_types_to_quantize")
    return [rules[name] for name in names if name in rules]


def _with_rules(policy: MixedPrecisionPolicy, rules: list[Rule]) -> MixedPrecisionPolicy:
    return MixedPrecisionPolicy(policy.default, [*policy.rules, *(r for r in rules if r not in policy.rules)])


@dataclasses.dataclass
class PolicyRecord(Record):
    """The op types whose weights the plan stores in 7 bits (empty: none)."""

    report_key = "reduce_range_ops"
    reduce_range_ops: list[str]

    def to_report(self) -> dict:
        return {"reduce_range": bool(self.reduce_range_ops), "reduce_range_ops": self.reduce_range_ops}


def _check_plan_model(path: str, model: ir.Model) -> None:
    """A plan that records the model it was made for (``--policy auto`` writes the hash) replays only on it."""
    try:
        made_for = json.loads(Path(path).read_text()).get("model_hash")
    except (OSError, ValueError, AttributeError):
        return  # load_policy says what is wrong with the file
    if made_for and made_for != qir.model_hash(model):
        raise UserError(f"{path} is a plan for another model (model hash {made_for[:12]}, this model {qir.model_hash(model)[:12]}); run --policy auto on this one")


@register
class ResolvePolicy(Pass):
    name = "resolve-policy"
    summary = "resolve the mixed-precision policy into a spec per node (node metadata)"
    preserves = frozenset({"shapes", "ranges"})
    analyses_produced = frozenset({"plan"})

    def __init__(self, context=None, *, policy: str | None = None) -> None:
        super().__init__(context)
        self.policy_path = policy or self.context.policy
        self.target = get_target(self.context.target)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if isinstance(self.policy_path, MixedPrecisionPolicy):
            policy = recorded = self.policy_path
        elif self.policy_path:
            policy, recorded = load_policy(self.policy_path)
        else:
            saturating = self.context.reduce_range is None and host.u8s8_saturates()
            if saturating:
                logger.info("onnxruntime's U8S8 kernels saturate on this CPU (no VNNI): 7-bit weights where the target says so")
            policy = recorded = self._default_policy(saturating)
        modified = _name_unnamed_nodes(model)
        if isinstance(self.policy_path, str) and self.policy_path:
            _check_plan_model(self.policy_path, model)
        plan = Plan()
        seven_bit: set[str] = set()
        float_format = self.context.precision in FLOAT_PRECISIONS
        decided_ops = WEIGHT_ONLY_OPS if self.context.precision == "int4" else self.target.quantized_ops
        weight_only_in_subgraphs = set(self.target.weighted_ops) | set(self.target.recurrent_ops) if self.target.subgraph_weight_only else set()
        candidates = []
        for node in model.graph.all_nodes():
            if float_format:
                if node.graph is not model.graph or not _has_fp32_data(node):
                    continue
            elif node.op_type not in decided_ops or node.domain not in ("", "ai.onnx"):
                continue
            elif node.graph is not model.graph and (self.context.precision != "int8" or node.op_type not in weight_only_in_subgraphs):
                continue
            candidates.append(node)
        extra = config_rules(candidates, self.context.nodes_to_exclude, self.context.op_types_to_quantize)
        if extra:
            policy, recorded = _with_rules(policy, extra), _with_rules(recorded, extra)
        for node in candidates:
            rule = policy.match(node.op_type, node.name)
            spec = policy.default if rule is None else rule.spec
            entry = spec.to_dict()
            if rule is not None and rule.reason and not spec.quantized:
                entry["reason"] = rule.reason
            in_subgraph = node.graph is not model.graph
            weights_only = in_subgraph or node.op_type in self.target.recurrent_ops
            if spec.quantized and weights_only:
                if reason := _weight_refusal(node, self.target):
                    entry = {"format": "float", "reason": f"inside a subgraph: {reason}" if in_subgraph else reason}
                else:
                    entry = {**spec.to_dict(), "reduce_range": False, "reason": SUBGRAPH_WEIGHTS if in_subgraph else RECURRENT_WEIGHTS}
            elif spec.quantized and (reason := _refusal(node, self.target)):
                entry = {"format": "float", "reason": reason}
            elif spec.weight_only and (reason := _weight_only_refusal(node)):
                entry = {"format": "float", "reason": reason}
            modified |= set_node_spec(node, entry)
            plan.add(node.name, entry)
            if entry.get("reduce_range") and node.op_type in WEIGHT_AXIS_OPS:
                seven_bit.add(node.op_type)
        self.publish(PolicyRecord(sorted(seven_bit)))
        decided = {node.name for node in candidates}
        if self._float_remainder() == "fp16":
            for node in model.graph:
                spec = node_spec(node.metadata_props)
                if spec.quantized or spec.weight_only or not _has_fp32_data(node) or node.domain not in ("", "ai.onnx"):
                    continue
                rule = policy.match(node.op_type, node.name)
                if rule is not None and rule.rank >= 2 and rule.spec.format == "float":
                    continue  # float by name (--exclude, a policy or a replayed plan): FP32, as asked
                entry = {"format": "fp16", **({"reason": plan.reasons[node.name]} if node.name in plan.reasons else {})}
                modified |= set_node_spec(node, entry)
                plan.add(node.name, entry)
                decided.add(node.name)
        for node in model.graph.all_nodes():
            if node.graph is not model.graph and (float_format or node.op_type in decided_ops):
                if node.name not in decided:
                    plan.add(node.name, {"format": "float", "reason": SUBGRAPH_FLOAT if self.context.precision == "int8" else "inside a subgraph"})
            elif node.domain not in ("", "ai.onnx") and not float_format:
                reason = "already quantized" if already_quantized(node) else f"operator of the {node.domain} domain: left float, quantized around"
                plan.add(node.name, {"format": "float", "reason": reason})
        document = plan.to_json(self.target.name, recorded)
        if model.metadata_props.get(PLAN_KEY) != document:
            model.metadata_props[PLAN_KEY] = document
            modified = True
        return ir.passes.PassResult(model, modified)

    def _default_policy(self, saturating: bool) -> MixedPrecisionPolicy:
        """The target's policy for the run's precision (INT4: with the run's weight-only options)."""
        if self.context.precision == "int4":
            options = self.context.weight_only
            if options is None:
                return self.target.weight_only_policy()
            return self.target.weight_only_policy(
                bits=options.bits, block_size=options.block_size, symmetric=options.symmetric, embedding_bits=options.embedding_bits
            )
        return self.target.policy(
            self.context.precision, self.context.mode, self.context.reduce_range, saturating_cpu=saturating, fp8_activations=self.context.fp8_activations
        )

    def _float_remainder(self) -> str:
        """The format of the unquantized nodes of an INT8/FP8 run ("fp32" in every other run)."""
        return self.target.remainder(self.context.precision, self.context.float_remainder)
