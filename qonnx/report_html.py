"""The report as one self-contained HTML page: inline CSS and inline SVG drawn here, no script, no
network, no external font.

``render_html(report)`` reads the JSON document of ``qonnx.report`` (schema ``qonnx.report/1``) and
draws what it holds: the header (input → output, sizes, target, precision, mode, the verdict), the
fidelity table, the precision of every node along the graph, the per-layer sensitivity bars (local
and global; for an INT4 analysis the layer groups' bars and figures instead), the accuracy-versus-fraction-in-INT8 curve of the automatic mixed-precision search, the
activation sensitivity, latency and timing. A section whose data the report lacks is a one-line
"not measured" note. Every field may be missing or null: the page never fails on a partial report.

Every string from the report (node names come from user models) is escaped with ``html.escape``.
The SVG elements carry classes that the tests count: ``cell`` (one per node), ``bar-pair`` (one
per sensitivity node), ``bar-group`` (one per INT4 layer group), ``point`` (one per curve point, ``chosen`` on the chosen one), ``target``.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qonnx.ir import atomic_write
from qonnx.verdict import search_samples

__all__ = ["render_html", "write_html", "FORMAT_COLORS", "MAX_BARS"]

# Colors per node format (Okabe-Ito, readable by most color-blind eyes); other formats take the spares.
FORMAT_COLORS = {
    "int8": "#0072B2",
    "int4": "#009E73",
    "fp16": "#E69F00",
    "bf16": "#CC79A7",
    "fp8": "#56B4E9",
    "float": "#BDBDBD",
}
_SPARE_COLORS = ("#D55E00", "#F0E442", "#6A3D9A", "#8C564B", "#17BECF", "#333333")
_LOCAL_COLOR, _GLOBAL_COLOR, _ACT_COLOR = "#0072B2", "#D55E00", "#56B4E9"

MAX_BARS = 40  # the sensitivity charts show the worst 40 nodes

_METRICS = {"sqnr_db": ("SQNR", "dB"), "cosine": ("cosine", ""), "top1": ("top-1 agreement", "")}

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", sans-serif;
  margin: 0; background: #f4f5f7; color: #1d2330; font-size: 14px; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; word-break: break-all; }
h2 { font-size: 17px; margin: 0 0 10px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 14px 18px; margin: 14px 0; }
section.missing { padding: 8px 18px; }
section.missing h2 { display: inline; font-size: 15px; margin-right: 10px; }
p.not-measured { display: inline; color: #6b7280; margin: 0; }
p.note, .muted { color: #6b7280; }
p.note { margin: 6px 0; font-size: 13px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #eceef2; vertical-align: top; }
th { font-weight: 600; color: #374151; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { width: 150px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12.5px; word-break: break-all; }
.verdict { border-radius: 6px; padding: 10px 14px; margin: 10px 0 2px; font-size: 15px; }
.verdict.met { background: #e5f5ec; border: 1px solid #7cc49a; }
.verdict.not-met { background: #fdecea; border: 1px solid #e58f86; }
.verdict.unknown { background: #f1f2f4; border: 1px solid #c9ced6; }
.verdict ul { margin: 6px 0 0; padding-left: 20px; font-size: 14px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; }
.badge.met { background: #1f8a4c; } .badge.not-met { background: #c0392b; } .badge.unknown { background: #7b8494; }
.warning { color: #a04000; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 4px 0 8px; }
.legend span.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
svg { max-width: 100%; height: auto; display: block; }
svg text { font-family: inherit; fill: #1d2330; }
svg .axis text, svg text.small { font-size: 11px; fill: #4b5563; }
svg .grid line { stroke: #e5e7eb; }
svg .zero { stroke: #9ca3af; }
svg .cell:hover, svg .bar:hover { opacity: 0.75; }
svg text.bar-missing { font-size: 11px; fill: #9ca3af; font-style: italic; }
svg .curve { fill: none; stroke: #0072B2; stroke-width: 2; }
svg .point circle.dot { fill: #0072B2; stroke: #fff; stroke-width: 1.5; }
svg .point.chosen circle.dot { fill: #D55E00; }
svg .point.chosen circle.ring { fill: none; stroke: #D55E00; stroke-width: 2; }
svg text.speed { font-size: 11px; fill: #374151; text-anchor: middle; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg text.axis-infinity { font-size: 13px; fill: #4b5563; }
svg .point.chosen text.speed { font-weight: 700; fill: #a63d00; }
svg line.target { stroke: #c0392b; stroke-width: 1.5; stroke-dasharray: 6 4; }
svg text.target-label { fill: #c0392b; font-size: 12px; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
details summary { cursor: pointer; color: #374151; margin: 4px 0; }
"""


# --------------------------------------------------------------------------------------------
# Small helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None."""
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    """A number for people, plain text; "–" for a missing one, ∞ for an infinite one."""
    if value is None:
        return "–"
    if not _is_number(value):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        text = "∞" if value > 0 else "−∞"
    else:
        try:
            text = format(value, spec)
        except (ValueError, OverflowError):  # a float where a count was expected, a huge integer
            text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


