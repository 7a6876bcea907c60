"""The typed config (qonnx.config): its checks, the policy it makes, recipe files and their round trip.

Real onnxruntime sessions on tiny models, no mocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import qonnx
from qonnx.api import quantize
from qonnx.config import CalibrationConfig, ConfigError, EvaluationConfig, QuantizeConfig, recipe_from_dict
from qonnx.errors import UserError
from qonnx.models import tiny
from qonnx.policy import MixedPrecisionPolicy, QuantSpec, Rule


RECIPES = Path(__file__).resolve().parent.parent / "recipes"




# --------------------------------------------------------------------------------------------
# Checks: one line naming the field


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: QuantizeConfig(precision="fp4"), "precision: 'fp4' is not one of int8, int4, fp8, fp16, bf16"),
        (lambda: QuantizeConfig(mode="online"), "mode: 'online' is not one of static, dynamic"),
        (lambda: QuantizeConfig(target="npu"), "target: 'npu' is not one of cpu, tensorrt, cuda"),
        (lambda: QuantizeConfig(precision="fp16", target="cpu"), "target: cpu does not take precision fp16 (it takes: int8, int4)"),
        (lambda: QuantizeConfig(io_types="fp16"), "io_types: fp16 applies to precision fp16 or bf16"),
        (lambda: QuantizeConfig(precision="bf16", io_types="fp16"), "io_types: fp16 does not go with precision bf16"),
        (lambda: QuantizeConfig(samples=0), "samples: must be a positive number"),
        (lambda: QuantizeConfig(reduce_range="yes"), "reduce_range: must be true or false, not 'yes'"),
        (lambda: QuantizeConfig(nodes_to_exclude="conv1"), "nodes_to_exclude: must be a list of strings, not 'conv1'"),
        (lambda: QuantizeConfig(nodes_to_exclude=("conv[",)), "nodes_to_exclude: 'conv[' is not a regular expression"),
        (lambda: QuantizeConfig(op_types_to_quantize=("Conv", 3)), "op_types_to_quantize: must be a list of non-empty strings; 3 is not one"),
        (lambda: CalibrationConfig(method="kl"), "[calibration] method: 'kl' is not one of minmax, moving-minmax, percentile, entropy, mse"),
        (lambda: CalibrationConfig(batch_size=0), "[calibration] batch_size: must be a positive number, not 0"),
        (lambda: CalibrationConfig(percentile="high"), "[calibration] percentile: must be a number, not 'high'"),
        (lambda: EvaluationConfig(sensitivity=-1), "[evaluation] sensitivity: must be 0 or a positive number of samples, not -1"),
        (lambda: EvaluationConfig(latency=1), "[evaluation] latency: must be true or false, not 1"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field(make, message):
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_the_config_is_frozen_and_canonical(tmp_path):
    config = QuantizeConfig(nodes_to_exclude=["a"], calibration=CalibrationConfig(ranges=tmp_path / "r.json"))
    assert config.nodes_to_exclude == ("a",) and config.calibration.ranges == str(tmp_path / "r.json")
    with pytest.raises(AttributeError):
        config.precision = "fp16"
    assert QuantizeConfig().effective_target == "cpu" and QuantizeConfig(precision="fp16").effective_target == "cuda"


def test_the_keyword_form_builds_the_same_config():
    built = QuantizeConfig.from_keywords(precision="int8", method="entropy", calib_memory="1GiB", latency=True, dump_after=["verify"])
    assert built == QuantizeConfig(calibration=CalibrationConfig(method="entropy", memory="1GiB"), evaluation=EvaluationConfig(latency=True), dump_after=("verify",))
    with pytest.raises(TypeError, match="unexpected keyword argument 'precison'"):
        QuantizeConfig.from_keywords(precison="int8")


def test_config_and_keywords_together_are_refused(tmp_path):
    with pytest.raises(TypeError, match="either config or keyword options"):
        quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", config=QuantizeConfig(), precision="fp16")


def test_the_package_exports_the_config():
    assert qonnx.QuantizeConfig is QuantizeConfig and qonnx.CalibrationConfig is CalibrationConfig
    assert qonnx.EvaluationConfig is EvaluationConfig and qonnx.QuantizeResult.__name__ == "QuantizeResult"


# --------------------------------------------------------------------------------------------
# nodes_to_exclude and op_types_to_quantize, through the policy


def _model(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(tiny.conv_chain(), str(path))  # conv0 relu0 conv1 relu1 conv2 relu2 residual(Add)
    return path


def _feeds(n: int = 8):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _dq_fed(path: Path) -> dict[str, bool]:
    """For every Conv: whether its weight and bias come out of DequantizeLinear nodes (INT8) rather
    than float initializers. (Its data input may still carry a neighbour's Q/DQ: the Conv before it
    quantizes its output for the residual Add, the Conv after it its input.)"""
    graph = onnx.load(str(path)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    fed = {}
    for node in graph.node:
        if node.op_type == "Conv":
            dq = [producers.get(name) == "DequantizeLinear" for name in node.input[1:]]
            assert all(dq) or all(name in floats for name in node.input[1:]), node
            fed[node.name] = all(dq)
    return fed


def test_an_excluded_node_has_no_qdq_and_its_neighbours_do(tmp_path):
    config = QuantizeConfig(nodes_to_exclude=("conv1",))
    result = qonnx.quantize(_model(tmp_path), tmp_path / "q.onnx", config=config, calib=_feeds())
    assert _dq_fed(tmp_path / "q.onnx") == {"conv0": True, "conv1": False, "conv2": True}
    nodes = result.report["nodes"]
    assert nodes["conv1"] == {"op_type": "Conv", "format": "float", "reason": "excluded by the config"}
    assert nodes["conv0"]["format"] == nodes["conv2"]["format"] == "int8"
    assert result.report["config"]["nodes_to_exclude"] == ["conv1"]
    assert "fidelity" in result.report


def test_a_regex_excludes_every_node_it_matches_in_full(tmp_path):
    result = qonnx.quantize(_model(tmp_path), tmp_path / "q.onnx", config=QuantizeConfig(nodes_to_exclude=("conv[12]",)), calib=_feeds())
    assert _dq_fed(tmp_path / "q.onnx") == {"conv0": True, "conv1": False, "conv2": False}
    # "conv" alone matches no name in full: a pattern that matches nothing is an error, not a no-op
    with pytest.raises(UserError, match="nodes_to_exclude: 'conv' matches no node"):
        qonnx.quantize(_model(tmp_path), tmp_path / "q2.onnx", config=QuantizeConfig(nodes_to_exclude=("conv",)), calib=_feeds())
    assert not (tmp_path / "q2.onnx").exists()
    assert result.report["nodes"]["conv2"]["reason"] == "excluded by the config"


def test_op_types_not_listed_stay_float(tmp_path):
    result = qonnx.quantize(_model(tmp_path), tmp_path / "q.onnx", config=QuantizeConfig(op_types_to_quantize=("Conv",)), calib=_feeds())
    nodes = result.report["nodes"]
    assert nodes["residual"] == {"op_type": "Add", "format": "float", "reason": "op type Add not in op_types_to_quantize"}
    assert {nodes[f"conv{i}"]["format"] for i in range(3)} == {"int8"}
    everything = qonnx.quantize(_model(tmp_path), tmp_path / "all.onnx", calib=_feeds())
    assert everything.report["nodes"]["residual"]["format"] == "int8"


def test_exclusions_win_over_a_policy_object(tmp_path):
    int8 = QuantSpec("int8")
    policy = MixedPrecisionPolicy(rules=[Rule(int8, op_type="Conv"), Rule(int8, name="conv1")])
    result = qonnx.quantize(_model(tmp_path), tmp_path / "q.onnx", config=QuantizeConfig(policy=policy, nodes_to_exclude=("conv1",)), calib=_feeds())
    assert _dq_fed(tmp_path / "q.onnx") == {"conv0": True, "conv1": False, "conv2": True}
    assert result.report["config"]["policy"]["rules"][0] == {"op_type": "Conv", "spec": int8.to_dict()}


def test_fp16_keeps_excluded_nodes_fp32(tmp_path):
    result = qonnx.quantize(_model(tmp_path), tmp_path / "h.onnx", config=QuantizeConfig(precision="fp16", nodes_to_exclude=("conv1",)))
    assert result.report["nodes"]["conv1"]["format"] == "float"
    assert result.report["nodes"]["conv0"]["format"] == "fp16"


# --------------------------------------------------------------------------------------------
# Recipes


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_recipe_builds_the_config_and_flags_override_it(inproc, tmp_path):
    model = _model(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.stack([f["x"] for f in _feeds()]))
    recipe = _write(tmp_path / "r.toml", 'nodes_to_exclude = ["conv1"]\n[calibration]\nmethod = "minmax"\n[data]\ncalib = "nowhere.npz"\n')
    result = inproc("quantize", model, "-o", tmp_path / "q.onnx", "--recipe", recipe, "--calib", tmp_path / "calib.npz", "--method", "entropy", "--report", tmp_path / "r.json", "-q")
    assert result.rc == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["calibration"]["method"] == "entropy" and report["config"]["calibration"]["method"] == "entropy"
    assert report["nodes"]["conv1"]["format"] == "float"


def test_the_printed_recipe_replays_to_the_same_bytes(inproc, tmp_path):
    model = _model(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.stack([f["x"] for f in _feeds()]))
    flags = ["--calib", tmp_path / "calib.npz", "--method", "percentile", "--percentile", "99.9", "--exclude", "conv2", "--op-types", "Conv,Add", "--no-reduce-range", "--samples", "5"]
    printed = inproc("quantize", model, "-o", tmp_path / "a.onnx", *flags, "--print-recipe")
    assert printed.rc == 0 and not (tmp_path / "a.onnx").exists(), printed.err
    assert 'nodes_to_exclude = ["conv2"]' in printed.out and 'method = "percentile"' in printed.out
    recipe = _write(tmp_path / "replay.toml", printed.out)
    assert inproc("quantize", model, "-o", tmp_path / "a.onnx", *flags, "--report", tmp_path / "a.json", "-q").rc == 0
    assert inproc("quantize", model, "-o", tmp_path / "b.onnx", "--recipe", recipe, "--report", tmp_path / "b.json", "-q").rc == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["config"] == b["config"]
    # and the recipe printed from the recipe is the recipe
    again = inproc("quantize", model, "-o", tmp_path / "c.onnx", "--recipe", recipe, "--print-recipe")
    assert again.out == printed.out


@pytest.mark.parametrize(
    "text, message",
    [
        ('precison = "int8"\n', "bad.toml: precison: unknown key"),
        ('[calibration]\nmethod = "foo"\n', "bad.toml: [calibration] method: 'foo' is not one of minmax, moving-minmax, percentile, entropy, mse"),
        ("[calibration]\nbins = 3\n", "bad.toml: [calibration] bins: unknown key"),
        ('[evaluation]\nlatency = "yes"\n', "bad.toml: [evaluation] latency: must be true or false, not 'yes'"),
        ("samples = 2.5\n", "bad.toml: samples: must be an integer, not 2.5"),
        ('nodes_to_exclude = "conv1"\n', "bad.toml: nodes_to_exclude: must be a list of strings"),
        ("[data]\nsize = [320]\n", "bad.toml: [data] size: must be [height, width]"),
        ('calibration = "mse"\n', "bad.toml: calibration: must be a table"),
        ("precision = \n", "bad.toml: not a TOML recipe"),
    ],
)
def test_a_bad_recipe_exits_2_naming_the_key_and_the_file(inproc, tmp_path, text, message):
    model = _model(tmp_path)
    result = inproc("quantize", model, "-o", tmp_path / "q.onnx", "--recipe", _write(tmp_path / "bad.toml", text), "--calib", "random")
    assert result.rc == 2, result.err
    assert len(result.error_lines) == 1 and message in result.error_lines[0], result.err
    assert not (tmp_path / "q.onnx").exists()


def test_a_missing_recipe_is_a_user_error(inproc, tmp_path):
    result = inproc("quantize", _model(tmp_path), "-o", tmp_path / "q.onnx", "--recipe", tmp_path / "none.toml")
    assert result.rc == 2 and "recipe not found" in result.error_lines[0]


def test_a_bad_flag_over_a_recipe_names_the_flag(inproc, tmp_path):
    recipe = _write(tmp_path / "r.toml", 'precision = "fp16"\n')
    result = inproc("quantize", _model(tmp_path), "-o", tmp_path / "q.onnx", "--recipe", recipe, "--target", "cpu")
    assert result.rc == 2 and "--target: cpu does not take precision fp16" in result.error_lines[0], result.err


def test_recipe_from_dict_rejects_a_policy_that_is_no_policy():
    with pytest.raises(ConfigError, match=r"r.toml: policy: not a usable policy"):
        recipe_from_dict({"policy": {"rules": [{"spec": {"format": "int9"}, "op_type": "Conv"}]}}, "r.toml")


# --------------------------------------------------------------------------------------------
# The shipped recipes, end to end on tiny models (data paths overridden by flags)


def test_recipe_cnn_cpu(inproc, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        mode = ["RGB", "L", "RGBA"][i % 3]  # greyscale and alpha images are read too
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (24, 20, channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode).save(folder / f"{i}.png")
    args = ["quantize", _model(tmp_path), "-o", tmp_path / "q.onnx", "--recipe", RECIPES / "cnn-cpu.toml", "--calib", folder, "--size", "16x16"]
    result = inproc(*args, "--report", tmp_path / "r.json", "-q")
    assert result.rc == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["precision"] == "int8" and report["target"] == "cpu" and report["calibration"]["method"] == "mse"
    assert report["fidelity"]["samples"] == 1 and "photos" in report["fidelity"]["data"]


def test_recipe_transformer_dynamic(inproc, tmp_path):
    model = tmp_path / "matmul.onnx"
    proto = tiny.matmul_model()
    onnx.save(proto, str(model))
    feed = tiny.random_feed(proto)
    np.savez(tmp_path / "eval.npz", **{k: np.stack([v, v]) for k, v in feed.items()})
    result = inproc("quantize", model, "-o", tmp_path / "q.onnx", "--recipe", RECIPES / "transformer-dynamic.toml", "--eval", tmp_path / "eval.npz", "--json")
    assert result.rc == 0, result.err
    report = json.loads(result.out)
    assert report["mode"] == "dynamic" and report["config"]["reduce_range"] is False
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "fidelity" in report


def test_recipe_fp16_cuda(inproc, tmp_path):
    result = inproc("quantize", _model(tmp_path), "-o", tmp_path / "h.onnx", "--recipe", RECIPES / "fp16-cuda.toml")
    assert result.rc == 0, result.err
    assert "fidelity   not measured (no data)" in result.out
    types = {init.data_type for init in onnx.load(str(tmp_path / "h.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
