"""Every rewrite on tiny models: what it changes, that the function stays the same, idempotence.

Numeric tolerances: normalization is exact up to float32 rounding (BatchNormalization folding
reorders a multiply-add), so outputs must agree within 1e-5 absolute on values of order 1. INT8
models are judged by SQNR: 8-bit activations and weights give ~40 dB on these random tiny
models, so 30 dB is a floor that only a broken rewrite falls under.
"""

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qonnx import ir as qir
from qonnx import pipeline
from qonnx.calib.sources import ListSource, input_specs
from qonnx.config import WeightOnlyConfig
from qonnx.errors import UserError
from qonnx.metrics import sqnr_db
from qonnx.models import tiny
from qonnx.policy import SPEC_KEY

from conftest import op_types, outputs, run_text

QUANTIZE = "normalize,div-to-mul,resolve-policy,calibrate,insert-qdq,quantize-recurrent,quantize-subgraph-weights,remove-dead,finalize,verify"
NORMALIZE_TOLERANCE = 1e-5


def _same_function(before, after, seed: int = 7):
    feed = tiny.random_feed(before, seed=seed)
    for a, b in zip(outputs(before, feed), outputs(after, feed)):
        np.testing.assert_allclose(a, b, atol=NORMALIZE_TOLERANCE, rtol=NORMALIZE_TOLERANCE)


def _modified(records, name):
    return [r.modified for r in records if r.name == name]


def _gemm_bn_plain_b() -> onnx.ModelProto:
    return tiny.gemm_bn(trans_b=0)


# Each tiny model, what normalize leaves of it, and the passes that must have rewritten it.
_NORMALIZED = [
    (tiny.conv_bn_relu, ["Conv", "Relu"], {"fold-batchnorm", "remove-dead"}),
    (tiny.conv_transpose_bn, ["ConvTranspose"], {"fold-batchnorm", "remove-dead"}),
    (tiny.gemm_bn, ["Gemm"], {"fold-batchnorm", "remove-dead"}),
    (_gemm_bn_plain_b, ["Gemm"], {"fold-batchnorm", "remove-dead"}),
    (tiny.constants_model, ["Conv", "Relu"], {"upgrade-opset", "constants-to-initializers", "fold-constants", "remove-dead"}),
    (tiny.if_model, ["ReduceSum", "Greater", "If"], {"constants-to-initializers"}),
    (tiny.matmul_model, ["MatMul", "Transpose", "MatMul"], {"infer-shapes"}),
    (tiny.same_padded_conv, ["Conv", "Div"], {"fold-pad", "remove-dead"}),
    (tiny.detector_neck, [n.op_type for n in tiny.detector_neck().graph.node], {"infer-shapes"}),
    (tiny.embedding_model, ["Gather", "Add", "MatMul", "Add"], {"infer-shapes"}),
    (tiny.conv_bias_add, ["Conv", "Relu"], {"fold-bias-add", "remove-dead"}),
    (tiny.function_model, ["Conv", "Relu"], {"inline-functions", "constants-to-initializers"}),
]


@pytest.mark.parametrize("make,ops,rewriters", _NORMALIZED, ids=[m.__name__ for m, _, _ in _NORMALIZED])
def test_normalize_reaches_its_normal_form_keeps_the_function_and_is_idempotent(make, ops, rewriters):
    proto = make()
    model, records, _ = run_text(proto, "normalize")
    assert op_types(model) == ops
    assert rewriters <= {r.name for r in records if r.modified}
    # The normal form, whatever the model: opset >= 13, no Constant node and no function left, no
    # initializer nothing reads, a type on every tensor of the main graph.
    assert model.opset_imports[""] >= 13 and not model.functions
    assert not [n for n in qir.all_nodes(model) if n.op_type == "Constant"]
    read = {v.name for n in qir.all_nodes(model) for v in n.inputs if v is not None} | {v.name for v in model.graph.outputs}
    assert set(model.graph.initializers) <= read
    assert all(v.dtype is not None for n in model.graph for v in n.outputs)
    _same_function(proto, model)
    _, records, _ = run_text(model, "normalize")
    assert not any(r.modified for r in records)


