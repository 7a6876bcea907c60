"""The automatic policy beside pure INT8 and a brute-force greedy, in one run.

For each kit model named: (a) pure INT8 (the default pipeline), (b) ``--policy auto --metric sqnr
--min TARGET`` (MiniLM: ``--metric cosine --min 0.998``, the cosine of mean-pooled sentence
embeddings; ``MODEL_TARGETS``), and, on the models named with ``--greedy``, (c) a brute-force greedy: the model's
output SQNR with each node alone in INT8 (one full evaluation per node), then nodes kept float in
that order, worst first, one more evaluation per node, until the target holds (on the held-out
photos, each plan judged as ``--meet-on`` says, as the automatic policy judges). For each: the output
SQNR on held-out data (the report's fidelity), the nodes kept float, the full-model evaluations
spent and the wall time; for (a) and (b) the latency against FP32 (the report's, median of 20 runs,
2 threads).

Usage: ``python benchmarks/auto_bench.py [--models ppocr-cls yolov8n] [--greedy ppocr-cls] [--min 30] [--merge] [--meet-on each]
[--target efficientnet-lite0=top1:0.99] [--views 10] [--calib-views 10] [--stem NAME]``
(results in ``benchmarks/results/auto.md`` and ``auto.json``, with ``--meet-on pooled`` or ``halves``
in ``auto_pooled.*`` or ``auto_halves.*``; ``--merge`` keeps the rows of the models not run from the
existing file, each row with the revision and date it was run at).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CASES, environment_facts, quantize_with_onnxruntime  # noqa: E402
from isolation import run_isolated  # noqa: E402

from qonnx.api import quantize  # noqa: E402
from qonnx.calib.sources import open_source  # noqa: E402
from qonnx.ir import atomic_write, load  # noqa: E402
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline  # noqa: E402
from qonnx.report import speed_check_text  # noqa: E402
from qonnx.trials import Trials  # noqa: E402
from qonnx import metrics, runtime, timing  # noqa: E402
from qonnx.verdict import MEET_ON, metric_value  # noqa: E402


# Models judged by another metric than the output SQNR: (metric, target).
MODEL_TARGETS = {"minilm": ("cosine", 0.998)}


def photo_views(folder: Path, out: Path, views: int) -> Path:
    """``views`` views of every photo of ``folder`` in ``out`` (PNG): the photo itself, then crops of
    80% of its height and width at the four corners and the centre, then the same mirrored: more
    held-out samples of the same real photos, for agreement rates finer than one photo in ten."""
    from PIL import Image, ImageOps

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        width, height = rgb.size
        w, h = round(0.8 * width), round(0.8 * height)
        boxes = [None] + [(x, y, x + w, y + h) for x, y in ((0, 0), (width - w, 0), (0, height - h), (width - w, height - h), ((width - w) // 2, (height - h) // 2))]
        made = [rgb if box is None else rgb.crop(box) for box in boxes]
        made += [ImageOps.mirror(view) for view in made]
        if views > len(made):
            raise SystemExit(f"--views: at most {len(made)} views per photo")
        for index, view in enumerate(made[:views]):
            view.save(out / f"{path.stem}.{index}.png")
    return out


def _quantize(name: str, scratch: Path, eval_data=None, calib_data=None, **options) -> dict:
    case = CASES[name]
    started = time.perf_counter()
    result = quantize(
        case.model_path(), scratch / f"{name}.{options.get('policy', 'int8')}.onnx", case.calib_data() if calib_data is None else calib_data,
        eval_data=case.eval_data() if eval_data is None else eval_data, preprocess=case.preprocess, latency=True, **options,
    )
    report = result.report
    auto = report.get("auto_policy") or {}
    sensitivity = report.get("layer_sensitivity") or {}
    return {
        "sqnr_db": min(v["sqnr_db"] for v in report["fidelity"]["outputs"].values()),
        "metric": report["verdict"]["metric"],
        "top1_agreement": min((v["top1_agreement"] for v in report["fidelity"]["outputs"].values() if "top1_agreement" in v), default=None),
        "metric_value": report["verdict"]["value"],
        "dynamic_nodes": sum(1 for f in auto.get("formats", {}).values() if f == "int8-dynamic"),
        "int4_nodes": sum(1 for f in auto.get("formats", {}).values() if f == "int4"),
        "search_value": auto.get("achieved"),
        "binding": auto.get("binding"),
        "binding_reason": auto.get("binding_reason"),
        "reachable": auto.get("reachable"),
        "speed_check": auto.get("speed_check"),
        "speed_step": auto.get("speed_step"),
        "search_samples": auto.get("samples"),
        "notes": auto.get("notes", []),
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


ANCHOR_METHOD = "MinMax"  # onnxruntime's calibration for the anchor (Entropy fails on MiniLM and takes GBs on det)


def _anchor(name: str, scratch: Path, auto_model: Path, eval_data, metric: str) -> dict:
    """onnxruntime.quantization's static INT8 of the model (``bench.quantize_with_onnxruntime``: QDQ,
    per-channel, U8/S8, MinMax, on the same calibration data, in a fresh process), judged on the same
    held-out data, and the FP32 model, the automatic policy's output and the anchor's timed
    interleaved in one session set (``qonnx.timing``, 20 cycles): speed of each against FP32 and of
    the automatic policy's against the anchor's."""
    case = CASES[name]
    folder = scratch / "anchor" / name
    folder.mkdir(parents=True)
    output = folder / "model.onnx"
    outcome = run_isolated(quantize_with_onnxruntime, (name, str(case.model_path()), str(output), ANCHOR_METHOD, "retry"), 1800, folder)
    if not outcome["ok"]:
        return {"error": outcome["error"]}
    model = load(case.model_path())
    source = open_source(case.eval_data() if eval_data is None else eval_data, model, case.preprocess)
    feeds = [source[i] for i in range(len(source))]
    reference = runtime.session(model)
    fp32 = [reference.run(feed) for feed in feeds]
    comparison = metrics.compare(fp32, runtime.session(output), feeds).to_dict()
    (base, auto, anchor), plan = timing.interleaved([case.model_path(), auto_model, output], feeds[0], min_cycles=20)
    return {
        "method": ANCHOR_METHOD,
        "quantized_input": outcome["result"]["quantized_input"],
        "sqnr_db": round(min(v["sqnr_db"] for v in comparison.values()), 3),
        "metric_value": metric_value(metric, comparison),
        "speedup": round(timing.speedup(base, anchor), 3),
        "auto_speedup": round(timing.speedup(base, auto), 3),
        "auto_over_anchor": round(timing.speedup(anchor, auto), 3),
        "cycles": plan.cycles,
    }


def _greedy(name: str, target: float, meet_on: str) -> dict:
    """One evaluation per node alone in INT8, then float nodes in that order until the target holds,
    each plan judged as the automatic policy's ``meet_on`` judges its plans."""
    case = CASES[name]
    started = time.perf_counter()
    model = load(case.model_path())
    calib = open_source(case.calib_data(), model, case.preprocess)
    evaluation = open_source(case.eval_data(), model, case.preprocess)
    context = Context(calib=calib, eval_data=evaluation)
    run_pipeline(model, build(parse_pipeline("normalize,div-to-mul,resolve-policy,calibrate(adjacent=true)"), context), context)
    trials = Trials(model, context, [evaluation[i] for i in range(len(evaluation))], "sqnr", meet_on=meet_on)
    every = set(trials.candidates)
    alone = sorted(trials.candidates, key=lambda n: (trials.score({n}), n))
    fallback: list[str] = []
    value = trials.score(every)
    for node in alone:
        if value >= target:
            break
        fallback.append(node)
        value = trials.score(every - set(fallback))
    return {"sqnr_db": round(value, 3), "meet_on": meet_on, "float_nodes": len(fallback), "evaluations": trials.evaluations, "wall_s": round(time.perf_counter() - started, 1), "met": value >= target}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ppocr-cls", "yolov8n", "ppocr-rec", "ppocr-det", "efficientnet-lite0"])
    parser.add_argument("--greedy", nargs="*", default=["ppocr-cls", "ppocr-rec"])
    parser.add_argument("--min", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows of the existing auto.json")
    parser.add_argument("--meet-on", choices=MEET_ON, default="each", help="the automatic policy's --meet-on (default each, the tool's); results in auto.md/.json, else auto_MEET_ON.md/.json")
    parser.add_argument("--target", action="append", default=[], metavar="MODEL=METRIC:VALUE", help="another target for MODEL (e.g. efficientnet-lite0=top1:0.99)")
    parser.add_argument("--views", type=int, default=1, help="held-out views per photo for the image models (photo_views: crops and mirror images; default 1, the photo)")
    parser.add_argument("--calib-views", type=int, default=1, help="calibration views per photo, the same way (the search's samples: a top-1 target of 0.99 needs 100)")
    parser.add_argument("--stem", help="results file name without suffix (default auto, or auto_MEET_ON)")
    args = parser.parse_args(argv)
    targets = dict(MODEL_TARGETS)
    for text in args.target:
        model, _, spec = text.partition("=")
        metric, _, value = spec.partition(":")
        if metric not in ("sqnr", "cosine", "top1") or not value:
            parser.error(f"--target {text!r}: MODEL=METRIC:VALUE with METRIC sqnr, cosine or top1")
        targets[model] = (metric, float(value))
    rows = []
    environment = environment_facts()
    with tempfile.TemporaryDirectory(prefix="qonnx-auto-bench-") as scratch:
        for name in args.models:
            eval_data = calib_data = None
            if args.views > 1 and CASES[name].preprocess is not None:
                eval_data = photo_views(Path(CASES[name].eval_data()), Path(scratch) / "views" / name, args.views)
            if args.calib_views > 1 and CASES[name].preprocess is not None:
                calib_data = photo_views(Path(CASES[name].calib_data()), Path(scratch) / "calib-views" / name, args.calib_views)
            print(f"{name}: pure INT8", flush=True)
            metric, target = targets.get(name, ("sqnr", args.min))
            row = {"model": name, "metric": metric, "target": target, "environment": environment, "views": args.views, "calib_views": args.calib_views}
            row["int8"] = _quantize(name, Path(scratch), eval_data, calib_data)
            print(f"{name}: --policy auto --metric {metric} --min {target:g}", flush=True)
            row["auto"] = _quantize(name, Path(scratch), eval_data, calib_data, policy="auto", metric=metric, min=target, meet_on=args.meet_on, min_speedup=SPEED_TARGET)
            print(f"{name}: onnxruntime.quantization ({ANCHOR_METHOD}), then FP32, auto and it timed interleaved", flush=True)
            row["anchor"] = _anchor(name, Path(scratch), Path(scratch) / f"{name}.auto.onnx", eval_data, metric)
            if name in args.greedy:
                print(f"{name}: brute-force greedy", flush=True)
                row["greedy"] = _greedy(name, args.min, args.meet_on)
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"environment": environment, "target_sqnr_db": args.min, "meet_on": args.meet_on, "rows": rows}
    stem = args.stem or ("auto" if args.meet_on == "each" else f"auto_{args.meet_on}")
    if args.merge and (args.out / f"{stem}.json").is_file():
        previous = json.loads((args.out / f"{stem}.json").read_text())
        ran = {row["model"] for row in rows}
        kept = [{"environment": previous["environment"], **row} for row in previous["rows"] if row["model"] not in ran]
        doc = {"environment": previous["environment"], "target_sqnr_db": previous.get("target_sqnr_db", args.min), "meet_on": args.meet_on, "rows": kept + rows}
    lines = _markdown(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / f"{stem}.json", lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))
    atomic_write(args.out / f"{stem}.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    return 0


_MEET_ON_WORDS = {"pooled": "all samples pooled", "halves": "the lower of each half pooled", "each": "the lowest sample alone"}
SPEED_TARGET = 1.5  # the issue's: at least 1.5x the FP32 speed on the CPU


def _binds(auto: dict, metric: str, target: float) -> str:
    """The constraints the chosen point misses: the target on held-out data (and whether the search
    met it on its calibration samples, where it was chosen) and the speed."""
    missed = []
    if not auto["met"]:
        searched = auto.get("search_value")
        where = "" if searched is None else (f" (met on calibration: {searched:g})" if searched >= target else f" (calibration: {searched:g})")
        missed.append(f"held-out {metric}{where}")
    if auto["speedup"] < SPEED_TARGET:
        missed.append(f"speed {auto['speedup']:.2f}x < {SPEED_TARGET:g}x" + (" (slower than FP32)" if auto["speedup"] < 1 else ""))
    return "; ".join(missed) or "none"


def _markdown(doc: dict) -> list[str]:
    """The results page: one row per model, each with the revision and date it was run at."""
    runs = {}
    for row in doc["rows"]:
        env = row.get("environment", doc["environment"])
        extra = f" --views {row['views']}" if row.get("views", 1) > 1 else ""
        extra += f" --calib-views {row['calib_views']}" if row.get("calib_views", 1) > 1 else ""
        if (row.get("metric", "sqnr"), row.get("target", doc["target_sqnr_db"])) != MODEL_TARGETS.get(row["model"], ("sqnr", doc["target_sqnr_db"])):
            extra += f" --target {row['model']}={row['metric']}:{row['target']:g}"
        runs.setdefault((env["date"], env["qonnx_revision"], env["onnxruntime_version"], str(env["load_average_at_start"]), extra), []).append(row["model"])
    greedy_on = sorted({row["greedy"].get("meet_on", "pooled") for row in doc["rows"] if row.get("greedy")})  # rows before --meet-on: pooled
    meet_on = doc.get("meet_on") or ("halves" if doc.get("halves") else "pooled")  # files written before --meet-on: halves or pooled
    lines = [f"# Automatic mixed precision, --meet-on {meet_on} (target {doc['target_sqnr_db']:g} dB output SQNR; MiniLM: pooled-embedding cosine 0.998)", ""]
    for (date, revision, ort, load_average, extra), models in runs.items():
        lines.append(f"`python benchmarks/auto_bench.py --models {' '.join(models)} --meet-on {meet_on}{extra}`; {date}, qonnx {revision}, onnxruntime {ort}, load average at start {load_average}.")
    lines += [
        "",
        "| model | INT8 SQNR | INT8 speed | auto target | INT8 / auto on the target metric | auto on the search's calibration samples | auto SQNR | auto top-1 agreement | auto speed | auto size | auto float nodes (+ dynamic INT8, + INT4) | auto evaluations (search / with sensitivity) | auto wall s | what binds | greedy SQNR | greedy float nodes | greedy evaluations | greedy wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        i, a, g = row["int8"], row["auto"], row.get("greedy")
        metric, target = row.get("metric", "sqnr"), row.get("target", doc["target_sqnr_db"])
        values = f"{i['sqnr_db']:.1f} / {a['sqnr_db']:.1f} dB" if metric == "sqnr" else f"{i.get('metric_value', float('nan')):.4f} / {a.get('metric_value', float('nan')):.4f}"
        greedy = f"{g['sqnr_db']:.1f} | {g['float_nodes']} | {g['evaluations']} | {g['wall_s']}" if g else "— | — | — | —"
        lighter = [a.get("dynamic_nodes", 0), a.get("int4_nodes", 0)]
        kept = f"{a['float_nodes'] - sum(lighter)}" + (f" (+ {lighter[0]}, + {lighter[1]})" if any(lighter) else "")
        search = "—" if a.get("search_value") is None else f"{a['search_value']:g}"
        top1 = "—" if a.get("top1_agreement") is None else f"{a['top1_agreement']:.0%}"  # class-score outputs; rows before it: —
        lines.append(
            f"| {row['model']} | {i['sqnr_db']:.1f} | {i['speedup']:.2f}x | {metric} >= {target:g} | {values}{'' if a['met'] else ' (missed)'} | {search} | {a['sqnr_db']:.1f} | {top1} | {a['speedup']:.2f}x | {a['size_ratio']:.2f} | "
            f"{kept} | {a['search_evaluations']} / {a['evaluations']} | {a['wall_s']} | {_binds(a, metric, target)} | {greedy} |"
        )
    lines += [
        "",
        f"Fidelity on held-out data (photos; MiniLM: other sentences of the Python docs), pooled; the search measures on calibration data ({meet_on}: {_MEET_ON_WORDS[meet_on]}); "
        "speed: the report's latency, FP32 time / model time, 2 threads, the two timed interleaved (`qonnx.timing`: the median over cycles of the paired ratio; rows run at revisions before de57aa8 timed one model after the other, which on this shared machine moved the same plan's speed by up to 2x). "
        "Held-out views: the photos themselves, or with `--views N` N views of each (crops and mirror images, `photo_views`). Rows run before dynamic INT8 existed have no dynamic nodes. "
        f"What binds: the constraints the chosen point misses, of the held-out target and {SPEED_TARGET:g}x the FP32 speed. "
        f"The greedy searches on the held-out photos themselves, judged {' / '.join(greedy_on) or meet_on}; its SQNR is that value.",
        "",
    ]
    anchored = [row for row in doc["rows"] if row.get("anchor")]
    if anchored:
        lines += [
            f"Beside onnxruntime.quantization (`quantize_static`, QDQ, per-channel, U8/S8, {ANCHOR_METHOD}, same calibration data, its own process; held-out data as above). "
            "The FP32 model, the automatic policy's output and the anchor's timed interleaved in one run (20 cycles or more), ratios as medians over cycles:",
            "",
            "| model | anchor SQNR | anchor on the target metric | auto on the target metric | anchor speed vs FP32 | auto speed vs FP32 | auto speed vs anchor | anchor input |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in anchored:
            n, a = row["anchor"], row["auto"]
            if "error" in n:
                lines.append(f"| {row['model']} | failed: {n['error']} | | | | | | |")
                continue
            value = "—" if n.get("metric_value") is None else f"{n['metric_value']:.4g}"
            lines.append(
                f"| {row['model']} | {n['sqnr_db']:.1f} | {value} | {a['metric_value']:.4g} | {n['speedup']:.2f}x | {n['auto_speedup']:.2f}x | {n['auto_over_anchor']:.2f}x | {n['quantized_input']} |"
            )
        lines.append("")
    for row in doc["rows"]:
        step = row["auto"].get("speed_step")
        if step:
            lines.append(
                f"- {row['model']}: speed step: the plan ran at {step['plan_speedup']:.2f}x FP32 in the search's timing; with its {step['islands']} "
                f"nodes other than Conv/Gemm/MatMul float too, {step['islands_value']:g} at {step['islands_speedup']:.2f}x"
                + (f" ({q[0]:.2f}-{q[2]:.2f}x the plan's, quartiles over cycles)" if (q := step.get("islands_over_plan")) else "")
                + f"; {step['chosen']} chosen"
            )
    for row in doc["rows"]:
        if row["auto"].get("speed_check"):
            lines.append(f"- {row['model']}: speed check: {speed_check_text(row['auto']['speed_check'])}")
    for row in doc["rows"]:
        if row["auto"].get("binding_reason"):  # rows run before the report said it
            lines.append(f"- {row['model']}: the report (`--min-speedup {SPEED_TARGET:g}`, the search's own timings on calibration data): binds: {row['auto']['binding_reason']}")
    for row in doc["rows"]:
        a = row["auto"]
        lines += [f"- {row['model']}: the search ran on {a['search_samples']} calibration samples; {note}" for note in a.get("notes") or []]
        worst = "; ".join(f"{e['node']} ({e['op_type']}) local {e['local_db']} / global {e['global_db']} dB" for e in a["worst_nodes"])
        lines.append(f"- {row['model']}: local-vs-global rank correlation {a['rank_correlation']}; worst nodes: {worst}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
