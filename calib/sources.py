"""Calibration and evaluation data: where feeds come from, checked against the model's inputs.

A source is a re-iterable, sized sequence of feed dicts ``{input name: array}``. From the CLI:

* a ``.npz`` file whose arrays are named after the model's inputs, each ``[N, *input_shape]``;
  sample i is ``{name: array[i]}``;
* a folder of ``.npz`` files, one feed each (sorted by file name);
* a folder of images (PNG, JPEG, BMP, TIFF…), resized to ``size``, scaled to [0, 1], normalized by
  ``mean`` / ``std`` per channel, in ``NCHW`` or ``NHWC`` layout, RGB or BGR.

From Python, any iterable of feed dicts. Every feed is checked against the model's inputs (names,
dtype, rank, static dimensions) before use; ``np.load`` always runs with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qonnx.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "InputSpec",
    "Source",
    "ListSource",
    "NpzSource",
    "NpzFolderSource",
    "ImageFolderSource",
    "ImagePreprocess",
    "input_specs",
    "check_feed",
    "open_source",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # int: static dim, str/None: dynamic

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The inputs a feed must provide: graph inputs that are not also initializers."""
    specs = []
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape = None if value.shape is None else tuple(d if isinstance(d, int) else str(d) for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs


def check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[InputSpec], where: str) -> dict[str, np.ndarray]:
    """Return ``feed`` as numpy arrays, or raise a UserError that says what the model expects."""
    expected = {s.name for s in specs}
    if set(feed) != expected:
        missing, extra = sorted(expected - set(feed)), sorted(set(feed) - expected)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise UserError(f"{where}: {'; '.join(parts)} (the model expects inputs: {', '.join(sorted(expected))})")
    checked = {}
    for spec in specs:
        array = np.asarray(feed[spec.name])
        if spec.dtype == object and array.dtype.kind == "U":
            array = array.astype(object)  # a string input: .npz holds text as fixed-width unicode, never as objects (pickle)
        if array.dtype != spec.dtype:
            raise UserError(f"{where}: input {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}")
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise UserError(
                    f"{where}: input {spec.name!r} has rank {array.ndim} (shape {list(array.shape)}), "
                    f"the model expects rank {len(spec.shape)} {list(spec.shape)}"
                )
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise UserError(
                        f"{where}: input {spec.name!r} has shape {list(array.shape)}, "
                        f"the model expects {list(spec.shape)} (axis {axis})"
                    )
        if array.dtype.kind == "f" and np.isnan(array).any():
            # NaN is never data; an infinity can be (an additive attention mask of -inf), and the
            # calibration keeps it out of the ranges, saying so.
            bad = np.argwhere(np.isnan(array))
            raise UserError(f"{where}: input {spec.name!r} holds {len(bad)} NaN values (first at index {list(map(int, bad[0]))})")
        checked[spec.name] = array
    return checked


class Source:
    """A sized, re-iterable sequence of checked feeds."""

    description = "data"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: Sequence[int]) -> Source:
        return _Subset(self, list(indices))


class _Subset(Source):
    def __init__(self, parent: Source, indices: list[int]):
        self.parent, self.indices = parent, indices
        self.description = f"{parent.description} [{len(indices)} of {len(parent)}]"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.parent[self.indices[index]]


