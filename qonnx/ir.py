"""Model I/O on onnx-ir: safe loading, atomic saving, content hashes and small graph helpers.

* ``load`` refuses external-data locations that leave the model's folder (a model file must not
  make us read ``../../etc/passwd``).
* ``save`` never writes over the input model, writes through a temporary file in the destination
  folder and renames it into place, and switches to external data when the protobuf would pass
  the 2 GB limit. A caller can look at the written file before it is renamed (``before_replace``)
  and, by raising, leave the destination untouched.
* The graph-edit primitives (``make_cast``, ``make_dequantize``, ``insert_after_producer``,
  ``redirect``, ``replace_graph_output``) name what they create with ``unique_name`` and set the
  type and shape of the new values, so that every pass builds these nodes the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx.external_data_helper as external_data_helper
import onnx_ir as ir

from qonnx.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "PROTOBUF_LIMIT",
    "load",
    "check_file",
    "save",
    "output_target",
    "hollow_external_data",
    "file_hash",
    "model_hash",
    "file_size",
    "external_data_files",
    "all_nodes",
    "constant_array",
    "release_external",
    "transpose_of_constant",
    "is_float_constant",
    "is_dequantized",
    "make_initializer",
    "unique_name",
    "nodes_of",
    "bypass",
    "is_constant_initializer",
    "make_cast",
    "make_dequantize",
    "insert_after_producer",
    "redirect",
    "replace_graph_output",
    "atomic_write",
]

PROTOBUF_LIMIT = 2**31 - 1
# Leave head-room for the graph structure when deciding to go external.
_EXTERNAL_THRESHOLD = PROTOBUF_LIMIT - 64 * 2**20


def _checked_proto(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise UserError(f"{path} is a directory, not an ONNX model file")
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, which is not a UserError by itself
        raise UserError(f"{path} is not an ONNX model: {exc}") from exc
    if not proto.HasField("graph"):
        raise UserError(f"{path} is not an ONNX model: it has no graph")
    _check_versions(path, proto)
    folder = path.parent.resolve()
    for location in _external_locations(proto):
        target = (folder / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(folder):
            raise UserError(
                f"{path}: external data location {location!r} points outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise UserError(f"{path}: external data file {location!r} is missing")
    _check_external_lengths(path, proto)
    return proto


def _check_versions(path: Path, proto: onnx.ModelProto) -> None:
    """An IR version or ai.onnx opset newer than the installed onnx and onnxruntime read is refused,
    naming both versions (onnxruntime's own message speaks of an opset "under development"); so is
    a model without an IR version (onnxruntime runs it, the checker refuses what is written from it)."""
    from qonnx import runtime

    if proto.ir_version < 1:  # onnxruntime loads it, but no valid model can be written from it
        raise UserError(f"{path} has no IR version (ir_version {proto.ir_version}): not a complete ONNX model; export it again")
    if proto.ir_version > onnx.IR_VERSION:
        raise UserError(
            f"{path} has IR version {proto.ir_version}, newer than the installed onnx {onnx.__version__} reads "
            f"(IR version {onnx.IR_VERSION} at most): export it for an older IR version, or upgrade onnx and onnxruntime"
        )
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    newest = min(onnx.defs.onnx_opset_version(), runtime.max_opset())
    if opset > newest:
        raise UserError(
            f"{path} uses ai.onnx opset {opset}; the installed onnx {onnx.__version__} knows opsets up to "
            f"{onnx.defs.onnx_opset_version()} and onnxruntime {runtime.version} runs up to {runtime.max_opset()}: "
            f"export it at opset {newest} or lower, or upgrade both"
        )


def _check_external_lengths(path: Path, proto: onnx.ModelProto) -> None:
    """Every external tensor's bytes lie within its file (a truncated copy is refused, not read as zeros)."""
    folder = path.parent
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        size = (folder / info.location).stat().st_size
        offset = info.offset or 0
        length = info.length
        if length is None:
            if tensor.data_type not in _BYTE_TYPES:
                continue  # sub-byte or unknown element sizes: nothing to compare with
            count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
            length = count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if offset + length > size:
            raise UserError(
                f"{path}: external data of {tensor.name!r} needs bytes {offset}..{offset + length} of "
                f"{info.location!r}, which has only {size}: the file is truncated or not this model's"
            )


# Element types stored in whole bytes (the packed 4- and 2-bit ones are not).
_BYTE_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
})  # fmt: skip


