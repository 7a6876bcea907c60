"""INT4 weight-only quantization: the ``quantize-weights`` pass on tiny graphs, in both formats.

Each rewritten model runs in onnxruntime and is compared with the float model on the same feed.
Tolerance: the weight error of round-to-nearest is at most half a step per value, so an output
``y_j = sum_k x_k w_kj`` is off by at most ``sum_k |x_k| * step_kj / 2``; the tests check that
bound (times 1.01 for float32 accumulation), computed from the stored scales, not a fixed number.

onnxruntime's CPU provider fuses a blocked ``DequantizeLinear → MatMul`` into MatMulNBits with the
session option ``session.qdq_matmulnbits_accuracy_level``, 4 (int8 activations) unless set: the
sessions here set it to 0, and MatMulNBits nodes are written with ``accuracy_level=0`` (the pass's
default is 4), so that both formats compute in float and only the weights differ.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from qonnx.blockwise import quantize_rtn
from qonnx.policy import PLAN_KEY

from conftest import op_types, run_text

PIPELINE = "normalize,resolve-policy,quantize-weights{options},remove-dead,finalize,verify"
EXACT = "accuracy_level=0"  # float compute in MatMulNBits: only the weights differ (module docstring)
K, N, V = 64, 24, 50


def _model(nodes, inputs, output_shape, initializers, opset=17) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, output_shape)], initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _x(shape):
    return oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, N)).astype(np.float32), rng.standard_normal(N).astype(np.float32)


def _run(proto, fmt="matmulnbits", **options):
    text = PIPELINE.format(options="(" + ",".join(f"{k}={v}" for k, v in {"format": fmt, "accuracy_level": 0, **options}.items()) + ")")
    return run_text(proto, text, precision="int4")


def _bound(x, w, block_size=32, symmetric=True, bits=4):
    """Worst output error of RTN weights: sum_k |x_k| * step_kj / 2 (see the module docstring)."""
    q = quantize_rtn(w, bits, block_size, symmetric)
    step = np.repeat(np.abs(q.scales), block_size, axis=0)[: w.shape[0]]
    return (np.abs(x) @ step) * 0.5 * 1.01


def _check_close(proto, model, x, w, **quant):
    float_out = outputs(proto, {"x": x})[0]
    quant_out = outputs(model, {"x": x})[0]
    bound = _bound(x.reshape(-1, x.shape[-1]), w, **quant).reshape(float_out.shape)
    error = np.abs(quant_out - float_out)
    assert np.all(error <= bound + 1e-5), f"worst excess {np.max(error - bound)}"
    assert error.max() > 0  # it was quantized


def outputs(model: onnx.ModelProto | ir.Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs, with float compute in fused QDQ MatMuls (module docstring)."""
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)


def _plan(model: ir.Model) -> dict:
    return json.loads(model.metadata_props[PLAN_KEY])


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
def test_matmul(fmt):
    w, _ = _weights()
    proto = _model([oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_x([2, 3, K])], [2, 3, N], [onnx.numpy_helper.from_array(w, "w")])
    model, records, ctx = _run(proto, fmt)
    if fmt == "matmulnbits":
        assert op_types(model) == ["MatMulNBits"]
        assert model.graph.node(0).domain == "com.microsoft"
    else:
        assert op_types(model) == ["DequantizeLinear", "MatMul"]
        assert model.opset_imports[""] == 21
        assert model.graph.initializers["w_q"].const_value.dtype == ir.DataType.INT4
    assert "w" not in model.graph.initializers  # the float weight left the file
    x = np.random.default_rng(1).standard_normal((2, 3, K)).astype(np.float32)
    _check_close(proto, model, x, w)
    record = ctx.records["weight_only"]
    assert record.bytes_before == w.nbytes
    assert record.bytes_after == K * N // 2 + (K // 32) * N * 4  # codes + float32 scales, no zero points
    assert _plan(model)["nodes"]["mm"].startswith("weight-only")


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("bits,symmetric", [(4, False), (8, True), (8, False)])
def test_matmul_bits_and_symmetry(fmt, bits, symmetric):
    w, _ = _weights(2)
    proto = _model([oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_x([4, K])], [4, N], [onnx.numpy_helper.from_array(w, "w")])
    policy = {"rules": [{"op_type": "MatMul", "spec": {"format": "weight-only", "weight_bits": bits, "block_size": 16, "symmetric_weights": symmetric}}]}
    text = PIPELINE.format(options=f"(format={fmt},{EXACT})")
    model, _, _ = run_text(proto, text, precision="int4", policy=_policy(policy))
    x = np.random.default_rng(3).standard_normal((4, K)).astype(np.float32)
    _check_close(proto, model, x, w, block_size=16, symmetric=symmetric, bits=bits)


