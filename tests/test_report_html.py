"""The HTML report (``qonnx.report_html``, ``--html``): escaping, sections left out when their data
is missing, the SVG elements counted against the report, the CLI flag and its failures, and a real
run of a kit model whose page is loaded in headless Chromium (Debian's ``chromium``, installed by
``make install``), with its DOM read back and a screenshot taken and looked at pixel by pixel.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from qonnx import report_html
from qonnx.report_html import FORMAT_COLORS, MAX_BARS, render_html, write_html

from conftest import run_qonnx

HOSTILE = '<script>alert("x")</script>&<img src=x onerror=alert(1)>'


# --------------------------------------------------------------------------------------------
# Reading a page back


class Page(HTMLParser):
    """Every element of a page: (tag, attributes, classes), and the text of each <title>."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], set[str]]] = []
        self.titles: list[str] = []
        self._stack: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attrs, set(attrs.get("class", "").split())))
        self._stack.append(tag)
        if tag == "title":
            self.titles.append("")

    def handle_startendtag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attrs, set(attrs.get("class", "").split())))

    def handle_endtag(self, tag):
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass

    def handle_data(self, data):
        if self._stack and self._stack[-1] == "title":
            self.titles[-1] += data

    def find(self, tag: str, *classes: str) -> list[dict[str, str]]:
        return [attrs for t, attrs, cls in self.elements if t == tag and set(classes) <= cls]

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs, _ in self.elements if "id" in attrs}


def section_missing(page: Page, ident: str) -> bool:
    return any(attrs.get("id") == ident and "missing" in cls for t, attrs, cls in page.elements if t == "section")


ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "header", "section", "h1", "h2", "h3", "p", "b", "br", "span", "div",
    "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "details", "summary",
    "svg", "g", "rect", "line", "polyline", "circle", "text", "tspan",
}


def assert_self_contained(text: str) -> None:
    """No script, no element or attribute that loads anything, no URL in the CSS."""
    page = Page(text)
    assert {tag for tag, _, _ in page.elements} <= ALLOWED_TAGS
    assert not [attrs for _, attrs, _ in page.elements if {"src", "href", "xlink:href", "srcset", "onload", "onerror"} & set(attrs)]
    style = text[text.index("<style>") : text.index("</style>")].lower()
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    assert text.count("<style>") == 1 and "http://" not in text and "https://" not in text


# --------------------------------------------------------------------------------------------
# A report with every section, as the flow and the sensitivity search write them


def full_report() -> dict:
    nodes = {
        "conv0": {"op_type": "Conv", "format": "int8"},
        "relu0": {"op_type": "Relu", "format": "int8"},
        "conv1": {"op_type": "Conv", "format": "float", "reason": "sensitive: local 9.1 dB"},
        "mm": {"op_type": "MatMul", "format": "int4"},
        "add": {"op_type": "Add", "format": "fp16"},
        "mul": {"op_type": "Mul", "format": "bf16"},
        "softmax": {"op_type": "Softmax", "format": "float", "reason": "no integer kernel"},
    }
    layer = [
        {"node": "conv1", "op_type": "Conv", "local_db": 9.1, "local_weights_db": 14.0, "local_activations_db": 10.2, "global_db": 12.5},
        {"node": "mm", "op_type": "MatMul", "local_db": 18.4, "local_weights_db": None, "local_activations_db": None, "global_db": None},
        {"node": "conv0", "op_type": "Conv", "local_db": 31.0, "local_weights_db": 35.0, "local_activations_db": 33.0, "global_db": 40.2},
    ]
    curve = [
        {"int8_fraction": 1.0, "value": 21.0, "speedup": 1.45, "fallback": 0},
        {"int8_fraction": 0.9, "value": 27.2, "speedup": 1.38, "fallback": 1},
        {"int8_fraction": 0.8, "value": 30.6, "speedup": 1.30, "fallback": 2},
        {"int8_fraction": 0.5, "value": 38.0, "speedup": None, "fallback": 5},
        {"int8_fraction": 0.0, "value": 60.0, "speedup": 1.0, "fallback": 7},
    ]
    return {
        "schema": "qonnx.report/1",
        "input": {"path": "/models/m.onnx", "sha256": "ab" * 32, "bytes": 4 << 20, "opset": 13, "nodes": 7},
        "output": {"path": "/out/m.int8.onnx", "sha256": "cd" * 32, "bytes": 1 << 20, "opset": 13, "nodes": 12},
        "size_ratio": 0.25,
        "target": "cpu",
        "precision": "int8",
        "mode": "static",
        "nodes": nodes,
        "verdict": {"metric": "sqnr_db", "value": 30.6, "threshold": 30.0, "met": True, "source": "--min", "advice": ["two nodes stay float"]},
        "fidelity": {"samples": 4, "data": "eval/", "held_out": True, "outputs": {"y": {"sqnr_db": 30.6, "cosine": 0.9996}}},
        "layer_sensitivity": {"metric": "sqnr_db", "samples": 4, "evaluations": 3, "rank_correlation": 0.5, "nodes": layer},
        "auto_policy": {
            "metric": "sqnr_db", "target": 30.0, "achieved": 30.6, "met": True, "fallback": ["conv1", "softmax"],
            "fallback_format": "float", "evaluations": 5, "binding": "conv1", "curve": curve, "chosen": 2,
        },
        "sensitivity": {"samples": 2, "weights_only_db": 33.0, "all_db": 30.1, "nodes": [{"node": "conv1", "op_type": "Conv", "sqnr_db": 28.0}, {"node": "mm", "op_type": "MatMul", "sqnr_db": 31.5}]},
        "latency": {"fp32_ms": 2.0, "quantized_ms": 1.5, "speedup": 1.333, "runs": 20, "threads": 2},
        "timing": {"pipeline_s": 1.0, "save_s": 0.1, "fidelity_s": 0.5, "total_s": 1.7},
    }


