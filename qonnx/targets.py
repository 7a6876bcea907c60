"""What each execution provider wants from a quantized graph.

``cpu``: onnxruntime's CPU provider fuses DequantizeLinear → op → QuantizeLinear groups into
integer kernels (QLinearConv, QGemm, QLinearMatMul…). It runs U8 activations (asymmetric) with S8
weights fastest, and wants weights symmetric per output channel and the bias of Conv/Gemm as INT32
with ``scale = input_scale * weight_scale``.

``tensorrt``: symmetric INT8 for activations and weights (zero point 0), per-channel weights.
"""

from __future__ import annotations

import dataclasses

from qonnx.errors import UserError
from qonnx.policy import MixedPrecisionPolicy, QuantSpec

__all__ = ["Target", "TARGETS", "get_target", "WEIGHT_AXIS_OPS"]

# Ops whose second input is a weight, and whether Q/DQ of their inputs and output make an integer kernel.
WEIGHT_AXIS_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    providers: tuple[str, ...]
    quantized_ops: tuple[str, ...]
    int8: QuantSpec
    quantize_outputs: bool = True

    def policy(self, precision: str) -> MixedPrecisionPolicy:
        if precision == "int8":
            return MixedPrecisionPolicy.for_ops(self.quantized_ops, self.int8)
        raise UserError(f"precision {precision!r} is not supported yet for target {self.name!r} (supported: int8)")


TARGETS = {
    "cpu": Target(
        name="cpu",
        providers=("CPUExecutionProvider",),
        quantized_ops=WEIGHT_AXIS_OPS,
        int8=QuantSpec("int8", activation_dtype="uint8", symmetric_activations=False, per_channel=True),
    ),
    "tensorrt": Target(
        name="tensorrt",
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        quantized_ops=WEIGHT_AXIS_OPS,
        int8=QuantSpec("int8", activation_dtype="int8", symmetric_activations=True, per_channel=True),
        quantize_outputs=False,
    ),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None
