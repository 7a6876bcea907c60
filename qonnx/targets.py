"""What each execution provider wants from a quantized graph.

``cpu``: onnxruntime's CPU provider fuses DequantizeLinear → op → QuantizeLinear groups into
integer kernels (QLinearConv, QGemm, QLinearMatMul…). It runs U8 activations (asymmetric) with S8
weights fastest, and wants weights symmetric per output channel and the bias of Conv/Gemm as INT32
with ``scale = input_scale * weight_scale``.

``tensorrt``: symmetric INT8 for activations and weights (zero point 0), per-channel weights.

``cuda``: onnxruntime's CUDA provider, the target of FP16 and BF16 graphs. A node that has no kernel
for the low-precision type there would make the session fall back to the CPU provider, which has
FP16 kernels for few ops (it computes the rest in FP32 behind inserted Casts) and none at all for
BF16 compute (onnxruntime 1.32: Conv, MatMul, Add, Relu... in BF16 fail to load). Such nodes stay
FP32. The kernel tables below follow the CUDA section of onnxruntime's ``docs/OperatorKernels.md``:
FP16 has a kernel for nearly every float op; BF16 for the arithmetic, activations, MatMul/Gemm,
Softmax and data movement, but not for Pad, Clip, ReduceMean, pooling, Resize or comparisons, and
for Conv only from opset 22 (which the ONNX schema requires for a BF16 Conv anyway).
"""

from __future__ import annotations

import dataclasses

from qonnx.errors import UserError
from qonnx.policy import MixedPrecisionPolicy, QuantSpec

__all__ = ["Target", "TARGETS", "get_target", "WEIGHT_AXIS_OPS", "FLOAT_PRECISIONS", "default_target"]

FLOAT_PRECISIONS = ("fp16", "bf16")

# Ops whose second input is a weight, and whether Q/DQ of their inputs and output make an integer kernel.
WEIGHT_AXIS_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    providers: tuple[str, ...]
    quantized_ops: tuple[str, ...]
    int8: QuantSpec
    quantize_outputs: bool = True
    # Standard-domain ops that have no kernel for the format in this provider ("fp16": ops without
    # one), or the only ops that have one ("bf16": ops with one). Empty: the format is not offered.
    no_fp16_kernel: frozenset[str] | None = None
    bf16_kernels: frozenset[str] | None = None

    @property
    def precisions(self) -> tuple[str, ...]:
        offered = ["int8"]
        if self.no_fp16_kernel is not None:
            offered.append("fp16")
        if self.bf16_kernels is not None:
            offered.append("bf16")
        return tuple(offered)

    def has_kernel(self, op_type: str, precision: str) -> bool:
        """Whether this provider runs ``op_type`` (standard domain) in ``precision`` ("fp16"/"bf16")."""
        if precision == "fp16":
            return self.no_fp16_kernel is not None and op_type not in self.no_fp16_kernel
        if precision == "bf16":
            return self.bf16_kernels is not None and op_type in self.bf16_kernels
        raise ValueError(precision)

    def policy(self, precision: str) -> MixedPrecisionPolicy:
        if precision not in self.precisions:
            raise UserError(
                f"precision {precision!r} is not supported for target {self.name!r} (supported: {', '.join(self.precisions)})"
            )
        if precision == "int8":
            return MixedPrecisionPolicy.for_ops(self.quantized_ops, self.int8)
        return MixedPrecisionPolicy(QuantSpec(precision))


# CUDA provider ops registered for float (and double) but not float16.
_CUDA_NO_FP16 = frozenset("Range RoiAlign NonMaxSuppression GridSample EyeLike DFT STFT Det Col2Im".split())
# CUDA provider ops registered for bfloat16.
_CUDA_BF16 = frozenset(
    "Cast CastLike Concat ConstantOfShape Expand Flatten Gather GatherElements GatherND Identity Reshape Shape Size "
    "Slice Split Squeeze Tile Transpose Unsqueeze Where "
    "Add Sub Mul Div Neg Sqrt Erf Exp Pow Sign Sum Min Max Relu Sigmoid Tanh HardSigmoid HardSwish Gelu Softmax "
    "LayerNormalization ReduceSum MatMul Gemm Conv Dropout".split()
)


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
    "cuda": Target(
        name="cuda",
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        quantized_ops=WEIGHT_AXIS_OPS,
        int8=QuantSpec("int8", activation_dtype="int8", symmetric_activations=True, per_channel=True),
        quantize_outputs=False,
        no_fp16_kernel=_CUDA_NO_FP16,
        bf16_kernels=_CUDA_BF16,
    ),
}


def default_target(precision: str) -> str:
    """The target a precision gets when none is named: FP16/BF16 graphs are for the CUDA provider."""
    return "cuda" if precision in FLOAT_PRECISIONS else "cpu"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None
