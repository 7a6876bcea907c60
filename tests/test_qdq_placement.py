"""Which tensors get Q/DQ, on small graphs, with the expected lists written out.

``plan_placement`` is checked directly (calibrated, passthrough, scale groups), and after
insert-qdq the set of tensors read by a QuantizeLinear is compared with the same hand-made list,
so a placement that plans right but inserts wrong fails too. No numeric tolerances here: these
are sets of names.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx.calib.sources import ListSource, input_specs
from qonnx.passes.qdq_placement import activation_inputs, output_to_quantize, plan_placement
from qonnx.policy import SPEC_KEY
from qonnx.pipeline import Context, build, parse_pipeline, run_pipeline
from qonnx.policy import QuantSpec
from qonnx.targets import get_target

from conftest import graph_model, value_info, to_ir

F = TensorProto.FLOAT
CPU = get_target("cpu")


_model, _vi = graph_model, value_info


def _w(name, shape, seed=0):
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32), name)


def _const(name, values):
    return numpy_helper.from_array(np.asarray(values), name)


def _plan(proto, target="cpu", **context):
    model = to_ir(proto)
    ctx = Context(target=target, reduce_range=False, **context)
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    return plan_placement(model, get_target(target)), model


def _feeds(proto, count=3, special=None):
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(count):
        feed = {}
        for value in proto.graph.input:
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
        feed.update(special or {})
        feeds.append(feed)
    return feeds


def _quantized_tensors(proto, target="cpu", feeds=None):
    """Names of the tensors that a QuantizeLinear reads after insert-qdq."""
    model = to_ir(proto)
    ctx = Context(target=target, reduce_range=False, calib=ListSource(feeds or _feeds(proto), input_specs(model)))
    run_pipeline(model, build(parse_pipeline("resolve-policy,calibrate(method=minmax),insert-qdq"), ctx), ctx)
    return sorted(n.inputs[0].name for n in model.graph if n.op_type == "QuantizeLinear"), model


def _groups(placement):
    """Scale groups with more than one member, as sorted lists."""
    return sorted(sorted(members) for members in placement.by_group.values() if len(members) > 1)


# ----------------------------------------------------------------------------------------------


def _residual():
    """x → conv0 → relu0 = r0 → conv1 → relu1 = r1 → Add(r1, r0) = s → conv2 → y; s also a graph output."""
    nodes = [
        helper.make_node("Conv", ["x", "W0"], ["c0"], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "W1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Add", ["r1", "r0"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "W2"], ["y"], name="conv2"),
    ]
    inits = [_w("W0", (3, 2, 1, 1)), _w("W1", (3, 3, 1, 1), 1), _w("W2", (2, 3, 1, 1), 2)]
    return _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3]), _vi("s", [1, 3, 3, 3])], inits)


def test_residual_add_before_a_conv_is_an_integer_op_and_outputs_after_relu():
    placement, _ = _plan(_residual())
    # The Conv outputs are quantized after their Relu; the Add's output feeds conv2, so the Add
    # is quantized too; y (a graph output only) is not.
    assert placement.calibrated == ["x", "r0", "r1", "s"]
    assert placement.passthrough == [] and placement.dynamic == [] and _groups(placement) == []
    assert set(placement.spec_of) == {"x", "r0", "r1", "s"}
    quantized, _ = _quantized_tensors(_residual())
    assert quantized == ["r0", "r1", "s", "x"]


def test_residual_add_feeding_only_the_graph_output_stays_float():
    nodes = [
        helper.make_node("Conv", ["x", "W0"], ["c0"], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "W1"], ["c1"], name="conv1"),
        helper.make_node("Add", ["c1", "r0"], ["y"], name="add"),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], [_w("W0", (2, 2, 1, 1)), _w("W1", (2, 2, 1, 1), 1)])
    placement, _ = _plan(proto)
    # c1 is conv1's output (read by the float Add): still quantized, as QLinearConv needs its Q.
    assert placement.calibrated == ["x", "r0", "c1"]
    assert _quantized_tensors(proto)[0] == ["c1", "r0", "x"]


def test_concat_inputs_and_output_share_one_scale_group():
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "Wb"], ["b"], name="conv_b"),
        helper.make_node("Concat", ["b", "a"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "Wc"], ["y"], name="conv_c"),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], [_w("Wa", (2, 2, 1, 1)), _w("Wb", (3, 2, 1, 1), 1), _w("Wc", (2, 5, 1, 1), 2)])
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "a", "b", "cat"]
    assert _groups(placement) == [["a", "b", "cat"]]
    # The group's root is the smallest name; every member maps to it.
    assert {name: placement.group_of[name] for name in ("a", "b", "cat", "x")} == {"a": "a", "b": "a", "cat": "a", "x": "x"}
    assert placement.members("cat") == placement.members("b") == ["a", "b", "cat"]
    assert placement.members("x") == ["x"] and placement.members("not-a-tensor") == ["not-a-tensor"]
    quantized, model = _quantized_tensors(proto)
    assert quantized == ["a", "b", "cat", "x"]
    scales = {n.inputs[0].name: n.inputs[1].name for n in model.graph if n.op_type == "QuantizeLinear"}
    assert scales["a"] == scales["b"] == scales["cat"] != scales["x"]


def test_concat_with_a_constant_input_is_left_float():
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["a"], name="conv_a"),
        helper.make_node("Concat", ["a", "k"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "Wc"], ["y"], name="conv_c"),
    ]
    k = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "k")
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], [_w("Wa", (2, 2, 1, 1)), k, _w("Wc", (2, 3, 1, 1), 2)])
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "a", "cat"] and _groups(placement) == []


def _movement_chain():
    """x → conv → c → Reshape → r1 → Transpose → t → Reshape → r2 → Split → (s1, s2); s2 → conv2 → y, s1 a graph output only."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "flat"], ["r1"], name="reshape1"),
        helper.make_node("Transpose", ["r1"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t", "back"], ["r2"], name="reshape2"),
        helper.make_node("Split", ["r2"], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Conv", ["s2", "W2"], ["y"], name="conv2"),
    ]
    inits = [
        _w("W", (4, 2, 1, 1)),
        _const("flat", np.array([1, 4, 9], np.int64)),
        _const("back", np.array([1, 4, 3, 3], np.int64)),
        _w("W2", (2, 2, 1, 1), 1),
    ]
    return _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3]), _vi("s1", [1, 2, 3, 3])], inits)


