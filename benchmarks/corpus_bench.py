"""onnxruntime.quantization beside qonnx on onnx's backend test models (``qonnx.models.backend_corpus``).

For every corpus model, with the same calibration data (the model's own test inputs; two seeded
random samples for ``light``):

* ``ort``: ``onnxruntime.quantization.quantize_static(model, output, reader)`` with its defaults
  (QDQ format, QUInt8 activations, QInt8 weights, per-tensor, MinMax), no pre-processing;
* ``qonnx``: ``qonnx.quantize(model, output, calib)`` with its defaults (static INT8, cpu target).

Each run ends as one of: ``ok`` (it wrote a model that onnxruntime loads and runs on every sample,
with the float model's output shapes), ``refused`` (qonnx only: a UserError, which the command
turns into exit 2 and one line), ``error`` (the quantizer raised), ``no load`` / ``no run`` /
``shapes`` (the written model fails one of those checks). Where both are ``ok`` the worst output
SQNR against the float outputs is listed.

Usage: ``python benchmarks/corpus_bench.py [--out benchmarks/results]``; writes ``corpus.md``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime import quantization as ortq

import qonnx
from qonnx.errors import UserError
from qonnx.models import backend_corpus


class _Reader(ortq.CalibrationDataReader):
    def __init__(self, samples):
        self.samples = iter(samples)

    def get_next(self):
        return next(self.samples, None)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _worst_sqnr(reference, got) -> float:
    worst = float("inf")
    for index in range(len(reference[0])):
        ref = [np.asarray(r[index]) for r in reference]
        if ref[0].dtype.kind != "f":
            continue
        signal = noise = 0.0
        for r, g in zip(ref, (g[index] for g in got)):
            finite = np.isfinite(r)
            signal += float(np.sum(r[finite].astype(np.float64) ** 2))
            noise += float(np.sum((r[finite].astype(np.float64) - g[finite]) ** 2))
        if noise:
            worst = min(worst, 10 * np.log10(signal / noise) if signal else float("-inf"))
    return worst


def _check(entry, output: Path, reference) -> tuple[str, float | None]:
    try:
        session = _session(output)
    except Exception:
        return "no load", None
    try:
        got = [session.run(None, feed) for feed in entry.samples]
    except Exception:
        return "no run", None
    if len(got[0]) != len(reference[0]) or any(np.shape(g) != np.shape(r) for gs, rs in zip(got, reference) for g, r in zip(gs, rs)):
        return "shapes", None
    return "ok", _worst_sqnr(reference, got)


def _ort(entry, folder: Path, reference) -> tuple[str, float | None, str]:
    output = folder / "ort.onnx"
    try:
        ortq.quantize_static(str(entry.model), str(output), _Reader(entry.samples))
    except Exception as exc:
        return "error", None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
    status, db = _check(entry, output, reference)
    return status, db, ""


def _qonnx(entry, folder: Path, reference) -> tuple[str, float | None, str]:
    output = folder / "qonnx.onnx"
    try:
        qonnx.quantize(entry.model, output, str(backend_corpus.write_npz(entry, folder / "calib.npz")))
    except UserError as exc:
        return "refused", None, str(exc).replace(str(entry.model), "model.onnx")[:160]
    except Exception as exc:
        return "error", None, f"{type(exc).__name__}: {exc}"[:160]
    status, db = _check(entry, output, reference)
    return status, db, ""


def _reference(entry):
    if entry.expected is not None:
        return entry.expected
    try:
        session = _session(entry.model)
        return [session.run(None, feed) for feed in entry.samples]
    except Exception:
        return None


def _db(value: float | None) -> str:
    return "" if value is None else "exact" if value == float("inf") else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # quantize_static warns per model
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for entry in backend_corpus.entries():
            folder = Path(tmp) / entry.category / entry.name
            folder.mkdir(parents=True)
            reference = _reference(entry)
            if reference is None:  # no float outputs to compare shapes with
                rows.append((entry.id, ("error", None, "float model does not run"), ("error", None, "float model does not run")))
                continue
            rows.append((entry.id, _qonnx(entry, folder, reference), _ort(entry, folder, reference)))
            print(f"{entry.id}: qonnx {rows[-1][1][0]}, ort {rows[-1][2][0]}", flush=True)
    seconds = time.perf_counter() - started
    counts = {name: collections.Counter(r[i][0] for r in rows) for i, name in ((1, "qonnx"), (2, "ort"))}
    lines = [
        "# onnx backend corpus: qonnx and onnxruntime.quantization",
        "",
        f"`python benchmarks/corpus_bench.py` ({seconds:.0f} s), onnxruntime {ort.__version__}, onnx backend data of onnx {backend_corpus.onnx.__version__};"
        " `ort` is `quantize_static` with its defaults (QDQ), the same calibration data. `ok`: the model was written, loads and runs in"
        " onnxruntime on every sample with the float model's output shapes. SQNR: the worst output's, in dB, against the float outputs.",
        "",
        "| | models | ok | refused (exit 2) | error | no load | no run | shapes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, count in counts.items():
        lines.append(f"| {name} | {len(rows)} | {count['ok']} | {count['refused']} | {count['error']} | {count['no load']} | {count['no run']} | {count['shapes']} |")
    lines += ["", "| model | qonnx | SQNR | ort | SQNR | why (qonnx refusal / ort error) |", "|---|---|---|---|---|---|"]
    for model, (qs, qdb, qwhy), (os_, odb, owhy) in rows:
        why = " / ".join(w for w in (qwhy, owhy) if w).replace("|", "\\|")
        lines.append(f"| {model} | {qs} | {_db(qdb)} | {os_} | {_db(odb)} | {why} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "corpus.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:9]))


if __name__ == "__main__":
    main()