def test_zero_pad_folds_into_the_conv_and_division_by_a_constant_becomes_mul():
    proto = tiny.same_padded_conv()
    model, records, _ = run_text(proto, "fold-pad,div-to-mul,remove-dead")
    assert op_types(model) == ["Conv", "Mul"]
    assert list(model.graph.node(0).attributes.get_ints("pads")) == [1, 1, 2, 2]
    _same_function(proto, model)
    assert _modified(records, "fold-pad") == [True] and _modified(records, "div-to-mul") == [True]


def _padded_with(value: float) -> onnx.ModelProto:
    proto = tiny.same_padded_conv()
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.float32(value), "pad_value"))
    proto.graph.node[0].input.append("pad_value")
    return proto


def test_a_nonzero_pad_stays():
    model, records, _ = run_text(_padded_with(1.0), "fold-pad")
    assert op_types(model)[0] == "Pad" and _modified(records, "fold-pad") == [False]
    # The same model with an explicit zero value does fold: what keeps the Pad above is its value.
    proto = _padded_with(0.0)
    model, records, _ = run_text(proto, "fold-pad")
    assert op_types(model)[0] == "Conv" and _modified(records, "fold-pad") == [True]
    _same_function(proto, model)


def test_constants_become_initializers_also_in_subgraphs():
    model, records, _ = run_text(tiny.if_model(), "constants-to-initializers")
    assert _modified(records, "constants-to-initializers") == [True]
    assert not [n for n in model.graph.all_nodes() if n.op_type == "Constant"]
    if_node = next(n for n in model.graph if n.op_type == "If")
    assert "then_w" in if_node.attributes["then_branch"].as_graph().initializers


def test_fold_constants_folds_chains_and_removes_the_dead_constant():
    proto = tiny.constants_model()
    model, records, _ = run_text(proto, "constants-to-initializers,fold-constants,remove-dead")
    assert op_types(model) == ["Conv", "Relu"]
    w2 = model.graph.initializers["W2"].const_value.numpy()
    w = next(n for n in proto.graph.node if n.name == "const_w").attribute[0].t
    np.testing.assert_array_equal(w2, 2 * ir.serde.deserialize_tensor(w).numpy())
    assert "unused" not in model.graph.initializers
    _same_function(proto, model)


def test_fold_constants_folds_beside_dequantize_linear_but_leaves_it():
    quantized, _, _ = run_text(tiny.conv_chain(), QUANTIZE)
    proto = ir.to_proto(quantized)
    dequantizers = [n.name for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    # Beside the DequantizeLinear nodes (whose inputs are all constant too), a node that folds: y + 2 * 0.5.
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(np.float32(2.0), "two"), onnx.numpy_helper.from_array(np.float32(0.5), "half")])
    y = proto.graph.output[0].name
    proto.graph.node.extend([onnx.helper.make_node("Mul", ["two", "half"], ["one"], name="one"), onnx.helper.make_node("Add", [y, "one"], ["y_plus_one"], name="plus_one")])
    proto.graph.output[0].name = "y_plus_one"
    model, records, _ = run_text(proto, "fold-constants")
    assert _modified(records, "fold-constants") == [True]
    assert "one" not in [n.name for n in model.graph]
    assert [n.name for n in model.graph if n.op_type == "DequantizeLinear"] == dequantizers
    _same_function(proto, model)


