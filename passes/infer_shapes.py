"""Shape and type inference that survives dynamic dimensions.

First onnx's own inference (through onnx-ir, non-strict, with data propagation). Where it leaves a
tensor without a type or a rank (custom shapes, ops it cannot see through), and calibration data is
at hand, one real sample is run through onnxruntime with those tensors tapped and their observed
dtype and rank are filled in. Dimensions observed on one sample are recorded as concrete only when
every model input is static; otherwise they stay symbolic, so the model keeps accepting other
sizes. The observed shapes are kept as the ``shapes`` analysis. Only main-graph values are filled
from the sample: a subgraph's values cannot be tapped as graph outputs.

onnx-ir's merge of the inferred types sets only the element type, so an untyped sequence (the
output of ``SequenceEmpty``, ``SequenceInsert``, ``SplitToSequence``...) would come out as a tensor
of that type, which onnxruntime refuses once the value is written down or tapped. The output of an
op whose schema allows only sequences is given the sequence type; only tensors are tapped.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from qonnx import runtime
from qonnx.errors import UserError
from qonnx.pipeline import Pass, register

logger = logging.getLogger(__name__)


def _static(value: ir.Value) -> bool:
    return value.shape is not None and all(isinstance(d, int) for d in value.shape)


def _sequence_outputs(node: ir.Node, opset: int) -> list[int]:
    """Indices of ``node``'s outputs that its schema allows to be sequences only."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return []
    formal = schema.outputs
    indices = []
    for index in range(len(node.outputs)):
        types = formal[min(index, len(formal) - 1)].types if formal else ()
        if types and all(t.startswith("seq(") for t in types):
            indices.append(index)
    return indices


def _restore_sequence_types(model: ir.Model, untyped: set[ir.Value]) -> None:
    """Give the sequence type back to values that were untyped before inference and that an op
    producing only sequences computes (inference merged them in as tensors)."""
    opset = model.opset_imports.get("", 1)
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        for index in _sequence_outputs(node, opset):
            value = node.outputs[index]
            if value in untyped and isinstance(value.type, ir.TensorType):
                value.type = ir.SequenceType(value.type)


@register
class InferShapes(Pass):
    name = "infer-shapes"
    summary = "onnx shape inference, gaps filled from one real calibration sample"
    preserves = frozenset({"shapes", "ranges", "plan"})
    analyses_produced = frozenset({"shapes"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        untyped = {v for node in model.graph for v in node.outputs if v.type is None}
        try:
            modified = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model).modified
        except Exception as exc:  # inference is best effort; the real sample below fills the gaps
            logger.warning("onnx shape inference failed: %s", exc)
            modified = False
        _restore_sequence_types(model, untyped)
        missing = [
            v.name
            for node in model.graph
            for v in node.outputs
            if v.name and (v.dtype is None or v.shape is None) and not isinstance(v.type, (ir.SequenceType, ir.OptionalType))
        ]
        if not missing or self.context.calib is None:
            return ir.passes.PassResult(model, modified)
        sample = next(iter(self.context.calib), None)
        if sample is None:
            return ir.passes.PassResult(model, modified)
        try:
            observed = runtime.session(runtime.tapped_model(model, missing)).run(sample, missing)
        except UserError as exc:  # say which sample, and why it ran before calibration
            raise UserError(f"calibration sample 0 (run to find the types onnx could not infer): {exc}") from exc
        static_inputs = all(_static(v) for v in model.graph.inputs)
        values = ir.convenience.create_value_mapping(model.graph)
        for name, array in observed.items():
            value = values[name]
            if value.dtype is None:
                value.dtype = ir.DataType.from_numpy(array.dtype)
            if value.shape is None:
                dims = array.shape if static_inputs else [ir.SymbolicDim(None) for _ in array.shape]
                value.shape = ir.Shape(dims)
        self.context.analyses["shapes"] = {k: list(v.shape) for k, v in observed.items()}
        logger.info("filled %d tensor types from a real sample", len(observed))
        return ir.passes.PassResult(model, True)
