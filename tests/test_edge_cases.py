"""Models that real exporters produce and that a quantizer easily gets wrong."""

import hashlib
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qonnx
from qonnx import ir as qir
from qonnx import runtime
from qonnx.errors import UserError
from qonnx.metrics import sqnr_db
from qonnx.models import tiny

from conftest import run_qonnx, run_text

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers, opset=13):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializers), opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_a_model_with_external_data_quantizes_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 16)  # write the tiny weights as external data
    proto = tiny.conv_chain()
    source = tmp_path / "in" / "m.onnx"
    qir.save(ir.serde.deserialize_model(proto), source)
    assert qir.external_data_files(source)
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 2**40)
    feeds = [tiny.random_feed(proto, seed=i) for i in range(6)]
    result = qonnx.quantize(source, tmp_path / "out" / "q.onnx", feeds)
    assert qir.external_data_files(result.output) == []  # small: written inline, self-contained
    assert result.report["fidelity"]["outputs"]["y"]["sqnr_db"] > 30


def test_an_overridable_initializer_is_not_a_constant():
    proto = tiny.conv_bn_relu()
    proto.graph.input.append(helper.make_tensor_value_info("bn_gamma", F, [8]))  # a graph input with a default
    model, _, _ = run_text(proto, "normalize")
    assert "BatchNormalization" in [n.op_type for n in model.graph]
    feed = tiny.random_feed(proto)
    feed["bn_gamma"] = np.full(8, 3.0, np.float32)
    expected = runtime.session(ir.serde.deserialize_model(proto)).run(feed)["y"]
    np.testing.assert_allclose(runtime.session(model).run(feed)["y"], expected, rtol=1e-5, atol=1e-5)


def test_generated_node_names_never_collide():
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), n) for n in ("W0", "W1")]
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"]), helper.make_node("Conv", ["a", "W1"], ["y"], name="Conv_0")]
    proto = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 4, 4, 4])], [helper.make_tensor_value_info("y", F, [1, 4, 4, 4])], weights)
    model, _, _ = run_text(proto, "resolve-policy")
    names = [n.name for n in model.graph]
    assert len(set(names)) == 2 and "Conv_0" in names
    assert len(json.loads(model.metadata_props["qonnx.plan"])["nodes"]) == 2


def test_a_zero_weight_channel_keeps_its_bias():
    # A pruned channel (or one left by a BatchNormalization with gamma 0): weights all zero, bias
    # not. Its weight scale is free, and must be raised until the INT32 bias holds the bias.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 0
    b = np.array([0.1, -0.2, 0.5, 0.3], np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    proto = _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model, _, _ = run_text(proto, "normalize,resolve-policy,calibrate,insert-qdq")
    feed = tiny.random_feed(proto, seed=3)
    got = runtime.session(model).run(feed)["y"]
    np.testing.assert_allclose(got[0, 2], 0.5, atol=1e-3)  # the bias, within INT32 rounding


def test_a_shared_weight_is_stored_once():
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W"], ["y"], name="mm2"),
    ]
    proto = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 64])], [helper.make_tensor_value_info("y", F, [1, 64])], [weight])
    model, _, _ = run_text(proto, "normalize,resolve-policy,calibrate,insert-qdq,remove-dead")
    int8 = [v for v in model.graph.initializers.values() if v.const_value.dtype == ir.DataType.INT8]
    assert len(int8) == 1
    feed = tiny.random_feed(proto, seed=1)
    assert sqnr_db(runtime.session(ir.serde.deserialize_model(proto)).run(feed)["y"], runtime.session(model).run(feed)["y"]) > 25


def test_fold_constants_skips_a_node_with_an_omitted_output():
    c = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "c")
    scale, bias = numpy_helper.from_array(np.ones(3, np.float32), "s"), numpy_helper.from_array(np.zeros(3, np.float32), "b")
    nodes = [helper.make_node("LayerNormalization", ["c", "s", "b"], ["v", "", "istd"], name="ln"), helper.make_node("Add", ["x", "v"], ["y"], name="add")]
    proto = _model(nodes, [helper.make_tensor_value_info("x", F, [2, 3])], [helper.make_tensor_value_info("y", F, [2, 3])], [c, scale, bias], opset=17)
    model, records, _ = run_text(proto, "fold-constants")
    assert [n.op_type for n in model.graph] == ["LayerNormalization", "Add"]
    assert not records[0].modified