SECTIONS = ("fidelity", "precision", "layer-sensitivity", "auto-policy", "sensitivity", "latency", "timing")


# --------------------------------------------------------------------------------------------
# Unit tests of the page


def test_a_hostile_node_name_appears_escaped_everywhere():
    report = full_report()
    report["input"]["path"] = f"/models/{HOSTILE}.onnx"
    report["nodes"][HOSTILE] = {"op_type": HOSTILE, "format": HOSTILE, "reason": HOSTILE}
    report["fidelity"]["outputs"][HOSTILE] = {"sqnr_db": 1.0, "cosine": 0.5}
    report["layer_sensitivity"]["nodes"].insert(0, {"node": HOSTILE, "op_type": HOSTILE, "local_db": 1.0, "global_db": 2.0})
    report["auto_policy"]["fallback"].append(HOSTILE)
    report["auto_policy"]["binding"] = HOSTILE
    report["sensitivity"]["nodes"].append({"node": HOSTILE, "op_type": "Conv", "sqnr_db": 3.0})
    report["verdict"]["advice"].append(HOSTILE)
    report["timing"][HOSTILE] = 1.0
    text = render_html(report)
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert_self_contained(text)
    page = Page(text)
    # The name comes back as it was, in the cell's tooltip and as the sensitivity row's label.
    assert any(HOSTILE in title and "reason: " + HOSTILE in title for title in page.titles)
    assert len(page.find("rect", "cell")) == len(report["nodes"])


def test_an_empty_report_renders_every_section_as_not_measured():
    page_text = render_html({})
    page = Page(page_text)
    for ident in SECTIONS:
        assert section_missing(page, ident), ident
    assert page_text.count('class="not-measured"') == len(SECTIONS)
    assert not page.find("svg")
    assert_self_contained(page_text)


@pytest.mark.parametrize("key", ["fidelity", "nodes", "layer_sensitivity", "auto_policy", "sensitivity", "latency"])
def test_a_section_without_its_data_is_one_line_and_the_others_stay(key):
    ident = {"nodes": "precision", "layer_sensitivity": "layer-sensitivity", "auto_policy": "auto-policy"}.get(key, key)
    for missing in (None, {}):
        report = full_report()
        report[key] = missing
        page = Page(render_html(report))
        assert section_missing(page, ident)
        assert [i for i in SECTIONS if section_missing(page, i)] == [ident]


def test_every_null_field_of_the_new_sections_is_survived():
    report = full_report()
    for section in ("verdict", "layer_sensitivity", "auto_policy"):
        report[section] = {key: None for key in report[section]}
    report["layer_sensitivity"]["nodes"] = [{"node": None, "op_type": None, "local_db": None, "global_db": None}]
    report["auto_policy"]["curve"] = [{"int8_fraction": None, "value": None, "speedup": None, "fallback": None}, None]
    text = render_html(report)
    page = Page(text)
    assert not section_missing(page, "auto-policy")
    assert not page.find("g", "point")  # nothing to place
    assert "not measured" in text


