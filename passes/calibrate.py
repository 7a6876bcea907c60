"""Calibration: observe the ranges of the activations that insert-qdq will quantize.

Reads the node specs that ``resolve-policy`` wrote, runs the calibration samples through
onnxruntime with exactly those tensors tapped, and stores the ``ranges`` analysis (a RangeTable).
Changes nothing in the model. ``ranges=FILE`` reuses a saved table instead (refused when it was made
for another model); ``save=FILE`` writes the table for later reuse.
"""

from __future__ import annotations

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.calib.collect import collect_ranges
from qonnx.calib.ranges import RangeTable
from qonnx.errors import UserError
from qonnx.passes.float_islands import float_tensors_to_observe
from qonnx.passes.insert_qdq import tensors_to_calibrate
from qonnx.pipeline import Pass, register
from qonnx.targets import get_target


def _tensors(model: ir.Model, target) -> list[str]:
    """The tensors to observe: INT8 nodes' inputs and outputs, and FP16/BF16 nodes' float tensors."""
    return list(dict.fromkeys([*tensors_to_calibrate(model, target), *float_tensors_to_observe(model)]))


@register
class Calibrate(Pass):
    name = "calibrate"
    summary = "run calibration data through onnxruntime and record activation ranges"
    preserves = frozenset({"shapes", "ranges"})

    def __init__(
        self,
        context=None,
        *,
        method: str = "minmax",
        ranges: str | None = None,
        save: str | None = None,
    ) -> None:
        super().__init__(context)
        self.method, self.ranges_path, self.save_path = method, ranges, save
        self.target = get_target(self.context.target)

    def requires(self, model: ir.Model) -> None:
        if self.ranges_path is None and self.context.calib is None and _tensors(model, self.target):
            raise UserError("calibration needs data: give --calib DATA (or --ranges FILE)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        tensors = _tensors(model, self.target)
        digest = qir.model_hash(model)
        if self.ranges_path:
            table = RangeTable.load(self.ranges_path, model_hash=digest)
        elif tensors:
            table = collect_ranges(
                model,
                self.context.calib,
                tensors,
                method=self.method,
                samples=self.context.samples,
                progress=self.context.progress,
                model_hash=digest,
            )
        else:
            table = RangeTable({}, model_hash=digest, method=self.method)
        if self.save_path:
            table.save(self.save_path)
        self.context.analyses["ranges"] = table
        self.context.notes["calibration"] = {
            "method": table.method,
            "samples": table.samples,
            "data": table.data,
            "tensors": len(table.ranges),
            "nonfinite_tensors": sorted(k for k, v in table.ranges.items() if v.nonfinite),
        }
        return ir.passes.PassResult(model, modified=False)
