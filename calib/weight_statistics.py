"""Statistics of the inputs of weighted MatMuls, for data-aware weight rounding (GPTQ, AWQ).

For a MatMul ``y = x @ W`` with a constant 2-D weight ``W [K, N]``, every calibration token of
``x`` (``x`` flattened to ``[tokens, K]``) is folded into (products in float32 a chunk of tokens at a
time, sums in float64)

    xtx      = Σ x^T x                 float64 [K, K]   (the ``hessian`` of the output error)
    abs_sum  = Σ |x|  per channel      float64 [K]      (``mean_abs = abs_sum / count``)
    count    = number of tokens

(``InputStatistics``: ``update`` / ``merge``, sums of float64, so batch order and batch size change
nothing beyond rounding; non-finite values count as 0 and are counted in ``nonfinite``).

Memory is bounded by a group of layers, not by the model: ``WeightInputStatistics`` maps each such
MatMul (by node name) to the statistics of its input and computes them on demand, a group of input
tensors at a time, in one of two ways:

- ``segmented`` (the default): the groups are consecutive tensors in graph order whose sums fit
  ``SEGMENT_SUMS`` (about one transformer layer), and the data runs forward through the model a
  segment at a time (``qonnx.calib.segments``): one pass over the data in all, and memory holds one
  segment's weights, the values crossing between segments for every sample, and the sums of the
  last two groups (a rewrite quantizing a group's layers may still be scaling the next group's);
- whole-model sessions: the groups are as many tensors as fit ``memory_budget`` with their
  ``K x K`` sums and the tapped outputs of two batches (one observed while onnxruntime computes the
  next); each group is one onnxruntime session of the whole model over the data with only its
  tensors tapped, and the previous group's statistics are dropped when the next is computed.

A tensor read by several MatMuls (q/k/v projections) is captured once; those nodes share one
``InputStatistics``. Asked in graph order (``node_groups``), either way computes each group once.

Statistics are taken on the model as it stands when their group is computed: a rewrite that changes
a layer's input (dividing it by AWQ's scales) tells the mapping with ``input_scaled`` so that the
statistics already held follow (``x / s``) and later ones are read from the right tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx import runtime
from qonnx.calib.collect import DEFAULT_MEMORY_BUDGET, _IN_FLIGHT, _ahead, _batches, _check_batchable, _run, parse_bytes, plan_groups
from qonnx.calib.segments import SegmentedRun
from qonnx.calib.sources import Source
from qonnx.errors import UserError
from qonnx.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["InputStatistics", "WeightInputStatistics", "weighted_matmuls"]

SEGMENT_SUMS = 32 << 20  # bytes of X^T X sums per group in a segmented run (a 135M LLM's layer: 27 MB)
_CHUNK_ROWS = 4096  # tokens summed in float32 at a time (relative error of a sum ~ sqrt(4096) * 2**-24)


class InputStatistics:
    """Streaming ``X^T X``, ``Σ|x|`` and token count of one ``[..., K]`` tensor (module docstring)."""

    def __init__(self, channels: int):
        self.xtx = np.zeros((channels, channels), np.float64)
        self.abs_sum = np.zeros(channels, np.float64)
        self.count = 0
        self.nonfinite = 0

    @property
    def channels(self) -> int:
        return len(self.abs_sum)

    @property
    def hessian(self) -> np.ndarray:
        """``X^T X`` (float64 ``[K, K]``): ``||X ΔW||^2 = tr(ΔW^T H ΔW)``; GPTQ's ``2 X^T X / n`` up to a factor."""
        return self.xtx

    @property
    def mean_abs(self) -> np.ndarray:
        """Mean ``|x|`` per channel (float64 ``[K]``)."""
        return self.abs_sum / max(self.count, 1)

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch)
        if x.shape[-1] != self.channels:
            raise ValueError(f"a tensor of {x.shape[-1]} channels for statistics of {self.channels}")
        x = x.reshape(-1, self.channels)
        for start in range(0, len(x), _CHUNK_ROWS):
            chunk = x[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)
            finite = np.isfinite(chunk)
            if not finite.all():
                self.nonfinite += int(chunk.size - finite.sum())
                chunk = np.where(finite, chunk, np.float32(0))
            # float32 products of one chunk (BLAS syrk), summed into float64 across chunks
            self.xtx += chunk.T @ chunk
            self.abs_sum += np.abs(chunk).sum(axis=0, dtype=np.float64)
        self.count += len(x)

    def merge(self, other: InputStatistics) -> None:
        """Fold in what ``other`` saw (another share of the data)."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge statistics of {other.channels} channels into {self.channels}")
        self.xtx += other.xtx
        self.abs_sum += other.abs_sum
        self.count += other.count
        self.nonfinite += other.nonfinite

    def rescale(self, scales: np.ndarray) -> None:
        """Become the statistics of ``x / scales`` (in place): ``xtx / (s s^T)``, ``abs_sum / s``."""
        s = np.asarray(scales, np.float64)
        self.xtx /= np.outer(s, s)
        self.abs_sum /= s

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays to save with ``np.savez`` (no pickle) or send to a worker."""
        return {"xtx": self.xtx, "abs_sum": self.abs_sum, "count": np.int64(self.count), "nonfinite": np.int64(self.nonfinite)}

    @classmethod
    def from_dict(cls, data: Mapping[str, np.ndarray]) -> InputStatistics:
        stats = cls(len(data["abs_sum"]))
        stats.xtx = np.array(data["xtx"], np.float64)
        stats.abs_sum = np.array(data["abs_sum"], np.float64)
        stats.count, stats.nonfinite = int(data["count"]), int(data["nonfinite"])
        return stats


