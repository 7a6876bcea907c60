"""Calibration at scale: qonnx's streaming observers beside onnxruntime.quantization's calibrators.

For YOLOv8n (320x320) and PP-OCRv4 det (480x480), with 16, 64 and 256 calibration samples (and
1024 on YOLOv8n for qonnx's Entropy), one run of this script measures wall time and peak resident
memory of

* ``qonnx``: normalize + resolve-policy (which tensors the CPU target quantizes), then
  ``qonnx.calib.collect.collect_ranges`` with MinMax, Percentile (99.99, two-sided), Entropy (2048
  fine / 128 quantized bins) and MSE (UINT8), batch size 1, default memory budget;
* ``ORT``: ``onnxruntime.quantization.create_calibrator`` on the published model with MinMax,
  Entropy and Percentile and their public defaults (every float tensor of the graph tapped, as
  ``quantize_static`` does by default; Entropy 128 bins, Percentile 2048 bins at 99.999,
  symmetric), then ``collect_data`` and ``compute_data``;
* ``ORT, same tensors`` (YOLOv8n, Entropy, 64 samples): the same with ``op_types_to_calibrate`` =
  Conv, ConvTranspose, Gemm, MatMul, whose inputs and outputs are the tensors qonnx calibrates.

Both are fed the very same samples. There are only ten calibration photos
(``qonnx.models.data.photo_folders()[0]``), so samples are made from them deterministically:
sample ``i`` takes photo ``i mod 10``; the first ten are the whole photos, every later one a crop
(a box drawn with seed ``i``, covering 35-100 % of the photo's area, aspect 3:4 to 4:3), flipped
left to right every other round, resized to the model's input size with bilinear filtering and
normalized as the kit says. A sample is built when it is read, never stored, so the data source
itself takes no memory that grows with the sample count.

Every calibration runs in a freshly spawned process; its peak memory is that process's ``VmHWM``
(as in ``benchmarks/bench.py``: ``ru_maxrss`` would survive exec and include the parent), which
includes the interpreter and library imports. Time is the child's wall time from the start of the
work to the ranges (model loading and, for qonnx, normalization included), onnxruntime with its
default threads. onnxruntime's histogram calibrators keep every tapped output of every sample; a
run whose projected peak (the previous sample count's memory per sample, times the sample count)
exceeds ``--ort-limit-gb`` (8 GB: the machine is shared) is skipped and shown as such.

Checks: qonnx's peak at 256 samples is at most 1.2x its peak at 16, for every method and model;
qonnx's Entropy on YOLOv8n with 64 samples is at least 3x faster than onnxruntime's and takes at
most a quarter of its peak memory (the time ratio is the median over three pairs of runs, each
pair back to back, since the machine is shared); qonnx's ranges with batch size 1 and 8 (64
samples, YOLOv8n) agree within one histogram bin.

Results: ``<out>/calib.json`` and ``<out>/calib.md``, written atomically; the markdown is printed.
Usage: ``python benchmarks/calib_bench.py [--models yolov8n,ppocr-det] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from isolation import run_isolated  # benchmarks/isolation.py, beside this script

REPO_ROOT = Path(__file__).resolve().parent.parent
CASES = {"yolov8n": (320, 320), "ppocr-det": (480, 480)}
SAMPLE_COUNTS = (16, 64, 256)
EXTRA_OURS = {"yolov8n": (1024,)}
EXTRA_METHODS = ("entropy",)  # the methods run at the extra sample counts
OUR_METHODS = ("minmax", "percentile", "entropy", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
SAME_METHOD = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
QUANTIZED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]
BATCH_CHECK = ("yolov8n", 64, 8)  # model, samples, batch size compared with batch size 1


# ----------------------------------------------------------------------------------------------
# The data: more samples from ten photos


def make_source(model_name: str, count: int, model):
    """``count`` deterministic crops / flips of the calibration photos, built on read (see the docstring)."""
    import numpy as np
    from PIL import Image

    from qonnx.calib.sources import Source, input_specs
    from qonnx.models.data import photo_folders
    from qonnx.models.kit import KIT

    height, width = CASES[model_name]
    preprocess = KIT[model_name].preprocess
    folder = photo_folders()[0]
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    photos = []
    for path in paths:
        with Image.open(path) as image:
            photos.append(image.convert("RGB"))
    (spec,) = input_specs(model)
    mean, std = np.asarray(preprocess.mean, np.float32), np.asarray(preprocess.std, np.float32)

    class CropsOfPhotos(Source):
        description = f"{count} crops/flips of {len(photos)} photos in {folder}, {height}x{width}"

        def __len__(self) -> int:
            return count

        def __getitem__(self, index: int):
            photo = photos[index % len(photos)]
            if index >= len(photos):
                rng = np.random.default_rng(index)
                area = rng.uniform(0.35, 1.0) * photo.width * photo.height
                aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
                w = min(photo.width, max(8, int(round(math.sqrt(area * aspect)))))
                h = min(photo.height, max(8, int(round(math.sqrt(area / aspect)))))
                left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
                photo = photo.crop((left, top, left + w, top + h))
                if (index // len(photos)) % 2:
                    photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            pixels = np.asarray(photo.resize((width, height), Image.Resampling.BILINEAR), np.float32) / 255.0
            pixels = (pixels - mean) / std
            return {spec.name: np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])}

    return CropsOfPhotos()


# ----------------------------------------------------------------------------------------------
# The calibrations, each in a fresh process


def calibrate_qonnx(model_name: str, count: int, method: str, batch_size: int) -> dict[str, Any]:
    import onnx_ir as ir

    from qonnx.calib.collect import collect_ranges
    from qonnx.calib.observers import MSE, factory_for
    from qonnx.models.kit import fetch
    from qonnx.passes.insert_qdq import tensors_to_calibrate
    from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline
    from qonnx.targets import get_target

    started = time.perf_counter()
    model = ir.load(fetch(model_name))
    context = Context()
    run_pipeline(model, build(parse_pipeline("normalize,resolve-policy"), context), context)
    tensors = tensors_to_calibrate(model, get_target("cpu"))
    prepared = time.perf_counter()
    observer = MSE(dtype="uint8") if method == "mse" else factory_for(method)()  # the cpu target's UINT8
    table = collect_ranges(model, make_source(model_name, count, model), tensors, observer=observer, batch_size=batch_size)
    done = time.perf_counter()
    return {
        "time_s": done - started,
        "collect_s": done - prepared,
        "tensors": len(tensors),
        "passes": table.passes,
        "ranges": {k: [v.lo, v.hi, v.resolution] for k, v in table.ranges.items()},
    }


def calibrate_onnxruntime(model_name: str, count: int, method: str, workdir: str, op_types: list[str] | None = None) -> dict[str, Any]:
    import onnx_ir as ir
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    from qonnx.models.kit import fetch

    started = time.perf_counter()
    path = fetch(model_name)
    source = make_source(model_name, count, ir.load(path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.index = 0

        def get_next(self):
            if self.index >= len(source):
                return None
            self.index += 1
            return source[self.index - 1]

    calibrator = create_calibrator(
        path,
        op_types_to_calibrate=op_types,
        augmented_model_path=str(Path(workdir) / "augmented.onnx"),
        calibrate_method=getattr(CalibrationMethod, method),
    )
    calibrator.collect_data(Reader())
    ranges = calibrator.compute_data()
    return {"time_s": time.perf_counter() - started, "tensors": len(ranges.data)}




# ----------------------------------------------------------------------------------------------
# The run


def progress(text: str) -> None:
    print(f"[calib-bench] {text}", file=sys.stderr, flush=True)


def _record(kind: str, model: str, method: str, count: int, outcome: dict[str, Any], batch_size: int = 1) -> dict[str, Any]:
    record = {"kind": kind, "model": model, "method": method, "samples": count, "batch_size": batch_size}
    if outcome.get("skipped"):
        record["skipped"] = outcome["skipped"]
        return record
    record["ok"] = outcome["ok"]
    record["rss_at_start_mib"] = round(outcome.get("rss_at_start_mib", 0.0), 1)
    record["peak_rss_mib"] = round(outcome.get("peak_rss_mib", 0.0), 1)
    if outcome["ok"]:
        result = outcome["result"]
        record["time_s"] = round(result["time_s"], 3)
        record["tensors"] = result["tensors"]
        if "collect_s" in result:
            record["collect_s"] = round(result["collect_s"], 3)
            record["passes"] = result["passes"]
    else:
        record["error"] = outcome["error"]
    return record


def bench_model(model_name: str, scratch: Path, limit_gb: float, timeout_s: float) -> tuple[list[dict], dict]:
    records: list[dict] = []
    batch_ranges: dict[int, dict] = {}
    for count in (*SAMPLE_COUNTS, *EXTRA_OURS.get(model_name, ())):
        for method in OUR_METHODS if count in SAMPLE_COUNTS else EXTRA_METHODS:
            progress(f"{model_name}: qonnx {method}, {count} samples")
            outcome = run_isolated(calibrate_qonnx, (model_name, count, method, 1), timeout_s, scratch)
            records.append(_record("qonnx", model_name, method, count, outcome))
            if (model_name, count) == BATCH_CHECK[:2] and outcome["ok"]:
                batch_ranges.setdefault(method, {})[1] = outcome["result"]["ranges"]
    check_batches: dict[str, Any] = {}
    if model_name == BATCH_CHECK[0]:
        _, count, batch = BATCH_CHECK
        for method in OUR_METHODS:
            progress(f"{model_name}: qonnx {method}, {count} samples, batch size {batch}")
            outcome = run_isolated(calibrate_qonnx, (model_name, count, method, batch), timeout_s, scratch)
            records.append(_record("qonnx", model_name, method, count, outcome, batch_size=batch))
            if outcome["ok"] and 1 in batch_ranges.get(method, {}):
                check_batches[method] = compare_ranges(batch_ranges[method][1], outcome["result"]["ranges"])
    for method in ORT_METHODS:
        previous = None
        for count in SAMPLE_COUNTS:
            if previous is not None and previous.get("ok"):
                start = previous["rss_at_start_mib"]
                projected_gb = (start + (previous["peak_rss_mib"] - start) * count / previous["samples"]) / 1024
                if projected_gb > limit_gb:
                    progress(f"{model_name}: ORT {method}, {count} samples skipped (projected {projected_gb:.1f} GB)")
                    records.append(_record("ort", model_name, method, count, {"skipped": f"projected {projected_gb:.1f} GB"}))
                    continue
            progress(f"{model_name}: ORT {method}, {count} samples")
            outcome = run_isolated(calibrate_onnxruntime, (model_name, count, method, str(scratch)), timeout_s, scratch)
            previous = _record("ort", model_name, method, count, outcome)
            records.append(previous)
    if model_name == BATCH_CHECK[0]:
        count = BATCH_CHECK[1]
        progress(f"{model_name}: ORT Entropy on the same tensors as qonnx, {count} samples")
        outcome = run_isolated(calibrate_onnxruntime, (model_name, count, "Entropy", str(scratch), QUANTIZED_OPS), timeout_s, scratch)
        records.append(_record("ort-same-tensors", model_name, "Entropy", count, outcome))
        for repeat in (1, 2):  # back-to-back pairs for the speed check
            progress(f"{model_name}: speed pair {repeat}: qonnx entropy and ORT Entropy, {count} samples")
            ours = run_isolated(calibrate_qonnx, (model_name, count, "entropy", 1), timeout_s, scratch)
            theirs = run_isolated(calibrate_onnxruntime, (model_name, count, "Entropy", str(scratch)), timeout_s, scratch)
            records.append({**_record("qonnx", model_name, "entropy", count, ours), "repeat": repeat})
            records.append({**_record("ort", model_name, "Entropy", count, theirs), "repeat": repeat})
    return records, check_batches


def compare_ranges(one: dict[str, list[float]], other: dict[str, list[float]]) -> dict[str, Any]:
    """Largest difference of the ranges of two tables, in bins (the coarser bin of the two)."""
    worst_bins, worst_abs = 0.0, 0.0
    for name, (lo, hi, width) in one.items():
        lo2, hi2, width2 = other[name]
        diff = max(abs(lo - lo2), abs(hi - hi2))
        worst_abs = max(worst_abs, diff)
        bin_width = max(width, width2)
        worst_bins = max(worst_bins, diff / bin_width if bin_width > 0 else (0.0 if diff == 0 else math.inf))
    return {"tensors": len(one), "max_abs_difference": worst_abs, "max_difference_in_bins": worst_bins,
            "within_one_bin": worst_bins <= 1.0}


def _find(records, **where) -> dict | None:
    """The first record (not a repeat) with these fields."""
    where.setdefault("repeat", None)
    for record in records:
        if all(record.get(k) == v for k, v in where.items()):
            return record
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def checks(records: list[dict], batch_checks: dict[str, dict]) -> list[dict[str, Any]]:
    out = []
    for model in CASES:
        for method in OUR_METHODS:
            small = _find(records, kind="qonnx", model=model, method=method, samples=SAMPLE_COUNTS[0], batch_size=1)
            large = _find(records, kind="qonnx", model=model, method=method, samples=SAMPLE_COUNTS[-1], batch_size=1)
            if small and large and small.get("ok") and large.get("ok"):
                ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
                out.append({"check": f"{model} qonnx {method}: peak RSS at {SAMPLE_COUNTS[-1]} / at {SAMPLE_COUNTS[0]} <= 1.2", "value": round(ratio, 3), "met": ratio <= 1.2})
    count = BATCH_CHECK[1]
    pairs = []
    for repeat in (None, 1, 2):
        ours = _find(records, kind="qonnx", model="yolov8n", method="entropy", samples=count, batch_size=1, repeat=repeat)
        theirs = _find(records, kind="ort", model="yolov8n", method="Entropy", samples=count, repeat=repeat)
        if ours and theirs and ours.get("ok") and theirs.get("ok"):
            pairs.append((theirs["time_s"] / ours["time_s"], ours["peak_rss_mib"] / theirs["peak_rss_mib"]))
    if pairs:
        speed = sorted(p[0] for p in pairs)[len(pairs) // 2]
        memory = max(p[1] for p in pairs)
        out.append({"check": f"yolov8n Entropy, {count} samples: ORT time / qonnx time >= 3 (median of {len(pairs)} pairs: "
                    + ", ".join(f"{p[0]:.2f}" for p in pairs) + ")", "value": round(speed, 2), "met": speed >= 3})
        out.append({"check": f"yolov8n Entropy, {count} samples: qonnx peak / ORT peak <= 0.25 (worst pair)",
                    "value": round(memory, 3), "met": memory <= 0.25})
    ours = _find(records, kind="qonnx", model="yolov8n", method="entropy", samples=count, batch_size=1)
    same = _find(records, kind="ort-same-tensors", model="yolov8n", method="Entropy", samples=count)
    if ours and same and ours.get("ok") and same.get("ok"):
        out.append({"check": f"(information) yolov8n Entropy, {count} samples, ORT on qonnx's tensors: ORT time / qonnx time",
                    "value": round(same["time_s"] / ours["time_s"], 2), "met": None})
        out.append({"check": f"(information) yolov8n Entropy, {count} samples, ORT on qonnx's tensors: qonnx peak / ORT peak",
                    "value": round(ours["peak_rss_mib"] / same["peak_rss_mib"], 3), "met": None})
    for method, result in batch_checks.items():
        out.append({"check": f"yolov8n qonnx {method}, {count} samples: batch 1 vs {BATCH_CHECK[2]} within one bin",
                    "value": result["max_difference_in_bins"], "met": result["within_one_bin"]})
    return out


# ----------------------------------------------------------------------------------------------
# Report


def _cell_time(record: dict | None) -> str:
    if record is None:
        return "—"
    if "skipped" in record:
        return f"skipped ({record['skipped']})"
    if not record.get("ok"):
        return f"failed: {record.get('error', '')[:80]}"
    return f"{record['time_s']:.1f}"


def _cell_rss(record: dict | None) -> str:
    if record is None or "skipped" in record or not record.get("ok"):
        return "—"
    return f"{record['peak_rss_mib']:.0f}"


def _cell_ratio(value: float | None, digits: str = ".2f") -> str:
    return "—" if value is None else f"{value:{digits}}x"


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        "# Calibration at scale: qonnx beside onnxruntime.quantization",
        "",
        f"{env['date']}, qonnx {env['qonnx_revision']}, onnxruntime {env['onnxruntime_version']}, numpy {env['numpy_version']}, "
        f"Python {env['python_version']}; {env['cpu']} ({env['cpus']} CPUs usable), load average {env['load_average_at_start']} "
        f"at start, {env['load_average_at_end']} at end; {doc['total_s']:.0f} s in all.",
        "",
        "Time: seconds from the start of the work to the ranges, model loading included (qonnx: also normalization). "
        "Peak: the calibrating process's VmHWM in MiB, interpreter and imports included "
        f"(about {doc['baseline_mib']:.0f} MiB before the work starts). Ratios: ORT / qonnx, for the same method and samples; "
        "> 1 means qonnx is faster or smaller. Samples: crops and flips of the ten calibration photos (see calib_bench.py).",
        "",
    ]
    records = doc["records"]
    for model in doc["models"]:
        lines += [f"## {model} ({CASES[model][0]}x{CASES[model][1]})", ""]
        lines.append("| method | samples | qonnx time (s) | qonnx peak (MiB) | ORT time (s) | ORT peak (MiB) | time ratio | peak ratio |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        counts = sorted({r["samples"] for r in records if r["model"] == model})
        for method in OUR_METHODS:
            for count in counts:
                ours = _find(records, kind="qonnx", model=model, method=method, samples=count, batch_size=1)
                ort_method = SAME_METHOD.get(method)
                theirs = _find(records, kind="ort", model=model, method=ort_method, samples=count) if ort_method else None
                if ours is None and theirs is None:
                    continue
                ok = ours is not None and ours.get("ok") and theirs is not None and theirs.get("ok")
                time_ratio = _ratio(theirs["time_s"], ours["time_s"]) if ok else None
                rss_ratio = _ratio(theirs["peak_rss_mib"], ours["peak_rss_mib"]) if ok else None
                ort_time = _cell_time(theirs) if ort_method else "(no ORT method)"
                lines.append(
                    f"| {method} | {count} | {_cell_time(ours)} | {_cell_rss(ours)} | {ort_time} | {_cell_rss(theirs)} | "
                    f"{_cell_ratio(time_ratio)} | {_cell_ratio(rss_ratio)} |"
                )
        tensors = {r["kind"]: r.get("tensors") for r in records if r["model"] == model and r.get("ok")}
        lines += ["", f"Tensors calibrated: qonnx {tensors.get('qonnx')} (the activations the CPU target quantizes), "
                  f"ORT {tensors.get('ort')} (its default: every float tensor).", ""]
    lines += ["## Checks", "", "| check | value | met |", "|---|---:|---|"]
    for check in doc["checks"]:
        met = "—" if check["met"] is None else "yes" if check["met"] else "NO"
        lines.append(f"| {check['check']} | {check['value']} | {met} |")
    same = [r for r in records if r["kind"] == "ort-same-tensors"]
    if same:
        lines += ["", "ORT on the tensors qonnx calibrates (op_types_to_calibrate = Conv, ConvTranspose, Gemm, MatMul): " + ", ".join(
            f"{r['model']} {r['method']} {r['samples']} samples: {_cell_time(r)} s, {_cell_rss(r)} MiB, {r.get('tensors')} tensors" for r in same) + "."]
    repeats = [r for r in records if r.get("repeat")]
    if repeats:
        lines += ["", "Speed pairs (back to back): " + ", ".join(
            f"{r['kind']} {r['method']} {_cell_time(r)} s / {_cell_rss(r)} MiB" for r in repeats) + "."]
    batched = [r for r in records if r["batch_size"] != 1]
    if batched:
        lines += ["", f"Batch size {BATCH_CHECK[2]} runs ({BATCH_CHECK[1]} samples, YOLOv8n): " + ", ".join(
            f"{r['method']} {_cell_time(r)} s / {_cell_rss(r)} MiB" for r in batched) + "."]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    import numpy as np
    import onnxruntime

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    # Results written earlier in the same `make bench` run do not make the code uncommitted.
    dirty = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    revision = git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else "")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "qonnx_revision": revision,
        "onnxruntime_version": onnxruntime.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "ort_settings": {"op_types_to_calibrate": "None (all; the default) and, in one row, " + ", ".join(QUANTIZED_OPS), "Entropy": "num_bins=128, num_quantized_bins=128 (defaults)",
                         "Percentile": "num_bins=2048, percentile=99.999, symmetric (defaults)"},
        "qonnx_settings": {"percentile": "99.99, two-sided", "entropy": "2048 fine / 128 quantized bins", "mse": "uint8",
                           "histogram_bins": 4096, "batch_size": 1, "memory_budget": "2GiB (default)"},
    }


def main(argv: list[str] | None = None) -> int:
    global SAMPLE_COUNTS, EXTRA_OURS, BATCH_CHECK
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--ort-limit-gb", type=float, default=8.0, help="skip ORT runs projected to peak above this")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to one calibration")
    parser.add_argument("--samples", default=",".join(map(str, SAMPLE_COUNTS)), help="sample counts for both (a quick look: 4,8)")
    parser.add_argument("--extra", default=",".join(map(str, EXTRA_OURS["yolov8n"])), help="further YOLOv8n sample counts for qonnx's Entropy only")
    args = parser.parse_args(argv)
    SAMPLE_COUNTS = tuple(int(x) for x in args.samples.split(",") if x)
    EXTRA_OURS = {"yolov8n": tuple(int(x) for x in args.extra.split(",") if x)}
    if BATCH_CHECK[1] not in SAMPLE_COUNTS:
        BATCH_CHECK = (BATCH_CHECK[0], SAMPLE_COUNTS[min(1, len(SAMPLE_COUNTS) - 1)], BATCH_CHECK[2])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in CASES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CASES)}")

    import tempfile

    from qonnx.ir import atomic_write

    started = time.perf_counter()
    doc: dict[str, Any] = {"environment": environment(), "models": models, "records": [], "batch_checks": {}}
    with tempfile.TemporaryDirectory(prefix="qonnx-calib-bench-") as scratch:
        for model in models:
            records, batch_checks = bench_model(model, Path(scratch), args.ort_limit_gb, args.timeout)
            doc["records"] += records
            if batch_checks:
                doc["batch_checks"][model] = batch_checks
    doc["total_s"] = round(time.perf_counter() - started, 1)
    doc["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    starts = [r["rss_at_start_mib"] for r in doc["records"] if r.get("ok")]
    doc["baseline_mib"] = sorted(starts)[len(starts) // 2] if starts else 0.0
    doc["checks"] = checks(doc["records"], doc["batch_checks"].get(BATCH_CHECK[0], {}))
    report = markdown(doc)
    atomic_write(args.out / "calib.json", lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))
    atomic_write(args.out / "calib.md", lambda f: f.write(report.encode()))
    print(report)
    progress(f"done in {doc['total_s']:.0f} s; wrote {args.out / 'calib.json'} and {args.out / 'calib.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