def test_data_movement_chain_carries_the_scale_forward():
    placement, _ = _plan(_movement_chain())
    assert placement.calibrated == ["x", "c"]
    # s1 is only a graph output: nobody reads it, so it gets nothing (its sibling s2 does).
    assert placement.passthrough == ["r1", "t", "r2", "s2"]
    assert _groups(placement) == [["c", "r1", "r2", "s2", "t"]]
    assert all(placement.group_of[n] == "c" for n in ("c", "r1", "t", "r2", "s2"))
    assert set(placement.spec_of) == {"x", "c", "r1", "t", "r2", "s2"}
    quantized, model = _quantized_tensors(_movement_chain())
    assert quantized == ["c", "r1", "r2", "s2", "t", "x"]
    scales = {n.inputs[0].name: n.inputs[1].name for n in model.graph if n.op_type == "QuantizeLinear"}
    assert len({scales[n] for n in ("c", "r1", "t", "r2", "s2")}) == 1


def test_data_movement_of_a_float_tensor_stays_float():
    """A Transpose of the graph input that only a float op (Softmax) reads: nothing to carry."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Softmax", ["t"], ["y"], name="softmax"),
    ]
    proto = _model(nodes, [_vi("x", [1, 3, 4])], [_vi("y", [1, 4, 3])])
    placement, _ = _plan(proto)
    assert placement.calibrated == [] and placement.passthrough == []


def test_an_attention_mask_with_minus_infinity_stays_float():
    """scores = x·W; scores + mask (-inf where masked) → MatMul: the mask and the masked scores
    hold -inf in calibration and stay float; x and the scores are quantized."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["scores"], name="mm"),
        helper.make_node("Add", ["scores", "mask"], ["masked"], name="add"),
        helper.make_node("MatMul", ["masked", "W2"], ["y"], name="mm2"),
    ]
    proto = _model(nodes, [_vi("x", [2, 4]), _vi("mask", [2, 4])], [_vi("y", [2, 3])], [_w("W", (4, 4)), _w("W2", (4, 3), 1)])
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "scores", "mask", "masked"]
    mask = np.zeros((2, 4), np.float32)
    mask[:, 3] = -np.inf
    quantized, model = _quantized_tensors(proto, feeds=_feeds(proto, special={"mask": mask}))
    assert quantized == ["scores", "x"]
    assert [v.name for v in next(n for n in model.graph if n.name == "add").inputs] == ["scores_dq", "mask"]


