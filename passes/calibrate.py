"""Calibration: observe the ranges of the activations that insert-qdq will quantize.

Reads the node specs that ``resolve-policy`` wrote, runs the calibration samples through
onnxruntime with exactly those tensors tapped, and stores the ``ranges`` analysis (a RangeTable).
It also records, in the same table, the mean input per channel of the INT8 Conv/Gemm nodes whose
bias ``insert-qdq`` corrects for the weights' rounding (``qonnx.calib.means``). Changes nothing in
the model. ``ranges=FILE`` reuses a saved table instead (refused when it was made for another
model); ``save=FILE`` writes the table for later reuse.

Options: ``method`` (minmax, moving-minmax, percentile, entropy, mse), ``percentile`` (percentile
only, default 99.99), ``batch_size`` (samples per onnxruntime run), ``memory`` (budget for the
tapped outputs of one batch, e.g. ``2GiB``), ``adjacent`` (also every FP32 activation an INT8 node
reads or writes: for ``auto-policy``, whose plans quantize other tensors), ``shards`` (split the
samples into this many shards observed on the context's executor, a process pool or Ray, and merge
the observers: the same table, see ``collect_ranges_sharded``; default 1, in this process). MSE
minimizes the error of the target's activation type (UINT8 for cpu, INT8 for tensorrt).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.calib.collect import collect_ranges, collect_ranges_sharded, parse_bytes
from qonnx.calib.observers import MSE, ObserverFactory, Percentile, factory_for
from qonnx.calib.ranges import RangeTable
from qonnx.errors import UserError
from qonnx.pipeline import Context, Pass, Record, register
from qonnx.policy import node_spec
from qonnx.targets import get_target


def _tensors(model: ir.Model, context: Context, adjacent: bool = False) -> list[str]:
    """The tensors to observe: INT8 nodes' inputs and outputs, and FP16/BF16 nodes' float tensors.

    ``adjacent``: also every other FP32 activation an INT8-planned node reads or writes, so that a
    plan with fewer INT8 nodes, whose placement quantizes other tensors, finds its ranges too.
    """
    calibrated = context.analysis("placement", model).calibrated
    extra = []
    if adjacent:
        for node in model.graph:
            if node_spec(node.metadata_props).quantized:
                for value in [*node.inputs, *node.outputs]:
                    if value is not None and value.dtype == ir.DataType.FLOAT and not value.is_initializer() and value.const_value is None:
                        extra.append(value.name)
    return list(dict.fromkeys([*calibrated, *extra, *context.analysis("float-tensors", model)]))


@dataclasses.dataclass
class CalibrationRecord(Record):
    """How the ranges were obtained: method, observer, data, or the reused table."""

    report_key = "calibration"
    method: str
    observer: dict
    samples: int
    batch_size: int
    passes: int
    data: str
    data_hash: str
    reused_table: str | None
    tensors: int
    nonfinite_tensors: list[str]


@register
class Calibrate(Pass):
    name = "calibrate"
    summary = "run calibration data through onnxruntime and record activation ranges"
    read_only = True
    analyses_required = frozenset({"plan", "placement", "float-tensors", "bias-correction-inputs"})
    analyses_produced = frozenset({"ranges"})

    def __init__(
        self,
        context=None,
        *,
        method: str | None = None,
        percentile: float | None = None,
        batch_size: int = 1,
        memory: str = "2GiB",
        ranges: str | None = None,
        save: str | None = None,
        adjacent: bool = False,
        shards: int = 1,
    ) -> None:
        super().__init__(context)
        self.adjacent = adjacent
        if shards < 1:
            raise UserError(f"calibrate: shards must be a positive number, not {shards}")
        self.shards = shards
        self.target = get_target(self.context.target)
        method = method or self.target.calibration  # the target's default, chosen from the benchmark
        self.method, self.ranges_path, self.save_path = method, ranges, save
        if batch_size < 1:
            raise UserError(f"--batch-size must be a positive number, not {batch_size}")
        self.batch_size, self.memory = batch_size, parse_bytes(memory)
        if percentile is not None and method != "percentile":
            raise UserError(f"a percentile applies to --method percentile, not {method}")
        # Unknown methods and bad settings fail here, before any work.
        self.observer: ObserverFactory
        if shards > 1 and method == "moving-minmax":
            raise UserError("calibrate: moving-minmax averages batches in their order and cannot be sharded (shards=1, or another method)")
        if method == "percentile":
            self.observer = Percentile() if percentile is None else Percentile(percentile)
        elif method == "mse":
            # (against the grid the activations are quantized to: UINT8, INT8, or FP8's uneven one)
            self.observer = MSE(dtype=self.target.qdq_spec(self.context.precision, self.context.fp8_activations).activation_dtype)
        else:
            self.observer = factory_for(method)()

    def requires(self, model: ir.Model) -> None:
        if self.ranges_path is None and self.context.calib is None and _tensors(model, self.context, self.adjacent):
            raise UserError("calibration needs data: give --calib DATA (or --ranges FILE)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        tensors = _tensors(model, self.context, self.adjacent)
        digest = qir.model_hash(model)
        if self.ranges_path:
            table = RangeTable.load(self.ranges_path, model_hash=digest)
        elif tensors and self.shards > 1:
            table = collect_ranges_sharded(
                model,
                self.context.calib,
                tensors,
                observer=self.observer,
                executor=self.context.get_executor(),
                shards=self.shards,
                samples=self.context.samples,
                batch_size=self.batch_size,
                memory_budget=self.memory,
                model_hash=digest,
                channel_means=self.context.analysis("bias-correction-inputs", model),
            )
        elif tensors:
            table = collect_ranges(
                model,
                self.context.calib,
                tensors,
                observer=self.observer,
                samples=self.context.samples,
                batch_size=self.batch_size,
                memory_budget=self.memory,
                progress=self.context.progress,
                model_hash=digest,
                channel_means=self.context.analysis("bias-correction-inputs", model),
            )
        else:
            table = RangeTable({}, model_hash=digest, method=self.method)
        if self.save_path:
            table.save(self.save_path)
        self.context.analyses["ranges"] = table
        self.publish(
            CalibrationRecord(
                method=table.method,
                observer=table.observer,
                samples=table.samples,
                batch_size=table.batch_size,
                passes=table.passes,
                data=table.data,
                data_hash=table.data_hash,
                reused_table=self.ranges_path,
                tensors=len(table.ranges),
                nonfinite_tensors=sorted(k for k, v in table.ranges.items() if v.nonfinite),
            )
        )
        return ir.passes.PassResult(model, modified=False)
