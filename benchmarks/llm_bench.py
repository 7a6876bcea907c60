"""INT4 weight-only quantization of a real decoder LLM, qonnx against onnxruntime's MatMulNBitsQuantizer.

The model is the kit's SmolLM2-135M (``qonnx.models.llm``), ``input_ids -> logits`` without a KV
cache; the text is Python's pydoc topics, calibration and evaluation windows disjoint. One run on
this machine measures, per variant:

* fidelity against FP32 on the evaluation windows: perplexity (next-token NLL), top-1 next-token
  agreement and KL(FP32 || variant) (``qonnx.models.lm_eval.score``, one window at a time);
* size: model file plus external data, over FP32's;
* cost of quantizing: wall time and peak resident memory (``VmHWM``) of a freshly spawned process
  per quantizer (``benchmarks/isolation.py``), so that no quantizer inherits another's peak; qonnx
  runs with ``--no-eval`` (no held-out check of its own, which the others do not run either: it
  would hold a session of the FP32 model);
* latency with 2 intra-op threads: one forward pass of 1 token and of 128 tokens (no KV cache, so
  the 128-token figure is a prompt's prefill), median of interleaved runs.

Variants: FP32; onnxruntime's RTN (``DefaultWeightOnlyQuantConfig``): symmetric and asymmetric,
block 32 and 128, accuracy_level 0 and 4 (``ORT_RTN_SETTINGS``); qonnx ``--precision int4`` with each rounding algorithm
(rtn, gptq, awq) at its defaults; onnxruntime's GPTQ (asymmetric, block 32, its own copy of Intel
Neural Compressor's code, on the same calibration windows as qonnx's) with ``--ort-gptq``: on
32x512 windows here it had not finished after 41 minutes (at 3.1 GB resident), so ``make
bench-llm`` leaves it out.

Usage: ``python benchmarks/llm_bench.py [--eval 8x512] [--calib 32x512] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import qonnx
from qonnx import ir as qir
from qonnx import runtime
from qonnx.ir import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isolation import run_isolated  # noqa: E402  (benchmarks/isolation.py, beside this script)

THREADS = 2
# onnxruntime's RTN settings run: (symmetric, block size, accuracy_level). Block 32 symmetric is
# the reference the data-aware algorithms are measured against; accuracy_level changes the kernel,
# not the weights.
ORT_RTN_SETTINGS = ((True, 32, 0), (True, 32, 4), (False, 32, 0), (True, 128, 0), (False, 128, 0))
QUANT_TIMEOUT_S = 3600.0


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def model_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, *qir.external_data_files(path)])


# ------------------------------------------------------------------------------------------------
# Quantizers, each run in a fresh process by ``run_isolated`` (module-level functions).


def quantize_onnxruntime_rtn(model_path: str, output_path: str, symmetric: bool, block_size: int, accuracy_level: int) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    started = time.perf_counter()
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level or None)
    quantizer = MatMulNBitsQuantizer(onnx.load(model_path), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(output_path, use_external_data_format=True)
    return {"quant_s": time.perf_counter() - started}


def quantize_onnxruntime_gptq(model_path: str, output_path: str, calib_path: str, block_size: int) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    windows = np.load(calib_path)["input_ids"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(windows)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"input_ids": row[None]}

    started = time.perf_counter()
    config = GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(), block_size=block_size)
    # GPTQ's blocks are the quantizer's block_size (the config's is its column batch): left at its
    # default of 128, K = 576 makes an odd number of blocks, which its zero-point packing rejects
    quantizer = MatMulNBitsQuantizer(onnx.load(model_path), block_size=block_size, is_symmetric=False, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(output_path, use_external_data_format=True)
    return {"quant_s": time.perf_counter() - started}


def lm_head_policy(model_path: str, path: Path) -> Path:
    """The int4 default policy with one more rule: the MatMul that makes the logits in 8 bits."""
    import onnx

    from qonnx.policy import QuantSpec, Rule
    from qonnx.targets import get_target

    graph = onnx.load(model_path, load_external_data=False).graph
    head = next(n.name for n in graph.node if n.op_type == "MatMul" and n.output[0] in {o.name for o in graph.output})
    policy = get_target("cpu").weight_only_policy()
    policy.rules.append(Rule(QuantSpec("weight-only", weight_bits=8, block_size=32, symmetric_weights=True), name=head, reason="lm_head in 8 bits"))
    path.write_text(json.dumps(policy.to_dict(), indent=1))
    return path


def quantize_qonnx(model_path: str, output_path: str, calib_path: str, algorithm: str, policy: str = "") -> dict[str, Any]:
    from qonnx.cli import main

    started = time.perf_counter()
    # --no-eval: fidelity is measured here, on the evaluation windows, for every variant alike; all
    # of the calibration windows calibrate, as they do for onnxruntime's GPTQ
    args = ["quantize", model_path, "-o", output_path, "--precision", "int4", "--algorithm", algorithm, "--quiet", "--no-eval"]
    if algorithm != "rtn":
        args += ["--calib", calib_path]
    if policy:
        args += ["--policy", policy]
    code = main(args)
    if code:
        raise RuntimeError(f"qonnx quantize exited {code}")
    return {"quant_s": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------------
# Measuring


def latencies(paths: dict[str, Path], tokens: int, cycles: int = 7, per_visit: int = 3) -> dict[str, float]:
    """Median ms of one forward pass on ``tokens`` tokens, variants interleaved (see benchmarks/bench.py)."""
    feed = {"input_ids": (np.arange(tokens, dtype=np.int64) % 1000 + 100)[None]}
    sessions = {name: runtime.session(path, threads=THREADS) for name, path in paths.items()}
    for session in sessions.values():
        session.run(feed)
    runs: dict[str, list[float]] = {name: [] for name in sessions}
    for cycle in range(cycles):
        names = list(sessions) if cycle % 2 == 0 else list(reversed(sessions))
        for name in names:
            for _ in range(per_visit):
                start = time.perf_counter()
                sessions[name].run(feed)
                runs[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) * 1e3 for name, times in runs.items()}


def shape(text: str) -> tuple[int, int]:
    count, _, length = text.partition("x")
    return int(count), int(length)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval", default="8x512", help="evaluation windows, COUNTxLENGTH (default 8x512)")
    parser.add_argument("--calib", default="32x512", help="calibration windows for gptq/awq, COUNTxLENGTH (default 32x512)")
    parser.add_argument("--algorithms", default="rtn,gptq,awq", help="qonnx rounding algorithms to run")
    parser.add_argument("--ort-gptq", action="store_true", help="also run onnxruntime's GPTQ (its own copy of neural-compressor's code; over 41 minutes on 32x512 windows here)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    from qonnx.models import llm, lm_eval

    progress("fetching SmolLM2-135M and the text windows")
    fp32 = llm.smollm2()
    eval_windows = llm.text_windows(*shape(args.eval), split="eval")
    calib_windows = llm.text_windows(*shape(args.calib), split="calib")
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qonnx-llm-bench-") as scratch:
        scratch = Path(scratch)
        calib_path = scratch / "calib.npz"
        np.savez(calib_path, input_ids=calib_windows)
        jobs: list[tuple[str, str, Any, tuple]] = []
        for symmetric, block, level in ORT_RTN_SETTINGS:
            name = f"ORT RTN {'sym' if symmetric else 'asym'} b{block} acc{level}"
            jobs.append((name, "onnxruntime", quantize_onnxruntime_rtn, (str(fp32), "", symmetric, block, level)))
        if args.ort_gptq:
            jobs.append(("ORT GPTQ asym b32", "onnxruntime", quantize_onnxruntime_gptq, (str(fp32), "", str(calib_path), 32)))
        for algorithm in args.algorithms.split(","):
            jobs.append((f"qonnx {algorithm}", "qonnx", quantize_qonnx, (str(fp32), "", str(calib_path), algorithm)))
        head_policy = lm_head_policy(str(fp32), scratch / "lm_head_8bit.json")
        jobs.append(("qonnx awq, lm_head 8-bit", "qonnx", quantize_qonnx, (str(fp32), "", str(calib_path), "awq", str(head_policy))))

        paths = {"FP32": fp32}
        for index, (name, kind, function, job_args) in enumerate(jobs):
            output = scratch / f"v{index}" / "model.onnx"
            output.parent.mkdir()
            progress(f"quantizing: {name}")
            outcome = run_isolated(function, (job_args[0], str(output), *job_args[2:]), QUANT_TIMEOUT_S, workdir=output.parent)
            record = {"name": name, "kind": kind, "ok": outcome["ok"], "peak_rss_mib": round(outcome["peak_rss_mib"], 1)}
            if outcome["ok"]:
                record["quant_s"] = round(outcome["result"]["quant_s"], 1)
                record["size_bytes"] = model_bytes(output)
                paths[name] = output
            else:
                record["error"] = outcome["error"]
                progress(f"  failed: {outcome['error']}")
            records.append(record)

        progress("fidelity: FP32")
        fp32_scores = lm_eval.score(fp32, eval_windows, threads=THREADS)
        records.insert(0, {"name": "FP32", "kind": "fp32", "ok": True, "size_bytes": model_bytes(fp32), **fp32_scores, "top1_agreement": 1.0, "kl_divergence": 0.0})
        for record in records[1:]:
            if record["ok"]:
                progress(f"fidelity: {record['name']}")
                scores = lm_eval.score(paths[record["name"]], eval_windows, reference=fp32, threads=THREADS)
                scores.pop("reference_perplexity")
                record.update(scores)
        for tokens in (1, 128):
            progress(f"latency, {tokens} token(s)")
            measured = latencies(paths, tokens)
            for record in records:
                if record["name"] in measured:
                    record[f"latency_{tokens}_ms"] = round(measured[record["name"]], 2)

    doc = {
        "date": datetime.date.today().isoformat(),
        "qonnx": qonnx.__version__,
        "onnxruntime": runtime.version,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": THREADS},
        "eval": args.eval,
        "calib": args.calib,
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    data, text = json.dumps(doc, indent=2).encode(), markdown(doc)
    atomic_write(args.out / "llm.json", lambda f: f.write(data))
    atomic_write(args.out / "llm.md", lambda f: f.write(text.encode()))
    print(text)
    return 0


def markdown(doc: dict[str, Any]) -> str:
    records = doc["records"]
    fp32 = records[0]
    rtn32 = next((r for r in records if r["name"] == "ORT RTN sym b32 acc0" and r["ok"]), None)
    lines = [
        "# INT4 weight-only on SmolLM2-135M",
        "",
        f"{doc['date']}, qonnx {doc['qonnx']}, onnxruntime {doc['onnxruntime']}, {doc['machine']['cores']} cores, "
        f"{doc['machine']['threads']} intra-op threads; evaluation {doc['eval']} tokens of pydoc topics, calibration {doc['calib']}.",
        "",
        "| variant | perplexity | recovered vs ORT RTN b32 | top-1 agreement | KL | size vs FP32 | quantize s | peak RSS MiB | 1-token ms | 128-token ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if not r["ok"]:
            lines.append(f"| {r['name']} | failed: {r.get('error', '')} | | | | | | | | |")
            continue
        recovered = ""
        if rtn32 and r["kind"] == "qonnx" and rtn32["perplexity"] > fp32["perplexity"]:
            recovered = f"{(rtn32['perplexity'] - r['perplexity']) / (rtn32['perplexity'] - fp32['perplexity']):.0%}"
        lines.append(
            f"| {r['name']} | {r['perplexity']:.2f} | {recovered} | {r['top1_agreement']:.3f} | {r['kl_divergence']:.4f} | "
            f"{r['size_bytes'] / fp32['size_bytes']:.3f} | {r.get('quant_s', '')} | {r.get('peak_rss_mib', '')} | "
            f"{r.get('latency_1_ms', '')} | {r.get('latency_128_ms', '')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
