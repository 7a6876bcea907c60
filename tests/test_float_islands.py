"""float-islands: each rule keeps a node FP32 on a minimal graph, and a near miss does not.

The reasons are the plan's user-facing record, so they are compared in full, with the numbers in
them derived here: FP16's maximum 65504 over the default margin 4 is 16376; its smallest normal
2^-14 ≈ 6.1e-05 and smallest subnormal 2^-24 ≈ 5.96e-08; Exp overflows above ln 65504 ≈ 11.1;
x^p overflows above 65504^(1/p) (256 for p = 2, 40 for p = 3). Ranges are given as a range table
where the test needs exact values, or measured from feeds (``calibrate(method=minmax)``: the exact
extremes). No numeric tolerances: the outcomes are reasons and sets of names.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx.calib.ranges import RangeTable, TensorRange
from qonnx.calib.sources import ListSource, input_specs
from qonnx.errors import UserError
from qonnx.models import tiny
from qonnx.passes.float_islands import float_tensors_to_observe
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline
from qonnx.policy import PLAN_KEY, SPEC_KEY

from conftest import to_ir

F = TensorProto.FLOAT
NO_DATA = "constants and op kinds (no calibration data)"


def _model(nodes, inputs, outputs, initializers=(), opset=17, check=True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    if check:
        onnx.checker.check_model(model)
    return model


def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _islands(proto, precision="fp16", ranges=None, feeds=None, options="", target="cuda", infer=True):
    """resolve-policy, then float-islands with ``ranges`` (a {name: (lo, hi[, nonfinite])} table)
    or ranges calibrated on ``feeds``; returns (reasons, model, context, modified)."""
    model = to_ir(onnx.shape_inference.infer_shapes(proto) if infer else proto)  # intermediate tensors typed FP32
    ctx = Context(target=target, precision=precision, calib=ListSource(feeds, input_specs(model)) if feeds else None)
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    if ranges is not None:
        ctx.analyses["ranges"] = RangeTable({k: TensorRange(*v) for k, v in ranges.items()})
    text = ("calibrate(method=minmax)," if feeds else "") + f"float-islands{options}"
    records = run_pipeline(model, build(parse_pipeline(text), ctx), ctx)
    return _reasons(model), model, ctx, records[-1].modified


def _reasons(model):
    return json.loads(model.metadata_props.get(PLAN_KEY, "{}")).get("reasons", {})


def _unary(op, opset=17, **attributes):
    return _model([helper.make_node(op, ["x"], ["y"], name="n", **attributes)], [_vi("x", [2, 3])], [_vi("y", [2, 3])], opset=opset)


def _binary(op, constant=None, name="k"):
    """y = op(x, k) for a constant k, or op(x, z) for a second input z."""
    second = name if constant is not None else "z"
    inputs = [_vi("x", [2, 3])] + ([] if constant is not None else [_vi("z", [2, 3])])
    inits = [_const(name, constant)] if constant is not None else []
    return _model([helper.make_node(op, ["x", second], ["y"], name="n")], inputs, [_vi("y", [2, 3])], inits)


# ----------------------------------------------------------------------------------------------
# rule 1-3: structure, schema, kernels


def test_a_node_with_a_subgraph_stays_fp32_as_a_whole():
    proto = tiny.if_model()
    reasons, model, _, _ = _islands(proto)
    # The nodes inside the bodies are float already (resolve-policy says why); the If is kept FP32.
    assert reasons == {"choose": "holds a subgraph: kept FP32 as a whole", **{n: "inside a subgraph" for n in ("Constant_0", "Constant_1", "then_conv", "else_conv")}}
    choose = next(n for n in model.graph if n.name == "choose")
    assert json.loads(choose.metadata_props[SPEC_KEY]) == {"format": "float", "reason": "holds a subgraph: kept FP32 as a whole"}


def test_the_onnx_schema_decides_what_can_be_converted():
    # Range has no float16 form in any opset; Conv has a bfloat16 form only from opset 22.
    rng = _model(
        [helper.make_node("Range", ["a", "b", "c"], ["y"], name="range")],
        [_vi("a", []), _vi("b", []), _vi("c", [])],
        [_vi("y", [None])],
        opset=13,
    )
    assert _islands(rng)[0] == {"range": "ONNX Range (opset 13) has no float16 form"}

    def conv(opset):
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
        return _model([node], [_vi("x", [1, 1, 3, 3])], [_vi("y", [1, 1, 3, 3])], [_const("w", np.ones((1, 1, 1, 1)))], opset=opset)

    assert _islands(conv(21), "bf16")[0] == {"conv": "ONNX Conv (opset 21) has no bfloat16 form"}
    assert _islands(conv(22), "bf16")[0] == {}  # the near miss: opset 22 has it
    assert _islands(conv(21), "fp16")[0] == {}


def test_an_op_of_another_domain_has_no_schema_to_convert_it_by():
    node = helper.make_node("Gelu", ["x"], ["y"], name="gelu", domain="com.microsoft")
    proto = _model([node], [_vi("x", [2, 3])], [_vi("y", [2, 3])], check=False)
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert _islands(proto)[0] == {"gelu": "op of domain 'com.microsoft': no schema to convert it by"}


def test_an_op_whose_dtype_attribute_sets_its_output_type_stays_fp32():
    proto = _model([helper.make_node("RandomNormalLike", ["x"], ["y"], name="rnd")], [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    assert _islands(proto)[0] == {"rnd": "its output type is set by its dtype attribute"}


def test_an_op_without_a_kernel_in_the_provider_stays_fp32():
    det = _model([helper.make_node("Det", ["x"], ["y"], name="det")], [_vi("x", [3, 3])], [_vi("y", [])])
    assert _islands(det)[0] == {"det": "no FP16 kernel for Det in CUDAExecutionProvider"}
    assert _islands(_unary("Clip"), "bf16")[0] == {"n": "no BF16 kernel for Clip in CUDAExecutionProvider"}
    assert _islands(_unary("Relu"), "bf16")[0] == {}  # the near miss: Relu has one
    assert _islands(_unary("Clip"), "fp16")[0] == {}


def test_a_node_whose_format_is_moot_is_skipped_and_the_rest_still_judged():
    """Shape reads x in any type and makes INT64: no reason; the Exp after it is still judged."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Exp", ["x"], ["y"], name="exp"),
    ]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("s", [2], TensorProto.INT64), _vi("y", [2, 3])])
    reasons, _, ctx, _ = _islands(proto)
    assert reasons == {"exp": "Exp overflows FP16 above x = 11.1 and no calibration ranges bound its input"}
    assert ctx.records["float_islands"].to_report()["float_islands"] == {"precision": "fp16", "evidence": NO_DATA, "margin": 4.0, "fp32_nodes": 1}


