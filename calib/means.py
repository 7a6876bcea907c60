"""Mean input per channel of the weighted nodes whose bias absorbs the weights' rounding.

Quantizing a weight moves each output channel's mean: with ``ΔW = Q(W) - W`` the output of a
convolution shifts on average by ``Δb[o] = Σ_{c,k} ΔW[o, c, k] · E[x_c]``, a systematic error that
the following layers amplify (depthwise convolutions, with few weights per channel, suffer most).
``collect_channel_means`` runs the calibration samples through the float model with the inputs of
the INT8 Conv/Gemm nodes tapped and returns ``E[x_c]`` per input channel; the ``calibrate`` pass
keeps them in the range table, and ``insert-qdq`` subtracts ``Δb`` from the bias it stores. This is
the bias correction of Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction" (ICCV 2019), with the expectation measured instead of derived from BatchNorm. Zero
padding is not counted (the mean is over the input tensor), which slightly overstates the shift
at the borders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from qonnx import runtime
from qonnx.calib.sources import Source
from qonnx.progress import Progress

__all__ = ["collect_channel_means"]


def collect_channel_means(
    model: ir.Model, source: Source, tensors: Sequence[str], *, samples: int | None = None, progress: bool | None = False
) -> dict[str, np.ndarray]:
    """``{tensor: mean over every axis but 1}`` (float64) over the first ``samples`` feeds of ``source``."""
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return {}
    count = len(source) if samples is None else min(samples, len(source))
    graph_inputs = {v.name for v in model.graph.inputs}
    tapped = [t for t in tensors if t not in graph_inputs]
    session = runtime.session(runtime.tapped_model(model, tapped))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(tensors, 0)
    with Progress(count, "channel means", enabled=progress) as bar:
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
    return {name: sums[name] / counts[name] for name in sums if counts[name]}