def test_one_cell_per_node_in_graph_order_colored_by_format_with_a_tooltip():
    report = full_report()
    page = Page(render_html(report))
    cells = page.find("rect", "cell")
    assert len(cells) == len(report["nodes"])
    for attrs, (name, entry) in zip(cells, report["nodes"].items()):
        assert attrs["fill"] == FORMAT_COLORS[entry["format"]]
        assert f"fmt-{entry['format']}" in attrs["class"]
    cell_titles = [t for t in page.titles if t.startswith("#")]
    assert cell_titles[2] == "#2 conv1\nConv: float\nreason: sensitive: local 9.1 dB"
    assert cell_titles[0] == "#0 conv0\nConv: int8"
    xs = [float(a["x"]) for a in cells]
    assert xs == sorted(xs)  # one row, left to right in graph order
    legend = page.find("span", "legend-item")
    assert len(legend) == len({e["format"] for e in report["nodes"].values()})


def test_a_long_graph_wraps_into_rows_of_thin_cells():
    report = {"nodes": {f"n{i}": {"op_type": "Conv", "format": "int8" if i % 3 else "float"} for i in range(1000)}}
    page = Page(render_html(report))
    cells = page.find("rect", "cell")
    assert len(cells) == 1000
    rows = sorted({float(a["y"]) for a in cells})
    assert len(rows) == 3 and all(float(a["width"]) < 3 for a in cells)


def test_one_bar_pair_per_sensitivity_node_worst_first():
    report = full_report()
    report["layer_sensitivity"]["nodes"].reverse()  # the page sorts again, worst first
    page = Page(render_html(report))
    pairs = page.find("g", "bar-pair")
    assert len(pairs) == 3
    assert len(page.find("rect", "bar", "local_db")) == 3
    assert len(page.find("rect", "bar", "global_db")) == 2  # mm has no global score
    pair_titles = [t for t in page.titles if t.split(" ", 1)[0] in ("conv1", "mm", "conv0") and "\nlocal " in t]
    assert [t.split(" ", 1)[0] for t in pair_titles] == ["conv1", "mm", "conv0"]
    assert "local 9.10 dB (weights 14.00 dB, activations 10.20 dB)\nglobal 12.50 dB" in pair_titles[0]
    # Bars grow with the score: conv0 (31 dB) is longer than conv1 (9.1 dB).
    widths = [float(a["width"]) for a in page.find("rect", "bar", "local_db")]
    assert widths[0] < widths[1] < widths[2]


def test_the_sensitivity_bars_stop_at_the_worst_forty():
    report = full_report()
    report["layer_sensitivity"]["nodes"] = [
        {"node": f"n{i}", "op_type": "Conv", "local_db": 50.0 - i * 0.5, "global_db": 55.0 - i} for i in range(55)
    ]
    text = render_html(report)
    page = Page(text)
    assert len(page.find("g", "bar-pair")) == MAX_BARS == 40
    assert f"The {MAX_BARS} worst of 55 nodes are shown." in text
    shown = {t.split(" ", 1)[0] for t in page.titles if "\nlocal " in t}
    assert shown == {f"n{i}" for i in range(15, 55)}  # the lowest local scores


def test_one_point_per_curve_point_the_chosen_one_marked_and_labelled_with_speed():
    report = full_report()
    curve = report["auto_policy"]["curve"]
    page = Page(render_html(report))
    points = page.find("g", "point")
    assert len(points) == len(curve)
    chosen = page.find("g", "point", "chosen")
    assert len(chosen) == 1 and chosen[0]["data-index"] == "2"
    assert len(page.find("circle", "ring")) == 1 and len(page.find("circle", "dot")) == len(curve)
    assert len(page.find("line", "target")) == 1 and len(page.find("polyline", "curve")) == 1
    text = render_html(report)
    for p in curve:
        if p["speedup"] is not None:
            assert f">{p['speedup']:.2f}×<" in text or f">chosen {p['speedup']:.2f}×<" in text
    assert ">chosen 1.30×<" in text
    assert "target 30.00 dB" in text
    # x is the INT8 fraction: the chosen point (0.8) sits right of the 0.5 one.
    titles = [t for t in page.titles if t.startswith("point ")]
    assert titles[0].startswith("point 2 (chosen): INT8 fraction 80.0%, SQNR 30.60 dB, speedup 1.30×, 2 nodes")


