"""The ``weight-input-statistics`` analysis: ``X^T X`` and mean ``|x|`` of the input of every MatMul
with a constant 2-D weight, over the calibration data, for GPTQ- and AWQ-style rounding
(``qonnx.weight_rounding``).

The value is a ``qonnx.calib.weight_statistics.WeightInputStatistics``: a mapping from node name to
``InputStatistics`` that computes them a group of layers at a time when asked (memory bounded by
the group, ``memory_budget`` 2 GiB), so that a pass asks for them layer after layer:
``context.analysis("weight-input-statistics", model).get(node.name)``.
"""

from __future__ import annotations

import onnx_ir as ir

from qonnx.calib.weight_statistics import WeightInputStatistics
from qonnx.errors import UserError
from qonnx.pipeline import Context, analysis

__all__ = ["weight_input_statistics"]


@analysis("weight-input-statistics")
def weight_input_statistics(model: ir.Model, context: Context) -> WeightInputStatistics:
    if context.calib is None:
        raise UserError("data-aware weight rounding (gptq, awq) needs calibration data: give --calib DATA")
    return WeightInputStatistics(model, context.calib, samples=context.samples, progress=context.progress)
