"""Real data: the photos shipped in scikit-image's wheel, and English sentences from the stdlib.

The photos come from the ``skimage/data`` folder of the scikit-image wheel (fetched like a kit
model, never installed). They are split once, by sorted name, into a calibration half and an
evaluation half that share no image.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from qonnx.models.kit import cache_dir, extract_member, fetch_wheel

__all__ = ["SKIMAGE", "photo_folders", "sentences"]

SKIMAGE = ("scikit-image", "0.26.0")
_PHOTO = re.compile(r"^skimage/data/([A-Za-z0-9_]+\.(?:png|jpg))$")
# Not photographs: synthetic patterns that say nothing about real inputs.
_SKIP = {"chessboard_GRAY.png", "chessboard_RGB.png", "phantom.png", "logo.png", "color.png", "microaneurysms.png"}


def photo_folders() -> tuple[Path, Path]:
    """``(calibration, evaluation)`` folders of photos, disjoint halves of scikit-image's set."""
    root = cache_dir() / "photos"
    calib, evaluation = root / "calib", root / "eval"
    marker = root / ".complete"
    if marker.is_file():
        return calib, evaluation
    wheel = fetch_wheel(*SKIMAGE)
    with zipfile.ZipFile(wheel) as archive:
        members = sorted(
            m for m in archive.namelist() if (match := _PHOTO.match(m)) and match.group(1) not in _SKIP
        )
    for index, member in enumerate(members):
        folder = calib if index % 2 == 0 else evaluation
        extract_member(wheel, member, folder / Path(member).name)
    marker.write_text("\n".join(members) + "\n")
    return calib, evaluation


def sentences(limit: int | None = None) -> list[str]:
    """English sentences from the Python documentation topics shipped with the standard library."""
    from pydoc_data.topics import topics

    found: list[str] = []
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            words = sentence.split()
            if 6 <= len(words) <= 60 and sentence[0].isupper() and not any(c in sentence for c in "*{}<>|"):
                found.append(sentence)
                if limit is not None and len(found) >= limit:
                    return found
    return found
