"""Fuzzing: random small graphs quantize within a bound derived from their scales; mutated inputs
end in the clean error.

**Graphs.** hypothesis builds chains, diamonds and residual blocks of Conv, MatMul, Gemm, Add, Mul,
Relu, Sigmoid, Concat, Reshape, Transpose, MaxPool and Resize on an ``[1, C, H, W]`` input, at an
opset from 11 to 21, with one or two outputs. Each graph is quantized to INT8 (static, CPU target,
``minmax`` ranges from random calibration data, evaluated on the same samples) and converted to
FP16; onnxruntime runs every output, whose shape must be the float model's, and whose error must
stay within a bound propagated through the graph in the max norm (over every element of every
sample):

* a tensor quantized with scale ``s`` (a QuantizeLinear reads it in the output model) adds
  ``s / 2``: with ``minmax`` ranges the calibration samples never clip, so only rounding is left;
  weights are 7-bit (``reduce_range=True``): on x86 CPUs without VNNI onnxruntime's U8S8 kernels
  saturate the int16 sum of two ``255 x 127`` products, which the cpu target avoids for Conv and
  Gemm but by design not for MatMul (a 1-node MatMul graph then errs by 0.14 where its scales
  allow 0.02);
* Conv, MatMul and Gemm, ``y = Ŵ x̂`` against ``W x`` with ``K`` terms per output:
  ``|Δy| ≤ ‖Ŵ‖₁ e_x + K · e_W · max|x|`` (``‖·‖₁`` the largest absolute row sum of the weights
  that reach one output, ``e_W`` the weight's rounding error: ``max|W| / 63 / 2``, the 7-bit
  symmetric scale of the whole tensor, which bounds every per-channel one; the INT32 bias rounds
  at ``s_x s_w / 2``, included in the slack). The constant operand of Add and Mul rounds by the
  same ``max|c| / 126`` (a U8 range of width at most ``2 max|c|`` rounds by ``max|c| / 255``);
* Add: ``e_a + e_b``; Mul: ``max|a| e_b + max|b| e_a + e_a e_b``; Sigmoid: ``e / 4`` (its
  slope is at most 1/4); Relu, MaxPool, Concat, Transpose, Reshape and nearest Resize move or keep
  values: the largest error of their inputs.

FP16 is bounded the same way with ``u = 2⁻¹¹`` (round to nearest) in place of the scales: each
tensor adds ``u · max|t|``, weights round by ``u · max|W|`` each, and a dot product of ``K`` terms
accumulated in FP16 adds ``K u / (1 − K u) · ‖W‖₁ max|x|`` (Higham's γ_K). The ``max|t|`` are
taken from the float model's own run. The slack on top of either bound, ``1e-5 · (1 + max|out|)``,
covers float32 rounding of the reference itself. A wrong scale, zero point or axis puts the error
at the size of the values, far above these bounds.

**Mutated files.** Model bytes (bits flipped, truncated, spliced with another model's bytes),
``.npz`` bytes and recipe TOML text: loading them in process ends in ``qonnx.errors.UserError`` or
success, never another exception, within ``TIMEOUT_S`` (a hang fails), and a refusal is one line
(the command prints it after ``qonnx: error:`` with exit 2; ``test_cli_failures`` checks that path).

CI runs ``QONNX_FUZZ_EXAMPLES`` examples per property (default 12, ``derandomize=True`` so the run
is the same each time); ``make fuzz`` runs thousands.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import qonnx
from qonnx.errors import UserError
from qonnx.models import tiny


EXAMPLES = int(os.environ.get("QONNX_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
TIMEOUT_S = 60  # one load of a mutated file; the slowest seen takes well under a second
U16 = 2.0**-11  # FP16's unit roundoff
SAMPLES = 4


# --------------------------------------------------------------------------------------------
# Random graphs, with what the error bound needs to know of each op


@dataclasses.dataclass
class Op:
    kind: str  # "linear", "add", "mul", "sigmoid", "same" (moves or keeps values)
    inputs: list[str]
    output: str
    weight: np.ndarray | None = None  # linear: [K, N] as the reduction sees it (rows: terms of one output)


class Builder:
    """An ONNX graph on ``x [1, C, H, W]`` with the list of ops the error bound walks."""

    def __init__(self, opset: int, rng: np.random.Generator, shape: tuple[int, int, int, int]):
        self.opset, self.rng = opset, rng
        self.nodes, self.inits, self.ops = [], [], []
        self.shapes = {"x": shape}
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def _const(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def _node(self, op_type: str, inputs: list[str], shape, kind: str, **attrs) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        self.shapes[out] = tuple(shape)
        return out

    def conv(self, x: str, cout: int, k: int) -> str:
        n, c, h, w = self.shapes[x]
        weight = (self.rng.standard_normal((cout, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
        bias = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
        out = self._node("Conv", [x, self._const(weight, "w"), self._const(bias, "b")], (n, cout, h, w), "linear", kernel_shape=[k, k], pads=[k // 2] * 4)
        self.ops.append(Op("linear", [x], out, weight.reshape(cout, -1).T))
        return out

    def matmul(self, x: str, cols: int) -> str:
        n, c, h, w = self.shapes[x]
        weight = (self.rng.standard_normal((w, cols)) / np.sqrt(w)).astype(np.float32)
        out = self._node("MatMul", [x, self._const(weight, "w")], (n, c, h, cols), "linear")
        self.ops.append(Op("linear", [x], out, weight))
        return out

    def gemm(self, x: str, cols: int) -> str:
        """Flatten, then Gemm with a bias: the graph's classifier head."""
        n, c, h, w = self.shapes[x]
        flat = self._node("Flatten", [x], (n, c * h * w), "same", axis=1)
        self.ops.append(Op("same", [x], flat))
        weight = (self.rng.standard_normal((c * h * w, cols)) / np.sqrt(c * h * w)).astype(np.float32)
        bias = (self.rng.standard_normal(cols) * 0.1).astype(np.float32)
        out = self._node("Gemm", [flat, self._const(weight, "w"), self._const(bias, "b")], (n, cols), "linear")
        self.ops.append(Op("linear", [flat], out, weight))
        return out

    def unary(self, op_type: str, x: str) -> str:
        kind = {"Relu": "same", "Sigmoid": "sigmoid"}[op_type]
        out = self._node(op_type, [x], self.shapes[x], kind)
        self.ops.append(Op(kind, [x], out))
        return out

    def binary_const(self, op_type: str, x: str) -> str:
        c = self.shapes[x][1]
        value = (self.rng.uniform(0.5, 1.5, (c, 1, 1)) * self.rng.choice([-1, 1])).astype(np.float32)
        const = self._const(value)
        out = self._node(op_type, [x, const], self.shapes[x], op_type.lower())
        self.ops.append(Op(op_type.lower(), [x, const], out))
        self.shapes[const] = value.shape
        return out

    def binary(self, op_type: str, a: str, b: str) -> str:
        out = self._node(op_type, [a, b], self.shapes[a], op_type.lower())
        self.ops.append(Op(op_type.lower(), [a, b], out))
        return out

    def concat(self, a: str, b: str) -> str:
        n, c, h, w = self.shapes[a]
        out = self._node("Concat", [a, b], (n, c + self.shapes[b][1], h, w), "same", axis=1)
        self.ops.append(Op("same", [a, b], out))
        return out

    def maxpool(self, x: str) -> str:
        n, c, h, w = self.shapes[x]
        out = self._node("MaxPool", [x], (n, c, h, w), "same", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        self.ops.append(Op("same", [x], out))
        return out

    def transpose(self, x: str) -> str:
        n, c, h, w = self.shapes[x]
        out = self._node("Transpose", [x], (n, c, w, h), "same", perm=[0, 1, 3, 2])
        self.ops.append(Op("same", [x], out))
        return out

    def reshape(self, x: str) -> str:
        n, c, h, w = self.shapes[x]
        shape = self._const(np.array([n, c, w, h], np.int64), "shape")
        out = self._node("Reshape", [x, shape], (n, c, w, h), "same")
        self.ops.append(Op("same", [x], out))
        return out

    def resize(self, x: str) -> str:
        n, c, h, w = self.shapes[x]
        roi = self._const(np.zeros(0, np.float32), "roi")  # required before opset 13, ignored by nearest
        scales = self._const(np.array([1, 1, 2, 2], np.float32), "scales")
        out = self._node("Resize", [x, roi, scales], (n, c, 2 * h, 2 * w), "same", mode="nearest")
        self.ops.append(Op("same", [x], out))
        return out

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "fuzz",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.shapes["x"]))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shapes[o])) for o in outputs],
            self.inits,
        )
        opsets = [helper.make_opsetid("", self.opset)]
        proto = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
        onnx.checker.check_model(proto, full_check=True)
        return proto