def _num(value: Any, spec: str = ".2f", unit: str = "") -> str:
    """``_fmt`` escaped for the page."""
    return _esc(_fmt(value, spec, unit))


def _metric_name(metric: Any) -> tuple[str, str]:
    """Display name and unit of a metric key."""
    if metric in _METRICS:
        return _METRICS[metric]
    return (str(metric) if metric else "value", "")


def _metric_text(metric: Any, value: Any) -> str:
    _, unit = _metric_name(metric)
    return _fmt(value, ".2f" if unit == "dB" else ".4f", unit)


def _metric_value(metric: Any, value: Any) -> str:
    return _esc(_metric_text(metric, value))


def _mib(n: Any) -> str:
    return _num(float(n) / 2**20, ".2f", "MiB") if _finite(n) is not None else _num(n)


def _dict(value: Any) -> dict:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _cls(text: Any) -> str:
    """A CSS class fragment from any text."""
    return re.sub(r"[^a-z0-9_-]", "_", str(text).lower())[:40] or "_"


def _short(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>'


def _missing(ident: str, title: str, why: str = "not measured") -> str:
    return f'<section id="{ident}" class="missing"><h2>{_esc(title)}</h2><p class="not-measured">{_esc(why)}</p></section>'


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = (), cls: str = "") -> str:
    """A table of already escaped cells; the columns in ``numeric`` are right-aligned."""
    numeric = set(numeric)

    def cells(tag: str, row: Iterable[str]) -> str:
        return "".join(f'<{tag} class="num">{c}</{tag}>' if i in numeric else f"<{tag}>{c}</{tag}>" for i, c in enumerate(row))

    body = "\n".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{cells('th', head)}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = span / max(ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    if not (math.isfinite(hi - lo) and hi - lo > 0):
        return [lo, hi]
    step = _nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9) * step
    values, v = [], first
    while v <= hi + step * 1e-6:
        values.append(round(v, 10))
        v += step
    return values


