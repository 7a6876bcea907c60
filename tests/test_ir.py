"""qonnx.ir: safe loading, atomic saving, external data, content hashes."""

from __future__ import annotations

import builtins
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from qonnx import ir as qir
from qonnx.errors import UserError
from qonnx.models import tiny


def _ir(proto: onnx.ModelProto) -> onnx_ir.Model:
    return onnx_ir.serde.deserialize_model(proto)


def _initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _ir_arrays(model: onnx_ir.Model) -> dict[str, np.ndarray]:
    return {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# round trip and atomic save


def test_save_load_round_trip(tmp_path):
    proto = tiny.conv_chain(seed=3)
    path = tmp_path / "m.onnx"
    assert qir.save(_ir(proto), path) == path
    loaded = qir.load(path)

    saved = onnx.load(str(path))
    assert [(n.op_type, list(n.input), list(n.output)) for n in saved.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in proto.graph.node
    ]
    assert {o.domain: o.version for o in saved.opset_import} == {o.domain: o.version for o in proto.opset_import}
    original = _initializers(proto)
    for arrays in (_initializers(saved), _ir_arrays(loaded)):
        assert arrays.keys() == original.keys()
        for name, array in original.items():
            np.testing.assert_array_equal(arrays[name], array)  # bit-exact: nothing is recomputed
    assert qir.model_hash(loaded) == qir.model_hash(_ir(proto))

    # The saved file runs and computes what the original computes (same graph, same weights, same
    # onnxruntime: the results are bit-identical).
    feed = tiny.random_feed(proto, seed=1)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_array_equal(got[0], want[0])


def test_save_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain()), path)
    qir.save(_ir(tiny.conv_chain(seed=1)), path)  # overwrite an existing file as well
    assert _listing(tmp_path) == ["m.onnx"]
    np.testing.assert_array_equal(_initializers(onnx.load(str(path)))["W0"], _initializers(tiny.conv_chain(seed=1))["W0"])


def test_save_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "m.onnx"
    qir.save(_ir(tiny.conv_chain()), path)
    assert path.is_file()
    assert _listing(path.parent) == ["m.onnx"]


def _failing_save(calls: list):
    """An onnx_ir.save that writes garbage where it was told to write, then fails like a full disk."""

    def fake_save(model, path, *args, external_data=None, **kwargs):
        calls.append(Path(path))
        Path(path).write_bytes(b"garbage, half written")
        if external_data is not None:
            (Path(path).parent / external_data).write_bytes(b"garbage data")
        raise OSError(28, "No space left on device")

    return fake_save


def test_failed_save_keeps_existing_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain(seed=0)), path)
    before = path.read_bytes()

    calls: list[Path] = []
    monkeypatch.setattr(onnx_ir, "save", _failing_save(calls))
    with pytest.raises((OSError, UserError)):
        qir.save(_ir(tiny.conv_chain(seed=1)), path)

    assert calls, "the fake writer was not used: the test does not test anything"
    assert calls[0] != path, "save must write to a temporary file, not to the destination"
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["m.onnx"]


def test_failed_save_to_new_path_creates_nothing(tmp_path, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setattr(onnx_ir, "save", _failing_save(calls))
    with pytest.raises((OSError, UserError)):
        qir.save(_ir(tiny.conv_chain()), tmp_path / "new.onnx")
    assert calls
    assert _listing(tmp_path) == []


def test_failed_external_save_keeps_existing_model_and_data(tmp_path, monkeypatch):
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 0)
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain(seed=0)), path)
    assert _listing(tmp_path) == ["m.onnx", qir.external_data_files(path)[0].name]
    before = {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)}

    calls: list[Path] = []
    monkeypatch.setattr(onnx_ir, "save", _failing_save(calls))
    with pytest.raises((OSError, UserError)):
        qir.save(_ir(tiny.conv_chain(seed=1)), path)
    assert calls
    assert {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)} == before