# ----------------------------------------------------------------------------------------------
# rule 4: constants


def test_a_constant_beyond_the_format_over_the_margin_keeps_its_reader_fp32():
    assert _islands(_binary("Mul", 1e5, "big"))[0] == {"n": "constant big holds |x| up to 1e+05, beyond FP16's 65504 / 4"}
    assert _islands(_binary("Mul", [-20000.0, 1.0], "neg"))[0] == {"n": "constant neg holds |x| up to 2e+04, beyond FP16's 65504 / 4"}
    assert _islands(_binary("Mul", 16000.0, "k"))[0] == {}  # under 65504 / 4 = 16376
    # With margin 8 the limit is 8188: 16000 is beyond it.
    assert _islands(_binary("Mul", 16000.0, "k"), options="(margin=8)")[0] == {"n": "constant k holds |x| up to 1.6e+04, beyond FP16's 65504 / 8"}
    # With margin 1 the limit is the maximum itself.
    assert _islands(_binary("Mul", 65504.0, "k"), options="(margin=1)")[0] == {}
    assert _islands(_binary("Mul", 65600.0, "k"), options="(margin=1)")[0] == {"n": "constant k holds |x| up to 6.56e+04, beyond FP16's 65504 / 1"}


def test_a_constant_exactly_at_the_limit_is_kept():
    limit = 65504.0 / 4  # 16376, exactly representable
    assert _islands(_binary("Mul", limit, "k"))[0] == {}


