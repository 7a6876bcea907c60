"""Mean input per channel of every INT8 Conv and Gemm, for bias correction.

Quantizing a weight moves each output channel's mean: with ``ΔW = Q(W) - W`` the output of a
convolution shifts on average by ``Δb[o] = Σ_{c,k} ΔW[o, c, k] · E[x_c]``, a systematic error that
the following layers amplify (depthwise convolutions, with few weights per channel, suffer most).
This pass runs the calibration samples through the float model with the inputs of the INT8
Conv/Gemm nodes tapped and records ``E[x_c]`` per input channel (the ``input_means`` analysis,
name → float64 vector); ``insert-qdq`` then subtracts ``Δb`` from the bias it stores, which is
the bias correction of Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction" (ICCV 2019), with the expectation measured instead of derived from BatchNorm.

Changes nothing in the model. Zero padding is not counted (the mean is over the input tensor),
which slightly overstates the shift at the borders.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qonnx import runtime
from qonnx.passes.qdq_placement import is_float_constant, quantized_nodes
from qonnx.pipeline import Pass, register
from qonnx.progress import Progress

__all__ = ["ObserveMeans", "correctable_nodes"]


def correctable_nodes(model: ir.Model) -> list[ir.Node]:
    """INT8 Conv and plain Gemm nodes with a constant weight: the ops whose bias can absorb the shift."""
    nodes = []
    for node, spec in quantized_nodes(model):
        if spec.dynamic or len(node.inputs) < 2 or not is_float_constant(node.inputs[1]) or len(node.inputs[1].uses()) != 1:
            continue
        if node.op_type == "Conv":
            nodes.append(node)
        elif node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
            if node.attributes.get_float("alpha", 1.0) == 1.0 and node.attributes.get_float("beta", 1.0) == 1.0:
                nodes.append(node)
    return nodes


@register
class ObserveMeans(Pass):
    name = "observe-means"
    summary = "record the mean input per channel of INT8 Conv/Gemm nodes (for bias correction)"
    preserves = frozenset({"shapes", "ranges", "input_means"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        source = self.context.calib
        tensors = list(dict.fromkeys(node.inputs[0].name for node in correctable_nodes(model)))
        if source is None or not tensors:
            return ir.passes.PassResult(model, modified=False)
        count = len(source) if self.context.samples is None else min(self.context.samples, len(source))
        graph_inputs = {v.name for v in model.graph.inputs}
        tapped = [t for t in tensors if t not in graph_inputs]
        session = runtime.session(runtime.tapped_model(model, tapped))
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = dict.fromkeys(tensors, 0)
        with Progress(count, "input means", enabled=self.context.progress) as bar:
            for index in range(count):
                feed = source[index]
                outputs = session.run(feed, tapped) if tapped else {}
                for name in tensors:
                    x = np.asarray(feed[name] if name in graph_inputs else outputs[name], np.float64)
                    if x.ndim < 2:
                        continue
                    axes = tuple(i for i in range(x.ndim) if i != 1)
                    per_channel = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).sum(axis=axes)
                    sums[name] = per_channel if name not in sums else sums[name] + per_channel
                    counts[name] += x.size // x.shape[1]
                bar.advance()
        self.context.analyses["input_means"] = {name: sums[name] / counts[name] for name in sums if counts[name]}
        return ir.passes.PassResult(model, modified=False)