def weighted_matmuls(model: ir.Model) -> dict[str, tuple[str, int]]:
    """``{node name: (input tensor name, K)}`` for each MatMul of the main graph whose second input is
    a constant 2-D float weight ``[K, N]``, or the ``Transpose`` of one ``[N, K]`` (a tied lm_head
    reading its embedding table), and whose first input is computed (graph order)."""
    found = {}
    for node in model.graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        x, w = node.inputs
        axis = 0
        transpose = qir.transpose_of_constant(w)
        if transpose is not None:
            w, axis = transpose.inputs[0], 1
        weight = qir.constant_array(w)
        if x is None or weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
            continue
        if qir.constant_array(x) is not None:
            continue
        found[node.name] = (x.name, int(weight.shape[axis]))
    return found


class WeightInputStatistics(Mapping[str, InputStatistics]):
    """Node name -> ``InputStatistics`` of its input, computed group by group on demand.

    ``model``: the model whose MatMuls are looked at (``weighted_matmuls``), kept by reference;
    ``source``: calibration feeds (the first ``samples``); ``batch_size`` samples per onnxruntime
    run; ``segmented``: run the model a segment at a time (module docstring), else whole-model
    sessions; ``memory_budget``: bytes (or text such as ``"2GiB"``) for one group's sums and tapped
    outputs. ``groups_computed`` counts the groups computed so far (without ``segmented``, each is
    one pass over the data).
    """

    def __init__(
        self,
        model: ir.Model,
        source: Source,
        *,
        samples: int | None = None,
        batch_size: int = 1,
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        segmented: bool = True,
        progress: bool | None = False,
    ):
        _check_batchable(model, batch_size)
        self.model, self.source, self.batch_size = model, source, batch_size
        self.budget = parse_bytes(memory_budget)
        self.progress = progress
        self.count = len(source) if samples is None else min(samples, len(source))
        if self.count <= 0:
            raise UserError("no calibration samples")
        matmuls = weighted_matmuls(model)
        self.tensor_of = {node: tensor for node, (tensor, _) in matmuls.items()}
        self.channels = {tensor: k for tensor, k in matmuls.values()}
        self._groups: list[list[str]] | None = None
        self._held: dict[str, InputStatistics] = {}
        self._previous: dict[str, InputStatistics] = {}  # a segmented run keeps the group before too
        self.groups_computed = 0
        self.run = SegmentedRun(model, source, self.count, batch_size=batch_size) if segmented else None

    # Mapping over node names
    def __getitem__(self, node: str) -> InputStatistics:
        tensor = self.tensor_of[node]
        if tensor in self._previous:
            return self._previous[tensor]
        if tensor not in self._held:
            self._compute(tensor)
        return self._held[tensor]

    def __contains__(self, node: object) -> bool:
        # Mapping's own would compute the node's group (one pass over the data) to answer
        return node in self.tensor_of

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensor_of)

    def __len__(self) -> int:
        return len(self.tensor_of)

    @property
    def held_tensors(self) -> list[str]:
        """The tensors whose statistics are in memory now (one group's; a segmented run's last two)."""
        return list(self._previous) + list(self._held)

    def node_groups(self) -> list[list[str]]:
        """The node names by group of their input, in the order that computes each group once."""
        groups = []
        for tensors in self._plan():
            members = set(tensors)
            groups.append([node for node, tensor in self.tensor_of.items() if tensor in members])
        return [g for g in groups if g]

    def input_scaled(self, nodes: Sequence[str], scales: np.ndarray, tensor: str | None = None) -> None:
        """The input of ``nodes`` is now divided by ``scales``, under the name ``tensor`` (default: the
        same name, 1/s folded into its producer): held statistics are rescaled; ones computed later
        are read from the model as it then is."""
        old = {self.tensor_of[n] for n in nodes}
        if len(old) != 1:
            raise ValueError(f"nodes {list(nodes)} do not read one input")
        (old_name,) = old
        held = self._held.get(old_name, self._previous.get(old_name))
        if held is not None:
            held.rescale(scales)
        if self.run is not None:
            self.run.divide(old_name, scales, renamed=tensor if tensor != old_name else None)
        if tensor is not None and tensor != old_name:
            for node in nodes:
                self.tensor_of[node] = tensor
            self.channels[tensor] = self.channels[old_name]
            if held is not None:
                holder = self._held if old_name in self._held else self._previous
                if all(t != old_name for t in self.tensor_of.values()):
                    del holder[old_name]
                holder[tensor] = held
            if self._groups is not None:  # compute it with the old tensor's group
                for group in self._groups:
                    if old_name in group and tensor not in group:
                        group.append(tensor)

    def _plan(self) -> list[list[str]]:
        """Groups of tensors; the bytes of a tapped tensor per channel are measured on the first
        sample (tokens per sample: every MatMul of a transformer or MLP sees the same tokens)."""
        if self._groups is None and self.run is not None:
            tensors = self._in_graph_order(dict.fromkeys(self.tensor_of.values()))
            sums = {t: (k := self.channels[t]) * (k + 1) * 8 for t in tensors}
            self._groups = plan_groups(sums, min(self.budget, SEGMENT_SUMS))
            logger.info("weight input statistics: %d tensors in %d segments", len(tensors), len(self._groups))
        if self._groups is None:
            tensors = list(dict.fromkeys(self.tensor_of.values()))
            tokens = self._probe_tokens(tensors[0])
            # float64 sums, and float32 tapped outputs of the batches in flight
            sizes = {t: (k := self.channels[t]) * (k + 1) * 8 + tokens * self.batch_size * _IN_FLIGHT * k * 4 for t in tensors}
            self._groups = plan_groups(sizes, self.budget)
            logger.info("weight input statistics: %d tensors in %d groups of at most %.0f MiB", len(tensors), len(self._groups), self.budget / 2**20)
        return self._groups

    def _in_graph_order(self, tensors) -> list[str]:
        position = {v.name: i for i, node in enumerate(self.model.graph) for v in node.outputs}
        return sorted(tensors, key=lambda t: position.get(t, -1))

    def _probe_tokens(self, tensor: str) -> int:
        feed = self.source[0]
        if tensor in feed:
            value = feed[tensor]
        else:
            value = self._session([tensor]).run(feed, [tensor])[tensor]
        return max(1, value.size // self.channels[tensor])

    def _session(self, tensors: Sequence[str]) -> runtime.Session:
        """A session of the model with ``tensors`` among its outputs, which are added to the model
        itself for as long as the session takes to build (a copy of a large model would be one more
        model's worth of memory at the peak)."""
        graph = self.model.graph
        outputs = list(graph.outputs)
        values = {v.name: v for v in outputs}
        for node in graph:
            for value in node.outputs:
                if value.name in tensors and value.name not in values:
                    values[value.name] = value
                    graph.outputs.append(value)
        missing = [t for t in tensors if t not in values]
        if missing:
            raise KeyError(f"no tensor named {missing[0]!r} in the model")
        try:
            return runtime.session(self.model, spinning=False)
        finally:
            graph.outputs.clear()
            graph.outputs.extend(outputs)

    def _compute(self, tensor: str) -> None:
        group = next(g for g in self._plan() if tensor in g)
        if self.run is not None:
            self._previous = self._held
        self._held = {}  # the sums before this group's (one group's, or the two before in a segmented run) go first
        if self.run is None:
            self._previous = {}
        live = [t for t in dict.fromkeys(group) if t in self.tensor_of.values()]
        stats = {t: InputStatistics(self.channels[t]) for t in live}
        self.groups_computed += 1
        label = f"weight statistics, group {self.groups_computed}"
        with Progress(self.count, label, enabled=self.progress) as bar:
            for indices, values in _ahead(self._tapped(live)):
                for name in live:
                    stats[name].update(values[name])
                bar.advance(len(indices))
                del values
        for name, value in stats.items():
            if value.nonfinite:
                logger.warning("tensor %s: %d non-finite values counted as 0 in its statistics", name, value.nonfinite)
        self._held = stats

    def _tapped(self, tensors: list[str]) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """``(sample indices, {tensor: array})`` per batch, a segment or the whole model run."""
        if self.run is not None:
            yield from self.run.run_to(tensors)
            return
        graph_inputs = {v.name for v in self.model.graph.inputs}
        fetch = [t for t in tensors if t not in graph_inputs]
        session = self._session(fetch) if fetch else None
        for indices, feed in _batches(self.source, range(self.count), self.batch_size, None):
            outputs = _run(session, feed, fetch, indices) if session else {}
            yield indices, {t: feed[t] if t in graph_inputs else outputs[t] for t in tensors}
