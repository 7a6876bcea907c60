"""Verification: the onnx checker and an onnxruntime session on the model as it stands.

Changes nothing. It raises when the model is invalid, so that a broken rewrite is caught at the
pass that made it (the manager runs it after every pass in debug mode) instead of at deployment.
For the CPU target the pass also reads back onnxruntime's optimized graph (``qonnx.fusion``) and
puts the counts of integer kernels, leftover Q/DQ and float islands into the report
(a ``FusionRecord``); in debug mode a quantized Conv/MatMul/Gemm that did not become an integer
kernel fails the pass.
"""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir

from qonnx import ir as qir
from qonnx import runtime
from qonnx.fusion import check_fusion
from qonnx.ir import PROTOBUF_LIMIT
from qonnx.pipeline import Context, Pass, Record, apply, register
from qonnx.qdq_check import TARGETS as CHECK_TARGETS
from qonnx.qdq_check import check_model
from qonnx.qdq_rules import rules_for
from qonnx.targets import get_target


class VerificationError(RuntimeError):
    """The model failed the onnx checker or onnxruntime refused it."""


def verify_model(model: ir.Model, after: str = "", *, load: bool = True) -> None:
    """The onnx checker, then (``load``) an onnxruntime session; raises VerificationError."""
    where = f" after {after}" if after else ""
    proto = ir.to_proto(model)
    qir.hollow_external_data(proto, larger_than=1 << 20)  # the checker needs no weight bytes; a copy of an LLM's would cost gigabytes
    if proto.ByteSize() < PROTOBUF_LIMIT:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:
            raise VerificationError(f"onnx checker rejected the model{where}: {str(exc).splitlines()[0]}") from exc
    if not load:
        return
    try:
        runtime.session(model)
    except Exception as exc:
        if not _has_bf16(model):
            raise VerificationError(f"onnxruntime cannot load the model{where}: {exc}") from exc
        # The CPU provider has no BF16 compute kernels: check the same graph with its roundings in FP32.
        try:
            emulation = model.clone()
            apply("emulate-float", emulation, Context(precision="bf16"))
            runtime.session(emulation)
        except Exception as inner:
            raise VerificationError(f"onnxruntime cannot load the FP32 emulation of the BF16 model{where}: {inner}") from inner


def _has_bf16(model: ir.Model) -> bool:
    bf16 = ir.DataType.BFLOAT16
    return (
        any(v.const_value is not None and v.const_value.dtype == bf16 for v in model.graph.initializers.values())
        or any(n.op_type == "Cast" and n.attributes.get_int("to") == bf16 for n in model.graph)
        or any(v.dtype == bf16 for v in [*model.graph.inputs, *model.graph.outputs])
    )


@dataclasses.dataclass
class FusionRecord(Record):
    """What onnxruntime made of the quantized nodes (``qonnx.fusion.check_fusion``)."""

    report_key = "fusion"
    fusion: dict

    def to_report(self) -> dict:
        return {"fusion": self.fusion}


@dataclasses.dataclass
class TargetRulesRecord(Record):
    """The target's Q/DQ rules (``qonnx.qdq_rules``) and what was verified against them: the
    structure (``qonnx.qdq_check``: the violations found), onnxruntime's CPU provider (loads the
    model; the fidelity figures run it), and a GPU provider only when this onnxruntime has one."""

    report_key = "target_rules"
    target: str
    rules: list[dict]
    violations: list[dict]
    verified: list[str]
    not_verified: list[str]


def _target_rules_record(model: ir.Model, target_name: str, fusion: dict | None) -> TargetRulesRecord:
    target = get_target(target_name)
    rules = [{"id": r.id, "statement": r.statement, "source": r.source} for r in rules_for(target_name)]
    verified = ["onnx checker (full check)", "onnxruntime CPU provider loads the model"]
    if target_name == "cpu":
        violations = [] if fusion is None else [
            {"rule": "cpu-unfused-weighted", "nodes": [name], "message": "no integer kernel took it"} for name in fusion["unfused"]
        ] + [{"rule": "cpu-float-island", "nodes": [name], "message": f"{op} runs in float between Q/DQ"} for name, op in fusion["float_island_nodes"]]
        verified.append("Q/DQ fused into onnxruntime's CPU integer kernels (the optimized graph read back)")
    else:
        violations = [v.to_dict() for v in check_model(model, target_name)]
        verified.append(f"structure: the {len(rules)} {target_name} rules, checked on the graph (qonnx check)")
    available = set(runtime.available_providers())
    not_verified = [f"{p}: not offered by {runtime.describe()}" for p in target.providers if p != "CPUExecutionProvider" and p not in available]
    verified += [f"{p} available (not run by verify)" for p in target.providers if p != "CPUExecutionProvider" and p in available]
    return TargetRulesRecord(target_name, rules, violations, verified, not_verified)


@register
class Verify(Pass):
    name = "verify"
    summary = "check the model with the onnx checker and load it in onnxruntime"
    read_only = True

    def __init__(self, context=None, *, fusion: bool = True) -> None:
        super().__init__(context)
        self.fusion = fusion

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        quantized = any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph)
        fusion = self.fusion and quantized and self.context.target == "cpu"
        # With the fusion check, its session (which writes the optimized graph) is the load check too.
        verify_model(model, load=not fusion)
        if fusion:
            try:
                report = check_fusion(model)
            except Exception as exc:
                raise VerificationError(f"onnxruntime cannot load the model: {exc}") from exc
            self.publish(FusionRecord(report))
            if self.context.debug and report["unfused"]:
                names = ", ".join(report["unfused"][:5])
                raise VerificationError(f"{len(report['unfused'])} quantized nodes did not become integer kernels in onnxruntime: {names}")
        if quantized and self.context.target in CHECK_TARGETS and self.fusion:
            record = _target_rules_record(model, self.context.target, report if fusion else None)
            self.publish(record)
            if self.context.debug and record.violations and self.context.target != "cpu":
                first = record.violations[0]
                raise VerificationError(f"{len(record.violations)} violations of the {self.context.target} rules, first {first['rule']}: {first['message']}")
        return ir.passes.PassResult(model, modified=False)