def _policy(data):
    from qonnx.policy import MixedPrecisionPolicy

    return MixedPrecisionPolicy.from_dict(data)


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_keeps_its_bias(fmt, trans_b):
    w, b = _weights(4)
    stored = w.T.copy() if trans_b else w
    proto = _model(
        [oh.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=trans_b)],
        [_x([3, K])],
        [3, N],
        [onnx.numpy_helper.from_array(stored, "w"), onnx.numpy_helper.from_array(b, "b")],
    )
    model, _, _ = _run(proto, fmt)
    assert op_types(model) == (["MatMulNBits"] if fmt == "matmulnbits" else ["DequantizeLinear", "MatMul", "Add"])
    x = np.random.default_rng(5).standard_normal((3, K)).astype(np.float32)
    _check_close(proto, model, x, w)


def _embedding_model(tied_through: str | None, fold_guard: bool = True) -> tuple[onnx.ModelProto, np.ndarray]:
    """ids -> Gather(E) -> (tied) lm_head: MatMul(h, Transpose(E)) or Gemm(h, E, transB=1)."""
    table = np.random.default_rng(6).standard_normal((V, K)).astype(np.float32)
    nodes = [oh.make_node("Gather", ["E", "ids"], ["h"], name="embed")]
    if tied_through == "transpose":
        nodes += [oh.make_node("Transpose", ["E"], ["Et"], perm=[1, 0], name="tr"), oh.make_node("MatMul", ["h", "Et"], ["y"], name="lm_head")]
        out = [4, V]
    elif tied_through == "gemm":
        nodes += [oh.make_node("Gemm", ["h", "E"], ["y"], transB=1, name="lm_head")]
        out = [4, V]
    else:
        nodes += [oh.make_node("Identity", ["h"], ["y"])]
        out = [4, K]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out)],
        [onnx.numpy_helper.from_array(table, "E")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), table


IDS = {"ids": np.array([0, 7, 49, 7], np.int64)}


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("bits", [4, 8])
def test_gather_embedding(fmt, bits):
    proto, table = _embedding_model(None)
    policy = _policy({"rules": [{"op_type": "Gather", "spec": {"format": "weight-only", "weight_bits": bits, "block_size": 32}}]})
    model, _, ctx = run_text(proto, PIPELINE.format(options=f"(format={fmt},{EXACT})"), precision="int4", policy=policy)
    assert ("GatherBlockQuantized" if fmt == "matmulnbits" else "DequantizeLinear") in op_types(model)
    got = outputs(model, IDS)[0]
    expected = quantize_rtn(table.T, bits, 32, True).dequantize().T[IDS["ids"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # the same codes, decoded by onnxruntime
    assert ctx.records["weight_only"].bytes_before == table.nbytes


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("tied_through", ["transpose", "gemm"])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True)])
def test_tied_lm_head(fmt, tied_through, bits, symmetric):
    """The lm_head reads E through a Transpose (or Gemm transB): its weight is E^T, quantized with
    the same blocks (along H) as the Gather's table; the Transpose and the float table go. With
    MatMulNBits the Gather reads the lm_head's codes: the table is stored once."""
    proto, table = _embedding_model(tied_through)
    spec = {"format": "weight-only", "weight_bits": bits, "block_size": 32, "symmetric_weights": symmetric}
    policy = _policy({"rules": [{"op_type": op, "spec": spec} for op in ("MatMul", "Gemm", "Gather")]})
    text = f"resolve-policy,quantize-weights(format={fmt},{EXACT}),remove-dead,finalize,verify"  # no fold-constants: keep the Transpose
    model, _, ctx = run_text(proto, text, precision="int4", policy=policy)
    ops = op_types(model)
    assert "Transpose" not in ops and "E" not in model.graph.initializers
    assert ctx.records["weight_only"].tied == ["lm_head"]
    assert ctx.records["weight_only"].bytes_before == table.nbytes  # one float table, counted once
    if fmt == "matmulnbits":
        nodes = {n.op_type: n for n in model.graph}
        assert nodes["GatherBlockQuantized"].inputs[0] is nodes["MatMulNBits"].inputs[1]
        assert ctx.records["weight_only"].bytes_after < table.nbytes * bits / 32 * 1.6  # codes once, scales (and zero points) twice
    decoded = quantize_rtn(table.T, bits, 32, symmetric).dequantize()
    got = outputs(model, IDS)
    np.testing.assert_allclose(got[0], decoded.T[IDS["ids"]] @ decoded, rtol=1e-4, atol=1e-4)  # float32 sums of 64 products


