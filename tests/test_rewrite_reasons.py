"""Each pattern rewrite says why it did not apply: the reason, counted in its pass record.

For each pass, tiny models where the rewrite must not apply (the exact reason and count in the
``PassRecord``) and one where it applies (no reason recorded); and ``--debug`` lists the reasons.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx.models import tiny

from conftest import graph_model, op_types, run_qonnx, run_text, value_info

F = TensorProto.FLOAT


def _skipped(model: onnx.ModelProto, text: str, name: str, **context) -> tuple[dict[str, int], bool]:
    """What pass ``name`` recorded as not rewritten when pipeline ``text`` ran on ``model``, and whether it modified it."""
    _, records, _ = run_text(model, text, **context)
    (record,) = [r for r in records if r.name == name]
    return record.skipped, record.modified


def _node(proto: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.name == name)


def _as_input(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``proto`` with initializer ``name`` made a graph input (so it is no longer constant)."""
    init = next(i for i in proto.graph.initializer if i.name == name)
    proto.graph.initializer.remove(init)
    proto.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    return proto


def _with_attribute(proto: onnx.ModelProto, node: str, **attributes) -> onnx.ModelProto:
    for key, value in attributes.items():
        _node(proto, node).attribute.append(helper.make_attribute(key, value))
    return proto


def _second_reader(proto: onnx.ModelProto, tensor: str, shape) -> onnx.ModelProto:
    """``proto`` with a Relu that also reads ``tensor`` (of ``shape``), as a second output."""
    proto.graph.node.append(helper.make_node("Relu", [tensor], [f"{tensor}_relu"], name=f"{tensor}_relu"))
    proto.graph.output.append(value_info(f"{tensor}_relu", shape))
    return proto


def _graph_output(proto: onnx.ModelProto, tensor: str, shape) -> onnx.ModelProto:
    proto.graph.output.append(value_info(tensor, shape))
    return proto


def _relu_bn() -> onnx.ModelProto:
    """x[1,8,4,4] → Relu → BatchNormalization → y: nothing to fold the BatchNormalization into."""
    rng = np.random.default_rng(0)
    params = [numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), n) for n in ("g", "b", "m", "v")]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["y"], name="bn")]
    return graph_model(nodes, [value_info("x", [1, 8, 4, 4])], [value_info("y", [1, 8, 4, 4])], params)


def _conv_bias_add_with(shape) -> onnx.ModelProto:
    proto = tiny.conv_bias_add()
    c = next(i for i in proto.graph.initializer if i.name == "c")
    c.CopyFrom(numpy_helper.from_array(np.full(shape, 0.25, np.float32), "c"))
    return proto


def _conv_residual() -> onnx.ModelProto:
    """x → Conv → Add(·, x) → y: an Add after a Conv whose other operand is not constant."""
    w = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.1, np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), helper.make_node("Add", ["c", "x"], ["y"], name="residual")]
    return graph_model(nodes, [value_info("x", [1, 3, 4, 4])], [value_info("y", [1, 3, 4, 4])], [w])


def _pads(proto: onnx.ModelProto, pads: list[int]) -> onnx.ModelProto:
    init = next(i for i in proto.graph.initializer if i.name == "pads")
    init.CopyFrom(numpy_helper.from_array(np.array(pads, np.int64), "pads"))
    return proto


def _padded_with(value: float) -> onnx.ModelProto:
    proto = tiny.same_padded_conv()
    proto.graph.initializer.append(numpy_helper.from_array(np.float32(value), "pad_value"))
    _node(proto, "pad").input.append("pad_value")
    return proto


def _divided_by(array: np.ndarray | None) -> onnx.ModelProto:
    """x[2,3] (cast to the divisor's type) / d → y, with d a constant holding ``array``, or a second input when None."""
    dtype = helper.np_dtype_to_tensor_dtype(array.dtype) if array is not None else F
    nodes = [helper.make_node("Cast", ["x"], ["xc"], name="cast", to=dtype), helper.make_node("Div", ["xc", "d"], ["y"], name="div")]
    inputs = [value_info("x", [2, 3])]
    inits = []
    if array is None:
        inputs.append(value_info("d", [2, 3]))
    else:
        inits.append(numpy_helper.from_array(array, "d"))
    return graph_model(nodes, inputs, [value_info("y", [2, 3], dtype)], inits)


def _casts(*targets: int) -> onnx.ModelProto:
    """x[2,3] (float) → Cast(to=t1) → Cast(to=t2) → … → y."""
    nodes, previous = [], "x"
    for i, to in enumerate(targets):
        out = "y" if i == len(targets) - 1 else f"t{i}"
        nodes.append(helper.make_node("Cast", [previous], [out], name=f"cast{i}", to=to))
        previous = out
    return graph_model(nodes, [value_info("x", [2, 3])], [value_info("y", [2, 3], targets[-1])])


