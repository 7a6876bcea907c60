"""Kit models exported from PyTorch weights; skipped where torch is not installed."""

import numpy as np
import pytest

from qonnx.models import export


def test_mean_pooling_ignores_padding():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], np.float32)
    mask = np.array([[1, 1, 0]], np.int64)
    np.testing.assert_allclose(export.mean_pooled(hidden, mask), [[2.0, 3.0]])


@pytest.mark.skipif(not export.available(), reason="exporting needs torch, transformers and tokenizers")
def test_exports_load_and_match_their_declared_inputs(tmp_path):
    from qonnx import runtime

    eff = runtime.session(export.export_efficientnet_lite0(tmp_path / "eff.onnx"))
    assert eff.input_names == ["images"] and eff.output_names == ["logits"]
    minilm = runtime.session(export.export_minilm(tmp_path / "minilm.onnx"))
    feeds = export.sentence_feeds(["A cat sat on the mat.", "Stocks fell sharply today."], seq_len=16)
    embeddings = [export.mean_pooled(minilm.run(f)["last_hidden_state"], f["attention_mask"]) for f in feeds]
    assert embeddings[0].shape == (1, export.MINILM_HIDDEN_SIZE)