UNARY = ["Conv", "MatMul", "Relu", "Sigmoid", "MaxPool", "Transpose", "Reshape", "Resize", "Add", "Mul"]
SHAPE_KEEPING = ["Conv", "Relu", "Sigmoid", "MaxPool", "Add", "Mul"]


def _apply(b: Builder, op: str, x: str, draw) -> str:
    n, c, h, w = b.shapes[x]
    if op == "Conv":
        return b.conv(x, draw(st.integers(1, 4)), draw(st.sampled_from([1, 3])))
    if op == "MatMul":
        return b.matmul(x, draw(st.integers(2, 5)))
    if op in ("Relu", "Sigmoid"):
        return b.unary(op, x)
    if op in ("Add", "Mul"):
        return b.binary_const(op, x)
    if op == "MaxPool":
        return b.maxpool(x)
    if op == "Transpose":
        return b.transpose(x)
    if op == "Reshape":
        return b.reshape(x)
    if op == "Resize":
        return b.resize(x) if h * w <= 36 else b.maxpool(x)  # keep the tensors small
    raise AssertionError(op)


def _same_shape(b: Builder, op: str, x: str, draw) -> str:
    if op == "Conv":
        return b.conv(x, b.shapes[x][1], draw(st.sampled_from([1, 3])))
    return _apply(b, op, x, draw)


