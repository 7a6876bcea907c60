"""The ``qonnx`` command: quantize, analyze, check, inspect, passes.

Exit codes: 0 success, 2 bad input or usage, 1 internal error, 3 the model misses the ``--min``
its run set (model and report written), or ``check`` found violations; a failure is one line on
stderr, without a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from qonnx.errors import UserError
from qonnx.verdict import MEET_ON

__all__ = ["main"]


class UsageError(UserError):
    """A command line argparse cannot read; printed after the parser's one-line usage."""

    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is 2 as well; keep one clear line
        raise UsageError(message, self.short_usage())

    def short_usage(self) -> str:
        """The usage on one line: positionals and required options, then ``[options]``."""
        parts = []
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                parts.append("{" + ",".join(action.choices) + "} ...")
            elif not action.option_strings:
                parts.append(action.metavar or action.dest.upper())
            elif action.required:
                parts.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
        return f"usage: {self.prog} {' '.join(parts)} [options]  (see {self.prog} --help)"

    def option_strings(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("--")]


def _floats3(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one or three numbers, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected one or three numbers, got {text!r}")
    return tuple(values)


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 320x320, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def _op_types(text: str) -> list[str]:
    ops = [p.strip() for p in text.split(",") if p.strip()]
    if not ops:
        raise argparse.ArgumentTypeError(f"expected op types such as Conv,MatMul, got {text!r}")
    return ops


# Each quantize flag's destination: (recipe table or None, field) and the flag as typed.
_FIELDS = {
    "precision": (None, "precision", "--precision"),
    "target": (None, "target", "--target"),
    "mode": (None, "mode", "--mode"),
    "reduce_range": (None, "reduce_range", "--reduce-range"),
    "io_types": (None, "io_types", "--io-types"),
    "float_remainder": (None, "float_remainder", "--float"),
    "fp8_activations": (None, "fp8_activations", "--fp8-activations"),
    "policy": (None, "policy", "--policy"),
    "exclude": (None, "nodes_to_exclude", "--exclude"),
    "op_types": (None, "op_types_to_quantize", "--op-types"),
    "pipeline": (None, "pipeline", "--pipeline"),
    "samples": (None, "samples", "--samples"),
    "debug": (None, "debug", "--debug"),
    "requantize": (None, "requantize", "--requantize"),
    "dump_after": (None, "dump_after", "--dump-after"),
    "executor": (None, "executor", "--executor"),
    "workers": (None, "workers", "--workers"),
    "method": ("calibration", "method", "--method"),
    "percentile": ("calibration", "percentile", "--percentile"),
    "batch_size": ("calibration", "batch_size", "--batch-size"),
    "calib_memory": ("calibration", "memory", "--calib-memory"),
    "ranges": ("calibration", "ranges", "--ranges"),
    "save_ranges": ("calibration", "save_ranges", "--save-ranges"),
    "latency": ("evaluation", "latency", "--latency"),
    "sensitivity": ("evaluation", "sensitivity", "--sensitivity"),
    "metric": ("evaluation", "metric", "--metric"),
    "min": ("evaluation", "min", "--min"),
    "no_eval": ("evaluation", "skip", "--no-eval"),
    "meet_on": ("evaluation", "meet_on", "--meet-on"),
    "min_speedup": ("evaluation", "min_speedup", "--min-speedup"),
    "block_size": ("weight_only", "block_size", "--block-size"),
    "weight_bits": ("weight_only", "bits", "--weight-bits"),
    "embedding_bits": ("weight_only", "embedding_bits", "--embedding-bits"),
    "weight_symmetric": ("weight_only", "symmetric", "--asymmetric"),
    "weight_format": ("weight_only", "format", "--weight-format"),
    "accuracy_level": ("weight_only", "accuracy_level", "--accuracy-level"),
    "algorithm": ("weight_only", "algorithm", "--algorithm"),
    "calib": ("data", "calib", "--calib"),
    "eval_data": ("data", "eval", "--eval"),
    "seed": ("data", "seed", "--seed"),
    "size": ("data", "size", "--size"),
    "mean": ("data", "mean", "--mean"),
    "std": ("data", "std", "--std"),
    "layout": ("data", "layout", "--layout"),
    "bgr": ("data", "bgr", "--bgr"),
}

_QUANTIZE_EXAMPLES = """\
images:
  --calib FOLDER reads .png/.jpg/... files: each is converted to RGB (a greyscale image is
  repeated into three channels, an alpha channel is dropped, not blended), resized to --size HxW
  (or the model's own static size) by stretching with bilinear filtering: the aspect ratio is not
  kept, there is no letterbox or crop; then scaled to [0, 1] and normalized (x - mean) / std per
  channel, in RGB order unless --bgr, laid out as --layout. A model's mean and std are those of
  its training pipeline: read them in the model's documentation or its preprocessing code. In
  qonnx's kit: YOLOv8n takes RGB/255 (mean 0, std 1, the defaults); the PP-OCRv4 detector the
  ImageNet statistics in BGR (--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --bgr); the
  PP-OCR classifier --mean 0.5 --std 0.5 --bgr.

recipes:
  --recipe FILE reads the same settings from TOML (see recipes/ and the README); flags given on
  the command line override it. --print-recipe prints the settings in effect as a recipe and
  stops, so a run can be replayed with --recipe.

examples:
  qonnx quantize model.onnx -o model.int8.onnx --calib photos/ --size 320x320 --report report.json
  qonnx quantize model.onnx -o model.int8.onnx --calib samples.npz --eval held_out.npz --latency
  qonnx quantize model.onnx -o model.int8.onnx --calib photos/ --latency --report report.json --html report.html
  qonnx quantize encoder.onnx -o encoder.int8.onnx --mode dynamic
  qonnx quantize model.onnx -o model.int8.onnx --calib photos/ --exclude 'head/.*' --op-types Conv,Gemm
  qonnx quantize model.onnx -o model.fp16.onnx --precision fp16
  qonnx quantize model.onnx -o model.trt.onnx --target tensorrt --calib photos/   # symmetric INT8, FP16 remainder
  qonnx quantize model.onnx -o model.fp8.onnx --precision fp8 --calib photos/     # FLOAT8 E4M3 Q/DQ for TensorRT
  qonnx quantize llm.onnx -o llm.int4.onnx --precision int4 --block-size 32
  qonnx quantize llm.onnx -o llm.int4.onnx --precision int4 --weight-format qdq --embedding-bits 8
  qonnx quantize model.onnx -o model.int8.onnx --recipe recipes/cnn-cpu.toml --calib photos/
  qonnx quantize model.onnx -o model.int8.onnx --calib photos/ --method entropy --print-recipe > mine.toml
  qonnx quantize model.onnx -o model.int8.onnx --calib photos/ --json > report.json
"""

_INSPECT_EXAMPLES = """\
examples:
  qonnx inspect model.onnx
  qonnx inspect model.onnx --json | python -m json.tool
"""

_ANALYZE_EXAMPLES = """\
examples:
  qonnx analyze yolov8n.onnx --calib photos/ --size 320x320
  qonnx analyze det.onnx --calib photos/ --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --bgr --report sens.json
  then: qonnx quantize det.onnx -o det.int8.onnx --calib photos/ ... --policy auto --min 30
  qonnx analyze llm.onnx --precision int4 --calib calib.npz --sensitivity-samples 2   # perplexity, top-1, KL per layer group
"""

# The quantize options that analyze takes as well.
_ANALYZE_SHARED = frozenset(
    {"calib", "eval_data", "target", "reduce_range", "exclude", "op_types", "samples", "method", "percentile", "size", "mean", "std", "layout", "bgr", "seed", "report", "html", "json", "quiet", "debug", "executor", "workers"}
    | {"precision", "block_size", "weight_bits", "embedding_bits", "weight_symmetric", "weight_format", "accuracy_level"}
)

_CHECK_EXAMPLES = """\
exit codes: 0 no violation, 3 violations found, 2 bad input (missing file, not ONNX, not loadable).

examples:
  qonnx check --target tensorrt model.int8.onnx
  qonnx check --target cpu model.int8.onnx --json | python -m json.tool
"""

_PASSES_EXAMPLES = """\
examples:
  qonnx passes
  qonnx quantize model.onnx -o q.onnx --calib data.npz --pipeline 'normalize,resolve-policy,calibrate(method=minmax),insert-qdq,verify'
"""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qonnx", description="Quantize ONNX models and report their fidelity.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # Every quantize option defaults to "not given" (argparse.SUPPRESS), so that a recipe's value
    # stays unless the flag is on the command line; the defaults live in qonnx.config.
    q = sub.add_parser(
        "quantize",
        help="quantize a model with calibration data",
        description="Quantize a model (INT8, or INT4 weight-only) or convert it (FP16/BF16), measure it and report.",
        epilog=_QUANTIZE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    q.add_argument("model", type=Path)
    q.add_argument("-o", "--output", type=Path, required=True, help="where to write the quantized model")
    q.add_argument("--recipe", type=Path, metavar="FILE", help="read the settings from a TOML recipe; flags given here override it")
    q.add_argument("--print-recipe", action="store_true", help="print the settings in effect as a TOML recipe and exit without quantizing")
    q.add_argument("--calib", help=".npz file, folder of .npz files, folder of images, or 'random' (optional with --ranges, --mode dynamic, fp16/bf16)")
    q.add_argument("--eval", dest="eval_data", help="held-out data for fidelity (default: last quarter of --calib)")
    q.add_argument(
        "--precision",
        metavar="{int8,int4,fp8,fp16,bf16}",
        help="int8 quantizes (default); fp8 quantizes to FLOAT8 E4M3 Q/DQ for TensorRT (opset 21); int4 stores MatMul/Gemm weights "
        "and embeddings in 4-bit blocks, activations float, no data needed; fp16 and bf16 convert",
    )
    q.add_argument("--target", metavar="{cpu,tensorrt,cuda}", help="default: cpu for int8 and int4, cuda for fp16/bf16, tensorrt for fp8")
    q.add_argument(
        "--float",
        dest="float_remainder",
        metavar="{fp16,fp32}",
        help="int8/fp8: the format of the nodes left unquantized (default: fp16 for tensorrt, with FP32 islands where the calibrated ranges overflow FP16; fp32 elsewhere)",
    )
    q.add_argument(
        "--fp8-activations",
        metavar="{e4m3,e5m2}",
        help="fp8: the activations' type (default e4m3; e5m2 has more range, one mantissa bit less, and TensorRT takes only E4M3: qonnx check flags it); weights are E4M3",
    )
    q.add_argument(
        "--mode",
        metavar="{static,dynamic}",
        help="int8: static, calibrated activation ranges (default); dynamic, MatMul activations quantized at run time, no calibration data needed",
    )
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        help="int8: 7-bit weights, for x86 CPUs without VNNI (AVX2 only), where full-range U8xS8 products saturate "
        "(default: on for the cpu target when this machine lacks VNNI; --no-reduce-range forces full-range weights)",
    )
    q.add_argument("--io-types", metavar="{float32,fp16,bf16}", help="fp16/bf16: graph inputs and outputs in the low type too (default: keep float32)")
    q.add_argument("--exclude", action="append", metavar="NODE_OR_REGEX", help="keep these nodes float: an exact node name or a regular expression matching the whole name (repeatable)")
    q.add_argument("--op-types", action="extend", type=_op_types, metavar="OP[,OP...]", help="quantize only these op types (e.g. Conv,Gemm); the others stay float")
    q.add_argument("--samples", type=int, help="use at most N calibration samples")
    q.add_argument("--requantize", action="store_true", help="the model is already partly quantized: leave those parts as they are and quantize the float rest (without it, such a model is refused)")
    q.add_argument(
        "--method",
        metavar="{minmax,moving-minmax,percentile,entropy,mse}",
        help="how activation ranges are chosen from the calibration data (default mse, chosen from the benchmark)",
    )
    q.add_argument("--percentile", type=float, metavar="P", help="with --method percentile: keep P%% of values (default 99.99)")
    q.add_argument("--batch-size", type=int, metavar="B", help="calibration samples per onnxruntime run (default 1; needs a dynamic batch dimension)")
    q.add_argument("--calib-memory", metavar="SIZE", help="memory for the tapped tensors of one batch, e.g. 2GiB (default); more splits them over several passes")
    q.add_argument("--ranges", type=Path, metavar="FILE", help="reuse a saved range table instead of calibrating (refused if made for another model)")
    q.add_argument("--save-ranges", type=Path, metavar="FILE", help="save the calibrated range table for reuse with --ranges")
    q.add_argument("--report", metavar="FILE", help="write the JSON report here ('-': print it to stdout, as --json)")
    q.add_argument("--json", action="store_true", help="print the JSON report to stdout (the summary goes to stderr)")
    q.add_argument("--html", type=Path, metavar="FILE", help="write the report as a self-contained HTML page here (plots in inline SVG)")
    q.add_argument("--pipeline", help="text pipeline, e.g. 'normalize,resolve-policy,calibrate,insert-qdq,verify'")
    q.add_argument("--policy", metavar="auto|FILE", help="auto: keep float the fewest most sensitive nodes that let the model meet --metric/--min, measured (plan written beside the model as NAME.plan.json); FILE: a policy or plan JSON to replay instead of the target's default")
    q.add_argument("--size", type=_size, help="image size HxW: images are stretched to it (bilinear, aspect ratio not kept); default: the model's static size")
    q.add_argument("--mean", type=_floats3, help="per-channel mean subtracted after /255, one or three numbers (default 0; from the model's training pipeline)")
    q.add_argument("--std", type=_floats3, help="per-channel std divided by after the mean, one or three numbers (default 1)")
    q.add_argument("--layout", metavar="{NCHW,NHWC}", help="image tensor layout (default NCHW)")
    q.add_argument("--bgr", action=argparse.BooleanOptionalAction, help="feed images in BGR channel order (default RGB)")
    q.add_argument("--latency", action="store_true", help="also time FP32 and quantized models, interleaved (2 threads)")
    q.add_argument(
        "--no-eval",
        action="store_true",
        help="measure no fidelity (no FP32 session on held-out data): all of --calib calibrates, the verdict says not measured",
    )
    q.add_argument(
        "--metric",
        metavar="{auto,sqnr,cosine,top1}",
        help="what the verdict judges: worst-output SQNR, mean-pooled cosine of token embeddings, top-1 agreement of class scores (default auto: from the outputs' shapes)",
    )
    q.add_argument("--min", type=float, metavar="VALUE", help="the value the metric must reach: below it the model and report are still written and the exit code is 3 (default: advice against the metric's floor, exit 0)")
    q.add_argument(
        "--meet-on",
        choices=MEET_ON,
        help="--policy auto: the search samples a plan must meet --min on: pooled (all at once), halves (each half alone), "
        "each (every sample alone, the default), a margin for held-out data (measured in the README)",
    )
    q.add_argument(
        "--min-speedup",
        type=float,
        metavar="RATIO",
        help="--policy auto: the speed asked for, FP32 time over the plan's on this CPU (default 1); below it the report says speed binds "
        "and names the fastest plans measured (reported, not gated: no exit code)",
    )
    q.add_argument(
        "--sensitivity",
        type=int,
        metavar="N",
        help="rank the weighted nodes whose 8-bit activations cost most fidelity, on N held-out samples (one session per node)",
    )
    w = q.add_argument_group("int4 (weight-only) options")
    w.add_argument("--block-size", type=int, metavar="N", help="weights per scale along the reduction axis: 16, 32 (default), 64, 128 or 256")
    w.add_argument("--weight-bits", type=int, metavar="{4,8}", help="bits of MatMul/Gemm weights (default 4)")
    w.add_argument("--embedding-bits", type=int, metavar="{4,8}", help="bits of Gather tables (embeddings) (default: --weight-bits)")
    w.add_argument("--asymmetric", dest="weight_symmetric", action="store_false", help="a zero point per block (default: symmetric, none stored)")
    w.add_argument(
        "--weight-format",
        metavar="{matmulnbits,qdq}",
        help="matmulnbits: onnxruntime's MatMulNBits and GatherBlockQuantized (default); qdq: standard INT4 DequantizeLinear with block_size (opset 21)",
    )
    w.add_argument("--accuracy-level", type=int, metavar="L", help="MatMulNBits compute type: 0 float to 4 int8 activations (default 4: faster on CPU, same fidelity within 0.02 dB in benchmarks/int4_synthetic.py)")
    w.add_argument("--algorithm", metavar="{rtn,gptq,awq}", help="weight rounding: rtn, round to nearest (no data); gptq or awq, from the activations of --calib DATA (default: awq with --calib, the best measured; rtn without)")
    q.add_argument("--dump-after", action="append", metavar="PASS", help="save the model after PASS")
    q.add_argument(
        "--executor",
        metavar="{serial,local,ray,ray://HOST:PORT}",
        help="where independent trials (the global sensitivity scores of --policy auto and analyze) run: serial (this process), local (a process pool, the default), "
        "ray (a local Ray instance) or ray://HOST:PORT (an existing Ray cluster); ray needs pip install 'qonnx[ray]'",
    )
    q.add_argument("--workers", type=int, metavar="N", help="workers of the executor (default 2, or the CPUs of a local Ray instance)")
    q.add_argument("--seed", type=int, help="seed for --calib random (default 0)")
    q.add_argument("--debug", action="store_true", help="verify after every pass; show tracebacks")
    q.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    a = sub.add_parser(
        "analyze",
        help="per-layer sensitivity of a model's INT8 or INT4 weight-only plan",
        description="Score every node the INT8 plan quantizes: local (its own output error, one tapped run) and global "
        "(the model's output error with only that node in INT8, for every weighted node and the worst others). "
        "With --precision int4: every layer group (a residual branch, such as a decoder layer's attention or MLP, or a "
        "single layer such as the embedding or the lm_head) in 4-bit blocks alone, rounded to nearest, scored on the "
        "model's outputs: perplexity, next-token top-1 agreement and KL divergence for a language model's logits. "
        "Writes no model; --report FILE or --json for the figures.",
        epilog=_ANALYZE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    a.add_argument("model", type=Path)
    for action in q._actions:  # the data and plan options mean the same as for quantize
        if action.dest in _ANALYZE_SHARED:
            a._add_action(action)
    a.add_argument("--top", type=int, default=8, help="int8: besides every weighted node, this many other nodes (worst locally) get a global score (default 8)")
    a.add_argument("--exhaustive", action="store_true", default=False, help="int8: a global score for every node (one full evaluation each); int4 scores every layer group")
    a.add_argument("--sensitivity-samples", dest="sensitivity_samples", type=int, default=4, metavar="N", help="evaluation samples per score (default 4)")

    c = sub.add_parser(
        "check",
        help="list where a QDQ model breaks a target's rules",
        description="Check any QDQ model (made by qonnx or another tool) against a target's rules: tensorrt (symmetric INT8, "
        "per-tensor activations, per-channel weights on the output axis, Q/DQ placement) or cpu (every Q/DQ fused by "
        "onnxruntime's CPU provider). One line per violation with the rule and the nodes, then a summary.",
        epilog=_CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("model", type=Path)
    c.add_argument("--target", required=True, choices=("tensorrt", "cpu"), help="whose rules to apply")
    c.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    c.add_argument("--debug", action="store_true")

    i = sub.add_parser(
        "inspect",
        help="opset, ops, parameters and quantizable nodes of a model",
        description="Opset, op histogram, parameters by dtype, dynamic inputs and quantizable nodes of a model.",
        epilog=_INSPECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("model", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--debug", action="store_true")

    p = sub.add_parser(
        "passes",
        help="list the registered passes",
        description="List the registered passes with their options (type = default) and the analyses they need and make, the aliases and the default pipelines.",
        epilog=_PASSES_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true")
    return parser


def _version() -> str:
    from qonnx import __version__

    return f"qonnx {__version__}"


def _random_feeds(model_path: Path, count: int, seed: int):
    import numpy as np

    from qonnx import ir as qir
    from qonnx.calib.sources import ListSource, input_specs

    specs = input_specs(qir.load(model_path))
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for spec in specs:
            if spec.shape is None or not all(isinstance(d, int) and d > 0 for d in spec.shape):
                raise UserError(f"--calib random needs static input shapes; {spec.name!r} is {list(spec.shape or [])}")
            feed[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        feeds.append(feed)
    source = ListSource(feeds, specs)
    source.description = f"{count} random standard-normal feeds (seed {seed}): uncalibrated"
    return source


def _recipe(args):
    """The recipe in effect: the recipe file's settings, overridden by the flags given."""
    from qonnx.config import ConfigError, load_recipe, recipe_from_dict

    given = vars(args)
    source = given.get("recipe")
    data = load_recipe(source) if source is not None else {}
    if source is not None:
        recipe_from_dict(data, str(source))  # the file alone: unknown keys, types and values, naming the file
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    origin = {}
    for dest, (table, field, flag) in _FIELDS.items():
        if dest not in given:
            continue
        value = given[dest]
        if isinstance(value, Path):
            value = str(value)
        (merged.setdefault(table, {}) if table else merged)[field] = value
        origin[(table, field)] = flag
    try:
        return recipe_from_dict(merged)
    except ConfigError as exc:
        flag = origin.get((exc.table, exc.key))
        if flag is not None:
            raise UserError(f"{flag}: {exc.detail}") from None
        if source is not None:
            raise UserError(f"{source}: {exc}") from None
        raise


def _quantize(args) -> int:
    from qonnx.api import quantize
    from qonnx.calib.sources import ImagePreprocess
    from qonnx.config import to_toml
    from qonnx.report import summary_table

    recipe = _recipe(args)
    if getattr(args, "print_recipe", False):
        sys.stdout.write(to_toml(recipe))
        return 0
    config, data = recipe.config, recipe.data
    quiet = getattr(args, "quiet", False)
    report = getattr(args, "report", None)
    to_stdout = getattr(args, "json", False) or report == "-"
    calib, uncalibrated = data.calib, False
    if calib is None and config.precision in ("int8", "fp8") and config.mode == "static" and config.calibration.ranges is None and config.pipeline is None:
        hint = "; --mode dynamic needs none" if config.precision == "int8" else ""
        raise UserError(f"quantizing to {config.precision} needs calibration data: give --calib DATA (or --ranges FILE){hint}")
    if calib == "random":
        calib, uncalibrated = _random_feeds(args.model, config.samples or 16, data.seed), True
    result = quantize(
        args.model,
        args.output,
        calib,
        config=config,
        eval_data=data.eval,
        preprocess=ImagePreprocess(size=data.size, mean=data.mean, std=data.std, layout=data.layout, bgr=data.bgr),
        report=None if report in (None, "-") else Path(report),
        html=getattr(args, "html", None),
        progress=not quiet and sys.stderr.isatty(),
        uncalibrated=uncalibrated,
    )
    if to_stdout:
        print(json.dumps(result.report, indent=2))
    if not quiet:
        print(summary_table(result.report), file=sys.stderr if to_stdout else sys.stdout)
    if uncalibrated:  # after the work, so that a failure stays one line
        print("WARNING: calibrated on random data; the ranges do not reflect real inputs", file=sys.stderr)
    if result.verdict.gate_failed:
        if quiet:  # the one line a CI log needs, even with -q
            print(result.verdict.line(), file=sys.stderr)
        return 3
    return 0


def _analyze(args) -> int:
    from qonnx.calib.sources import ImagePreprocess
    from qonnx.flow import Job, analyze

    recipe = _recipe(args)
    config, data = recipe.config, recipe.data
    if data.calib is None:
        raise UserError("analyze needs calibration data: give --calib DATA")
    if min(args.top, args.sensitivity_samples) < 0 or args.sensitivity_samples == 0:
        raise UserError("--top must not be negative and --sensitivity-samples must be positive")
    report_arg = getattr(args, "report", None)
    quiet = getattr(args, "quiet", False)
    to_stdout = getattr(args, "json", False) or report_arg == "-"
    job = Job(
        args.model,
        args.model,  # no model is written
        None if report_arg in (None, "-") else Path(report_arg),
        data.calib,
        data.eval,
        ImagePreprocess(size=data.size, mean=data.mean, std=data.std, layout=data.layout, bgr=data.bgr),
        progress=not quiet and sys.stderr.isatty(),
        html=getattr(args, "html", None),
    )
    report = analyze(config, job, top=args.top, exhaustive=args.exhaustive, samples=args.sensitivity_samples)
    if to_stdout:
        print(json.dumps(report, indent=2))
    if not quiet:
        print(_sensitivity_table(report), file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _sensitivity_table(report) -> str:
    if report.get("weight_only_sensitivity"):
        return _weight_only_table(report)
    found = report.get("layer_sensitivity")
    if not found:
        return "no node to score: the plan quantizes nothing"
    lines = [f"{'node':<32} {'op':<10} {'local':>7} {'weights':>8} {'activ.':>7} {'global':>7}  (dB, worst first)"]

    def db(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    for entry in found["nodes"][:20]:
        lines.append(
            f"{entry['node'][:32]:<32} {entry['op_type']:<10} {db(entry['local_db']):>7} {db(entry['local_weights_db']):>8} "
            f"{db(entry['local_activations_db']):>7} {db(entry['global_db']):>7}"
        )
    if len(found["nodes"]) > 20:
        lines.append(f"... {len(found['nodes']) - 20} more in the report")
    groups = found.get("groups") or []
    if groups:
        lines.append(f"{'group':<48} {'nodes':>5} {'int8':>5} {'global':>7}  (dB, only the group in INT8; worst first)")
        for group in groups[:12]:
            lines.append(f"{group['name'][-48:]:<48} {len(group['nodes']):>5} {len(group['quantized']):>5} {db(group['global_db']):>7}")
        if len(groups) > 12:
            lines.append(f"... {len(groups) - 12} more groups in the report")
    correlation = found["rank_correlation"]
    lines.append(
        f"{len(found['nodes'])} nodes, {found['evaluations']} full-model evaluations on {found['samples']} samples; "
        f"local vs global rank correlation {'n/a' if correlation is None else f'{correlation:.2f}'}"
    )
    lines.append(f"time {report['timing']['total_s']:.1f} s; next: qonnx quantize ... --policy auto --min VALUE")
    return "\n".join(lines)


def _weight_only_table(report) -> str:
    """The INT4 layer groups, worst first: the figures of the output that ranks them."""
    found = report["weight_only_sensitivity"]
    logits = found["metric"] == "kl_divergence"

    def cell(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def figures(entry) -> str:
        if logits:
            return f"{cell(entry['perplexity'], 3):>10} {cell(entry['next_token_agreement'], 4):>7} {cell(entry['kl_divergence'], 4):>7}"
        return f"{cell(entry['sqnr_db'], 1):>7} {cell(entry['cosine'], 4):>7}"

    head = f"{'perplexity':>10} {'top-1':>7} {'KL':>7}" if logits else f"{'SQNR dB':>7} {'cosine':>7}"
    lines = [f"{'layer group (alone in 4-bit blocks)':<36} {'first layer':<24} {'layers':>6} {head}  ({found['output']}, worst first)"]
    for entry in found["groups"][:20]:
        lines.append(f"{entry['name'][:36]:<36} {entry['nodes'][0][:24]:<24} {len(entry['nodes']):>6} {figures(entry)}")
    if len(found["groups"]) > 20:
        lines.append(f"... {len(found['groups']) - 20} more groups in the report")
    whole = found["whole_plan"]
    lines.append(f"{'all together':<36} {'':<24} {whole['nodes']:>6} {figures(whole)}")
    if logits:
        lines.append(f"{'float':<36} {'':<24} {'':>6} {cell(found['reference_perplexity'], 3):>10}")
    lines.append(
        f"{len(found['groups'])} layer groups, {found['evaluations']} full-model evaluations on {found['samples']} samples, weights rounded to nearest; "
        f"time {report['timing']['total_s']:.1f} s"
    )
    lines.append("next: give the worst groups' layers 8 bits in a policy file (--policy FILE; README, INT4 weight-only), or round with --algorithm awq")
    return "\n".join(lines)


def _check(args) -> int:
    from qonnx import ir as qir
    from qonnx.flow import check_loadable
    from qonnx.qdq_check import check_model
    from qonnx.qdq_rules import rules_for

    qir.check_file(args.model)
    if args.target == "cpu":  # the cpu rules come from onnxruntime's own graph; tensorrt's read the file alone
        check_loadable(args.model)
    violations = check_model(args.model, args.target)
    rules = rules_for(args.target)
    broken = sorted({v.rule for v in violations})
    if args.json:
        document = {
            "model": str(args.model),
            "target": args.target,
            "rules": [{"id": r.id, "statement": r.statement, "source": r.source} for r in rules],
            "violations": [v.to_dict() for v in violations],
            "counts": {rule: sum(v.rule == rule for v in violations) for rule in broken},
        }
        print(json.dumps(document, indent=2))
    else:
        for violation in violations:
            print(f"{violation.rule}: {', '.join(violation.nodes)}: {violation.message}")
        counts = ", ".join(f"{rule} {sum(v.rule == rule for v in violations)}" for rule in broken)
        verdict = f"{len(violations)} violations ({counts})" if violations else "no violation"
        print(f"{args.model}: {verdict} of {len(rules)} {args.target} rules")
    return 3 if violations else 0


def _inspect(args) -> int:
    from qonnx.inspect import inspect_model, format_inspection

    facts = inspect_model(args.model)
    print(json.dumps(facts, indent=2) if args.json else format_inspection(facts))
    return 0


def _passes(args) -> int:
    from qonnx.pipeline import DEFAULT_PIPELINE, _load_builtin_passes, aliases, default_pipeline, pass_options, registry

    _load_builtin_passes()
    width = max(len(n) for n in [*registry, *aliases])
    for name in sorted(registry):
        cls = registry[name]
        print(f"{name:<{width}}  {cls.summary}")
        for option in pass_options(cls):
            print(f"{'':<{width}}    {option}")
        declared = [("needs", cls.analyses_required), ("makes", cls.analyses_produced)]
        analyses = "; ".join(f"{what} {', '.join(sorted(names))}" for what, names in declared if names)
        if analyses:
            print(f"{'':<{width}}    ({analyses})")
    print()
    for name, expansion in aliases.items():
        print(f"{name:<{width}}  = {expansion}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    print(f"int4 pipeline: {default_pipeline('int4')} (with the [weight_only] options on quantize-weights)")
    print(f"fp16/bf16 pipeline: {default_pipeline('fp16', calibrated=True)} (calibrate and float-sensitivity only with --calib or --ranges)")
    print("then, with data: evaluate (and sensitivity, latency when asked for); the model is saved and the report written last")
    return 0


def _one_line(text: str) -> str:
    """A message on one line: some libraries' messages (the onnx checker's, onnx-ir's) span several."""
    return " ".join(text.split())


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; an unknown option is refused with the closest known one, if any."""
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = subparsers.choices.get(getattr(args, "command", None), parser)
        message = f"unrecognized arguments: {' '.join(extras)}"
        known = command.option_strings()
        for extra in extras:
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.split("=")[0], known, n=1, cutoff=0.6)
                if close:
                    message += f"; did you mean {close[0]}?"
                    break
        command.error(message)
    return args


# A full disk, a file-size limit, a quota, a read-only file system: the machine's state, not a bug.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that a run withdraws what it had written (as for
    Ctrl-C) instead of dying with its temporary files in place."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        return _main(argv, debug)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str], debug: bool) -> int:
    try:
        args = _parse(argv)
        return {"quantize": _quantize, "analyze": _analyze, "check": _check, "inspect": _inspect, "passes": _passes}[args.command](args)
    except UsageError as exc:
        print(exc.usage, file=sys.stderr)
        print(f"qonnx: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"qonnx: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:  # a path the user gave
        if debug:
            traceback.print_exc()
        print(f"qonnx: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qonnx: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("qonnx: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # an internal error: say so, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            where = f" writing {exc.filename}" if exc.filename else ""
            print(f"qonnx: error: {exc.strerror or os.strerror(exc.errno)}{where}; the outputs of this run were withdrawn", file=sys.stderr)
            return 2
        print(f"qonnx: internal error: {type(exc).__name__}: {_one_line(str(exc))} (run with --debug for details)", file=sys.stderr)
        return 1
