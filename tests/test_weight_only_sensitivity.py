"""INT4 weight-only sensitivity by layer group (``qonnx analyze --precision int4``)."""

import json

import numpy as np
import onnx
import pytest
from conftest import in_process

from qonnx.models import llm, lm_eval, tiny

needs_export = pytest.mark.skipif(not llm.available(), reason="the tiny LLaMA needs the export extra (torch, transformers...)")


# The weight given outliers, and the weight and bias of the layer that makes its input: zeroing
# that input's channel makes the outlier rows contribute nothing in float.
_OUTLIER_LAYERS = {"ffn2": ("W2", "W1", "b1"), "o_proj": ("Wo", "Wv", "bv")}


def _block_with_outliers(path, layer: str | None, seed: int = 0):
    """The tiny encoder layer, wide enough for blocks of 32 (K = 64 and 128), with one layer's weight
    given an outlier in every block of 32 along K, 40x its largest value, on an input channel that is
    zero (the producing layer's column and bias zeroed; for o_proj, V's channel, which the attention
    carries to the same channel of the context). The float function keeps its scale, while round to
    nearest sets the block's 31 other weights to a step of 40x the largest one: INT4 wrecks the layer."""
    model = tiny.transformer_block(seed=seed, width=64)
    if layer is not None:
        arrays = {t.name: onnx.numpy_helper.to_array(t).copy() for t in model.graph.initializer}
        weight, producer, bias = _OUTLIER_LAYERS[layer]
        rows = np.arange(0, arrays[weight].shape[0], 32)
        arrays[producer][:, rows] = 0
        arrays[bias][rows] = 0
        arrays[weight][rows, :] = 40 * np.abs(arrays[weight]).max()
        for tensor in model.graph.initializer:
            if tensor.name in (weight, producer, bias):
                tensor.CopyFrom(onnx.numpy_helper.from_array(arrays[tensor.name], tensor.name))
    onnx.save(model, path)
    return path


def _feeds(path, count: int = 3):
    rng = np.random.default_rng(5)
    return np.savez(path, x=rng.standard_normal((count, 1, 8, 64)).astype(np.float32)) or path


@pytest.mark.parametrize(
    "layer, worst, members",
    [("ffn2", "residual:residual2", ["ffn1", "ffn2"]), ("o_proj", "residual:residual1", ["q_proj", "k_proj", "v_proj", "o_proj"])],
)
def test_the_group_holding_an_outlier_heavy_layer_ranks_first(tmp_path, capsys, layer, worst, members):
    model = _block_with_outliers(tmp_path / "block.onnx", layer)
    calib = _feeds(tmp_path / "calib.npz")
    report = tmp_path / "sens.json"
    result = in_process(capsys)("analyze", model, "--precision", "int4", "--calib", calib, "--eval", calib, "--report", report)
    assert result.rc == 0, result.err
    found = json.loads(report.read_text())["weight_only_sensitivity"]
    # Two residual branches, the attention's (its four projections; the score and context MatMuls
    # read no constant and are refused) and the feed-forward's, both measured: no logits, so SQNR.
    assert found["metric"] == "sqnr_db" and found["output"] == "y"
    assert sorted(g["name"] for g in found["groups"]) == ["residual:residual1", "residual:residual2"]
    assert found["groups"][0]["name"] == worst and found["groups"][0]["nodes"] == members
    # "Ranks first" by a margin, not by noise: the outliers cost at least 6 dB more than the other branch.
    assert found["groups"][1]["sqnr_db"] - found["groups"][0]["sqnr_db"] > 6, found["groups"]
    assert found["whole_plan"]["nodes"] == 6 and found["evaluations"] == 3
    assert found["whole_plan"]["sqnr_db"] <= found["groups"][0]["sqnr_db"] + 0.5  # the whole plan holds the worst branch's error
    assert "SQNR dB" in result.out and worst in result.out


def test_a_model_without_weight_only_layers_has_nothing_to_score(tmp_path, capsys):
    """Conv weights are not stored in blocks (onnxruntime has no block-quantized Conv)."""
    model = tmp_path / "res.onnx"
    onnx.save(tiny.residual_convs(channels=32), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((2, 1, 3, 16, 16)).astype(np.float32))
    report = tmp_path / "sens.json"
    result = in_process(capsys)("analyze", model, "--precision", "int4", "--calib", calib, "--eval", calib, "--report", report)
    assert result.rc == 0, result.err
    assert "weight_only_sensitivity" not in json.loads(report.read_text())
    assert "no node to score" in result.out


