"""Range collection: run calibration samples through onnxruntime and feed the observers.

The model runs with the tensors to calibrate added as graph outputs, one ``session.run`` per batch,
each observer updated as its tensor arrives; nothing of a batch is kept once its observers saw it,
so memory does not grow with the number of samples.

Batches: ``batch_size`` consecutive samples are concatenated along axis 0 when every input's first
dimension is dynamic (a model with a static batch dimension refuses ``batch_size > 1``); a sample
whose shape differs from the batch being built (other sequence length, other image size) starts a
new batch, so variable shapes need no padding.

Overlap: onnxruntime computes batch ``k + 1`` in a background thread (it releases the GIL) while
the observers take in batch ``k``, so at most two batches of tapped outputs are alive at once.

Memory budget: the first sample runs alone with every tensor tapped, which measures the bytes each
tensor takes per row of batch. When the tapped outputs of two batches would exceed
``memory_budget`` bytes, the tensors are split into groups that fit, and the remaining samples go
through one session per group (one pass over the data each) rather than holding batches.
Observers are independent of batching, so the table is the same whichever way the work is split.

Shards: ``collect_ranges_sharded`` splits the samples into contiguous shards observed in the
workers of an executor (``qonnx.executor``: a process pool, Ray) and merges their observers, the
map and reduce of a data set too large for one machine's time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from qonnx import runtime
from qonnx.calib.means import ChannelMean
from qonnx.calib.observers import MinMax, Observer, ObserverFactory, observer_from_dict
from qonnx.calib.ranges import RangeTable, TensorRange
from qonnx.calib.sources import Source, input_specs
from qonnx.errors import UserError
from qonnx.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["collect_ranges", "collect_ranges_sharded", "shard_bounds", "parse_bytes", "DEFAULT_MEMORY_BUDGET", "plan_groups"]

DEFAULT_MEMORY_BUDGET = 2 << 30  # 2 GiB of tapped outputs per batch

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
          "g": 1e9, "gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1.5g"`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UserError(f"cannot read {text!r} as a size; write it like 2GiB, 512MB or 1073741824")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserError(f"a memory budget must be positive, not {text!r}")
    return value


def plan_groups(sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """Tensors packed, in order, into groups whose bytes stay within ``budget`` (a bigger tensor alone)."""
    groups: list[list[str]] = []
    used = budget + 1
    for name, size in sizes.items():
        if used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def _rows(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _batches(
    source: Source, indices: range, batch_size: int, hasher: Any | None
) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """``(sample indices, feed)`` with up to ``batch_size`` samples of one shape concatenated on axis 0."""
    pending: list[tuple[int, dict[str, np.ndarray]]] = []

    def flush():
        if len(pending) == 1:
            return [pending[0][0]], pending[0][1]
        feed = {name: np.concatenate([f[name] for _, f in pending]) for name in pending[0][1]}
        return [i for i, _ in pending], feed

    def shapes(feed):
        return {k: v.shape[1:] for k, v in feed.items()}

    for index in indices:
        feed = source[index]
        if hasher is not None:
            _hash_feed(hasher, feed)
        if pending and (len(pending) == batch_size or shapes(feed) != shapes(pending[0][1])):
            yield flush()
            pending = []
        pending.append((index, feed))
    if pending:
        yield flush()


def _hash_feed(hasher: Any, feed: Mapping[str, np.ndarray]) -> None:
    for name in sorted(feed):
        array = np.ascontiguousarray(feed[name])
        hasher.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        hasher.update(array.reshape(-1).view(np.uint8))


def _check_batchable(model: ir.Model, batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive number, not {batch_size}")
    if batch_size == 1:
        return
    for spec in input_specs(model):
        if spec.shape is not None and (not spec.shape or isinstance(spec.shape[0], int)):
            first = list(spec.shape[:1]) or "none (a scalar)"
            raise UserError(
                f"--batch-size {batch_size} needs a dynamic first dimension on every input; "
                f"input {spec.name!r} has {first}: use --batch-size 1"
            )


_IN_FLIGHT = 2  # batches whose tapped outputs may be alive at once (one observed, one computed)


def _ahead(produce: Iterator[Any]) -> Iterator[Any]:
    """The items of ``produce``, computed one ahead in a background thread.

    The consumer's ``next()`` after an item means it is done with it: at most ``_IN_FLIGHT`` items
    exist at any time. An exception in the producer is raised in the consumer.
    """
    slots = threading.Semaphore(_IN_FLIGHT)
    handoff: queue.Queue = queue.Queue()
    stop = threading.Event()
    done = object()

    def work():
        try:
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                item = next(produce, done)
                handoff.put((item, None))
                if item is done:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            handoff.put((done, exc))

    thread = threading.Thread(target=work, name="qonnx-calibration", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
            slots.release()
    finally:
        stop.set()
        slots.release()
        thread.join()


def _run(session: runtime.Session, feed: Mapping[str, np.ndarray], names: Sequence[str], samples: list[int]) -> dict:
    try:
        return session.run(feed, names) if names else {}
    except UserError as exc:
        where = f"sample {samples[0]}" if len(samples) == 1 else f"samples {samples[0]}-{samples[-1]}"
        raise UserError(f"calibration {where}: {exc}") from None


def collect_ranges(
    model: ir.Model,
    source: Source,
    tensors: Sequence[str],
    *,
    observer: ObserverFactory = MinMax(),
    samples: int | None = None,
    batch_size: int = 1,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = False,
    model_hash: str = "",
    channel_means: Sequence[str] = (),
) -> RangeTable:
    """Observe ``tensors`` over the first ``samples`` feeds of ``source``, one ``observer.new()`` each.

    ``observer``: the method and its settings, e.g. ``Percentile(99.9)`` or ``MSE(dtype="int8")``
    (``qonnx.calib.observers``; the table records its method and the observers' settings);
    ``memory_budget`` the bytes the tapped outputs of one batch may take (an int, or text such as
    ``"2GiB"``). ``channel_means``: tensors whose mean per channel (axis 1) is taken in the same
    runs, for bias correction (``RangeTable.channel_means``).
    """
    if not isinstance(observer, ObserverFactory):
        raise TypeError(f"observer must be an ObserverFactory such as MinMax() or Percentile(99.9), not {observer!r}")
    budget = parse_bytes(memory_budget)
    _check_batchable(model, batch_size)
    count = len(source) if samples is None else min(samples, len(source))
    if count <= 0:
        raise UserError("no calibration samples")
    hasher = hashlib.sha256()
    observers, means, passes = _observe(model, source, count, tensors, observer, batch_size, budget, progress, channel_means, hasher)
    return _table(observers, means, observer, count, source.description, hasher.hexdigest(), batch_size, passes, model_hash)


def _observe(
    model: ir.Model,
    source: Source,
    count: int,
    tensors: Sequence[str],
    observer: ObserverFactory,
    batch_size: int,
    budget: int,
    progress: bool | None,
    channel_means: Sequence[str],
    hasher: Any | None,
) -> tuple[dict[str, Observer], dict[str, ChannelMean], int]:
    """The observers and channel means of the first ``count`` samples, and the passes over the data."""
    observers: dict[str, Observer] = {name: observer.new() for name in tensors}
    means = {name: ChannelMean() for name in channel_means}
    graph_inputs = {v.name for v in model.graph.inputs}
    watched = list(dict.fromkeys([*tensors, *channel_means]))
    tapped = [t for t in watched if t not in graph_inputs]

    def observe(feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
        for name in names:
            value = feed[name] if name in graph_inputs else outputs[name]
            if name in observers:
                observers[name].update(value)
            if name in means:
                means[name].update(value)

    # The first sample alone, every tensor tapped: what each tensor weighs per row of batch.
    first = source[0]
    if hasher is not None:
        _hash_feed(hasher, first)
    session = runtime.session(runtime.tapped_model(model, tapped))
    outputs = _run(session, first, tapped, [0])
    observe(first, outputs, watched)
    rows = _rows(first)
    per_row = {name: -(-outputs[name].nbytes // rows) for name in tapped}
    del outputs
    batch_rows = rows * batch_size
    groups = plan_groups({name: size * batch_rows * _IN_FLIGHT for name, size in per_row.items()}, budget) or [[]]
    if len(groups) > 1:
        logger.info(
            "tapped outputs of %d batches take %.1f MiB, over the %.1f MiB budget: %d passes over the data",
            _IN_FLIGHT, sum(per_row.values()) * batch_rows * _IN_FLIGHT / 2**20, budget / 2**20, len(groups),
        )
        session = None  # the next group's session replaces it
    label = "calibrating" if len(groups) == 1 else "calibrating, pass {} of " + str(len(groups))
    rest = range(1, count)
    for number, group in enumerate(groups):
        if session is None:
            session = runtime.session(runtime.tapped_model(model, group))
        names = [*group, *(t for t in watched if t in graph_inputs)] if number == 0 else group
        total = count if number == 0 else count - 1
        with Progress(total, label.format(number + 1), enabled=progress) as bar:
            if number == 0:
                bar.advance()
            fetch = [n for n in names if n not in graph_inputs]
            batches = _batches(source, rest, batch_size, hasher if number == 0 else None)
            computed = ((indices, feed, _run(session, feed, fetch, indices)) for indices, feed in batches)
            for indices, feed, outputs in _ahead(computed):
                observe(feed, outputs, names)
                bar.advance(len(indices))
                del feed, outputs
        session = None
    return observers, means, len(groups)


def _table(
    observers: Mapping[str, Observer],
    means: Mapping[str, ChannelMean],
    observer: ObserverFactory,
    count: int,
    description: str,
    data_hash: str,
    batch_size: int,
    passes: int,
    model_hash: str,
) -> RangeTable:
    ranges = {}
    for name, obs in observers.items():
        try:
            lo, hi = obs.compute_range()
        except ValueError:
            raise UserError(f"tensor {name!r} held no finite value in {count} calibration samples") from None
        observed_lo, observed_hi = obs.observed_range()
        ranges[name] = TensorRange(lo, hi, obs.nonfinite, obs.resolution, float(observed_lo), float(observed_hi))
        if obs.nonfinite:
            logger.warning("tensor %s: %d non-finite values excluded from its range", name, obs.nonfinite)
    any_observer = next(iter(observers.values()), None) or observer.new()
    return RangeTable(
        ranges,
        model_hash=model_hash,
        method=observer.method,
        samples=count,
        data=description,
        data_hash=data_hash,
        observer=any_observer.settings(),
        batch_size=batch_size,
        passes=passes,
        channel_means={name: [float(v) for v in m] for name, acc in means.items() if (m := acc.mean()) is not None},
    )


# ----------------------------------------------------------------------------------------------
# Sharded over the data: map (observers per shard, in workers), reduce (merge)


class _Feeds(Source):
    """The feeds of one shard, sent with it (a source that does not travel cheaply)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], description: str):
        self.feeds, self.description = feeds, description

    def __len__(self) -> int:
        return len(self.feeds)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.feeds[index]


