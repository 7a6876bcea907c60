"""Division by a constant rewritten as multiplication by its reciprocal.

Rewrites ``Div(x, c)`` with c a float constant (no zero in it) into ``Mul(x, 1 / c)``. onnxruntime
has an integer kernel for Mul (QLinearMul) and none for Div, so a quantized ``x / 6`` (the end of
Paddle's and MobileNetV3's HardSwish, ``x * clip(x + 3, 0, 6) / 6``) would otherwise stay a float
island between integer kernels. ``x * (1 / c)`` differs from ``x / c`` by at most one rounding of
the reciprocal (a relative 6e-8 in float32).

Every Div is a candidate; ``_check`` tests its divisor and records the first condition that fails
(``Pass.skip``): "divisor is not constant", "divisor is not float32 or float64", "divisor has a
zero", "divisor is not finite". ``_rewrite`` inserts the Mul.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qonnx import ir as qir
from qonnx.pipeline import Pass, register


@register
class DivToMul(Pass):
    name = "div-to-mul"
    summary = "rewrite division by a float constant as multiplication by its reciprocal"
    preserves = frozenset({"shapes"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rewritten = 0
        for graph, div in qir.nodes_of(model, "Div"):
            divisor = qir.constant_array(div.inputs[1])
            if self._check(div, divisor):
                self._rewrite(graph, div, divisor)
                rewritten += 1
        return ir.passes.PassResult(model, modified=bool(rewritten))

    def _check(self, div: ir.Node, divisor: np.ndarray | None) -> bool:
        if divisor is None:
            return self.skip("divisor is not constant", div)
        if divisor.dtype not in (np.float32, np.float64):
            return self.skip("divisor is not float32 or float64", div)
        if not np.all(divisor != 0):
            return self.skip("divisor has a zero", div)
        if not np.all(np.isfinite(divisor)):
            return self.skip("divisor is not finite", div)
        return True

    def _rewrite(self, graph: ir.Graph, div: ir.Node, divisor: np.ndarray) -> None:
        reciprocal = qir.make_initializer(graph, f"{div.inputs[1].name}_reciprocal", (1 / divisor).astype(divisor.dtype))
        mul = ir.node("Mul", [div.inputs[0], reciprocal], name=qir.unique_name(graph, f"{div.name or 'Div'}_mul"))
        out = div.outputs[0]
        mul.outputs[0].name = qir.unique_name(graph, f"{out.name}_mul")
        if out.dtype is not None:  # setting None would leave a type without an element type, which cannot be saved
            mul.outputs[0].dtype = out.dtype
        mul.outputs[0].shape = out.shape
        graph.insert_before(div, mul)
        qir.bypass(graph, div, mul.outputs[0])
