"""Score a causal language model on pydoc text: perplexity, and agreement with a reference model.

``python -m qonnx.models.lm_eval``::

    python -m qonnx.models.lm_eval export                                    # SmolLM2-135M to the cache; prints its path
    python -m qonnx.models.lm_eval windows calib.npz --split calib --count 16 --length 512
    python -m qonnx.models.lm_eval windows eval.npz --split eval --count 16 --length 512
    python -m qonnx.models.lm_eval score model.int4.onnx --reference model.onnx --count 16 --length 512

The ``.npz`` files feed ``qonnx quantize --calib calib.npz --eval eval.npz``. ``score`` runs one
window at a time (logits of one 512-token window are 100 MB in float32), so memory does not grow
with the number of windows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from qonnx import runtime
from qonnx.errors import UserError
from qonnx.lm_metrics import kl_divergence, perplexity, top1_agreement
from qonnx.models import llm

__all__ = ["score", "main"]


def score(
    model: str | os.PathLike,
    windows: np.ndarray,
    *,
    reference: str | os.PathLike | None = None,
    threads: int | None = 2,
) -> dict[str, float]:
    """Perplexity of ``model`` on ``windows [N, T]``, and with ``reference`` its agreement with it.

    Every window has the same length, so the perplexity over all of them is
    ``exp(mean_i log perplexity_i)``, and the top-1 agreement and KL divergence over all positions
    are the means of the per-window values. Returns ``perplexity``, and with a reference also
    ``reference_perplexity``, ``top1_agreement`` and ``kl_divergence`` (mean KL(P_ref || P_model)
    per position, in nats).
    """
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2:
        raise ValueError(f"windows must be [count, length], got shape {list(windows.shape)}")
    session = runtime.session(model, threads=threads)
    reference_session = runtime.session(reference, threads=threads) if reference is not None else None
    log_ppl, reference_log_ppl, agreement, kl = [], [], [], []
    for row in windows:
        ids = row[None, :]
        logits = session.run({llm.INPUT_NAME: ids})[llm.OUTPUT_NAME]
        log_ppl.append(math.log(perplexity(logits, ids)))
        if reference_session is not None:
            reference_logits = reference_session.run({llm.INPUT_NAME: ids})[llm.OUTPUT_NAME]
            reference_log_ppl.append(math.log(perplexity(reference_logits, ids)))
            agreement.append(top1_agreement(reference_logits, logits))
            kl.append(kl_divergence(reference_logits, logits))
    scores = {"perplexity": math.exp(float(np.mean(log_ppl)))}
    if reference_session is not None:
        scores["reference_perplexity"] = math.exp(float(np.mean(reference_log_ppl)))
        scores["top1_agreement"] = float(np.mean(agreement))
        scores["kl_divergence"] = float(np.mean(kl))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qonnx.models.lm_eval", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("export", help="export SmolLM2-135M to the cache (once) and print the path of model.onnx")
    windows = commands.add_parser("windows", help="write pydoc token windows as a .npz for --calib / --eval")
    windows.add_argument("output", type=Path)
    scored = commands.add_parser("score", help="perplexity of MODEL on evaluation windows; top-1 agreement and KL with --reference")
    scored.add_argument("model", type=Path)
    scored.add_argument("--reference", type=Path, help="the model to compare with (e.g. the FP32 export)")
    scored.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    for sub in (windows, scored):
        sub.add_argument("--split", choices=("calib", "eval"), default="eval" if sub is scored else "calib")
        sub.add_argument("--count", type=int, default=16, help="number of windows (default 16)")
        sub.add_argument("--length", type=int, default=512, help="tokens per window (default 512)")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "export":
        print(llm.smollm2())
    elif args.command == "windows":
        path = llm.write_windows_npz(args.output, llm.text_windows(args.count, args.length, args.split))
        print(f"wrote {path}: {args.count} {args.split} windows of {args.length} tokens as input_ids [{args.count}, 1, {args.length}]")
    else:
        for path in (args.model, args.reference):
            if path is not None and not path.is_file():
                raise UserError(f"{path}: no such model file")
        windows = llm.text_windows(args.count, args.length, args.split)
        print(json.dumps(score(args.model, windows, reference=args.reference, threads=args.threads), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