def test_a_nonfinite_member_keeps_its_whole_scale_group_float():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["a"], name="conv"),
        helper.make_node("Concat", ["a", "m"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "W2"], ["y"], name="conv2"),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3]), _vi("m", [1, 1, 3, 3])], [_vi("y", [1, 2, 3, 3])], [_w("W", (2, 2, 1, 1)), _w("W2", (2, 3, 1, 1), 1)])
    m = np.zeros((1, 1, 3, 3), np.float32)
    m[0, 0, 0, 0] = -np.inf
    assert _quantized_tensors(proto, feeds=_feeds(proto, special={"m": m}))[0] == ["x"]
    assert _quantized_tensors(proto)[0] == ["a", "cat", "m", "x"]  # the near miss: all finite


def test_integer_ops_chain_to_a_quantized_consumer():
    """Conv → Sigmoid → Mul (SiLU) → Reshape → Conv: every integer op reaches conv2; the
    LeakyRelu at the end feeds only the graph output and stays float, and so does the Add
    that feeds only it."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
        helper.make_node("Mul", ["c", "s"], ["m"], name="silu"),
        helper.make_node("Reshape", ["m", "shape"], ["r"], name="reshape"),
        helper.make_node("Conv", ["r", "W2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "c2"], ["a"], name="add"),
        helper.make_node("LeakyRelu", ["a"], ["y"], name="leaky"),
    ]
    inits = [_w("W", (2, 2, 1, 1)), _const("shape", np.array([1, 2, 3, 3], np.int64)), _w("W2", (2, 2, 1, 1), 1)]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "c", "s", "m", "c2"]
    assert placement.passthrough == ["r"]
    assert _quantized_tensors(proto)[0] == ["c", "c2", "m", "r", "s", "x"]


def test_a_float_reader_between_integer_ops_breaks_the_chain():
    """Sigmoid → Softmax (float on the cpu target) → Conv: the Sigmoid's only reader is float."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=1),
        helper.make_node("Conv", ["p", "W2"], ["y"], name="conv2"),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], [_w("W", (2, 2, 1, 1)), _w("W2", (2, 2, 1, 1), 1)])
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "c", "p"]


