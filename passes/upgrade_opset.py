"""Opset upgrade of the default ONNX domain to at least ``min_version`` (13 by default).

Per-channel QuantizeLinear / DequantizeLinear (the ``axis`` attribute) exists from opset 13 on;
models exported at opset 11 or 12, such as the PP-OCR family, must be upgraded before per-channel
weights are possible. The upgrade uses onnx's version converter; when it cannot convert an op the
pass stops with an error naming the opsets, instead of writing a model that does not load.
"""

from __future__ import annotations

import logging

import onnx
import onnx.version_converter
import onnx_ir as ir

from qonnx.errors import UserError
from qonnx.pipeline import Pass, register

logger = logging.getLogger(__name__)


@register
class UpgradeOpset(Pass):
    name = "upgrade-opset"
    summary = "convert the model to opset >= min_version (13: per-channel Q/DQ)"
    preserves = frozenset({"ranges"})

    def __init__(self, context=None, *, min_version: int = 13) -> None:
        super().__init__(context)
        self.min_version = min_version

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", 1)
        if current >= self.min_version:
            return ir.passes.PassResult(model, modified=False)
        proto = ir.to_proto(model)
        try:
            converted = onnx.version_converter.convert_version(proto, self.min_version)
        except Exception as exc:
            raise UserError(
                f"cannot upgrade the model from opset {current} to {self.min_version} "
                f"(needed for per-channel quantization): {str(exc).splitlines()[0]}; "
                "re-export the model at a newer opset"
            ) from exc
        upgraded = ir.serde.deserialize_model(converted)
        base_dir = model.graph.meta.get("qonnx.base_dir")
        model.graph = upgraded.graph
        model.functions.clear()
        model.functions.update(upgraded.functions)
        model.ir_version = max(model.ir_version, upgraded.ir_version, 7)
        if base_dir:  # external tensors of the converted graph are read from the model's folder
            model.graph.meta["qonnx.base_dir"] = base_dir
            ir.external_data.set_base_dir(model.graph, base_dir)
        logger.info("upgraded opset %d -> %d", current, self.min_version)
        return ir.passes.PassResult(model, modified=True)