def test_a_constant_that_flushes_to_zero_keeps_its_reader_fp32():
    assert _islands(_binary("Add", 1e-12, "eps"))[0] == {"n": "constant eps holds 1e-12, which FP16 flushes to zero"}
    assert _islands(_binary("Add", 1e-7, "eps"))[0] == {}  # above 2^-24: a subnormal, kept
    assert _islands(_binary("Add", 2.0**-24, "eps"))[0] == {}  # exactly the smallest subnormal: kept
    assert _islands(_binary("Add", 0.0, "zero"))[0] == {}  # zero is exact
    # The smallest vanishing value is named, zeros beside it play no part.
    assert _islands(_binary("Add", [0.0, 3e-8, 1e-9, 1e-5], "k"))[0] == {"n": "constant k holds 1e-09, which FP16 flushes to zero"}
    # BF16 reaches down to ~9e-41: 1e-12 survives there.
    assert _islands(_binary("Mul", 1e-12, "eps"), "bf16")[0] == {}


def test_flushed_values_matter_only_when_they_carry_a_share_of_the_constant():
    # 3e-8 beside 1e-5: its square is 9e-6 of the sum of squares (> 1e-6): the constant is judged broken.
    assert _islands(_binary("Mul", [3e-8, 1e-5], "k"))[0] == {"n": "constant k holds 3e-08, which FP16 flushes to zero"}
    # 3e-8 beside 1e-4: 9e-8 of it, denormal leftovers beside larger weights: kept.
    assert _islands(_binary("Mul", [3e-8, 1e-4], "k"))[0] == {}


def test_a_constant_of_only_infinities_is_not_judged():
    """-inf is -inf in FP16 too (an additive mask): nothing finite to overflow or flush."""
    assert _islands(_binary("Add", [-np.inf, -np.inf], "mask"))[0] == {}
    assert _islands(_binary("Add", [-np.inf, 1e5], "mask"))[0] == {"n": "constant mask holds |x| up to 1e+05, beyond FP16's 65504 / 4"}


def test_an_overflowing_constant_taints_what_its_reader_makes_but_a_flushed_one_does_not():
    def chain(constant):
        nodes = [helper.make_node("Mul", ["x", "k"], ["m"], name="mul"), helper.make_node("Relu", ["m"], ["y"], name="relu")]
        return _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [_const("k", constant)])

    assert _islands(chain(1e5))[0] == {
        "mul": "constant k holds |x| up to 1e+05, beyond FP16's 65504 / 4",
        "relu": "reads m, which may exceed FP16 (made by mul)",
    }
    assert _islands(chain(1e-12))[0] == {"mul": "constant k holds 1e-12, which FP16 flushes to zero"}


def test_a_constant_is_judged_once_and_the_verdict_reused():
    nodes = [helper.make_node("Mul", ["x", "big"], ["a"], name="m1"), helper.make_node("Mul", ["a", "big"], ["y"], name="m2")]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [_const("big", 1e5)])
    reasons = _islands(proto)[0]
    assert reasons["m1"] == reasons["m2"] == "constant big holds |x| up to 1e+05, beyond FP16's 65504 / 4"


# ----------------------------------------------------------------------------------------------
# rule 5: calibration ranges


def _add_relu():
    """h = x + x → Relu → y: h is twice the input's range."""
    nodes = [helper.make_node("Add", ["x", "x"], ["h"], name="add"), helper.make_node("Relu", ["h"], ["y"], name="relu")]
    return _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])])


def test_a_calibrated_range_beyond_the_limit_keeps_readers_and_writers_fp32():
    feeds = [{"x": np.array([[10000.0, -1, 2], [0, 3, 4]], np.float32)}]
    reasons, _, ctx, _ = _islands(_add_relu(), feeds=feeds)
    # x peaks at 1e4 (< 16376); h at 2e4: the Add that writes it and the Relu that reads it.
    assert reasons == {
        "add": "h reaches |x| = 2e+04 on the calibration data, beyond FP16's 65504 / 4",
        "relu": "h reaches |x| = 2e+04 on the calibration data, beyond FP16's 65504 / 4",
    }
    assert ctx.records["float_islands"].to_report()["float_islands"] == {"precision": "fp16", "evidence": "calibration ranges", "margin": 4.0, "fp32_nodes": 2}
    # The near miss: x up to 8000, h up to 16000.
    feeds = [{"x": np.array([[8000.0, -1, 2], [0, 3, 4]], np.float32)}]
    assert _islands(_add_relu(), feeds=feeds)[0] == {}
    # Negative extremes count as much: h down to -2e4.
    assert _islands(_add_relu(), ranges={"x": (-10000.0, 1.0), "h": (-20000.0, 2.0), "y": (0.0, 2.0)})[0]["add"] == (
        "h reaches |x| = 2e+04 on the calibration data, beyond FP16's 65504 / 4"
    )


