"""Does INT4 sensitivity by layer group pick the layers worth 8 bits? A check on SmolLM2-135M.

1. ``qonnx analyze --precision int4`` on calibration windows (``--calib``, scored on
   ``--sensitivity-samples`` of them): the layer groups, worst first by KL, with its wall time;
2. on held-out windows (``--eval``), RTN INT4 three ways: every layer in 4 bits; the ``--keep``
   worst groups' layers in 8 bits (a policy file with a rule per layer); the ``--keep`` best
   groups' layers in 8 bits, the control. Perplexity, next-token agreement, KL against FP32
   (``qonnx.models.lm_eval.score``) and the file size of each.

Usage: ``python benchmarks/int4_sensitivity.py [--calib 4x256] [--samples 2] [--eval 8x512] [--keep 3]``
(results in ``benchmarks/results/int4_sensitivity.md`` and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import environment_facts  # noqa: E402

from qonnx.ir import atomic_write, external_data_files  # noqa: E402
from qonnx.models import llm, lm_eval  # noqa: E402
from qonnx.policy import QuantSpec, Rule  # noqa: E402
from qonnx.targets import get_target  # noqa: E402


def _shape(text: str) -> tuple[int, int]:
    count, length = text.lower().split("x")
    return int(count), int(length)


def _variant(model: Path, scratch: Path, name: str, eight_bit: list[str], windows) -> dict:
    """RTN INT4 of ``model`` with the layers ``eight_bit`` in 8 bits, scored on ``windows``."""
    out = scratch / f"{name}.onnx"
    command = [sys.executable, "-m", "qonnx", "quantize", str(model), "-o", str(out), "--precision", "int4", "--algorithm", "rtn", "--no-eval", "-q"]
    if eight_bit:
        policy = get_target("cpu").weight_only_policy()
        for layer in eight_bit:
            policy.rules.append(Rule(QuantSpec("weight-only", weight_bits=8, block_size=32, symmetric_weights=True), name=layer, reason="8 bits"))
        path = scratch / f"{name}.policy.json"
        path.write_text(json.dumps(policy.to_dict()))
        command += ["--policy", str(path)]
    subprocess.run(command, check=True)
    scores = lm_eval.score(out, windows, reference=model)
    size = sum(p.stat().st_size for p in [out, *external_data_files(out)])
    return {"variant": name, "layers_in_8_bits": len(eight_bit), "size_mb": round(size / 1e6, 1), **{k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib", default="4x256", help="calibration windows COUNTxLENGTH (default 4x256)")
    parser.add_argument("--samples", type=int, default=2, help="windows each group is scored on (default 2)")
    parser.add_argument("--eval", default="8x512", help="held-out windows COUNTxLENGTH (default 8x512)")
    parser.add_argument("--keep", type=int, default=3, help="groups given 8 bits, worst and best (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    model = Path(llm.smollm2())
    environment = environment_facts()
    with tempfile.TemporaryDirectory(prefix="qonnx-int4-sensitivity-") as scratch_name:
        scratch = Path(scratch_name)
        calib = llm.write_windows_npz(scratch / "calib.npz", llm.text_windows(*_shape(args.calib), "calib"))
        report = scratch / "sensitivity.json"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "qonnx", "analyze", str(model), "--precision", "int4", "--calib", str(calib), "--eval", str(calib),
             "--sensitivity-samples", str(args.samples), "--report", str(report), "-q"],
            check=True,
        )  # fmt: skip
        analyze_s = round(time.perf_counter() - started, 1)
        found = json.loads(report.read_text())["weight_only_sensitivity"]
        groups = found["groups"]
        worst, best = groups[: args.keep], groups[-args.keep :]
        windows = llm.text_windows(*_shape(args.eval), "eval")
        variants = [
            _variant(model, scratch, "all 4-bit", [], windows),
            _variant(model, scratch, f"worst {args.keep} groups 8-bit", [n for g in worst for n in g["nodes"]], windows),
            _variant(model, scratch, f"best {args.keep} groups 8-bit", [n for g in best for n in g["nodes"]], windows),
        ]
    doc = {"environment": environment, "calib": args.calib, "samples": args.samples, "eval": args.eval, "analyze_s": analyze_s,
           "groups": len(groups), "evaluations": found["evaluations"], "ranking": [{k: g[k] for k in ("name", "nodes", "kl_divergence", "perplexity", "next_token_agreement")} for g in groups],
           "worst": [g["name"] for g in worst], "best": [g["name"] for g in best], "variants": variants}  # fmt: skip
    lines = [
        "# INT4 sensitivity by layer group on SmolLM2-135M: do the worst groups deserve 8 bits?",
        "",
        f"`python benchmarks/int4_sensitivity.py --calib {args.calib} --samples {args.samples} --eval {args.eval} --keep {args.keep}`; "
        f"{environment['date']}, qonnx {environment['qonnx_revision']}, onnxruntime {environment['onnxruntime_version']}.",
        "",
        f"`qonnx analyze --precision int4`: {len(groups)} groups, {found['evaluations']} evaluations, {analyze_s} s. Worst first:",
        "",
        "| group | layers | KL | perplexity | next-token top-1 |",
        "|---|---|---|---|---|",
        *[f"| {g['name']} | {len(g['nodes'])} | {g['kl_divergence']:.4f} | {g['perplexity']:.3f} | {g['next_token_agreement']:.4f} |" for g in groups[:8]],
        "",
        f"Held-out {args.eval} windows, RTN INT4 (FP32 perplexity {variants[0]['reference_perplexity']:.2f}):",
        "",
        "| variant | layers in 8 bits | perplexity | top-1 agreement | KL | size MB |",
        "|---|---|---|---|---|---|",
        *[f"| {v['variant']} | {v['layers_in_8_bits']} | {v['perplexity']:.2f} | {v['top1_agreement']:.4f} | {v['kl_divergence']:.4f} | {v['size_mb']} |" for v in variants],
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "int4_sensitivity.json", lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))
    atomic_write(args.out / "int4_sensitivity.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
