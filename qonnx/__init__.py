"""qonnx: quantize ONNX models to INT8 / FP16 / BF16 and keep them accurate.

The Python API mirrors the CLI::

    import qonnx
    result = qonnx.quantize("model.onnx", "model.int8.onnx", calib="images/", size=(320, 320))
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

from qonnx.errors import QonnxError, UserError

__version__ = "0.1.0"
__all__ = ["QonnxError", "UserError", "quantize", "__version__"]


def quantize(*args, **kwargs):
    """Quantize a model; see :func:`qonnx.api.quantize`."""
    from qonnx.api import quantize as _quantize

    return _quantize(*args, **kwargs)
