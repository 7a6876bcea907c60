"""Every kit model converts to FP16 (and BF16), loads in onnxruntime and keeps its outputs.

One held-out photo per model (``text.png`` for the text models: on a photo without text the
PP-OCR detector answers ~1e-13 everywhere, and an SQNR against nothing is noise) and one sentence
for MiniLM, converted without calibration data (islands from constants and op kinds), so that
the whole file stays fast. SQNR floors sit a few dB under what these conversions measured on the
CPU provider (YOLOv8n 69, PP-OCR cls 48, PP-OCRv4 rec 43, EfficientNet-Lite0 44, MiniLM 58 dB
pooled over the held-out data). PP-OCRv4 det measures 33.5 dB: its activations and weights
stored in FP16 cost it that much whatever is kept FP32 short of most of the network (see
``float-sensitivity``), below the 40 dB aim; its floor guards against regressions only.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from qonnx import ir as qir
from qonnx import metrics, runtime
from qonnx.calib.sources import ImageFolderSource, input_specs
from qonnx.errors import UserError
from qonnx.models import export, kit
from qonnx.passes.emulate_float import emulated
from qonnx.pipeline import Context, build, default_pipeline, parse_pipeline, run_pipeline

pytestmark = pytest.mark.kit

SQNR_FLOOR_DB = {"yolov8n": 60.0, "ppocr-cls": 42.0, "ppocr-rec": 36.0, "ppocr-det": 28.0, "efficientnet-lite0": 38.0, "minilm": 50.0}
TEXT_MODELS = ("ppocr-det", "ppocr-cls", "ppocr-rec")


def _exported(export_function):
    """The cached export, or a skip where it was never made and torch is not installed."""
    try:
        return export_function()
    except UserError as exc:
        pytest.skip(str(exc))


def _model_and_feed(name, photos):
    if name == "minilm":
        pytest.importorskip("tokenizers")
        path = _exported(export.export_minilm)
        from qonnx.models.data import sentences

        return path, export.sentence_feeds(sentences(limit=1))[0]
    path = _exported(export.export_efficientnet_lite0) if name == "efficientnet-lite0" else kit.fetch(name)
    preprocess = export.EFFICIENTNET_PREPROCESS if name == "efficientnet-lite0" else kit.KIT[name].preprocess
    model = qir.load(path)
    source = ImageFolderSource(photos[1], input_specs(model), preprocess)
    index = next((i for i, p in enumerate(source.files) if p.name == "text.png"), 0) if name in TEXT_MODELS else 0
    return path, source[index]


def _convert(path, precision):
    model = qir.load(path)
    context = Context(target="cuda", precision=precision)
    run_pipeline(model, build(parse_pipeline(default_pipeline(precision, calibrated=False)), context), context)
    return model


def _sqnr(reference, test):
    return min(metrics.sqnr_db(reference[k], test[k]) for k in reference)


@pytest.mark.parametrize("name", list(SQNR_FLOOR_DB))
def test_kit_model_converts_to_fp16_loads_and_keeps_its_outputs(name, photos, tmp_path):
    path, feed = _model_and_feed(name, photos)
    converted = _convert(path, "fp16")
    saved = qir.save(converted, tmp_path / "fp16.onnx")
    # FP16 weights are half; graph structure and the few FP32-island constants come on top.
    assert qir.file_size(saved) <= 0.51 * qir.file_size(path)
    reference = runtime.session(path).run(feed)
    got = runtime.session(converted).run(feed)  # loads (the anchor's YOLOv8n does not) and runs
    assert all(got[k].dtype == np.float32 for k in got)  # graph I/O kept FP32
    assert _sqnr(reference, got) >= SQNR_FLOOR_DB[name]
    # The CPU provider computes several FP16 ops in FP32: the emulation rounds every stored
    # tensor as a GPU would, and must agree with the floor as well.
    assert _sqnr(reference, runtime.session(emulated(converted)).run(feed)) >= SQNR_FLOOR_DB[name] - 3


def test_yolov8n_bf16_passes_the_checker_and_its_emulation_runs(photos):
    import onnx

    path, feed = _model_and_feed("yolov8n", photos)
    converted = _convert(path, "bf16")
    onnx.checker.check_model(ir.to_proto(converted), full_check=True)
    reference = runtime.session(path).run(feed)
    # BF16 keeps 8 significant bits: ~50 dB per rounding; measured 57 dB on this model.
    assert _sqnr(reference, runtime.session(emulated(converted)).run(feed)) >= 45