@dataclasses.dataclass
class _ShardSetup:
    """What every shard's worker needs: the model (protobuf bytes), the tensors, the observer
    factory and the batching; ``source`` when the source travels cheaply (paths: image or .npz
    folders), else None and each shard carries its feeds."""

    model: bytes
    tensors: list[str]
    observer: ObserverFactory
    batch_size: int
    budget: int
    channel_means: list[str]
    source: Source | None


_PORTABLE_BYTES = 1 << 20  # a source that pickles to more (arrays in memory) sends each shard its feeds


def _portable(source: Source) -> Source | None:
    try:
        size = len(pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # open files, generators, locally defined classes
        return None
    return source if size <= _PORTABLE_BYTES else None


def _observe_shard(setup: _ShardSetup, item: tuple[int, int, list[dict[str, np.ndarray]] | None]) -> dict[str, Any]:
    """One shard in a worker: its observers and channel sums as plain data (``to_dict``)."""
    start, stop, feeds = item
    model = ir.from_proto(onnx.ModelProto.FromString(setup.model))
    if feeds is None:
        assert setup.source is not None
        source = setup.source.subset(range(start, stop))
    else:
        source = _Feeds(feeds, f"samples {start}-{stop - 1}")
    observers, means, passes = _observe(
        model, source, stop - start, setup.tensors, setup.observer, setup.batch_size, setup.budget, False, setup.channel_means, None
    )
    return {
        "observers": {name: obs.to_dict() for name, obs in observers.items()},
        "means": {name: acc.to_dict() for name, acc in means.items()},
        "passes": passes,
    }


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous, near-equal ``[start, stop)`` ranges covering ``range(count)``, none empty."""
    shards = max(1, min(shards, count))
    edges = [count * k // shards for k in range(shards + 1)]
    return [(edges[k], edges[k + 1]) for k in range(shards)]


def collect_ranges_sharded(
    model: ir.Model,
    source: Source,
    tensors: Sequence[str],
    *,
    observer: ObserverFactory = MinMax(),
    executor: Any = None,
    shards: int | None = None,
    samples: int | None = None,
    batch_size: int = 1,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    model_hash: str = "",
    channel_means: Sequence[str] = (),
) -> RangeTable:
    """``collect_ranges`` with the samples split into ``shards`` contiguous parts (default: the
    executor's workers), each observed in a worker of ``executor`` (a ``qonnx.executor.Executor``;
    None: in this process), the observers merged in shard order through ``to_dict`` /
    ``observer_from_dict`` / ``merge``.

    The table is the one ``collect_ranges`` makes: the same ranges for minmax (exact extremes) and
    for the histogram methods (percentile, entropy, mse: their bins are a function of the set of
    values, so merging shards changes nothing), the same samples, data description and data hash
    (computed here, over the feeds in order), the passes of the shard that needed most. Channel
    means are sums of float64 added in another order: equal to about 1e-15 relative.
    ``moving-minmax`` depends on the batch order by design and is refused.
    """
    from qonnx.executor import SerialExecutor

    if not isinstance(observer, ObserverFactory):
        raise TypeError(f"observer must be an ObserverFactory such as MinMax() or Percentile(99.9), not {observer!r}")
    if observer.method == "moving-minmax":
        raise UserError("moving-minmax averages batches in their order: it cannot be sharded (use one shard, or minmax)")
    executor = executor if executor is not None else SerialExecutor()
    budget = parse_bytes(memory_budget)
    _check_batchable(model, batch_size)
    count = len(source) if samples is None else min(samples, len(source))
    if count <= 0:
        raise UserError("no calibration samples")
    shards = executor.workers if shards is None else shards
    if shards < 1:
        raise UserError(f"shards must be a positive number, not {shards}")
    bounds = shard_bounds(count, shards)
    travelling = _portable(source)
    setup = _ShardSetup(ir.to_proto(model).SerializeToString(), list(tensors), observer, batch_size, budget, list(channel_means), travelling)
    items = [(start, stop, None if travelling is not None else [source[i] for i in range(start, stop)]) for start, stop in bounds]
    results = executor.map(_observe_shard, items, shared=setup)

    observers: dict[str, Observer] = {}
    means: dict[str, ChannelMean] = {name: ChannelMean() for name in channel_means}
    for result in results:  # in shard order
        for name, data in result["observers"].items():
            part = observer_from_dict(data)
            if name in observers:
                observers[name].merge(part)
            else:
                observers[name] = part
        for name, data in result["means"].items():
            means[name].merge(ChannelMean.from_dict(data))
    observers = {name: observers[name] for name in tensors}
    hasher = hashlib.sha256()
    for index in range(count):
        _hash_feed(hasher, source[index])
    passes = max(result["passes"] for result in results)
    return _table(observers, means, observer, count, source.description, hasher.hexdigest(), batch_size, passes, model_hash)
