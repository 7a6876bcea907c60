"""Output paths that are not plain files: a symlink is written through, a FIFO or device is refused.

The atomic rename that protects a half-written output would, aimed at a symlink, replace the link
with a regular file, and aimed at ``/dev/stdout`` (run as root) replace the system's special file.
These run the real command in a subprocess. Special files are made in the test's own folder (a
FIFO), never in ``/dev``: a regression must not be able to damage the machine.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import onnx

from qonnx.models import tiny

from conftest import calib_arrays, record_bad_input, run_qonnx


def _workspace(tmp_path):
    onnx.save(tiny.conv_chain(), str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "calib.npz", **calib_arrays())
    return ["quantize", "model.onnx", "--calib", "calib.npz", "--quiet"]


def test_output_model_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    args = _workspace(tmp_path)
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "q.onnx"
    target.write_bytes(b"an earlier model")
    (tmp_path / "q.onnx").symlink_to("models/q.onnx")
    result = run_qonnx(*args, "-o", "q.onnx", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert (tmp_path / "q.onnx").is_symlink() and os.readlink(tmp_path / "q.onnx") == "models/q.onnx"
    onnx.checker.check_model(onnx.load(str(target)))
    # the temporary file was made beside the target, and nothing else is left there
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["q.onnx"]


def test_report_through_a_dangling_symlink_creates_its_target(tmp_path):
    args = _workspace(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "report.json").symlink_to("reports/latest.json")
    result = run_qonnx(*args, "-o", "q.onnx", "--report", "report.json", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert (tmp_path / "report.json").is_symlink()
    assert json.loads((tmp_path / "reports" / "latest.json").read_text())


def _refused(tmp_path, flag, name):
    args = _workspace(tmp_path)
    result = run_qonnx(*args, "-o", "q.onnx", flag, name, cwd=tmp_path)
    record_bad_input(f"{flag} onto a FIFO")
    assert result.rc == 2, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert "is a FIFO, not a regular file" in result.err, result.err
    return result


def test_report_onto_a_fifo_is_refused_before_any_work(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    _refused(tmp_path, "--report", "pipe")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)
    assert not (tmp_path / "q.onnx").exists()  # refused before the model was written


def test_output_model_through_a_symlink_to_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.onnx").symlink_to("pipe")
    args = _workspace(tmp_path)
    result = run_qonnx(*args, "-o", "link.onnx", cwd=tmp_path)
    record_bad_input("-o through a symlink onto a FIFO")
    assert result.rc == 2 and "is a FIFO, not a regular file" in result.err, result.err
    assert (tmp_path / "link.onnx").is_symlink() and stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)