@pytest.mark.parametrize("spec", [{"format": "int-8"}, {"format": "int8", "activation_dtype": "int16"}, {"format": "int8", "per_channel": "yes"}])
def test_a_policy_with_an_invalid_spec_is_refused(tmp_path, spec):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"rules": [{"op_type": "Conv", "spec": spec}]}))
    with pytest.raises(UserError, match="not a usable policy file"):
        run_text(tiny.conv_chain(), f"resolve-policy(policy={path})")


def test_a_plan_with_two_int8_specs_replays_exactly(tmp_path):
    policy = {
        "rules": [
            {"op_type": "Conv", "spec": {"format": "int8", "per_channel": True}},
            {"name": "conv2", "spec": {"format": "int8", "per_channel": False}},
        ]
    }
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    models = [run_text(tiny.conv_chain(), f"resolve-policy(policy={tmp_path / 'policy.json'}),calibrate,insert-qdq")[0]]
    for replay in range(2):  # the plan of the first model, then the plan of its replay
        plan = tmp_path / f"plan{replay}.json"
        plan.write_text(models[-1].metadata_props["qonnx.plan"])
        models.append(run_text(tiny.conv_chain(), f"resolve-policy(policy={plan}),calibrate,insert-qdq")[0])

    def weight_scale_sizes(model):
        return {n.name: n.inputs[1].producer().inputs[1].const_value.size for n in model.graph if n.op_type == "Conv"}

    assert weight_scale_sizes(models[0]) == {"conv0": 4, "conv1": 4, "conv2": 1}  # both specs are in use
    # Same calibration feeds, same plan: the replays are the same model, plan included, byte for byte.
    digests = [hashlib.sha256(ir.to_proto(m).SerializeToString(deterministic=True)).hexdigest() for m in models]
    assert digests[1] == digests[0] and digests[2] == digests[0]


def test_a_conv_inside_a_local_function_is_inlined_and_quantized():
    rng = np.random.default_rng(0)
    body = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")),
        helper.make_node("Conv", ["inp", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["out"]),
    ]
    function = helper.make_function("local", "ConvRelu", ["inp"], ["out"], body, [helper.make_opsetid("", 13)])
    graph = helper.make_graph(
        [helper.make_node("ConvRelu", ["x"], ["y"], domain="local", name="block")],
        "g",
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("local", 1)], functions=[function])
    proto.ir_version = 8
    model, _, _ = run_text(proto, "normalize,resolve-policy,calibrate,insert-qdq,remove-dead,verify")
    assert not model.functions
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert conv.inputs[1].producer().op_type == "DequantizeLinear"
    feed = tiny.random_feed(proto, seed=2)
    assert sqnr_db(runtime.session(ir.serde.deserialize_model(proto)).run(feed)["y"], runtime.session(model).run(feed)["y"]) > 30


def test_a_scalar_input_from_npz_calibrates_and_evaluates(tmp_path):
    """A rank-0 input (an audio model's sample rate): each sample is a 0-d array, which onnxruntime
    takes; a numpy scalar used to reach onnxruntime in the evaluation, after the output was written."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Mul", ["c", "rate"], ["y"])],
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8]), helper.make_tensor_value_info("rate", F, [])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
        [w],
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(1)
    data = {"x": rng.standard_normal((6, 1, 3, 8, 8)).astype(np.float32), "rate": np.linspace(0.5, 1.5, 6).astype(np.float32)}
    np.savez(tmp_path / "calib.npz", **data)
    result = qonnx.quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", calib=tmp_path / "calib.npz", eval_data=tmp_path / "calib.npz")
    # 8-bit activations and weights on a 27-tap conv: well above 30 dB; 20 dB leaves room for the scalar path
    assert result.fidelity["outputs"]["y"]["sqnr_db"] > 20


def test_a_model_with_external_data_quantizes_dynamically_from_another_folder(tmp_path):
    """Weights in an external data file beside the model, the command run from elsewhere: the
    checker must not look for the file in the working directory, and onnxruntime's optimized graph
    (the fusion check) must not refer to a data file that is not beside it."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((8, 64)).astype(np.float32), "B")  # stays float: still external in the output
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"), helper.make_node("Add", ["m", "B"], ["y"], name="add")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 8, 64])], [helper.make_tensor_value_info("y", F, [1, 8, 64])], [w, b])
    (tmp_path / "models").mkdir()
    onnx.save_model(model, str(tmp_path / "models" / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    (tmp_path / "elsewhere").mkdir()
    result = run_qonnx("quantize", "../models/m.onnx", "-o", "q.onnx", "--mode", "dynamic", "--quiet", cwd=tmp_path / "elsewhere")
    assert result.rc == 0, result.err
    assert any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(tmp_path / "elsewhere" / "q.onnx")).graph.node)


