"""Peak memory of the weight-input statistics (X^T X, mean |x| of every MatMul input) against model size.

A generated stack of ``--layers`` transformer-like blocks without attention (RMSNorm as a weight
Mul, q/k/v projections of width ``--width`` reading one input, their sum, gate/up projections of
``--hidden``, silu(gate) * up, down projection, residuals), random weights, saved to a temporary
folder; calibration: ``--samples`` random feeds of ``[1, --seq, width]``.

Each configuration runs in a fresh process that loads the model, then asks
``WeightInputStatistics`` for every MatMul's statistics in graph order, as a rewrite pass does, and
drops each layer's once used (the pass quantizes and moves on); the budget ``session`` only builds
one onnxruntime session of the model and runs one sample, for reference. Reported: the process's resident
memory after loading the model (``VmRSS``), its peak (``VmHWM``), the groups (passes over the
data), the wall time, and what the whole model's sums would take at once.

Usage: ``python benchmarks/weight_statistics_memory.py [--layers 8 --width 1024 --hidden 2816]
[--budgets session,64MiB,512MiB,8GiB]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(layers: int, width: int, hidden: int, path: Path) -> int:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    total = 0

    def init(name, shape, scale=0.02):
        nonlocal total
        array = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
        total += array.nbytes
        inits.append(numpy_helper.from_array(array, name))
        return name

    h = "x"
    for i in range(layers):
        p = f"l{i}_"
        nodes.append(helper.make_node("Mul", [h, init(p + "norm_w", (width,), 1.0)], [p + "xn"], name=p + "norm"))
        for proj in "qkv":
            nodes.append(helper.make_node("MatMul", [p + "xn", init(p + proj, (width, width))], [p + proj + "_out"], name=p + proj + "_proj"))
        nodes += [
            helper.make_node("Sum", [p + "q_out", p + "k_out", p + "v_out", h], [p + "h1"], name=p + "attn_sum"),
            helper.make_node("Mul", [p + "h1", init(p + "norm2_w", (width,), 1.0)], [p + "xn2"], name=p + "norm2"),
            helper.make_node("MatMul", [p + "xn2", init(p + "gate", (width, hidden))], [p + "gate_out"], name=p + "gate_proj"),
            helper.make_node("MatMul", [p + "xn2", init(p + "up", (width, hidden))], [p + "up_out"], name=p + "up_proj"),
            helper.make_node("Sigmoid", [p + "gate_out"], [p + "sig"], name=p + "sigmoid"),
            helper.make_node("Mul", [p + "gate_out", p + "sig"], [p + "silu"], name=p + "silu"),
            helper.make_node("Mul", [p + "silu", p + "up_out"], [p + "act"], name=p + "act"),
            helper.make_node("MatMul", [p + "act", init(p + "down", (hidden, width))], [p + "down_out"], name=p + "down_proj"),
            helper.make_node("Add", [p + "h1", p + "down_out"], [p + "h2"], name=p + "residual"),
        ]
        h = p + "h2"
    graph = helper.make_graph(
        nodes, "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", width])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, "seq", width])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return total


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _child(path: str, budget: str, samples: int, seq: int, width: int, queue) -> None:
    from qonnx import ir as qir
    from qonnx.calib.sources import ListSource, input_specs
    from qonnx.calib.weight_statistics import WeightInputStatistics

    model = qir.load(path)
    loaded = _status("VmRSS")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, seq, width), dtype=np.float32)} for _ in range(samples)]
    source = ListSource(feeds, input_specs(model))
    start = time.perf_counter()
    if budget == "session":  # the reference: one onnxruntime session of the model, no statistics
        from qonnx import runtime

        runtime.session(model).run(feeds[0])
        queue.put({"budget": budget, "loaded": loaded, "peak": _status("VmHWM"), "groups": 0,
                   "seconds": time.perf_counter() - start, "all_sums": 0})
        return
    stats = WeightInputStatistics(model, source, memory_budget=budget)
    for name in stats:
        stats[name]
    sums = sum(k * k * 8 for k in stats.channels.values())
    queue.put({"budget": budget, "loaded": loaded, "peak": _status("VmHWM"), "groups": stats.groups_computed,
               "seconds": time.perf_counter() - start, "all_sums": sums})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=2816)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--budgets", default="session,64MiB,512MiB,8GiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qonnx-stats-bench-") as tmp:
        path = Path(tmp) / "stack.onnx"
        weights = build(args.layers, args.width, args.hidden, path)
        rows = []
        context = multiprocessing.get_context("spawn")
        for budget in args.budgets.split(","):
            queue = context.Queue()
            child = context.Process(target=_child, args=(str(path), budget, args.samples, args.seq, args.width, queue))
            child.start()
            rows.append(queue.get())
            child.join()
    mib = 2**20
    print(f"model: {args.layers} layers, width {args.width}, hidden {args.hidden}: {weights / mib:.0f} MiB of weights; "
          f"{args.samples} samples x {args.seq} tokens; sums of every input at once: {max(r['all_sums'] for r in rows) / mib:.0f} MiB\n")
    print("| budget | groups (passes over the data) | RSS after loading | peak RSS | peak - loaded | peak / model | time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['groups']} | {r['loaded'] / mib:.0f} MiB | {r['peak'] / mib:.0f} MiB | "
              f"{(r['peak'] - r['loaded']) / mib:.0f} MiB | {r['peak'] / weights:.2f} | {r['seconds']:.1f} s |")
    print("\n" + json.dumps(rows))


if __name__ == "__main__":
    main()
