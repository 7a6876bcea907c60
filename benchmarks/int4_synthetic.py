"""INT4 weight-only on a synthetic decoder-shaped stack: size, latency and output fidelity per setting.

The model (random weights, so the fidelity figures compare settings with one another, not with a
trained model): token ids → embedding (V x H) → ``layers`` blocks of ``h + down(relu(up(h)))``
with ``proj`` (H x H) → tied lm_head ``MatMul(h, Transpose(E))``. SmolLM2-135M's widths by default
(H 576, F 1536), a 8192-token table. Each setting runs ``qonnx quantize --precision int4`` in
process; latency is onnxruntime's median of 20 runs on 2 threads (``qonnx.runtime``), fidelity
the SQNR and cosine of the logits on held-out ids.

    python benchmarks/int4_synthetic.py            # writes benchmarks/results/int4_synthetic.{json,md}
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime

from qonnx.api import quantize
from qonnx.config import QuantizeConfig, WeightOnlyConfig, EvaluationConfig

SETTINGS = [
    ("matmulnbits b32 level0", WeightOnlyConfig(accuracy_level=0)),
    ("matmulnbits b32 level4", WeightOnlyConfig(accuracy_level=4)),
    ("matmulnbits b16 level4", WeightOnlyConfig(block_size=16)),
    ("matmulnbits b64 level4", WeightOnlyConfig(block_size=64)),
    ("matmulnbits b128 level0", WeightOnlyConfig(block_size=128, accuracy_level=0)),
    ("matmulnbits b128 level4", WeightOnlyConfig(block_size=128, accuracy_level=4)),
    ("matmulnbits b32 level4 asym", WeightOnlyConfig(symmetric=False)),
    ("matmulnbits b32 level4 emb8", WeightOnlyConfig(embedding_bits=8)),
    ("qdq b32", WeightOnlyConfig(format="qdq")),
]


def decoder(path: Path, vocab=8192, hidden=576, ffn=1536, layers=4, seq=32, seed=0) -> None:
    rng = np.random.default_rng(seed)
    inits = {"E": (rng.standard_normal((vocab, hidden)) * 0.05).astype(np.float32)}
    nodes = [oh.make_node("Gather", ["E", "ids"], ["h0"], name="embed")]
    h = "h0"
    for i in range(layers):
        inits[f"P{i}"] = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
        inits[f"U{i}"] = (rng.standard_normal((hidden, ffn)) / np.sqrt(hidden)).astype(np.float32)
        inits[f"D{i}"] = (rng.standard_normal((ffn, hidden)) / np.sqrt(ffn) * 0.5).astype(np.float32)
        nodes += [
            oh.make_node("MatMul", [h, f"P{i}"], [f"p{i}"], name=f"proj{i}"),
            oh.make_node("MatMul", [f"p{i}", f"U{i}"], [f"u{i}"], name=f"up{i}"),
            oh.make_node("Relu", [f"u{i}"], [f"r{i}"], name=f"relu{i}"),
            oh.make_node("MatMul", [f"r{i}", f"D{i}"], [f"d{i}"], name=f"down{i}"),
            oh.make_node("Add", [h, f"d{i}"], [f"h{i + 1}"], name=f"residual{i}"),
        ]
        h = f"h{i + 1}"
    nodes += [oh.make_node("Transpose", ["E"], ["Et"], perm=[1, 0], name="tie"), oh.make_node("MatMul", [h, "Et"], ["logits"], name="lm_head")]
    graph = oh.make_graph(
        nodes,
        "decoder",
        [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, seq])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, seq, vocab])],
        [onnx.numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))


def main(out_dir: Path = Path(__file__).parent / "results") -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "decoder.onnx"
        decoder(model)
        ids = Path(tmp) / "ids.npz"
        np.savez(ids, ids=np.random.default_rng(1).integers(0, 8192, (8, 1, 32)))
        for name, options in SETTINGS:
            config = QuantizeConfig(precision="int4", weight_only=options, evaluation=EvaluationConfig(latency=True))
            result = quantize(model, Path(tmp) / "q.onnx", None, config=config, eval_data=str(ids))
            report = result.report
            logits = report["fidelity"]["outputs"]["logits"]
            rows.append(
                {
                    "setting": name,
                    "size_ratio": report["size_ratio"],
                    "sqnr_db": round(logits["sqnr_db"], 2),
                    "cosine": round(logits["cosine"], 5),
                    "fp32_ms": report["latency"]["fp32_ms"],
                    "int4_ms": report["latency"]["quantized_ms"],
                    "speedup": report["latency"]["speedup"],
                }
            )
            print(rows[-1], file=sys.stderr)
    facts = {"onnxruntime": onnxruntime.__version__, "rows": rows}
    (out_dir / "int4_synthetic.json").write_text(json.dumps(facts, indent=2) + "\n")
    lines = [f"onnxruntime {onnxruntime.__version__}, 2 threads, synthetic decoder (random weights; H 576, F 1536, 4 blocks, V 8192, seq 32)", ""]
    lines += ["| setting | size vs FP32 | logits SQNR dB | cosine | FP32 ms | INT4 ms | speed-up |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['size_ratio']:.3f} | {r['sqnr_db']} | {r['cosine']} | {r['fp32_ms']} | {r['int4_ms']} | {r['speedup']} |" for r in rows]
    (out_dir / "int4_synthetic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
