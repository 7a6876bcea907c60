"""Full-model evaluations of plans, the unit of work of sensitivity and automatic mixed precision.

A trial takes the planned FP32 model (``resolve-policy`` and ``calibrate`` have run), keeps in INT8
only the nodes it is given, quantizes a copy with ``insert-qdq`` (asked for by name, with the
calibrated ranges) and scores its outputs against the FP32 model's on the evaluation feeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from qonnx import metrics, runtime
from qonnx.pipeline import Context, apply
from qonnx.policy import node_spec, set_node_spec
from qonnx.verdict import metric_value

__all__ = ["Trials", "rank_correlation"]


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None with fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return None

    def ranks(values: Sequence[float]) -> np.ndarray:
        values = np.asarray(values, np.float64)
        order = np.argsort(values, kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values):  # ties: their mean rank
            tied = values == value
            result[tied] = result[tied].mean()
        return result

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


class Trials:
    """Plans of the planned FP32 ``model`` with only some nodes in INT8, evaluated on ``feeds``.

    ``metric`` is one of ``qonnx.verdict``'s (sqnr, cosine, top1; higher is better);
    ``evaluations`` counts the full-model evaluations run.
    """

    def __init__(self, model: ir.Model, context: Context, feeds: list[dict[str, np.ndarray]], metric: str):
        self.model, self.context, self.feeds, self.metric = model, context, feeds, metric
        reference = runtime.session(model)
        self.reference = [reference.run(feed) for feed in feeds]
        self.candidates = [n.name for n in model.graph if node_spec(n.metadata_props).quantized]
        self.evaluations = 0

    def quantized(self, int8: set[str] | None = None) -> ir.Model:
        """A copy with Q/DQ for the nodes in ``int8`` (None: every node the plan quantizes)."""
        trial = self.model.clone()
        if int8 is not None:
            for node in trial.graph:
                if node.name in self.candidates and node.name not in int8:
                    set_node_spec(node, {"format": "float"})
        scratch = Context(
            target=self.context.target,
            precision=self.context.precision,
            mode=self.context.mode,
            reduce_range=self.context.reduce_range,
            analyses={"plan": True, "ranges": self.context.analyses["ranges"]},
        )
        apply("insert-qdq", trial, scratch)
        return trial

    def comparison(self, trial: ir.Model) -> metrics.Comparison:
        """Outputs of ``trial`` against the FP32 model's (one full-model evaluation)."""
        self.evaluations += 1
        return metrics.compare(self.reference, runtime.session(trial), self.feeds, what="evaluation sample")

    def score(self, int8: set[str] | None = None) -> float:
        """The metric of the plan with ``int8`` quantized; NaN when the outputs do not have it."""
        value = metric_value(self.metric, self.comparison(self.quantized(int8)).to_dict())
        return float("nan") if value is None else float(value)