def test_skips_say_why():
    """A weight that is an activation, a 3-D weight and a K under the block stay float, each with its reason in the plan."""
    rng = np.random.default_rng(8)
    small = rng.standard_normal((8, N)).astype(np.float32)
    cube = rng.standard_normal((2, K, N)).astype(np.float32)
    proto = _model(
        [
            oh.make_node("MatMul", ["x", "x2"], ["a"], name="act"),
            oh.make_node("MatMul", ["s", "small"], ["b"], name="tiny_k"),
            oh.make_node("MatMul", ["x", "cube"], ["c"], name="batched"),
            oh.make_node("ReduceSum", ["c"], ["y"], keepdims=0),
        ],
        [_x([K, K]), oh.make_tensor_value_info("x2", onnx.TensorProto.FLOAT, [K, N]), oh.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [1, 8])],
        None,
        [onnx.numpy_helper.from_array(small, "small"), onnx.numpy_helper.from_array(cube, "cube")],
    )
    proto.graph.output.extend([oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("a", "b")])
    model, records, _ = _run(proto)
    reasons = _plan(model)["reasons"]
    assert reasons == {"act": "weight is not a constant", "tiny_k": "K 8 smaller than the block size 32", "batched": "weight is 3-D, not 2-D"}
    skipped = next(r for r in records if r.name == "quantize-weights").skipped
    assert skipped == {"weight is not a constant": 1, "K 8 smaller than the block size 32": 1, "weight is 3-D, not 2-D": 1}
    assert "MatMulNBits" not in op_types(model)


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
def test_second_run_changes_nothing(fmt):
    w, _ = _weights()
    proto = _model([oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_x([2, K])], [2, N], [onnx.numpy_helper.from_array(w, "w")])
    model, _, _ = _run(proto, fmt)
    again, records, _ = _run(ir.to_proto(model), fmt)
    assert next(r for r in records if r.name == "quantize-weights").modified is False
    assert op_types(again) == op_types(model)


def test_scaled_weight_gets_its_input_divided():
    """AWQ's contract (``qonnx.weight_rounding``): codes of ``diag(s) W`` with ``input_scales = s``;
    the rewritten node must compute ``(x / s) @ dequantize()``, the same function as ``x @ W``."""
    import dataclasses

    from qonnx.blockwise import BlockQuantized
    from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline

    @dataclasses.dataclass(frozen=True)
    class Scaled(BlockQuantized):
        input_scales: np.ndarray | None = None

    w, _ = _weights(9)
    s = np.random.default_rng(10).uniform(0.5, 2.0, K).astype(np.float32)
    proto = _model([oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_x([3, K])], [3, N], [onnx.numpy_helper.from_array(w, "w")])
    model = ir.serde.deserialize_model(proto)
    context = Context(precision="int4")
    run_pipeline(model, build(parse_pipeline("normalize,resolve-policy"), context), context)
    from qonnx.passes.quantize_weights import QuantizeWeights

    rewrite = QuantizeWeights(context, accuracy_level=0)
    found = rewrite._candidate(model.graph.node(0))
    q = quantize_rtn(w * s[:, None], 4, 32, True)
    rewrite._rewrite(model, found, Scaled(q.codes, q.scales, q.zero_points, 4, 32, True, input_scales=s))
    assert op_types(model) == ["Mul", "MatMulNBits"]
    x = np.random.default_rng(11).standard_normal((3, K)).astype(np.float32)
    expected = (x / s) @ q.dequantize()
    np.testing.assert_allclose(outputs(model, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)  # float32 sums of 64 products
