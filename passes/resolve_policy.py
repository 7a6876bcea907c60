"""Policy resolution: decide the format of every node once, and write it into the node.

Each node of the main graph whose op the target quantizes gets the spec that the mixed-precision
policy resolves for it, stored as JSON in ``metadata_props["qonnx.spec"]``; later passes read only
that. A node that the policy wants in INT8 but that cannot be (its data is not FP32, or it sits in
a subgraph that calibration cannot reach) is written as float with the reason. The whole plan (the
policy, each distinct spec once, each node's spec and the reasons for float fallbacks) is stored
in the model's metadata as compact JSON (``qonnx.plan``) for the report and for replaying with
``--policy plan.json``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import onnx_ir as ir

from qonnx import host
from qonnx import ir as qir
from qonnx.errors import UserError
from qonnx.policy import FLOAT, PLAN_KEY, SPEC_KEY, MixedPrecisionPolicy, QuantSpec, Rule
from qonnx.pipeline import Pass, register
from qonnx.targets import FLOAT_PRECISIONS, WEIGHT_AXIS_OPS, get_target

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
    scales and Gather's indices are not quantized."""
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


def _has_fp32_data(node: ir.Node) -> bool:
    return any(v is not None and v.dtype == ir.DataType.FLOAT for v in [*node.inputs, *node.outputs])


def load_policy(path: str) -> tuple[MixedPrecisionPolicy, MixedPrecisionPolicy]:
    """A policy file (``default`` and ``rules``) or a plan (``qonnx.plan`` metadata of a model).

    A plan replays its policy, and its ``nodes`` map (node name → format) becomes exact-name rules
    on top, so that editing one node's format in a plan changes that node.

    Returns the policy to resolve with, and the policy the new plan records: the file's own, without
    the rules its ``nodes`` added (the new plan's ``nodes`` carry them), so that a replayed plan
    comes out as the same plan, byte for byte, instead of growing by a rule per node each time.
    """
    try:
        data = json.loads(Path(path).read_text())
        recorded = MixedPrecisionPolicy.from_dict(data.get("policy", data))
        policy = MixedPrecisionPolicy.from_dict(data.get("policy", data))
        specs = {name: QuantSpec.from_dict(spec) for name, spec in data.get("specs", {}).items()}
        for node, spec_id in data.get("nodes", {}).items():
            spec = specs.get(spec_id) or QuantSpec.from_dict({"format": spec_id})
            policy.rules.append(Rule(spec, name=node))
        return policy, recorded
    except (OSError, json.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path}: not a usable policy file ({exc})") from exc


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


@register
class ResolvePolicy(Pass):
    name = "resolve-policy"
    summary = "resolve the mixed-precision policy into a spec per node (node metadata)"
    preserves = frozenset({"shapes", "ranges"})

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
            policy = recorded = self.target.policy(
                self.context.precision, self.context.mode, self.context.reduce_range, saturating_cpu=saturating
            )
        modified = _name_unnamed_nodes(model)
        plan = _Plan()
        seven_bit: set[str] = set()
        float_format = self.context.precision in FLOAT_PRECISIONS
        candidates = []
        for node in model.graph:
            if float_format:
                if not _has_fp32_data(node):
                    continue
            elif node.op_type not in self.target.quantized_ops or node.domain not in ("", "ai.onnx"):
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
            if spec.quantized and (reason := _refusal(node, self.target)):
                entry = {"format": "float", "reason": reason}
            text = json.dumps(entry, sort_keys=True)
            if node.metadata_props.get(SPEC_KEY) != text:
                node.metadata_props[SPEC_KEY] = text
                modified = True
            plan.add(node.name, entry)
            if entry.get("reduce_range") and node.op_type in WEIGHT_AXIS_OPS:
                seven_bit.add(node.op_type)
        self.context.notes["reduce_range_ops"] = sorted(seven_bit)
        for node in model.graph.all_nodes():
            if node.graph is not model.graph and (float_format or node.op_type in self.target.quantized_ops):
                plan.add(node.name, {"format": "float", "reason": "inside a subgraph"})
        document = plan.to_json(self.target.name, recorded)
        if model.metadata_props.get(PLAN_KEY) != document:
            model.metadata_props[PLAN_KEY] = document
            modified = True
        return ir.passes.PassResult(model, modified)


def record_formats(model: ir.Model, entries: dict[str, dict]) -> None:
    """Change the plan's entries (``{"format": ..., "reason": ...}``) of the named nodes.

    For passes that decide a node's format after ``resolve-policy`` (FP32 islands, cast placement):
    the plan in the model's metadata stays the one record of every node's format and reason.
    """
    document = json.loads(model.metadata_props.get(PLAN_KEY, "{}"))
    plan = _Plan()
    plan.specs, plan.nodes, plan.reasons = document.get("specs", {}), document.get("nodes", {}), document.get("reasons", {})
    for node, entry in entries.items():
        plan.add(node, entry)
    document.update(specs=plan.specs, nodes=plan.nodes, reasons=plan.reasons)
    model.metadata_props[PLAN_KEY] = json.dumps(document, sort_keys=True, separators=(",", ":"))


class _Plan:
    """Each node's spec, stored once per distinct spec: ``specs`` {id: spec}, ``nodes`` {name: id}.

    The id of a spec is its format ("int8"), with "#1", "#2"… for further specs of that format.
    """

    def __init__(self):
        self.specs: dict[str, dict] = {}
        self.nodes: dict[str, str] = {}
        self.reasons: dict[str, str] = {}

    def add(self, node: str, entry: dict) -> None:
        entry = dict(entry)
        self.reasons.pop(node, None)
        if reason := entry.pop("reason", None):
            self.reasons[node] = reason
        spec_id = next((key for key, spec in self.specs.items() if spec == entry), None)
        if spec_id is None:
            taken = sum(1 for key in self.specs if key.split("#")[0] == entry["format"])
            spec_id = entry["format"] if not taken else f"{entry['format']}#{taken}"
            self.specs[spec_id] = entry
        self.nodes[node] = spec_id

    def to_json(self, target: str, policy: MixedPrecisionPolicy) -> str:
        document = {"target": target, "policy": policy.to_dict(), "specs": self.specs, "nodes": self.nodes, "reasons": self.reasons}
        return json.dumps(document, sort_keys=True, separators=(",", ":"))
