"""Weight-only INT8 for LSTM: DequantizeLinear in front of W and R, against the contrib DynamicQuantizeLSTM.

For each LSTM size this builds three models from the same random weights and measures, on the CPU
provider with 2 intra-op threads (median of ``--runs`` after a warm-up), the latency and the SQNR
of ``Y`` against FP32 on the same unit-normal input:

* ``fp32``: the plain LSTM;
* ``dq``: qonnx's form (``passes/quantize_recurrent.py``): W and R symmetric INT8 per gate row
  behind a DequantizeLinear, a float LSTM;
* ``dynamic``: ``com.microsoft.DynamicQuantizeLSTM`` with the same INT8 weights (transposed to its
  ``[dirs, input, 4 * hidden]`` layout), which also quantizes each step's input and state at run time.

Then the kit's silero-vad: latency of one 576-sample chunk, FP32 against the default INT8 output.

Usage: ``python benchmarks/recurrent_bench.py [--runs 200]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qonnx import quant
from qonnx.metrics import sqnr_db

SIZES = [  # (input, hidden, steps): silero-vad's decoder, a speech encoder layer, a long sequence
    (128, 128, 1),
    (256, 256, 50),
    (512, 512, 100),
]


def _models(inputs: int, hidden: int, steps: int, seed: int = 0) -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(hidden)
    w = (rng.standard_normal((1, 4 * hidden, inputs)) * scale).astype(np.float32)
    r = (rng.standard_normal((1, 4 * hidden, hidden)) * scale).astype(np.float32)
    b = (rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, inputs])
    y_info = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    wq, ws, _ = quant.per_channel_symmetric(w, 1, np.int8)
    rq, rs, _ = quant.per_channel_symmetric(r, 1, np.int8)

    def model(nodes, inits, domains=()):
        graph = helper.make_graph(nodes, "lstm", [x_info], [y_info], initializer=inits)
        opsets = [helper.make_opsetid("", 14), *(helper.make_opsetid(d, 1) for d in domains)]
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = 8
        return m

    lstm = dict(hidden_size=hidden)
    fp32 = model([helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], **lstm)], [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))])
    dq = model(
        [
            helper.make_node("DequantizeLinear", ["Wq", "Ws"], ["W"], axis=1),
            helper.make_node("DequantizeLinear", ["Rq", "Rs"], ["R"], axis=1),
            helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], **lstm),
        ],
        [numpy_helper.from_array(a, n) for a, n in ((wq, "Wq"), (ws, "Ws"), (rq, "Rq"), (rs, "Rs"), (b, "B"))],
    )
    dynamic = model(
        [
            helper.make_node(
                "DynamicQuantizeLSTM",
                ["x", "Wt", "Rt", "B", "", "", "", "", "Ws2", "Wz", "Rs2", "Rz"],
                ["Y"],
                domain="com.microsoft",
                **lstm,
            )
        ],
        [
            numpy_helper.from_array(np.ascontiguousarray(wq.transpose(0, 2, 1)), "Wt"),
            numpy_helper.from_array(np.ascontiguousarray(rq.transpose(0, 2, 1)), "Rt"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(ws[None, :], "Ws2"),
            numpy_helper.from_array(np.zeros((1, 4 * hidden), np.int8), "Wz"),
            numpy_helper.from_array(rs[None, :], "Rs2"),
            numpy_helper.from_array(np.zeros((1, 4 * hidden), np.int8), "Rz"),
        ],
        ["com.microsoft"],
    )
    return {"fp32": fp32, "dq": dq, "dynamic": dynamic}


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _median_ms(session: ort.InferenceSession, feed: dict, runs: int) -> float:
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def lstm_rows(runs: int) -> list[str]:
    rows = ["| input, hidden, steps | FP32 ms | DQ + LSTM ms (SQNR dB) | DynamicQuantizeLSTM ms (SQNR dB) |", "|---|---|---|---|"]
    for inputs, hidden, steps in SIZES:
        feed = {"x": np.random.default_rng(1).standard_normal((steps, 1, inputs)).astype(np.float32)}
        sessions = {name: _session(m) for name, m in _models(inputs, hidden, steps).items()}
        reference = sessions["fp32"].run(None, feed)[0]
        cells = {}
        for name, session in sessions.items():
            ms = _median_ms(session, feed, runs)
            fidelity = sqnr_db(reference, session.run(None, feed)[0])
            cells[name] = f"{ms:.3f}" if name == "fp32" else f"{ms:.3f} ({fidelity:.1f})"
        rows.append(f"| {inputs}, {hidden}, {steps} | {cells['fp32']} | {cells['dq']} | {cells['dynamic']} |")
    return rows


def silero_rows(runs: int) -> list[str]:
    from qonnx.api import quantize
    from qonnx.models import audio, kit

    path = kit.fetch("silero-vad")
    with tempfile.TemporaryDirectory() as scratch:
        calib = audio.write_feeds(path, "calib", Path(scratch) / "calib.npz")
        output = Path(scratch) / "vad.int8.onnx"
        quantize(path, output, calib)
        feed = {"input": audio.chunks(audio.read_wav(audio.speech_wav())[0])[300], "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
        fp32, int8 = _median_ms(_session(str(path)), feed, runs), _median_ms(_session(str(output)), feed, runs)
    return [f"silero-vad, one chunk: FP32 {fp32:.3f} ms, INT8 (weight-only) {int8:.3f} ms, {fp32 / int8:.2f}x"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, 2 intra-op threads, median of {args.runs}")
    for line in [*lstm_rows(args.runs), "", *silero_rows(args.runs)]:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
