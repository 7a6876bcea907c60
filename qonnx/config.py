"""The typed configuration of a quantization run, and recipe files (TOML) that hold one.

``QuantizeConfig`` is what the command line, a recipe file and the Python API all build; it is
checked here and nowhere else (precision, target, mode, io types, calibration and evaluation
options), each failure one ``ConfigError`` that names the field. Nothing here reads a model:
``nodes_to_exclude`` and ``op_types_to_quantize`` become policy rules in the ``resolve-policy``
pass.

A recipe is the same fields in TOML::

    precision = "int8"
    target = "cpu"
    nodes_to_exclude = ["head/.*"]

    [calibration]
    method = "entropy"

    [evaluation]
    latency = true

    [data]
    calib = "photos/"
    size = [320, 320]

and for precision ``int4`` (weight-only)::

    precision = "int4"

    [weight_only]
    block_size = 32
    format = "matmulnbits"

Paths in a recipe are read relative to the working directory, as on the command line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from qonnx.errors import UserError
from qonnx.policy import MixedPrecisionPolicy
from qonnx.verdict import MEET_ON

__all__ = [
    "ConfigError",
    "CalibrationConfig",
    "EvaluationConfig",
    "DataConfig",
    "WeightOnlyConfig",
    "QuantizeConfig",
    "Recipe",
    "PRECISIONS",
    "TARGET_NAMES",
    "MODES",
    "IO_TYPES",
    "METHODS",
    "LAYOUTS",
    "load_recipe",
    "recipe_from_dict",
    "to_toml",
]

PRECISIONS = ("int8", "int4", "fp8", "fp16", "bf16")
FLOAT_REMAINDERS = ("fp16", "fp32")
FP8_ACTIVATIONS = ("e4m3", "e5m2")
METRICS = ("auto", "sqnr", "cosine", "top1")
TARGET_NAMES = ("cpu", "tensorrt", "cuda")
MODES = ("static", "dynamic")
IO_TYPES = ("float32", "fp16", "bf16")
METHODS = ("minmax", "moving-minmax", "percentile", "entropy", "mse")
LAYOUTS = ("NCHW", "NHWC")
WEIGHT_FORMATS = ("matmulnbits", "qdq")
ROUNDING_ALGORITHMS = ("rtn", "gptq", "awq")


class ConfigError(UserError):
    """A bad configuration value: ``key`` (in ``table``, None for a top-level field) and what is wrong."""

    def __init__(self, key: str, detail: str, table: str | None = None):
        self.key, self.detail, self.table = key, detail, table
        super().__init__(f"{f'[{table}] ' if table else ''}{key}: {detail}")


# --------------------------------------------------------------------------------------------
# Field checks. Each returns the value in its canonical type (paths as str, sequences as tuples).


def _choice(value: Any, choices: tuple[str, ...], key: str, table: str | None, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(choices)}", table)
    return value


def _bool(value: Any, key: str, table: str | None, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, not {value!r}", table)
    return value


def _int(value: Any, key: str, table: str | None, *, minimum: int, optional: bool = False, what: str = "") -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, not {value!r}", table)
    if value < minimum:
        raise ConfigError(key, what or f"must be at least {minimum}, not {value}", table)
    return value


def _float(value: Any, key: str, table: str | None, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a number, not {value!r}", table)
    return float(value)


def _str(value: Any, key: str, table: str | None, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, not {value!r}", table)
    return value


def _executor(value: Any) -> str | None:
    """An executor spec (``qonnx.executor.EXECUTOR_SPECS``) or None."""
    from qonnx.executor import check_spec

    value = _str(value, "executor", None)
    try:
        return check_spec(value)
    except UserError as exc:
        raise ConfigError("executor", str(exc)) from None


def _strings(value: Any, key: str, table: str | None, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"must be a list of strings, not {value!r}", table)
    for item in value:
        if not isinstance(item, str) or not item:
            raise ConfigError(key, f"must be a list of non-empty strings; {item!r} is not one", table)
    return tuple(value)


def _numbers(value: Any, key: str, table: str | None, count: int) -> tuple[float, ...]:
    """``count`` numbers; a single number (or a list of one) stands for all of them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) not in (1, count):
        raise ConfigError(key, f"must be one or {count} numbers, not {value!r}", table)
    numbers = tuple(_float(v, key, table) for v in value)
    return numbers * count if len(numbers) == 1 else numbers


