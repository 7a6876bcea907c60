"""Every documented failure of the ``qonnx`` command, run as the real command, one row per bad input.

Each row builds its bad input in a folder of its own (a tiny model, calibration data, whatever the
row needs), runs ``python -m qonnx ...`` there in a subprocess, and checks what the README promises
of a failure:

* the exit code: 2 for bad input or usage, 1 for an internal error;
* exactly one line on stderr (after the one-line usage when argparse cannot read the command line)
  (``qonnx: error: ...`` or ``qonnx: internal error: ... (run with
  --debug for details)``) that names the offending thing, nothing on stdout, no traceback unless
  ``--debug``;
* nothing written: every file and folder in the row's folder is what it was before, by sha256 of
  each file's bytes. No output model, no report, no range table, no temporary file, not even the
  output folder (which the command would have had to make), and the input model and data unchanged.
  The command runs in that folder, so a file written into the working directory would show too.

The rows run concurrently (subprocesses; the checks are the same as one by one) and only the rows
pytest selected run. Rows marked ``was 1``, ``was 0`` or ``left output`` are regressions: those inputs
used to end in an internal error, to succeed doing nothing, or to leave the output model behind.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from qonnx.calib.ranges import RangeTable, TensorRange
from qonnx.models import tiny

from conftest import Result, calib_arrays, record_bad_input, run_python


@dataclasses.dataclass(frozen=True)
class Workspace:
    """A row's folder: ``model.onnx`` (tiny.conv_chain), ``calib.npz`` (8 samples); outputs go to ``out/``."""

    root: Path
    model: str = "model.onnx"
    calib: str = "calib.npz"
    output: str = "out/q.onnx"
    report: str = "out/report.json"

    def file(self, name: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def quantize(self, *extra, model: str | None = None, calib: str | None = "calib.npz") -> list:
        """``quantize MODEL -o out/q.onnx --report out/report.json [--calib DATA] EXTRA``."""
        args = ["quantize", model or self.model, "-o", self.output, "--report", self.report]
        return args + (["--calib", calib] if calib is not None else []) + list(extra)


@dataclasses.dataclass(frozen=True)
class Bad:
    name: str
    args: Callable[[Workspace], list]  # builds the row's files, returns the command's arguments
    match: str  # in the error line
    rc: int = 2
    program: str | None = None  # run ``python -c PROGRAM ARGS`` instead of ``python -m qonnx ARGS``
    traceback: bool = False  # --debug: a traceback before the error line


# --------------------------------------------------------------------------------------------
# Building the bad inputs


def _save(ws: Workspace, name: str, proto: onnx.ModelProto) -> str:
    ws.file(name).write_bytes(proto.SerializeToString())
    return name


def _npz(ws: Workspace, name: str, **arrays) -> str:
    np.savez(ws.file(name), **arrays)
    return name


def _npy(ws: Workspace, name: str) -> str:
    """One .npy array (np.save) under a .npz name."""
    with open(ws.file(name), "wb") as f:
        np.save(f, calib_arrays()["x"])
    return name


def _write(ws: Workspace, name: str, content: bytes) -> str:
    ws.file(name).write_bytes(content)
    return name


def _folder(ws: Workspace, name: str) -> str:
    (ws.root / name).mkdir()
    return name


def _with_node(edit: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
    proto = tiny.conv_chain()
    edit(proto)
    return proto


def _undefined_input(proto):
    proto.graph.node[0].input[0] = "nothere"


def _unknown_op(proto):
    proto.graph.node[1].op_type = "NoSuchOp"


def _with_value(value: float, sample: int) -> np.ndarray:
    """calib_arrays()["x"] with ``value`` at the first element of ``sample``."""
    x = calib_arrays()["x"]
    x[sample, 0, 0, 0, 0] = value
    return x


def _unknown_attribute(proto):
    proto.graph.node[1].attribute.append(helper.make_attribute("bogus", 1))


def _future_ir_version(proto):
    proto.ir_version = onnx.IR_VERSION + 1


def _no_ir_version(proto):
    proto.ir_version = 0


def _unreleased_opset(proto):
    proto.opset_import[0].version = 99


def _external(location: str) -> onnx.ModelProto:
    """tiny.conv_chain with W0 stored as external data at ``location``."""
    proto = tiny.conv_chain()
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return proto


def _strict_conv() -> onnx.ModelProto:
    """x[n, 3, h, w] → Conv 3x3 without padding. onnxruntime refuses a 2x2 image when the model is
    evaluated; calibration (which runs a tapped copy of the graph) gets through."""
    w = onnx.numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")],
        "strict",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2, "h2", "w2"])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