def _external_locations(proto: onnx.ModelProto) -> set[str]:
    locations = set()
    for tensor in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            locations.add(info.location)
    return locations


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The external data files a saved model refers to, sorted."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    return sorted(path.parent / loc for loc in _external_locations(proto))


def hollow_external_data(proto: onnx.ModelProto, larger_than: int | None = None) -> bool:
    """Turn the main graph's initializers stored as external data (and, with ``larger_than``, those
    of more bytes held inline) into graph inputs of the same type and shape, in place; returns
    whether there were any. For checks of the graph alone (the onnx checker, whether onnxruntime
    loads it): they need no weight bytes, and would otherwise read them all (gigabytes for an LLM),
    copy them, or look for their files relative to the working directory."""
    graph = proto.graph

    def hollowed(t: onnx.TensorProto) -> bool:
        return external_data_helper.uses_external_data(t) or (larger_than is not None and len(t.raw_data) > larger_than)

    external = [t for t in graph.initializer if hollowed(t)]
    if not external:
        return False
    kept = [t for t in graph.initializer if not hollowed(t)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    listed = {v.name for v in graph.input}
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external if t.name not in listed)
    return True


def check_file(path: str | os.PathLike) -> None:
    """What ``load`` checks first, without building the model: a readable ONNX file whose external
    data stays inside its folder; a UserError otherwise."""
    _checked_proto(Path(path))


def load(path: str | os.PathLike) -> ir.Model:
    """Load a model (with its external data, read lazily) after checking every data location."""
    path = Path(path)
    proto = _checked_proto(path)
    model = ir.serde.deserialize_model(proto)
    base_dir = str(path.parent.resolve())
    ir.external_data.set_base_dir(model.graph, base_dir)
    model.graph.meta["qonnx.base_dir"] = base_dir
    return model