def _set(instance: Any, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(instance, name, value)


# --------------------------------------------------------------------------------------------
# The configuration


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Options of the pipeline's ``calibrate`` pass (None: the pass's default).

    ``method``: how ranges are chosen (default: the target's, ``mse`` for cpu); ``percentile``: with
    ``method="percentile"``, the share of values kept (default 99.99); ``batch_size``: samples per
    onnxruntime run; ``memory``: budget for the tapped tensors of one batch (``"2GiB"``);
    ``ranges``: a saved range table to reuse instead of calibrating; ``save_ranges``: where to save
    the table used.
    """

    method: Literal["minmax", "moving-minmax", "percentile", "entropy", "mse"] | None = None
    percentile: float | None = None
    batch_size: int | None = None
    memory: str | None = None
    ranges: str | None = None
    save_ranges: str | None = None

    def __post_init__(self):
        table = "calibration"
        _set(
            self,
            method=_choice(self.method, METHODS, "method", table, optional=True),
            percentile=_float(self.percentile, "percentile", table, optional=True),
            batch_size=_int(self.batch_size, "batch_size", table, minimum=1, optional=True, what=f"must be a positive number, not {self.batch_size}"),
            memory=_str(self.memory, "memory", table),
            ranges=_str(self.ranges, "ranges", table),
            save_ranges=_str(self.save_ranges, "save_ranges", table),
        )



@dataclasses.dataclass(frozen=True)
class WeightOnlyConfig:
    """Options of precision ``int4`` (a recipe's ``[weight_only]`` table): weights stored in blocks
    along the reduction axis, activations float.

    ``bits``: 4 or 8 for MatMul/Gemm weights; ``embedding_bits``: for Gather tables (None: ``bits``);
    ``block_size``: values per scale, a power of two from 16 to 256 (onnxruntime's kernels take
    no other); ``symmetric``: zero point ``2**(bits-1)`` (no zero-point tensor) or one per block;
    ``format``: ``matmulnbits`` (onnxruntime's MatMulNBits/GatherBlockQuantized) or ``qdq``
    (standard blocked DequantizeLinear, opset 21); ``accuracy_level``: MatMulNBits's compute type,
    0 (float) to 4 (int8 activations; None, the default: 4, faster than 0 on CPU at the same logit
    SQNR within 0.02 dB, ``benchmarks/results/int4_synthetic.md``); ``algorithm``: rounding, ``rtn`` (round to nearest, no
    data) or ``gptq``/``awq`` (data-aware, from the calibration data's activations); None, the
    default: ``awq`` when calibration data is given (the best measured on SmolLM2-135M,
    ``benchmarks/results/llm.md``), else ``rtn``.
    """

    bits: Literal[4, 8] = 4
    embedding_bits: Literal[4, 8] | None = None
    block_size: int = 32
    symmetric: bool = True
    format: Literal["matmulnbits", "qdq"] = "matmulnbits"
    accuracy_level: int | None = None
    algorithm: Literal["rtn", "gptq", "awq"] | None = None

    def __post_init__(self):
        from qonnx.policy import BLOCK_SIZES

        table = "weight_only"
        for key in ("bits", "embedding_bits"):
            value = getattr(self, key)
            if not (value is None and key == "embedding_bits") and (isinstance(value, bool) or value not in (4, 8)):
                raise ConfigError(key, f"{value!r} is not one of 4, 8", table)
        if isinstance(self.block_size, bool) or self.block_size not in BLOCK_SIZES:
            raise ConfigError(
                "block_size",
                f"{self.block_size!r} is not one of {', '.join(map(str, BLOCK_SIZES))} (onnxruntime's block-quantized kernels take a power of two from 16 to 256)",
                table,
            )
        _bool(self.symmetric, "symmetric", table)
        _choice(self.format, WEIGHT_FORMATS, "format", table)
        _int(self.accuracy_level, "accuracy_level", table, minimum=0, optional=True)
        if self.accuracy_level is not None and self.accuracy_level > 4:
            raise ConfigError("accuracy_level", f"must be 0 to 4, not {self.accuracy_level}", table)
        if self.accuracy_level is not None and self.format != "matmulnbits":
            raise ConfigError("accuracy_level", f"applies to format matmulnbits; with {self.format} onnxruntime takes the session option session.qdq_matmulnbits_accuracy_level", table)
        _choice(self.algorithm, ROUNDING_ALGORITHMS, "algorithm", table, optional=True)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What is measured on the written model and what it must reach.

    ``latency``: FP32 and output timed (2 threads). ``sensitivity``: INT8, rank weighted nodes by
    the cost of their 8-bit activations on N samples. ``metric``: what the verdict judges: ``sqnr``
    (worst output, dB), ``cosine`` (mean-pooled token embeddings, else the output cosine), ``top1``
    (arg-max agreement of class scores), ``auto`` (top1 for a class-score output, cosine for token
    embeddings, else sqnr), or in Python a callable ``score(reference_outputs, test_outputs) -> float``
    (lists of output dicts, higher is better). ``min``: the value the metric must reach; given, a
    run that misses it still writes the model and report and the command exits 3 (a CI gate);
    omitted, the verdict compares with the metric's default floor and only advises. ``skip``: no
    fidelity measured (``--no-eval``: the held-out run costs a session of the FP32 model, more
    memory than quantizing an LLM a layer at a time); all of the calibration data calibrates and
    the verdict says "not measured". It cannot go with ``min``, ``sensitivity``, or the automatic
    policy, which measure. ``meet_on``: the search samples the automatic policy holds a plan to
    ``min`` on: ``pooled`` (all at once), ``halves`` (the first and the second half, each alone),
    ``each`` (every sample alone, the default): a margin for data the search never saw
    (``auto-policy(meet_on=...)``). ``min_speedup``: the speed the automatic policy's report holds
    its plan to (FP32 time over the plan's on this CPU; default 1): below it the speed step tries
    the weighted-only plan, and the report says that speed binds and names the best reachable
    points; it sets no exit code (timings on a shared machine move too much to gate on)
    (``auto-policy(min_speedup=...)``).
    """

    latency: bool = False
    sensitivity: int = 0
    metric: Literal["auto", "sqnr", "cosine", "top1"] | Callable[..., float] = "auto"
    min: float | None = None
    skip: bool = False
    meet_on: Literal["pooled", "halves", "each"] | None = None
    min_speedup: float | None = None

    def __post_init__(self):
        table = "evaluation"
        _bool(self.skip, "skip", table)
        _choice(self.meet_on, MEET_ON, "meet_on", table, optional=True)
        if self.skip and self.min is not None:
            raise ConfigError("skip", "no evaluation, so nothing to hold to min: drop one of them", table)
        if self.skip and self.sensitivity:
            raise ConfigError("skip", "no evaluation, and sensitivity measures on held-out data: drop one of them", table)
        _bool(self.latency, "latency", table)
        _int(self.sensitivity, "sensitivity", table, minimum=0, what=f"must be 0 or a positive number of samples, not {self.sensitivity}")
        if not callable(self.metric):
            _choice(self.metric, METRICS, "metric", table)
        elif self.min is None:
            raise ConfigError("min", "a callable metric needs a threshold (min)", table)
        _set(self, min=_float(self.min, "min", table, optional=True))
        _set(self, min_speedup=_float(self.min_speedup, "min_speedup", table, optional=True))
        if self.min_speedup is not None and not self.min_speedup > 0:
            raise ConfigError("min_speedup", f"must be a positive ratio of FP32 time to the plan's, not {self.min_speedup}", table)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how images become tensors (a recipe's ``[data]`` table).

    ``calib``/``eval``: a .npz file, a folder of .npz files or images, or ``"random"`` (calib only;
    random standard-normal feeds drawn with ``seed``). Images are resized to ``size`` (height,
    width) by stretching, scaled to [0, 1], then ``(x - mean) / std`` per channel.
    """

    calib: str | None = None
    eval: str | None = None
    seed: int = 0
    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    bgr: bool = False

    def __post_init__(self):
        table = "data"
        size = self.size
        if size is not None:
            if isinstance(size, str):
                parts = size.lower().split("x")
                size = [int(p) if p.isdigit() else p for p in parts]
            if not isinstance(size, (list, tuple)) or len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in size):
                raise ConfigError("size", f"must be [height, width] in positive integers, not {self.size!r}", table)
            size = tuple(size)
        std = _numbers(self.std, "std", table, 3)
        if any(s == 0 for s in std):
            raise ConfigError("std", "std values must be non-zero", table)
        _set(
            self,
            calib=_str(self.calib, "calib", table),
            eval=_str(self.eval, "eval", table),
            seed=_int(self.seed, "seed", table, minimum=0),
            size=size,
            mean=_numbers(self.mean, "mean", table, 3),
            std=std,
            layout=_choice(self.layout, LAYOUTS, "layout", table),
            bgr=_bool(self.bgr, "bgr", table),
        )


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Everything that decides the output model and what the report measures.

    ``precision``: int8 quantizes; fp8 quantizes to FLOAT8 E4M3 Q/DQ (TensorRT); int4 stores
    weights in 4-bit blocks (``weight_only``, activations float); fp16/bf16 convert. ``target``: the
    execution provider (None: cpu for int8 and int4, cuda for fp16/bf16, tensorrt for fp8).
    ``float_remainder``: in an int8/fp8 run, the format of the nodes left unquantized, fp16 (with
    FP32 islands where the calibrated ranges overflow FP16) or fp32; None: the target's (fp16 for
    tensorrt). ``fp8_activations``: e4m3 (default) or e5m2 (more range, one mantissa bit less) for
    fp8 activations; weights are E4M3. ``mode``: int8 static (calibrated) or dynamic
    (MatMul activations quantized at run time). ``reduce_range``: 7-bit weights (True), full-range
    (False) or the target's choice for this CPU (None). ``io_types``: fp16/bf16 graph inputs and
    outputs too. ``policy``: a policy object, or a policy / plan JSON file, replacing the target's
    default. ``nodes_to_exclude``: node names or regular expressions (full match) that stay float.
    ``op_types_to_quantize``: only these op types may be quantized (None: the target's).
    ``pipeline``: a text pipeline instead of the default; ``samples``: at most N calibration
    samples; ``debug``: verify after every pass; ``dump_after``: save the model after these passes.
    ``requantize``: accept a model that already holds quantizers, leaving those parts alone (without
    it, such a model is refused). ``executor``: where independent trials (and sharded calibration) run: ``serial``, ``local`` (a
    process pool, the default), ``ray`` (a local Ray instance) or ``ray://HOST:PORT`` (a Ray
    cluster; the ``ray`` extra); ``workers``: its workers (default: two, or the Ray instance's CPUs).
    """

    precision: Literal["int8", "int4", "fp8", "fp16", "bf16"] = "int8"
    target: Literal["cpu", "tensorrt", "cuda"] | None = None
    float_remainder: Literal["fp16", "fp32"] | None = None
    fp8_activations: Literal["e4m3", "e5m2"] = "e4m3"
    mode: Literal["static", "dynamic"] = "static"
    reduce_range: bool | None = None
    io_types: Literal["float32", "fp16", "bf16"] = "float32"
    policy: MixedPrecisionPolicy | str | os.PathLike | None = None
    nodes_to_exclude: tuple[str, ...] = ()
    op_types_to_quantize: tuple[str, ...] | None = None
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    weight_only: WeightOnlyConfig = dataclasses.field(default_factory=WeightOnlyConfig)
    pipeline: str | None = None
    samples: int | None = None
    debug: bool = False
    requantize: bool = False
    dump_after: tuple[str, ...] = ()
    executor: str | None = None
    workers: int | None = None

    def __post_init__(self):
        precision = _choice(self.precision, PRECISIONS, "precision", None)
        target = _choice(self.target, TARGET_NAMES, "target", None, optional=True)
        mode = _choice(self.mode, MODES, "mode", None)
        io_types = _choice(self.io_types, IO_TYPES, "io_types", None)
        policy = self.policy
        if not isinstance(policy, MixedPrecisionPolicy):
            policy = _str(policy, "policy", None)
        excluded = _strings(self.nodes_to_exclude, "nodes_to_exclude", None)
        for pattern in excluded:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError("nodes_to_exclude", f"{pattern!r} is not a regular expression ({exc})") from None
        for name, cls in (("calibration", CalibrationConfig), ("evaluation", EvaluationConfig), ("weight_only", WeightOnlyConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, f"must be a {cls.__name__}, not {getattr(self, name)!r}")
        _set(
            self,
            precision=precision,
            target=target,
            mode=mode,
            reduce_range=_bool(self.reduce_range, "reduce_range", None, optional=True),
            io_types=io_types,
            float_remainder=_choice(self.float_remainder, FLOAT_REMAINDERS, "float_remainder", None, optional=True),
            fp8_activations=_choice(self.fp8_activations, FP8_ACTIVATIONS, "fp8_activations", None),
            policy=policy,
            nodes_to_exclude=excluded,
            op_types_to_quantize=_strings(self.op_types_to_quantize, "op_types_to_quantize", None, optional=True),
            pipeline=_str(self.pipeline, "pipeline", None),
            samples=_int(self.samples, "samples", None, minimum=1, optional=True, what="must be a positive number"),
            debug=_bool(self.debug, "debug", None),
            requantize=_bool(self.requantize, "requantize", None),
            dump_after=_strings(self.dump_after, "dump_after", None),
            executor=_executor(self.executor),
            workers=_int(self.workers, "workers", None, minimum=1, optional=True, what=f"must be a positive number, not {self.workers}"),
        )
        if precision == "int4":
            if mode != "static":
                raise ConfigError("mode", f"{mode} applies to precision int8; int4 quantizes weights only (activations stay float)")
            if self.reduce_range:
                raise ConfigError("reduce_range", "applies to precision int8 (7-bit INT8 weights); int4 weights are blocks of 4 or 8 bits")
        elif self.weight_only != WeightOnlyConfig():
            raise ConfigError("weight_only", f"its options apply to precision int4, not {precision}")
        if self.evaluation.meet_on is not None and policy != "auto":
            raise ConfigError("meet_on", "applies to the automatic policy (policy auto), which holds its plans to min on the search samples", "evaluation")
        if self.evaluation.min_speedup is not None and policy != "auto":
            raise ConfigError("min_speedup", "applies to the automatic policy (policy auto), which times its plans; latency (--latency) times any run", "evaluation")
        if self.evaluation.skip and policy == "auto":
            raise ConfigError("policy", "auto measures its trials and checks the result on held-out data: it cannot go with evaluation skip (--no-eval)")
        if self.float_remainder is not None and precision not in ("int8", "fp8"):
            raise ConfigError("float_remainder", f"applies to precision int8 or fp8 (the format of what is not quantized), not {precision}")
        if self.fp8_activations != "e4m3" and precision != "fp8":
            raise ConfigError("fp8_activations", f"applies to precision fp8, not {precision}")
        if precision == "fp8" and mode != "static":
            raise ConfigError("mode", "fp8 activations are calibrated (static); dynamic applies to precision int8")
        if mode == "dynamic" and target == "tensorrt":
            raise ConfigError("mode", "dynamic INT8 (DynamicQuantizeLinear) is onnxruntime's CPU format; TensorRT takes calibrated Q/DQ (static)")
        if io_types != "float32" and precision in ("int8", "int4", "fp8"):
            raise ConfigError("io_types", f"{io_types} applies to precision fp16 or bf16; with precision {precision} the graph's inputs and outputs stay float32")
        if io_types not in ("float32", precision):
            raise ConfigError("io_types", f"{io_types} does not go with precision {precision} (choose float32 or {precision})")
        if target is not None:
            from qonnx.targets import get_target

            offered = get_target(target).precisions
            if precision not in offered:
                raise ConfigError("target", f"{target} does not take precision {precision} (it takes: {', '.join(offered)})")

    @property
    def effective_target(self) -> str:
        """The target named, or the precision's default: cpu for int8 and int4, cuda for
        fp16/bf16, tensorrt for fp8."""
        from qonnx.targets import default_target

        return self.target or default_target(self.precision)

    @property
    def effective_float_remainder(self) -> str:
        """The format of the unquantized nodes: ``float_remainder``, or the target's (fp16 for
        tensorrt, fp32 elsewhere); fp32 outside INT8/FP8 runs."""
        from qonnx.targets import get_target

        return get_target(self.effective_target).remainder(self.precision, self.float_remainder)

    # Keywords of the older ``qonnx.api.quantize(..., method=..., latency=...)`` form.
    _KEYWORDS = {
        "method": ("calibration", "method"),
        "percentile": ("calibration", "percentile"),
        "batch_size": ("calibration", "batch_size"),
        "calib_memory": ("calibration", "memory"),
        "ranges": ("calibration", "ranges"),
        "save_ranges": ("calibration", "save_ranges"),
        "latency": ("evaluation", "latency"),
        "sensitivity": ("evaluation", "sensitivity"),
        "metric": ("evaluation", "metric"),
        "min": ("evaluation", "min"),
        "meet_on": ("evaluation", "meet_on"),
        "min_speedup": ("evaluation", "min_speedup"),
        "skip_evaluation": ("evaluation", "skip"),
    }

    @classmethod
    def from_keywords(cls, **options: Any) -> QuantizeConfig:
        """A config from keyword options: its own fields, plus the calibration and evaluation
        options by their flat names (``method``, ``calib_memory``, ``latency``…)."""
        top = {f.name for f in dataclasses.fields(cls)} - {"calibration", "evaluation"}
        fields: dict[str, Any] = {}
        tables: dict[str, dict[str, Any]] = {"calibration": {}, "evaluation": {}}
        for key, value in options.items():
            if key in cls._KEYWORDS:
                table, field = cls._KEYWORDS[key]
                tables[table][field] = value
            elif key in top:
                fields[key] = tuple(value) if key in ("dump_after", "nodes_to_exclude") and not isinstance(value, str) else value
            else:
                raise TypeError(f"quantize() got an unexpected keyword argument {key!r}")
        return cls(**fields, calibration=CalibrationConfig(**tables["calibration"]), evaluation=EvaluationConfig(**tables["evaluation"]))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON, TOML): tables as dicts, tuples as lists, a policy object as its dict."""
        data = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (CalibrationConfig, EvaluationConfig, WeightOnlyConfig)):
                value = _plain(value)
            elif isinstance(value, MixedPrecisionPolicy):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            data[field.name] = value
        return data


def _plain(instance: Any) -> dict[str, Any]:
    """Fields as plain data: tuples as lists, a callable (a Python metric) as ``"callable:NAME"``."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return list(value)
        if callable(value):
            return f"callable:{getattr(value, '__qualname__', type(value).__name__)}"
        return value

    return {f.name: plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)}


# --------------------------------------------------------------------------------------------
# Recipes


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A recipe file's content: the config, and the data it names (used by the command line)."""

    config: QuantizeConfig = dataclasses.field(default_factory=QuantizeConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "data": _plain(self.data)}


_TABLES = {"calibration": CalibrationConfig, "evaluation": EvaluationConfig, "weight_only": WeightOnlyConfig, "data": DataConfig}


def recipe_from_dict(data: Mapping[str, Any], source: str | None = None) -> Recipe:
    """Build a recipe from plain data (a parsed TOML file); unknown keys, wrong types and unknown
    values are ConfigErrors, their message prefixed with ``source`` (the file) when given."""
    try:
        top = {f.name for f in dataclasses.fields(QuantizeConfig)} - set(_TABLES)
        fields: dict[str, Any] = {}
        tables: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}
        for key, value in data.items():
            if key in _TABLES:
                if not isinstance(value, Mapping):
                    raise ConfigError(key, f"must be a table ([{key}]), not {value!r}")
                known = {f.name for f in dataclasses.fields(_TABLES[key])}
                for inner, inner_value in value.items():
                    if inner not in known:
                        raise ConfigError(inner, f"unknown key (known: {', '.join(sorted(known))})", key)
                    tables[key][inner] = inner_value
            elif key in top:
                fields[key] = value
            else:
                raise ConfigError(key, f"unknown key (known: {', '.join(sorted(top | set(_TABLES)))})")
        for key in ("nodes_to_exclude", "op_types_to_quantize", "dump_after"):
            if isinstance(fields.get(key), list):
                fields[key] = tuple(fields[key])
        if isinstance(fields.get("policy"), Mapping):
            try:
                fields["policy"] = MixedPrecisionPolicy.from_dict(dict(fields["policy"]))
            except (ValueError, TypeError, KeyError) as exc:
                raise ConfigError("policy", f"not a usable policy ({exc})") from None
        config = QuantizeConfig(
            **fields,
            calibration=CalibrationConfig(**tables["calibration"]),
            evaluation=EvaluationConfig(**tables["evaluation"]),
            weight_only=WeightOnlyConfig(**tables["weight_only"]),
        )
        return Recipe(config, DataConfig(**tables["data"]))
    except ConfigError as exc:
        if source is None:
            raise
        error = ConfigError(exc.key, exc.detail, exc.table)
        error.args = (f"{source}: {exc}",)
        raise error from None


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The plain data of a recipe file (TOML); a missing or unreadable file is a UserError."""
    import tomllib

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"recipe not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot read the recipe ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not a TOML recipe ({exc})") from None


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise UserError(f"{key}: {type(value).__name__} cannot be written into a recipe")


def to_toml(recipe: Recipe) -> str:
    """The recipe as TOML: top-level fields, then the [calibration], [evaluation], [weight_only] (int4
    only) and [data] tables.
    None values are left out (their default is None); a policy object cannot be written (name a
    policy JSON file instead)."""
    data = recipe.to_dict()
    if isinstance(recipe.config.policy, MixedPrecisionPolicy):
        raise UserError("policy: a policy object cannot be written into a recipe; save it as JSON and give its path")
    lines = []
    for key, value in data.items():
        if key not in _TABLES and value is not None:
            lines.append(f"{key} = {_toml_value(value, key)}")
    for table in _TABLES:
        if table == "weight_only" and recipe.config.precision != "int4":
            continue  # its options apply to int4 only
        lines.append(f"\n[{table}]")
        for key, value in data[table].items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value, f'[{table}] {key}')}")
    return "\n".join(lines) + "\n"