def _strict_convs() -> onnx.ModelProto:
    """x[n, 3, h, w] → Conv 3x3 without padding → Relu → Conv 1x1: calibration already fails on a 2x2 image."""
    w = onnx.numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "W")
    w2 = onnx.numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "W2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2"),
        ],
        "strict",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [w, w2],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


def _held_out(ws: Workspace, second: dict[str, np.ndarray]) -> str:
    """A folder of two .npz feeds: the first fits the model (so the folder opens), the second does
    not, which only evaluation reads: the failure comes after the model was quantized and saved."""
    rng = np.random.default_rng(1)
    _npz(ws, "held_out/a.npz", x=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    _npz(ws, "held_out/b.npz", **second)
    return "held_out"


def _float64_feed() -> dict[str, np.ndarray]:
    return {"x": np.zeros((1, 3, 16, 16), np.float64)}


def _prior_outputs(ws: Workspace) -> list:
    """An earlier run's output model and report in out/: a failed run must leave them as they were."""
    _save(ws, ws.output, tiny.conv_chain(seed=3))
    _write(ws, ws.report, b'{"schema": "an earlier report"}\n')
    return ws.quantize("--eval", _held_out(ws, _float64_feed()))


def _images(ws: Workspace, names: list[str], broken: bool = False) -> str:
    for name in names:
        path = ws.file(f"photos/{name}")
        if broken:
            path.write_bytes(b"these bytes are no image\n")
        else:
            Image.new("RGB", (24, 20), (200, 120, 40)).save(path)
    return "photos"


def _table_for_another_model(ws: Workspace) -> str:
    RangeTable({"x": TensorRange(-1.0, 1.0)}, model_hash="0" * 64, method="minmax").save(ws.file("other.json"))
    return "other.json"


# A pass registered through the public registry whose ``call`` has a genuine bug (it reads a key it
# never wrote), run through ``qonnx.cli.main``: what an internal error looks like to a user.
# A full disk, as a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored so that writes fail with EFBIG):
# the output model (more than 3000 bytes) cannot be written. The pipeline has no verify pass, whose
# fusion check writes a temporary model through onnxruntime first.
_SMALL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
from qonnx import cli
sys.exit(cli.main(sys.argv[1:]))
"""

_BUGGY_PASS = """
import sys

import onnx_ir as ir

from qonnx import cli, pipeline


@pipeline.register
class DoubleScales(pipeline.Pass):
    name = "double-scales"
    summary = "doubles a table of Conv scales (and reads it before filling it)"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        scales: dict[str, float] = {}
        for node in model.graph:
            if node.op_type == "Conv":
                scales[node.name] = 2 * scales[node.inputs[1].name]
        return ir.passes.PassResult(model, False)


sys.exit(cli.main(sys.argv[1:]))
"""


# --------------------------------------------------------------------------------------------
# The rows

BAD: list[Bad] = [
    # The model
    Bad("missing-model", lambda ws: ws.quantize(model="nope.onnx"), "model file not found: nope.onnx"),
    Bad("folder-as-model", lambda ws: ws.quantize(model=_folder(ws, "folder")), "folder is a directory, not an ONNX model file"),
    Bad("text-as-model", lambda ws: ws.quantize(model=_write(ws, "notes.onnx", b"not a model\n")), "notes.onnx is not an ONNX model"),
    Bad("empty-model", lambda ws: ws.quantize(model=_write(ws, "empty.onnx", b"")), "empty.onnx is not an ONNX model"),
    Bad("external-data-outside-folder", lambda ws: ws.quantize(model=_save(ws, "ext.onnx", _external("../secret.bin"))), "points outside the model's folder"),
    Bad("external-data-missing", lambda ws: ws.quantize(model=_save(ws, "ext.onnx", _external("weights.bin"))), "external data file 'weights.bin' is missing"),
    # was 1: a model onnxruntime cannot load failed deep in the pipeline as an internal error
    Bad("undefined-input", lambda ws: ws.quantize(model=_save(ws, "bad.onnx", _with_node(_undefined_input))), "not a model onnxruntime can load: Invalid model. Node input 'nothere'"),
    Bad("fails-the-onnx-checker", lambda ws: ws.quantize(model=_save(ws, "bad.onnx", _with_node(_unknown_attribute))), "Unrecognized attribute: bogus for operator Relu"),
    Bad("unknown-operator", lambda ws: ws.quantize(model=_save(ws, "bad.onnx", _with_node(_unknown_op))), "No Op registered for NoSuchOp"),
    Bad("unreleased-opset", lambda ws: ws.quantize(model=_save(ws, "bad.onnx", _with_node(_unreleased_opset))), "uses ai.onnx opset 99; the installed onnx"),  # was: onnxruntime's "under development"
    Bad("ir-version-too-new", lambda ws: ws.quantize(model=_save(ws, "bad.onnx", _with_node(_future_ir_version))), f"has IR version {onnx.IR_VERSION + 1}, newer than the installed onnx {onnx.__version__} reads"),
    Bad("ir-version-missing", lambda ws: ws.quantize(model=_save(ws, "bad.onnx", _with_node(_no_ir_version))), "bad.onnx has no IR version (ir_version 0)"),  # was 1: found by fuzzing
    Bad("external-data-truncated", lambda ws: ws.quantize(model=_save(ws, "ext.onnx", _external("weights.bin")) + _write(ws, "weights.bin", b"\0" * 8)[:0]), "which has only 8: the file is truncated"),
    # Calibration data
    Bad("no-calibration-data", lambda ws: ws.quantize(calib=None), "give --calib DATA (or --ranges FILE)"),
    Bad("calibration-data-missing", lambda ws: ws.quantize(calib="nope.npz"), "calibration data not found: nope.npz"),
    Bad("calibration-data-not-npz", lambda ws: ws.quantize(calib=_write(ws, "data.txt", b"1 2 3\n")), "must be a .npz file or a folder"),
    Bad("npz-not-a-zip", lambda ws: ws.quantize(calib=_write(ws, "data.npz", b"not a zip\n")), "data.npz: not a readable .npz file"),
    Bad("npy-renamed-npz", lambda ws: ws.quantize(calib=_npy(ws, "arrays.npz")), "arrays.npz: not a readable .npz file (not a zip archive"),  # was 1
    Bad("npz-needs-pickle", lambda ws: ws.quantize(calib=_npz(ws, "obj.npz", x=np.array([{"a": 1}], dtype=object))), "cannot read without pickle"),
    Bad("npz-scalar", lambda ws: ws.quantize(calib=_npz(ws, "scalar.npz", x=np.float32(1))), "no sample axis"),
    Bad("inputs-named-differently", lambda ws: ws.quantize(calib=_npz(ws, "bad.npz", **calib_arrays(name="input"))), "missing x; unexpected input (the model expects inputs: x)"),
    Bad("wrong-dtype", lambda ws: ws.quantize(calib=_npz(ws, "bad.npz", **calib_arrays(dtype=np.float64))), "input 'x' has dtype float64, the model expects float32"),
    Bad("nan-in-calibration", lambda ws: ws.quantize(calib=_npz(ws, "nan.npz", x=_with_value(np.nan, 5))), "nan.npz, sample 5: input 'x' holds 1 NaN values (first at index [0, 0, 0, 0])"),  # was 0
    Bad("nan-in-evaluation", lambda ws: ws.quantize("--eval", _npz(ws, "held.npz", x=_with_value(np.nan, 2))), "held.npz, sample 2: input 'x' holds 1 NaN values"),
    Bad("images-and-npz-in-one-folder", lambda ws: ws.quantize(calib=_images(ws, ["a.png", "b.png"]) if _npz(ws, "photos/stray.npz", **calib_arrays()) else ""), "photos holds both .npz files (1: stray.npz) and images (2: a.png, b.png)"),  # was 0
    Bad("wrong-rank", lambda ws: ws.quantize(calib=_npz(ws, "bad.npz", x=np.zeros((8, 16, 16), np.float32))), "so 8 samples are [8, 1, 3, 16, 16] (stacked) or [8, 3, 16, 16] (one row per sample, batch 1)"),
    Bad("wrong-static-dimension", lambda ws: ws.quantize(calib=_npz(ws, "bad.npz", x=np.zeros((8, 1, 3, 8, 8), np.float32))), "bad.npz, sample 0: input 'x' has shape [1, 3, 8, 8], the model expects [1, 3, 16, 16] (axis 2)"),
    Bad("no-samples-in-folder", lambda ws: ws.quantize(calib=_folder(ws, "empty")), "no samples in empty"),
    Bad("no-finite-value", lambda ws: ws.quantize(calib=_npz(ws, "nan.npz", x=np.full((4, 1, 3, 16, 16), np.nan, np.float32))), "nan.npz, sample 0: input 'x' holds 768 NaN values"),
    Bad("shape-the-model-rejects", lambda ws: ws.quantize(model=_save(ws, "strict.onnx", _strict_convs()), calib=_npz(ws, "small.npz", x=np.zeros((4, 1, 3, 2, 2), np.float32))), "calibration sample 0: onnxruntime failed on this input"),
    Bad("image-undecodable", lambda ws: ws.quantize(calib=_images(ws, ["a.png"], broken=True)), "a.png: cannot decode image"),
    Bad("image-size-unknown", lambda ws: ws.quantize(model=_save(ws, "dyn.onnx", tiny.conv_chain(dynamic=True)), calib=_images(ws, ["a.png"])), "dynamic height/width ['n', 3, 'h', 'w']: give --size HxW"),
    Bad("random-calibration-dynamic-model", lambda ws: ws.quantize(model=_save(ws, "dyn.onnx", tiny.conv_chain(dynamic=True)), calib="random"), "--calib random needs static input shapes"),
    # left output: evaluation data that fails its checks once the model is saved
    Bad("eval-wrong-dtype-after-save", lambda ws: ws.quantize("--eval", _held_out(ws, _float64_feed())), "held_out/b.npz: input 'x' has dtype float64"),
    Bad("eval-wrong-names-after-save", lambda ws: ws.quantize("--eval", _held_out(ws, {"input": np.zeros((1, 3, 16, 16), np.float32)})), "held_out/b.npz: missing x; unexpected input"),
    Bad("eval-after-save-bf16", lambda ws: ws.quantize("--precision", "bf16", "--eval", _held_out(ws, _float64_feed())), "held_out/b.npz: input 'x' has dtype float64"),
    Bad("eval-after-save-keeps-earlier-outputs", _prior_outputs, "held_out/b.npz: input 'x' has dtype float64"),
    Bad("eval-shape-the-model-rejects-after-save", lambda ws: ws.quantize(model=_save(ws, "strict.onnx", _strict_conv()), calib=_npz(ws, "small.npz", x=np.zeros((4, 1, 3, 2, 2), np.float32))), "evaluation sample 0: onnxruntime failed on this input"),
    # The pipeline
    Bad("unknown-pass", lambda ws: ws.quantize("--pipeline", "normalize,bogus"), "unknown pass 'bogus'; known passes: auto-policy, calibrate,"),
    Bad("empty-pipeline", lambda ws: ws.quantize("--pipeline", ""), "empty pipeline"),
    Bad("bad-pass-option-value", lambda ws: ws.quantize("--pipeline", "normalize,calibrate(batch_size=x)"), "calibrate(batch_size): 'x' is not a valid int"),
    Bad("pass-before-its-prerequisite", lambda ws: ws.quantize("--pipeline", "normalize,resolve-policy,insert-qdq"), "put calibrate before insert-qdq"),
    # was 0: --dump-after a pass the pipeline does not have dumped nothing and succeeded
    Bad("dump-after-unknown-pass", lambda ws: ws.quantize("--dump-after", "bogus"), "--dump-after bogus: no pass of that name in the pipeline (its passes: inline-functions,"),
    Bad("calibration-option-without-calibrate", lambda ws: ws.quantize("--precision", "fp16", "--method", "entropy", calib=None), "--method: the pipeline has no calibrate pass (give --calib DATA)"),
    # Option values
    Bad("sensitivity-negative", lambda ws: ws.quantize("--sensitivity", "-3"), "--sensitivity: must be 0 or a positive number of samples, not -3"),  # was 1
    Bad("samples-zero", lambda ws: ws.quantize("--samples", "0"), "--samples: must be a positive number"),
    Bad("unknown-executor", lambda ws: ws.quantize("--executor", "spark"), "--executor: unknown executor 'spark': choose serial, local"),
    Bad("workers-zero", lambda ws: ws.quantize("--workers", "0"), "--workers: must be a positive number, not 0"),
    Bad("batch-size-zero", lambda ws: ws.quantize("--batch-size", "0"), "--batch-size: must be a positive number, not 0"),
    Bad("batch-size-on-static-batch", lambda ws: ws.quantize("--batch-size", "4"), "--batch-size 4 needs a dynamic first dimension"),
    Bad("percentile-out-of-range", lambda ws: ws.quantize("--method", "percentile", "--percentile", "120"), "percentile must be in (50, 100], not 120"),
    Bad("memory-budget-unreadable", lambda ws: ws.quantize("--calib-memory", "plenty"), "cannot read 'plenty' as a size"),
    Bad("unknown-method", lambda ws: ws.quantize("--method", "kl"), "--method: 'kl' is not one of minmax, moving-minmax, percentile, entropy, mse"),
    Bad("unknown-precision", lambda ws: ws.quantize("--precision", "fp4"), "--precision: 'fp4' is not one of int8, int4, fp8, fp16, bf16"),
    Bad("size-unreadable", lambda ws: ws.quantize("--size", "320y240"), "expected HxW such as 320x320, got '320y240'"),
    Bad("mean-of-two-numbers", lambda ws: ws.quantize("--mean", "0.5,0.5"), "expected one or three numbers, got '0.5,0.5'"),
    Bad("std-zero", lambda ws: ws.quantize("--std", "0"), "std values must be non-zero"),
    Bad("io-types-with-int8", lambda ws: ws.quantize("--io-types", "fp16"), "--io-types: fp16 applies to precision fp16 or bf16"),
    Bad("io-types-of-another-precision", lambda ws: ws.quantize("--precision", "fp16", "--io-types", "bf16"), "--io-types: bf16 does not go with precision fp16"),
    Bad("output-missing", lambda ws: ["quantize", ws.model, "--calib", ws.calib], "the following arguments are required: -o/--output"),
    Bad("no-command", lambda ws: [], "the following arguments are required: command"),
    # Range tables and policies
    Bad("range-table-missing", lambda ws: ws.quantize("--ranges", "none.json", calib=None), "range table not found: none.json"),
    Bad("range-table-binary", lambda ws: ws.quantize("--ranges", _write(ws, "bin.json", bytes(range(256))), calib=None), "bin.json is not a range table: not JSON"),  # was 1
    Bad("range-table-json-list", lambda ws: ws.quantize("--ranges", _write(ws, "list.json", b"[1, 2]\n"), calib=None), "list.json is not a range table: a JSON list"),  # was 1
    Bad("range-table-incomplete", lambda ws: ws.quantize("--ranges", _write(ws, "part.json", b'{"format": "qonnx.ranges/1"}'), calib=None), "part.json is not a range table: it has no 'ranges' entry"),
    Bad("range-table-of-another-model", lambda ws: ws.quantize("--ranges", _table_for_another_model(ws), calib=None), "range table was made for another model"),
    Bad("policy-file-missing", lambda ws: ws.quantize("--policy", "none.json"), "policy file not found: none.json"),
    Bad("policy-file-binary", lambda ws: ws.quantize("--policy", _write(ws, "policy.json", bytes(range(256)))), "policy.json: not a usable policy file"),
    # Where the outputs go
    Bad("output-is-input", lambda ws: ["quantize", ws.model, "-o", ws.model, "--calib", ws.calib], "refusing to overwrite the input model model.onnx"),
    Bad("output-is-input-other-spelling", lambda ws: ["quantize", ws.model, "-o", _folder(ws, "sub") + "/../model.onnx", "--calib", ws.calib], "refusing to overwrite the input model"),
    Bad("output-is-a-folder", lambda ws: ["quantize", ws.model, "-o", _folder(ws, "taken"), "--calib", ws.calib], "output model taken is a directory"),
    Bad("report-is-input", lambda ws: ["quantize", ws.model, "-o", ws.output, "--report", ws.model, "--calib", ws.calib], "refusing to overwrite the input model model.onnx; choose another report path"),
    Bad("report-is-output", lambda ws: ["quantize", ws.model, "-o", ws.output, "--report", ws.output, "--calib", ws.calib], "the report and the output model would be the same file"),
    Bad("report-folder-is-a-file", lambda ws: ["quantize", ws.model, "-o", ws.output, "--report", _write(ws, "file", b"") + "/r.json", "--calib", ws.calib], "cannot write the report into file: file is not a folder"),
    Bad("save-ranges-to-a-folder", lambda ws: ws.quantize("--save-ranges", _folder(ws, "taken")), "range table taken is a directory"),
    # Inspect
    Bad("inspect-missing-model", lambda ws: ["inspect", "nope.onnx"], "model file not found: nope.onnx"),
    # Internal errors: a real bug in a registered pass
    Bad("disk-full", lambda ws: ws.quantize("--pipeline", "normalize,resolve-policy,calibrate,insert-qdq,finalize"), "qonnx: error: File too large; the outputs of this run were withdrawn", program=_SMALL_DISK),  # was 1
    Bad("internal-error", lambda ws: ws.quantize("--pipeline", "normalize,double-scales"), "qonnx: internal error: KeyError: 'W0' (run with --debug for details)", rc=1, program=_BUGGY_PASS),
    Bad("internal-error-debug", lambda ws: ws.quantize("--pipeline", "normalize,double-scales", "--debug"), "qonnx: internal error: KeyError: 'W0' (run with --debug for details)", rc=1, program=_BUGGY_PASS, traceback=True),
]


# --------------------------------------------------------------------------------------------
# Running them


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: the sha256 of each file's bytes, ``<folder>`` for folders."""
    return {
        path.relative_to(root).as_posix(): "<folder>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


@dataclasses.dataclass
class Run:
    args: list[str]
    result: Result
    before: dict[str, str]
    after: dict[str, str]
    seconds: float


def _workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    onnx.save(tiny.conv_chain(), str(ws.file(ws.model)))
    np.savez(ws.file(ws.calib), **calib_arrays())
    return ws


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Run]:
    """The selected rows, each run once in its own folder; several subprocesses at a time."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and "case" in callspec.params:
            selected.append(callspec.params["case"])
    prepared = []
    for case in selected:
        ws = _workspace(tmp_path_factory.mktemp(case.name))
        args = [str(a) for a in case.args(ws)]
        prepared.append((case, ws, args, _tree(ws.root)))

    def run(entry) -> tuple[str, Run]:
        case, ws, args, before = entry
        head = ["-c", case.program] if case.program else ["-m", "qonnx"]
        started = time.perf_counter()
        result = run_python(*head, *args, cwd=ws.root)
        record_bad_input(case.name)
        return case.name, Run(args, result, before, _tree(ws.root), time.perf_counter() - started)

    workers = min(4, (os.cpu_count() or 2) + 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(run, prepared))


def _changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{'new' if k not in before else 'gone' if k not in after else 'changed'}: {k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def test_every_row_has_its_own_name():
    assert len({case.name for case in BAD}) == len(BAD)


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
def test_a_bad_input_fails_with_one_line_and_leaves_nothing_behind(runs, case):
    run = runs[case.name]
    result, lines = run.result, run.result.err.splitlines()
    where = f"qonnx {' '.join(run.args)} ({run.seconds:.1f} s)\nstderr:\n{result.err}"
    assert result.rc == case.rc, where
    if case.traceback:
        assert "Traceback (most recent call last)" in result.err, where
    else:
        assert "Traceback" not in result.err, where
        # one line; a command line argparse cannot read is preceded by the one-line usage
        usage = lines[:-1] == [lines[0]] and lines[0].startswith("usage: qonnx")
        assert len(lines) == 1 or (len(lines) == 2 and usage), where
    last = lines[-1] if lines else ""
    assert last.startswith("qonnx: error: " if case.rc == 2 else "qonnx: internal error: "), where
    assert case.match in last, where
    assert result.out == "", where
    assert _changes(run.before, run.after) == [], where