@st.composite
def graphs(draw) -> tuple[onnx.ModelProto, list[Op], list[str]]:
    opset = draw(st.integers(11, 21))
    shape = (1, draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(2, 6)))
    b = Builder(opset, np.random.default_rng(draw(st.integers(0, 2**32 - 1))), shape)
    x, outputs = "x", []
    for _ in range(draw(st.integers(1, 3))):
        block = draw(st.sampled_from(["chain", "diamond", "residual"]))
        if block == "chain":
            for _ in range(draw(st.integers(1, 3))):
                x = _apply(b, draw(st.sampled_from(UNARY)), x, draw)
        elif block == "diamond":
            left = _same_shape(b, draw(st.sampled_from(SHAPE_KEEPING)), x, draw)
            right = _same_shape(b, draw(st.sampled_from(SHAPE_KEEPING)), x, draw)
            merge = draw(st.sampled_from(["Add", "Mul", "Concat"]))
            x = b.concat(left, right) if merge == "Concat" else b.binary(merge, left, right)
        else:
            y = b.unary("Relu", b.conv(x, b.shapes[x][1], 3))
            x = b.binary("Add", x, y)
        if draw(st.booleans()) and x != "x" and not outputs:
            outputs.append(x)  # an intermediate tensor is an output too
    if draw(st.booleans()):
        x = b.gemm(x, draw(st.integers(2, 6)))
    if x == "x":
        x = b.unary("Relu", x)
    if x not in outputs:
        outputs.append(x)
    return b.model(outputs), b.ops, outputs


# --------------------------------------------------------------------------------------------
# The bound


