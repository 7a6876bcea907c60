"""onnx's backend test models as a corpus: each quantizes to static INT8 (the default) or is refused.

Every model of ``pytorch-converted``, ``pytorch-operator``, ``simple`` and ``light`` (see
``qonnx.models.backend_corpus``) is quantized in its own folder from a copy of the model, with its
own test inputs as the calibration ``.npz`` (random, seeded, for ``light``), through ``qonnx.quantize``
in this process (about 0.1 s for most). Each one must end one of two ways:

* **quantized**: onnxruntime runs the output model on every sample; every output has the float
  model's shape and dtype, and its SQNR against the float outputs meets the floor below. The float
  outputs are the suite's own ``output_*.pb`` (computed by the exporter, independent of
  onnxruntime), or for ``light`` the input model run in onnxruntime.
* **refused**: a ``UserError``; then the real command, ``python -m qonnx quantize``, is run on the
  same folder in a subprocess and must exit 2 with one error line ``qonnx: error: ...`` on stderr
  (after ``WARNING`` lines only: the upgrade of an old opset is logged first), nothing on stdout,
  no traceback, and leave the folder as it was (no output, no temporary file, the model and data
  unchanged).

Anything else (another exception, wrong shapes, low fidelity) fails the model's test.

Fidelity floors, SQNR = 10·log10(Σ ref² / Σ (ref − out)²) over all samples, pooled:

* 60 dB where nothing was quantized (no DequantizeLinear in the output; the model was only
  normalized: opset upgrade, BatchNorm folding, constant folding). The suite checks its own
  backends at rtol 1e-3, an error of at most 0.1 % of each value, which is 60 dB.
* 30 dB for the single-layer ``pytorch-*`` and ``simple`` models with quantizers: one INT8 Conv or
  Gemm with per-channel weights and a U8 input scale over the sample's range has a rounding
  error near 8-bit resolution (40-53 dB measured); 30 dB, the default verdict floor, leaves
  headroom for a layer whose input range is dominated by one value, while a wrong scale, zero
  point or axis costs far more (below 10 dB).
* 20 dB for the ``light`` classifiers (50 to 120 quantized layers, whose errors add up): the
  error carries at most 1 % of the signal's power.

The SQNR is relative to the output's energy, not its variance, so an output that is constant (the
``light`` classifiers' weights are all one value, so their softmax is a uniform 0.001) is still
measured. Where the float output is all zeros the SQNR is undefined: the quantized output must be
within ``ZERO_ATOL`` of zero. Outputs with NaN or infinities (``test_operator_sqrt`` takes the
root of negative numbers) must have them at the same places, the finite rest meets the floor.
Integer and string outputs must be equal.

Cost: the in-process runs take about 30 s in all (the ``light`` models most of it, two random
samples each); the refusals about 40 subprocesses, four at a time (about 2 s of start-up each).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qonnx
from qonnx.errors import UserError
from qonnx.models import backend_corpus

from conftest import Result, record_corpus, run_qonnx

ENTRIES = list(backend_corpus.entries())

FLOAT_FLOOR_DB = 60.0  # nothing quantized: the suite's own rtol of 1e-3
FLOOR_DB = {"pytorch-converted": 30.0, "pytorch-operator": 30.0, "simple": 30.0, "light": 20.0}
ZERO_ATOL = 1e-6  # a float output of zeros: what float32 rounding leaves of a zero-valued sum


@dataclasses.dataclass
class Outcome:
    status: str  # "quantized", "refused" or "failing"
    detail: str  # the refusal, the failure, or the fidelity of each output
    seconds: float
    command: Result | None = None  # the real command, for a refusal
    changes: list[str] = dataclasses.field(default_factory=list)  # what the real command changed in its folder


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): "<folder>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(reference: list[np.ndarray], got: list[np.ndarray]) -> tuple[list[str], float]:
    """Problems of one output pooled over samples (shape, dtype, NaN places, inequality) and its SQNR."""
    problems, pairs = [], []
    signal = noise = 0.0
    for ref, out in zip(reference, got):
        if ref.shape != out.shape:
            problems.append(f"shape {list(out.shape)}, the float model gives {list(ref.shape)}")
        elif ref.dtype.kind in "UO":  # text: onnxruntime gives objects, the suite's files decode to unicode
            if out.dtype.kind not in "UO" or ref.tolist() != out.tolist():
                problems.append("differs from the float model's text")
        elif ref.dtype != out.dtype:
            problems.append(f"dtype {out.dtype}, the float model gives {ref.dtype}")
        elif ref.dtype.kind != "f":
            if not np.array_equal(ref, out):
                problems.append("differs from the float model's (not a float output: must be equal)")
        else:
            ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
            finite = np.isfinite(ref64)
            if not np.array_equal(np.isfinite(out64), finite) or not np.array_equal(ref64[~finite], out64[~finite], equal_nan=True):
                problems.append("NaN or infinities where the float model has none, or not the same")
            else:
                pairs.append((ref64[finite], out64[finite]))
    # The ratio is free of scale: divided by the largest value, squares near float32's maximum do not overflow.
    peak = max((float(np.max(np.abs(r), initial=0)) for r, _ in pairs), default=0.0) or 1.0
    for r, o in pairs:
        signal += float(np.sum((r / peak) ** 2))
        noise += float(np.sum(((r - o) / peak) ** 2))
    if problems or noise == 0:
        return problems, float("inf")
    if signal == 0:
        worst = max(float(np.max(np.abs(o), initial=0)) for o in got)
        return ([] if worst <= ZERO_ATOL else [f"|output| up to {worst:.3g} where the float model gives zeros"]), float("inf")
    return [], 10 * np.log10(signal / noise)


def _quantize(entry: backend_corpus.Entry, folder: Path) -> Outcome:
    started = time.perf_counter()
    before = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    try:
        qonnx.quantize(folder / "model.onnx", folder / "out" / "q.onnx", str(folder / "calib.npz"))
    except UserError as exc:
        return Outcome("refused", str(exc), time.perf_counter() - started)
    except Exception as exc:  # what the command reports as an internal error, exit 1
        return Outcome("failing", f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest() != before:
        return Outcome("failing", "the input model was changed", seconds)
    output = folder / "out" / "q.onnx"
    try:
        got = [_session(output).run(None, feed) for feed in entry.samples]
    except Exception as exc:
        return Outcome("failing", f"onnxruntime cannot run the output: {exc}", seconds)
    reference = entry.expected if entry.expected is not None else [_session(entry.model).run(None, feed) for feed in entry.samples]
    quantized = any(n.op_type == "DequantizeLinear" for n in onnx.load(str(output)).graph.node)
    floor = FLOOR_DB[entry.category] if quantized else FLOAT_FLOOR_DB
    names = [o.name for o in onnx.load(str(output), load_external_data=False).graph.output]
    if len(names) != len(reference[0]):
        return Outcome("failing", f"{len(names)} outputs, the float model has {len(reference[0])}", seconds)
    report = []
    for index, name in enumerate(names):
        problems, db = _compare([r[index] for r in reference], [g[index] for g in got])
        if not problems and db < floor:
            problems.append(f"SQNR {db:.1f} dB < {floor:.0f} dB")
        if problems:
            return Outcome("failing", f"output {name!r}: {'; '.join(problems)}", seconds)
        report.append(f"{name}: {db:.1f} dB")
    return Outcome("quantized", f"{'INT8' if quantized else 'float'}, floor {floor:.0f} dB; {', '.join(report)}", seconds)


def _command(folder: Path) -> tuple[Result, list[str]]:
    """The real command on the entry's folder: its result and what it changed there."""
    before = _tree(folder)
    result = run_qonnx("quantize", "model.onnx", "-o", "out/q.onnx", "--calib", "calib.npz", cwd=folder)
    after = _tree(folder)
    changes = [f"{'new' if k not in before else 'gone' if k not in after else 'changed'}: {k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return result, changes


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """The selected entries, each quantized in process in its own folder; the refused ones then
    run as the real command, several subprocesses at a time."""
    selected = [item.callspec.params["entry"] for item in request.session.items if item.module is request.module and "entry" in getattr(getattr(item, "callspec", None), "params", {})]
    results, folders = {}, {}
    for entry in selected:
        folder = tmp_path_factory.mktemp(f"{entry.category}-{entry.name}")
        shutil.copyfile(entry.model, folder / "model.onnx")
        backend_corpus.write_npz(entry, folder / "calib.npz")
        shutil.rmtree(folder / "out", ignore_errors=True)
        folders[entry.id] = folder
        results[entry.id] = _quantize(entry, folder)
        shutil.rmtree(folder / "out", ignore_errors=True)  # the command's folder starts without outputs
    refused = [entry.id for entry in selected if results[entry.id].status == "refused"]
    workers = min(4, (os.cpu_count() or 2) + 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for key, (result, changes) in zip(refused, pool.map(lambda key: _command(folders[key]), refused)):
            results[key].command, results[key].changes = result, changes
    for outcome in results.values():
        record_corpus(outcome.status)
    return results


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_a_corpus_model_quantizes_faithfully_or_is_refused_in_one_line(outcomes, entry):
    outcome = outcomes[entry.id]
    assert outcome.status != "failing", f"{entry.id} ({outcome.seconds:.1f} s): {outcome.detail}"
    if outcome.status == "quantized":
        return
    result = outcome.command
    where = f"{entry.id}: refused in process with: {outcome.detail}\nthe command's stderr:\n{result.err}"
    assert result.rc == 2, where
    assert "Traceback" not in result.err, where
    lines = result.err.splitlines()
    # one error line; warnings logged before it (the opset upgrade of an old model says so) are not the error
    assert lines and lines[-1].startswith("qonnx: error: "), where
    assert all(line.startswith("WARNING ") for line in lines[:-1]), where
    assert result.out == "", where
    assert outcome.changes == [], where


def test_the_corpus_has_every_category():
    counts = {c: sum(e.category == c for e in ENTRIES) for c in backend_corpus.CATEGORIES}
    assert all(counts.values()), counts
    assert all(e.samples for e in ENTRIES)
