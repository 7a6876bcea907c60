"""The rules a QDQ graph must follow for an execution provider, written once, as data.

Each rule has an id (what ``qonnx check`` prints), a one-line statement and its source. The
checker (``qonnx.qdq_check``) reads the parameters below; placement passes may read them too.

TensorRT's rules come from its developer guide, chapter "Working with Quantized Types"
(https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html):
the sections "Quantization Schemes" (symmetric, signed INT8: the zero point is 0), "Quantization
Granularity" (per-tensor activations, per-channel weights along the output-channel axis) and
"Explicit Quantization", subsection "Q/DQ Layer-Placement Recommendations" (Q/DQ on the inputs of
weighted ops and of residual Adds, not on their outputs unless a quantized op reads them). Which
ops stay in higher precision in transformers follows NVIDIA ModelOpt's ONNX quantizer
(``modelopt.onnx.quantization``, the op types it leaves out of INT8 by default).

The ``cpu`` rule is onnxruntime's: every Q/DQ is fused by the CPU provider into an integer
kernel, measured on the optimized graph by ``qonnx.fusion.check_fusion``.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

__all__ = [
    "QdqRule",
    "RULES",
    "rules_for",
    "TRT_WEIGHTED_OPS",
    "TRT_FLOAT_OPS",
    "TRT_QUANT_DTYPES",
    "trt_weight_axis",
]

_TRT_GUIDE = 'TensorRT developer guide, "Working with Quantized Types"'


@dataclasses.dataclass(frozen=True)
class QdqRule:
    """``id``: short name, ``target``: the provider it belongs to, ``statement``: the rule in one
    line, ``source``: where it is written down."""

    id: str
    target: str
    statement: str
    source: str


RULES: tuple[QdqRule, ...] = (
    QdqRule(
        "trt-symmetric",
        "tensorrt",
        "Q/DQ are symmetric and signed: INT8 (or FP8 E4M3) with zero point 0, for activations and weights",
        f'{_TRT_GUIDE}, section "Quantization Schemes"',
    ),
    QdqRule(
        "trt-per-tensor-activations",
        "tensorrt",
        "activation Q/DQ are per-tensor (one scale); only weights have per-channel scales",
        f'{_TRT_GUIDE}, section "Quantization Granularity"',
    ),
    QdqRule(
        "trt-weight-axis",
        "tensorrt",
        "per-channel weight scales run along the output channels: axis 0 for Conv and Gemm with transB=1, "
        "1 for ConvTranspose and Gemm with transB=0, the last axis of a MatMul weight",
        f'{_TRT_GUIDE}, section "Quantization Granularity"',
    ),
    QdqRule(
        "trt-weighted-inputs",
        "tensorrt",
        "a Conv, ConvTranspose, Gemm or MatMul with a Q/DQ on one of its data inputs has one on all of them "
        "(both operands; a half-quantized op runs in float)",
        f'{_TRT_GUIDE}, section "Explicit Quantization", "Q/DQ Layer-Placement Recommendations"',
    ),
    QdqRule(
        "trt-no-output-qdq",
        "tensorrt",
        "no Q/DQ on the output of a weighted op unless a quantized op consumes it "
        "(a weighted op, an op that feeds a Q, or a residual Add)",
        f'{_TRT_GUIDE}, section "Explicit Quantization", "Q/DQ Layer-Placement Recommendations"',
    ),
    QdqRule(
        "trt-concat-shared-scale",
        "tensorrt",
        "the dequantized inputs of a Concat share one scale and zero point, so the Concat moves INT8 data",
        f'{_TRT_GUIDE}, section "Explicit Quantization", "Q/DQ Layer-Placement Recommendations"; '
        "ModelOpt's qdq_graph.get_concat_eliminated_tensors",
    ),
    QdqRule(
        "trt-float-ops",
        "tensorrt",
        "LayerNormalization, Softmax (attention) and Gelu stay in higher precision: never a DequantizeLinear on an input "
        "and a QuantizeLinear on the output together (a Q on the output alone quantizes a reader's input)",
        "NVIDIA ModelOpt's ONNX quantizer (modelopt.onnx.quantization), op types left out of INT8 by default",
    ),
    QdqRule(
        "cpu-unfused-weighted",
        "cpu",
        "every quantized Conv, Gemm and MatMul becomes an integer kernel (QLinearConv, QGemm, QLinearMatMul...) in onnxruntime's CPU provider",
        "onnxruntime core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc; qonnx.fusion.check_fusion",
    ),
    QdqRule(
        "cpu-float-island",
        "cpu",
        "no float op between a DequantizeLinear and a QuantizeLinear that onnxruntime leaves unfused (a float round trip)",
        "onnxruntime core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc; qonnx.fusion.check_fusion",
    ),
)  # fmt: skip

# The ops whose inputs TensorRT quantizes and whose INT8 kernels it fuses Q/DQ into.
TRT_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# The ops left in higher precision (rule trt-float-ops).
TRT_FLOAT_OPS = ("LayerNormalization", "Softmax", "Gelu")
# The quantized types TensorRT's Q/DQ take (rule trt-symmetric): INT8, FP8 E4M3, INT4 (weights).
TRT_QUANT_DTYPES = frozenset({ir.DataType.INT8, ir.DataType.FLOAT8E4M3FN, ir.DataType.INT4})


def trt_weight_axis(node: ir.Node, weight_rank: int) -> int | None:
    """The axis of the per-channel scales of ``node``'s weight (input 1) that TensorRT expects
    (rule trt-weight-axis): the output channels. None: ``node`` takes no weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return 0 if trans_b is not None and trans_b.as_int() == 1 else 1
    if node.op_type == "MatMul":
        return weight_rank - 1
    return None


def rules_for(target: str) -> tuple[QdqRule, ...]:
    return tuple(rule for rule in RULES if rule.target == target)