def test_a_folded_transpose_of_external_data_owns_its_values(tmp_path):
    """Transpose(E), E in an external-data file: the reference evaluator returns a view of E's
    memory map, which the saved model must not hold (saving releases the map; a view left behind
    made it fail with "cannot close exported pointers exist" for a tied lm_head kept float)."""
    from onnx import TensorProto, helper

    table = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["E"], ["Et"], name="t", perm=[1, 0]), helper.make_node("MatMul", ["x", "Et"], ["y"], name="head")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(table, "E")],
    )  # fmt: skip
    source = tmp_path / "m.onnx"
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(proto, source, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    model = qir.load(source)
    pipeline.apply("fold-constants", model, pipeline.Context())
    folded = model.graph.initializers["Et"].const_value.numpy()
    assert folded.flags.owndata and np.array_equal(folded, table.T)
    qir.save(model, tmp_path / "out.onnx")  # releases E's map


def test_fold_constants_respects_the_size_limit():
    # The folded weight 2 * W would have 108 elements: a limit under that keeps the Mul, one at it folds it.
    capped, records, _ = run_text(tiny.constants_model(), "constants-to-initializers,fold-constants(max_elements=107)")
    assert "Mul" in op_types(capped) and _modified(records, "fold-constants") == [False]
    folded, records, _ = run_text(tiny.constants_model(), "constants-to-initializers,fold-constants(max_elements=108)")
    assert "Mul" not in op_types(folded) and _modified(records, "fold-constants") == [True]


@pytest.mark.parametrize("make", [tiny.conv_bn_relu, lambda: tiny.conv_bn_relu(bias=False), tiny.conv_transpose_bn, lambda: tiny.conv_transpose_bn(group=1), tiny.gemm_bn, lambda: tiny.gemm_bn(trans_b=0)])
def test_batchnorm_folds_into_the_weighted_op(make):
    proto = make()
    model, records, _ = run_text(proto, "fold-batchnorm,remove-dead")
    assert "BatchNormalization" not in op_types(model)
    _same_function(proto, model)
    _, again, _ = run_text(model, "fold-batchnorm")
    assert _modified(again, "fold-batchnorm") == [False]


def test_batchnorm_with_a_second_reader_of_the_conv_output_stays():
    proto = tiny.conv_bn_relu()
    proto.graph.output.add().name = "c"  # the Conv output is now read by BN and by the graph
    model, records, _ = run_text(proto, "fold-batchnorm")
    assert "BatchNormalization" in op_types(model) and _modified(records, "fold-batchnorm") == [False]
    # Without the second reader the same BatchNormalization folds: the reader is what keeps it.
    model, records, _ = run_text(tiny.conv_bn_relu(), "fold-batchnorm")
    assert "BatchNormalization" not in op_types(model) and _modified(records, "fold-batchnorm") == [True]


def test_upgrade_opset_reaches_13_and_keeps_the_function():
    proto = tiny.constants_model(opset=11)
    model, records, _ = run_text(proto, "constants-to-initializers,upgrade-opset")
    assert model.opset_imports[""] == 13 and _modified(records, "upgrade-opset") == [True]
    _same_function(proto, model)
    _, again, _ = run_text(model, "upgrade-opset")
    assert _modified(again, "upgrade-opset") == [False]


def test_upgrade_opset_fails_with_a_clear_error():
    proto = tiny.constants_model(opset=11)
    proto.graph.node[3].op_type = "NoSuchOp"  # the converter has no adapter for an unknown op
    with pytest.raises(UserError, match="cannot upgrade the model from opset 11 to 13"):
        run_text(proto, "upgrade-opset")


def _opaque_chain(dynamic: bool = False) -> onnx.ModelProto:
    """conv_chain with its first Relu replaced by onnxruntime's com.microsoft Gelu: onnx's shape
    inference has no schema for it and infers nothing past it; onnxruntime runs it."""
    proto = tiny.conv_chain(dynamic=dynamic)
    relu = proto.graph.node[1]
    assert relu.op_type == "Relu" and list(relu.output) == ["r0"]
    relu.op_type, relu.domain = "Gelu", "com.microsoft"
    proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return proto


def test_infer_shapes_uses_the_sample_when_onnx_inference_leaves_gaps():
    model, records, ctx = run_text(_opaque_chain(), "infer-shapes")
    values = ir.convenience.create_value_mapping(model.graph)
    for name in ("r0", "c1", "r2"):
        assert values[name].dtype == ir.DataType.FLOAT and list(values[name].shape) == [1, 4, 16, 16]
    assert ctx.analyses["shapes"]["c1"] == [1, 4, 16, 16]
    assert _modified(records, "infer-shapes") == [True]


def test_infer_shapes_keeps_dynamic_dims_symbolic():
    model, _, _ = run_text(_opaque_chain(dynamic=True), "infer-shapes")
    value = ir.convenience.create_value_mapping(model.graph)["c1"]
    assert value.dtype == ir.DataType.FLOAT and len(value.shape) == 4
    assert not any(isinstance(d, int) for d in value.shape)  # one sample's 8x8 must not freeze the model


def test_remove_dead_keeps_the_signature():
    proto = tiny.constants_model()
    model, _, _ = run_text(proto, "constants-to-initializers,remove-dead")
    assert "unused" not in model.graph.initializers
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["y"]


def test_resolve_policy_writes_a_spec_per_node_and_the_plan():
    model, _, ctx = run_text(tiny.conv_chain(), "resolve-policy")
    specs = {n.name: json.loads(n.metadata_props[SPEC_KEY])["format"] for n in model.graph if SPEC_KEY in n.metadata_props}
    assert specs == {"conv0": "int8", "conv1": "int8", "conv2": "int8", "residual": "int8"}  # Add: QLinearAdd
    plan = json.loads(model.metadata_props["qonnx.plan"])
    assert {node: plan["specs"][spec_id]["format"] for node, spec_id in plan["nodes"].items()} == specs
    assert all(spec["activation_dtype"] == "uint8" for spec in plan["specs"].values())


def test_policy_file_replays_and_exact_names_win(tmp_path):
    policy = {
        "default": {"format": "float"},
        "rules": [
            {"op_type": "Conv", "spec": {"format": "int8"}},
            {"name": "conv1", "spec": {"format": "float"}},
        ],
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    model, _, _ = run_text(tiny.conv_chain(), f"resolve-policy(policy={path}),calibrate,insert-qdq")
    conv1 = next(n for n in model.graph if n.name == "conv1")
    conv2 = next(n for n in model.graph if n.name == "conv2")
    assert conv1.inputs[1].producer() is None  # float weight stays
    assert conv2.inputs[1].producer().op_type == "DequantizeLinear"


def test_subgraph_nodes_get_int8_weights_only_with_a_reason():
    model, _, ctx = run_text(tiny.if_model(), QUANTIZE)
    plan = json.loads(model.metadata_props["qonnx.plan"])
    weights_only = "weights only: inside a subgraph, calibration cannot reach its activations"
    assert plan["reasons"] == {"then_conv": weights_only, "else_conv": weights_only}
    assert plan["specs"][plan["nodes"]["then_conv"]]["format"] == "int8"
    assert "QuantizeLinear" not in [n.op_type for n in model.graph.all_nodes()]
    for conv in (n for n in model.graph.all_nodes() if n.op_type == "Conv"):
        assert conv.inputs[1].producer().op_type == "DequantizeLinear" and conv.inputs[1].producer().graph is conv.graph


def test_insert_qdq_stores_int8_weights_int32_bias_and_is_idempotent():
    proto = tiny.conv_chain()
    model, _, _ = run_text(proto, QUANTIZE)
    for conv in (n for n in model.graph if n.op_type == "Conv"):
        x, w, b = (v.producer() for v in conv.inputs)
        assert x.op_type == w.op_type == b.op_type == "DequantizeLinear"
        assert w.inputs[0].const_value.dtype == ir.DataType.INT8
        assert w.attributes.get_int("axis", 1) == 0 and w.inputs[1].const_value.numpy().shape == (4,)
        assert b.inputs[0].const_value.dtype == ir.DataType.INT32
        np.testing.assert_allclose(
            b.inputs[1].const_value.numpy(), x.inputs[1].const_value.numpy() * w.inputs[1].const_value.numpy(), rtol=1e-6
        )
    assert not [v for v in model.graph.initializers.values() if v.const_value.dtype == ir.DataType.FLOAT and v.const_value.size > 4]
    feed = tiny.random_feed(proto, seed=11)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) > 30
    counts = op_types(model)
    again, records, _ = run_text(model, "resolve-policy,calibrate,insert-qdq")
    assert _modified(records, "insert-qdq") == [False] and op_types(again) == counts


def test_insert_qdq_quantizes_after_relu_so_onnxruntime_can_fuse():
    model, _, _ = run_text(tiny.conv_chain(), QUANTIZE)
    conv0 = next(n for n in model.graph if n.name == "conv0")
    (relu, _), = conv0.outputs[0].uses()
    assert relu.op_type == "Relu"
    assert {u.op_type for u, _ in relu.outputs[0].uses()} == {"QuantizeLinear"}


@pytest.mark.parametrize("make,axis", [(tiny.conv_transpose_bn, None), (lambda: tiny.conv_transpose_bn(group=1), 1), (tiny.gemm_bn, 0), (lambda: tiny.gemm_bn(trans_b=0), 1)])
def test_weight_axis_follows_the_output_channels(make, axis):
    model, _, _ = run_text(make(), QUANTIZE)
    op = next(n for n in model.graph if n.op_type in ("ConvTranspose", "Gemm"))
    dq = op.inputs[1].producer()
    scale = dq.inputs[1].const_value.numpy()
    if axis is None:  # grouped ConvTranspose: per-tensor
        assert scale.size == 1
    else:
        assert dq.attributes.get_int("axis", 1) == axis and scale.size == dq.inputs[0].const_value.shape[axis]


def test_matmul_quantizes_the_constant_and_both_activations():
    proto = tiny.matmul_model()
    # 7-bit weights: every CPU then computes the same integers (no U8S8 saturation without VNNI).
    model, _, _ = run_text(proto, QUANTIZE, reduce_range=True)
    proj = next(n for n in model.graph if n.name == "proj")
    scores = next(n for n in model.graph if n.name == "scores")
    assert proj.inputs[1].producer().inputs[0].const_value.dtype == ir.DataType.INT8
    assert [v.producer().op_type for v in scores.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    feed = tiny.random_feed(proto, seed=5)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) > 30


def test_insert_qdq_without_calibrate_is_refused_with_the_fix():
    with pytest.raises(UserError, match="^insert-qdq needs the ranges analysis, which no earlier pass produces: put calibrate before insert-qdq$"):
        run_text(tiny.conv_chain(), "resolve-policy,insert-qdq")


def test_finalize_strips_specs_and_value_info_only():
    model, _, _ = run_text(tiny.conv_chain(), QUANTIZE)
    assert not [n for n in model.graph if SPEC_KEY in n.metadata_props]
    proto = ir.to_proto(model)
    assert len(proto.graph.value_info) == 0
    assert proto.graph.input[0].type.tensor_type.elem_type == 1
    assert "qonnx.plan" in model.metadata_props


def test_tensorrt_target_is_symmetric_and_leaves_outputs_to_the_builder():
    proto = tiny.conv_chain()
    model, _, _ = run_text(proto, QUANTIZE, target="tensorrt")
    quantizers = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert quantizers
    for q in quantizers:
        assert q.inputs[2].const_value.dtype == ir.DataType.INT8 and int(q.inputs[2].const_value.numpy()) == 0
    conv2 = next(n for n in model.graph if n.name == "conv2")
    assert not any(u.op_type == "QuantizeLinear" for u, _ in conv2.outputs[0].uses())
    feed = tiny.random_feed(proto, seed=3)
    assert sqnr_db(outputs(proto, feed)[0], outputs(model, feed)[0]) > 30


def test_an_edited_plan_replays_with_its_edits(tmp_path):
    model, _, _ = run_text(tiny.conv_chain(), QUANTIZE)
    plan = json.loads(model.metadata_props["qonnx.plan"])
    plan["nodes"]["conv2"] = "float"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    replayed, _, _ = run_text(tiny.conv_chain(), f"resolve-policy(policy={path}),calibrate,insert-qdq")
    formats = {n.name: json.loads(n.metadata_props[SPEC_KEY])["format"] for n in replayed.graph if SPEC_KEY in n.metadata_props}
    assert formats == {"conv0": "int8", "conv1": "int8", "conv2": "float", "residual": "int8"}


# --------------------------------------------------------------------------------------------
# Idempotence of every registered pass: a second run reports no change and changes no byte.


@dataclasses.dataclass(frozen=True)
class _Twice:
    step: str  # the pass, with options, as pipeline text
    make: Callable[[], onnx.ModelProto]
    before: str  # the passes it needs first
    changes: bool  # whether the first run rewrites this model (else the case would prove nothing)
    context: dict = dataclasses.field(default_factory=dict)


def _dynamic_conv_chain() -> onnx.ModelProto:
    return tiny.conv_chain(dynamic=True)


def _lstm() -> onnx.ModelProto:
    return tiny.recurrent_model("LSTM")


_FP16 = {"precision": "fp16", "target": "cuda"}
_FP8 = {"precision": "fp8", "target": "tensorrt"}
_BF16 = {"precision": "bf16", "target": "cuda"}
_FLOAT_PREP = "normalize,resolve-policy,calibrate,float-islands"
_INT4 = {"precision": "int4", "weight_only": WeightOnlyConfig(block_size=16)}
_QUANTIZE_PREP = "normalize,resolve-policy,calibrate,insert-qdq,remove-dead,finalize"
_MEASURED = {"evaluate": "fidelity", "sensitivity": "sensitivity", "latency": "latency", "layer-sensitivity": "layer_sensitivity", "weight-only-sensitivity": "weight_only_sensitivity"}  # pass -> its record
_TWICE = [
    _Twice("inline-functions", tiny.function_model, "", True),
    _Twice("upgrade-opset", tiny.constants_model, "", True),  # opset 11
    _Twice("constants-to-initializers", tiny.constants_model, "", True),
    _Twice("fold-constants", tiny.constants_model, "constants-to-initializers", True),
    _Twice("infer-shapes", _dynamic_conv_chain, "", True),
    _Twice("fold-bias-add", tiny.conv_bias_add, "", True),
    _Twice("fold-batchnorm", tiny.conv_bn_relu, "", True),
    _Twice("fold-pad", tiny.same_padded_conv, "", True),
    _Twice("remove-dead", tiny.constants_model, "constants-to-initializers", True),
    _Twice("div-to-mul", tiny.detector_neck, "", True),
    _Twice("resolve-policy", tiny.conv_chain, "normalize", True),
    _Twice("calibrate", tiny.conv_chain, "normalize,resolve-policy", False),
    _Twice("insert-qdq", tiny.conv_chain, "normalize,resolve-policy,calibrate", True),
    _Twice("insert-qdq", tiny.matmul_model, "normalize,resolve-policy,calibrate", True, {"mode": "dynamic"}),
    # Weight-only: a MatMul (and one whose weight is an activation, refused), a Gather and a Gemm
    # (its BatchNormalization folded in), in blocks of 16 along their K of 16.
    _Twice("quantize-weights", tiny.matmul_model, "normalize,resolve-policy", True, _INT4),
    _Twice("quantize-weights(format=qdq)", tiny.embedding_model, "normalize,resolve-policy", True, _INT4),
    _Twice("quantize-weights", tiny.embedding_model, "normalize,resolve-policy", True, _INT4),
    _Twice("quantize-weights(format=qdq)", tiny.gemm_bn, "normalize,resolve-policy", True, _INT4),
    _Twice("quantize-recurrent", _lstm, "normalize,resolve-policy", True),
    _Twice("quantize-subgraph-weights", tiny.if_model, "normalize,resolve-policy", True),
    _Twice("quantize-subgraph-weights", tiny.loop_model, "normalize,resolve-policy", True),
    _Twice("finalize", tiny.conv_chain, "normalize,resolve-policy,calibrate,insert-qdq", True),
    _Twice("verify", tiny.conv_chain, "normalize,resolve-policy,calibrate,insert-qdq,remove-dead,finalize", False),
    # A 60th-percentile threshold clips the tails: values reach far beyond E4M3's 448 after scaling.
    _Twice("fp8-islands", tiny.conv_chain, "normalize,upgrade-opset(min_version=21),resolve-policy,calibrate(method=percentile,percentile=60)", True, _FP8),
    _Twice("float-islands", tiny.if_model, "normalize,resolve-policy,calibrate", True, _FP16),
    _Twice("float-islands", tiny.detector_neck, "normalize,resolve-policy,calibrate", True, _BF16),
    # A floor of 70 dB, over what all-FP16 reaches here (65.6 dB), and no cap on the share kept FP32.
    _Twice("float-sensitivity(sqnr_floor=70,max_share=1.0)", tiny.conv_chain, _FLOAT_PREP, True, _FP16),
    _Twice("convert-float", tiny.detector_neck, _FLOAT_PREP, True, _FP16),
    _Twice("convert-float(keep_io_types=false)", tiny.detector_neck, _FLOAT_PREP, True, _BF16),
    _Twice("emulate-float", tiny.detector_neck, f"{_FLOAT_PREP},convert-float", True, _FP16),
    _Twice("emulate-float", tiny.detector_neck, f"{_FLOAT_PREP},convert-float(keep_io_types=false)", True, _FP16),
    _Twice("emulate-float", tiny.detector_neck, f"{_FLOAT_PREP},convert-float(keep_io_types=false)", True, _BF16),
    # The measuring passes change nothing, on a quantized model as on a converted one.
    _Twice("evaluate", tiny.conv_chain, _QUANTIZE_PREP, False),
    _Twice("evaluate", tiny.detector_neck, f"{_FLOAT_PREP},convert-float", False, _BF16),
    _Twice("sensitivity(samples=2)", tiny.conv_chain, _QUANTIZE_PREP, False),
    _Twice("latency(runs=2,warmup=0)", tiny.conv_chain, _QUANTIZE_PREP, False),
    _Twice("layer-sensitivity(top=2)", tiny.conv_chain, "normalize,resolve-policy,calibrate", False, {"reduce_range": True}),
    _Twice("weight-only-sensitivity(samples=2)", tiny.matmul_model, "normalize,resolve-policy", False, _INT4),
    # A target over what INT8 reaches: the first run keeps nodes float, the second finds nothing left to decide.
    _Twice("auto-policy(metric=sqnr,min=150,speed=false)", tiny.conv_chain, "normalize,resolve-policy,calibrate(adjacent=true),layer-sensitivity", True, {"reduce_range": True}),
]


def _twice_id(case: _Twice) -> str:
    io = "-16bit-io" if "keep_io_types=false" in case.before else ""
    return f"{case.step}-{case.context.get('precision', 'int8')}-{case.context.get('mode', 'static')}{io}-{case.make.__name__}"


def test_every_registered_pass_has_an_idempotence_case():
    pipeline._load_builtin_passes()
    builtin = {name for name, cls in pipeline.registry.items() if cls.__module__.startswith("qonnx.passes")}
    assert {pipeline.parse_pipeline(case.step)[0].name for case in _TWICE} == builtin


def _serialized(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", _TWICE, ids=_twice_id)
def test_a_second_run_of_a_pass_changes_nothing(case):
    proto = case.make()
    model = ir.serde.deserialize_model(proto)
    source = ListSource([tiny.random_feed(proto, seed=i) for i in range(4)], input_specs(model))
    reference = ir.serde.deserialize_model(proto)
    context = pipeline.Context(calib=source, eval_data=source, source=reference, **case.context)
    if case.before:
        pipeline.run_pipeline(model, pipeline.build(pipeline.parse_pipeline(case.before), context), context)
    (first,) = pipeline.run_pipeline(model, pipeline.build(pipeline.parse_pipeline(case.step), context), context)
    assert first.modified is case.changes
    after_first = _serialized(model)
    (second,) = pipeline.run_pipeline(model, pipeline.build(pipeline.parse_pipeline(case.step), context), context)
    assert second.modified is False, f"{case.step} reports a change on its own output"
    assert _serialized(model) == after_first, f"{case.step} rewrote its own output"
    if (name := case.step.split("(")[0]) in _MEASURED:  # they ran, and published what they measured
        assert _MEASURED[name] in context.records


# --------------------------------------------------------------------------------------------
# calibrate: one observer factory from its typed options

from qonnx.calib.observers import MSE, Entropy, MinMax, MovingAverageMinMax, Percentile  # noqa: E402


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("calibrate(method=minmax)", "cpu", MinMax()),
        ("calibrate(method=moving-minmax)", "cpu", MovingAverageMinMax()),
        ("calibrate(method=percentile)", "cpu", Percentile()),
        ("calibrate(method=percentile,percentile=99.9)", "cpu", Percentile(99.9)),
        ("calibrate(method=entropy)", "tensorrt", Entropy()),
        ("calibrate(method=mse)", "cpu", MSE(dtype="uint8")),  # the error of the target's activation type
        ("calibrate(method=mse)", "tensorrt", MSE(dtype="int8")),
        ("calibrate", "cpu", MSE(dtype="uint8")),  # the target's method
    ],
)
def test_calibrate_makes_one_observer_factory_from_its_options(text, target, expected):
    calibrate = pipeline.build(pipeline.parse_pipeline(f"resolve-policy,{text}"), pipeline.Context(target=target))[-1]
    assert type(calibrate.observer) is type(expected) and calibrate.observer == expected
    assert calibrate.method == expected.method


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("calibrate(method=entropy,percentile=99.0)", "^a percentile applies to --method percentile, not entropy$"),
        ("calibrate(method=kl,percentile=99.0)", "^a percentile applies to --method percentile, not kl$"),
        ("calibrate(method=kl)", "^unknown calibration method 'kl'; known: minmax, moving-minmax, percentile, entropy, mse$"),
        ("calibrate(method=percentile,percentile=120)", r"^percentile must be in \(50, 100\], not 120.0$"),
    ],
)
def test_calibrate_refuses_bad_options_when_it_is_built(text, message):
    with pytest.raises(UserError, match=message):
        pipeline.build(pipeline.parse_pipeline(f"resolve-policy,{text}"), pipeline.Context())


def test_calibrate_records_the_method_and_the_observer_settings(tmp_path):
    path = tmp_path / "ranges.json"
    _, _, context = run_text(tiny.conv_chain(), f"resolve-policy,calibrate(method=percentile,percentile=99.5,save={path})")
    table = context.analyses["ranges"]
    assert table.method == "percentile" and table.observer == {"percentile": 99.5, "symmetric": False, "bins": 4096}
    saved = json.loads(path.read_text())
    assert saved["method"] == "percentile" and saved["observer"] == {"percentile": 99.5, "symmetric": False, "bins": 4096}
    record = context.records["calibration"]
    assert record.method == "percentile" and record.observer == table.observer