def test_analyze_refuses_a_precision_without_sensitivity(tmp_path, capsys):
    model = _block_with_outliers(tmp_path / "block.onnx", None)
    result = in_process(capsys)("analyze", model, "--precision", "fp16", "--calib", _feeds(tmp_path / "calib.npz"))
    assert result.rc == 2 and "INT8 and INT4" in result.err


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return llm.tiny_llama(tmp_path_factory.mktemp("tiny") / "model.onnx")


@needs_export
def test_llm_groups_are_the_decoder_sublayers_the_embedding_and_the_lm_head(tiny_llama, tmp_path, capsys):
    """Every MatMul with a weight and the embedding in exactly one group: each decoder layer's
    attention (q, k, v, o) and MLP (gate, up, down) branches, the embedding table and the tied
    lm_head alone; the figures of a language model (perplexity, top-1, KL), worst first by KL."""
    rng = np.random.default_rng(3)
    calib = llm.write_windows_npz(tmp_path / "calib.npz", rng.integers(0, 256, size=(3, 32), dtype=np.int64))
    report, page = tmp_path / "sens.json", tmp_path / "sens.html"
    result = in_process(capsys)("analyze", tiny_llama, "--precision", "int4", "--calib", calib, "--eval", calib, "--report", report, "--html", page)
    assert result.rc == 0, result.err
    found = json.loads(report.read_text())["weight_only_sensitivity"]
    assert found["metric"] == "kl_divergence" and found["output"] == "logits"
    sizes = sorted(len(g["nodes"]) for g in found["groups"])
    assert sizes == [1, 1, 3, 3, 4, 4]  # embedding, lm_head; two MLPs; two attention sublayers
    nodes = [n for g in found["groups"] for n in g["nodes"]]
    assert len(nodes) == len(set(nodes)) == found["whole_plan"]["nodes"] == 2 * 7 + 2
    kl = [g["kl_divergence"] for g in found["groups"]]
    assert kl == sorted(kl, reverse=True) and all(k >= 0 for k in kl)
    assert all(g["perplexity"] > 0 and 0 <= g["next_token_agreement"] <= 1 for g in found["groups"])
    assert found["reference_perplexity"] > 0
    assert "perplexity" in result.out and "KL" in result.out and "all together" in result.out
    # The page in headless Chromium: one bar per group drawn, on the screen as well as in the DOM.
    from test_report_html import Page, browse, check_screenshot

    from qonnx import report_html

    dom, shot = browse(page, tmp_path, 1400)
    parsed = Page(dom)
    assert "weight-only-sensitivity-bars" in parsed.ids() and "layer-sensitivity" not in parsed.ids()
    assert len(parsed.find("g", "bar-group")) == len(found["groups"])
    check_screenshot(shot, {report_html._GLOBAL_COLOR: 300})


@needs_export
def test_a_group_scores_as_the_model_quantized_with_only_that_group(tiny_llama, tmp_path, capsys):
    """A group's figures are those of ``qonnx quantize --precision int4`` with every other layer
    excluded, scored by ``lm_eval.score`` on the same windows (tolerance: the report's rounding,
    4 decimals of perplexity, 6 of KL and agreement)."""
    windows = np.random.default_rng(4).integers(0, 256, size=(2, 32), dtype=np.int64)
    calib = llm.write_windows_npz(tmp_path / "calib.npz", windows)
    report = tmp_path / "sens.json"
    run = in_process(capsys)
    assert run("analyze", tiny_llama, "--precision", "int4", "--calib", calib, "--eval", calib, "--report", report, "-q").rc == 0
    found = json.loads(report.read_text())["weight_only_sensitivity"]
    group = next(g for g in found["groups"] if len(g["nodes"]) == 3)  # an MLP
    others = [n for g in found["groups"] if g is not group for n in g["nodes"]]
    out = tmp_path / "only.onnx"
    excludes = [arg for name in others for arg in ("--exclude", name)]
    assert run("quantize", tiny_llama, "-o", out, "--precision", "int4", "--no-eval", *excludes).rc == 0
    expected = lm_eval.score(out, windows, reference=tiny_llama)
    assert group["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-4)
    assert group["kl_divergence"] == pytest.approx(expected["kl_divergence"], rel=1e-3, abs=1e-6)
    assert group["next_token_agreement"] == pytest.approx(expected["top1_agreement"], abs=1e-6)
    assert found["reference_perplexity"] == pytest.approx(expected["reference_perplexity"], rel=1e-4)
