"""FP16/BF16 conversion: FP32 islands with reasons, cast placement, I/O types, Casts, subgraphs.

Numeric tolerances: FP16 keeps 11 significant bits, so a tensor stored in FP16 carries a relative
rounding error up to 2^-11 ≈ 5e-4; a few layers of it stay well under 1e-2 relative to the output's
scale, which is the tolerance used here. BF16 keeps 8 bits (2^-8 ≈ 4e-3): 5e-2.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx import ir as qir
from qonnx import runtime
from qonnx.api import quantize
from qonnx.cast_placement import FP32, LOW, Tensor, cast_bytes, place_casts
from qonnx.calib.sources import ListSource, input_specs
from qonnx.cli import main
from qonnx.models import tiny
from qonnx.passes.emulate_float import emulated
from qonnx.pipeline import Context, build, default_pipeline, parse_pipeline, run_pipeline
from qonnx.policy import PLAN_KEY

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _weights(name, shape, seed=0, scale=0.5):
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32), name)


def _convert(proto, precision="fp16", feeds=None, keep_io_types=True, target="cuda"):
    """Run the FP16/BF16 pipeline (calibrated when ``feeds`` are given); returns (model, context)."""
    model = ir.serde.deserialize_model(proto)
    source = ListSource(feeds, input_specs(model)) if feeds else None
    context = Context(target=target, precision=precision, calib=source)
    text = default_pipeline(precision, calibrated=source is not None, keep_io_types=keep_io_types)
    run_pipeline(model, build(parse_pipeline(text), context), context)
    return model, context


def _reasons(model):
    import json

    return json.loads(model.metadata_props[PLAN_KEY])["reasons"]


def _run(model, feed):
    return runtime.session(model).run(feed)


def _exp_model(scale=1.0):
    """x[1,8] → MatMul → Exp → MatMul → y: the Exp overflows FP16 once its input passes 11."""
    return _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Exp", ["h"], ["e"], name="exp"),
            helper.make_node("MatMul", ["e", "w2"], ["y"], name="mm2"),
        ],
        [helper.make_tensor_value_info("x", F, [1, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        [_weights("w1", (8, 8), 1, scale), _weights("w2", (8, 4), 2, 0.01)],
    )


# ----------------------------------------------------------------------------------------------
# cast placement


def _brute_force(kinds, tensors):
    free = [n for n, k in kinds.items() if k == "free"]
    forced = {n for n, k in kinds.items() if k == "low"}
    best = None
    for bits in itertools.product((False, True), repeat=len(free)):
        low = forced | {n for n, b in zip(free, bits) if b}
        cost = (cast_bytes(tensors, low), sum(1 for b in bits if not b))
        best = cost if best is None or cost < best else best
    return best


@pytest.mark.parametrize("seed", range(6))
def test_min_cut_matches_brute_force_on_random_dags(seed):
    rng = random.Random(seed)
    for _ in range(40):
        n = rng.randint(1, 9)
        kinds = {i: rng.choice(["fp32", "low", "free", "free"]) for i in range(n)}
        tensors = []
        for i in range(n):  # edges only forward: a DAG
            readers = tuple(j for j in range(i + 1, n) if rng.random() < 0.35)
            if rng.random() < 0.2:
                readers += (rng.choice([FP32, LOW]),)  # a graph output or a fixed-type input
            if readers:
                tensors.append(Tensor(i, readers, rng.randint(1, 100)))
        if rng.random() < 0.5:
            tensors.append(Tensor(rng.choice([FP32, LOW]), tuple(rng.sample(range(n), min(n, 2))), rng.randint(1, 100)))
        placement = place_casts(kinds, tensors)
        free_fp32 = sum(1 for node, kind in kinds.items() if kind == "free" and node not in placement.low)
        # The cut's cost is the fewest bytes; among equal costs, the most free nodes in the low format.
        assert (placement.cast_bytes, free_fp32) == _brute_force(kinds, tensors)
        assert all(kinds[node] != "fp32" for node in placement.low)
        assert all(node in placement.low for node, kind in kinds.items() if kind == "low")


def test_min_cut_moves_the_boundary_to_the_smallest_tensor():
    # conv(low) → big → a(free) → small → fp32 island → small → b(free) → big → conv(low)
    kinds = {"conv1": "low", "a": "free", "island": "fp32", "b": "free", "conv2": "low"}
    tensors = [Tensor("conv1", ("a",), 1000), Tensor("a", ("island",), 10), Tensor("island", ("b",), 10), Tensor("b", ("conv2",), 1000)]
    placement = place_casts(kinds, tensors)
    assert placement.low == {"conv1", "a", "b", "conv2"} and placement.cast_bytes == 20
    # When the island's side is cheaper, the free nodes join it.
    tensors = [Tensor("conv1", ("a",), 10), Tensor("a", ("island",), 1000), Tensor("island", ("b",), 1000), Tensor("b", ("conv2",), 10)]
    placement = place_casts(kinds, tensors)
    assert placement.low == {"conv1", "conv2"} and placement.cast_bytes == 20


# ----------------------------------------------------------------------------------------------
# FP32 islands


def test_exp_stays_fp32_without_ranges_with_its_reason():
    model, context = _convert(_exp_model())
    reasons = _reasons(model)
    assert "Exp overflows FP16" in reasons["exp"]
    # What Exp makes may exceed FP16 too, so the MatMul that reads it stays FP32 as well.
    assert "reads e, which may exceed FP16" in reasons["mm2"]
    assert [n.op_type for n in model.graph] == ["Cast", "MatMul", "Cast", "Exp", "MatMul"]
    assert context.records["float_islands"].fp32_nodes == 2


def test_calibrated_ranges_decide_the_exp():
    feeds_small = [{"x": np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32) * 0.1} for i in range(3)]
    model, _ = _convert(_exp_model(), feeds=feeds_small)
    assert "exp" not in _reasons(model)  # observed |h| stays tiny: Exp is safe in FP16
    # Scale the input so that max(h) = 15: exp(15) = 3.3e6 is finite in FP32, infinite in FP16.
    w1 = numpy_helper.to_array(_exp_model().graph.initializer[0])
    feeds_large = [{"x": np.full((1, 8), 15.0 / w1.sum(axis=0).max(), np.float32)}]
    model, _ = _convert(_exp_model(), feeds=feeds_large)
    assert "on the calibration data" in _reasons(model)["exp"]


def test_constant_beyond_fp16_keeps_its_reader_fp32_and_is_not_clipped():
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Mul", ["h", "big"], ["m"], name="scale"),
            helper.make_node("MatMul", ["m", "w2"], ["y"], name="mm2"),
        ],
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        [_weights("w", (4, 4)), numpy_helper.from_array(np.array(1e5, np.float32), "big"), _weights("w2", (4, 4), 3, 1e-5)],
    )
    model, _ = _convert(proto)
    assert "holds |x| up to 1e+05" in _reasons(model)["scale"]
    feed = {"x": np.ones((1, 4), np.float32)}
    expected = _run(ir.serde.deserialize_model(proto), feed)["y"]
    got = _run(model, feed)["y"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())


def test_masked_softmax_stays_fp32_up_to_the_softmax():
    # scores + where(mask, 0, -3.4e38) → Softmax: the mask constant overflows FP16.
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["scores"], name="mm"),
            helper.make_node("Where", ["mask", "zero", "neg"], ["bias"], name="where"),
            helper.make_node("Add", ["scores", "bias"], ["masked"], name="add"),
            helper.make_node("Softmax", ["masked"], ["p"], name="softmax"),
            helper.make_node("MatMul", ["p", "w2"], ["y"], name="mm2"),
        ],
        [helper.make_tensor_value_info("x", F, [2, 4]), helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 4])],
        [helper.make_tensor_value_info("y", F, [2, 4])],
        [_weights("w", (4, 4)), numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(-3.4e38, np.float32), "neg"), _weights("w2", (4, 4), 5)],
    )
    model, _ = _convert(proto)
    reasons = _reasons(model)
    assert "-3.4e+38" in reasons["where"] or "3.4e+38" in reasons["where"]
    assert "may exceed FP16" in reasons["add"] and "may exceed FP16" in reasons["softmax"]
    assert "mm2" not in reasons  # the Softmax's output is bounded: the next MatMul is FP16


# ----------------------------------------------------------------------------------------------
# casts, I/O types, existing Casts


def test_keep_io_types_adds_exactly_one_cast_per_input_and_output():
    proto = tiny.conv_chain(depth=3)
    feed = tiny.random_feed(proto)
    expected = _run(ir.serde.deserialize_model(proto), feed)["y"]
    model, context = _convert(proto)
    casts = [n for n in model.graph if n.op_type == "Cast"]
    assert len(casts) == 2
    assert casts[0].inputs[0].name == "x" and casts[-1].outputs[0].name == "y"
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT and model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert all(v.const_value.dtype == ir.DataType.FLOAT16 for v in model.graph.initializers.values())
    got = _run(model, feed)["y"]
    np.testing.assert_allclose(got, expected, atol=1e-2 * np.abs(expected).max())

    model, _ = _convert(proto, keep_io_types=False)
    assert not [n for n in model.graph if n.op_type == "Cast"]
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT16 and model.graph.outputs[0].dtype == ir.DataType.FLOAT16
    got16 = _run(model, {"x": feed["x"].astype(np.float16)})["y"]
    assert got16.dtype == np.float16
    np.testing.assert_allclose(got16.astype(np.float32), expected, atol=1e-2 * np.abs(expected).max())


def test_existing_casts_in_the_middle_are_rewritten_not_cascaded():
    # x → Conv → Cast(to=float) → Conv → y, and an int64 input cast to float that scales it.
    proto = _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
            helper.make_node("Cast", ["c1"], ["c1f"], to=F, name="cast_mid"),
            helper.make_node("Cast", ["k"], ["kf"], to=F, name="cast_int"),
            helper.make_node("Mul", ["c1f", "kf"], ["m"], name="mul"),
            helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2"),
        ],
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8]), helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
        [_weights("w1", (4, 3, 1, 1)), _weights("w2", (4, 4, 1, 1), 1)],
    )
    model, _ = _convert(proto)
    names = {n.name: n for n in model.graph}
    assert "cast_mid" not in names  # it now cast FP16 to FP16: gone
    assert names["cast_int"].attributes.get_int("to") == TensorProto.FLOAT16  # int64 → FP16 directly
    for node in model.graph:
        if node.op_type == "Cast":
            producer = node.inputs[0].producer()
            assert producer is None or producer.op_type != "Cast"
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32), "k": np.array([3], np.int64)}
    expected = _run(ir.serde.deserialize_model(proto), feed)["y"]
    np.testing.assert_allclose(_run(model, feed)["y"], expected, atol=1e-2 * np.abs(expected).max())


def test_resize_scales_stay_float32():
    proto = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest", name="resize"),
            helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
        ],
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 3, 8, 8])],
        [_weights("w", (3, 3, 1, 1)), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"), _weights("w2", (3, 3, 1, 1), 1)],
    )
    model, _ = _convert(proto)
    assert model.graph.initializers["scales"].const_value.dtype == ir.DataType.FLOAT
    assert model.graph.initializers["w"].const_value.dtype == ir.DataType.FLOAT16
    assert [n.op_type for n in model.graph].count("Cast") == 2


def test_conversion_is_idempotent_and_deterministic():
    proto = tiny.conv_chain(depth=2)
    first, _ = _convert(proto)
    second, _ = _convert(proto)
    assert qir.model_hash(first) == qir.model_hash(second)
    context = Context(target="cuda", precision="fp16", analyses={"plan": True})  # the model carries its plan
    records = run_pipeline(first, build(parse_pipeline("convert-float"), context), context)
    assert not records[0].modified


# ----------------------------------------------------------------------------------------------
# subgraphs, dynamic shapes, external data, BF16


def _if_between_convs():
    def branch(name, factor):
        w = numpy_helper.from_array((np.ones((2, 2, 1, 1)) * factor).astype(np.float32), f"{name}_w")
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_w"], value=w), helper.make_node("Conv", ["c", f"{name}_w"], [f"{name}_y"], name=f"{name}_conv")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", F, [1, 2, 4, 4])],
        )

    return _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("If", ["cond"], ["b"], name="choose", then_branch=branch("then", 1.0), else_branch=branch("else", -1.0)),
            helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2"),
        ],
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", F, [1, 2, 4, 4])],
        [_weights("w", (2, 3, 1, 1)), _weights("w2", (2, 2, 1, 1), 1)],
    )


@pytest.mark.parametrize("cond", [True, False])
def test_if_bodies_stay_fp32_as_a_whole_and_read_fp32(cond):
    proto = _if_between_convs()
    model, _ = _convert(proto)
    assert "subgraph" in _reasons(model)["choose"]
    holder = next(n for n in model.graph if n.op_type == "If")
    for body in holder.attributes["then_branch"].as_graph(), holder.attributes["else_branch"].as_graph():
        inner = next(iter(body))
        conv = next(n for n in body if n.op_type == "Conv")
        assert conv.inputs[0].producer().op_type == "Cast"  # the outer FP16 tensor, cast back for the body
        del inner
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feed = {"x": np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32), "cond": np.array(cond)}
    expected = _run(ir.serde.deserialize_model(proto), feed)["y"]
    np.testing.assert_allclose(_run(model, feed)["y"], expected, atol=1e-2 * np.abs(expected).max())


def test_dynamic_shapes_convert_and_run_at_two_sizes():
    proto = tiny.conv_chain(depth=3, dynamic=True)
    model, _ = _convert(proto)
    reference = ir.serde.deserialize_model(proto)
    for size in (8, 20):
        feed = tiny.random_feed(proto, dims={"n": 1, "h": size, "w": size})
        expected = _run(reference, feed)["y"]
        np.testing.assert_allclose(_run(model, feed)["y"], expected, atol=1e-2 * np.abs(expected).max())


def test_external_data_model_converts(tmp_path):
    proto = tiny.conv_chain(depth=2)
    source = tmp_path / "ext.onnx"
    onnx.save(proto, str(source), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    before = (tmp_path / "ext.data").read_bytes()
    result = quantize(source, tmp_path / "out.onnx", precision="fp16", eval_data=[tiny.random_feed(proto)])
    assert (tmp_path / "ext.data").read_bytes() == before  # the input is never written
    assert result.report["target"] == "cuda" and result.report["size_ratio"] < 1
    assert result.report["fidelity"]["outputs"]["y"]["sqnr_db"] > 50  # 3 FP16 layers: ~60 dB


def test_bf16_model_passes_the_checker_and_its_emulation_runs():
    proto = _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        [helper.make_tensor_value_info("x", F, [2, 8])],
        [helper.make_tensor_value_info("y", F, [2, 4])],
        [_weights("w", (8, 8)), _weights("w2", (8, 4), 1)],
    )
    model, _ = _convert(proto, precision="bf16")
    assert model.graph.initializers["w"].const_value.dtype == ir.DataType.BFLOAT16
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feed = {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)}
    expected = _run(ir.serde.deserialize_model(proto), feed)["y"]
    got = _run(emulated(model), feed)["y"]
    np.testing.assert_allclose(got, expected, atol=5e-2 * np.abs(expected).max())
    assert not np.array_equal(got, expected)  # the emulation does round


def test_bf16_conv_stays_fp32_where_onnx_has_no_bf16_conv():
    model, _ = _convert(tiny.conv_chain(depth=2), precision="bf16")
    reasons = _reasons(model)
    assert "no bfloat16 form" in reasons["conv0"]
    assert not [n for n in model.graph if n.op_type == "Cast"]  # nothing gained: no casts either


# ----------------------------------------------------------------------------------------------
# command line


def test_cli_fp16_without_calibration_data(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    onnx.save(tiny.conv_chain(depth=2), str(source))
    assert main(["quantize", str(source), "-o", str(tmp_path / "m16.onnx"), "--precision", "fp16", "-q"]) == 0
    out = onnx.load(str(tmp_path / "m16.onnx"))
    assert out.graph.input[0].type.tensor_type.elem_type == F
    assert main(["quantize", str(source), "-o", str(tmp_path / "m16b.onnx"), "--precision", "fp16", "--io-types", "fp16", "-q"]) == 0
    assert onnx.load(str(tmp_path / "m16b.onnx")).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    capsys.readouterr()
    assert main(["quantize", str(source), "-o", str(tmp_path / "x.onnx"), "--precision", "int8", "--io-types", "fp16"]) == 2
    assert main(["quantize", str(source), "-o", str(tmp_path / "x.onnx"), "--precision", "fp16", "--target", "cpu"]) == 2
    assert main(["quantize", str(source), "-o", str(tmp_path / "x.onnx")]) == 2  # int8 needs --calib
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("qonnx: error:")]
    assert len(errors) == 3