def test_external_save_interrupted_between_renames_keeps_old_pair(tmp_path, monkeypatch):
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 0)
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain(seed=0)), path)
    old = _initializers(tiny.conv_chain(seed=0))

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == path:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        qir.save(_ir(tiny.conv_chain(seed=1)), path)
    monkeypatch.setattr(os, "replace", real_replace)

    arrays = _ir_arrays(qir.load(path))
    for name, array in old.items():
        np.testing.assert_array_equal(arrays[name], array)


def test_save_refuses_to_overwrite_protected_input(tmp_path):
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain()), path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="refusing to overwrite"):
        qir.save(_ir(tiny.conv_chain(seed=1)), path, protect=(path,))
    # The same file under another spelling is still the input.
    with pytest.raises(UserError, match="refusing to overwrite"):
        qir.save(_ir(tiny.conv_chain(seed=1)), tmp_path / "." / "m.onnx", protect=(str(path),))
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["m.onnx"]


def test_save_refuses_symlink_to_protected_input(tmp_path):
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain()), path)
    before = path.read_bytes()
    link = tmp_path / "link.onnx"
    link.symlink_to(path)
    with pytest.raises(UserError, match="refusing to overwrite"):
        qir.save(_ir(tiny.conv_chain(seed=1)), link, protect=(path,))
    assert path.read_bytes() == before


def test_save_with_protect_writes_other_paths(tmp_path):
    source = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain()), source)
    out = qir.save(qir.load(source), tmp_path / "q.onnx", protect=(source,))
    assert out.is_file()


def test_save_to_a_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="directory"):
        qir.save(_ir(tiny.conv_chain()), tmp_path)


# --------------------------------------------------------------------------------------------
# external data


def test_external_data_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 16)  # tiny weights count as "large"
    proto = tiny.conv_chain(seed=5)
    path = tmp_path / "m.onnx"
    qir.save(_ir(proto), path)

    (data,) = qir.external_data_files(path)
    # Named after the content, so a model being replaced keeps reading its own data until then.
    assert data.name.startswith("m.onnx.") and data.suffix == ".data"
    assert _listing(tmp_path) == ["m.onnx", data.name]
    # The model file itself refers to the data file by a relative name.
    raw = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for t in raw.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    assert locations == {data.name}

    loaded = qir.load(path)
    original = _initializers(proto)
    arrays = _ir_arrays(loaded)
    assert arrays.keys() == original.keys()
    for name, array in original.items():
        np.testing.assert_array_equal(arrays[name], array)

    assert qir.file_size(path) == path.stat().st_size + data.stat().st_size
    assert qir.file_size(path) > path.stat().st_size
    assert qir.file_hash(path) == _sha256(path, data)


def test_file_hash_and_size_without_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain()), path)
    assert qir.external_data_files(path) == []
    assert qir.file_size(path) == path.stat().st_size
    assert qir.file_hash(path) == _sha256(path)


def test_file_hash_changes_when_data_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 16)
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain()), path)
    (data,) = qir.external_data_files(path)
    before_hash, before_size = qir.file_hash(path), qir.file_size(path)

    content = bytearray(data.read_bytes())
    content[0] ^= 0xFF  # same length, one byte different
    data.write_bytes(bytes(content))
    assert qir.file_hash(path) != before_hash
    assert qir.file_size(path) == before_size


def test_saving_a_model_loaded_with_external_data(tmp_path, monkeypatch):
    """Re-saving a loaded external-data model (small, so inline) elsewhere gives a self-contained file."""
    src = tmp_path / "src"
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 16)
    qir.save(_ir(tiny.conv_chain(seed=2)), src / "m.onnx")
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 2**40)  # now everything fits inline
    model = qir.load(src / "m.onnx")

    # Going external again into another folder must write that folder's own data file.
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 16)
    qir.save(model, tmp_path / "ext" / "q.onnx")
    (data,) = qir.external_data_files(tmp_path / "ext" / "q.onnx")
    assert data.parent == tmp_path / "ext" and data.name.startswith("q.onnx.")
    arrays = _ir_arrays(qir.load(tmp_path / "ext" / "q.onnx"))
    for name, array in _initializers(tiny.conv_chain(seed=2)).items():
        np.testing.assert_array_equal(arrays[name], array)