class ListSource(Source):
    """Feeds from Python: any iterable of feed dicts, checked up front."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], specs: Sequence[InputSpec]):
        self.feeds = [check_feed(f, specs, f"sample {i}") for i, f in enumerate(feeds)]
        self.description = f"{len(self.feeds)} feeds from Python"

    def __len__(self) -> int:
        return len(self.feeds)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.feeds[index]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    # np.load reads whatever the bytes are: a .npy gives one array, anything else is taken for a pickle.
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a readable .npz file (not a zip archive of arrays, as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise UserError(f"{path}: cannot read without pickle ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from exc


class NpzSource(Source):
    """One ``.npz`` with one array per model input, holding ``N`` samples in either layout:

    - stacked, ``[N, *input_shape]``: sample ``i`` is ``array[i]``;
    - rows, ``[N, *input_shape[1:]]`` when the input's first axis is a batch axis (dynamic, or 1):
      sample ``i`` is ``array[i:i+1]``, a batch of one. This is the natural layout of token ids
      (``[N, seq]`` for a ``[batch, seq]`` input).

    The rank tells the layouts apart, so neither is ever guessed. A rank-0 input (a scalar such as
    a sample rate) is a 1-D array, each sample a 0-d array.
    """

    def __init__(self, path: Path, specs: Sequence[InputSpec]):
        arrays = _load_npz(path)
        strings = {s.name for s in specs if s.dtype == object}
        arrays = {k: v.astype(object) if k in strings and v.dtype.kind == "U" else v for k, v in arrays.items()}
        scalars = sorted(k for k, v in arrays.items() if v.ndim == 0)
        if scalars:
            raise UserError(f"{path}: arrays {', '.join(scalars)} have no sample axis; each must be [N, *input_shape]")
        names_and_types = {k: v[:0] for k, v in arrays.items()}  # no values: those are checked per sample
        check_feed(names_and_types, [dataclasses.replace(s, shape=None) for s in specs], str(path))
        self.rows = {spec.name: _rows_layout(path, spec, arrays[spec.name]) for spec in specs}
        counts = {k: len(v) for k, v in arrays.items()}
        if len(set(counts.values())) != 1:
            raise UserError(f"{path}: arrays hold different numbers of samples: {counts}")
        self.arrays, self.specs = arrays, specs
        self.count = next(iter(counts.values()))
        self.description = f"{path} ({self.count} samples)"
        if self.count:
            check_feed(self[0], specs, f"{path}, sample 0")
        for array in arrays.values():
            if array.dtype.kind == "f" and np.isnan(array).any():
                first = int(np.argwhere(np.isnan(array))[0][0])
                check_feed(self[first], specs, f"{path}, sample {first}")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: np.asarray(v[index : index + 1] if self.rows[k] else v[index]) for k, v in self.arrays.items()}


def _rows_layout(path: Path, spec: InputSpec, array: np.ndarray) -> bool:
    """Whether ``array`` holds ``spec``'s samples as rows (True) or stacked (False); raises when
    it is neither, naming the file's shape and both layouts with this array's sample count."""
    if spec.shape is None or array.ndim == len(spec.shape) + 1:
        return False
    batch_axis = len(spec.shape) >= 1 and not (isinstance(spec.shape[0], int) and spec.shape[0] > 1)
    if batch_axis and array.ndim == len(spec.shape):
        return True
    n = len(array)
    shown = [d if isinstance(d, int) else (d or "?") for d in spec.shape]
    stacked = f"[{', '.join(map(str, [n, *shown]))}]"
    layouts = f"{stacked} (stacked)"
    if batch_axis:
        layouts += f" or [{', '.join(map(str, [n, *shown[1:]]))}] (one row per sample, batch 1)"
    raise UserError(
        f"{path}: array {spec.name!r} has shape {list(array.shape)}; the model's input {spec.name!r} is {shown}, "
        f"so {n} samples are {layouts}"
    )


class NpzFolderSource(Source):
    """A folder of ``.npz`` files, one feed each, read lazily and checked on read."""

    def __init__(self, folder: Path, specs: Sequence[InputSpec]):
        self.files = sorted(p for p in folder.iterdir() if p.suffix == ".npz")
        self.specs = specs
        self.description = f"{folder} ({len(self.files)} .npz files)"
        if self.files:
            self[0]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        path = self.files[index]
        return check_feed(_load_npz(path), self.specs, str(path))


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes a tensor: resize, /255, (x - mean) / std, layout, channel order."""

    size: tuple[int, int] | None = None  # (height, width); None: the model's static size
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    bgr: bool = False

    def __post_init__(self):
        if self.layout not in ("NCHW", "NHWC"):
            raise UserError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError("mean and std take three values (one per channel)")
        if any(s == 0 for s in self.std):
            raise UserError("std values must be non-zero")

    def __call__(self, path: Path, dtype: np.dtype) -> np.ndarray:
        from PIL import Image  # imported here: only image folders need it

        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
                if self.size is not None:
                    height, width = self.size
                    rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(rgb, dtype=np.float32) / 255.0
        except OSError as exc:
            raise UserError(f"{path}: cannot decode image ({exc})") from exc
        if self.bgr:
            pixels = pixels[..., ::-1]
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[None]).astype(dtype)