def test_an_integer_op_read_through_an_inactive_integer_op_stays_float():
    """Mul → Sigmoid → graph output, and Mul → Softmax: the Sigmoid is inactive, so the Mul is too."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "c"], ["m"], name="mul"),
        helper.make_node("Sigmoid", ["m"], ["y"], name="sig"),
        helper.make_node("Softmax", ["m"], ["z"], name="softmax", axis=1),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3]), _vi("z", [1, 2, 3, 3])], [_w("W", (2, 2, 1, 1))])
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "c"]


def _clip(low):
    inputs = ["c", "lo", "hi"] if low is not None else ["c", "", "hi"]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Clip", inputs, ["k"], name="clip"),
        helper.make_node("Conv", ["k", "W2"], ["y"], name="conv2"),
    ]
    inits = [_w("W", (2, 2, 1, 1)), _const("hi", np.array(6.0, np.float32)), _w("W2", (2, 2, 1, 1), 1)]
    if low is not None:
        inits.append(_const("lo", np.asarray(low, np.float32)))
    return _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)


@pytest.mark.parametrize("low, after_clip", [(0.0, True), (0.5, True), (-1.0, False), (None, False), ([0.0, 1.0], False)])
def test_conv_output_is_quantized_after_a_clip_that_starts_at_or_above_zero(low, after_clip):
    proto = _clip(low) if not isinstance(low, list) else _clip(0.0)
    if isinstance(low, list):  # a two-element lower bound: not a scalar clamp
        proto.graph.initializer[-1].CopyFrom(_const("lo", np.asarray(low, np.float32)))
    placement, model = _plan(proto)
    assert placement.calibrated == (["x", "k"] if after_clip else ["x", "c", "k"])
    conv = next(n for n in model.graph if n.name == "conv")
    assert output_to_quantize(conv, QuantSpec("int8")).name == ("k" if after_clip else "c")


def test_output_to_quantize_keeps_the_output_when_the_clamp_cannot_absorb_it():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "c"], ["y"], name="add"),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], [_w("W", (2, 2, 1, 1))])
    model = to_ir(proto)
    conv = next(n for n in model.graph if n.name == "conv")
    assert output_to_quantize(conv, QuantSpec("int8")).name == "c"  # two readers
    relu_only = to_ir(_clip(0.0))
    conv = next(n for n in relu_only.graph if n.name == "conv")
    assert output_to_quantize(conv, QuantSpec("int8")).name == "k"
    # Symmetric activations (INT8 zero point 0) clamp nothing at 0: the output itself.
    assert output_to_quantize(conv, QuantSpec("int8", activation_dtype="int8", symmetric_activations=True)).name == "c"
    # A Relu that reads the conv output as its second input is not a clamp of it (PRelu-like use).
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), helper.make_node("Clip", ["lo", "c"], ["y"], name="clip")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], [_w("W", (2, 2, 1, 1)), _const("lo", np.zeros((1, 2, 3, 3), np.float32))])
    model = to_ir(proto)
    conv = next(n for n in model.graph if n.name == "conv")
    assert output_to_quantize(conv, QuantSpec("int8")).name == "c"
    # A clamp whose output is the graph output: the conv's own output.
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3]), _vi("c", [1, 2, 3, 3])], [_w("W", (2, 2, 1, 1))])
    model = to_ir(proto)
    conv = next(n for n in model.graph if n.name == "conv")
    assert output_to_quantize(conv, QuantSpec("int8")).name == "c"


def test_activation_inputs_by_op_kind():
    nodes = [
        helper.make_node("MatMul", ["x", "z"], ["a"], name="mm"),
        helper.make_node("Concat", ["a", "x", "z"], ["b"], name="cat", axis=1),
        helper.make_node("Sigmoid", ["b"], ["s"], name="sig"),
        helper.make_node("Gemm", ["x", "W", "C"], ["g"], name="gemm", transB=1),
        helper.make_node("Mul", ["g", "k"], ["y"], name="mul"),
        helper.make_node("Mul", ["x", "z"], ["p"], name="mul2"),
        helper.make_node("Add", ["k", "z"], ["q"], name="add"),
    ]
    inits = [_w("W", (2, 2)), _w("C", (2,), 1), _w("k", (2,), 2)]
    outputs = [_vi("s", [2, 6]), _vi("y", [2, 2]), _vi("p", [2, 2]), _vi("q", [2, 2])]
    proto = _model(nodes, [_vi("x", [2, 2]), _vi("z", [2, 2])], outputs, inits)
    model = to_ir(proto)
    found = {n.name: activation_inputs(n, CPU) for n in model.graph}
    # MatMul: both operands; Concat: every input; Sigmoid: its one input; Gemm: x only (W and C
    # are constants); Mul and Add: the activations, not the constants.
    assert found == {"mm": [0, 1], "cat": [0, 1, 2], "sig": [0], "gemm": [0], "mul": [0], "mul2": [0, 1], "add": [1]}


@pytest.mark.parametrize("table, root", [("table", "e"), ("a_table", "a_table")])
def test_a_gather_table_joins_the_scale_group_of_its_output(table, root):
    """The Gather output carries the table's parameters; the ids (INT64) get nothing. The
    group's root is the smaller name, the table's or the output's."""
    nodes = [
        helper.make_node("Gather", [table, "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "W"], ["y"], name="proj"),
    ]
    inits = [_w(table, (10, 4)), _w("W", (4, 3), 1)]
    proto = _model(nodes, [_vi("ids", [1, 5], TensorProto.INT64)], [_vi("y", [1, 5, 3])], inits)
    placement, _ = _plan(proto)
    assert placement.calibrated == [] and placement.passthrough == ["e"]
    assert placement.tables == {root: table} and placement.group_of == {"e": root}
    assert placement.members(root) == ["e"]
    feeds = [{"ids": np.arange(5, dtype=np.int64).reshape(1, 5)}]
    assert _quantized_tensors(proto, feeds=feeds)[0] == ["e"]


def test_a_gather_whose_output_only_leaves_the_graph_keeps_its_table_float():
    """An embedding lookup returned as it is: no Q/DQ feeds anybody, so the table stays float
    and the model computes exactly what it did."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed")]
    proto = _model(nodes, [_vi("ids", [1, 5], TensorProto.INT64)], [_vi("e", [1, 5, 4])], [_w("table", (10, 4))])
    placement, _ = _plan(proto)
    assert placement.tables == {} and placement.passthrough == [] and placement.calibrated == []
    feeds = [{"ids": np.arange(5, dtype=np.int64).reshape(1, 5)}]
    quantized, model = _quantized_tensors(proto, feeds=feeds)
    assert quantized == [] and "table" in model.graph.initializers
    assert [n.op_type for n in model.graph] == ["Gather"]


def test_dynamic_mode_lists_the_inputs_quantized_at_run_time():
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "a"], ["y"], name="mm2"),
    ]
    proto = _model(nodes, [_vi("x", [2, 2])], [_vi("y", [2, 2])], [_w("W", (2, 2))])
    placement, _ = _plan(proto, mode="dynamic")
    assert placement.dynamic == ["x", "r", "a"] and placement.calibrated == [] and placement.passthrough == []


def test_a_clamp_inside_a_subgraph_does_not_carry_the_conv_output():
    """Conv → c, read only by a Relu inside an If branch: calibration cannot tap the branch, so
    c itself is the conv's quantized output."""
    relu_branch = helper.make_graph([helper.make_node("Relu", ["c"], ["t"], name="inner_relu")], "then", [], [_vi("t", [1, 2, 3, 3])])
    ident_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="inner_id")], "else", [], [_vi("e", [1, 2, 3, 3])])
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=relu_branch, else_branch=ident_branch),
    ]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3]), _vi("cond", [], TensorProto.BOOL)], [_vi("y", [1, 2, 3, 3])], [_w("W", (2, 2, 1, 1))])
    placement, model = _plan(proto)
    assert placement.calibrated == ["x", "c"]
    conv = next(n for n in model.graph if n.name == "conv")
    assert output_to_quantize(conv, QuantSpec("int8")).name == "c"