def _float_run(proto: onnx.ModelProto, feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    """Every tensor of the float model on every feed (all node outputs tapped)."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    present = {o.name for o in tapped.graph.output}
    for node in tapped.graph.node:
        for out in node.output:
            if out not in present:
                tapped.graph.output.append(helper.make_empty_tensor_value_info(out))
    session = _session(tapped.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feed))) | feed for feed in feeds]


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _activation_scales(path: Path) -> dict[str, float]:
    """The scale of each tensor a QuantizeLinear reads (the largest, if several do)."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scales[node.input[0]] = max(scales.get(node.input[0], 0.0), float(np.max(inits[node.input[1]])))
    return scales


def _peaks(proto: onnx.ModelProto, feeds: list[dict]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The largest |value| of every tensor over the feeds (constants included), and the constants."""
    values = _float_run(proto, feeds)
    peak = {name: max(float(np.max(np.abs(v[name]), initial=0)) for v in values) for name in values[0]}
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    peak.update({name: float(np.max(np.abs(c), initial=0)) for name, c in consts.items()})
    return peak, consts


def _bound(ops: list[Op], peak: dict[str, float], consts: dict[str, np.ndarray], added, weight_error, accumulation) -> dict[str, float]:
    """The max-norm error bound of every tensor: ``added(name)`` is the rounding each tensor adds,
    ``weight_error(W)`` a constant's rounding (weights, and the constant operand of Add and Mul),
    ``accumulation(K)`` the relative error of a K-term sum."""
    error = {"x": added("x")}
    for op in ops:
        ins = [error[i] if i in error else weight_error(consts[i]) for i in op.inputs]
        if op.kind == "linear":
            k = op.weight.shape[0]
            norm = float(np.abs(op.weight).sum(axis=0).max())
            ew = weight_error(op.weight)
            e = (norm + k * ew) * ins[0] + k * ew * peak[op.inputs[0]] + accumulation(k) * norm * peak[op.inputs[0]]
        elif op.kind == "add":
            e = sum(ins)
        elif op.kind == "mul":
            a, b = op.inputs
            e = peak[a] * ins[1] + peak[b] * ins[0] + ins[0] * ins[1]
        elif op.kind == "sigmoid":
            e = ins[0] / 4
        else:
            e = max(ins)
        error[op.output] = e + added(op.output)
    return error


def _check_outputs(proto, output: Path, outputs: list[str], feeds, bound: dict[str, float], what: str) -> None:
    reference = [_session(proto.SerializeToString()).run(outputs, feed) for feed in feeds]
    got = [_session(str(output)).run(outputs, feed) for feed in feeds]
    for index, name in enumerate(outputs):
        for ref, out in zip((r[index] for r in reference), (g[index] for g in got)):
            assert out.shape == ref.shape, f"{what} {name}: shape {out.shape}, float {ref.shape}"
            worst = float(np.max(np.abs(out.astype(np.float64) - ref)))
            allowed = bound[name] + 1e-5 * (1 + float(np.max(np.abs(ref))))
            assert worst <= allowed, f"{what} {name}: error {worst:.4g} > bound {allowed:.4g}\n{onnx.printer.to_text(proto.graph)}"


@settings(FUZZ)
@given(graphs(), st.integers(0, 2**16))
def test_a_random_graph_quantizes_to_int8_within_the_bound_of_its_scales(tmp_path_factory, graph, seed):
    proto, ops, outputs = graph
    folder = tmp_path_factory.mktemp("int8")
    onnx.save(proto, str(folder / "model.onnx"))
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(SAMPLES)]
    # reduce_range: 7-bit weights for every op. Without VNNI (this machine), onnxruntime's U8S8
    # kernels add two u8 x s8 products in a saturating int16; the cpu target keeps MatMul weights
    # 8-bit (measured better for transformers), and then no scale-derived bound holds for MatMul.
    qonnx.quantize(folder / "model.onnx", folder / "q.onnx", feeds, eval_data=feeds, method="minmax", reduce_range=True)
    peak, consts = _peaks(proto, feeds)
    scales = _activation_scales(folder / "q.onnx")
    bound = _bound(
        ops,
        peak,
        consts,
        added=lambda name: scales.get(name, 0.0) / 2,
        weight_error=lambda w: float(np.max(np.abs(w), initial=0)) / 63 / 2,
        accumulation=lambda k: 0.0,  # INT32 accumulators are exact
    )
    _check_outputs(proto, folder / "q.onnx", outputs, feeds, bound, "INT8")


@settings(FUZZ)
@given(graphs(), st.integers(0, 2**16))
def test_a_random_graph_converts_to_fp16_within_fp16s_bound(tmp_path_factory, graph, seed):
    proto, ops, outputs = graph
    folder = tmp_path_factory.mktemp("fp16")
    onnx.save(proto, str(folder / "model.onnx"))
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(SAMPLES)]
    qonnx.quantize(folder / "model.onnx", folder / "h.onnx", precision="fp16")
    peak, consts = _peaks(proto, feeds)
    bound = _bound(
        ops,
        peak,
        consts,
        added=lambda name: U16 * peak[name],
        weight_error=lambda w: U16 * float(np.max(np.abs(w), initial=0)),
        accumulation=lambda k: k * U16 / (1 - k * U16),
    )
    _check_outputs(proto, folder / "h.onnx", outputs, feeds, bound, "FP16")


# --------------------------------------------------------------------------------------------
# Mutated files


class Hang(Exception):
    pass


@contextmanager
def _timeout(seconds: int):
    def fire(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _clean(load) -> str:
    """Run ``load``: "ok" or "refused" (UserError); anything else, or a hang, fails the test."""
    with _timeout(TIMEOUT_S):
        try:
            load()
        except UserError as exc:
            assert "\n" not in str(exc).strip(), f"a refusal of more than one line: {exc}"
            return "refused"
    return "ok"


MODEL_BYTES = tiny.conv_chain().SerializeToString()
OTHER_BYTES = tiny.matmul_model().SerializeToString()


@st.composite
def mutated_bytes(draw, original: bytes, other: bytes) -> bytes:
    data = bytearray(original)
    how = draw(st.sampled_from(["flip", "truncate", "splice", "overwrite"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "splice":
        cut, take = draw(st.integers(0, len(data))), draw(st.integers(0, len(other)))
        data = data[:cut] + other[take:]
    else:
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


def _calib(n: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((n, 1, 3, 16, 16)).astype(np.float32)}


@settings(FUZZ)
@given(mutated_bytes(MODEL_BYTES, OTHER_BYTES))
def test_mutated_model_bytes_end_in_the_clean_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("model")
    (folder / "model.onnx").write_bytes(data)
    np.savez(folder / "calib.npz", **_calib())
    _clean(lambda: qonnx.quantize(folder / "model.onnx", folder / "q.onnx", str(folder / "calib.npz"), method="minmax"))


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **_calib())
    return buffer.getvalue()


NPZ_BYTES = _npz_bytes()


@settings(FUZZ)
@given(mutated_bytes(NPZ_BYTES, MODEL_BYTES))
def test_mutated_npz_bytes_end_in_the_clean_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("npz")
    onnx.save(tiny.conv_chain(), str(folder / "model.onnx"))
    (folder / "calib.npz").write_bytes(data)
    _clean(lambda: qonnx.quantize(folder / "model.onnx", folder / "q.onnx", str(folder / "calib.npz"), method="minmax"))


RECIPE = """\
precision = "int8"
target = "cpu"
mode = "static"
samples = 4

[calibration]
method = "minmax"
batch_size = 1

[evaluation]
latency = false
sensitivity = 0

[data]
seed = 0
"""


@st.composite
def mutated_recipes(draw) -> str:
    text = draw(mutated_bytes(RECIPE.encode(), b'[data]\nsize = [320, "x"]\nmean = 0.5\n'))
    return text.decode("utf-8", errors="replace")


@settings(FUZZ)
@given(mutated_recipes())
def test_mutated_recipes_end_in_the_clean_error(tmp_path_factory, text):
    from qonnx.config import load_recipe, recipe_from_dict

    folder = tmp_path_factory.mktemp("recipe")
    path = folder / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    _clean(lambda: recipe_from_dict(load_recipe(path), str(path)))
