"""Block quantization and its packed layouts, against a numpy reference and onnxruntime's own quantizer.

The packed tensors must equal, byte for byte, what ``onnxruntime.quantization``'s
``MatMulNBitsQuantizer`` (RTN, ``DefaultWeightOnlyQuantConfig``) writes for the same weight: no
tolerance. The round trip is judged against the bound of round-to-nearest: every value decodes
within half a step (``scale / 2``) of itself, plus float32 rounding of the division, and has
the codes of a float64 reference (a wrong code is a whole step off).
"""

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from qonnx.blockwise import BLOCK_SIZES, quantize_rtn
from qonnx.nbits_packing import gather_block_quantized, matmul_nbits, pack_codes, signed_codes


def _reference_rtn(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """Dequantized weight, block by block, written out in the plainest numpy (float64 grid)."""
    out = np.empty_like(w, dtype=np.float64)
    half = 1 << (bits - 1)
    for start in range(0, w.shape[0], block_size):
        block = w[start : start + block_size].astype(np.float64)
        for j in range(w.shape[1]):
            col = block[:, j]
            if symmetric:
                extreme = col[np.argmax(np.abs(col))]
                scale, zp = extreme / -half, half
            else:
                lo, hi = min(col.min(), 0.0), max(col.max(), 0.0)
                scale = (hi - lo) / ((1 << bits) - 1)
                zp = np.clip(np.round(-lo / scale), 0, (1 << bits) - 1) if scale else 0
            q = np.clip(np.round(col / scale) + zp, 0, (1 << bits) - 1) if scale else np.full_like(col, zp)
            out[start : start + block_size, j] = (q - zp) * scale
    return out


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_round_trip_matches_numpy_reference(bits, symmetric, block_size):
    rng = np.random.default_rng(block_size + bits)
    k = 3 * block_size + block_size // 2  # a ragged last block
    w = rng.standard_normal((k, 5)).astype(np.float32)
    w[:block_size, 0] = 0.0  # an all-zero block decodes to zeros
    q = quantize_rtn(w, bits, block_size, symmetric)
    decoded = q.dequantize()
    assert decoded.shape == w.shape and decoded.dtype == np.float32
    assert not decoded[:block_size, 0].any()
    # Same codes as the reference: a different code is a whole step off, float32 rounding of
    # ``(q - z) * s`` only a few ulps of the value.
    step = np.repeat(np.abs(q.scales), block_size, axis=0)[:k]
    assert np.all(np.abs(decoded - _reference_rtn(w, bits, block_size, symmetric)) <= 0.1 * step + 1e-6 * np.abs(w))
    # Round to nearest: within half a step, except where the symmetric grid clips (its top code
    # is 2**(bits-1) - 1 steps, one short of the extreme's magnitude on the other side).
    error = np.abs(decoded - w)
    clipped = symmetric & (np.abs(w) > step * ((1 << (bits - 1)) - 1))
    assert np.all(error[~clipped] <= step[~clipped] * 0.5 * (1 + 1e-5))
    assert np.all(error <= step * (1 + 1e-5))


def test_pack_codes_low_nibble_first():
    assert pack_codes(np.array([[1, 2, 3]], np.uint8), 4).tolist() == [[0x21, 0x03]]
    assert pack_codes(np.array([7, 200], np.uint8), 8).tolist() == [7, 200]


def _ort_matmul_nbits(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> dict[str, np.ndarray]:
    k, n = w.shape
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, k])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    node = next(n for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in quantizer.model.model.graph.initializer}
    found = {"B": inits[node.input[1]], "scales": inits[node.input[2]]}
    if len(node.input) > 3 and node.input[3]:
        found["zero_points"] = inits[node.input[3]]
    attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
    assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (k, n, bits, block_size)
    return found


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("k,block_size", [(64, 16), (48, 16), (100, 32), (70, 64), (256, 128), (300, 256)])
def test_matmul_nbits_bit_exact_with_onnxruntime(bits, symmetric, k, block_size):
    """(48, 16): an odd count of blocks (packed zero points end in a half byte); 100, 70, 300: ragged K."""
    rng = np.random.default_rng(k * block_size)
    w = (rng.standard_normal((k, 9)) * rng.uniform(0.01, 3, size=9)).astype(np.float32)
    w[:, 3] = np.abs(w[:, 3])  # all-positive and all-negative columns: the range includes 0
    w[:, 4] = -np.abs(w[:, 4])
    ours = matmul_nbits(quantize_rtn(w, bits, block_size, symmetric))
    theirs = _ort_matmul_nbits(w, bits, block_size, symmetric)
    np.testing.assert_array_equal(ours.data, theirs["B"])
    assert ours.data.shape == theirs["B"].shape and ours.data.dtype == np.uint8
    np.testing.assert_array_equal(ours.scales.reshape(theirs["scales"].shape), theirs["scales"])
    if symmetric:
        assert ours.zero_points is None and "zero_points" not in theirs
    else:
        np.testing.assert_array_equal(ours.zero_points.reshape(theirs["zero_points"].shape), theirs["zero_points"])


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_gather_layout_is_matmul_layout_of_transpose(symmetric):
    """The table E [V, H] quantized along H packs row by row like MatMulNBits's B of E^T (H a
    multiple of the block): the bytes are the same, only the shape differs."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((11, 64)).astype(np.float32)
    q = quantize_rtn(table.T, 4, 32, symmetric)
    gathered, nbits = gather_block_quantized(q), matmul_nbits(q)
    assert gathered.data.shape == (11, 32)
    np.testing.assert_array_equal(gathered.data.reshape(nbits.data.shape), nbits.data)
    np.testing.assert_array_equal(gathered.scales, nbits.scales)


def test_signed_codes():
    q = quantize_rtn(np.array([[-2.0], [1.0], [0.0]], np.float32), 4, 16, True)
    assert signed_codes(q).ravel().tolist() == [-8, 4, 0]
