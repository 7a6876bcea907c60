"""A model above 2 GB (past protobuf's limit, so its weights are external data) quantizes to INT4
without ever holding the whole FP32 model in memory.

The model is built here (nine 8192x8192 MatMul weights, 2.25 GiB in one external data file, written
one layer at a time) and deleted after. The run is the real command in a fresh interpreter that
reports its own peak resident memory (``VmHWM``, which exec resets): the weights are read through
onnx-ir's memory map and each is unmapped once its 4-bit codes exist, so the peak is about one
layer, the 4-bit output (0.16x) and onnxruntime's check of the output; measured 2.0 GB, against
4.4 GB before the unmapping. The bound asserted is the FP32 model's size: a run that read every
weight at once would exceed it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

K = N = 8192
LAYERS = 9  # 9 x 256 MiB = 2.25 GiB

_PEAK = """
import sys
from qonnx.cli import main
code = main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print(f"peak_kb={peak}")
sys.exit(code)
"""


def _wide_model(folder):
    """Write the model and its data file layer by layer (the test itself never holds 2 GB)."""
    nodes, inits, x = [], [], "x"
    offset = 0
    rng = np.random.default_rng(0)
    with open(folder / "big.onnx.data", "wb") as data:
        for i in range(LAYERS):
            weight = rng.standard_normal((K, N), dtype=np.float32) * np.float32(0.01)
            data.write(weight.tobytes())
            tensor = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[K, N])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "big.onnx.data"), ("offset", str(offset)), ("length", str(weight.nbytes))):
                tensor.external_data.add(key=key, value=value)
            offset += weight.nbytes
            inits.append(tensor)
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"h{i}"], name=f"mm{i}"))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, K])], [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, N])], inits
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "big.onnx"))
    return offset


def test_a_model_above_2gb_quantizes_to_int4_within_its_own_size_of_memory(tmp_path):
    fp32_bytes = _wide_model(tmp_path)
    assert fp32_bytes > 2**31
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK, "quantize", "big.onnx", "-o", "big.int4.onnx", "--precision", "int4", "--quiet"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900,
        )
        assert proc.returncode == 0, proc.stderr
        peak = int(proc.stdout.strip().rsplit("peak_kb=", 1)[1]) * 1024
        out = onnx.load(str(tmp_path / "big.int4.onnx"), load_external_data=False)
        assert sum(n.op_type == "MatMulNBits" for n in out.graph.node) == LAYERS
        assert (tmp_path / "big.int4.onnx").stat().st_size < 0.17 * fp32_bytes  # 4 bits + a float scale per 32
        assert peak < fp32_bytes, f"peak {peak / 2**30:.2f} GiB for a {fp32_bytes / 2**30:.2f} GiB model"
    finally:
        for path in tmp_path.iterdir():
            path.unlink()