@pytest.mark.parametrize("inputs, after_clip", [(["c"], False), (["c", "lo"], True)])
def test_a_clip_with_fewer_inputs(inputs, after_clip):
    """Clip(c): no lower bound, nothing to absorb; Clip(c, 0): a lower bound of 0, no upper one."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Clip", inputs, ["k"], name="clip"),
        helper.make_node("Conv", ["k", "W2"], ["y"], name="conv2"),
    ]
    inits = [_w("W", (2, 2, 1, 1)), _const("lo", np.array(0.0, np.float32)), _w("W2", (2, 2, 1, 1), 1)]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    placement, _ = _plan(proto)
    assert placement.calibrated == (["x", "k"] if after_clip else ["x", "c", "k"])


def test_an_add_of_a_constant_after_a_conv_is_no_clamp():
    """Conv → Add(c, 0.5) → Conv: the Add's constant is no lower bound; c and the sum are both quantized."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "half"], ["a"], name="add"),
        helper.make_node("Conv", ["a", "W2"], ["y"], name="conv2"),
    ]
    inits = [_w("W", (2, 2, 1, 1)), _const("half", np.array(0.5, np.float32)), _w("W2", (2, 2, 1, 1), 1)]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    placement, model = _plan(proto)
    assert placement.calibrated == ["x", "c", "a"]
    conv = next(n for n in model.graph if n.name == "conv")
    assert output_to_quantize(conv, QuantSpec("int8")).name == "c"


