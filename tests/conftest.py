"""Shared helpers: run a text pipeline on a tiny model, run models in onnxruntime, kit fixtures."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qonnx.calib.sources import ListSource, input_specs
from qonnx.models import tiny
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def run_text(model: onnx.ModelProto | ir.Model, text: str, samples: int = 4, **context):
    """Run pipeline ``text`` on ``model`` (calibrated on random feeds); returns (model, records, context)."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    ir_model = to_ir(proto)
    source = ListSource([tiny.random_feed(proto, seed=i) for i in range(samples)], input_specs(ir_model))
    ctx = Context(calib=source, **context)
    records = run_pipeline(ir_model, build(parse_pipeline(text), ctx), ctx)
    return ir_model, records, ctx


def outputs(model: onnx.ModelProto | ir.Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


@pytest.fixture(scope="session")
def photos():
    from qonnx.models.data import photo_folders

    return photo_folders()


# A skipped test never runs where it is skipped. `make test` (and so CI) sets QONNX_STRICT_SKIPS=1:
# then a skip fails the run unless its reason starts with "platform:", a documented limit of the
# machine (such as a CPU instruction the test is about), never a missing package.
PLATFORM_SKIP = "platform:"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("QONNX_STRICT_SKIPS") != "1":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(PLATFORM_SKIP):
        report.outcome = "failed"
        report.longrepr = f"skipped without a platform reason under QONNX_STRICT_SKIPS=1: {reason}"