def test_a_point_with_an_infinite_value_stays_on_the_plot():
    report = full_report()
    report["auto_policy"]["curve"][4]["value"] = math.inf  # all float: the reference itself
    text = render_html(report)
    page = Page(text)
    assert len(page.find("g", "point")) == 5
    assert len(page.find("text", "axis-infinity")) == 1 and ">∞</text>" in text
    assert "SQNR ∞ dB" in text  # in its tooltip and the table of points


def test_the_verdict_says_met_or_not_with_its_advice():
    report = full_report()
    text = render_html(report)
    assert 'class="verdict met"' in text and "SQNR 30.60 dB ≥ threshold 30.00 dB" in text and "<li>two nodes stay float</li>" in text
    report["verdict"].update(met=False, value=25.0, metric="cosine", source="default")
    text = render_html(report)
    assert 'class="verdict not-met"' in text and "target not met" in text and "cosine 25.0000 &lt; threshold 30.0000" in text
    del report["verdict"]
    assert 'id="verdict"' not in render_html(report)


def test_the_search_notes_and_the_latency_spread_are_on_the_page():
    report = full_report()
    report["auto_policy"]["notes"] = ["top-1 agreement >= 0.99 is judged on 10 search samples <of 1> class decision(s) each"]
    report["latency"].update(cycles=12, speedup_quartiles=[1.2, 1.333, 1.41])
    text = render_html(report)
    assert '<p class="note warning">top-1 agreement &gt;= 0.99 is judged on 10 search samples &lt;of 1&gt; class decision(s) each</p>' in text
    assert "timed interleaved" in text and "median over 12 cycles of the paired ratio (quartiles 1.20–1.41)" in text
    del report["auto_policy"]["notes"], report["latency"]["speedup_quartiles"]
    text = render_html(report)
    assert "note warning" not in text and "quartiles" not in text  # reports without them still render


def test_what_binds_is_said_and_only_the_best_reachable_points_are_labelled():
    report = full_report()
    report["auto_policy"].update(
        binding="speed", min_speedup=1.5,
        binding_reason="speed: 1.30x FP32, under the 1.5x asked, and no plan measured reaches 1.5x on this CPU: <the fastest>",
        reachable={"fastest": {"point": 0, "speedup": 1.45, "value": 21.0, "fallback": 0}, "fastest_meeting": {"point": 2, "speedup": 1.30, "value": 30.6, "fallback": 2}},
    )  # fmt: skip
    text = render_html(report)
    assert '<p class="note binding warning">What binds: speed: 1.30x FP32, under the 1.5x asked, and no plan measured reaches 1.5x on this CPU: &lt;the fastest&gt;.</p>' in text
    assert ">1.45×<" in text and ">chosen 1.30×<" in text
    chart = text[text.index('<polyline class="curve"') : text.index("</svg>", text.index('<polyline class="curve"'))]
    assert ">1.45×<" in chart and ">1.38×<" not in chart  # point 1: in its tooltip and the table only
    assert "binding: <span" not in text  # the sentence replaces the bare word
    assert "speedup 1.38×" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: json_values for k in ["input", "output", "nodes", "verdict", "fidelity", "layer_sensitivity", "weight_only_sensitivity", "auto_policy", "sensitivity", "latency", "timing", "passes", "size_ratio", "calibration"]}))
def test_any_json_in_any_section_renders(report):
    text = render_html(report)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<script" not in text


def test_write_html_is_atomic_with_the_reports_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_html(full_report(), tmp_path / "deep" / "r.html")
    finally:
        os.umask(old)
    assert path.read_text(encoding="utf-8") == render_html(full_report())
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]


# --------------------------------------------------------------------------------------------
# The command line