def test_inline_save_of_a_model_loaded_with_external_data_is_self_contained(tmp_path, monkeypatch):
    src = tmp_path / "src"
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 16)
    qir.save(_ir(tiny.conv_chain(seed=2)), src / "m.onnx")
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 2**40)
    model = qir.load(src / "m.onnx")

    out = tmp_path / "out" / "q.onnx"
    qir.save(model, out)
    assert qir.external_data_files(out) == []
    arrays = _ir_arrays(qir.load(out))
    for name, array in _initializers(tiny.conv_chain(seed=2)).items():
        np.testing.assert_array_equal(arrays[name], array)


def _model_with_external_weight(model_dir: Path, location: str, data_file: Path | None) -> Path:
    """conv_chain with W0 stored externally at ``location``; its bytes are written to ``data_file``."""
    proto = tiny.conv_chain()
    tensor = next(t for t in proto.graph.initializer if t.name == "W0")
    raw = tensor.raw_data
    assert raw, "tiny weights are expected as raw_data"
    if data_file is not None:
        data_file.parent.mkdir(parents=True, exist_ok=True)
        data_file.write_bytes(raw)
    set_external_data(tensor, location=location, offset=0, length=len(raw))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_in_a_subfolder_is_allowed(tmp_path):
    folder = tmp_path / "model"
    path = _model_with_external_weight(folder, "weights/w0.bin", folder / "weights" / "w0.bin")
    model = qir.load(path)
    np.testing.assert_array_equal(model.graph.initializers["W0"].const_value.numpy(), _initializers(tiny.conv_chain())["W0"])
    assert qir.external_data_files(path) == [folder / "weights" / "w0.bin"]