def test_a_range_exactly_at_the_limit_is_kept_and_the_margin_moves_it():
    ranges = {"x": (-1.0, 8188.0), "h": (-2.0, 16376.0), "y": (0.0, 16376.0)}
    assert _islands(_add_relu(), ranges=ranges)[0] == {}
    assert _islands(_add_relu(), ranges=ranges, options="(margin=2)")[0] == {}
    # With margin 8 the limit is 8188: x (8188) is at it, h (16376) beyond it.
    assert _islands(_add_relu(), ranges=ranges, options="(margin=8)")[0] == {
        "add": "h reaches |x| = 1.64e+04 on the calibration data, beyond FP16's 65504 / 8",
        "relu": "h reaches |x| = 1.64e+04 on the calibration data, beyond FP16's 65504 / 8",
    }


def test_non_finite_values_in_calibration_keep_a_node_fp32():
    ranges = {"x": (-1.0, 1.0, 3), "h": (-2.0, 2.0, 3), "y": (0.0, 2.0)}
    assert _islands(_add_relu(), ranges=ranges)[0] == {
        "add": "x holds 3 infinite or fill values (masks) on the calibration data",
        "relu": "h holds 3 infinite or fill values (masks) on the calibration data",
    }


def test_a_tensor_that_never_leaves_the_subnormals_keeps_its_nodes_fp32():
    ranges = {"x": (-1e-5, 2e-5), "h": (-2e-5, 4e-5), "y": (0.0, 4e-5)}
    expected = "x stays below 2e-05 on the calibration data: FP16 keeps no precision under 6.1e-05"
    assert _islands(_add_relu(), ranges=ranges)[0]["add"] == expected
    # The near misses: a peak of 1e-4 (normal), a peak of exactly 2^-14, and all zeros.
    assert _islands(_add_relu(), ranges={"x": (-1e-4, 1e-4), "h": (-2e-4, 2e-4), "y": (0.0, 2e-4)})[0] == {}
    assert _islands(_add_relu(), ranges={"x": (0.0, 2.0**-14), "h": (0.0, 2.0**-13), "y": (0.0, 2.0**-13)})[0] == {}
    assert _islands(_add_relu(), ranges={"x": (0.0, 0.0), "h": (0.0, 0.0), "y": (0.0, 0.0)})[0] == {}
    # BF16's smallest normal is 1.2e-38: 2e-5 is nothing special there (Relu: BF16 kernel, no residual sum).
    assert "relu" not in _islands(_add_relu(), "bf16", ranges=ranges)[0]


def test_with_ranges_a_tensor_missing_from_the_table_and_constants_are_no_evidence():
    """A partial table (e.g. a saved one) says nothing about the tensors it lacks; a constant is
    judged by its values, not by a range recorded under its name."""
    nodes = [helper.make_node("Add", ["k", "x"], ["h"], name="add"), helper.make_node("Relu", ["h"], ["y"], name="relu")]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [_const("k", 1.0)])
    assert _islands(proto, ranges={"y": (0.0, 1.0)})[0] == {}
    assert _islands(proto, ranges={"k": (0.0, 1e6), "y": (0.0, 1.0)})[0] == {}
    # The first value (k) skipped does not end the search: x is still looked at.
    assert _islands(proto, ranges={"x": (0.0, 1e5), "y": (0.0, 1.0)})[0] == {"add": "x reaches |x| = 1e+05 on the calibration data, beyond FP16's 65504 / 4"}