def _tensor_bytes(model: ir.Model) -> int:
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    protect: tuple[str | os.PathLike, ...] = (),
    before_replace: Callable[[Path], None] | None = None,
) -> Path:
    """Save ``model`` to ``path`` atomically; external data (``<name>.data``) above 2 GB.

    ``protect`` lists files that must never be overwritten (the user's input model).
    ``before_replace(written)`` is called with the complete temporary file (its external data
    beside it, under the names it will keep) before anything is renamed into the destination
    folder; when it raises, the temporary files are removed and ``path`` is left as it was.
    """
    path = output_target(path)
    for other in protect:
        if Path(other).exists() and path.exists() and path.resolve() == Path(other).resolve():
            raise UserError(f"refusing to overwrite the input model {other}; choose another output path")
    if path.is_dir():
        raise UserError(f"output path {path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    external = _tensor_bytes(model) > _EXTERNAL_THRESHOLD
    own_data = re.compile(re.escape(path.name) + r"\.[0-9a-f]{12}\.data")
    previous_data = {p for p in _data_files_of(path) if own_data.fullmatch(p.name)}
    for other in protect:
        previous_data -= _data_files_of(Path(other))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_model = Path(tmp) / path.name
        if external:
            # The data file is named after the content, so the old model at ``path`` keeps reading
            # its own data until the model file itself is renamed over it.
            data_path = path.parent / f"{path.name}.{model_hash(model)[:12]}.data"
            ir.save(model, tmp_model, external_data=data_path.name)
            if before_replace is not None:
                before_replace(tmp_model)
            fresh = not data_path.exists()
            os.replace(Path(tmp) / data_path.name, data_path)
            previous_data.discard(data_path)
            try:
                os.replace(tmp_model, path)
            except BaseException:
                if fresh:
                    data_path.unlink(missing_ok=True)
                raise
        else:
            # Tensors still read from the input's external data are written inline.
            ir.external_data.load_to_model(model)
            ir.save(model, tmp_model)
            if before_replace is not None:
                before_replace(tmp_model)
            os.replace(tmp_model, path)
    for stale in previous_data:
        stale.unlink(missing_ok=True)
    return path


def _data_files_of(path: Path) -> set[Path]:
    """External data files of a model already at ``path`` (to remove once it is replaced)."""
    try:
        return set(external_data_files(path)) if path.is_file() else set()
    except Exception:  # not a readable model: nothing of ours to clean up
        return set()


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a saved model: its file and then its external data files, in name order."""
    digest = hashlib.sha256()
    for part in [Path(path), *external_data_files(path)]:
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a saved model, external data included."""
    return sum(p.stat().st_size for p in [Path(path), *external_data_files(path)])


def model_hash(model: ir.Model) -> str:
    """sha256 of the graph's structure and tensor contents (not of its metadata)."""
    digest = hashlib.sha256()
    for graph in model.graphs():
        for value in graph.inputs:
            digest.update(f"in:{value.name}:{value.dtype}".encode())
        for name, value in sorted(graph.initializers.items()):
            digest.update(f"init:{name}".encode())
            if value.const_value is not None:
                tensor = value.const_value
                digest.update(f"{tensor.dtype}:{list(tensor.shape)}".encode())
                digest.update(tensor.tobytes())
        for node in graph:
            digest.update(f"{node.domain}:{node.op_type}:{[v.name if v else '' for v in node.inputs]}".encode())
            digest.update(f"{[v.name for v in node.outputs]}".encode())
            for name, attribute in sorted(node.attributes.items()):
                digest.update(name.encode())
                digest.update(ir.serde.serialize_attribute(attribute).SerializeToString(deterministic=True))
    return digest.hexdigest()


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node of the main graph, its subgraphs and the model's functions."""
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def is_constant_initializer(value: ir.Value | None) -> bool:
    """An initializer that is not also a graph input (which a caller may override at run time)."""
    return value is not None and value.is_initializer() and not value.is_graph_input() and value.const_value is not None


def is_float_constant(value: ir.Value | None) -> bool:
    """A constant FP32 initializer."""
    return is_constant_initializer(value) and value.const_value.dtype == ir.DataType.FLOAT


def is_dequantized(value: ir.Value) -> bool:
    """Made by a DequantizeLinear (what a DynamicQuantizeLinear makes is read by one too)."""
    producer = value.producer()
    return producer is not None and producer.op_type == "DequantizeLinear"


def release_external(value: ir.Value) -> None:
    """Unmap a tensor read from external data (onnx-ir maps the file, and the pages read stay
    resident until it is unmapped); it is mapped again when next read. Left mapped while an array
    still looks into it."""
    if isinstance(value.const_value, ir.ExternalTensor):
        try:
            value.const_value.release()
        except BufferError:
            logger.debug("%s: still referenced, not unmapped", value.name)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array of a constant initializer or a Constant node's output; None for anything else."""
    if value is None:
        return None
    if is_constant_initializer(value):
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor().numpy()
    return None


def transpose_of_constant(value: ir.Value | None) -> ir.Node | None:
    """The ``Transpose`` (``perm`` absent or ``[1, 0]``) of a constant initializer that computes
    ``value`` (a tied lm_head's ``Transpose(E)``); None for anything else, a folded constant too."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Transpose" or producer.domain not in ("", "ai.onnx") or constant_array(value) is not None:
        return None
    perm = producer.attributes.get_ints("perm")
    if (perm is None or list(perm) == [1, 0]) and is_constant_initializer(producer.inputs[0]):
        return producer
    return None


def unique_name(graph: ir.Graph, base: str) -> str:
    """A name not yet used in ``graph`` for a value or a node: ``base`` or ``base_1``, ``base_2``…

    The names in use are collected once per graph and kept in its metadata; every name handed out
    here joins them.
    """
    taken = graph.meta.get("qonnx.names")
    if taken is None:
        taken = {v.name for v in graph.inputs} | set(graph.initializers)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            taken.add(node.name)
            taken.update(v.name for v in node.outputs)
        graph.meta["qonnx.names"] = taken
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces.

    A symlink is written through: its final target is replaced (atomically, from a temporary file
    beside the target) and the link itself stays. Anything that exists and is neither a regular
    file nor a folder (a device such as ``/dev/stdout``, a FIFO, a socket) is refused: an atomic
    rename would replace the special file with a regular one.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows links
    except (FileNotFoundError, NotADirectoryError):  # a new file, or a folder that cannot be: said by the writer
        mode = None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise UserError(f"{path} is {kind}, not a regular file: refusing to replace it (give a file path)")
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through ``write(f)`` into a temporary file beside it, fsync, then rename.

    On any failure the temporary file is removed and an existing file at ``path`` is untouched.
    The file gets the permissions of a plain ``open(path, "w")`` (0666 less the umask, so 0644
    usually), not mkstemp's private 0600. A symlink at ``path`` is written through
    (``output_target``); the returned path is the file written.
    """
    path = output_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer with a unique name and return its value."""
    name = unique_name(graph, base)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = value.const_value.dtype
    graph.register_initializer(value)
    return value


def nodes_of(model: ir.Model, op_type: str) -> Iterator[tuple[ir.Graph, ir.Node]]:
    """``(graph, node)`` for every standard-domain ``op_type`` node of every graph, safe to rewrite."""
    for graph in model.graphs():
        for node in list(graph):
            if node.op_type == op_type and node.domain in ("", "ai.onnx"):
                yield graph, node


def bypass(graph: ir.Graph, node: ir.Node, replacement: ir.Value) -> None:
    """Remove single-output ``node``; its readers read ``replacement`` instead.

    When the node's output was a graph output, ``replacement`` takes over its name, so the model's
    signature does not change.
    """
    output = node.outputs[0]
    name, was_graph_output = output.name, output.is_graph_output()
    ir.convenience.replace_all_uses_with(output, replacement, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if was_graph_output:
        replacement.name = name


def make_cast(
    graph: ir.Graph, value: ir.Value, to: ir.DataType, name_base: str, *, node_name: str | None = None
) -> ir.Node:
    """A ``Cast(value, to=to)`` node, not yet in ``graph``.

    Its output is named ``unique_name(graph, name_base)`` and has type ``to`` and ``value``'s
    shape. The node is named ``Cast_<output name>`` (made unique), or ``node_name``, which the
    caller has made unique itself.
    """
    name = unique_name(graph, name_base)
    if node_name is None:
        node_name = unique_name(graph, f"Cast_{name}")
    node = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", to)], name=node_name)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = name, to, value.shape
    return node


def make_dequantize(
    graph: ir.Graph,
    inputs: list[ir.Value],
    name_base: str,
    *,
    axis: int | None = None,
    shape: ir.Shape | None = None,
) -> ir.Node:
    """A ``DequantizeLinear(x, scale[, zero_point])`` node, not yet in ``graph``.

    Named ``<name_base>_DQ``, its output ``<name_base>_dq`` (both made unique, the node's first),
    a FLOAT tensor (qonnx's scales are float32) of ``shape``, by default the shape of ``x``.
    ``axis`` None is per tensor and leaves the attribute out.
    """
    node = ir.node("DequantizeLinear", inputs, attributes={"axis": axis}, name=unique_name(graph, f"{name_base}_DQ"))
    out = node.outputs[0]
    out.name = unique_name(graph, f"{name_base}_dq")
    out.dtype, out.shape = ir.DataType.FLOAT, inputs[0].shape if shape is None else shape
    return node


def insert_after_producer(graph: ir.Graph, value: ir.Value, nodes: ir.Node | Iterable[ir.Node]) -> None:
    """Insert ``nodes`` (in their order) right after the node that produces ``value``.

    A graph input or an initializer has no producer: the nodes then go before the graph's first
    node (or make up the graph when it has none).
    """
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, nodes)
    elif len(graph):
        graph.insert_before(graph.node(0), nodes)
    else:
        graph.extend([nodes] if isinstance(nodes, ir.Node) else nodes)


def redirect(uses: Iterable[tuple[ir.Node, int]], value: ir.Value) -> None:
    """Each ``(reader, input index)`` of ``uses`` reads ``value`` instead.

    Take the uses (``list(old.uses())``) before building the nodes that read the old value, so
    that these keep reading it.
    """
    for user, index in uses:
        user.replace_input_with(index, value)


def replace_graph_output(graph: ir.Graph, value: ir.Value, replacement: ir.Value, renamed_base: str) -> None:
    """``replacement`` becomes the graph output ``value`` was, under ``value``'s name.

    ``value`` stays in the graph (its readers keep reading it) and is renamed
    ``unique_name(graph, renamed_base)``; the model's signature keeps its names.
    """
    name = value.name
    value.name = unique_name(graph, renamed_base)
    replacement.name = name
    for position, output in enumerate(graph.outputs):
        if output is value:
            graph.outputs[position] = replacement
