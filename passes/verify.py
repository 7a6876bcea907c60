"""Verification: the onnx checker and an onnxruntime session on the model as it stands.

Changes nothing. It raises when the model is invalid, so that a broken rewrite is caught at the
pass that made it (the manager runs it after every pass in debug mode) instead of at deployment.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from qonnx import runtime
from qonnx.ir import PROTOBUF_LIMIT
from qonnx.pipeline import Pass, register


class VerificationError(RuntimeError):
    """The model failed the onnx checker or onnxruntime refused it."""


def verify_model(model: ir.Model, after: str = "") -> None:
    where = f" after {after}" if after else ""
    proto = ir.to_proto(model)
    if proto.ByteSize() < PROTOBUF_LIMIT:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:
            raise VerificationError(f"onnx checker rejected the model{where}: {str(exc).splitlines()[0]}") from exc
    try:
        runtime.session(model)
    except Exception as exc:
        raise VerificationError(f"onnxruntime cannot load the model{where}: {exc}") from exc


@register
class Verify(Pass):
    name = "verify"
    summary = "check the model with the onnx checker and load it in onnxruntime"
    preserves = frozenset({"shapes", "ranges"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        verify_model(model)
        return ir.passes.PassResult(model, modified=False)
