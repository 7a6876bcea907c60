"""The automatic policy beside pure INT8 and a brute-force greedy, in one run.

For each kit model named: (a) pure INT8 (the default pipeline), (b) ``--policy auto --metric sqnr
--min TARGET``, and, on the models named with ``--greedy``, (c) a brute-force greedy: the model's
output SQNR with each node alone in INT8 (one full evaluation per node), then nodes kept float in
that order, worst first, one more evaluation per node, until the target holds. For each: the output
SQNR on held-out data (the report's fidelity), the nodes kept float, the full-model evaluations
spent and the wall time; for (a) and (b) the latency against FP32 (the report's, median of 20 runs,
2 threads).

Usage: ``python benchmarks/auto_bench.py [--models ppocr-cls yolov8n] [--greedy ppocr-cls] [--min 30]``
(results in ``benchmarks/results/auto.md`` and ``auto.json``).
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

from qonnx.api import quantize  # noqa: E402
from qonnx.calib.sources import open_source  # noqa: E402
from qonnx.ir import atomic_write, load  # noqa: E402
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline  # noqa: E402
from qonnx.trials import Trials  # noqa: E402


def _quantize(name: str, scratch: Path, **options) -> dict:
    case = CASES[name]
    started = time.perf_counter()
    result = quantize(
        case.model_path(), scratch / f"{name}.{options.get('policy', 'int8')}.onnx", case.calib_data(),
        eval_data=case.eval_data(), preprocess=case.preprocess, latency=True, **options,
    )
    report = result.report
    auto = report.get("auto_policy") or {}
    sensitivity = report.get("layer_sensitivity") or {}
    return {
        "sqnr_db": min(v["sqnr_db"] for v in report["fidelity"]["outputs"].values()),
        "speedup": report["latency"]["speedup"],
        "float_nodes": len(auto.get("fallback", [])),
        "evaluations": auto.get("evaluations", 0) + sensitivity.get("evaluations", 0),
        "search_evaluations": auto.get("evaluations", 0),
        "wall_s": round(time.perf_counter() - started, 1),
        "met": report["verdict"]["met"],
        "size_ratio": report["size_ratio"],
        "rank_correlation": sensitivity.get("rank_correlation"),
        "worst_nodes": [{k: e[k] for k in ("node", "op_type", "local_db", "global_db")} for e in sensitivity.get("nodes", [])[:3]],
    }


def _greedy(name: str, target: float) -> dict:
    """One evaluation per node alone in INT8, then float nodes in that order until the target holds."""
    case = CASES[name]
    started = time.perf_counter()
    model = load(case.model_path())
    calib = open_source(case.calib_data(), model, case.preprocess)
    evaluation = open_source(case.eval_data(), model, case.preprocess)
    context = Context(calib=calib, eval_data=evaluation)
    run_pipeline(model, build(parse_pipeline("normalize,div-to-mul,resolve-policy,calibrate(adjacent=true)"), context), context)
    trials = Trials(model, context, [evaluation[i] for i in range(len(evaluation))], "sqnr")
    every = set(trials.candidates)
    alone = sorted(trials.candidates, key=lambda n: (trials.score({n}), n))
    fallback: list[str] = []
    value = trials.score(every)
    for node in alone:
        if value >= target:
            break
        fallback.append(node)
        value = trials.score(every - set(fallback))
    return {"sqnr_db": round(value, 3), "float_nodes": len(fallback), "evaluations": trials.evaluations, "wall_s": round(time.perf_counter() - started, 1), "met": value >= target}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ppocr-cls", "yolov8n", "ppocr-rec", "ppocr-det", "efficientnet-lite0"])
    parser.add_argument("--greedy", nargs="*", default=["ppocr-cls", "ppocr-rec"])
    parser.add_argument("--min", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qonnx-auto-bench-") as scratch:
        for name in args.models:
            print(f"{name}: pure INT8", flush=True)
            row = {"model": name, "int8": _quantize(name, Path(scratch))}
            print(f"{name}: --policy auto --min {args.min:g}", flush=True)
            row["auto"] = _quantize(name, Path(scratch), policy="auto", metric="sqnr", min=args.min)
            if name in args.greedy:
                print(f"{name}: brute-force greedy", flush=True)
                row["greedy"] = _greedy(name, args.min)
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"environment": environment_facts(), "target_sqnr_db": args.min, "rows": rows}
    lines = [
        f"# Automatic mixed precision (target {args.min:g} dB output SQNR)",
        "",
        f"`python benchmarks/auto_bench.py`; {doc['environment']['date']}, qonnx {doc['environment']['qonnx_revision']}, "
        f"onnxruntime {doc['environment']['onnxruntime_version']}, load average at start {doc['environment']['load_average_at_start']}.",
        "",
        "| model | INT8 SQNR | INT8 speed | auto SQNR | auto speed | auto size | auto float nodes | auto evaluations (search / with sensitivity) | auto wall s | greedy SQNR | greedy float nodes | greedy evaluations | greedy wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        i, a, g = row["int8"], row["auto"], row.get("greedy")
        greedy = f"{g['sqnr_db']:.1f} | {g['float_nodes']} | {g['evaluations']} | {g['wall_s']}" if g else "— | — | — | —"
        lines.append(
            f"| {row['model']} | {i['sqnr_db']:.1f} | {i['speedup']:.2f}x | {a['sqnr_db']:.1f}{'' if a['met'] else ' (missed)'} | {a['speedup']:.2f}x | {a['size_ratio']:.2f} | "
            f"{a['float_nodes']} | {a['search_evaluations']} / {a['evaluations']} | {a['wall_s']} | {greedy} |"
        )
    lines += ["", "SQNR on the held-out photos (the search measures on calibration photos); speed: the report's latency, FP32 / model, median of 20 runs, 2 threads.", ""]
    for row in rows:
        a = row["auto"]
        worst = "; ".join(f"{e['node']} ({e['op_type']}) local {e['local_db']} / global {e['global_db']} dB" for e in a["worst_nodes"])
        lines.append(f"- {row['model']}: local-vs-global rank correlation {a['rank_correlation']}; worst nodes: {worst}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "auto.json", lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))
    atomic_write(args.out / "auto.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
