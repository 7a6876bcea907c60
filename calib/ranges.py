"""The range table: calibrated ``(lo, hi)`` per tensor, saved as JSON and reused.

A table records the hash of the model it was made for and how it was made: method, observer
settings, samples, batch size, a description and a sha256 of the calibration data actually fed (in
order, names, dtypes, shapes and bytes), so that ``--ranges`` can refuse a table made for another
model and two tables can be told apart. Each tensor's entry has its range, the number of non-finite
values left out of it, and the resolution of the observer (a histogram's bin width, 0 for exact
extremes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from qonnx.errors import UserError
from qonnx.ir import atomic_write

__all__ = ["TensorRange", "RangeTable"]

FORMAT = "qonnx.ranges/1"


@dataclasses.dataclass(frozen=True)
class TensorRange:
    """The range a tensor is quantized with (``lo``, ``hi``: the calibration method's choice), and
    the extremes it was seen to reach (``observed_lo``, ``observed_hi``; None in tables written
    before they were recorded): a method that clips leaves values beyond ``hi``."""

    lo: float
    hi: float
    nonfinite: int = 0
    resolution: float = 0.0
    observed_lo: float | None = None
    observed_hi: float | None = None

    @property
    def observed_max_abs(self) -> float:
        """``max(|observed_lo|, |observed_hi|)``, or the range's own when no extremes were recorded."""
        lo = self.lo if self.observed_lo is None else self.observed_lo
        hi = self.hi if self.observed_hi is None else self.observed_hi
        return max(abs(lo), abs(hi))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _tensor_range(entry: dict[str, Any]) -> TensorRange:
    """A table entry with its numbers checked: a string or a list where a number belongs raises."""
    raw = TensorRange(**entry)
    return TensorRange(
        float(raw.lo), float(raw.hi), int(raw.nonfinite), float(raw.resolution), _optional_float(raw.observed_lo), _optional_float(raw.observed_hi)
    )


@dataclasses.dataclass
class RangeTable:
    ranges: dict[str, TensorRange]
    model_hash: str = ""
    method: str = "minmax"
    samples: int = 0
    data: str = ""
    data_hash: str = ""
    observer: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 1
    passes: int = 1
    # Mean per channel of the inputs of bias-corrected nodes (see calib/means.py): tensor -> values.
    channel_means: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> TensorRange:
        return self.ranges[name]

    def __contains__(self, name: str) -> bool:
        return name in self.ranges

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_hash": self.model_hash,
            "method": self.method,
            "samples": self.samples,
            "data": self.data,
            "data_hash": self.data_hash,
            "observer": self.observer,
            "batch_size": self.batch_size,
            "passes": self.passes,
            "ranges": {k: dataclasses.asdict(v) for k, v in sorted(self.ranges.items())},
            "channel_means": {k: list(v) for k, v in sorted(self.channel_means.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RangeTable:
        if data.get("format") != FORMAT:
            raise UserError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        ranges = {k: _tensor_range(v) for k, v in data["ranges"].items()}
        return cls(
            ranges,
            data["model_hash"],
            data["method"],
            data["samples"],
            data["data"],
            data.get("data_hash", ""),
            data.get("observer", {}),
            data.get("batch_size", 1),
            data.get("passes", 1),
            {k: [float(x) for x in v] for k, v in data.get("channel_means", {}).items()},
        )

    def save(self, path: str | os.PathLike) -> None:
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, path: str | os.PathLike, model_hash: str | None = None) -> RangeTable:
        """Read a table saved by ``save``; every way a file can fail to be one is a UserError."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"range table not found: {path}")
        try:
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise UserError(f"cannot read the range table {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: not a JSON text at all
            raise UserError(f"{path} is not a range table: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a range table: a JSON {type(data).__name__}, expected an object")
        try:
            table = cls.from_dict(data)
        except UserError as exc:
            raise UserError(f"{path} is not a range table: {exc}") from exc
        except KeyError as exc:
            raise UserError(f"{path} is not a range table: it has no {exc} entry") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{path} is not a range table: {exc}") from exc
        if model_hash is not None and table.model_hash != model_hash:
            raise UserError(f"{path}: range table was made for another model (hash {table.model_hash[:12]}…)")
        return table
