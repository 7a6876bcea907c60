"""Already-quantized models: refused by default, saying what was found and where; with
``--requantize`` the quantized parts stay as they are and only the float rest is quantized."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qonnx
from qonnx import runtime
from qonnx.errors import UserError
from qonnx.models import tiny

from conftest import calib_arrays, record_bad_input, run_qonnx


def _quantization_nodes(proto: onnx.ModelProto) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(n.name, n.op_type, tuple(n.input)) for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


@pytest.fixture
def partly_quantized(tmp_path):
    """tiny.conv_chain quantized with conv2 kept float: QDQ around conv0 and conv1."""
    onnx.save(tiny.conv_chain(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", **calib_arrays())
    qonnx.quantize(tmp_path / "m.onnx", tmp_path / "partly.onnx", calib=tmp_path / "calib.npz", nodes_to_exclude=["conv2"])
    return tmp_path


def test_a_qdq_model_is_refused_naming_what_was_found(partly_quantized):
    tmp = partly_quantized
    result = run_qonnx("quantize", "partly.onnx", "-o", "again.onnx", "--calib", "calib.npz", cwd=tmp)
    record_bad_input("already-quantized QDQ model")
    assert result.rc == 2, result.err
    assert "partly.onnx is already quantized: " in result.err and "DequantizeLinear (first: '" in result.err, result.err
    assert "--requantize" in result.err and result.err.count("\n") == 1
    assert not (tmp / "again.onnx").exists()


def test_requantize_keeps_the_quantized_parts_and_quantizes_the_rest(partly_quantized):
    tmp = partly_quantized
    before = onnx.load(str(tmp / "partly.onnx"))
    qonnx.quantize(tmp / "partly.onnx", tmp / "again.onnx", calib=tmp / "calib.npz", requantize=True)
    after = onnx.load(str(tmp / "again.onnx"))
    kept = set(_quantization_nodes(before))
    assert kept <= set(_quantization_nodes(after))  # every existing quantizer, same name, same inputs
    conv2 = next(n for n in after.graph.node if n.name == "conv2")
    producers = {o: n for n in after.graph.node for o in n.output}
    assert producers[conv2.input[1]].op_type == "DequantizeLinear"  # the float conv now has an INT8 weight
    # no quantizer stacked on another: no QuantizeLinear reads a DequantizeLinear's output
    for node in after.graph.node:
        if node.op_type == "QuantizeLinear":
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear", node.name
    feed = tiny.random_feed(tiny.conv_chain())
    reference = next(iter(runtime.session(str(tmp / "m.onnx")).run(feed).values()))
    test = next(iter(runtime.session(str(tmp / "again.onnx")).run(feed).values()))
    # three 8-bit convs on a 4-channel chain: the first quantization measured above 30 dB; 20 dB
    # fails a stacked or broken graph (a second quantizer on a quantized value costs little, a
    # wrong wiring costs everything) and leaves margin for the third conv's extra error
    sqnr = 10 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2))
    assert sqnr > 20, sqnr


def _dynamic_matmul_model(path):
    """onnxruntime.quantization.quantize_dynamic's output for a MatMul: DynamicQuantizeLinear → MatMulInteger."""
    from onnxruntime.quantization import quantize_dynamic

    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path / "float.onnx"))
    quantize_dynamic(str(path / "float.onnx"), str(path / "dyn.onnx"))
    return path / "dyn.onnx"


def test_an_integer_kernel_model_is_refused(tmp_path):
    model = _dynamic_matmul_model(tmp_path)
    with pytest.raises(UserError, match=r"already quantized: .*MatMulInteger \(first: '"):
        qonnx.quantize(model, tmp_path / "q.onnx", mode="dynamic")
    assert not (tmp_path / "q.onnx").exists()
