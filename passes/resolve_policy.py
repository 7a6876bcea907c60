"""Policy resolution: decide the format of every node once, and write it into the node.

Each node of the main graph whose op the target quantizes gets the spec that the mixed-precision
policy resolves for it, stored as JSON in ``metadata_props["qonnx.spec"]``; later passes read only
that. A node that the policy wants in INT8 but that cannot be (its data is not FP32, or it sits in
a subgraph that calibration cannot reach) is written as float with the reason. The whole plan (the
policy, the spec of each format, each node's format and the reasons for float fallbacks) is stored
in the model's metadata as compact JSON (``qonnx.plan``) for the report and for replaying with
``--policy plan.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.errors import UserError
from qonnx.policy import SPEC_KEY, MixedPrecisionPolicy, QuantSpec, Rule
from qonnx.pipeline import Pass, register
from qonnx.targets import get_target

logger = logging.getLogger(__name__)

PLAN_KEY = "qonnx.plan"


def _refusal(node: ir.Node) -> str | None:
    data = [v for v in node.inputs[:2] if v is not None]
    if any(v.dtype is not None and v.dtype != ir.DataType.FLOAT for v in data):
        return "inputs are not FP32"
    if node.outputs[0].dtype not in (None, ir.DataType.FLOAT):
        return "output is not FP32"
    return None


def load_policy(path: str) -> MixedPrecisionPolicy:
    """A policy file (``default`` and ``rules``) or a plan (``qonnx.plan`` metadata of a model).

    A plan replays its policy, and its ``nodes`` map (node name → format) becomes exact-name rules
    on top, so that editing one node's format in a plan changes that node.
    """
    try:
        data = json.loads(Path(path).read_text())
        policy = MixedPrecisionPolicy.from_dict(data.get("policy", data))
        specs = {name: QuantSpec.from_dict(spec) for name, spec in data.get("specs", {}).items()}
        for node, fmt in data.get("nodes", {}).items():
            spec = specs.get(fmt) or QuantSpec.from_dict({"format": fmt})
            policy.rules.append(Rule(spec, name=node))
        return policy
    except (OSError, json.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path}: not a usable policy file ({exc})") from exc


@register
class ResolvePolicy(Pass):
    name = "resolve-policy"
    summary = "resolve the mixed-precision policy into a spec per node (node metadata)"
    preserves = frozenset({"shapes", "ranges"})

    def __init__(self, context=None, *, policy: str | None = None, target: str | None = None) -> None:
        super().__init__(context)
        self.policy_path = policy or self.context.policy
        self.target = get_target(target or self.context.target)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        policy = load_policy(self.policy_path) if self.policy_path else self.target.policy(self.context.precision)
        formats: dict[str, str] = {}
        reasons: dict[str, str] = {}
        specs: dict[str, dict] = {}
        modified = False
        for index, node in enumerate(model.graph):
            if not node.name:
                node.name = qir.unique_name(model.graph, f"{node.op_type}_{index}")
                modified = True
            if node.op_type not in self.target.quantized_ops or node.domain not in ("", "ai.onnx"):
                continue
            spec = policy.resolve(node.op_type, node.name)
            entry = spec.to_dict()
            if spec.quantized and (reason := _refusal(node)):
                entry = {"format": "float", "reason": reason}
            text = json.dumps(entry, sort_keys=True)
            if node.metadata_props.get(SPEC_KEY) != text:
                node.metadata_props[SPEC_KEY] = text
                modified = True
            formats[node.name] = entry["format"]
            if "reason" in entry:
                reasons[node.name] = entry["reason"]
            else:
                specs[entry["format"]] = entry
        for node in model.graph.all_nodes():
            if node.graph is not model.graph and node.op_type in self.target.quantized_ops:
                name = node.name or node.op_type
                formats.setdefault(name, "float")
                reasons.setdefault(name, "inside a subgraph")
        plan = {"target": self.target.name, "policy": policy.to_dict(), "specs": specs, "nodes": formats, "reasons": reasons}
        document = json.dumps(plan, sort_keys=True, separators=(",", ":"))
        if model.metadata_props.get(PLAN_KEY) != document:
            model.metadata_props[PLAN_KEY] = document
            modified = True
        self.context.notes["plan"] = plan
        return ir.passes.PassResult(model, modified)