class _OpenSpy:
    """Records every path opened through builtins.open / os.open while installed."""

    def __init__(self, monkeypatch):
        self.paths: list[Path] = []
        real_open, real_os_open = builtins.open, os.open

        def spy_open(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                self.paths.append(Path(os.fsdecode(file)).resolve())
            return real_open(file, *args, **kwargs)

        def spy_os_open(file, *args, **kwargs):
            self.paths.append(Path(os.fsdecode(file)).resolve())
            return real_os_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(os, "open", spy_os_open)


@pytest.mark.parametrize("kind", ["parent", "absolute", "dotdot-inside", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, monkeypatch, kind):
    folder = tmp_path / "model"
    outside = tmp_path / "outside.bin"
    location = {
        "parent": "../outside.bin",
        "absolute": str(outside),
        "dotdot-inside": "sub/../../outside.bin",
        "symlink": "link.bin",
    }[kind]
    path = _model_with_external_weight(folder, location, outside)
    if kind == "symlink":
        (folder / "link.bin").symlink_to(outside)  # a link inside the folder that leads out of it

    spy = _OpenSpy(monkeypatch)
    with pytest.raises(UserError, match="outside the model's folder"):
        qir.load(path)
    monkeypatch.undo()
    assert spy.paths, "the spy saw nothing: the test does not test anything"
    assert outside.resolve() not in spy.paths, "the outside file was opened"


def test_missing_external_data_file_is_a_user_error(tmp_path):
    path = _model_with_external_weight(tmp_path, "m.onnx.data", None)
    with pytest.raises(UserError, match="missing"):
        qir.load(path)


# --------------------------------------------------------------------------------------------
# bad model files


def test_missing_model_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        qir.load(tmp_path / "nope.onnx")


@pytest.mark.parametrize(
    "content",
    [b"hello, this is not an ONNX model\n", bytes(range(256)) * 4, b"PK\x03\x04" + b"\x00" * 60],
    ids=["text", "binary", "zip"],
)
def test_non_onnx_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not an ONNX model"):
        qir.load(path)


def test_empty_file_is_a_user_error(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(UserError):
        qir.load(path)


def test_directory_as_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        qir.load(tmp_path)


# --------------------------------------------------------------------------------------------
# model_hash


def test_model_hash_equal_for_equal_models():
    a, b = _ir(tiny.conv_chain(seed=0)), _ir(tiny.conv_chain(seed=0))
    assert qir.model_hash(a) == qir.model_hash(b)
    assert len(qir.model_hash(a)) == 64


def test_model_hash_changes_with_a_weight():
    a, b = _ir(tiny.conv_chain(seed=0)), _ir(tiny.conv_chain(seed=0))
    value = b.graph.initializers["W1"]
    array = value.const_value.numpy().copy()
    array.flat[5] += 1e-3
    value.const_value = onnx_ir.tensor(array, name="W1")
    assert qir.model_hash(a) != qir.model_hash(b)


def test_model_hash_changes_with_different_weights_and_structure():
    base = qir.model_hash(_ir(tiny.conv_chain(seed=0)))
    assert qir.model_hash(_ir(tiny.conv_chain(seed=1))) != base
    assert qir.model_hash(_ir(tiny.conv_chain(seed=0, depth=4))) != base


def test_model_hash_changes_with_an_attribute_value():
    a, b = _ir(tiny.conv_chain()), _ir(tiny.conv_chain())
    conv = next(n for n in b.graph if n.name == "conv0")
    conv.attributes["pads"] = onnx_ir.AttrInt64s("pads", [0, 0, 0, 0])
    assert qir.model_hash(a) != qir.model_hash(b)


def test_save_never_deletes_data_it_did_not_write(tmp_path):
    # out.onnx is another tool's file that reads the input's data file: replacing out.onnx must not
    # delete that data file, which the protected input still needs.
    proto = tiny.conv_chain()
    onnx.save(tiny.conv_chain(), tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    (tmp_path / "out.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    qir.save(qir.load(tmp_path / "m.onnx"), tmp_path / "out.onnx", protect=(tmp_path / "m.onnx",))
    assert (tmp_path / "m.onnx.data").exists()
    np.testing.assert_array_equal(_initializers(onnx.load(str(tmp_path / "m.onnx")))["W0"], _initializers(proto)["W0"])
    np.testing.assert_array_equal(_ir_arrays(qir.load(tmp_path / "out.onnx"))["W0"], _initializers(proto)["W0"])


def test_replacing_our_own_external_model_removes_its_old_data(tmp_path, monkeypatch):
    monkeypatch.setattr(qir, "_EXTERNAL_THRESHOLD", 16)
    path = tmp_path / "m.onnx"
    qir.save(_ir(tiny.conv_chain(seed=0)), path)
    (old,) = qir.external_data_files(path)
    qir.save(_ir(tiny.conv_chain(seed=1)), path)
    (new,) = qir.external_data_files(path)
    assert new != old and not old.exists() and new.exists()


# --------------------------------------------------------------------------------------------
# graph-edit primitives

FLOAT, FLOAT16, UINT8 = onnx_ir.DataType.FLOAT, onnx_ir.DataType.FLOAT16, onnx_ir.DataType.UINT8


def _relu_neg_graph() -> tuple[onnx_ir.Graph, onnx_ir.Value, onnx_ir.Value]:
    """x → Relu(relu) → r → Neg(neg) → y, with r also a graph output; returns (graph, x, r)."""
    x = onnx_ir.Value(name="x", type=onnx_ir.TensorType(FLOAT), shape=onnx_ir.Shape([1, 4]))
    relu = onnx_ir.node("Relu", [x], name="relu")
    r = relu.outputs[0]
    r.name, r.dtype, r.shape = "r", FLOAT, onnx_ir.Shape([1, 4])
    neg = onnx_ir.node("Neg", [r], name="neg")
    neg.outputs[0].name, neg.outputs[0].dtype, neg.outputs[0].shape = "y", FLOAT, onnx_ir.Shape([1, 4])
    graph = onnx_ir.Graph([x], [neg.outputs[0], r], nodes=[relu, neg], opset_imports={"": 21}, name="g")
    return graph, x, r


def _names(graph: onnx_ir.Graph) -> list[str]:
    return [node.name for node in graph]


def test_make_cast_names_types_and_leaves_the_graph_alone():
    graph, _, r = _relu_neg_graph()
    cast = qir.make_cast(graph, r, FLOAT16, "r_fp16")
    out = cast.outputs[0]
    assert (cast.op_type, cast.domain, cast.name) == ("Cast", "", "Cast_r_fp16")
    assert cast.attributes.get_int("to") == FLOAT16
    assert list(cast.inputs) == [r]
    assert (out.name, out.dtype, out.shape) == ("r_fp16", FLOAT16, r.shape)
    assert cast.graph is None and _names(graph) == ["relu", "neg"]


def test_make_cast_names_stay_unique():
    graph, _, r = _relu_neg_graph()
    first = qir.make_cast(graph, r, FLOAT16, "r_fp16")
    second = qir.make_cast(graph, r, FLOAT16, "r_fp16")
    assert (second.outputs[0].name, second.name) == ("r_fp16_1", "Cast_r_fp16_1")
    # the node is named after its (unique) output
    third = qir.make_cast(graph, r, FLOAT16, "y")
    assert (third.outputs[0].name, third.name) == ("y_1", "Cast_y_1")
    assert first.name == "Cast_r_fp16"


def test_make_cast_with_a_node_name_of_the_callers():
    graph, _, r = _relu_neg_graph()
    node_name = qir.unique_name(graph, "Cast_y")  # drawn before the output's name
    cast = qir.make_cast(graph, r, FLOAT16, "y", node_name=node_name)
    assert (cast.name, cast.outputs[0].name) == ("Cast_y", "y_1")


def test_make_dequantize_per_tensor_and_per_axis():
    graph, _, r = _relu_neg_graph()
    q = qir.make_initializer(graph, "w_q", np.zeros((3, 2), np.int8))
    s = qir.make_initializer(graph, "w_scale", np.ones(3, np.float32))
    dq = qir.make_dequantize(graph, [q, s], "w", axis=0)
    out = dq.outputs[0]
    assert (dq.op_type, dq.domain, dq.name, out.name) == ("DequantizeLinear", "", "w_DQ", "w_dq")
    assert list(dq.inputs) == [q, s] and dq.attributes.get_int("axis") == 0
    assert out.dtype == FLOAT and out.shape == onnx_ir.Shape([3, 2])
    assert dq.graph is None
    per_tensor = qir.make_dequantize(graph, [q, s], "w")
    assert "axis" not in per_tensor.attributes
    assert (per_tensor.name, per_tensor.outputs[0].name) == ("w_DQ_1", "w_dq_1")
    shaped = qir.make_dequantize(graph, [q, s], "r", shape=r.shape)
    assert shaped.outputs[0].shape is r.shape


def test_insert_after_producer_keeps_the_order_of_the_nodes():
    graph, _, r = _relu_neg_graph()
    narrow = qir.make_cast(graph, r, FLOAT16, "r_round")
    widen = qir.make_cast(graph, narrow.outputs[0], FLOAT, "r_rounded")
    qir.insert_after_producer(graph, r, [narrow, widen])
    assert _names(graph) == ["relu", "Cast_r_round", "Cast_r_rounded", "neg"]
    # nothing is rewired: that is the caller's choice
    assert [user.name for user, _ in r.uses()] == ["neg", "Cast_r_round"]


@pytest.mark.parametrize("source", ["graph input", "initializer"])
def test_insert_after_producer_of_a_graph_input_or_initializer_goes_first(source):
    graph, x, _ = _relu_neg_graph()
    value = x if source == "graph input" else qir.make_initializer(graph, "c", np.ones(4, np.float32))
    cast = qir.make_cast(graph, value, FLOAT16, f"{value.name}_fp16")
    qir.insert_after_producer(graph, value, cast)
    assert _names(graph) == [cast.name, "relu", "neg"]


def test_insert_after_producer_into_an_empty_graph():
    x = onnx_ir.Value(name="x", type=onnx_ir.TensorType(FLOAT), shape=onnx_ir.Shape([2]))
    graph = onnx_ir.Graph([x], [], nodes=[], opset_imports={"": 21})
    cast = qir.make_cast(graph, x, FLOAT16, "x_fp16")
    qir.insert_after_producer(graph, x, cast)
    assert list(graph) == [cast]


def test_redirect_rewires_only_the_given_uses():
    graph, x, r = _relu_neg_graph()
    abs_node = onnx_ir.node("Abs", [r], name="abs")
    abs_node.outputs[0].name = "a"
    graph.append(abs_node)
    uses = [(user, index) for user, index in r.uses() if user.name == "neg"]
    cast = qir.make_cast(graph, r, FLOAT16, "r_fp16")
    qir.insert_after_producer(graph, r, cast)
    qir.redirect(uses, cast.outputs[0])
    neg = next(n for n in graph if n.name == "neg")
    assert neg.inputs[0] is cast.outputs[0]
    assert abs_node.inputs[0] is r and cast.inputs[0] is r
    assert [user.name for user, _ in cast.outputs[0].uses()] == ["neg"]


def test_replace_graph_output_keeps_the_signature():
    graph, _, r = _relu_neg_graph()
    uses = list(r.uses())
    cast = qir.make_cast(graph, r, FLOAT16, "r_fp16")
    qir.insert_after_producer(graph, r, cast)
    qir.replace_graph_output(graph, r, cast.outputs[0], "r_fp32")
    assert list(graph.outputs)[1] is cast.outputs[0]
    assert [v.name for v in graph.outputs] == ["y", "r"]
    assert r.name == "r_fp32" and not r.is_graph_output()
    assert list(r.uses()) == [*uses, (cast, 0)]  # its readers keep reading it
    assert _names(graph) == ["relu", "Cast_r_fp16", "neg"]
    # the model still checks and runs: the output r is the cast, in FP16
    model = onnx_ir.Model(graph, ir_version=10)
    proto = onnx_ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feed = {"x": np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)}
    y, r_out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    assert r_out.dtype == np.float16
    np.testing.assert_array_equal(r_out, np.maximum(feed["x"], 0).astype(np.float16))
    np.testing.assert_array_equal(y, -np.maximum(feed["x"], 0))


def test_replace_graph_output_listed_twice():
    graph, _, r = _relu_neg_graph()
    graph.outputs.append(r)
    cast = qir.make_cast(graph, r, FLOAT16, "r_fp16")
    qir.insert_after_producer(graph, r, cast)
    qir.replace_graph_output(graph, r, cast.outputs[0], "r_fp32")
    assert [v.name for v in graph.outputs] == ["y", "r", "r"]
    assert list(graph.outputs)[1:] == [cast.outputs[0], cast.outputs[0]]


def test_replace_graph_output_names_stay_unique():
    graph, _, r = _relu_neg_graph()
    qir.unique_name(graph, "r_fp32")  # taken already
    cast = qir.make_cast(graph, r, FLOAT16, "r_fp16")
    qir.replace_graph_output(graph, r, cast.outputs[0], "r_fp32")
    assert (r.name, cast.outputs[0].name) == ("r_fp32_1", "r")
