"""What each execution provider wants from a quantized graph.

``cpu``: onnxruntime's CPU provider fuses ``DequantizeLinear → op → QuantizeLinear`` groups into
integer kernels; which ops it fuses is listed in onnxruntime's
``core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc`` (checked
against onnxruntime 1.32 by the fusion test on YOLOv8n): Conv → QLinearConv, MatMul →
QLinearMatMul (or MatMulIntegerToFloat without an output Q), Gemm → QGemm; Add, Mul →
QLinearAdd/QLinearMul; Concat → QLinearConcat; Sigmoid, LeakyRelu, AveragePool,
GlobalAveragePool, Softmax → QLinear* (com.microsoft); and it drops the Q/DQ around ops that move
data (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Slice, Gather, Expand, Tile, MaxPool,
Resize, Split) when input and output share scale and zero point. ConvTranspose has no integer
kernel: its weight is still stored as INT8 (4x smaller) and dequantized at load. The CPU provider
runs U8 activations (asymmetric) with S8 weights fastest, wants weights symmetric per output
channel and the bias of Conv/Gemm as INT32 with ``scale = input_scale * weight_scale``.
Softmax is left out of the default: its integer kernel rounds small attention probabilities
to zero.

``tensorrt``: symmetric INT8 for activations and weights (zero point 0), per-channel weights, Q/DQ
on the inputs of weighted ops and of residual Adds; TensorRT chooses output precisions itself.
"""

from __future__ import annotations

import dataclasses

from qonnx.errors import UserError
from qonnx.policy import MixedPrecisionPolicy, QuantSpec, Rule

__all__ = ["Target", "TARGETS", "get_target", "WEIGHT_AXIS_OPS"]

# Ops with a weight input whose output channels are the quantization axis.
WEIGHT_AXIS_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CPU_INTEGER_OPS = ("Add", "Mul", "Concat", "Sigmoid", "LeakyRelu", "AveragePool", "GlobalAveragePool")
DATA_MOVEMENT_OPS = (
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
    "Expand", "Tile", "MaxPool", "Resize", "Split",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Target:
    """``weighted_ops`` take a weight and Q/DQ on their activations; ``integer_ops`` have integer
    kernels and take Q/DQ on every float input; ``passthrough_ops`` only move values and carry their
    input's quantization forward. ``quantize_outputs``: whether outputs of weighted and integer ops
    get a Q too (needed for onnxruntime's fused kernels)."""

    name: str
    providers: tuple[str, ...]
    int8: QuantSpec
    weighted_ops: tuple[str, ...] = WEIGHT_AXIS_OPS
    integer_ops: tuple[str, ...] = ()
    passthrough_ops: tuple[str, ...] = ()
    quantize_outputs: bool = True

    @property
    def quantized_ops(self) -> tuple[str, ...]:
        return self.weighted_ops + self.integer_ops + self.passthrough_ops

    def policy(self, precision: str, mode: str = "static") -> MixedPrecisionPolicy:
        """The default policy: every op the target quantizes, in INT8.

        ``mode="dynamic"``: MatMul activations quantized at run time (onnxruntime fuses
        ``DynamicQuantizeLinear → DQ → MatMul`` into DynamicQuantizeMatMul), Gather tables stored in
        8 bits; everything else, convolutions included, stays float and needs no calibration.
        """
        if precision != "int8":
            raise UserError(f"precision {precision!r} is not supported yet for target {self.name!r} (supported: int8)")
        if mode == "static":
            return MixedPrecisionPolicy.for_ops(self.quantized_ops, self.int8)
        if mode == "dynamic":
            dynamic = dataclasses.replace(self.int8, activation_dtype="uint8", symmetric_activations=False, dynamic=True)
            policy = MixedPrecisionPolicy.for_ops(("MatMul",), dynamic)
            policy.rules.append(Rule(self.int8, op_type="Gather"))
            return policy
        raise UserError(f"unknown mode {mode!r}; known modes: static, dynamic")


TARGETS = {
    "cpu": Target(
        name="cpu",
        providers=("CPUExecutionProvider",),
        int8=QuantSpec("int8", activation_dtype="uint8", symmetric_activations=False, per_channel=True),
        integer_ops=CPU_INTEGER_OPS,
        passthrough_ops=DATA_MOVEMENT_OPS,
    ),
    "tensorrt": Target(
        name="tensorrt",
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        int8=QuantSpec("int8", activation_dtype="int8", symmetric_activations=True, per_channel=True),
        integer_ops=("Add",),
        quantize_outputs=False,
    ),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None
