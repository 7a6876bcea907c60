"""``qonnx inspect``: what a model is made of, before quantizing it."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import onnx_ir as ir

from qonnx import ir as qir
from qonnx.targets import WEIGHT_AXIS_OPS

__all__ = ["inspect_model", "format_inspection"]


def _constant_tensors(model: ir.Model):
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
    for node in qir.all_nodes(model):
        if node.op_type == "Constant" and "value" in node.attributes:
            yield node.attributes["value"].as_tensor()


def inspect_model(path: str | os.PathLike) -> dict[str, Any]:
    model = qir.load(path)
    params: Counter = Counter()
    nbytes: Counter = Counter()
    for tensor in _constant_tensors(model):
        params[tensor.dtype.name] += tensor.size
        nbytes[tensor.dtype.name] += tensor.nbytes
    inputs = []
    for value in model.graph.inputs:
        dims = [d if isinstance(d, int) else str(d) for d in (value.shape or [])]
        inputs.append({"name": value.name, "dtype": value.dtype.name if value.dtype else None, "shape": dims, "dynamic": any(not isinstance(d, int) for d in dims)})
    quantizable = []
    for node in model.graph:
        if node.op_type in WEIGHT_AXIS_OPS and node.domain in ("", "ai.onnx"):
            weight = node.inputs[1] if len(node.inputs) > 1 else None
            constant = weight is not None and qir.constant_array(weight) is not None
            quantizable.append({"name": node.name, "op_type": node.op_type, "constant_weight": constant})
    return {
        "path": str(path),
        "bytes": qir.file_size(path),
        "ir_version": model.ir_version,
        "opsets": dict(model.opset_imports),
        "op_histogram": dict(Counter(n.op_type for n in qir.all_nodes(model)).most_common()),
        "parameters": dict(params),
        "parameter_bytes": dict(nbytes),
        "inputs": inputs,
        "outputs": [v.name for v in model.graph.outputs],
        "quantizable": quantizable,
    }


def format_inspection(facts: dict[str, Any]) -> str:
    lines = [f"model        {facts['path']} ({facts['bytes'] / 2**20:.2f} MiB, IR v{facts['ir_version']})"]
    lines.append("opsets       " + ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in facts["opsets"].items()))
    for i in facts["inputs"]:
        tag = " (dynamic)" if i["dynamic"] else ""
        lines.append(f"input        {i['name']}: {i['dtype']} {i['shape']}{tag}")
    lines.append(f"outputs      {', '.join(facts['outputs'])}")
    for dtype, count in facts["parameters"].items():
        lines.append(f"parameters   {dtype}: {count:,} ({facts['parameter_bytes'][dtype] / 2**20:.2f} MiB)")
    lines.append("ops          " + ", ".join(f"{k} {v}" for k, v in facts["op_histogram"].items()))
    by_op = Counter(q["op_type"] for q in facts["quantizable"])
    with_weight = sum(q["constant_weight"] for q in facts["quantizable"])
    lines.append(
        f"quantizable  {len(facts['quantizable'])} nodes ({', '.join(f'{k} {v}' for k, v in by_op.items()) or 'none'}), "
        f"{with_weight} with constant weights"
    )
    return "\n".join(lines)
