"""Recurrent weights to INT8: LSTM, GRU and RNN read W and R through a DequantizeLinear.

For every LSTM/GRU/RNN node, in every graph (If/Loop/Scan bodies included: a constant needs no
calibration), whose spec is INT8:

1. ``W`` (input 1, ``[num_directions, gates * hidden, input]``) and ``R`` (input 2,
   ``[num_directions, gates * hidden, hidden]``) become symmetric INT8 initializers, one scale per
   gate row (axis 1, shared by the directions of a bidirectional node: the DequantizeLinear axis
   takes one scale vector), read through ``DequantizeLinear`` (``qonnx.weight_only``);
2. the bias ``B``, the peepholes ``P`` and the activations stay float: they are small, and
   onnxruntime has no integer kernel for these ops in the standard domain.

Weight-only DequantizeLinear rather than the contrib ``DynamicQuantizeLSTM``, chosen by
measurement (``benchmarks/recurrent_bench.py``, onnxruntime 1.32, 2 threads, AVX2 CPU; README
"Recurrent layers and control flow"): on LSTMs of 128/256/512 units the DequantizeLinear form
keeps Y at 40.5-42.5 dB SQNR against FP32, ``DynamicQuantizeLSTM`` (which also quantizes every
step's input and state to 8 bits) at 28.9-32.0 dB. It is faster (1.3x-2.5x FP32 where the DQ
form runs at 0.6x-1.0x, dequantizing W and R on each call): speed was not worth 10 dB of
fidelity in a default that must not change what the model computes.

Not rewritten, with the reason (``skip`` and the plan): a node whose W or R is not a constant FP32
initializer (computed, or a graph input), and a node whose weights are stored as INT8 already
(so that a second run changes nothing). The float rest of the node is untouched.
"""

from __future__ import annotations

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import register
from qonnx.policy import QuantSpec
from qonnx.targets import RECURRENT_OPS
from qonnx.weight_only import ALREADY, WeightOnlyPass

__all__ = ["QuantizeRecurrent", "WEIGHT_INPUTS"]

WEIGHT_INPUTS = (1, 2)  # W, R
GATE_AXIS = 1


@register
class QuantizeRecurrent(WeightOnlyPass):
    name = "quantize-recurrent"
    summary = "store the W and R of INT8 LSTM/GRU/RNN nodes as INT8 behind DequantizeLinear (weight-only)"
    op_types = frozenset(RECURRENT_OPS)

    def weights(self, node: ir.Node, spec: QuantSpec) -> list[tuple[int, int | None]] | str:
        weights = [node.inputs[i] if len(node.inputs) > i else None for i in WEIGHT_INPUTS]
        if all(w is not None and qir.is_dequantized(w) for w in weights):
            return ALREADY
        if not all(qir.is_float_constant(w) and w.const_value.numpy().ndim == 3 for w in weights):
            return "W or R is not a constant FP32 initializer"
        axis = GATE_AXIS if spec.per_channel else None
        return [(index, axis) for index in WEIGHT_INPUTS]
