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
to zero. LSTM, GRU and RNN have no integer kernel in the standard domain (only the contrib
``DynamicQuantizeLSTM``): their W and R are stored as INT8 behind a DequantizeLinear, weight-only
(``recurrent_ops``, ``passes/quantize_recurrent.py``), and their activations stay float.

``tensorrt``: TensorRT's explicit quantization, following the rules of ``qonnx.qdq_rules`` (each
with its source in TensorRT's developer guide): symmetric INT8 (or FP8 E4M3) for activations and
weights, zero point 0; per-tensor activations, per-channel weights along the output channels; Q/DQ
on the inputs of Conv, ConvTranspose, Gemm and MatMul and on the skip input of a residual Add, none
on the outputs of weighted ops (TensorRT chooses output precisions itself); the bias stays float
(TensorRT adds it in the kernel's epilogue); Concat inputs share one scale; pooling ops quantized
only when a quantized op reads their output, with their input's scale; LayerNormalization,
Softmax and Gelu stay in higher precision (never quantized on both sides; a reader's Q on their
output is allowed), and a MatMul that reads a Softmax stays float (attention's probabilities times V). The float remainder is FP16 (``float_remainder``), with
FP32 islands where the calibrated ranges overflow FP16 (``float-islands``). ``precision="fp8"``:
the same placement with FLOAT8E4M3FN Q/DQ (opset 21).

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

from qonnx import qdq_rules
from qonnx.errors import UserError
from qonnx.policy import MixedPrecisionPolicy, QuantSpec, Rule

__all__ = ["FP8_OPSET", "FP8_TYPES", "Target", "TARGETS", "get_target", "WEIGHT_AXIS_OPS", "WEIGHT_ONLY_OPS", "RECURRENT_OPS", "FLOAT_COMPUTE_OPS", "FLOAT_PRECISIONS", "default_target"]

FLOAT_PRECISIONS = ("fp16", "bf16")

# Ops with a weight input whose output channels are the quantization axis.
WEIGHT_AXIS_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# The ops whose constant weight (MatMul/Gemm input 1, a Gather's table) INT4 weight-only quantization stores in blocks.
WEIGHT_ONLY_OPS = ("MatMul", "Gemm", "Gather")
# Recurrent ops: W (input 1) and R (input 2) are [num_directions, gates * hidden, ·]; axis 1 indexes
# the gate rows (ONNX operator schemas of LSTM, GRU, RNN).
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
# The ops whose arithmetic, not only storage, runs in FP16/BF16 when converted.
FLOAT_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"})
CPU_INTEGER_OPS = ("Add", "Mul", "Concat", "Sigmoid", "LeakyRelu", "AveragePool", "GlobalAveragePool")
DATA_MOVEMENT_OPS = (
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
    "Expand", "Tile", "MaxPool", "Resize", "Split",
)  # fmt: skip
POOLING_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
# Element-wise activations TensorRT fuses into the op before them (Conv + Add + Relu): a residual
# Add whose output reaches a quantized op through them is quantized.
ACTIVATION_OPS = ("Relu", "LeakyRelu", "Clip", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus")
FP8_TYPES = {"e4m3": "float8e4m3fn", "e5m2": "float8e5m2"}
# QuantizeLinear/DequantizeLinear take FLOAT8 types from opset 19 on; FP8 graphs use 21, whose
# QuantizeLinear names its type by ``output_dtype`` and needs no zero point (see insert-qdq).
FP8_OPSET = 21


@dataclasses.dataclass(frozen=True)
class Target:
    """``weighted_ops`` take a weight and Q/DQ on their activations; ``integer_ops`` have integer
    kernels and take Q/DQ on every float input; ``passthrough_ops`` only move values and carry their
    input's quantization forward. ``quantize_outputs``: whether outputs of weighted and integer ops
    get a Q too (needed for onnxruntime's fused kernels). ``recurrent_ops`` get INT8 weights only
    (W and R behind a DequantizeLinear), no activation Q/DQ."""

    name: str
    providers: tuple[str, ...]
    int8: QuantSpec
    weighted_ops: tuple[str, ...] = WEIGHT_AXIS_OPS
    integer_ops: tuple[str, ...] = ()
    passthrough_ops: tuple[str, ...] = ()
    recurrent_ops: tuple[str, ...] = ()
    quantize_outputs: bool = True
    # Default calibration method. cpu: MSE, chosen from `make bench` (README, "Calibration"): it
    # beat MinMax on every kit model, while Percentile's results swing by several dB with P.
    calibration: str = "mse"
    # Ops whose weights go to 7 bits when the CPU lacks VNNI and the user did not choose
    # (``reduce_range=None``). Measured on an AVX2 CPU (output SQNR, full-range / 7-bit weights):
    # convolutional models lose to saturation (EfficientNet-Lite0 6.0 / 16.2 dB, PP-OCR cls
    # 10.7 / 20.5, YOLOv8n 29.4 / 30.3), while MiniLM's MatMuls lose more to the coarser weights
    # than to saturation (static 6.0 / 2.9 dB, dynamic 14.2 / 5.1): only Conv and Gemm weights.
    seven_bit_ops_without_vnni: tuple[str, ...] = ()
    # Standard-domain ops that have no kernel for the format in this provider ("fp16": ops without
    # one), or the only ops that have one ("bf16": ops with one). Empty: the format is not offered.
    no_fp16_kernel: frozenset[str] | None = None
    bf16_kernels: frozenset[str] | None = None
    # Whether the provider runs block-quantized weights (MatMulNBits, GatherBlockQuantized, blocked
    # DequantizeLinear): precision "int4".
    weight_only: bool = False
    # Whether it runs FLOAT8 Q/DQ (precision "fp8").
    fp8: bool = False
    # Ops whose inputs and output share one scale when quantized (the op then moves INT8 data).
    shared_scale_ops: tuple[str, ...] = ("Concat",)
    # An Add is quantized only as a residual Add, and then only on its skip input(s): the inputs
    # not made by a weighted op (TensorRT fuses the other into the weighted op's epilogue).
    residual_adds: bool = False
    # Ops whose output a weighted op does not read quantized (attention's Softmax probabilities): a
    # weighted op reading one stays float, as a whole.
    float_input_ops: tuple[str, ...] = ()
    # Ops through which an integer op's readers are followed to find a quantized consumer.
    transparent_ops: tuple[str, ...] = ()
    # The bias of a quantized Conv/Gemm as INT32 behind a DequantizeLinear (False: left float).
    int32_bias: bool = True
    # The format of what is not quantized, in an INT8/FP8 run: "fp32", or "fp16" (FP32 islands
    # where the calibrated ranges overflow FP16). ``QuantizeConfig.float_remainder`` overrides it.
    float_remainder: str = "fp32"
    # The ids of the ``qonnx.qdq_rules`` rules the placement follows and ``qonnx check`` verifies.
    rules: tuple[str, ...] = ()
    # Whether weighted ops inside If/Loop/Scan bodies (where calibration cannot reach activations)
    # get INT8 weights behind a DequantizeLinear with float activations. TensorRT runs such a
    # half-quantized op in float (rule trt-weighted-inputs): there they stay float.
    subgraph_weight_only: bool = True
    # Whether the graph is meant for onnxruntime's CPU integer kernels (fidelity measured with them);
    # else the provider has kernels of its own and fidelity is measured with reference Q/DQ.
    cpu_fused_kernels: bool = False

    @property
    def precisions(self) -> tuple[str, ...]:
        offered = ["int8", "int4"] if self.weight_only else ["int8"]
        if self.fp8:
            offered.append("fp8")
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

    @property
    def quantized_ops(self) -> tuple[str, ...]:
        return self.weighted_ops + self.integer_ops + self.passthrough_ops + self.recurrent_ops

    def remainder(self, precision: str, requested: str | None = None) -> str:
        """The format of the unquantized nodes of a run: ``requested`` ("fp16"/"fp32"), else this
        target's ``float_remainder``, in an INT8/FP8 run; "fp32" in any other."""
        if precision not in ("int8", "fp8"):
            return "fp32"
        return requested or self.float_remainder

    def qdq_spec(self, precision: str = "int8", fp8_activations: str = "e4m3") -> QuantSpec:
        """The spec of a quantized node: the target's INT8 spec, or its FP8 twin (FLOAT8E4M3FN
        weights, ``fp8_activations`` E4M3 or E5M2 activations, symmetric, per-channel weights)."""
        if precision != "fp8":
            return self.int8
        return QuantSpec("fp8", activation_dtype=FP8_TYPES[fp8_activations], weight_dtype="float8e4m3fn", symmetric_activations=True, per_channel=True)

    def policy(
        self, precision: str, mode: str = "static", reduce_range: bool | None = False, *, saturating_cpu: bool = False, fp8_activations: str = "e4m3"
    ) -> MixedPrecisionPolicy:
        """The default policy: every op the target quantizes, in INT8; or the whole graph in FP16/BF16.

        ``mode="dynamic"`` (INT8): MatMul activations quantized at run time (onnxruntime fuses
        ``DynamicQuantizeLinear → DQ → MatMul`` into DynamicQuantizeMatMul), Gather tables stored in
        8 bits, recurrent weights in 8 bits; everything else, convolutions included, stays float
        and needs no calibration.

        ``reduce_range``: 7-bit weights for every op (True), none (False), or, with None, for
        ``seven_bit_ops_without_vnni`` when ``saturating_cpu`` (see ``qonnx.host``).
        """
        if precision not in self.precisions:  # QuantizeConfig refuses this pairing before any work
            raise ValueError(f"precision {precision!r} is not supported for target {self.name!r} (supported: {', '.join(self.precisions)})")
        if precision == "int4":
            return self.weight_only_policy()
        if precision == "fp8":
            spec = self.qdq_spec("fp8", fp8_activations)
            return MixedPrecisionPolicy(rules=[Rule(spec, op_type=op) for op in self.quantized_ops if op not in self.recurrent_ops])
        if precision != "int8":
            return MixedPrecisionPolicy(QuantSpec(precision))
        if reduce_range is None:
            seven_bit = set(self.seven_bit_ops_without_vnni) if saturating_cpu else set()
        else:
            # (not recurrent weights: they are dequantized to float, no integer kernel saturates)
            seven_bit = set(self.quantized_ops) - set(self.recurrent_ops) | {"MatMul", "Gather"} if reduce_range else set()

        def int8(op_type: str, **changes) -> QuantSpec:
            return dataclasses.replace(self.int8, reduce_range=op_type in seven_bit, **changes)

        if mode == "static":
            return MixedPrecisionPolicy(rules=[Rule(int8(op), op_type=op) for op in self.quantized_ops])
        if mode == "dynamic":
            dynamic = int8("MatMul", activation_dtype="uint8", symmetric_activations=False, dynamic=True)
            recurrent = [Rule(int8(op), op_type=op) for op in self.recurrent_ops]
            return MixedPrecisionPolicy(rules=[Rule(dynamic, op_type="MatMul"), Rule(int8("Gather"), op_type="Gather"), *recurrent])
        raise ValueError(f"unknown mode {mode!r}")  # QuantizeConfig checks the mode

    def weight_only_policy(
        self, *, bits: int = 4, block_size: int = 32, symmetric: bool = True, embedding_bits: int | None = None
    ) -> MixedPrecisionPolicy:
        """The INT4 policy: MatMul and Gemm weights in ``bits``, Gather tables (embeddings) in
        ``embedding_bits`` (None: ``bits``), blocks of ``block_size`` along the reduction axis;
        activations float. A tied lm_head is a MatMul like any other: a rule by its name sets it apart.
        """
        def spec(weight_bits: int) -> QuantSpec:
            return QuantSpec("weight-only", weight_bits=weight_bits, block_size=block_size, symmetric_weights=symmetric)

        table = spec(bits if embedding_bits is None else embedding_bits)
        return MixedPrecisionPolicy(rules=[Rule(spec(bits), op_type="MatMul"), Rule(spec(bits), op_type="Gemm"), Rule(table, op_type="Gather")])


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
        int8=QuantSpec("int8", activation_dtype="uint8", symmetric_activations=False, per_channel=True),
        integer_ops=CPU_INTEGER_OPS,
        passthrough_ops=DATA_MOVEMENT_OPS,
        recurrent_ops=RECURRENT_OPS,
        seven_bit_ops_without_vnni=("Conv", "ConvTranspose", "Gemm"),
        weight_only=True,
        rules=tuple(rule.id for rule in qdq_rules.rules_for("cpu")),
        cpu_fused_kernels=True,
    ),
    "tensorrt": Target(
        name="tensorrt",
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        int8=QuantSpec("int8", activation_dtype="int8", symmetric_activations=True, per_channel=True),
        weighted_ops=qdq_rules.TRT_WEIGHTED_OPS,
        integer_ops=("Add", "Concat", *POOLING_OPS),
        quantize_outputs=False,
        fp8=True,
        shared_scale_ops=("Concat", *POOLING_OPS),
        residual_adds=True,
        float_input_ops=("Softmax",),
        transparent_ops=(*ACTIVATION_OPS, *DATA_MOVEMENT_OPS),
        int32_bias=False,
        subgraph_weight_only=False,
        float_remainder="fp16",
        # (onnxruntime's TensorRT provider hands the nodes TensorRT cannot build to the CUDA provider)
        no_fp16_kernel=_CUDA_NO_FP16,
        rules=tuple(rule.id for rule in qdq_rules.rules_for("tensorrt")),
    ),
    "cuda": Target(
        name="cuda",
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        int8=QuantSpec("int8", activation_dtype="int8", symmetric_activations=True, per_channel=True),
        quantize_outputs=False,
        no_fp16_kernel=_CUDA_NO_FP16,
        bf16_kernels=_CUDA_BF16,
        weight_only=True,
    ),
}


def default_target(precision: str) -> str:
    """The target a precision gets when none is named: FP16/BF16 graphs are for the CUDA provider,
    FP8 Q/DQ graphs for TensorRT."""
    if precision == "fp8":
        return "tensorrt"
    return "cuda" if precision in FLOAT_PRECISIONS else "cpu"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None