def test_an_operator_of_another_domain_is_quantized_around_and_named_in_the_report(tmp_path):
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal((3, 3, 3, 3)) * 0.3).astype(np.float32), f"W{i}") for i in range(2)]
    nodes = [
        helper.make_node("Conv", ["x", "W0"], ["c"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Gelu", ["c"], ["g"], domain="com.microsoft", name="gelu"),
        helper.make_node("Conv", ["g", "W1"], ["y"], pads=[1, 1, 1, 1], name="conv1"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 3, 16, 16])], [helper.make_tensor_value_info("y", F, [1, 3, 16, 16])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32))
    result = qonnx.quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", calib=tmp_path / "c.npz")
    nodes = result.report["nodes"]
    assert nodes["gelu"]["format"] == "float" and "com.microsoft domain" in nodes["gelu"]["reason"]
    assert nodes["conv0"]["format"] == nodes["conv1"]["format"] == "int8"
    # two 8-bit 27-tap convs around a float Gelu: 34.5 dB measured; 25 dB fails a broken graph
    assert result.fidelity["outputs"]["y"]["sqnr_db"] > 25


def _sequence_model() -> onnx.ModelProto:
    """x → SequenceEmpty + SequenceInsert → SequenceAt 0 → y, without value_info (as exporters write it)."""
    nodes = [
        helper.make_node("SequenceEmpty", [], ["empty"], name="empty"),
        helper.make_node("SequenceInsert", ["empty", "x"], ["seq"], name="insert"),
        helper.make_node("SequenceAt", ["seq", "at"], ["y"], name="at"),
    ]
    at = numpy_helper.from_array(np.array(0, np.int64), "at")
    return _model(nodes, [helper.make_tensor_value_info("x", F, [2, 3])], [helper.make_tensor_value_info("y", F, [2, 3])], [at], opset=12)


def test_fold_constants_leaves_a_node_whose_value_is_a_sequence():
    """SequenceEmpty has no input, so it looks constant, but its value is a sequence, which no
    initializer can hold (folded, it became an empty float64 tensor and the model no longer loaded)."""
    model, records, _ = run_text(_sequence_model(), "fold-constants")
    assert [n.op_type for n in model.graph] == ["SequenceEmpty", "SequenceInsert", "SequenceAt"]
    assert not records[0].modified
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(runtime.session(model).run({"x": x})["y"], x)  # exact: no arithmetic


def test_infer_shapes_keeps_sequences_sequences():
    """onnx-ir's merge of inferred types turned the untyped sequences into float tensors, which
    onnxruntime refused when the sample run tapped them (an internal error on onnx's own
    test_sequence_model1)."""
    model, _, _ = run_text(_sequence_model(), "infer-shapes")
    values = {v.name: v for node in model.graph for v in node.outputs}
    assert values["empty"].type == ir.SequenceType(ir.TensorType(ir.DataType.FLOAT))
    assert values["seq"].type == ir.SequenceType(ir.TensorType(ir.DataType.FLOAT))
    assert values["y"].type == ir.TensorType(ir.DataType.FLOAT)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(runtime.session(model).run({"x": x})["y"], x)  # exact: no arithmetic