def test_a_passthrough_of_a_float_tensor_before_a_quantized_chain():
    """Transpose(z) read by a float Softmax comes first; the Reshape of the conv output after it
    still carries its scale."""
    nodes = [
        helper.make_node("Transpose", ["z"], ["zt"], name="t0", perm=[0, 1, 3, 2]),
        helper.make_node("Softmax", ["zt"], ["p"], name="softmax"),
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
        helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2"),
    ]
    inits = [_w("W", (2, 2, 1, 1)), _const("shape", np.array([1, 2, 3, 3], np.int64)), _w("W2", (2, 2, 1, 1), 1)]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3]), _vi("z", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3]), _vi("p", [1, 2, 3, 3])], inits)
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "c"] and placement.passthrough == ["r"]


def test_a_passthrough_output_is_quantized_under_its_inputs_spec():
    proto = _movement_chain()
    model = to_ir(proto)
    ctx = Context(reduce_range=False)
    run_pipeline(model, build(parse_pipeline("resolve-policy"), ctx), ctx)
    reshape = next(n for n in model.graph if n.name == "reshape1")
    reshape.metadata_props[SPEC_KEY] = json.dumps(dict(json.loads(reshape.metadata_props[SPEC_KEY]), activation_dtype="int8", symmetric_activations=True))
    placement = plan_placement(model, CPU)
    assert placement.spec_of["r1"] == placement.spec_of["c"] == QuantSpec("int8", per_channel=True)


def test_an_output_quantized_already_is_not_planned_again():
    """Conv → c → Q → DQ → Conv2 (quantized before): c keeps its pair, nothing new is planned."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q"),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dq"),
        helper.make_node("Conv", ["cd", "W2"], ["y"], name="conv2"),
    ]
    inits = [_w("W", (2, 2, 1, 1)), _const("s", np.float32(0.05)), _const("z", np.uint8(128)), _w("W2", (2, 2, 1, 1), 1)]
    proto = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 3, 3])], inits)
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x"]


def test_a_reshaped_constant_is_no_table():
    """Reshape(constant) → MatMul: the Reshape's output is an activation of the MatMul, calibrated
    like any other; only a Gather's constant data is a table."""
    nodes = [
        helper.make_node("Reshape", ["k", "shape"], ["kr"], name="reshape"),
        helper.make_node("MatMul", ["x", "kr"], ["y"], name="mm"),
    ]
    inits = [_w("k", (6,)), _const("shape", np.array([3, 2], np.int64))]
    proto = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 2])], inits)
    placement, _ = _plan(proto)
    assert placement.calibrated == ["x", "kr"] and placement.passthrough == [] and placement.tables == {}
