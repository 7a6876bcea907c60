"""Models at opsets older than onnxruntime's kernels, upgraded so that they can be quantized.

onnxruntime no longer has kernels for some ops of the first opsets (opset 6 ``BatchNormalization``
with ``consumed_inputs``, ``AveragePool`` before 7...). Such a model is upgraded to opset 13 with
onnx's version converter; ``consumed_inputs``, an in-place memory hint of those opsets without
effect on any value, is dropped first (the converter keeps it and onnxruntime refuses it). The
upgraded FP32 model is then the reference that fidelity is measured against, and the report says
so. A model the converter cannot upgrade, or that onnxruntime still refuses, is refused with
onnxruntime's reason, the model's opset and onnxruntime's version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx.version_converter

from qonnx.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["UPGRADE_TO", "upgraded_if_needed"]

UPGRADE_TO = 13


def _opset(proto: onnx.ModelProto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def upgraded_if_needed(path: Path, folder: Path, check_loadable: Callable[[Path], None], runtime_version: str) -> tuple[Path, str | None]:
    """``(path, None)`` when onnxruntime loads the model (``check_loadable`` raises a UserError
    when not); else the upgraded copy written into ``folder`` and a sentence for the report."""
    try:
        check_loadable(path)
        return path, None
    except UserError as refusal:
        proto = onnx.load(str(path))
        opset = _opset(proto)
        if opset >= UPGRADE_TO:
            raise
        for node in proto.graph.node:
            for attribute in [a for a in node.attribute if a.name == "consumed_inputs"]:
                node.attribute.remove(attribute)
        try:
            upgraded = onnx.version_converter.convert_version(proto, UPGRADE_TO)
            if upgraded.ir_version < 4:
                # IR 3 had to list every initializer among the graph inputs (and the converter wants
                # them there); that said nothing about feeding them, and left there they would count
                # as inputs a user may override.
                initializers = {t.name for t in upgraded.graph.initializer}
                kept = [v for v in upgraded.graph.input if v.name not in initializers]
                del upgraded.graph.input[:]
                upgraded.graph.input.extend(kept)
            upgraded.ir_version = max(upgraded.ir_version, 7)  # the IR of opset 13
        except Exception as exc:  # noqa: BLE001 (the converter raises its own C++ error types)
            raise UserError(f"{refusal} (model opset {opset}, onnxruntime {runtime_version}; onnx's version converter cannot upgrade it either: {exc})") from None
        copy = folder / path.name
        onnx.save(upgraded, str(copy))
        try:
            check_loadable(copy)
        except UserError as still:
            raise UserError(f"{refusal} (model opset {opset}, onnxruntime {runtime_version}; upgraded to opset {UPGRADE_TO} it still fails: {still})") from None
        note = (
            f"upgraded from opset {opset} to {UPGRADE_TO} with onnx's version converter (onnxruntime {runtime_version} "
            f"cannot run it as given); fidelity is measured against the upgraded FP32 model"
        )
        logger.warning("%s: %s", path, note)
        return copy, note
