"""Range collection: run calibration samples through onnxruntime and feed the observers.

One session over the model with the needed tensors added as outputs, one run per sample, each
observer updated as its tensor arrives; nothing of a batch is kept after its observers saw it, so
memory does not grow with the number of samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx_ir as ir

from qonnx import runtime
from qonnx.calib.observers import OBSERVERS, Observer
from qonnx.calib.ranges import RangeTable, TensorRange
from qonnx.calib.sources import Source
from qonnx.errors import UserError
from qonnx.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["collect_ranges"]


def collect_ranges(
    model: ir.Model,
    source: Source,
    tensors: Sequence[str],
    *,
    method: str = "minmax",
    samples: int | None = None,
    progress: bool | None = False,
    model_hash: str = "",
) -> RangeTable:
    """Observe ``tensors`` over the first ``samples`` feeds of ``source`` with ``method``."""
    if method not in OBSERVERS:
        raise UserError(f"unknown calibration method {method!r}; known: {', '.join(OBSERVERS)}")
    count = len(source) if samples is None else min(samples, len(source))
    if count <= 0:
        raise UserError("no calibration samples")
    observers: dict[str, Observer] = {name: OBSERVERS[method]() for name in tensors}
    graph_inputs = {v.name for v in model.graph.inputs}
    tapped = [t for t in tensors if t not in graph_inputs]
    session = runtime.session(runtime.tapped_model(model, tapped))
    with Progress(count, "calibrating", enabled=progress) as bar:
        for index in range(count):
            feed = source[index]
            outputs = session.run(feed, tapped) if tapped else {}
            for name, observer in observers.items():
                observer.update(feed[name] if name in graph_inputs else outputs[name])
            bar.advance()
    ranges = {}
    for name, observer in observers.items():
        try:
            lo, hi = observer.compute_range()
        except ValueError:
            raise UserError(f"tensor {name!r} held no finite value in {count} calibration samples") from None
        ranges[name] = TensorRange(lo, hi, observer.nonfinite)
        if observer.nonfinite:
            logger.warning("tensor %s: %d non-finite values excluded from its range", name, observer.nonfinite)
    return RangeTable(ranges, model_hash=model_hash, method=method, samples=count, data=source.description)