class ImageFolderSource(Source):
    """A folder of images for a model with one image input."""

    def __init__(self, folder: Path, specs: Sequence[InputSpec], preprocess: ImagePreprocess):
        if len(specs) != 1:
            raise UserError(
                f"{folder}: an image folder feeds models with one input; this one has {len(specs)} "
                f"({', '.join(s.name for s in specs)}): use .npz data"
            )
        spec = specs[0]
        if spec.rank not in (None, 4):
            raise UserError(f"{folder}: images make rank-4 tensors; input {spec.name!r} has rank {spec.rank}")
        if preprocess.size is None:
            hw = () if spec.shape is None else spec.shape[2:4] if preprocess.layout == "NCHW" else spec.shape[1:3]
            if len(hw) != 2 or not all(isinstance(d, int) and d > 0 for d in hw):
                raise UserError(f"input {spec.name!r} has dynamic height/width {list(spec.shape or [])}: give --size HxW")
            preprocess = dataclasses.replace(preprocess, size=(hw[0], hw[1]))
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.spec, self.specs, self.preprocess = spec, specs, preprocess
        self.description = f"{folder} ({len(self.files)} images at {preprocess.size[0]}x{preprocess.size[1]})"
        if self.files:
            self[0]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        path = self.files[index]
        feed = {self.spec.name: self.preprocess(path, self.spec.dtype)}
        return check_feed(feed, self.specs, str(path))


def _folder_source(folder: Path, specs: Sequence[InputSpec], preprocess: ImagePreprocess | None) -> Source:
    """A folder of .npz files or of images, never both: one stray file must not decide what the
    rest is read as. Other files are ignored, and listed in the log."""
    entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    arrays = [p for p in entries if p.suffix == ".npz"]
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays and images:
        def few(paths: list[Path]) -> str:
            return ", ".join(p.name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")

        raise UserError(
            f"{folder} holds both .npz files ({len(arrays)}: {few(arrays)}) and images ({len(images)}: {few(images)}); "
            f"a data folder holds one kind: move the others out"
        )
    ignored = [p.name for p in entries if p not in arrays and p not in images]
    if ignored:
        logger.info("%s: %d files that are neither .npz nor images ignored: %s", folder, len(ignored), ", ".join(ignored[:10]))
    if arrays:
        return NpzFolderSource(folder, specs)
    return ImageFolderSource(folder, specs, preprocess or ImagePreprocess())


def open_source(
    data: str | os.PathLike | Iterable[Mapping[str, np.ndarray]] | Source,
    model: ir.Model,
    preprocess: ImagePreprocess | None = None,
) -> Source:
    """Open calibration or evaluation data for ``model``; raise UserError when it does not fit."""
    specs = input_specs(model)
    if isinstance(data, Source):
        source = data
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise UserError(f"calibration data not found: {path}")
        if path.is_file():
            if path.suffix != ".npz":
                raise UserError(f"{path}: calibration data must be a .npz file or a folder (of .npz files or images)")
            source = NpzSource(path, specs)
        else:
            source = _folder_source(path, specs, preprocess)
    else:
        source = ListSource(data, specs)
    if len(source) == 0:
        raise UserError(f"no samples in {source.description}")
    return source
