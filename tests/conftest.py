"""Shared helpers: run a text pipeline on a tiny model, run models in onnxruntime, run the CLI, kit fixtures."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

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

# --------------------------------------------------------------------------------------------
# The command line


@dataclasses.dataclass
class Result:
    """What one run of the CLI gave: exit code, stdout, stderr."""

    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if "qonnx: error:" in line]


def run_python(*args, cwd: Path | None = None, timeout: float = 120) -> Result:
    """``python ARGS`` in a subprocess, with this interpreter (and so this installation of qonnx)."""
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_qonnx(*args, cwd: Path | None = None) -> Result:
    """The real command, ``python -m qonnx ARGS``, in a subprocess."""
    return run_python("-m", "qonnx", *args, cwd=cwd)


_bad_inputs: list[str] = []


def record_bad_input(name: str) -> None:
    """Count one bad input tried through the command line (reported at the end of the run)."""
    _bad_inputs.append(name)


_corpus: list[str] = []


def record_corpus(status: str) -> None:
    """Count one model of onnx's backend corpus by how it ended: quantized, refused or failing."""
    _corpus.append(status)


def pytest_terminal_summary(terminalreporter) -> None:
    if _bad_inputs:
        terminalreporter.write_line(f"qonnx CLI: {len(_bad_inputs)} bad inputs tried, each as the real command in a subprocess")
    if _corpus:
        counts = {status: _corpus.count(status) for status in ("quantized", "refused", "failing")}
        terminalreporter.write_line(
            f"onnx backend corpus: {len(_corpus)} models, {counts['quantized']} quantized, "
            f"{counts['refused']} refused (exit 2, one line), {counts['failing']} failing"
        )


def calib_arrays(n: int = 8, name: str = "x", dtype=np.float32) -> dict[str, np.ndarray]:
    """``n`` samples for ``tiny.conv_chain()`` (input ``x`` [1, 3, 16, 16]), as a .npz holds them."""
    return {name: np.random.default_rng(0).standard_normal((n, 1, 3, 16, 16)).astype(dtype)}


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(tiny.conv_chain(), str(path))
    return path


@pytest.fixture
def calib_npz(tmp_path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, **calib_arrays())
    return path


def in_process(capsys):
    """Runs ``qonnx.cli.main`` in this process and returns rc, stdout and stderr, as ``run_qonnx``."""
    from qonnx import cli

    def run(*args) -> Result:
        capsys.readouterr()
        rc = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return run


@pytest.fixture
def inproc(capsys):
    return in_process(capsys)


def graph_model(nodes, inputs, outputs, initializers=(), opset=13) -> onnx.ModelProto:
    """A checked one-graph model of ``nodes`` (default domain at ``opset``, IR version 8)."""
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def value_info(name, shape, dtype=onnx.TensorProto.FLOAT):
    return onnx.helper.make_tensor_value_info(name, dtype, shape)
