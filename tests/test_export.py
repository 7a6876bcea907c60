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


@pytest.mark.skipif(not export.available(), reason="exporting needs torch, transformers and tokenizers")
def test_normalize_keeps_the_exported_models_the_same_function(photos):
    # As for the other kit models: float32 rounding only, 60 dB pooled SQNR or better.
    from qonnx import ir as qir
    from qonnx.api import evaluate_fidelity
    from qonnx.calib.sources import ImageFolderSource, ListSource, input_specs
    from qonnx.models.data import sentences
    from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline

    cases = [
        (export.export_efficientnet_lite0(), lambda m: ImageFolderSource(photos[1], input_specs(m), export.EFFICIENTNET_PREPROCESS)),
        (export.export_minilm(), lambda m: ListSource(export.sentence_feeds(sentences(limit=8), seq_len=32), input_specs(m))),
    ]
    for path, make_source in cases:
        model = qir.load(path)
        source = make_source(model)
        context = Context(calib=source)
        run_pipeline(model, build(parse_pipeline("normalize"), context), context)
        fidelity = evaluate_fidelity(path, model, source)
        assert all(m["sqnr_db"] > 60 for m in fidelity["outputs"].values()), (path, fidelity)