def test_ranges_replace_the_op_kind_rules():
    nodes = [helper.make_node("Exp", ["x"], ["e"], name="exp"), helper.make_node("Relu", ["e"], ["y"], name="relu")]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    assert _islands(proto, ranges={"x": (-1.0, 1.0), "e": (0.3, 2.8), "y": (0.3, 2.8)})[0] == {}
    # An empty table is no calibration data: the op kinds decide.
    reasons, _, ctx, _ = _islands(proto, ranges={})
    assert reasons == {
        "exp": "Exp overflows FP16 above x = 11.1 and no calibration ranges bound its input",
        "relu": "reads e, which may exceed FP16 (made by exp)",
    }
    assert ctx.records["float_islands"].evidence == NO_DATA


# ----------------------------------------------------------------------------------------------
# rule 6: op kinds without ranges, and what they taint


@pytest.mark.parametrize(
    "exponent, reason",
    [
        (2.0, "Pow with exponent 2 overflows FP16 for |x| > 256 (the variance of a LayerNorm) and no calibration ranges bound its input"),
        (3.0, "Pow with exponent 3 overflows FP16 for |x| > 40 (the variance of a LayerNorm) and no calibration ranges bound its input"),
        ([0.5, 2.5], "Pow with exponent 2.5 overflows FP16 for |x| > 84 (the variance of a LayerNorm) and no calibration ranges bound its input"),
        (1.9, None),
        (0.5, None),
    ],
)
def test_pow_with_an_exponent_of_two_or_more_stays_fp32(exponent, reason):
    proto = _model([helper.make_node("Pow", ["x", "p"], ["y"], name="pow")], [_vi("x", [2, 2])], [_vi("y", [2, 2])], [_const("p", exponent)])
    assert _islands(proto)[0] == ({"pow": reason} if reason else {})


def test_pow_with_a_variable_exponent_stays_fp32():
    proto = _model([helper.make_node("Pow", ["x", "p"], ["y"], name="pow")], [_vi("x", [2, 2]), _vi("p", [])], [_vi("y", [2, 2])])
    assert _islands(proto)[0] == {
        "pow": "Pow with a variable exponent overflows FP16 for |x| > 256 (the variance of a LayerNorm) and no calibration ranges bound its input"
    }


def test_taint_flows_to_readers_until_a_bounded_op():
    """Exp → Add → Softmax → MatMul: the Add and the Softmax read what may exceed FP16; the
    Softmax's output is bounded, so the MatMul is FP16. The Pow's output taints the Sqrt only."""
    nodes = [
        helper.make_node("Exp", ["x"], ["e"], name="exp"),
        helper.make_node("Add", ["e", "x"], ["a"], name="add"),
        helper.make_node("Softmax", ["a"], ["p"], name="softmax"),
        helper.make_node("MatMul", ["p", "w"], ["y"], name="mm"),
        helper.make_node("Pow", ["x", "two"], ["sq"], name="pow"),
        helper.make_node("Sqrt", ["sq"], ["r"], name="sqrt"),
        helper.make_node("Mul", ["r", "y"], ["z"], name="mul"),
    ]
    inits = [_const("w", np.eye(3)), _const("two", 2.0)]
    proto = _model(nodes, [_vi("x", [3, 3])], [_vi("z", [3, 3])], inits)
    assert _islands(proto)[0] == {
        "exp": "Exp overflows FP16 above x = 11.1 and no calibration ranges bound its input",
        "add": "reads e, which may exceed FP16 (made by exp)",
        "softmax": "reads a, which may exceed FP16 (made by add)",
        "pow": "Pow with exponent 2 overflows FP16 for |x| > 256 (the variance of a LayerNorm) and no calibration ranges bound its input",
        "sqrt": "reads sq, which may exceed FP16 (made by pow)",
    }


def test_taint_passes_only_through_inputs_that_follow_the_node():
    """Cast reads its input in any type: an Exp's output cast to FP32 does not make the Cast FP32."""
    nodes = [helper.make_node("Exp", ["x"], ["e"], name="exp"), helper.make_node("Cast", ["e"], ["y"], name="cast", to=F)]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    assert _islands(proto)[0] == {"exp": "Exp overflows FP16 above x = 11.1 and no calibration ranges bound its input"}


