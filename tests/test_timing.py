"""Interleaved timing (``qonnx.timing``): the schedule it keeps and the paired ratio it reports.

No test here asserts a speed: times on a shared machine are what is being guarded against. The
checks are on the bookkeeping (how many runs, in which cycles) and on the arithmetic of the ratio.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest

from qonnx import timing
from qonnx.calib.sources import ListSource, input_specs
from qonnx.models import tiny
from qonnx.pipeline import build, parse_pipeline, run_pipeline

from conftest import run_text


def test_every_model_gets_the_same_cycles_and_at_least_the_runs_asked_for():
    models = [ir.from_proto(tiny.conv_chain(depth=1)), ir.from_proto(tiny.conv_chain(depth=3))]
    feed = tiny.random_feed(tiny.conv_chain(depth=1))
    timings, plan = timing.interleaved(models, feed, runs=7, warmup=0, min_cycles=4, threads=1)
    assert plan.cycles >= 4 and plan.runs_per_visit >= 1
    for measured in timings:
        assert len(measured.cycle_medians_s) == plan.cycles  # one visit per cycle, no model skipped
        assert len(measured.runs_s) == plan.timed_runs >= 7
        assert all(t > 0 for t in measured.runs_s)
        assert min(measured.runs_s) <= measured.median_s <= max(measured.runs_s)


def test_fewer_runs_than_the_minimum_cycles_caps_the_cycles():
    """``runs=2``: two cycles suffice (a visit holds at least one run), not ``min_cycles``."""
    model = ir.from_proto(tiny.conv_chain(depth=1))
    timings, plan = timing.interleaved([model], tiny.random_feed(tiny.conv_chain(depth=1)), runs=2, warmup=0, visit_s=0.0)
    assert (plan.cycles, plan.runs_per_visit, len(timings[0].runs_s)) == (2, 1, 2)


def test_the_ratio_pairs_each_cycle():
    """The machine halves its speed in cycles 2 and 4 for both models alike: the paired ratio stays
    2.0 in every cycle. Unpaired, the reference timed in fast cycles and the model in slow ones
    would read 1.0."""
    reference = timing.Timing(runs_s=[10, 20, 10, 20], cycle_medians_s=[10.0, 20.0, 10.0, 20.0])
    own = timing.Timing(runs_s=[5, 10, 5, 10], cycle_medians_s=[5.0, 10.0, 5.0, 10.0])
    assert timing.speed_quartiles(reference, own) == (2.0, 2.0, 2.0)
    assert timing.speedup(own, reference) == 0.5
    uneven = timing.Timing(cycle_medians_s=[5.0, 20.0, 10.0, 10.0])  # ratios 2, 1, 1, 2
    assert timing.speed_quartiles(reference, uneven) == pytest.approx((1.0, 1.5, 2.0), abs=1e-12)


def test_the_latency_pass_records_the_interleaved_schedule():
    model, _, context = run_text(tiny.conv_chain(), "normalize,resolve-policy,calibrate,insert-qdq")
    context.eval_data = ListSource([tiny.random_feed(tiny.conv_chain(), seed=9)], input_specs(model))
    context.source = ir.from_proto(tiny.conv_chain())
    run_pipeline(model, build(parse_pipeline("latency(runs=12,warmup=1,threads=1)"), context), context)
    record = context.records["latency"]
    assert record.runs >= 12 and record.cycles >= 10 and record.threads == 1
    low, middle, high = record.speedup_quartiles
    assert low <= middle <= high and record.speedup == middle
