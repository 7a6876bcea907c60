"""The one place that talks to onnxruntime: sessions, tapped intermediate tensors, the optimized graph.

Every other module hands this one an ``onnx_ir`` model (or a path) and gets numpy arrays back.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from qonnx.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "version",
    "Session",
    "session",
    "tapped_model",
    "optimized_model",
]

version = ort.__version__


@functools.cache
def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (CPU only in the ``onnxruntime`` wheel)."""
    return list(ort.get_available_providers())


def describe() -> str:
    """This onnxruntime, as a report states it: ``onnxruntime 1.32.0 (CPUExecutionProvider)``."""
    return f"onnxruntime {ort.__version__} ({', '.join(available_providers())})"


def max_opset() -> int:
    """The newest ai.onnx opset this onnxruntime loads (probed with one-node models, newest first,
    from the installed onnx's newest; milliseconds)."""
    import onnx
    from onnx import TensorProto, helper

    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", value[:1], value[1:])
    for opset in range(onnx.defs.onnx_opset_version(), 0, -1):
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        proto.ir_version = min(proto.ir_version, 10)
        try:
            ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 (any refusal means: not this opset)
            continue
    return 0


ort.set_default_logger_severity(3)


def _options(threads: int | None, optimized_path: str | None = None, disable_optimizations: bool = False, qdq_fusion: bool = True, spinning: bool = True):
    opts = ort.SessionOptions()
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not qdq_fusion:
        # Q/DQ nodes run as themselves (reference arithmetic) instead of being fused into integer kernels.
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # fatal only: an error reaches the user once, as the exception qonnx reports
    if disable_optimizations:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
        # Every initializer of the optimized graph goes into one file beside it: left to itself,
        # onnxruntime keeps references to the source model's external data file, which is not there.
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", Path(optimized_path).name + ".data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return opts


class Session:
    """An onnxruntime session with named outputs and a numpy interface."""

    def __init__(self, inner: ort.InferenceSession, keep_alive: object = None):
        self._inner = inner
        self._keep_alive = keep_alive  # the temporary folder of a model written out for onnxruntime
        self.input_names = [i.name for i in inner.get_inputs()]
        self.output_names = [o.name for o in inner.get_outputs()]

    def run(self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        try:
            values = self._inner.run(names, dict(feed))
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
            raise UserError(f"onnxruntime failed on this input: {str(exc).splitlines()[0]}") from exc
        return dict(zip(names, values))


# Above this many bytes of tensors a model goes to onnxruntime as files, not as one protobuf.
_INLINE_LIMIT = 1 << 30


def _needs_files(model: ir.Model) -> bool:
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                return True
            total += tensor.nbytes if tensor is not None else 0
    return total > _INLINE_LIMIT


def _model_source(model: ir.Model | str | os.PathLike | bytes) -> tuple[bytes | str, object]:
    """What onnxruntime loads: bytes of a small in-memory model, else a path (and what keeps it).

    A model with external data (or past the protobuf limit) is written to a temporary folder with
    its data beside it: onnxruntime cannot resolve external data for a model given as bytes.
    """
    if isinstance(model, bytes):  # a serialized model
        return model, None
    if not isinstance(model, ir.Model):
        return str(model), None
    if not _needs_files(model):
        return ir.to_proto(model).SerializeToString(), None
    folder = tempfile.TemporaryDirectory(prefix="qonnx-session-")
    path = Path(folder.name) / "model.onnx"
    ir.save(model, path, external_data="model.onnx.data")
    return str(path), folder


def session(
    model: ir.Model | str | os.PathLike | bytes,
    *,
    threads: int | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    disable_optimizations: bool = False,
    qdq_fusion: bool = True,
    initializers: Mapping[str, np.ndarray] | None = None,
    spinning: bool = True,
) -> Session:
    """A session for an in-memory model, a serialized one or a model file. ``qdq_fusion=False``:
    QuantizeLinear/DequantizeLinear stay separate nodes, computed exactly as ONNX defines them
    (the arithmetic of a provider with its own integer kernels, such as TensorRT, up to the order of
    its integer sums), instead of the CPU provider's fused kernels. ``initializers``: the data of
    the model's external-data initializers of these names, handed over in memory (onnxruntime
    copies what it keeps as it loads: the arrays may go once the session exists). ``spinning=False``:
    onnxruntime's idle threads sleep instead of spinning, for a session run while numpy works on
    its last outputs in another thread (the weight statistics: BLAS's ``X^T X`` and the next forward
    share the cores; 15% faster on SmolLM2 with 2 cores, where range calibration, with less numpy
    work per output, was 0-8% slower without spinning and keeps it)."""
    source, keep_alive = _model_source(model)
    options = _options(threads, disable_optimizations=disable_optimizations, qdq_fusion=qdq_fusion, spinning=spinning)
    if initializers:
        options.add_external_initializers(list(initializers), [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in initializers.values()])
    try:
        inner = ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as exc:
        raise RuntimeError(f"onnxruntime could not load the model: {str(exc).splitlines()[0]}") from exc
    return Session(inner, keep_alive)


def tapped_model(model: ir.Model, tensors: Iterable[str]) -> ir.Model:
    """A copy of ``model`` whose graph outputs also include ``tensors`` (intermediate values)."""
    tapped = model.clone()
    values = ir.convenience.create_value_mapping(tapped.graph)
    present = {v.name for v in tapped.graph.outputs}
    for name in tensors:
        if name in present:
            continue
        value = values.get(name)
        if value is None:
            raise KeyError(f"no tensor named {name!r} in the model")
        if value.is_graph_input():
            continue
        if value.is_initializer():
            continue
        tapped.graph.outputs.append(value)
        present.add(name)
    return tapped


def optimized_model(model: ir.Model | str | os.PathLike, *, threads: int = 1) -> ir.Model:
    """The graph onnxruntime's CPU provider actually runs, after its own fusions (QDQ → QLinear*)."""
    source, keep_alive = _model_source(model)
    with tempfile.TemporaryDirectory(prefix="qonnx-ort-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        ort.InferenceSession(source, sess_options=_options(threads, str(path)), providers=["CPUExecutionProvider"])
        del keep_alive
        loaded = ir.load(path)
        # Materialize everything before the folder is removed.
        for graph in loaded.graphs():
            for value in graph.initializers.values():
                if value.const_value is not None:
                    value.const_value = ir.tensor(value.const_value.numpy(), name=value.name)
        return loaded
