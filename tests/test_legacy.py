"""Models at opsets whose kernels onnxruntime no longer has: upgraded, quantized, measured against
the upgraded FP32 model, and the report says so."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qonnx


def _opset6_model(path):
    """Conv → BatchNormalization (opset 6: consumed_inputs, is_test) → AveragePool, IR 3 (every
    initializer listed among the graph inputs), as the exporters of 2017 wrote them."""
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((4, 3, 3, 3)), "s": rng.uniform(0.5, 1.5, 4), "b": rng.standard_normal(4), "m": rng.standard_normal(4) * 0.1, "v": rng.uniform(0.5, 1.5, 4)}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in params.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], consumed_inputs=[0, 0, 0, 1, 1], is_test=1, name="bn"),
        helper.make_node("AveragePool", ["bn"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "legacy", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    onnx.save(model, str(path))


def test_an_opset_6_model_is_upgraded_quantized_and_measured_against_the_upgrade(tmp_path):
    _opset6_model(tmp_path / "legacy.onnx")
    before = (tmp_path / "legacy.onnx").read_bytes()
    x = np.random.default_rng(1).standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    result = qonnx.quantize(tmp_path / "legacy.onnx", tmp_path / "q.onnx", calib=tmp_path / "calib.npz")
    assert "upgraded from opset 6 to 13" in result.report["input"]["upgraded"]
    assert (tmp_path / "legacy.onnx").read_bytes() == before  # the input untouched
    out = onnx.load(str(tmp_path / "q.onnx"))
    assert max(o.version for o in out.opset_import if o.domain == "") >= 13
    assert {n.op_type for n in out.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Conv"}
    # a 27-tap conv and a pool in 8 bits: about 36 dB measured; 25 dB fails a wrong graph or a
    # weight left as an overridable input
    assert result.fidelity["outputs"]["y"]["sqnr_db"] > 25
    assert not list(tmp_path.glob("qonnx-*"))  # the upgraded copy lived in a temporary folder
