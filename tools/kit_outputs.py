"""sha256 of every kit model's quantized and converted outputs: a refactor that promises the same
behaviour must reproduce these bytes.

Usage: ``python tools/kit_outputs.py [--save FILE | --compare FILE]``. Each model is written with
INT8 static (the cpu target's defaults for this machine), INT8 dynamic (MiniLM), FP16 and BF16
(no calibration data, as ``qonnx quantize --precision fp16`` without ``--calib``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from qonnx.api import quantize
from qonnx.models import export, kit
from qonnx.models.data import photo_folders, sentences

# (model, precision, mode)
CASES = [
    *[(name, "int8", "static") for name in kit.IMAGE_MODELS],
    ("efficientnet-lite0", "int8", "static"),
    ("minilm", "int8", "static"),
    ("minilm", "int8", "dynamic"),
    *[(name, precision, "static") for name in [*kit.IMAGE_MODELS, "efficientnet-lite0", "minilm"] for precision in ("fp16", "bf16")],
]


def _model_and_data(name: str):
    if name == "minilm":
        return export.export_minilm(), export.sentence_feeds(sentences(limit=16), seq_len=64), None
    if name == "efficientnet-lite0":
        return export.export_efficientnet_lite0(), photo_folders()[0], export.EFFICIENTNET_PREPROCESS
    return kit.fetch(name), photo_folders()[0], kit.KIT[name].preprocess


def hashes() -> dict[str, str]:
    found = {}
    with tempfile.TemporaryDirectory(prefix="qonnx-kit-outputs-") as scratch:
        for name, precision, mode in CASES:
            path, data, preprocess = _model_and_data(name)
            output = Path(scratch) / f"{name}.{precision}.{mode}.onnx"
            calib = data if precision == "int8" and mode == "static" else None
            quantize(path, output, calib, precision=precision, mode=mode, preprocess=preprocess)
            key = f"{name} {precision} {mode}"
            found[key] = hashlib.sha256(output.read_bytes()).hexdigest()
            print(f"{found[key][:16]}  {key}", flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--save", type=Path, help="write the hashes here (JSON)")
    group.add_argument("--compare", type=Path, help="compare with hashes saved earlier; exit 1 on a difference")
    args = parser.parse_args(argv)
    found = hashes()
    if args.save:
        args.save.write_text(json.dumps(found, indent=1) + "\n")
    if args.compare:
        expected = json.loads(args.compare.read_text())
        changed = [k for k in expected if found.get(k) != expected[k]]
        for key in changed:
            print(f"changed: {key}", file=sys.stderr)
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
