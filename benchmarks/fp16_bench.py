"""Benchmark qonnx's FP16/BF16 conversion against onnxconverter-common on the kit models, one run.

For every benchmark case of ``bench.py`` (model, calibration photos or sentences, held-out
evaluation data, task metrics) these variants are made, each in a freshly spawned process whose
conversion call is timed (imports and loading excluded):

* ``qonnx fp16``: ``qonnx.api.quantize(precision="fp16")`` without calibration data (islands from
  constants and op kinds), target ``cuda``, graph I/O kept FP32;
* ``qonnx fp16 cal``: the same with the calibration half (ranges decide the islands, and
  ``float-sensitivity`` measures the result on two samples); its time includes calibration (on
  the three quarters of the calibration data that ``quantize`` does not hold out);
* ``qonnx bf16``: ``precision="bf16"`` without calibration data;
* ``occ fp16``: the anchor, ``onnxconverter_common.float16.convert_float_to_float16(model,
  keep_io_types=True)`` with its defaults (constants clipped to ±1e4, tiny ones to 1e-7);
* ``occ auto-mixed``: ``auto_mixed_precision.auto_convert_mixed_precision(model, feed,
  rtol=0.01, atol=0.001, keep_io_types=True)`` on the first calibration sample, stopped after
  ``--auto-mixed-timeout`` seconds (it bisects the node list with a session per attempt).

Per variant: does onnxruntime (CPU provider) load and run it; SQNR in dB of every output against
FP32 on the held-out data (energies pooled over samples), measured two ways:

* ``cpu``: the model as onnxruntime's CPU provider runs it. That provider computes many FP16 ops
  in FP32 behind Casts it inserts and has no BF16 kernels at all, so this is not what a GPU
  computes (a BF16 model does not load there);
* ``emulated``: the model widened to FP32 with a rounding Cast pair after every FP16/BF16 tensor
  (``qonnx.passes.emulate_float``): the storage roundings, overflows to infinity and flushes to
  zero of the low format, on the CPU. Accumulation inside ops is FP32 there, as in GPU kernels.

plus the task metrics of the case, the number of Cast nodes, the file size over FP32's and the
conversion time. Results go to ``<out>/fp16.json`` and ``<out>/fp16.md`` (written atomically).

Usage: ``python benchmarks/fp16_bench.py [--models yolov8n,minilm] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CASES, REPO_ROOT, environment, model_names, open_case_source  # noqa: E402
from isolation import run_isolated  # noqa: E402

from qonnx import ir as qir  # noqa: E402
from qonnx import metrics, runtime  # noqa: E402
from qonnx.passes.emulate_float import emulated  # noqa: E402

TARGET_SQNR_DB = 40.0
TARGET_SIZE = 0.51
TARGET_CONVERT_S = 10.0

VARIANTS = ("qonnx fp16", "qonnx fp16 cal", "qonnx bf16", "occ fp16", "occ auto-mixed")


# ----------------------------------------------------------------------------------------------
# Converters, each run in a fresh process: (case name, model path, output path) -> facts


def convert_qonnx(case_name: str, model_path: str, output_path: str, precision: str, calibrated: bool) -> dict[str, Any]:
    import qonnx.api

    case = CASES[case_name]
    calib = case.calib_data() if calibrated else None
    started = time.perf_counter()
    result = qonnx.api.quantize(model_path, output_path, calib, preprocess=case.preprocess, precision=precision)
    # With calibration data quantize() also measures fidelity on a held-out quarter: not conversion.
    seconds = time.perf_counter() - started - result.report["timing"]["fidelity_s"]
    return {
        "convert_s": seconds,
        "float_sensitivity": result.report.get("float_sensitivity"),
        "pipeline": result.report["pipeline"],
        "fp32_islands": result.report.get("float_islands"),
        "conversion": result.report.get("conversion"),
        "fp32_reasons": _reason_counts(result.report["nodes"]),
    }


def _reason_counts(nodes: dict[str, Any]) -> dict[str, int]:
    """FP32 nodes grouped by the kind of their reason (the text up to the first tensor name)."""
    counts: dict[str, int] = {}
    for entry in nodes.values():
        reason = entry.get("reason")
        if entry["format"] != "float" or not reason:
            continue
        for kind in ("cast placement", "may exceed", "on the calibration data", "flushes to zero", "holds |x|", "no bfloat16 form",
                     "no float16 form", "kernel", "subgraph", "overflows FP16", "accumulator", "rounding", "residual", "infinite"):
            if kind in reason:
                counts[kind] = counts.get(kind, 0) + 1
                break
        else:
            counts["other"] = counts.get("other", 0) + 1
    return counts


def convert_occ(case_name: str, model_path: str, output_path: str) -> dict[str, Any]:
    from onnxconverter_common import float16

    model = onnx.load(model_path)
    started = time.perf_counter()
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    seconds = time.perf_counter() - started
    onnx.save(converted, output_path)
    return {"convert_s": seconds}


def convert_occ_auto(case_name: str, model_path: str, output_path: str) -> dict[str, Any]:
    from onnxconverter_common import auto_mixed_precision

    case = CASES[case_name]
    feed = open_case_source(case, Path(model_path), "calib")[0]
    model = onnx.load(model_path)
    started = time.perf_counter()
    converted = auto_mixed_precision.auto_convert_mixed_precision(model, feed, rtol=0.01, atol=0.001, keep_io_types=True)
    seconds = time.perf_counter() - started
    onnx.save(converted, output_path)
    return {"convert_s": seconds}




# ----------------------------------------------------------------------------------------------
# Measurements


def _cast_count(path: Path) -> int:
    model = qir.load(path)
    return sum(1 for node in qir.all_nodes(model) if node.op_type == "Cast" and node.domain in ("", "ai.onnx"))


def _outputs(session, feeds) -> list[dict[str, np.ndarray]]:
    return [session.run(feed) for feed in feeds]


def _fidelity(reference: list[dict], test: list[dict]) -> dict[str, Any]:
    """SQNR per output (``metrics.compare``), non-finite values counted and compared as zeros."""
    names = list(reference[0])
    nonfinite = {name: sum(int((~np.isfinite(np.asarray(t[name], np.float64))).sum()) for t in test) for name in names}
    cleaned = [{name: np.nan_to_num(np.asarray(t[name], np.float64), nan=0.0, posinf=0.0, neginf=0.0) for name in names} for t in test]
    sqnr = metrics.compare(reference, cleaned, [{}] * len(reference)).sqnr_db(digits=2)
    return {name: {"sqnr_db": sqnr[name], "nonfinite": nonfinite[name]} for name in names}


def measure(case, path: Path, feeds, reference, fp32_bytes: int) -> dict[str, Any]:
    facts: dict[str, Any] = {"size_ratio": round(qir.file_size(path) / fp32_bytes, 4), "casts": _cast_count(path)}
    try:
        session = runtime.session(path)
        facts["loads"] = True
    except Exception as exc:
        facts["loads"] = False
        facts["load_error"] = str(exc).splitlines()[0][:300]
        session = None
    if session is not None:
        try:
            outputs = _outputs(session, feeds)
            facts["runs"] = True
            facts["cpu"] = _fidelity(reference, outputs)
            facts["task"] = {m.key: round(m.compute(feeds, reference, outputs), 4) for m in case.task_metrics}
        except Exception as exc:
            facts["runs"] = False
            facts["run_error"] = str(exc).splitlines()[0][:300]
    try:
        widened = runtime.session(emulated(qir.load(path)))
        outputs = _outputs(widened, feeds)
        facts["emulated"] = _fidelity(reference, outputs)
        facts["emulated_task"] = {m.key: round(m.compute(feeds, reference, outputs), 4) for m in case.task_metrics}
    except Exception as exc:
        facts["emulated_error"] = str(exc).splitlines()[0][:300]
    return facts


def bench_case(name: str, scratch: Path, auto_timeout_s: float, timeout_s: float) -> dict[str, Any]:
    case = CASES[name]
    model_path = case.model_path()
    fp32_bytes = qir.file_size(model_path)
    feeds = list(open_case_source(case, model_path, "eval"))
    reference = _outputs(runtime.session(model_path), feeds)
    doc: dict[str, Any] = {"name": name, "description": case.description, "fp32_bytes": fp32_bytes, "eval_samples": len(feeds), "variants": {}}
    plans = {
        "qonnx fp16": (convert_qonnx, ("fp16", False), timeout_s),
        "qonnx fp16 cal": (convert_qonnx, ("fp16", True), timeout_s),
        "qonnx bf16": (convert_qonnx, ("bf16", False), timeout_s),
        "occ fp16": (convert_occ, (), timeout_s),
        "occ auto-mixed": (convert_occ_auto, (), auto_timeout_s),
    }
    for variant, (function, extra, cap) in plans.items():
        output = scratch / f"{name}.{variant.replace(' ', '_')}.onnx"
        print(f"[fp16-bench] {name}: {variant}", file=sys.stderr, flush=True)
        outcome = run_isolated(function, (name, str(model_path), str(output), *extra), cap)
        entry: dict[str, Any] = {"converted": outcome["ok"]}
        if outcome["ok"]:
            entry.update(outcome["result"])
            entry["convert_s"] = round(entry["convert_s"], 2)
            entry.update(measure(case, output, feeds, reference, fp32_bytes))
        else:
            entry["error"] = outcome["error"]
        doc["variants"][variant] = entry
    return doc


# ----------------------------------------------------------------------------------------------
# Report


def _worst(fidelity: dict[str, Any] | None) -> float | None:
    if not fidelity:
        return None
    return min(v["sqnr_db"] for v in fidelity.values())


def _cell(value, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        "# FP16 / BF16 conversion: qonnx beside onnxconverter-common",
        "",
        f"{env['date']}, qonnx {env['qonnx_version']} ({env['qonnx_revision']}), onnxruntime {env['onnxruntime_version']} "
        f"(CPU provider), onnxconverter-common {doc['anchor_version']}, CPU {env['cpu']['model']}; total {doc['total_s']:.0f} s.",
        "",
        "SQNR (dB, worst output, pooled over the held-out samples) two ways: *CPU* = onnxruntime's CPU provider "
        "(computes many FP16 ops in FP32; cannot run BF16), *emul.* = every FP16/BF16 tensor rounded by a Cast pair in an "
        "FP32 graph (storage rounding, overflow and flush-to-zero of the format). Targets: loads and runs, SQNR ≥ "
        f"{TARGET_SQNR_DB:g} dB, size ≤ {TARGET_SIZE}x FP32, conversion < {TARGET_CONVERT_S:g} s.",
        "",
        "| model | variant | loads / runs | SQNR CPU | SQNR emul. | task (CPU / emul.) | Casts | size vs FP32 | convert s | FP32 nodes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for model in doc["models"]:
        for variant, v in model["variants"].items():
            if not v.get("converted"):
                lines.append(f"| {model['name']} | {variant} | conversion failed | | | | | | | |")
                notes.append(f"{model['name']} / {variant}: {v.get('error')}")
                continue
            load = ("yes" if v.get("loads") else "**no**") + " / " + ("yes" if v.get("runs") else "**no**" if v.get("loads") else "—")
            task = ", ".join(
                f"{k} {_cell(v.get('task', {}).get(k), '.3f')} / {_cell(v.get('emulated_task', {}).get(k), '.3f')}" for k in v.get("emulated_task", v.get("task", {}))
            )
            conversion = v.get("conversion") or {}
            islands = conversion.get("fp32_nodes")
            lines.append(
                f"| {model['name']} | {variant} | {load} | {_cell(_worst(v.get('cpu')), '.1f')} | {_cell(_worst(v.get('emulated')), '.1f')} | "
                f"{task or '—'} | {v['casts']} | {v['size_ratio']:.3f} | {v['convert_s']:.2f} | {_cell(islands, 'd')} |"
            )
            if v.get("load_error"):
                notes.append(f"{model['name']} / {variant} does not load: {v['load_error']}")
            if v.get("emulated_error"):
                notes.append(f"{model['name']} / {variant}: no emulation ({v['emulated_error']})")
            for kind in ("cpu", "emulated"):
                bad = {k: o["nonfinite"] for k, o in (v.get(kind) or {}).items() if o["nonfinite"]}
                if bad:
                    notes.append(f"{model['name']} / {variant} ({kind}): non-finite output values {bad}")
            if v.get("fp32_reasons"):
                notes.append(f"{model['name']} / {variant}: FP32 nodes by reason {v['fp32_reasons']}")
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names_default = ["yolov8n", "ppocr-det", "ppocr-cls", "ppocr-rec", "efficientnet-lite0", "minilm"]
    parser.add_argument("--models", default=",".join(names_default))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed to one conversion")
    parser.add_argument("--auto-mixed-timeout", type=float, default=120, help="seconds allowed to auto_convert_mixed_precision")
    args = parser.parse_args(argv)
    names = model_names(parser, args.models)
    try:
        import onnxconverter_common
    except ImportError:
        parser.error("the anchor needs onnxconverter-common: pip install -e '.[bench]'")
    from bench import Settings

    started = time.perf_counter()
    doc: dict[str, Any] = {
        "environment": environment(Settings(20, 3.0, args.timeout, "retry")),
        "anchor_version": onnxconverter_common.__version__,
        "settings": {"auto_mixed_timeout_s": args.auto_mixed_timeout, "timeout_s": args.timeout},
        "models": [],
    }
    doc["environment"].pop("latency", None)
    doc["environment"].pop("anchor", None)
    with tempfile.TemporaryDirectory(prefix="qonnx-fp16-bench-") as scratch:
        for name in names:
            doc["models"].append(bench_case(name, Path(scratch), args.auto_mixed_timeout, args.timeout))
    doc["total_s"] = round(time.perf_counter() - started, 1)
    report = markdown(doc)
    qir.atomic_write(args.out / "fp16.json", lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))
    qir.atomic_write(args.out / "fp16.md", lambda f: f.write(report.encode()))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
