"""Latency of models side by side, timed interleaved so that their ratio compares like with like.

The speed of a shared machine can change by 2x for seconds at a time: PP-OCRv4 rec ran at 15 ms
and at 30 ms per inference in alternate seconds on the 2-core machine of ``benchmarks/``, so timing
one model and then the other compares two different machines (timed that way, the automatic
policy's plan for that model measured 0.70x and 0.98x the FP32 speed in two runs). ``interleaved`` visits every model once per cycle, the order
alternating between cycles, for one untimed run (the previous session's threads wind down) and a
short block of timed runs (about ``visit_s``). A model's latency is the median of all its runs; a
speed ratio is the median over cycles of the per-cycle ratio of block medians
(``reference / own``; > 1: faster than the reference), which pairs times taken within a fraction
of a second of each other.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from qonnx import runtime

__all__ = ["Timing", "TimingPlan", "interleaved", "speed_quartiles", "speedup"]

Model = ir.Model | str | os.PathLike


@dataclasses.dataclass
class Timing:
    """One model's timed runs (seconds) and the median of each cycle's block of them."""

    runs_s: list[float] = dataclasses.field(default_factory=list)
    cycle_medians_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


@dataclasses.dataclass(frozen=True)
class TimingPlan:
    """How the models were timed: ``cycles`` visits each of ``runs_per_visit`` timed runs."""

    cycles: int
    runs_per_visit: int

    @property
    def timed_runs(self) -> int:
        return self.cycles * self.runs_per_visit


def interleaved(
    models: Sequence[Model],
    feed: Mapping[str, np.ndarray],
    *,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 20,
    min_cycles: int = 10,
    min_timed_s: float = 0.0,
    visit_s: float = 0.05,
) -> tuple[list[Timing], TimingPlan]:
    """Time ``models`` on ``feed`` interleaved, one onnxruntime session each with ``threads``
    intra-op threads and ``warmup`` untimed runs. The first model sets the pace: a visit holds as
    many runs as fit in ``visit_s`` of it (1 to 200); every model gets at least ``runs`` timed runs
    and ``min_timed_s`` timed seconds, in at least ``min_cycles`` cycles (fewer when ``runs`` is
    smaller)."""
    if not models:
        return [], TimingPlan(0, 0)
    sessions = [runtime.session(model, threads=threads) for model in models]
    for session in sessions:
        for _ in range(warmup):
            session.run(feed)
    probe = []
    for _ in range(3):
        start = time.perf_counter()
        sessions[0].run(feed)
        probe.append(time.perf_counter() - start)
    seconds_per_run = max(statistics.median(probe), 1e-6)
    block = max(1, min(200, round(visit_s / seconds_per_run)))
    cycles = max(min(min_cycles, runs), math.ceil(runs / block), math.ceil(min_timed_s / (block * seconds_per_run)))
    timings = [Timing() for _ in models]
    for cycle in range(cycles):
        order = range(len(models)) if cycle % 2 == 0 else reversed(range(len(models)))
        for index in order:
            session, timing = sessions[index], timings[index]
            session.run(feed)  # untimed
            times = []
            for _ in range(block):
                start = time.perf_counter()
                session.run(feed)
                times.append(time.perf_counter() - start)
            timing.runs_s.extend(times)
            timing.cycle_medians_s.append(statistics.median(times))
    return timings, TimingPlan(cycles, block)


def speed_quartiles(reference: Timing, own: Timing) -> tuple[float, float, float]:
    """Quartiles over the cycles of ``reference`` time / ``own`` time (> 1: faster than the reference)."""
    ratios = [r / o for r, o in zip(reference.cycle_medians_s, own.cycle_medians_s)]
    return tuple(float(q) for q in np.percentile(ratios, [25, 50, 75]))


def speedup(reference: Timing, own: Timing) -> float:
    """The median over the cycles of ``reference`` time / ``own`` time."""
    return speed_quartiles(reference, own)[1]
