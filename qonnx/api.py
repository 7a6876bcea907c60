"""The Python API: build the typed config, hand it with the job to the flow, return the result.

Holds no graph logic: everything that rewrites or measures the model is a pass, run by
``qonnx.flow.run``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qonnx.calib.sources import ImagePreprocess
from qonnx.config import QuantizeConfig
from qonnx.flow import Data, Job, QuantizeResult, run, split_holdout
from qonnx.passes.evaluate import fidelity as evaluate_fidelity

__all__ = ["QuantizeResult", "quantize", "evaluate_fidelity", "split_holdout"]


def quantize(
    model: str | os.PathLike,
    output: str | os.PathLike,
    calib: Data | None = None,
    *,
    config: QuantizeConfig | None = None,
    eval_data: Data | None = None,
    preprocess: ImagePreprocess | None = None,
    report: str | os.PathLike | None = None,
    html: str | os.PathLike | None = None,
    progress: bool = False,
    uncalibrated: bool = False,
    **options: Any,
) -> QuantizeResult:
    """Quantize ``model`` into ``output`` as ``config`` says, and return the report (also written to
    ``report`` as JSON, and to ``html`` as a self-contained page: ``qonnx.report_html``).

    ``config``: a :class:`qonnx.config.QuantizeConfig` (default: static INT8 for the CPU). The older
    keyword form, ``quantize(model, output, calib, precision="fp16", method="entropy", latency=True)``,
    builds the config from the keywords (its fields, plus ``method``, ``percentile``,
    ``batch_size``, ``calib_memory``, ``ranges``, ``save_ranges``, ``latency`` and ``sensitivity``)
    and runs the same way; giving both is an error.

    ``calib`` and ``eval_data``: a .npz file, a folder of .npz files or images (read with
    ``preprocess``), a Source, or an iterable of feed dicts. Without ``eval_data`` the last quarter
    of ``calib`` is held out for the fidelity figures and not used for calibration.

    The calibration options of the config fill the options the pipeline text leaves out of its
    ``calibrate`` pass; ``save_ranges`` writes the table that pass used.

    Every argument is checked (UserError) before any work. Outputs appear only when everything has
    succeeded: the model is measured (the ``evaluate``, ``sensitivity`` and ``latency`` passes) before
    anything is written, then saved atomically, then the range table and the reports are written;
    after a failure none of them is left behind.

    ``reduce_range`` None leaves the choice to the target for this machine (``cpu``: Conv and Gemm
    weights in 7 bits where onnxruntime's U8S8 kernels saturate, on x86 CPUs without VNNI; see
    ``qonnx.host`` and ``Target.seven_bit_ops_without_vnni``).

    ``precision`` "fp16" or "bf16" converts instead of quantizing (target ``cuda`` unless named):
    ``calib`` is then optional (its ranges, when given, are the evidence for FP32 islands) and
    ``io_types`` set to the precision makes the graph's inputs and outputs 16-bit too.
    """
    if options:
        if config is not None:
            raise TypeError("quantize() takes either config or keyword options, not both")
        config = QuantizeConfig.from_keywords(**options)
    elif config is None:
        config = QuantizeConfig()
    elif not isinstance(config, QuantizeConfig):
        raise TypeError(f"config must be a QuantizeConfig, not {type(config).__name__}")
    job = Job(
        Path(model), Path(output), None if report is None else Path(report), calib, eval_data, preprocess, progress, uncalibrated,
        html=None if html is None else Path(html),
    )
    return run(config, job)
