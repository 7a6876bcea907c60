"""Constant nodes → initializers.

Exporters such as Paddle2ONNX keep every weight in a ``Constant`` node. Quantization, constant
folding and BatchNormalization folding look for weights among the initializers, so this pass lifts
every Constant (``value``, ``value_float(s)``, ``value_int(s)``…) in the graph and its subgraphs
into an initializer of the same name. A Constant whose output is a graph output stays.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from qonnx.pipeline import Pass, register

logger = logging.getLogger(__name__)


@register
class ConstantsToInitializers(Pass):
    name = "constants-to-initializers"
    summary = "lift every Constant node into an initializer of the same name"
    preserves = frozenset({"shapes", "ranges", "plan"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
