"""Ctrl-C or SIGTERM in the middle of a run: exit 130 or 143, one line, nothing left behind.

The run is the real command on a model whose calibration takes tens of seconds (a stack of 3x3
convolutions on 512x512 images, 300 hard links of one photo), signalled a few seconds in, after
start-up and well before the end. It must stop promptly and leave the folder as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image


def _slow_model(path):
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (cin, cout) in enumerate([(3, 32), (32, 32), (32, 32), (32, 32)]):
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32), f"W{i}"))
        nodes += [helper.make_node("Conv", [x, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"), helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 512, 512])], [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _default_signals():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGINT, 130, "qonnx: interrupted"), (signal.SIGTERM, 143, "qonnx: terminated")])
def test_a_signal_mid_calibration_exits_with_its_code_and_leaves_nothing(tmp_path, sig, code, line):
    _slow_model(tmp_path / "model.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / "p0000.png")
    for i in range(1, 300):
        os.link(photos / "p0000.png", photos / f"p{i:04d}.png")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    command = [sys.executable, "-m", "qonnx", "quantize", "model.onnx", "-o", "out/q.onnx", "--report", "out/r.json", "--calib", "photos", "--size", "512x512", "--quiet"]
    # The child starts with the default dispositions, as from a terminal: a parent that ignores SIGINT
    # (a background job of a non-interactive shell, some test harnesses) would pass that on, and
    # Python then installs no KeyboardInterrupt handler at all.
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    time.sleep(4)
    assert proc.poll() is None, "the run ended before the signal: the test model is too fast"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [line] and out == "", err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no output, no temporary file, no folder
