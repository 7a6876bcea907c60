"""The quantization report: a JSON document (schema ``qonnx.report/1``, see README) and a short table."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx_ir as ir

import qonnx
from qonnx.ir import atomic_write
from qonnx.policy import PLAN_KEY
from qonnx.verdict import search_samples

__all__ = ["SCHEMA", "Report", "assemble", "node_formats", "write_json", "summary_table"]

SCHEMA = "qonnx.report/1"

Report = dict[str, Any]  # the JSON document; its fields are listed in the README

# Where each pass's record goes, in the order the document lists them; records of other keys follow.
_RECORD_ORDER = ("calibration", "fusion", "target_rules", "weight_only", "fp8_islands", "float_islands", "float_sensitivity", "conversion", "fidelity", "sensitivity", "latency")
_FLOAT_ONLY = ("float_islands", "float_sensitivity", "conversion")  # present (null when not made) for fp16/bf16


def node_formats(model: ir.Model) -> dict[str, dict[str, Any]]:
    """The format of every node but the Q/DQ ones, from the plan in the model's metadata; nodes
    inside If/Loop/Scan bodies follow the main graph's (``"subgraph": true``)."""
    plan = json.loads(model.metadata_props.get(PLAN_KEY, "{}"))
    specs, reasons = plan.get("specs", {}), plan.get("reasons", {})
    formats = {name: specs.get(spec_id, {"format": spec_id})["format"] for name, spec_id in plan.get("nodes", {}).items()}
    result = {}
    for index, node in enumerate(model.graph):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            continue
        name = node.name or f"{node.op_type}_{index}"
        entry = {"op_type": node.op_type, "format": formats.get(name, "float")}
        if name in reasons:
            entry["reason"] = reasons[name]
        result[name] = entry
    for node in model.graph.all_nodes():
        if node.graph is model.graph or node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            continue
        if node.name and node.name not in result and (node.name in formats or node.name in reasons):
            entry = {"op_type": node.op_type, "format": formats.get(node.name, "float"), "subgraph": True}
            if node.name in reasons:
                entry["reason"] = reasons[node.name]
            result[node.name] = entry
    return result


