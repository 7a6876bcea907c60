"""The ``qonnx`` command: quantize, inspect, passes.

Exit codes: 0 success, 2 bad input or usage, 1 internal error; either failure is one line on
stderr, without a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from qonnx.errors import UserError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is 2 as well; keep one clear line
        raise UserError(f"{self.prog}: {message}")


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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qonnx", description="Quantize ONNX models and report their fidelity.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="quantize a model with calibration data")
    q.add_argument("model", type=Path)
    q.add_argument("-o", "--output", type=Path, required=True, help="where to write the quantized model")
    q.add_argument("--calib", help=".npz file, folder of .npz files, folder of images, or 'random' (optional with --ranges, --mode dynamic, fp16/bf16)")
    q.add_argument("--eval", dest="eval_data", help="held-out data for fidelity (default: last quarter of --calib)")
    q.add_argument("--precision", default="int8", choices=["int8", "fp16", "bf16"])
    q.add_argument("--target", choices=["cpu", "tensorrt", "cuda"], help="default: cpu for int8, cuda for fp16/bf16")
    q.add_argument(
        "--mode",
        default="static",
        choices=["static", "dynamic"],
        help="int8: static, calibrated activation ranges (default); dynamic, MatMul activations quantized at run time, no calibration data needed",
    )
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8: 7-bit weights, for x86 CPUs without VNNI (AVX2 only), where full-range U8xS8 products saturate "
        "(default: on for the cpu target when this machine lacks VNNI; --no-reduce-range forces full-range weights)",
    )
    q.add_argument("--io-types", default="float32", choices=["float32", "fp16", "bf16"], help="fp16/bf16: graph inputs and outputs in the low type too (default: keep float32)")
    q.add_argument("--samples", type=int, help="use at most N calibration samples")
    q.add_argument(
        "--method",
        choices=["minmax", "moving-minmax", "percentile", "entropy", "mse"],
        help="how activation ranges are chosen from the calibration data (default mse, chosen from the benchmark)",
    )
    q.add_argument("--percentile", type=float, metavar="P", help="with --method percentile: keep P%% of values (default 99.99)")
    q.add_argument("--batch-size", type=int, metavar="B", help="calibration samples per onnxruntime run (default 1; needs a dynamic batch dimension)")
    q.add_argument("--calib-memory", metavar="SIZE", help="memory for the tapped tensors of one batch, e.g. 2GiB (default); more splits them over several passes")
    q.add_argument("--ranges", type=Path, metavar="FILE", help="reuse a saved range table instead of calibrating (refused if made for another model)")
    q.add_argument("--save-ranges", type=Path, metavar="FILE", help="save the calibrated range table for reuse with --ranges")
    q.add_argument("--report", type=Path, help="write the JSON report here")
    q.add_argument("--pipeline", help="text pipeline, e.g. 'normalize,resolve-policy,calibrate,insert-qdq,verify'")
    q.add_argument("--policy", help="a policy or plan JSON to replay instead of the target's default")
    q.add_argument("--size", type=_size, help="image size HxW for image folders")
    q.add_argument("--mean", type=_floats3, default=(0.0, 0.0, 0.0), help="per-channel mean after /255")
    q.add_argument("--std", type=_floats3, default=(1.0, 1.0, 1.0), help="per-channel std after /255")
    q.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    q.add_argument("--bgr", action="store_true", help="feed images in BGR channel order")
    q.add_argument("--latency", action="store_true", help="also time FP32 and quantized models (2 threads)")
    q.add_argument(
        "--sensitivity",
        type=int,
        default=0,
        metavar="N",
        help="rank the weighted nodes whose 8-bit activations cost most fidelity, on N held-out samples (one session per node)",
    )
    q.add_argument("--dump-after", action="append", default=[], metavar="PASS", help="save the model after PASS")
    q.add_argument("--seed", type=int, default=0, help="seed for --calib random")
    q.add_argument("--debug", action="store_true", help="verify after every pass; show tracebacks")
    q.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    i = sub.add_parser("inspect", help="opset, ops, parameters and quantizable nodes of a model")
    i.add_argument("model", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--debug", action="store_true")

    p = sub.add_parser("passes", help="list the registered passes")
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


def _quantize(args) -> int:
    from qonnx.api import quantize
    from qonnx.calib.sources import ImagePreprocess
    from qonnx.report import summary_table

    calib, uncalibrated = args.calib, False
    if calib is None and args.precision == "int8" and args.mode == "static" and args.ranges is None and args.pipeline is None:
        raise UserError("quantizing to int8 needs calibration data: give --calib DATA (or --ranges FILE); --mode dynamic needs none")
    if calib == "random":
        calib, uncalibrated = _random_feeds(args.model, args.samples or 16, args.seed), True
    result = quantize(
        args.model,
        args.output,
        calib,
        eval_data=args.eval_data,
        precision=args.precision,
        target=args.target,
        mode=args.mode,
        reduce_range=args.reduce_range,
        io_types=args.io_types,
        samples=args.samples,
        pipeline=args.pipeline,
        policy=args.policy,
        preprocess=ImagePreprocess(size=args.size, mean=args.mean, std=args.std, layout=args.layout, bgr=args.bgr),
        report=args.report,
        latency=args.latency,
        sensitivity=args.sensitivity,
        debug=args.debug,
        progress=not args.quiet and sys.stderr.isatty(),
        dump_after=args.dump_after,
        uncalibrated=uncalibrated,
        method=args.method,
        percentile=args.percentile,
        batch_size=args.batch_size,
        calib_memory=args.calib_memory,
        ranges=args.ranges,
        save_ranges=args.save_ranges,
    )
    if not args.quiet:
        print(summary_table(result.report))
    if uncalibrated:  # after the work, so that a failure stays one line
        print("WARNING: calibrated on random data; the ranges do not reflect real inputs", file=sys.stderr)
    return 0


def _inspect(args) -> int:
    from qonnx.inspect import inspect_model, format_inspection

    facts = inspect_model(args.model)
    print(json.dumps(facts, indent=2) if args.json else format_inspection(facts))
    return 0


def _passes(args) -> int:
    from qonnx.pipeline import DEFAULT_PIPELINE, _load_builtin_passes, aliases, default_pipeline, registry

    _load_builtin_passes()
    width = max(len(n) for n in [*registry, *aliases])
    for name in sorted(registry):
        cls = registry[name]
        print(f"{name:<{width}}  {cls.summary}")
    for name, expansion in aliases.items():
        print(f"{name:<{width}}  = {expansion}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    print(f"fp16/bf16 pipeline: {default_pipeline('fp16', calibrated=True)} (calibrate and float-sensitivity only with --calib or --ranges)")
    return 0


def _one_line(text: str) -> str:
    """A message on one line: some libraries' messages (the onnx checker's, onnx-ir's) span several."""
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = _parser().parse_args(argv)
        return {"quantize": _quantize, "inspect": _inspect, "passes": _passes}[args.command](args)
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
    except Exception as exc:  # an internal error: say so, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        print(f"qonnx: internal error: {type(exc).__name__}: {_one_line(str(exc))} (run with --debug for details)", file=sys.stderr)
        return 1
