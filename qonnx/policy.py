"""Mixed-precision policy: which numeric format each node runs in.

A policy is a default spec plus rules. A rule matches by exact node name, by a regular expression on
the name, or by op type; when several match, the more specific wins (exact name > name regex >
op type > default), and among rules of one kind the last one given wins, as in torch.ao's
QConfigMapping. The resolved spec of every node is written into the node's metadata by the
``resolve-policy`` pass; later passes read only that.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qonnx.errors import UserError

# Block sizes along the reduction axis that onnxruntime's block-quantized kernels run on their fast
# path (MLAS); ``qonnx.blockwise`` repeats them (this module imports nothing of ours but errors).
BLOCK_SIZES = (16, 32, 64, 128, 256)

if TYPE_CHECKING:  # only for annotations: importing qonnx.config stays light (no onnx, no onnx-ir)
    import onnx_ir as ir

__all__ = ["QuantSpec", "Rule", "MixedPrecisionPolicy", "FLOAT", "SPEC_KEY", "PLAN_KEY", "node_spec", "set_node_spec", "Plan", "record_formats", "load_policy"]

SPEC_KEY = "qonnx.spec"
PLAN_KEY = "qonnx.plan"

Format = Literal["float", "int8", "fp8", "fp16", "bf16", "weight-only"]
# Formats quantized through QuantizeLinear/DequantizeLinear with calibrated (or dynamic) ranges.
QDQ_FORMATS = ("int8", "fp8")
WeightBits = Literal[4, 8]
# The fields that only a "weight-only" spec carries (left out of other specs' dicts).
_WEIGHT_ONLY_FIELDS = ("weight_bits", "block_size", "symmetric_weights")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """The format of one node.

    ``format`` "int8" quantizes inputs through QuantizeLinear/DequantizeLinear: activations as
    ``activation_dtype`` (asymmetric unless ``symmetric_activations``), weights as symmetric
    ``weight_dtype``, per output channel when ``per_channel``. ``dynamic`` activations are
    quantized at run time from each input's own min/max (DynamicQuantizeLinear, always UINT8
    asymmetric) instead of calibrated ranges. ``reduce_range`` stores weights in 7 bits
    (-63..63): on x86 CPUs without VNNI, onnxruntime multiplies U8 by S8 with ``vpmaddubsw``,
    whose 16-bit sums of two products saturate with full-range weights.

    ``format`` "fp8" is the same with FLOAT8 types: ``activation_dtype`` float8e4m3fn (or
    float8e5m2, more range, less precision) and ``weight_dtype`` float8e4m3fn, symmetric (zero
    point 0) and scaled so that the calibrated maximum lands on the type's largest value (448 for
    E4M3); ``dynamic`` and ``reduce_range`` do not apply.

    ``format`` "weight-only" stores the constant weight (a MatMul/Gemm weight, a Gather table) in
    ``weight_bits`` with one scale per block of ``block_size`` values along the reduction axis
    (``qonnx.blockwise``), symmetric (zero point ``2**(bits-1)``) unless ``symmetric_weights`` is
    false; activations stay float and need no calibration.
    """

    format: Format = "float"
    activation_dtype: Literal["uint8", "int8", "float8e4m3fn", "float8e5m2"] = "uint8"
    weight_dtype: Literal["int8", "float8e4m3fn"] = "int8"
    symmetric_activations: bool = False
    per_channel: bool = True
    dynamic: bool = False
    reduce_range: bool = False
    weight_bits: WeightBits = 4
    block_size: int = 32
    symmetric_weights: bool = True

    def __post_init__(self):
        hints = typing.get_type_hints(type(self), globalns={"Literal": Literal, "Format": Format, "WeightBits": WeightBits})
        for field in dataclasses.fields(self):
            allowed = typing.get_args(hints[field.name])
            value = getattr(self, field.name)
            if hints[field.name] is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"spec field {field.name} must be true or false, not {value!r}")
            elif allowed and (value not in allowed or isinstance(value, bool)):
                raise ValueError(f"spec field {field.name} must be one of {', '.join(map(str, allowed))}, not {value!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size not in BLOCK_SIZES:
            raise ValueError(f"spec field block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, not {self.block_size!r}")
        float8 = [name for name in ("activation_dtype", "weight_dtype") if getattr(self, name).startswith("float8")]
        if self.format == "fp8" and (len(float8) < 2 or not self.symmetric_activations or self.dynamic or self.reduce_range):
            raise ValueError("an fp8 spec has float8 activation and weight types, symmetric activations, no dynamic and no reduce_range")
        if self.format != "fp8" and float8:
            raise ValueError(f"spec field {float8[0]} is a float8 type: that is format fp8, not {self.format}")

    @property
    def quantized(self) -> bool:
        """INT8 or FP8 through Q/DQ: activations quantized with calibrated (or dynamic) ranges."""
        return self.format in QDQ_FORMATS

    @property
    def weight_only(self) -> bool:
        return self.format == "weight-only"

    def to_dict(self) -> dict[str, Any]:
        if self.format == "weight-only":
            return {"format": self.format, **{name: getattr(self, name) for name in _WEIGHT_ONLY_FIELDS}}
        if self.format not in QDQ_FORMATS:
            return {"format": self.format}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _WEIGHT_ONLY_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown spec fields: {sorted(unknown)}")
        return cls(**data)


FLOAT = QuantSpec("float")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Nodes matched by ``name`` (exact), ``name_regex`` (full match) or ``op_type`` get ``spec``.

    ``reason``: why the rule is there, recorded in the plan for the nodes it decides (such as
    "excluded by the config").
    """

    spec: QuantSpec
    op_type: str | None = None
    name_regex: str | None = None
    name: str | None = None
    reason: str | None = None

    def __post_init__(self):
        if sum(x is not None for x in (self.op_type, self.name_regex, self.name)) != 1:
            raise ValueError("a rule matches by exactly one of op_type, name_regex or name")

    @property
    def rank(self) -> int:
        return 3 if self.name is not None else 2 if self.name_regex is not None else 1

    def matches(self, op_type: str, node_name: str) -> bool:
        if self.name is not None:
            return node_name == self.name
        if self.name_regex is not None:
            return re.fullmatch(self.name_regex, node_name) is not None
        return op_type == self.op_type

    def to_dict(self) -> dict[str, Any]:
        key = "name" if self.name is not None else "name_regex" if self.name_regex is not None else "op_type"
        data = {key: getattr(self, key), "spec": self.spec.to_dict()}
        if self.reason is not None:
            data["reason"] = self.reason
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        data = dict(data)
        spec = QuantSpec.from_dict(data.pop("spec"))
        return cls(spec, **data)