def assemble(
    *,
    config: Any,
    input_facts: dict[str, Any],
    output_facts: dict[str, Any],
    steps: Iterable[Any],
    records: Iterable[Any],
    published: Iterable[Any],
    model: ir.Model,
    uncalibrated: bool,
    onnxruntime_version: str,
) -> Report:
    """The report of one run, from the facts of the input and output files, the pass records and
    the typed records the passes published (each ``to_report()`` gives its entries)."""
    entries: dict[str, Any] = {}
    for record in published:
        entries.update(record.to_report())
    precision = config.precision
    doc: Report = {
        "schema": SCHEMA,
        "qonnx_version": qonnx.__version__,
        "onnxruntime_version": onnxruntime_version,
        "input": input_facts,
        "output": output_facts,
        "target": config.effective_target,
        "precision": precision,
        "mode": config.mode,
        "config": config.to_dict(),
        "reduce_range": entries.pop("reduce_range", False),
        "reduce_range_ops": entries.pop("reduce_range_ops", []),
        "pipeline": ",".join(str(s) for s in steps),
        "passes": [r.to_dict() for r in records],
        "calibration": entries.pop("calibration", None),
        "fusion": entries.pop("fusion", None),
        "uncalibrated": uncalibrated,
        "nodes": node_formats(model),
    }
    if precision in ("fp16", "bf16"):
        doc.update({key: entries.pop(key, None) for key in _FLOAT_ONLY})
    doc["size_ratio"] = round(output_facts["bytes"] / input_facts["bytes"], 4)
    for key in _RECORD_ORDER:
        if key in entries:
            doc[key] = entries.pop(key)
    doc.update(entries)
    return doc


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` atomically (temporary file in the same folder, fsync, rename)."""
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"  # fails before anything is written
    return atomic_write(path, lambda f: f.write(text.encode()))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _spread(latency: dict) -> str:
    """``, quartiles 0.95-1.10 over 10 cycles``: the spread of the paired ratio, when recorded."""
    quartiles = latency.get("speedup_quartiles")
    if not quartiles or latency.get("cycles") is None:
        return ""
    return f", quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f} over {latency['cycles']} cycles"


def _output_name(report: dict[str, Any]) -> str:
    """What the output is called: "fp16"/"bf16" for a converted model, "quantized" for INT8."""
    precision = report.get("precision", "int8")
    return precision if precision in ("fp16", "bf16") else "quantized"


def speed_check_text(check: dict[str, Any]) -> str:
    """The automatic policy's speed check (``AutoPolicyRecord.speed_check``) in one sentence."""
    figures = ", ".join(
        f"point {p['point']} {p['speedup']:.2f}x"
        + (f" against the plan's {p['plan_speedup']:.2f}x" if p.get("plan_speedup") is not None else "")
        + (f" ({q[0]:.2f}-{q[2]:.2f}x the plan's)" if (q := p.get("over_plan")) else " (misses the target)")
        for p in check["points"]
    )
    chosen = "plan" if check["chosen"] == "plan" else f"point {check['chosen']}"
    return f"the fastest points timed again beside the plan, FP32 speed (quartiles over the plan): {figures}: {chosen} chosen"


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
    weight_only = report.get("weight_only")
    if weight_only and weight_only["nodes"]:
        made = ", ".join(f"{op} {n}" for op, n in weight_only["nodes"].items())
        bits = ", ".join(f"{n} in {b} bits" for b, n in weight_only["bits"].items())
        lines.append(
            f"weights    {made} ({bits}; {weight_only['format']}, {weight_only['algorithm']}): "
            f"{_mib(weight_only['bytes_before'])} -> {_mib(weight_only['bytes_after'])}"
            + (f"; tied lm_head: {', '.join(weight_only['tied'])}" if weight_only["tied"] else "")
        )
    fusion = report.get("fusion")
    if fusion:
        kernels = sum(fusion["integer_kernels"].values())
        islands = sum(fusion["float_islands"].values())
        lines.append(
            f"fusion     {kernels} integer kernels in onnxruntime, {fusion['quantize_linear']} Q / "
            f"{fusion['dequantize_linear']} DQ left, {islands} float islands, {len(fusion['unfused'])} unfused"
        )
    rules = report.get("target_rules")
    if rules and rules["target"] != "cpu":
        found = len(rules["violations"])
        lines.append(f"target     {rules['target']}: {len(rules['rules'])} Q/DQ rules, {found} violation{'s' * (found != 1)} (qonnx check --target {rules['target']})")
        for line in rules["not_verified"]:
            lines.append(f"  not verified: {line}")
    fidelity = report.get("fidelity")
    if fidelity:
        how = ", Q/DQ as reference ops" if fidelity.get("qdq") == "reference" else ""
        lines.append(f"fidelity   on {fidelity['samples']} held-out samples ({fidelity['data']}{how})")
        for name, m in fidelity["outputs"].items():
            task = "".join(f"   {label} {m[key]:.4f}" for key, label in (("top1_agreement", "top-1"), ("pooled_cosine", "pooled cosine"), ("next_token_agreement", "next-token top-1")) if key in m)
            if "perplexity" in m:
                task += f"   perplexity {m['perplexity']:.3f} (float {m['reference_perplexity']:.3f})   KL {m['kl_divergence']:.4f}"
            lines.append(f"  {name:<30} SQNR {m['sqnr_db']:7.2f} dB   cosine {m['cosine']:.5f}{task}")
    elif (report.get("config") or {}).get("evaluation", {}).get("skip"):
        lines.append("fidelity   not measured (--no-eval)")
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
    auto = report.get("auto_policy")
    if auto:
        kinds: dict[str, int] = {}
        for kind in auto.get("formats", {}).values():
            kinds[kind] = kinds.get(kind, 0) + 1
        held = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
        line = (
            f"auto       {auto['metric']} >= {auto['target']:g}: {auto['achieved']:g} {search_samples(auto)} "
            f"({'met' if auto['met'] else 'missed'}); not in static INT8: {held}; {auto['evaluations']} evaluations"
        )
        if auto.get("speedup") is not None:
            line += f"; {auto['speedup']:.2f}x FP32 as the search timed it"
        if auto.get("binding") and not auto.get("binding_reason"):
            line += f"; binding: {auto['binding']}"
        lines.append(line)
        step = auto.get("speed_step")
        if step:
            lines.append(
                f"  speed step: the plan ran at {step['plan_speedup']:.2f}x FP32; with its {step['islands']} nodes other than "
                f"Conv/Gemm/MatMul float too, {step['islands_value']:g} at {step['islands_speedup']:.2f}x"
                + (f" ({q[0]:.2f}-{q[2]:.2f}x the plan's, quartiles)" if (q := step.get("islands_over_plan")) else "")
                + f": {step['chosen']} chosen"
            )
        if auto.get("speed_check"):
            lines.append(f"  speed check: {speed_check_text(auto['speed_check'])}")
        if auto.get("binding_reason"):
            lines.append(f"  binds: {auto['binding_reason']}")
        lines += [f"  note: {note}" for note in auto.get("notes") or []]
    latency = report.get("latency")
    if latency:
        lines.append(
            f"latency    FP32 {latency['fp32_ms']:.2f} ms, {_output_name(report)} {latency['quantized_ms']:.2f} ms "
            f"({latency['speedup']:.2f}x{_spread(latency)}, {latency['runs']} runs each, interleaved, {latency['threads']} threads)"
        )
    if report.get("uncalibrated"):
        lines.append("WARNING    calibrated on random data: ranges do not reflect real inputs")
    lines.append(f"time       {report['timing']['total_s']:.1f} s")
    if report.get("verdict"):
        from qonnx.verdict import Verdict

        lines.append(Verdict(**report["verdict"]).line())
    return "\n".join(lines)