def test_structural_reasons_do_not_taint():
    """A node kept FP32 for its kernel or its schema does not make its readers FP32."""
    nodes = [helper.make_node("Det", ["x"], ["d"], name="det"), helper.make_node("Mul", ["d", "d"], ["y"], name="mul")]
    proto = _model(nodes, [_vi("x", [3, 3])], [_vi("y", [])])
    assert _islands(proto)[0] == {"det": "no FP16 kernel for Det in CUDAExecutionProvider"}


def test_bf16_has_no_overflow_rules_but_still_follows_taint():
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "r"], ["y"], name="square"),
    ]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [_const("big", 1e38)])
    assert _islands(proto, "bf16")[0] == {
        "mul": "constant big holds |x| up to 1e+38, beyond BF16's 3.3895e+38 / 4",
        "relu": "reads m, which may exceed BF16 (made by mul)",
        "square": "reads r, which may exceed BF16 (made by relu)",
    }


# ----------------------------------------------------------------------------------------------
# rule 7: reductions and BF16's mantissa


def _reduce(op, shape, axes=None, opset=17, keepdims=1, **attributes):
    inputs, inits = ["x"], []
    if axes is not None and (op != "ReduceMean" or opset >= 18):
        inputs.append("axes")
        inits.append(_const("axes", axes, np.int64))
    elif axes is not None:
        attributes["axes"] = axes
    node = helper.make_node(op, inputs, ["y"], name="r", keepdims=keepdims, **attributes)
    return _model([node], [_vi("x", shape)], [_vi("y", None)], inits, opset=opset, check=False)


@pytest.mark.parametrize(
    "op, shape, axes, count",
    [
        ("ReduceSum", [2, 4096], [1], 4096),
        ("ReduceSum", [2, 4096], [-1], 4096),
        ("ReduceSum", [64, 64], None, 4096),  # no axes: all of them
        ("ReduceSumSquare", [2, 64, 64], [1, 2], 4096),
        ("ReduceMean", [2, 8192], [1], 8192),
    ],
)
def test_a_reduction_over_4096_elements_or_more_stays_fp32(op, shape, axes, count):
    reason = f"{op} over {count} elements: a FP16 accumulator loses the small terms"
    assert _islands(_reduce(op, shape, axes))[0] == {"r": reason}


@pytest.mark.parametrize("op, shape, axes", [("ReduceSum", [2, 4095], [1]), ("ReduceSum", [4096, 2], [1]), ("ReduceMean", [64, 63], None)])
def test_a_shorter_reduction_is_fp16(op, shape, axes):
    assert _islands(_reduce(op, shape, axes))[0] == {}


def test_long_reduction_is_an_option():
    assert _islands(_reduce("ReduceSum", [2, 100], [1]), options="(long_reduction=100)")[0] == {
        "r": "ReduceSum over 100 elements: a FP16 accumulator loses the small terms"
    }
    assert _islands(_reduce("ReduceSum", [2, 100], [1]), options="(long_reduction=101)")[0] == {}


def test_reduce_mean_axes_as_an_attribute_and_noop_with_empty_axes():
    assert _islands(_reduce("ReduceMean", [2, 4096], [1], opset=13))[0] == {"r": "ReduceMean over 4096 elements: a FP16 accumulator loses the small terms"}
    assert _islands(_reduce("ReduceMean", [2, 2048], [0, 1], opset=13))[0] == {"r": "ReduceMean over 4096 elements: a FP16 accumulator loses the small terms"}
    # noop_with_empty_axes and no axes: nothing is reduced.
    assert _islands(_reduce("ReduceSum", [2, 4096], None, noop_with_empty_axes=1))[0] == {}


