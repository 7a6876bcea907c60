"""qonnx: quantize ONNX models to INT8 / FP16 / BF16 and keep them accurate.

The Python API takes the same typed config as the command line and recipe files::

    import qonnx
    config = qonnx.QuantizeConfig(nodes_to_exclude=("head/.*",), calibration=qonnx.CalibrationConfig(method="entropy"))
    result = qonnx.quantize("model.onnx", "model.int8.onnx", config=config, calib="samples.npz", report="report.json")
    print(result.report["fidelity"])
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("onnxruntime") is None:
    raise ImportError(
        "qonnx needs onnxruntime, which is not installed. Install one of the two extras: "
        "pip install 'qonnx[cpu]' (onnxruntime) or pip install 'qonnx[gpu]' (onnxruntime-gpu); "
        "never both in one environment."
    )

from qonnx.config import CalibrationConfig, EvaluationConfig, QuantizeConfig  # light: no onnx, no onnxruntime
from qonnx.errors import QonnxError, UserError

__version__ = "0.1.0"
__all__ = ["QonnxError", "UserError", "quantize", "QuantizeConfig", "CalibrationConfig", "EvaluationConfig", "QuantizeResult", "__version__"]


def quantize(*args, **kwargs):
    """Quantize a model and return a :class:`qonnx.api.QuantizeResult`; see :func:`qonnx.api.quantize`."""
    from qonnx.api import quantize as _quantize

    return _quantize(*args, **kwargs)


def __getattr__(name: str):
    if name == "QuantizeResult":  # imported on first use: qonnx.api loads onnx-ir, numpy and onnxruntime
        from qonnx.api import QuantizeResult

        return QuantizeResult
    raise AttributeError(f"module 'qonnx' has no attribute {name!r}")
