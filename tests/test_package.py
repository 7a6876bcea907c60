"""The package itself: the runtime extras, the console entry point."""

import subprocess
import sys

HIDE_ONNXRUNTIME = """
import importlib.util, sys
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a)
try:
    import qonnx
except ImportError as exc:
    print(exc)
    sys.exit(3)
"""


def test_import_without_onnxruntime_names_both_extras():
    done = subprocess.run([sys.executable, "-c", HIDE_ONNXRUNTIME], capture_output=True, text=True)
    assert done.returncode == 3
    assert "qonnx[cpu]" in done.stdout and "qonnx[gpu]" in done.stdout


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "qonnx", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("qonnx ")
