"""Mean input per channel of the weighted nodes whose bias absorbs the weights' rounding.

Quantizing a weight moves each output channel's mean: with ``ΔW = Q(W) - W`` the output of a
convolution shifts on average by ``Δb[o] = Σ_{c,k} ΔW[o, c, k] · E[x_c]``, a systematic error that
the following layers amplify (depthwise convolutions, with few weights per channel, suffer most).
``ChannelMean`` accumulates ``E[x_c]`` per channel (axis 1) of the inputs of the INT8 Conv/Gemm
nodes; ``collect_ranges`` feeds it in the same onnxruntime runs that feed the range observers, the
``calibrate`` pass keeps the means in the range table, and ``insert-qdq`` subtracts ``Δb`` from the
bias it stores. This is
the bias correction of Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction" (ICCV 2019), with the expectation measured instead of derived from BatchNorm. Zero
padding is not counted (the mean is over the input tensor), which slightly overstates the shift
at the borders.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ChannelMean"]


class ChannelMean:
    """Streaming mean over every axis but 1 (float64 sums, so the order of batches does not matter
    beyond rounding); NaN and ±inf count as 0, as a masked position contributes nothing."""

    def __init__(self):
        self.sums: np.ndarray | None = None
        self.count = 0

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch, np.float64)
        if x.ndim < 2:
            return
        axes = tuple(i for i in range(x.ndim) if i != 1)
        sums = np.nan_to_num(x, posinf=0.0, neginf=0.0).sum(axis=axes)  # NaN → 0 by default
        if self.sums is not None and sums.shape != self.sums.shape:
            return  # another channel count: not an input a bias can correct
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += math.prod(x.shape[i] for i in axes)  # positions per channel

    def merge(self, other: ChannelMean) -> None:
        """Fold in what ``other`` saw (sums of another share of the data)."""
        if other.sums is None:
            return
        if self.sums is not None and other.sums.shape != self.sums.shape:
            return
        self.sums = other.sums.copy() if self.sums is None else self.sums + other.sums
        self.count += other.count

    def to_dict(self) -> dict:
        return {"sums": None if self.sums is None else self.sums.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> ChannelMean:
        mean = cls()
        mean.sums = None if data["sums"] is None else np.asarray(data["sums"], np.float64)
        mean.count = int(data["count"])
        return mean

    def mean(self) -> np.ndarray | None:
        return None if self.sums is None or not self.count else self.sums / self.count
