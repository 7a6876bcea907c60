"""How much a kit model loses from its Conv/Gemm/MatMul weights alone in INT8 (activations float).

The model is normalized as the pipeline does (constants to initializers, BatchNormalization folded),
then each weighted node's constant weight is rounded to INT8 and back (per output channel,
symmetric: ``qonnx.quant.per_channel_symmetric``), alone and all together, and the output SQNR
against the normalized FP32 model is measured on the held-out data. A model that loses little here
loses its INT8 fidelity in its activations (a wider activation type would help it); one that loses
much, in its weights.

Usage: ``python benchmarks/int8_weight_rounding.py [--models ppocr-det] [--top 10]``
(results in ``benchmarks/results/int8_weight_rounding.md`` and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CASES, environment_facts  # noqa: E402

import qonnx.passes  # noqa: E402,F401  (registers the passes)
from qonnx import metrics, quant, runtime  # noqa: E402
from qonnx import ir as qir  # noqa: E402
from qonnx.calib.sources import open_source  # noqa: E402
from qonnx.ir import atomic_write, load  # noqa: E402
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline  # noqa: E402

_WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0, "MatMul": 1}  # the output-channel axis of the weight (Gemm: transB assumed)


def _weights(model) -> dict[str, tuple[str, int]]:
    """Weighted node -> (its constant weight's initializer name, output-channel axis)."""
    found = {}
    for node in model.graph:
        if node.op_type not in _WEIGHT_AXIS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        weight = node.inputs[1]
        if not qir.is_constant_initializer(weight):
            continue
        axis = _WEIGHT_AXIS[node.op_type]
        if node.op_type == "Gemm" and not node.attributes.get_int("transB", 0):
            axis = 1
        found[node.name] = (weight.name, axis)
    return found


def _rounded(model, names: list[tuple[str, int]]) -> bytes:
    """The model with the weights ``names`` rounded to INT8 and back, serialized."""
    trial = model.clone()
    for name, axis in names:
        value = trial.graph.initializers[name]
        w = value.const_value.numpy().astype(np.float32)
        q, scale, zero_point = quant.per_channel_symmetric(w, axis)
        value.const_value = ir.tensor(quant.dequantize(q, scale, zero_point, axis).astype(np.float32), name=name)
    return ir.to_proto(trial).SerializeToString()


def measure(name: str, top: int) -> dict:
    case = CASES[name]
    model = load(case.model_path())
    context = Context()
    run_pipeline(model, build(parse_pipeline("normalize"), context), context)
    evaluation = open_source(case.eval_data(), model, case.preprocess)
    feeds = [evaluation[i] for i in range(len(evaluation))]
    reference = runtime.session(model)
    outputs = [reference.run(feed) for feed in feeds]
    weights = _weights(model)
    every = metrics.compare(outputs, runtime.session(_rounded(model, list(weights.values()))), feeds).worst_sqnr_db
    alone = {node: metrics.compare(outputs, runtime.session(_rounded(model, [entry])), feeds).worst_sqnr_db for node, entry in weights.items()}
    worst = sorted(alone.items(), key=lambda item: item[1])[:top]
    return {"model": name, "weighted_nodes": len(weights), "samples": len(feeds), "all_weights_sqnr_db": round(every, 2), "worst_alone": [{"node": n, "sqnr_db": round(v, 2)} for n, v in worst]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ppocr-det", "ppocr-rec", "yolov8n", "efficientnet-lite0"])
    parser.add_argument("--top", type=int, default=5, help="the nodes whose weights alone cost most, listed per model")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        print(f"{name} ...", flush=True)
        rows.append(measure(name, args.top))
        print(json.dumps(rows[-1]), flush=True)
    environment = environment_facts()
    lines = [
        "# INT8 weights alone (per output channel, symmetric; activations float)",
        "",
        f"`python benchmarks/int8_weight_rounding.py --models {' '.join(args.models)}`; {environment['date']}, qonnx {environment['qonnx_revision']}, onnxruntime {environment['onnxruntime_version']}.",
        "Output SQNR against the normalized FP32 model on the held-out data (worst output).",
        "",
        "| model | weighted nodes | all weights in INT8 | the worst alone |",
        "|---|---|---|---|",
    ]
    for row in rows:
        worst = "; ".join(f"{e['node']} {e['sqnr_db']} dB" for e in row["worst_alone"])
        lines.append(f"| {row['model']} | {row['weighted_nodes']} | {row['all_weights_sqnr_db']} dB | {worst} |")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "int8_weight_rounding.json", lambda f: f.write((json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n").encode()))
    atomic_write(args.out / "int8_weight_rounding.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