def _tick_label(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------------------------
# Sections


def _facts(model: Mapping[str, Any]) -> str:
    parts = []
    if model.get("bytes") is not None:
        parts.append(_mib(model.get("bytes")))
    if model.get("nodes") is not None:
        parts.append(f"{_num(model.get('nodes'), 'd')} nodes")
    if model.get("opset") is not None:
        parts.append(f"opset {_num(model.get('opset'), 'd')}")
    sha = model.get("sha256")
    if isinstance(sha, str) and sha:
        parts.append(f'sha256 <span class="mono">{_esc(sha[:16])}…</span>')
    return ", ".join(parts)


def _verdict(verdict: Any) -> str:
    verdict = _dict(verdict)
    if not verdict:
        return ""
    metric = verdict.get("metric")
    name, _ = _metric_name(metric)
    met = verdict.get("met")
    state = "met" if met is True else "not-met" if met is False else "unknown"
    word = {"met": "target met", "not-met": "target not met", "unknown": "not decided"}[state]
    source = verdict.get("source")
    threshold = verdict.get("threshold")
    text = f"{_esc(name)} {_metric_value(metric, verdict.get('value'))}"
    if threshold is not None:
        relation = "≥" if met is True else "&lt;" if met is False else "vs"
        text += f" {relation} threshold {_metric_value(metric, threshold)}"
        if source:
            text += f' <span class="muted">({_esc(source)})</span>'
    advice = [a for a in _list(verdict.get("advice")) if a is not None]
    items = "".join(f"<li>{_esc(a)}</li>" for a in advice)
    advice_html = f"<ul>{items}</ul>" if items else ""
    return f'<div class="verdict {state}" id="verdict"><span class="badge {state}">{word}</span> {text}{advice_html}</div>'


def _header(report: Mapping[str, Any]) -> str:
    src, out = _dict(report.get("input")), _dict(report.get("output"))
    src_name = Path(str(src.get("path"))).name if src.get("path") else "input"
    out_name = Path(str(out.get("path"))).name if out.get("path") else "output"
    rows = []
    if src:
        rows.append(("input", f'<span class="mono">{_esc(src.get("path", "–"))}</span><br>{_facts(src)}'))
    if out:
        rows.append(("output", f'<span class="mono">{_esc(out.get("path", "–"))}</span><br>{_facts(out)}'))
    if report.get("size_ratio") is not None:
        rows.append(("size", f"{_mib(src.get('bytes'))} → {_mib(out.get('bytes'))} ({_num(report.get('size_ratio'), '.3f')}× of the input)"))
    setting = [f"{k} <b>{_esc(report[k])}</b>" for k in ("target", "precision", "mode") if report.get(k) is not None]
    if setting:
        rows.append(("settings", ", ".join(setting)))
    if report.get("reduce_range"):
        ops = ", ".join(_esc(o) for o in _list(report.get("reduce_range_ops"))) or "weights"
        rows.append(("reduce range", f"7-bit weights for {ops}"))
    calibration = _dict(report.get("calibration"))
    if calibration:
        rows.append(("calibration", f"{_esc(calibration.get('method', '–'))} on {_num(calibration.get('samples'), 'd')} samples <span class=\"muted\">{_esc(calibration.get('data') or '')}</span>"))
    nodes = _dict(report.get("nodes"))
    if nodes:
        counts: dict[str, int] = {}
        for entry in nodes.values():
            fmt = str(_dict(entry).get("format") or "unknown")
            counts[fmt] = counts.get(fmt, 0) + 1
        rows.append(("nodes", ", ".join(f"{_esc(k)} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))))
    versions = [f"{name} {_esc(report[key])}" for key, name in (("qonnx_version", "qonnx"), ("onnxruntime_version", "onnxruntime")) if report.get(key)]
    if versions:
        rows.append(("made by", ", ".join(versions)))
    facts = "\n".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    analysis = not out and str(report.get("schema") or "").startswith("qonnx.analysis")  # no model written
    heading = f"{_esc(src_name)}: sensitivity analysis" if analysis else f"{_esc(src_name)} → {_esc(out_name)}"
    warning = '<p class="warning">Calibrated on random data: the ranges do not reflect real inputs.</p>' if report.get("uncalibrated") else ""
    return (
        f'<header id="header"><h1>{heading}</h1>\n'
        f'<p class="muted">qonnx report{"" if not report.get("schema") else " (" + _esc(report["schema"]) + ")"}</p>\n'
        f"{_verdict(report.get('verdict'))}\n{warning}"
        f'<section id="summary"><table class="facts">{facts}</table></section></header>'
    )


def _fidelity(report: Mapping[str, Any]) -> str:
    fidelity = _dict(report.get("fidelity"))
    outputs = _dict(fidelity.get("outputs"))
    if not outputs:
        return _missing("fidelity", "Fidelity", "not measured (no evaluation data)")
    rows = []
    for name, m in outputs.items():
        m = _dict(m)
        rows.append([f'<span class="mono">{_esc(name)}</span>', _num(m.get("sqnr_db"), ".2f"), _num(m.get("cosine"), ".5f")])
    notes = [f"on {_num(fidelity.get('samples'), 'd')} samples"]
    if fidelity.get("data"):
        notes.append(_esc(fidelity["data"]))
    if fidelity.get("held_out") is True:
        notes.append("held out from calibration")
    elif fidelity.get("held_out") is False:
        notes.append('<span class="warning">the same samples also calibrated</span>')
    if fidelity.get("emulated"):
        notes.append("measured on the FP32 emulation")
    body = f'<p class="note">{"; ".join(notes)}. SQNR = 10·log10(Σref² / Σ(ref−test)²) pooled over the samples.</p>'
    return _section("fidelity", "Fidelity", body + _table(["output", "SQNR dB", "cosine"], rows, numeric=(1, 2)))


def _format_colors(formats: Iterable[str]) -> dict[str, str]:
    colors, spare = {}, 0
    for fmt in formats:
        if fmt in colors:
            continue
        if fmt in FORMAT_COLORS:
            colors[fmt] = FORMAT_COLORS[fmt]
        else:
            colors[fmt] = _SPARE_COLORS[spare % len(_SPARE_COLORS)]
            spare += 1
    return colors


def _precision(report: Mapping[str, Any]) -> str:
    nodes = _dict(report.get("nodes"))
    if not nodes:
        return _missing("precision", "Precision along the graph", "not measured (no node formats in the report)")
    entries = []
    for name, entry in nodes.items():
        entry = _dict(entry)
        entries.append((str(name), str(entry.get("op_type") or "?"), str(entry.get("format") or "unknown"), entry.get("reason")))
    order = sorted({fmt for _, _, fmt, _ in entries}, key=lambda f: (f not in FORMAT_COLORS, list(FORMAT_COLORS).index(f) if f in FORMAT_COLORS else 0, f))
    colors = _format_colors(order)
    counts = {fmt: sum(1 for e in entries if e[2] == fmt) for fmt in order}
    n = len(entries)
    left, width = 46, 1000
    rows = math.ceil(n * 3 / width)  # cells at least 3 wide
    per_row = math.ceil(n / rows)
    cell = min(16.0, width / per_row)
    cell_h, mark_h, row_gap = 26, 4, 10
    row_h = cell_h + mark_h + row_gap
    gap = 1.0 if cell >= 5 else 0.5
    height = rows * row_h + 4
    parts = [f'<svg id="precision-strip" viewBox="0 0 {left + width + 4} {height}" width="{left + width + 4}" height="{height}" role="img" aria-label="format of each node in graph order">']
    for row in range(rows):
        y = row * row_h + 2
        parts.append(f'<text class="small" x="{left - 6}" y="{y + cell_h - 6}" text-anchor="end">{row * per_row}</text>')
    for index, (name, op_type, fmt, reason) in enumerate(entries):
        row, col = divmod(index, per_row)
        x, y = left + col * cell, row * row_h + 2
        tip = f"#{index} {name}\n{op_type}: {fmt}" + (f"\nreason: {reason}" if reason else "")
        parts.append(
            f'<rect class="cell fmt-{_cls(fmt)}" x="{x:.2f}" y="{y}" width="{cell - gap:.2f}" height="{cell_h}" fill="{colors[fmt]}">'
            f"<title>{_esc(tip)}</title></rect>"
        )
        if reason:
            parts.append(f'<rect class="mark" x="{x:.2f}" y="{y + cell_h + 1}" width="{cell - gap:.2f}" height="{mark_h - 1}" fill="#444"/>')
    parts.append("</svg>")
    legend = "".join(
        f'<span class="legend-item fmt-{_cls(fmt)}"><span class="swatch" style="background:{colors[fmt]}"></span>{_esc(fmt)} {counts[fmt]}</span>'
        for fmt in order
    )
    reasons: dict[str, list[str]] = {}
    for name, _, fmt, reason in entries:
        if reason:
            reasons.setdefault(str(reason), []).append(name)
    note = (
        f'<p class="note">{n} nodes in graph order (Q/DQ left out), left to right and row by row; the number at the left is the index of the '
        "row's first node. Hover a cell for its name, op type, format and reason; a dark tick under a cell marks a node with a reason.</p>"
    )
    reason_html = ""
    if reasons:
        ranked = sorted(reasons.items(), key=lambda kv: -len(kv[1]))
        shown = ranked[:15]
        rows_html = [
            [_esc(reason), str(len(names)), '<span class="mono">' + ", ".join(_esc(x) for x in names[:4]) + (" …" if len(names) > 4 else "") + "</span>"]
            for reason, names in shown
        ]
        more = f'<p class="note">and {len(ranked) - len(shown)} other reasons.</p>' if len(ranked) > len(shown) else ""
        reason_html = "<h3>Reasons</h3>" + _table(["reason", "nodes", "examples"], rows_html, numeric=(1,)) + more
    body = f'<div class="legend">{legend}</div>\n' + "\n".join(parts) + "\n" + note + reason_html
    return _section("precision", "Precision along the graph", body)


def _bar_chart(ident: str, rows: list[dict[str, Any]], series: list[tuple[str, str, str]], group_class: str, unit: str = "dB", digits: str = ".1f") -> str:
    """Horizontal bars, one group per row and one bar per series in it.

    ``rows``: ``label``, ``sub`` (shown under it), ``tip`` (tooltip) and a value per series key.
    ``series``: (key, label, color). A missing value is a note instead of a bar; ``digits``: the
    format of the value written beside each bar.
    """
    values = [v for row in rows for key, _, _ in series if (v := _finite(row.get(key))) is not None]
    lo = min([0.0, *values])
    hi = max([0.0, *values])
    if hi - lo < 1e-9:
        hi = lo + 1.0
    ticks = _ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    label_w, plot_w, value_w = 280, 600, 90
    bar_h, bar_gap, group_gap, top = 11, 2, 9, 22
    group_h = len(series) * (bar_h + bar_gap) - bar_gap
    height = top + len(rows) * (group_h + group_gap) + 6
    width = label_w + plot_w + value_w

    def x_of(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    parts = [f'<svg id="{ident}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    parts.append('<g class="grid axis">')
    for t in ticks:
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 4}"/><text x="{x:.1f}" y="{top - 8}" text-anchor="middle">{_tick_label(t)}</text>')
    parts.append(f'<text x="{label_w + plot_w + 6}" y="{top - 8}">{_esc(unit)}</text></g>')
    zero = x_of(0.0)
    parts.append(f'<line class="zero" x1="{zero:.1f}" y1="{top - 4}" x2="{zero:.1f}" y2="{height - 4}"/>')
    for index, row in enumerate(rows):
        y0 = top + index * (group_h + group_gap)
        label = str(row.get("label", ""))
        parts.append(f'<g class="{group_class}"><title>{_esc(row.get("tip", label))}</title>')
        if len(series) == 1:  # one bar: the op type beside the name
            sub = f'<tspan class="small" font-size="11"> {_esc(row["sub"])}</tspan>' if row.get("sub") else ""
            parts.append(f'<text x="{label_w - 8}" y="{y0 + 10}" text-anchor="end" font-size="12">{_esc(_short(label))}{sub}</text>')
        else:
            parts.append(f'<text x="{label_w - 8}" y="{y0 + 10}" text-anchor="end" font-size="12">{_esc(_short(label))}</text>')
            if row.get("sub"):
                parts.append(f'<text x="{label_w - 8}" y="{y0 + group_h}" text-anchor="end" class="small">{_esc(row["sub"])}</text>')
        for s, (key, name, color) in enumerate(series):
            y = y0 + s * (bar_h + bar_gap)
            raw = row.get(key)
            value = _finite(raw)
            if value is None and _is_number(raw) and math.isinf(raw):
                value = hi if raw > 0 else lo
            if value is None:
                parts.append(f'<text class="bar-missing" x="{zero + 4:.1f}" y="{y + bar_h - 2}">{_esc(name)}: not measured</text>')
                continue
            x1, x2 = sorted((zero, x_of(value)))
            tip = f"{label}: {name} {_fmt(raw, '.2f', unit)}"
            parts.append(
                f'<rect class="bar {_cls(key)}" x="{x1:.1f}" y="{y}" width="{max(x2 - x1, 1.0):.1f}" height="{bar_h}" fill="{color}">'
                f"<title>{_esc(tip)}</title></rect>"
            )
            parts.append(f'<text class="small" x="{max(x2, zero) + 4:.1f}" y="{y + bar_h - 2}">{_num(raw, digits)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    legend = "".join(f'<span><span class="swatch" style="background:{color}"></span>{_esc(name)}</span>' for _, name, color in series)
    return (f'<div class="legend">{legend}</div>' if len(series) > 1 else "") + "\n".join(parts)


def _by_local(nodes: list[Any], key: str) -> list[dict]:
    """Nodes worst (lowest ``key``) first; unmeasured ones last, order kept among equals."""
    entries = [_dict(n) for n in nodes if isinstance(n, Mapping)]
    return sorted(entries, key=lambda e: (_finite(e.get(key)) is None, _finite(e.get(key)) or 0.0))


def _layer_sensitivity(report: Mapping[str, Any]) -> str:
    data = _dict(report.get("layer_sensitivity"))
    nodes = _by_local(_list(data.get("nodes")), "local_db")
    if not nodes and report.get("weight_only_sensitivity"):
        return ""  # an INT4 analysis: its groups have their own section
    if not nodes:
        return _missing("layer-sensitivity", "Per-layer sensitivity", "not measured")
    metric = data.get("metric") or "sqnr_db"
    name, unit = _metric_name(metric)
    shown = nodes[:MAX_BARS]
    rows = []
    for e in shown:
        node = str(e.get("node") or "?")
        tip = (
            f"{node} ({e.get('op_type') or '?'})\nlocal {_fmt(e.get('local_db'), '.2f', unit)}"
            f" (weights {_fmt(e.get('local_weights_db'), '.2f', unit)}, activations {_fmt(e.get('local_activations_db'), '.2f', unit)})"
            f"\nglobal {_fmt(e.get('global_db'), '.2f', unit)}"
        )
        rows.append({"label": node, "sub": e.get("op_type"), "tip": tip, "local_db": e.get("local_db"), "global_db": e.get("global_db")})
    facts = [f"{_esc(name)} in {_esc(unit) or 'units'}, worst first"]
    if data.get("samples") is not None:
        facts.append(f"{_num(data.get('samples'), 'd')} samples")
    if data.get("evaluations") is not None:
        facts.append(f"{_num(data.get('evaluations'), 'd')} full-model evaluations")
    if data.get("rank_correlation") is not None:
        facts.append(f"rank correlation of local and global {_num(data.get('rank_correlation'), '.3f')}")
    body = (
        f'<p class="note">{"; ".join(facts)}. Local: the node\'s own output error with only its quantizers on; '
        "global: the model output's error with only that node quantized. Lower is more sensitive.</p>\n"
    )
    body += _bar_chart("layer-sensitivity-bars", rows, [("local_db", "local", _LOCAL_COLOR), ("global_db", "global", _GLOBAL_COLOR)], "bar-pair", unit)
    if len(nodes) > len(shown):
        body += f'\n<p class="note cap">The {len(shown)} worst of {len(nodes)} nodes are shown.</p>'
    groups = [_dict(g) for g in _list(data.get("groups")) if isinstance(g, Mapping)]
    if groups:
        rows = [
            [f'<span class="mono">{_esc(str(g.get("name") or "?"))}</span>', _esc(str(g.get("kind") or "?")), _num(len(_list(g.get("nodes"))), "d"),
             _num(len(_list(g.get("quantized"))), "d"), _num(g.get("global_db"), ".2f", unit)]
            for g in groups
        ]  # fmt: skip
        body += (
            '\n<p class="note">Node groups (a layer with its activation chain, an attention block, a residual branch): the model output\'s error '
            "with only the group's INT8 nodes quantized, worst first.</p>\n"
            + _table(["group", "kind", "nodes", "INT8 nodes", "global"], rows, numeric=(2, 3, 4))
        )
    return _section("layer-sensitivity", "Per-layer sensitivity", body)


def _weight_only_sensitivity(report: Mapping[str, Any]) -> str:
    """INT4 weight-only layer groups (``qonnx analyze --precision int4``): a bar per group, worst
    first (KL divergence for logits, else SQNR), and their figures; nothing for other reports."""
    data = _dict(report.get("weight_only_sensitivity"))
    groups = [_dict(g) for g in _list(data.get("groups")) if isinstance(g, Mapping)]
    if not groups:
        return ""
    metric = str(data.get("metric") or "sqnr_db")
    unit = "" if metric == "kl_divergence" else "dB"
    label = "KL divergence" if metric == "kl_divergence" else "SQNR"
    shown = groups[:MAX_BARS]
    rows = []
    for g in shown:
        members = [str(n) for n in _list(g.get("nodes"))]
        tip = f"{g.get('name')}: {len(members)} layers ({', '.join(members[:8])}{', ...' if len(members) > 8 else ''})\n{label} {_fmt(g.get(metric), '.4f', unit)}"
        sub = f"{members[0]} +{len(members) - 1}" if len(members) > 1 else ""  # a group's first layer; a single layer is its own name
        rows.append({"label": str(g.get("name") or "?"), "sub": sub, "tip": tip, metric: g.get(metric)})
    whole = _dict(data.get("whole_plan"))
    facts = [f"{label}{' in dB' if unit else ''} of {_esc(str(data.get('output') or 'the output'))}, worst first",
             f"{_num(data.get('samples'), 'd')} samples", f"{_num(data.get('evaluations'), 'd')} full-model evaluations", "weights rounded to nearest"]  # fmt: skip
    body = (
        f'<p class="note">{"; ".join(facts)}. Each layer group (a residual branch: a decoder layer\'s attention or MLP; or a single layer) is stored '
        "in 4-bit blocks alone, the rest float. The whole plan at once: "
        f"{label} {_num(whole.get(metric), '.4f')}"
        + (f", perplexity {_num(whole.get('perplexity'), '.3f')} (float {_num(data.get('reference_perplexity'), '.3f')})" if whole.get("perplexity") is not None else "")
        + ".</p>\n"
    )
    body += _bar_chart("weight-only-sensitivity-bars", rows, [(metric, label, _GLOBAL_COLOR)], "bar-group", unit, ".4f" if metric == "kl_divergence" else ".1f")
    columns = [("perplexity", ".3f"), ("next_token_agreement", ".4f"), ("kl_divergence", ".4f")] if metric == "kl_divergence" else [("sqnr_db", ".2f"), ("cosine", ".4f")]
    table_rows = [
        [f'<span class="mono">{_esc(str(g.get("name") or "?"))}</span>', _num(len(_list(g.get("nodes"))), "d"), *[_num(g.get(key), spec) for key, spec in columns]]
        for g in groups
    ]
    names = {"perplexity": "perplexity", "next_token_agreement": "next-token top-1", "kl_divergence": "KL", "sqnr_db": "SQNR dB", "cosine": "cosine"}
    body += "\n" + _table(["layer group", "layers", *[names[key] for key, _ in columns]], table_rows, numeric=tuple(range(1, 2 + len(columns))))
    return _section("weight-only-sensitivity", "INT4 weight-only sensitivity by layer group", body)


def _curve_chart(points: list[tuple[int, dict]], chosen: int | None, metric: Any, target: Any, labelled: set[int] | None = None) -> str:
    """The accuracy-versus-INT8-fraction curve; the points of ``labelled`` (None: every timed point)
    carry their speed as a label, every point in its tooltip."""
    name, unit = _metric_name(metric)
    values = [v for _, p in points if (v := _finite(p.get("value"))) is not None]
    target_v = _finite(target)
    span_values = values + ([target_v] if target_v is not None else [])
    lo, hi = (min(span_values), max(span_values)) if span_values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.12
    lo, hi = lo - pad, hi + pad
    ticks = _ticks(lo, hi)
    left, right, top, bottom, width, height = 64, 24, 28, 52, 900, 420
    pw, ph = width - left - right, height - top - bottom

    def xy(fraction: float, value: float) -> tuple[float, float]:
        x = left + min(max(fraction, 0.0), 1.0) * pw
        y = top + (1 - (min(max(value, lo), hi) - lo) / (hi - lo)) * ph
        return x, y

    parts = [f'<svg id="auto-policy-curve" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{_esc(name)} versus fraction of nodes in INT8">']
    parts.append('<g class="grid axis">')
    infinite = {p.get("value") for _, p in points if _is_number(p.get("value")) and math.isinf(p.get("value"))}
    edges = [y for y, sign in ((top, math.inf), (top + ph, -math.inf)) if sign in infinite]
    for t in ticks:
        if lo <= t <= hi:
            _, y = xy(0, t)
            label = "" if any(abs(y - e) < 12 for e in edges) else _tick_label(t)
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}"/><text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for y, sign in ((top, math.inf), (top + ph, -math.inf)):
        if sign in infinite:
            parts.append(f'<text class="axis-infinity" x="{left - 8}" y="{y + 5:.1f}" text-anchor="end">{"∞" if sign > 0 else "−∞"}</text>')
    for i in range(11):
        x, _ = xy(i / 10, lo)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}"/><text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{i * 10}%</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">nodes in INT8 (fraction of the quantizable nodes)</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">{_esc(name)}{" (" + _esc(unit) + ")" if unit else ""}</text></g>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#c9ced6"/>')
    boxes: list[tuple[float, float, float, float]] = []  # labels placed so far: x0, y0, x1, y1

    def free_spot(x: float, y: float, text: str, offsets: Iterable[float]) -> tuple[float, float]:
        """Where a label of ``text`` centred on x goes: the first offset from y that overlaps no
        label placed so far (the last one if all do), kept inside the plot."""
        half = 3.3 * len(text) + 2
        x = min(max(x, left + half), left + pw - half)
        spot = None
        for dy in offsets:
            box = (x - half, y + dy - 10, x + half, y + dy + 3)
            spot = box
            if top <= box[1] and box[3] <= top + ph and not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in boxes):
                break
        boxes.append(spot)
        return x, spot[3] - 3

    if target_v is not None:
        _, y = xy(0, target_v)
        label = f"target {_metric_text(metric, target)}"
        parts.append(f'<line class="target" x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}"><title>{_esc(label)}</title></line>')
        tx, ty = free_spot(left, y, label, (-5, 15))
        parts.append(f'<text class="target-label" x="{tx:.1f}" y="{ty:.1f}" text-anchor="middle">{_esc(label)}</text>')
    placed = []
    for index, p in points:
        fraction, raw = _finite(p.get("int8_fraction")), p.get("value")
        value = _finite(raw)
        if value is None and _is_number(raw) and math.isinf(raw):  # no error at all: on the edge marked ∞
            value = hi if raw > 0 else lo
        if fraction is None or value is None:
            continue
        placed.append((fraction, value, index, p))
    placed.sort(key=lambda t: (t[0], t[2]))
    if len(placed) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(f, v) for f, v, _, _ in placed))
        parts.append(f'<polyline class="curve" points="{path}"/>')
    for x, y in (xy(f, v) for f, v, _, _ in placed):  # the points themselves are no place for a label
        boxes.append((x - 5, y - 5, x + 5, y + 5))
    # The chosen point's label first, so that it gets the nearest free spot.
    for fraction, value, index, p in sorted(placed, key=lambda t: t[2] != chosen):
        x, y = xy(fraction, value)
        is_chosen = index == chosen
        speed = p.get("speedup")
        speed_text = f"{_fmt(speed, '.2f')}×" if _finite(speed) is not None else ""
        tip = (
            f"point {index}{' (chosen)' if is_chosen else ''}: INT8 fraction {_fmt(fraction * 100, '.1f')}%, {name} {_metric_text(metric, p.get('value'))}, "
            f"speedup {speed_text or 'not measured'}, {_fmt(p.get('fallback'), 'd')} nodes in the fallback"
        )
        cls = "point chosen" if is_chosen else "point"
        parts.append(f'<g class="{cls}" data-index="{index}"><title>{_esc(tip)}</title>')
        if is_chosen:
            parts.append(f'<circle class="ring" cx="{x:.1f}" cy="{y:.1f}" r="10"/>')
        parts.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="{6 if is_chosen else 4.5}"/>')
        if is_chosen or (speed_text and (labelled is None or index in labelled)):
            label = ("chosen " if is_chosen else "") + speed_text
            lx, ly = free_spot(x, y, label, (-13 if is_chosen else -9, 22 if is_chosen else 18, -27, 34, -43, 50, -59, 66))
            parts.append(f'<text class="speed" x="{lx:.1f}" y="{ly:.1f}">{_esc(label)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def _auto_policy(report: Mapping[str, Any]) -> str:
    data = _dict(report.get("auto_policy"))
    curve = [(i, _dict(p)) for i, p in enumerate(_list(data.get("curve")))]
    if not data:
        return _missing("auto-policy", "Accuracy versus fraction in INT8", "not measured (no automatic mixed-precision search)")
    metric = data.get("metric") or "sqnr_db"
    name, unit = _metric_name(metric)
    chosen = data.get("chosen") if isinstance(data.get("chosen"), int) and not isinstance(data.get("chosen"), bool) else None
    fallback = [str(f) for f in _list(data.get("fallback"))]
    met = data.get("met")
    state = "met" if met is True else "not-met" if met is False else "unknown"
    facts = [
        f'<span class="badge {state}">{"target met" if met is True else "target not met" if met is False else "not decided"}</span> '
        f"{_esc(name)} target {_metric_value(metric, data.get('target'))}, achieved {_metric_value(metric, data.get('achieved'))} {_esc(search_samples(data))}",
        f"{len(fallback)} nodes in {_esc(data.get('fallback_format') or 'the fallback format')}",
    ]
    if data.get("evaluations") is not None:
        facts.append(f"{_num(data.get('evaluations'), 'd')} full-model evaluations")
    if data.get("binding") and not data.get("binding_reason"):
        facts.append(f'binding: <span class="mono">{_esc(data["binding"])}</span>')
    body = f"<p>{'; '.join(facts)}.</p>\n"
    if data.get("binding_reason"):
        warning = " warning" if data.get("binding") else ""
        body += f'<p class="note binding{warning}">What binds: {_esc(str(data["binding_reason"]))}.</p>\n'
    reachable = _dict(data.get("reachable"))
    labelled = {p["point"] for p in (_dict(reachable.get(k)) for k in ("fastest", "fastest_meeting")) if isinstance(p.get("point"), int)} if reachable else None
    body += "".join(f'<p class="note warning">{_esc(str(note))}</p>\n' for note in _list(data.get("notes")))
    if curve:
        body += _curve_chart(curve, chosen, metric, data.get("target"), labelled)
        labels = (
            "the chosen plan, the fastest and the fastest meeting the target are labelled with their speed against FP32 (every point's speed is in its tooltip and the table)"
            if labelled is not None else "its label is its speed against FP32"
        )  # fmt: skip
        body += f'\n<p class="note">Each point is a plan tried by the search; {labels}; the dashed line is the target, the ringed point the plan chosen.</p>\n'
        rows = []
        for index, p in curve:
            fraction = _finite(p.get("int8_fraction"))
            rows.append([
                str(index) + (" <b>chosen</b>" if index == chosen else ""),
                _num(None if fraction is None else fraction * 100, ".1f", "%"),
                _metric_value(metric, p.get("value")),
                (_num(p.get("speedup"), ".2f") + "×") if p.get("speedup") is not None else "–",
                _num(p.get("fallback"), "d"),
            ])
        body += "<details><summary>The points</summary>" + _table(["point", "in INT8", name, "speedup", "fallback nodes"], rows, numeric=(1, 2, 3, 4)) + "</details>"
    else:
        body += '<p class="not-measured">curve not measured</p>'
    if fallback:
        formats = _dict(data.get("formats"))
        names = ", ".join(_esc(f) + (f" ({_esc(str(formats[f]))})" if formats.get(f) not in (None, "float") else "") for f in fallback)
        body += f'\n<details><summary>The {len(fallback)} nodes in the fallback</summary><p class="mono">{names}</p></details>'
    return _section("auto-policy", "Accuracy versus fraction in INT8", body)


def _activation_sensitivity(report: Mapping[str, Any]) -> str:
    data = _dict(report.get("sensitivity"))
    nodes = _by_local(_list(data.get("nodes")), "sqnr_db")
    if not data:
        return _missing("sensitivity", "Activation sensitivity", "not measured (--sensitivity N)")
    facts = []
    if data.get("samples") is not None:
        facts.append(f"on {_num(data.get('samples'), 'd')} held-out samples")
    facts.append(f"weights only {_num(data.get('weights_only_db'), '.2f', 'dB')}")
    facts.append(f"all {_num(data.get('all_db'), '.2f', 'dB')}")
    body = f'<p class="note">{", ".join(facts)}. Each bar: the model output\'s SQNR with only that node\'s activation inputs quantized, worst first.</p>\n'
    shown = nodes[:MAX_BARS]
    if shown:
        rows = [{"label": str(e.get("node") or "?"), "sub": e.get("op_type"), "tip": f"{e.get('node')} ({e.get('op_type')})", "sqnr_db": e.get("sqnr_db")} for e in shown]
        body += _bar_chart("sensitivity-bars", rows, [("sqnr_db", "activations", _ACT_COLOR)], "bar-row")
        if len(nodes) > len(shown):
            body += f'\n<p class="note cap">The {len(shown)} worst of {len(nodes)} nodes are shown.</p>'
    return _section("sensitivity", "Activation sensitivity", body)


def _latency(report: Mapping[str, Any]) -> str:
    data = _dict(report.get("latency"))
    if not data:
        return _missing("latency", "Latency", "not measured (--latency)")
    precision = report.get("precision")
    label = precision if precision in ("fp16", "bf16") else "quantized"
    rows = [
        ["FP32", _num(data.get("fp32_ms"), ".3f", "ms")],
        [_esc(label), _num(data.get("quantized_ms"), ".3f", "ms")],
        ["speedup", (_num(data.get("speedup"), ".2f") + "×") if data.get("speedup") is not None else "–"],
    ]
    quartiles = data.get("speedup_quartiles")
    spread = ""
    if isinstance(quartiles, list) and len(quartiles) == 3 and all(_is_number(q) for q in quartiles):
        spread = f'; the speedup is the median over {_num(data.get("cycles"), "d")} cycles of the paired ratio (quartiles {_num(quartiles[0], ".2f")}–{_num(quartiles[2], ".2f")})'
    note = f'<p class="note">medians of {_num(data.get("runs"), "d")} runs each, timed interleaved, {_num(data.get("threads"), "d")} threads{spread}</p>'
    return _section("latency", "Latency", _table(["", "median"], rows, numeric=(1,)) + note)


def _timing(report: Mapping[str, Any]) -> str:
    timing = _dict(report.get("timing"))
    passes = [_dict(p) for p in _list(report.get("passes"))]
    if not timing and not passes:
        return _missing("timing", "Timing", "not measured")
    body = ""
    if timing:
        body += _table(["step", "seconds"], [[_esc(k), _num(v, ".3f")] for k, v in timing.items()], numeric=(1,))
    if passes:
        rows = []
        for p in passes:
            delta = ", ".join(f"{_esc(op)} {n:+d}" for op, n in _dict(p.get("op_delta")).items() if isinstance(n, int)) or ("changed" if p.get("modified") else "–")
            seconds = p.get("seconds")
            rows.append([_esc(p.get("name", "?")), _num(seconds * 1e3 if _is_number(seconds) else None, ".1f"), f"{_num(p.get('nodes_before'), 'd')} → {_num(p.get('nodes_after'), 'd')}", delta])
        body += "<details><summary>The passes</summary>" + _table(["pass", "ms", "nodes", "change"], rows, numeric=(1,)) + "</details>"
    return _section("timing", "Timing", body)


# --------------------------------------------------------------------------------------------


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (no script, no network)."""
    report = _dict(report)
    src, out = _dict(report.get("input")), _dict(report.get("output"))
    title = "qonnx report"
    if src.get("path"):
        title += f": {Path(str(src['path'])).name}"
        if out.get("path"):
            title += f" → {Path(str(out['path'])).name}"
    sections = [
        _header(report),
        _fidelity(report),
        _precision(report),
        _layer_sensitivity(report),
        _weight_only_sensitivity(report),
        _auto_policy(report),
        _activation_sensitivity(report),
        _latency(report),
        _timing(report),
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def write_html(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the page of ``report`` atomically (temporary file in the same folder, fsync, rename)."""
    text = render_html(report)  # fails before anything is written
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