def test_html_writes_the_page_of_the_json_report(inproc, tmp_path, model_path, calib_npz):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--report", tmp_path / "r.json", "--html", tmp_path / "out" / "r.html", "-q")
    assert result.rc == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    text = (tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert text == render_html(report)
    page = Page(text)
    assert len(page.find("rect", "cell")) == len(report["nodes"]) > 0
    assert not section_missing(page, "fidelity") and section_missing(page, "auto-policy")


def test_html_alone_without_a_json_report(inproc, tmp_path, model_path, calib_npz):
    result = inproc("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib_npz, "--html", tmp_path / "r.html", "-q")
    assert result.rc == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "model.onnx", "q.onnx", "r.html"]


@pytest.mark.parametrize(
    "html, message",
    [
        ("folder", "HTML report folder is a directory"),
        ("r.json", "the HTML report and the report would be the same file r.json"),
        ("model.onnx", "refusing to overwrite the input model model.onnx; choose another HTML report path"),
        ("q.onnx", "the HTML report and the output model would be the same file q.onnx"),
        ("file/r.html", "cannot write the HTML report into file: file is not a folder"),
    ],
)
def test_a_bad_html_path_fails_before_any_work(tmp_path, model_path, calib_npz, html, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_qonnx("quantize", "model.onnx", "-o", "q.onnx", "--calib", "calib.npz", "--report", "r.json", "--html", html, cwd=tmp_path)
    assert result.rc == 2 and result.error_lines == [f"qonnx: error: {message}"], result.err
    assert "Traceback" not in result.err and result.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_failed_html_write_withdraws_the_model_and_the_json_report(tmp_path, model_path, calib_npz, monkeypatch):
    from qonnx import ir as qir
    from qonnx.api import quantize

    original = qir.atomic_write

    def failing(path, write):
        if Path(path).suffix == ".html":
            raise OSError(28, "No space left on device")
        return original(path, write)

    monkeypatch.setattr(qir, "atomic_write", failing)
    with pytest.raises(OSError, match="No space left"):
        quantize(model_path, tmp_path / "out" / "q.onnx", calib_npz, report=tmp_path / "out" / "r.json", html=tmp_path / "out" / "r.html")
    assert not (tmp_path / "out").exists()


def test_a_page_that_cannot_be_rendered_leaves_nothing(tmp_path, model_path, calib_npz, monkeypatch):
    from qonnx import flow
    from qonnx.api import quantize

    def broken(report):
        raise RuntimeError("broken page")

    monkeypatch.setattr(flow, "render_html", broken)
    with pytest.raises(RuntimeError, match="broken page"):
        quantize(model_path, tmp_path / "q.onnx", calib_npz, report=tmp_path / "r.json", html=tmp_path / "r.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "model.onnx"]


# --------------------------------------------------------------------------------------------
# A real kit model, its page in headless Chromium

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
]


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is not installed: `make install` installs it (apt-get install chromium, as root)"
    return path


def browse(page: Path, work: Path, height: int) -> tuple[str, Path]:
    """The DOM Chromium built from ``page``, and a screenshot of it (1280 wide, ``height`` tall)."""
    profile = work / "profile"
    shot = work / f"{page.stem}.png"
    common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*common, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    run = subprocess.run([*common, f"--screenshot={shot}", f"--window-size=1280,{height}", page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    return dom.stdout, shot


def color_pixels(image: Image.Image, hex_color: str, tolerance: int = 8) -> int:
    """How many pixels are ``hex_color`` (within ``tolerance`` per channel)."""
    target = tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    counts = image.getcolors(maxcolors=1 << 22)
    return sum(n for n, rgb in counts if all(abs(a - b) <= tolerance for a, b in zip(rgb, target)))


def check_screenshot(shot: Path, colors: dict[str, int]) -> Image.Image:
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(shot)
    assert image.format == "PNG" and image.width == 1280
    rgb = image.convert("RGB")
    distinct = len(rgb.getcolors(maxcolors=1 << 22))
    assert distinct > 100, f"{distinct} colors: a blank page?"
    for color, at_least in colors.items():
        assert color_pixels(rgb, color) >= at_least, color
    return rgb


def with_search_sections(report: dict) -> dict:
    """The real report with verdict, layer_sensitivity and auto_policy added in the schema the
    sensitivity search writes: a rendering test of that schema on the real model's node names."""
    report = copy.deepcopy(report)
    weighted = [name for name, e in report["nodes"].items() if e["op_type"] in ("Conv", "MatMul", "Gemm")]
    nodes = [
        {"node": name, "op_type": report["nodes"][name]["op_type"], "local_db": 12.0 + (i * 7.3) % 30,
         "local_weights_db": 20.0 + (i * 3.1) % 20, "local_activations_db": 14.0 + (i * 5.7) % 25,
         "global_db": None if i % 4 == 3 else 15.0 + (i * 4.9) % 30}
        for i, name in enumerate(weighted)
    ]
    nodes.sort(key=lambda e: e["local_db"])
    curve = [
        {"int8_fraction": f, "value": v, "speedup": s, "fallback": k}
        for f, v, s, k in [(1.0, 20.6, 1.30, 0), (0.96, 24.0, 1.26, 3), (0.92, 27.1, 1.21, 6), (0.88, 30.3, 1.16, 9), (0.8, 32.0, 1.05, 15), (0.0, math.inf, 1.0, 60)]
    ]
    report["layer_sensitivity"] = {"metric": "sqnr_db", "samples": 4, "evaluations": 12, "rank_correlation": 0.74, "nodes": nodes}
    report["auto_policy"] = {
        "metric": "sqnr_db", "target": 30.0, "achieved": 30.3, "met": True, "fallback": [n["node"] for n in nodes[:9]],
        "fallback_format": "float", "evaluations": 7, "binding": nodes[8]["node"], "curve": curve, "chosen": 3,
    }
    report["verdict"] = {"metric": "sqnr_db", "value": 30.3, "threshold": 30.0, "met": True, "source": "--min", "advice": ["9 sensitive nodes kept in float"]}
    return report


@pytest.mark.kit
def test_a_kit_model_page_renders_in_headless_chromium(tmp_path, photos):
    from qonnx.models import kit

    calib, evaluation = photos
    model = kit.fetch("ppocr-cls")
    result = run_qonnx(
        "quantize", model, "-o", tmp_path / "cls.int8.onnx", "--calib", calib, "--eval", evaluation,
        "--size", "48x192", "--mean", "0.5", "--std", "0.5", "--bgr", "--sensitivity", "1", "--latency",
        "--report", tmp_path / "cls.json", "--html", tmp_path / "cls.html", "-q",
    )
    assert result.rc == 0, result.err
    report = json.loads((tmp_path / "cls.json").read_text())
    page = tmp_path / "cls.html"
    assert page.read_text(encoding="utf-8") == render_html(report)
    assert_self_contained(page.read_text(encoding="utf-8"))

    dom, shot = browse(page, tmp_path, 2000)
    parsed = Page(dom)
    assert {"precision-strip", "sensitivity-bars", "fidelity", "latency", "timing"} <= parsed.ids()
    assert len(parsed.find("rect", "cell")) == len(report["nodes"]) > 100
    assert len(parsed.find("g", "bar-row")) == min(len(report["sensitivity"]["nodes"]), MAX_BARS) > 0
    assert section_missing(parsed, "layer-sensitivity") and section_missing(parsed, "auto-policy")
    # The INT8 cells and the float ones are on the screen, not only in the DOM.
    check_screenshot(shot, {FORMAT_COLORS["int8"]: 500, FORMAT_COLORS["float"]: 200})

    # The same real report with the search's sections: every plot drawn, the whole page captured.
    full = with_search_sections(report)
    full_page = write_html(full, tmp_path / "cls_search.html")
    dom, shot = browse(full_page, tmp_path, 4600)
    parsed = Page(dom)
    assert {"precision-strip", "layer-sensitivity-bars", "auto-policy-curve", "sensitivity-bars", "verdict"} <= parsed.ids()
    assert len(parsed.find("g", "bar-pair")) == min(len(full["layer_sensitivity"]["nodes"]), MAX_BARS)
    assert len(parsed.find("g", "point")) == len(full["auto_policy"]["curve"])
    assert [p["data-index"] for p in parsed.find("g", "point", "chosen")] == ["3"]
    assert len(parsed.find("line", "target")) == 1
    rgb = check_screenshot(shot, {report_html._LOCAL_COLOR: 2000, report_html._GLOBAL_COLOR: 2000, report_html._ACT_COLOR: 500, "#1f8a4c": 100})
    # The page ends inside the screenshot: its last rows are the background, not cut content.
    assert len(rgb.crop((0, rgb.height - 20, rgb.width, rgb.height)).getcolors()) == 1
    keep = os.environ.get("QONNX_SCREENSHOTS")  # a folder to keep the screenshots in, to look at them
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for name in ("cls.png", "cls_search.png"):
            shutil.copy(tmp_path / name, Path(keep) / name)
