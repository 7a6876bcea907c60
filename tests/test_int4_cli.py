"""``qonnx quantize --precision int4`` end to end on a tiny decoder-like model, and the config's refusals.

The model: token ids → embedding Gather → two MatMuls (a Relu between) → a tied lm_head
``MatMul(h, Transpose(E))``, with tables big enough (K = 64) for the 32-value blocks. The output
must load in onnxruntime, be smaller, and keep the float model's logits within the error of 4-bit
weights: on these random weights a logit cosine above 0.98 (4-bit RTN gives ~0.995; a wrong
packing gives ~0).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from qonnx.config import ConfigError, QuantizeConfig, WeightOnlyConfig, recipe_from_dict, to_toml

from conftest import in_process

H, V, F = 64, 300, 128


def _decoder(path, seed=0):
    rng = np.random.default_rng(seed)
    init = {
        "E": rng.standard_normal((V, H)).astype(np.float32),
        "W1": (rng.standard_normal((H, F)) / 8).astype(np.float32),
        "W2": (rng.standard_normal((F, H)) / 11).astype(np.float32),
    }
    nodes = [
        oh.make_node("Gather", ["E", "ids"], ["h0"], name="embed"),
        oh.make_node("MatMul", ["h0", "W1"], ["h1"], name="up"),
        oh.make_node("Relu", ["h1"], ["h2"], name="act"),
        oh.make_node("MatMul", ["h2", "W2"], ["h3"], name="down"),
        oh.make_node("Transpose", ["E"], ["Et"], perm=[1, 0], name="tie"),
        oh.make_node("MatMul", ["h3", "Et"], ["logits"], name="lm_head"),
    ]
    graph = oh.make_graph(
        nodes,
        "decoder",
        [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 16])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 16, V])],
        [onnx.numpy_helper.from_array(a, n) for n, a in init.items()],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    return path


def _logits(path, ids):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def cli(capsys):
    return in_process(capsys)


@pytest.mark.parametrize("fmt,ops", [("matmulnbits", {"com.microsoft::MatMulNBits": 3, "com.microsoft::GatherBlockQuantized": 1}), ("qdq", {"DequantizeLinear": 4, "MatMul": 3, "Gather": 1})])
def test_cli_end_to_end(tmp_path, cli, fmt, ops):
    model = _decoder(tmp_path / "decoder.onnx")
    out, report = tmp_path / "decoder.int4.onnx", tmp_path / "report.json"
    result = cli("quantize", model, "-o", out, "--precision", "int4", "--weight-format", fmt, "--report", report)
    assert result.rc == 0, result.err
    found = json.loads(report.read_text())
    assert found["precision"] == "int4"
    weight_only = found["weight_only"]
    assert weight_only["format"] == fmt and weight_only["tied"] == ["lm_head"]
    assert weight_only["bytes_before"] == (V * H + H * F + F * H) * 4
    # 4 bits + a float scale per 32 values is 0.14 of FP32; qdq stores the tied table twice (its
    # Gather and its lm_head), matmulnbits once (with a second copy of its scales).
    assert weight_only["bytes_after"] < weight_only["bytes_before"] * (0.2 if fmt == "matmulnbits" else 0.25)
    assert found["size_ratio"] < 0.25
    assert {name: entry["format"] for name, entry in found["nodes"].items() if entry["format"] != "float"} == dict.fromkeys(["embed", "up", "down", "lm_head"], "weight-only")
    counted = {}
    for node in onnx.load(str(out)).graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        counted[key] = counted.get(key, 0) + 1
    assert {k: counted.get(k) for k in ops} == ops
    ids = np.random.default_rng(1).integers(0, V, (1, 16))
    assert _cosine(_logits(out, ids), _logits(model, ids)) > 0.98


def test_cli_policy_plan_replays_with_an_8_bit_lm_head(tmp_path, cli):
    """A plan JSON says per node int4 / 8-bit / float; edited, it is replayed with --policy."""
    model = _decoder(tmp_path / "decoder.onnx")
    first = tmp_path / "a.onnx"
    assert cli("quantize", model, "-o", first, "--precision", "int4", "--exclude", "down").rc == 0
    plan = json.loads(next(p.value for p in onnx.load(str(first)).metadata_props if p.key == "qonnx.plan"))
    assert plan["nodes"]["down"] == "float" and plan["reasons"]["down"] == "excluded by the config"
    plan["specs"]["weight-only#8"] = {"format": "weight-only", "weight_bits": 8, "block_size": 32, "symmetric_weights": True}
    plan["nodes"]["lm_head"] = "weight-only#8"
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    second, report = tmp_path / "b.onnx", tmp_path / "b.json"
    assert cli("quantize", model, "-o", second, "--precision", "int4", "--policy", tmp_path / "plan.json", "--report", report).rc == 0
    assert json.loads(report.read_text())["weight_only"]["bits"] == {"4": 2, "8": 1}
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in onnx.load(str(second)).graph.node if n.op_type == "MatMulNBits"}
    assert bits == {"up": 4, "lm_head": 8}


def test_cli_flags_reach_the_model(tmp_path, cli):
    model = _decoder(tmp_path / "decoder.onnx")
    out = tmp_path / "q.onnx"
    args = ["--block-size", "64", "--asymmetric", "--accuracy-level", "4", "--embedding-bits", "8"]
    assert cli("quantize", model, "-o", out, "--precision", "int4", *args).rc == 0
    nodes = {n.name: n for n in onnx.load(str(out)).graph.node}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["up"].attribute}
    assert (attrs["block_size"], attrs["accuracy_level"], len(nodes["up"].input)) == (64, 4, 4)  # a zero-point input
    assert {a.name: onnx.helper.get_attribute_value(a) for a in nodes["embed"].attribute}["bits"] == 8
    recipe = cli("quantize", model, "-o", out, "--precision", "int4", *args, "--print-recipe")
    assert "[weight_only]\nbits = 4\nembedding_bits = 8\nblock_size = 64\nsymmetric = false\nformat = \"matmulnbits\"\naccuracy_level = 4" in recipe.out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--block-size", "48"], "--block-size: 48 is not one of 16, 32, 64, 128, 256"),
        (["--block-size", "512"], "--block-size: 512 is not one of 16, 32, 64, 128, 256"),
        (["--weight-bits", "3"], "--weight-bits: 3 is not one of 4, 8"),
        (["--weight-format", "gguf"], "--weight-format: 'gguf' is not one of matmulnbits, qdq"),
        (["--weight-format", "qdq", "--accuracy-level", "4"], "--accuracy-level: applies to format matmulnbits"),
        (["--accuracy-level", "7"], "--accuracy-level: must be 0 to 4, not 7"),
        (["--algorithm", "gptq"], "--algorithm gptq rounds weights from the activations of calibration data: give --calib DATA"),
        (["--mode", "dynamic"], "--mode: dynamic applies to precision int8"),
        (["--target", "tensorrt"], "--target: tensorrt does not take precision int4"),
    ],
)
def test_cli_refusals(tmp_path, cli, args, message):
    model = _decoder(tmp_path / "decoder.onnx")
    result = cli("quantize", model, "-o", tmp_path / "q.onnx", "--precision", "int4", *args)
    assert result.rc == 2 and message in result.err, result.err
    assert not (tmp_path / "q.onnx").exists()


def test_weight_only_options_need_int4(tmp_path, cli):
    model = _decoder(tmp_path / "decoder.onnx")
    result = cli("quantize", model, "-o", tmp_path / "q.onnx", "--block-size", "64", "--mode", "dynamic")
    assert result.rc == 2 and "weight_only: its options apply to precision int4, not int8" in result.err
    with pytest.raises(ConfigError, match="weight_only"):
        QuantizeConfig(precision="fp16", weight_only=WeightOnlyConfig(format="qdq"))


def test_recipe_round_trip():
    recipe = recipe_from_dict({"precision": "int4", "weight_only": {"block_size": 128, "format": "qdq", "embedding_bits": 8}})
    assert recipe.config.weight_only == WeightOnlyConfig(block_size=128, format="qdq", embedding_bits=8)
    import tomllib

    assert recipe_from_dict(tomllib.loads(to_toml(recipe))) == recipe
    assert "[weight_only]" not in to_toml(recipe_from_dict({"precision": "int8"}))


@pytest.mark.parametrize("with_data,algorithm", [(False, "rtn"), (True, "awq")])
def test_rounding_defaults_to_awq_with_calibration_data_and_rtn_without(tmp_path, cli, with_data, algorithm):
    model = _decoder(tmp_path / "decoder.onnx")
    np.savez(tmp_path / "ids.npz", ids=np.random.default_rng(2).integers(0, V, (4, 16)))
    data = ["--calib", tmp_path / "ids.npz"] if with_data else []
    result = cli("quantize", model, "-o", tmp_path / "q.onnx", "--precision", "int4", "--report", tmp_path / "r.json", *data)
    assert result.rc == 0, result.err
    assert json.loads((tmp_path / "r.json").read_text())["weight_only"]["algorithm"] == algorithm