def _cast_between_relus(to: int) -> onnx.ModelProto:
    """x[2,3] → Relu → Cast(to) → Relu → y."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"), helper.make_node("Cast", ["r"], ["c"], name="cast", to=to), helper.make_node("Relu", ["c"], ["y"], name="relu1")]
    return graph_model(nodes, [value_info("x", [2, 3])], [value_info("y", [2, 3], to)])


FP16 = "normalize,resolve-policy,float-islands,convert-float"

# (id, model, pipeline, pass, what it records, whether it rewrites, context)
_CASES: list[tuple[str, Callable[[], onnx.ModelProto], str, str, dict[str, int], bool, dict]] = [
    # fold-batchnorm
    ("bn-folds", tiny.conv_bn_relu, "fold-batchnorm", "fold-batchnorm", {}, True, {}),
    ("bn-training", lambda: _with_attribute(tiny.conv_bn_relu(opset=15), "bn", training_mode=1), "fold-batchnorm", "fold-batchnorm", {"BatchNormalization in training mode": 1}, False, {}),
    ("bn-after-relu", _relu_bn, "fold-batchnorm", "fold-batchnorm", {"input is not a Conv, ConvTranspose or Gemm output": 1}, False, {}),
    ("bn-second-reader", lambda: _second_reader(tiny.conv_bn_relu(), "c", [1, 8, 16, 16]), "fold-batchnorm", "fold-batchnorm", {"Conv output read by 2 nodes": 1}, False, {}),
    ("bn-graph-output", lambda: _graph_output(tiny.conv_bn_relu(), "c", [1, 8, 16, 16]), "fold-batchnorm", "fold-batchnorm", {"Conv output is a graph output": 1}, False, {}),
    ("bn-weight-input", lambda: _as_input(tiny.conv_bn_relu(), "W"), "fold-batchnorm", "fold-batchnorm", {"weight is not constant": 1}, False, {}),
    ("bn-params-input", lambda: _as_input(tiny.conv_bn_relu(), "bn_mean"), "fold-batchnorm", "fold-batchnorm", {"BatchNormalization parameters are not constant": 1}, False, {}),
    ("bn-bias-input", lambda: _as_input(tiny.conv_bn_relu(), "B"), "fold-batchnorm", "fold-batchnorm", {"bias is not constant": 1}, False, {}),
    ("bn-gemm-alpha", lambda: _with_attribute(tiny.gemm_bn(), "gemm", alpha=0.5), "fold-batchnorm", "fold-batchnorm", {"Gemm alpha or beta is not 1": 1}, False, {}),
    # fold-bias-add
    ("add-folds", tiny.conv_bias_add, "fold-bias-add", "fold-bias-add", {}, True, {}),
    ("add-residual", _conv_residual, "fold-bias-add", "fold-bias-add", {"addend is not constant": 1}, False, {}),
    ("add-per-element", lambda: _conv_bias_add_with((1, 4, 8, 8)), "fold-bias-add", "fold-bias-add", {"addend is not one value per output channel": 1}, False, {}),
    ("add-wrong-axis", lambda: _conv_bias_add_with((1, 1, 1, 4)), "fold-bias-add", "fold-bias-add", {"addend does not broadcast along the channel axis only": 1}, False, {}),
    ("add-second-reader", lambda: _second_reader(tiny.conv_bias_add(), "v", [1, 4, 8, 8]), "fold-bias-add", "fold-bias-add", {"Conv output read by 2 nodes": 1}, False, {}),
    ("add-weight-input", lambda: _as_input(tiny.conv_bias_add(), "W"), "fold-bias-add", "fold-bias-add", {"weight is not constant": 1}, False, {}),
    # fold-pad
    ("pad-folds", tiny.same_padded_conv, "fold-pad", "fold-pad", {}, True, {}),
    ("pad-nonzero", lambda: _padded_with(1.0), "fold-pad", "fold-pad", {"pad value is not zero": 1}, False, {}),
    ("pad-reflect", lambda: _with_attribute(tiny.same_padded_conv(), "pad", mode="reflect"), "fold-pad", "fold-pad", {"Pad mode is not constant": 1}, False, {}),
    ("pad-channels", lambda: _pads(tiny.same_padded_conv(), [0, 1, 1, 1, 0, 0, 2, 2]), "fold-pad", "fold-pad", {"pads the batch or channel axis": 1}, False, {}),
    ("pad-negative", lambda: _pads(tiny.same_padded_conv(), [0, 0, -1, 1, 0, 0, 2, 2]), "fold-pad", "fold-pad", {"negative pads": 1}, False, {}),
    ("pad-pads-input", lambda: _as_input(tiny.same_padded_conv(), "pads"), "fold-pad", "fold-pad", {"pads are not constant": 1}, False, {}),
    ("pad-graph-output", lambda: _graph_output(tiny.same_padded_conv(), "padded", [1, 3, 12, 12]), "fold-pad", "fold-pad", {"padded tensor is a graph output": 1}, False, {}),
    # div-to-mul
    ("div-rewrites", lambda: _divided_by(np.full((2, 3), 4.0, np.float32)), "div-to-mul", "div-to-mul", {}, True, {}),
    ("div-by-input", lambda: _divided_by(None), "div-to-mul", "div-to-mul", {"divisor is not constant": 1}, False, {}),
    ("div-by-zero", lambda: _divided_by(np.array([[1, 0, 2], [3, 4, 5]], np.float32)), "div-to-mul", "div-to-mul", {"divisor has a zero": 1}, False, {}),
    ("div-by-inf", lambda: _divided_by(np.array([[1, np.inf, 2], [3, 4, 5]], np.float32)), "div-to-mul", "div-to-mul", {"divisor is not finite": 1}, False, {}),
    ("div-integer", lambda: _divided_by(np.full((2, 3), 4, np.int32)), "div-to-mul", "div-to-mul", {"divisor is not float32 or float64": 1}, False, {}),
    # convert-float: the Cast folding
    ("cast-folds", lambda: _cast_between_relus(TensorProto.FLOAT), FP16, "convert-float", {}, True, {"precision": "fp16", "target": "cuda"}),
    ("cast-signature", lambda: _casts(TensorProto.FLOAT), FP16, "convert-float", {"identity Cast between graph inputs and outputs": 1}, True, {"precision": "fp16", "target": "cuda"}),
    # The Cast to FLOAT reads a lossless Cast to DOUBLE, so it reads x: then it is the identity Cast the signature needs.
    ("cast-signature-after-cascade", lambda: _casts(TensorProto.DOUBLE, TensorProto.FLOAT), FP16, "convert-float", {"identity Cast between graph inputs and outputs": 1}, True, {"precision": "fp16", "target": "cuda"}),
    ("cast-lossy", lambda: _casts(TensorProto.INT32, TensorProto.FLOAT), FP16, "convert-float", {"reads a lossy Cast": 1}, True, {"precision": "fp16", "target": "cuda"}),
]


@pytest.mark.parametrize("make,text,name,reasons,modified,context", [c[1:] for c in _CASES], ids=[c[0] for c in _CASES])
def test_a_rewrite_that_does_not_apply_records_its_reason(make, text, name, reasons, modified, context):
    skipped, was_modified = _skipped(make(), text, name, **context)
    assert skipped == reasons
    assert was_modified == modified


def test_equal_reasons_add_up():
    # Two BatchNormalizations after Relus: one reason, counted twice.
    proto = _relu_bn()
    proto.graph.node.append(helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], name="bn2"))
    proto.graph.output[0].CopyFrom(value_info("z", [1, 8, 4, 4]))
    skipped, _ = _skipped(proto, "fold-batchnorm", "fold-batchnorm")
    assert skipped == {"input is not a Conv, ConvTranspose or Gemm output": 2}


def test_reasons_are_in_the_normalize_records_and_the_rest_still_folds():
    # The Conv's output is also a graph output: BN stays (one reason); the Pad in front still folds.
    proto = tiny.same_padded_conv()
    model, records, _ = run_text(proto, "normalize")
    assert "Pad" not in op_types(model)
    assert all(not r.skipped for r in records)
    proto = _graph_output(tiny.conv_bn_relu(), "c", [1, 8, 16, 16])
    model, records, _ = run_text(proto, "normalize")
    assert "BatchNormalization" in op_types(model)
    assert {r.name: r.skipped for r in records if r.skipped} == {"fold-batchnorm": {"Conv output is a graph output": 1}}


def test_debug_lists_the_reasons_on_stderr(tmp_path):
    # The Conv's output is also a graph output, so the BatchNormalization stays (and its Conv is
    # not fused: the pipeline leaves out verify, which would refuse that in debug mode).
    path = tmp_path / "model.onnx"
    onnx.save(_graph_output(tiny.conv_bn_relu(), "c", [1, 8, 16, 16]), str(path))
    pipeline = "normalize,resolve-policy,calibrate,insert-qdq,remove-dead,finalize"
    result = run_qonnx("quantize", path, "-o", tmp_path / "q.onnx", "--calib", "random", "--pipeline", pipeline, "--debug")
    assert result.rc == 0, result.err
    assert "fold-batchnorm: 1 not rewritten: Conv output is a graph output" in result.err
    # Without --debug, nothing about it on stderr; the report's pass records count it.
    report = tmp_path / "report.json"
    result = run_qonnx("quantize", path, "-o", tmp_path / "q2.onnx", "--calib", "random", "--pipeline", pipeline, "--report", report)
    assert result.rc == 0 and "not rewritten" not in result.err
    skipped = {p["name"]: p["skipped"] for p in json.loads(report.read_text())["passes"] if p["skipped"]}
    assert skipped == {"fold-batchnorm": {"Conv output is a graph output": 1}}
