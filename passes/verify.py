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
        return ir.passes.PassResult(model, modified=False)