@dataclasses.dataclass
class MixedPrecisionPolicy:
    default: QuantSpec = FLOAT
    rules: list[Rule] = dataclasses.field(default_factory=list)

    def resolve(self, op_type: str, node_name: str) -> QuantSpec:
        rule = self.match(op_type, node_name)
        return self.default if rule is None else rule.spec

    def match(self, op_type: str, node_name: str) -> Rule | None:
        """The rule that decides the node (None: the default does)."""
        best, best_rank = None, 0
        for rule in self.rules:
            if rule.rank >= best_rank and rule.matches(op_type, node_name):
                best, best_rank = rule, rule.rank
        return best

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default.to_dict(), "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixedPrecisionPolicy:
        return cls(QuantSpec.from_dict(data.get("default", {"format": "float"})), [Rule.from_dict(r) for r in data.get("rules", [])])


def node_spec(metadata_props: dict[str, str]) -> QuantSpec:
    """The spec that ``resolve-policy`` stored in a node's metadata (float when none)."""
    raw = metadata_props.get(SPEC_KEY)
    if raw is None:
        return FLOAT
    data = dict(json.loads(raw))
    data.pop("reason", None)
    return QuantSpec.from_dict(data)


def set_node_spec(node: ir.Node, entry: dict[str, Any]) -> bool:
    """Store ``entry`` (a spec's dict, with an optional ``reason``) as the node's spec, the one
    writer of what ``node_spec`` reads; returns whether it changed."""
    text = json.dumps(entry, sort_keys=True)
    if node.metadata_props.get(SPEC_KEY) == text:
        return False
    node.metadata_props[SPEC_KEY] = text
    return True


class Plan:
    """The plan document (``qonnx.plan`` in the model's metadata): each node's spec, stored once per
    distinct spec (``specs`` {id: spec}, ``nodes`` {name: id}), and the reasons of float nodes.

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


def record_formats(model: ir.Model, entries: dict[str, dict]) -> None:
    """Change the plan's entries (``{"format": ..., "reason": ...}``) of the named nodes.

    For passes that decide a node's format after ``resolve-policy`` (FP32 islands, cast placement):
    the plan in the model's metadata stays the one record of every node's format and reason.
    """
    document = json.loads(model.metadata_props.get(PLAN_KEY, "{}"))
    plan = Plan()
    plan.specs, plan.nodes, plan.reasons = document.get("specs", {}), document.get("nodes", {}), document.get("reasons", {})
    for node, entry in entries.items():
        plan.add(node, entry)
    document.update(specs=plan.specs, nodes=plan.nodes, reasons=plan.reasons)
    model.metadata_props[PLAN_KEY] = json.dumps(document, sort_keys=True, separators=(",", ":"))


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
