"""calib.sources: .npz files, folders of .npz, image folders, and the checks against the model's inputs."""

from __future__ import annotations

import re

import builtins
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from PIL import Image

from qonnx.calib.sources import (
    ImageFolderSource,
    ImagePreprocess,
    ListSource,
    NpzFolderSource,
    NpzSource,
    input_specs,
    open_source,
)
from qonnx.errors import UserError
from qonnx.models import tiny


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _identity_model(shapes: dict[str, list | None], elem_type: int = TensorProto.FLOAT) -> ir.Model:
    """One Identity per input: a model whose only purpose is its input signature."""
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in shapes]
    graph = helper.make_graph(
        nodes,
        "sig",
        [helper.make_tensor_value_info(name, elem_type, shape) for name, shape in shapes.items()],
        [helper.make_tensor_value_info(f"{name}_out", elem_type, shape) for name, shape in shapes.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    if all(shape is not None for shape in shapes.values()):  # the checker wants shapes on outputs
        onnx.checker.check_model(proto)
    return _ir(proto)


STATIC = [1, 3, 16, 16]  # conv_chain's input x


@pytest.fixture
def chain() -> ir.Model:
    return _ir(tiny.conv_chain())


def _samples(n: int, shape=STATIC, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


# --------------------------------------------------------------------------------------------
# .npz file


def test_npz_source_yields_one_feed_per_leading_index(tmp_path, chain):
    data = _samples(5)
    np.savez(tmp_path / "c.npz", x=data)
    source = open_source(tmp_path / "c.npz", chain)
    assert isinstance(source, NpzSource)
    assert len(source) == 5
    feeds = list(source)
    assert len(feeds) == 5 and len(list(source)) == 5  # re-iterable, not a one-shot generator
    for i, feed in enumerate(feeds):
        assert list(feed) == ["x"]
        assert feed["x"].shape == tuple(STATIC) and feed["x"].dtype == np.float32
        np.testing.assert_array_equal(feed["x"], data[i])
    np.testing.assert_array_equal(source[3]["x"], data[3])
    assert "5 samples" in source.description


def test_npz_source_with_two_inputs(tmp_path):
    model = _identity_model({"a": [1, 4], "b": [2]})
    a, b = _samples(3, [1, 4]), _samples(3, [2], seed=1)
    np.savez(tmp_path / "c.npz", b=b, a=a)
    source = open_source(tmp_path / "c.npz", model)
    assert len(source) == 3
    np.testing.assert_array_equal(source[2]["a"], a[2])
    np.testing.assert_array_equal(source[2]["b"], b[2])


def test_npz_source_dynamic_dims_accept_any_size(tmp_path):
    model = _ir(tiny.conv_chain(dynamic=True))
    np.savez(tmp_path / "c.npz", x=_samples(2, [2, 3, 8, 12]))
    source = open_source(tmp_path / "c.npz", model)
    assert source[0]["x"].shape == (2, 3, 8, 12)


def test_subset_and_list_source(tmp_path, chain):
    data = _samples(4)
    np.savez(tmp_path / "c.npz", x=data)
    source = open_source(tmp_path / "c.npz", chain)
    sub = source.subset([3, 1])
    assert len(sub) == 2
    np.testing.assert_array_equal(sub[0]["x"], data[3])
    np.testing.assert_array_equal(sub[1]["x"], data[1])

    listed = open_source([{"x": data[0]}, {"x": data[1]}], chain)
    assert isinstance(listed, ListSource) and len(listed) == 2
    np.testing.assert_array_equal(listed[1]["x"], data[1])


# --------------------------------------------------------------------------------------------
# folder of .npz


def test_npz_folder_one_feed_per_file_sorted_by_name(tmp_path, chain):
    data = _samples(3)
    for i, name in enumerate(["b.npz", "a.npz", "c.npz"]):
        np.savez(tmp_path / name, x=data[i])
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(tmp_path, chain)
    assert isinstance(source, NpzFolderSource)
    assert len(source) == 3
    np.testing.assert_array_equal(source[0]["x"], data[1])  # a.npz
    np.testing.assert_array_equal(source[1]["x"], data[0])  # b.npz
    np.testing.assert_array_equal(source[2]["x"], data[2])  # c.npz


def test_npz_folder_checks_every_file_on_read(tmp_path, chain):
    np.savez(tmp_path / "a.npz", x=_samples(1)[0])
    np.savez(tmp_path / "b.npz", x=_samples(1)[0].astype(np.float64))
    source = open_source(tmp_path, chain)  # the first file is fine
    with pytest.raises(UserError, match=r"b\.npz.*float64.*expects float32"):
        source[1]


def test_npz_folder_first_file_checked_on_open(tmp_path, chain):
    np.savez(tmp_path / "a.npz", y=_samples(1)[0])
    with pytest.raises(UserError, match=r"a\.npz.*expects inputs: x"):
        open_source(tmp_path, chain)


# --------------------------------------------------------------------------------------------
# image folder


def _png(path: Path, pixels: np.ndarray) -> np.ndarray:
    Image.fromarray(pixels).save(path)
    return pixels


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


MEAN = (0.1, 0.2, 0.3)
STD = (0.5, 0.25, 2.0)

# Tolerance of the image checks: the source computes in float32 (x/255, -mean, /std) and the
# expectation in float64. Values are at most |(1 - 0) / 0.25| = 4, where a float32 ulp is ~4.8e-7;
# three roundings stay below 2e-6, so 1e-5 absolute is safe and still far below one pixel step
# (1/255/2.0 ≈ 2e-3 in the least sensitive channel).
ATOL = 1e-5


def _expected(pixels: np.ndarray, layout: str = "NCHW", bgr: bool = False, mean=MEAN, std=STD) -> np.ndarray:
    x = pixels.astype(np.float64) / 255.0
    if bgr:
        x = x[..., ::-1]
    x = (x - np.array(mean)) / np.array(std)
    if layout == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    return x[None]


def test_image_folder_nchw(tmp_path):
    model = _identity_model({"img": [1, 3, 6, 5]})
    p0 = _png(tmp_path / "b.png", _rgb(6, 5, seed=1))
    p1 = _png(tmp_path / "a.png", _rgb(6, 5, seed=2))
    (tmp_path / "labels.txt").write_text("not an image")
    source = open_source(tmp_path, model, ImagePreprocess(mean=MEAN, std=STD))
    assert isinstance(source, ImageFolderSource)
    assert len(source) == 2
    a, b = source[0]["img"], source[1]["img"]  # sorted: a.png, b.png
    assert a.shape == (1, 3, 6, 5) and a.dtype == np.float32
    np.testing.assert_allclose(a, _expected(p1), rtol=0, atol=ATOL)
    np.testing.assert_allclose(b, _expected(p0), rtol=0, atol=ATOL)


def test_image_folder_nhwc(tmp_path):
    model = _identity_model({"img": [1, 6, 5, 3]})
    pixels = _png(tmp_path / "a.png", _rgb(6, 5, seed=3))
    source = open_source(tmp_path, model, ImagePreprocess(mean=MEAN, std=STD, layout="NHWC"))
    got = source[0]["img"]
    assert got.shape == (1, 6, 5, 3)
    np.testing.assert_allclose(got, _expected(pixels, layout="NHWC"), rtol=0, atol=ATOL)


def test_image_folder_bgr(tmp_path):
    # Convention: mean/std apply to the channels in the order they are fed (B, G, R with --bgr).
    model = _identity_model({"img": [1, 3, 6, 5]})
    pixels = _png(tmp_path / "a.png", _rgb(6, 5, seed=4))
    got = open_source(tmp_path, model, ImagePreprocess(mean=MEAN, std=STD, bgr=True))[0]["img"]
    np.testing.assert_allclose(got, _expected(pixels, bgr=True), rtol=0, atol=ATOL)
    # Channel 0 really is blue.
    np.testing.assert_allclose(got[0, 0], (pixels[..., 2] / 255.0 - MEAN[0]) / STD[0], rtol=0, atol=ATOL)


def test_image_folder_defaults_scale_to_unit_range(tmp_path):
    model = _identity_model({"img": [1, 3, 6, 5]})
    pixels = _png(tmp_path / "a.png", _rgb(6, 5, seed=5))
    got = open_source(tmp_path, model)[0]["img"]
    np.testing.assert_allclose(got, _expected(pixels, mean=(0, 0, 0), std=(1, 1, 1)), rtol=0, atol=ATOL)
    assert got.min() >= 0 and got.max() <= 1


def test_image_folder_resizes_to_size(tmp_path):
    # A single-colour image stays that colour under bilinear resizing, so the expected values are
    # exact whatever the resampling filter's details.
    model = _ir(tiny.conv_chain(dynamic=True))
    colour = np.array([200, 100, 50], np.uint8)
    _png(tmp_path / "a.png", np.broadcast_to(colour, (10, 7, 3)).copy())
    got = open_source(tmp_path, model, ImagePreprocess(size=(4, 3), mean=MEAN, std=STD))[0]["x"]
    assert got.shape == (1, 3, 4, 3)
    want = _expected(np.broadcast_to(colour, (4, 3, 3)).copy())
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_image_folder_resizes_to_static_model_size(tmp_path, chain):
    _png(tmp_path / "a.png", _rgb(30, 20, seed=6))
    source = open_source(tmp_path, chain)
    assert source[0]["x"].shape == tuple(STATIC)
    assert "16x16" in source.description


def test_image_folder_grayscale_and_rgba(tmp_path):
    model = _identity_model({"img": [1, 3, 4, 4]})
    gray = np.random.default_rng(7).integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "a.png")
    rgba = np.random.default_rng(8).integers(0, 256, (4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque: converting to RGB then keeps the colours unchanged
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "b.png")
    source = open_source(tmp_path, model)
    np.testing.assert_allclose(source[0]["img"], _expected(np.stack([gray] * 3, -1), mean=(0, 0, 0), std=(1, 1, 1)), atol=ATOL)
    np.testing.assert_allclose(source[1]["img"], _expected(rgba[..., :3], mean=(0, 0, 0), std=(1, 1, 1)), atol=ATOL)


def test_image_folder_float16_model(tmp_path):
    model = _identity_model({"img": [1, 3, 4, 4]}, TensorProto.FLOAT16)
    pixels = _png(tmp_path / "a.png", _rgb(4, 4, seed=9))
    got = open_source(tmp_path, model)[0]["img"]
    assert got.dtype == np.float16
    # float16 has an 11-bit significand: values in [0, 1] are within 2**-11 of the float64 value.
    np.testing.assert_allclose(got.astype(np.float64), _expected(pixels, mean=(0, 0, 0), std=(1, 1, 1)), rtol=0, atol=2**-11)


# --------------------------------------------------------------------------------------------
# errors


def test_wrong_input_names_list_the_expected_names(tmp_path, chain):
    np.savez(tmp_path / "c.npz", input=_samples(2))
    with pytest.raises(UserError, match=r"missing x; unexpected input \(the model expects inputs: x\)"):
        open_source(tmp_path / "c.npz", chain)


def test_missing_one_of_two_inputs(tmp_path):
    model = _identity_model({"a": [1, 4], "b": [2]})
    np.savez(tmp_path / "c.npz", a=_samples(2, [1, 4]))
    with pytest.raises(UserError, match=r"missing b.*expects inputs: a, b"):
        open_source(tmp_path / "c.npz", model)


def test_wrong_dtype(tmp_path, chain):
    np.savez(tmp_path / "c.npz", x=_samples(2, dtype=np.float64))
    with pytest.raises(UserError, match=r"'x' has dtype float64, the model expects float32"):
        open_source(tmp_path / "c.npz", chain)


def test_rows_layout_for_a_batch_axis_of_one(tmp_path, chain):
    # [N, 3, 16, 16] for a [1, 3, 16, 16] input: N samples, each a batch of one.
    rows = _samples(2, [3, 16, 16])
    np.savez(tmp_path / "c.npz", x=rows)
    source = open_source(tmp_path / "c.npz", chain)
    assert len(source) == 2 and source[1]["x"].shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(source[1]["x"][0], rows[1])


def test_token_ids_as_rows_or_stacked_give_the_same_samples(tmp_path):
    model = _identity_model({"ids": ["batch", "seq"]}, TensorProto.INT64)
    ids = np.arange(24, dtype=np.int64).reshape(4, 6)
    np.savez(tmp_path / "rows.npz", ids=ids)
    np.savez(tmp_path / "stacked.npz", ids=ids[:, None])
    rows, stacked = open_source(tmp_path / "rows.npz", model), open_source(tmp_path / "stacked.npz", model)
    assert len(rows) == len(stacked) == 4
    for i in range(4):
        np.testing.assert_array_equal(rows[i]["ids"], stacked[i]["ids"])
        assert rows[i]["ids"].shape == (1, 6)


def test_wrong_rank_names_the_file_shape_and_both_layouts(tmp_path, chain):
    np.savez(tmp_path / "c.npz", x=_samples(2, [16, 16]))
    with pytest.raises(UserError, match=re.escape(
        "array 'x' has shape [2, 16, 16]; the model's input 'x' is [1, 3, 16, 16], "
        "so 2 samples are [2, 1, 3, 16, 16] (stacked) or [2, 3, 16, 16] (one row per sample, batch 1)"
    )):
        open_source(tmp_path / "c.npz", chain)


def test_scalar_input_samples_are_0d_arrays(tmp_path):
    model = _identity_model({"rate": []})
    np.savez(tmp_path / "c.npz", rate=np.array([16000, 8000], np.float32))
    source = open_source(tmp_path / "c.npz", model)
    assert isinstance(source[1]["rate"], np.ndarray) and source[1]["rate"].shape == () and source[1]["rate"] == 8000


def test_string_input_samples_from_npz_text(tmp_path):
    """A .npz holds text as fixed-width unicode (object arrays would need pickle); a string input
    takes it, as the object arrays onnxruntime returns and Python feeds use."""
    model = _identity_model({"words": [2]}, TensorProto.STRING)
    np.savez(tmp_path / "c.npz", words=np.array([["monday", "tuesday"], ["a", "b"]]))
    source = open_source(tmp_path / "c.npz", model)
    assert len(source) == 2 and source[0]["words"].dtype == object and list(source[0]["words"]) == ["monday", "tuesday"]
    listed = ListSource([{"words": np.array(["x", "y"])}], input_specs(model))
    assert listed[0]["words"].dtype == object


def test_text_for_a_float_input_is_refused(tmp_path, chain):
    np.savez(tmp_path / "c.npz", x=np.full((2, *STATIC), "a"))
    with pytest.raises(UserError, match=r"'x' has dtype <U1, the model expects float32"):
        open_source(tmp_path / "c.npz", chain)


def test_static_dim_mismatch(tmp_path, chain):
    np.savez(tmp_path / "c.npz", x=_samples(2, [1, 3, 8, 16]))
    with pytest.raises(UserError, match=r"sample 0: input 'x' has shape \[1, 3, 8, 16\], the model expects \[1, 3, 16, 16\] \(axis 2\)"):
        open_source(tmp_path / "c.npz", chain)


def test_python_feed_static_dim_mismatch(chain):
    with pytest.raises(UserError, match=r"sample 1: .*the model expects \[1, 3, 16, 16\] \(axis 2\)"):
        open_source([{"x": _samples(1)[0]}, {"x": _samples(1, [1, 3, 8, 16])[0]}], chain)


def test_different_sample_counts(tmp_path):
    model = _identity_model({"a": [1, 4], "b": [2]})
    np.savez(tmp_path / "c.npz", a=_samples(3, [1, 4]), b=_samples(2, [2]))
    with pytest.raises(UserError, match="different numbers of samples"):
        open_source(tmp_path / "c.npz", model)


def test_empty_folder_has_no_samples(tmp_path, chain):
    with pytest.raises(UserError, match="no samples"):
        open_source(tmp_path, chain)


def test_empty_npz_arrays_have_no_samples(tmp_path, chain):
    np.savez(tmp_path / "c.npz", x=np.zeros((0, *STATIC), np.float32))
    with pytest.raises(UserError, match=r"no samples in .*c\.npz"):
        open_source(tmp_path / "c.npz", chain)


def test_npz_without_arrays(tmp_path, chain):
    np.savez(tmp_path / "c.npz")
    with pytest.raises(UserError, match="expects inputs: x"):
        open_source(tmp_path / "c.npz", chain)


class _Trap:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_npz_with_object_array_is_refused_without_unpickling(tmp_path, chain):
    trap = tmp_path / "unpickled"
    np.savez(tmp_path / "c.npz", x=np.array([_Trap(trap)], dtype=object))
    assert not trap.exists()
    with pytest.raises(UserError, match="pickle"):
        open_source(tmp_path / "c.npz", chain)
    assert not trap.exists(), "the pickle in the .npz was executed"


def test_npz_folder_with_object_array_is_refused(tmp_path, chain):
    trap = tmp_path / "unpickled"
    np.savez(tmp_path / "a.npz", x=np.array([_Trap(trap)], dtype=object))
    with pytest.raises(UserError, match="pickle"):
        open_source(tmp_path, chain)
    assert not trap.exists()


def test_junk_npz(tmp_path, chain):
    (tmp_path / "c.npz").write_bytes(b"hello, not numpy data")
    with pytest.raises(UserError, match=r"c\.npz"):
        open_source(tmp_path / "c.npz", chain)


def test_truncated_npz(tmp_path, chain):
    np.savez(tmp_path / "full.npz", x=_samples(4))
    content = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "c.npz").write_bytes(content[: len(content) // 2])
    with pytest.raises(UserError, match=r"c\.npz"):
        open_source(tmp_path / "c.npz", chain)


def test_missing_and_wrong_kind_of_data_path(tmp_path, chain):
    with pytest.raises(UserError, match="not found"):
        open_source(tmp_path / "nope.npz", chain)
    (tmp_path / "c.npy").write_bytes(b"")
    with pytest.raises(UserError, match=r"must be a \.npz file or a folder"):
        open_source(tmp_path / "c.npy", chain)


def test_image_folder_for_a_two_input_model(tmp_path):
    model = _identity_model({"a": [1, 3, 4, 4], "b": [1, 3, 4, 4]})
    _png(tmp_path / "a.png", _rgb(4, 4, seed=0))
    with pytest.raises(UserError, match=r"one input; this one has 2 \(a, b\)"):
        open_source(tmp_path, model)


def test_image_folder_for_a_rank_2_input(tmp_path):
    model = _identity_model({"v": [1, 16]})
    _png(tmp_path / "a.png", _rgb(4, 4, seed=0))
    with pytest.raises(UserError, match="rank-4"):
        open_source(tmp_path, model)


def test_image_folder_dynamic_height_width_needs_size(tmp_path):
    model = _ir(tiny.conv_chain(dynamic=True))
    _png(tmp_path / "a.png", _rgb(4, 4, seed=0))
    with pytest.raises(UserError, match=r"dynamic height/width.*--size"):
        open_source(tmp_path, model)


def test_image_with_wrong_channel_count_for_model(tmp_path):
    model = _identity_model({"img": [1, 1, 4, 4]})  # a one-channel model: images give 3 channels
    _png(tmp_path / "a.png", _rgb(4, 4, seed=0))
    with pytest.raises(UserError, match=r"axis 1"):
        open_source(tmp_path, model)


def test_undecodable_image(tmp_path):
    model = _identity_model({"img": [1, 3, 4, 4]})
    (tmp_path / "a.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(UserError, match="cannot decode image"):
        open_source(tmp_path, model)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"layout": "NCWH"}, "layout"), ({"mean": (0.5, 0.5)}, "three values"), ({"std": (1.0, 0.0, 1.0)}, "non-zero")],
)
def test_bad_preprocess(kwargs, match):
    with pytest.raises(UserError, match=match):
        ImagePreprocess(**kwargs)


def test_image_folder_for_shapeless_input_without_size(tmp_path):
    model = _identity_model({"img": None})
    _png(tmp_path / "a.png", _rgb(4, 4, seed=0))
    with pytest.raises(UserError, match="--size"):
        open_source(tmp_path, model)


def test_image_folder_for_shapeless_input_with_size(tmp_path):
    model = _identity_model({"img": None})
    _png(tmp_path / "a.png", _rgb(4, 4, seed=0))
    assert open_source(tmp_path, model, ImagePreprocess(size=(2, 3)))[0]["img"].shape == (1, 3, 2, 3)


def test_npz_scalar_for_shapeless_input(tmp_path):
    model = _identity_model({"v": None})
    np.savez(tmp_path / "c.npz", v=np.float32(1.0))
    with pytest.raises(UserError):
        open_source(tmp_path / "c.npz", model)


def test_input_specs(chain):
    (spec,) = input_specs(chain)
    assert (spec.name, spec.dtype, spec.shape, spec.rank) == ("x", np.dtype(np.float32), (1, 3, 16, 16), 4)
    (dyn,) = input_specs(_ir(tiny.conv_chain(dynamic=True)))
    assert dyn.shape == ("n", 3, "h", "w")
