"""The quantization report: a JSON document (schema ``qonnx.report/1``, see README) and a short table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qonnx.ir import atomic_write

__all__ = ["SCHEMA", "write_json", "summary_table"]

SCHEMA = "qonnx.report/1"


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` atomically (temporary file in the same folder, fsync, rename)."""
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"  # fails before anything is written
    return atomic_write(path, lambda f: f.write(text.encode()))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _output_name(report: dict[str, Any]) -> str:
    """What the output is called: "fp16"/"bf16" for a converted model, "quantized" for INT8."""
    precision = report.get("precision", "int8")
    return precision if precision in ("fp16", "bf16") else "quantized"


def summary_table(report: dict[str, Any]) -> str:
    """A few lines for people: sizes, formats, fidelity per output, latency, time spent."""
    lines = []
    src, out = report["input"], report["output"]
    lines.append(f"model      {src['path']} -> {out['path']}")
    lines.append(
        f"size       {_mib(src['bytes'])} -> {_mib(out['bytes'])} ({report['size_ratio']:.2f}x of FP32)"
    )
    for record in report["passes"]:
        delta = ", ".join(f"{op} {n:+d}" for op, n in record["op_delta"].items()) or ("changed" if record["modified"] else "-")
        lines.append(f"pass       {record['name']:<26} {record['seconds'] * 1e3:8.1f} ms  {delta}")
    counts: dict[str, int] = {}
    for entry in report["nodes"].values():
        counts[entry["format"]] = counts.get(entry["format"], 0) + 1
    lines.append("nodes      " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    fusion = report.get("fusion")
    if fusion:
        kernels = sum(fusion["integer_kernels"].values())
        islands = sum(fusion["float_islands"].values())
        lines.append(
            f"fusion     {kernels} integer kernels in onnxruntime, {fusion['quantize_linear']} Q / "
            f"{fusion['dequantize_linear']} DQ left, {islands} float islands, {len(fusion['unfused'])} unfused"
        )
    fidelity = report.get("fidelity")
    if fidelity:
        lines.append(f"fidelity   on {fidelity['samples']} held-out samples ({fidelity['data']})")
        for name, m in fidelity["outputs"].items():
            lines.append(f"  {name:<30} SQNR {m['sqnr_db']:7.2f} dB   cosine {m['cosine']:.5f}")
    else:
        lines.append("fidelity   not measured (no data)")
    sensitivity = report.get("sensitivity")
    if sensitivity:
        lines.append(
            f"activations weights only {sensitivity['weights_only_db']:.1f} dB, all {sensitivity['all_db']:.1f} dB; "
            "one node's activations at a time, worst first:"
        )
        for entry in sensitivity["nodes"][:5]:
            lines.append(f"  {entry['node']:<30} {entry['op_type']:<8} {entry['sqnr_db']:7.2f} dB")
    latency = report.get("latency")
    if latency:
        lines.append(
            f"latency    FP32 {latency['fp32_ms']:.2f} ms, {_output_name(report)} {latency['quantized_ms']:.2f} ms "
            f"({latency['speedup']:.2f}x, median of {latency['runs']}, {latency['threads']} threads)"
        )
    if report.get("uncalibrated"):
        lines.append("WARNING    calibrated on random data: ranges do not reflect real inputs")
    lines.append(f"time       {report['timing']['total_s']:.1f} s")
    return "\n".join(lines)