def test_a_long_sum_taints_its_readers_but_a_long_mean_does_not():
    def chain(op):
        nodes = [helper.make_node(op, ["x", "axes"], ["s"], name="r"), helper.make_node("Relu", ["s"], ["y"], name="relu")]
        return _model(nodes, [_vi("x", [2, 4096])], [_vi("y", [2, 1])], [_const("axes", [1], np.int64)], opset=18)

    assert _islands(chain("ReduceSum"))[0] == {
        "r": "ReduceSum over 4096 elements: a FP16 accumulator loses the small terms",
        "relu": "reads s, which may exceed FP16 (made by r)",
    }
    assert _islands(chain("ReduceMean"))[0] == {"r": "ReduceMean over 4096 elements: a FP16 accumulator loses the small terms"}


def test_a_sum_over_an_unknown_number_of_elements_stays_fp32_without_ranges():
    def dynamic(op, axes_input=False):
        inputs = ["x", "axes"] if axes_input else ["x"]
        node = helper.make_node(op, inputs, ["y"], name="r")
        extra = [_vi("axes", [1], TensorProto.INT64)] if axes_input else []
        return _model([node], [_vi("x", ["n", 8])] + extra, [_vi("y", None)], check=False)

    assert _islands(dynamic("ReduceSum"))[0] == {"r": "ReduceSum over an unknown number of elements may exceed FP16 and no calibration ranges bound it"}
    # Axes given at run time: the count is unknown too.
    assert _islands(dynamic("ReduceL2", axes_input=True))[0] == {"r": "ReduceL2 over an unknown number of elements may exceed FP16 and no calibration ranges bound it"}
    assert _islands(dynamic("ReduceMean"))[0] == {}  # a mean stays within its input's range
    assert _islands(dynamic("ReduceSum"), "bf16")[0] == {}  # BF16 has FP32's range
    # Over the known axis only: 8 elements.
    assert _islands(_reduce("ReduceSum", ["n", 8], [1]))[0] == {}


def test_bf16_keeps_exp_pow_log_and_residual_sums_fp32():
    assert _islands(_unary("Exp"), "bf16")[0] == {"n": "Exp turns BF16's rounding (2^-9 relative) into a much larger error"}
    assert _islands(_binary("Pow", 0.5, "h"), "bf16")[0] == {"n": "Pow turns BF16's rounding (2^-9 relative) into a much larger error"}
    assert _islands(_binary("Add"), "bf16")[0] == {"n": "Add of two computed tensors (a residual sum): BF16's 8-bit mantissa drops the smaller one's low bits"}
    assert _islands(_binary("Sub"), "bf16")[0] == {"n": "Sub of two computed tensors (a residual sum): BF16's 8-bit mantissa drops the smaller one's low bits"}
    # The near misses: a constant operand, a product, and FP16 (11 bits) for all of these.
    assert _islands(_binary("Add", 1.0), "bf16")[0] == {}
    assert _islands(_binary("Mul"), "bf16")[0] == {}
    assert _islands(_binary("Add"), "fp16")[0] == {} and _islands(_binary("Pow", 0.5, "h"), "fp16")[0] == {}


def test_bf16_rounding_reasons_do_not_taint():
    nodes = [helper.make_node("Exp", ["x"], ["e"], name="exp"), helper.make_node("Relu", ["e"], ["y"], name="relu")]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    assert _islands(proto, "bf16")[0] == {"exp": "Exp turns BF16's rounding (2^-9 relative) into a much larger error"}


# ----------------------------------------------------------------------------------------------
# the pass itself


def test_the_pass_refuses_int8_and_a_margin_under_one():
    with pytest.raises(UserError, match="^float-islands is for --precision fp16 or bf16, not int8$"):
        _islands(_unary("Relu"), "int8", target="cpu")
    with pytest.raises(UserError, match=r"^float-islands\(margin\) must be at least 1, not 0.5$"):
        _islands(_unary("Relu"), options="(margin=0.5)")
    assert _islands(_unary("Relu"), options="(margin=1)")[0] == {}


