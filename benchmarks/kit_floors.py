"""The figures behind the kit tests' floors: each kit model quantized as the tests quantize it.

``tests/test_kit.py`` sets its floors at these values minus a stated margin. For each model this
measures, on the held-out data, the output SQNR (dB, pooled over samples) and the task metric of
the default pipeline and of the same pipeline with MinMax ranges (so that the floors can sit
between the two: a test must fail when the default method silently changes). Convolutional
models are quantized with 7-bit weights (``reduce_range=True``), as the tests do; MiniLM with the
target's choice for this machine (its MatMul weights stay full-range).

Usage: ``python benchmarks/kit_floors.py [--out benchmarks/results]`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CASES, environment_facts  # noqa: E402

from qonnx import runtime  # noqa: E402
from qonnx.api import quantize  # noqa: E402
from qonnx.calib.sources import open_source  # noqa: E402
from qonnx.ir import atomic_write, load  # noqa: E402
from qonnx.pipeline import DEFAULT_PIPELINE  # noqa: E402

# (model, mode, reduce_range) as the kit tests quantize them.
VARIANTS = [
    ("yolov8n", "static", True),
    ("ppocr-det", "static", True),
    ("ppocr-cls", "static", True),
    ("ppocr-rec", "static", True),
    ("efficientnet-lite0", "static", True),
    ("minilm", "dynamic", None),
    ("minilm", "static", None),
]


def measure(name: str, mode: str, reduce_range: bool | None, method: str | None, scratch: Path, pipeline: str | None = None) -> dict:
    case = CASES[name]
    path = case.model_path()
    output = scratch / f"{name}.{mode}.{method}.onnx"
    started = time.perf_counter()
    result = quantize(
        path, output, case.calib_data(), eval_data=case.eval_data(), preprocess=case.preprocess,
        mode=mode, reduce_range=reduce_range, method=method, pipeline=pipeline,
    )
    seconds = time.perf_counter() - started
    feeds = list(open_source(case.eval_data(), load(path), case.preprocess))
    fp32, quantized = runtime.session(path), runtime.session(output)
    reference = [fp32.run(f) for f in feeds]
    test = [quantized.run(f) for f in feeds]
    report = result.report
    return {
        "model": name,
        "mode": mode,
        "pipeline": report["pipeline"],
        "reduce_range_ops": report["reduce_range_ops"],
        "method": report["calibration"]["method"] if report.get("calibration") else None,
        "sqnr_db": {k: v["sqnr_db"] for k, v in report["fidelity"]["outputs"].items()},
        "task": {m.key: round(m.compute(feeds, reference, test), 4) for m in case.task_metrics},
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qonnx-kit-floors-") as scratch:
        for name, mode, reduce_range in VARIANTS:
            for method in (None, "minmax") if mode == "static" else (None,):
                row = measure(name, mode, reduce_range, method, Path(scratch))
                rows.append(row)
                print(json.dumps(row), flush=True)
        # What bias correction is worth (README, "INT8 on the CPU"): the same, without it.
        without = DEFAULT_PIPELINE.replace("insert-qdq", "insert-qdq(bias_correction=false)")
        for name in ("efficientnet-lite0", "yolov8n"):
            row = measure(name, "static", True, None, Path(scratch), pipeline=without)
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"command": "python benchmarks/kit_floors.py", "environment": environment_facts(), "rows": rows}
    text = json.dumps(doc, indent=1) + "\n"
    atomic_write(args.out / "kit_floors.json", lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
