"""onnx's own backend test models as a corpus of models users might bring.

The onnx wheel ships the data of its backend test suite under ``onnx/backend/test/data/``. Four
folders hold whole models rather than single operators:

* ``pytorch-converted`` and ``pytorch-operator``: modules and operators exported by an early
  PyTorch (IR version 3, opset 6 or 9), each ``NAME/model.onnx`` with ``test_data_set_*/input_*.pb``
  and ``output_*.pb``;
* ``simple``: hand-made graphs (IR 4 to 7, opsets 9 to 12), laid out the same way, some with
  string, int64 or double inputs;
* ``light``: ``light_NAME.onnx`` classifiers (AlexNet, DenseNet-121, ResNet-50, VGG-19...) at
  opset 9 whose weights are made by ``ConstantOfShape`` from shapes listed among the graph inputs
  (IR version 3). They ship an expected output but no input, so their samples are random, seeded.

An :class:`Entry` is one model with its samples (feed dicts in the order of the model's inputs) and
the expected outputs of each sample where the suite has them. :func:`write_npz` writes the samples
in the layout ``--calib`` reads (``[N, *input_shape]`` per input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["CATEGORIES", "Entry", "data_root", "entries", "write_npz"]

CATEGORIES = ("pytorch-converted", "pytorch-operator", "simple", "light")

# Random samples for the ``light`` models (which ship none): this many, from this seed.
LIGHT_SAMPLES = 2
LIGHT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Entry:
    """One corpus model: ``category/name``, its file, its samples and their expected outputs
    (``None`` where the suite ships none: the ``light`` models' random samples)."""

    category: str
    name: str
    model: Path
    samples: tuple[dict[str, np.ndarray], ...]
    expected: tuple[tuple[np.ndarray, ...], ...] | None

    @property
    def id(self) -> str:
        return f"{self.category}/{self.name}"


def data_root() -> Path:
    """The backend test data folder of the installed onnx."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def _feed_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a feed provides: those that are not initializers (IR 3 lists both)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _read_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    array = numpy_helper.to_array(tensor)
    if array.dtype == object:  # string tensors: bytes objects; .npz holds them as fixed-width unicode
        array = np.array([b.decode() if isinstance(b, bytes) else b for b in array.ravel()]).reshape(array.shape)
    return array


def _suite_entry(category: str, folder: Path) -> Entry:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    names = [v.name for v in _feed_inputs(model)]
    samples, expected = [], []
    for data in sorted(folder.glob("test_data_set_*")):
        inputs = sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        outputs = sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        samples.append({name: _read_tensor(path) for name, path in zip(names, inputs)})
        expected.append(tuple(_read_tensor(path) for path in outputs))
    return Entry(category, folder.name, folder / "model.onnx", tuple(samples), tuple(expected))


def _random_input(value: onnx.ValueInfoProto, rng: np.random.Generator) -> np.ndarray:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    return rng.standard_normal(shape).astype(dtype)


def _light_entry(path: Path) -> Entry:
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(LIGHT_SEED)
    inputs = _feed_inputs(model)
    samples = tuple({v.name: _random_input(v, rng) for v in inputs} for _ in range(LIGHT_SAMPLES))
    return Entry("light", path.stem.removeprefix("light_"), path, samples, None)


def entries(categories: tuple[str, ...] = CATEGORIES) -> Iterator[Entry]:
    """Every model of the given categories, sorted by category then name."""
    root = data_root()
    for category in categories:
        folder = root / category
        if category == "light":
            for path in sorted(folder.glob("light_*.onnx")):
                yield _light_entry(path)
        else:
            for sub in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
                yield _suite_entry(category, sub)


def write_npz(entry: Entry, path: Path) -> Path:
    """The entry's samples as a ``--calib`` .npz: one array per input, ``[N, *input_shape]``."""
    names = list(entry.samples[0])
    np.savez(path, **{name: np.stack([s[name] for s in entry.samples]) for name in names})
    return path