def test_the_pass_records_specs_once_and_is_idempotent():
    model = to_ir(_binary("Mul", 1e5, "big"))
    ctx = Context(target="cuda", precision="fp16")
    records = run_pipeline(model, build(parse_pipeline("resolve-policy,float-islands,float-islands"), ctx), ctx)
    assert [r.modified for r in records if r.name == "float-islands"] == [True, False]
    node = next(iter(model.graph))
    assert node.metadata_props[SPEC_KEY] == '{"format": "float", "reason": "constant big holds |x| up to 1e+05, beyond FP16\'s 65504 / 4"}'
    plan = json.loads(model.metadata_props[PLAN_KEY])
    assert plan["nodes"] == {"n": "float"} and plan["reasons"] == {"n": "constant big holds |x| up to 1e+05, beyond FP16's 65504 / 4"}
    # Nothing to keep FP32: not modified, and the plan is left as resolve-policy wrote it.
    reasons, model, ctx, modified = _islands(_unary("Relu"))
    assert modified is False and reasons == {} and json.loads(model.metadata_props[PLAN_KEY])["nodes"] == {"n": "fp16"}
    assert ctx.records["float_islands"].to_report()["float_islands"] == {"precision": "fp16", "evidence": NO_DATA, "margin": 4.0, "fp32_nodes": 0}


def test_float_tensors_to_observe_lists_what_low_precision_nodes_read_and_write():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Shape", ["h"], ["s"], name="shape"),
        helper.make_node("Cast", ["s"], ["sf"], name="cast", to=F),
        helper.make_node("Mul", ["h", "sf"], ["y"], name="mul"),
    ]
    proto = onnx.shape_inference.infer_shapes(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 2])], [_const("w", np.ones((3, 2)))]))
    model = to_ir(proto)
    ctx = Context(target="cuda", precision="fp16")
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    # Every FP32 tensor once, in graph order; the weight (a constant) and the INT64 shape left out.
    assert float_tensors_to_observe(model) == ["x", "h", "sf", "y"]
    assert float_tensors_to_observe(to_ir(proto)) == []  # no node planned in FP16 yet


def test_a_sum_over_an_unknown_number_of_elements_taints_its_readers():
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="r"), helper.make_node("Relu", ["s"], ["y"], name="relu")]
    proto = _model(nodes, [_vi("x", ["n", 8])], [_vi("y", None)], check=False)
    assert _islands(proto)[0] == {
        "r": "ReduceSum over an unknown number of elements may exceed FP16 and no calibration ranges bound it",
        "relu": "reads s, which may exceed FP16 (made by r)",
    }


def test_a_reduction_of_a_tensor_of_unknown_shape_is_of_unknown_size():
    """Relu → ReduceSum with no shape known for the Relu's output (no inference run)."""
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"), helper.make_node("ReduceSum", ["h"], ["y"], name="r", keepdims=0)]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [])])
    assert _islands(proto, infer=False)[0] == {"r": "ReduceSum over an unknown number of elements may exceed FP16 and no calibration ranges bound it"}


def test_a_bf16_residual_sum_does_not_taint():
    nodes = [helper.make_node("Add", ["x", "z"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["y"], name="relu")]
    proto = _model(nodes, [_vi("x", [2, 3]), _vi("z", [2, 3])], [_vi("y", [2, 3])])
    assert _islands(proto, "bf16")[0] == {"add": "Add of two computed tensors (a residual sum): BF16's 8-bit mantissa drops the smaller one's low bits"}


def test_with_ranges_constants_and_reductions_still_count():
    ranges = {"x": (-1.0, 1.0), "y": (-1e5, 1e5)}
    assert _islands(_binary("Mul", 1e5, "big"), ranges=ranges)[0] == {"n": "constant big holds |x| up to 1e+05, beyond FP16's 65504 / 4"}
    assert _islands(_reduce("ReduceSum", [2, 4096], [1]), ranges={"x": (-1.0, 1.0), "y": (-50.0, 50.0)})[0] == {
        "r": "ReduceSum over 4096 elements: a FP16 accumulator loses the small terms"
    }


def test_only_nodes_planned_in_low_precision_are_observed():
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"), helper.make_node("Sigmoid", ["h"], ["y"], name="sig")]
    proto = onnx.shape_inference.infer_shapes(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])]))
    model = to_ir(proto)
    ctx = Context(target="cuda", precision="fp16")
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    relu = next(n for n in model.graph if n.name == "relu")
    relu.metadata_props[SPEC_KEY] = json.dumps({"format": "float"})  # the first node kept FP32 by a policy
    assert float_tensors_to_observe(model) == ["h", "y"]
