"""Node groups found from the graph's structure, and their global scores: tiny graphs whose groups
are known by construction (a ResNet-style residual block, one transformer encoder layer)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from conftest import run_qonnx, run_text
from qonnx.executor import ProcessExecutor
from qonnx.models import tiny
from qonnx.node_groups import find_groups, units
from qonnx.trials import Trials


def _groups(proto: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    return {g.name: g.nodes for g in find_groups(ir.from_proto(proto))}


def test_a_conv_with_its_relu_and_a_residual_branch():
    found = _groups(tiny.residual_convs())
    assert found["chain:stem"] == ("stem", "stem_relu")
    assert found["chain:branch_conv1"] == ("branch_conv1", "branch_relu")
    # The fork is the stem's Relu (read by the branch and the Add): the branch runs from it to the Add.
    assert found["residual:join"] == ("branch_conv1", "branch_relu", "branch_conv2", "join")
    # branch_conv2's only reader is the residual Add, which reads the skip too: no chain; the head has no reader.
    assert set(found) == {"chain:stem", "chain:branch_conv1", "residual:join"}


def test_an_attention_block_between_its_projections():
    found = _groups(tiny.transformer_block())
    assert found["attention:softmax"] == (
        "q_heads", "q_transpose", "k_heads", "k_transpose", "v_heads", "v_transpose",
        "scores", "scale_scores", "softmax", "context", "context_transpose", "context_merge",
    )  # fmt: skip
    for n in "qkvo":
        assert found[f"chain:{n}_proj"] == (f"{n}_proj", f"{n}_bias")  # the projections stay outside the block
    # GELU as Div/Erf/Add/Mul/Mul: its Mul waits for the Erf branch and joins the chain with it.
    assert found["chain:ffn1"] == ("ffn1", "ffn1_bias", "gelu_div", "gelu_erf", "gelu_add", "gelu_mul", "gelu_half")
    # The first residual branch starts at the graph input x (read by Q, K, V and the Add).
    assert found["residual:residual1"][0] == "q_proj" and found["residual:residual1"][-1] == "residual1" and len(found["residual:residual1"]) == 21
    assert found["residual:residual2"] == ("ffn1", "ffn1_bias", "gelu_div", "gelu_erf", "gelu_add", "gelu_mul", "gelu_half", "ffn2", "ffn2_bias", "residual2")


def test_a_value_added_to_every_layer_is_no_residual_fork():
    """m is added to two layers' scores (an attention mask): the second Add's inputs meet at m,
    through the first Add, which reads m as well."""
    h = onnx.helper
    inits = [onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), n) for n in ("W1", "W2")]
    nodes = [
        h.make_node("MatMul", ["x", "W1"], ["a"], name="layer1"),
        h.make_node("Add", ["a", "m"], ["b"], name="mask1"),
        h.make_node("MatMul", ["b", "W2"], ["c"], name="layer2"),
        h.make_node("Add", ["c", "m"], ["y"], name="mask2"),
    ]
    info = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in ("x", "m", "y")]
    model = h.make_model(h.make_graph(nodes, "mask", info[:2], info[2:], inits), opset_imports=[h.make_opsetid("", 13)])
    assert not [g for g in find_groups(ir.from_proto(model)) if g.kind == "residual"]


def test_units_partition_the_candidates_attention_first():
    groups = find_groups(ir.from_proto(tiny.transformer_block()))
    candidates = ["q_proj", "q_bias", "scores", "softmax", "context", "o_proj", "residual1"]
    found = units(candidates, groups)
    assert found == [("attention:softmax", ["scores", "softmax", "context"]), ("chain:q_proj", ["q_proj", "q_bias"]), ("o_proj", ["o_proj"]), ("residual1", ["residual1"])]
    assert sorted(n for _, members in found for n in members) == sorted(candidates)


@pytest.fixture(scope="module")
def transformer_sensitivity():
    return run_text(tiny.transformer_block(), "normalize,resolve-policy,calibrate(adjacent=true),layer-sensitivity(top=2)", samples=4)


def test_a_group_score_is_a_full_model_evaluation_with_only_the_group_in_int8(transformer_sensitivity):
    model, _, context = transformer_sensitivity
    record = context.records["layer_sensitivity"]
    by_name = {g["name"]: g for g in record.groups}
    assert {"attention:softmax", "chain:ffn1", "residual:residual1", "residual:residual2"} <= set(by_name)
    measured = [g for g in record.groups if g["measured"]]
    scored_nodes = [e for e in record.nodes if e["global_db"] is not None]
    assert record.evaluations == len(scored_nodes) + len(measured)  # one evaluation per group of 2+ INT8 nodes
    attention = by_name["attention:softmax"]
    assert attention["measured"] and {"scores", "context"} <= set(attention["quantized"])
    # The same plan evaluated again from scratch (2-decimal rounding in the record): a real
    # full-model trial with exactly these nodes in INT8, not a sum or minimum of node scores.
    trials = Trials(model, context, [context.calib[i] for i in range(4)], "sqnr")
    assert trials.score(set(attention["quantized"])) == pytest.approx(attention["global_db"], abs=0.006)
    assert trials.evaluations == 1
    # Worst first; a group with one INT8 node takes that node's global score.
    values = [g["global_db"] for g in record.groups if g["global_db"] is not None]
    assert values == sorted(values)
    by_node = {e["node"]: e for e in record.nodes}
    for g in record.groups:
        if not g["measured"]:
            assert g["global_db"] == by_node[g["quantized"][0]]["global_db"]


def test_a_python_metric_scores_trials_in_the_caller_whichever_executor_ran_them(transformer_sensitivity):
    """A closure cannot be pickled: the workers return the trials' outputs and it scores them here."""
    model, _, context = transformer_sensitivity
    feeds = [context.calib[i] for i in range(4)]
    calls = []

    def worst_row_cosine(reference, test):
        calls.append(len(test))
        ref = np.concatenate([r["y"].reshape(-1, 16) for r in reference])
        got = np.concatenate([t["y"].reshape(-1, 16) for t in test])
        return float(np.min(np.sum(ref * got, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)))

    plans = [{"scores", "softmax", "context"}, {"ffn1"}, None]
    here = Trials(model, context, feeds, worst_row_cosine).scores(plans)
    with ProcessExecutor(2, startup_s=0) as pool:
        pooled = Trials(model, context, feeds, worst_row_cosine)
        there = pooled.scores(plans, pool)
    assert here == there and pooled.evaluations == 3  # the same values, to the bit
    assert calls == [4] * 6 and all(0 < v <= 1 for v in here) and not math.isclose(here[0], here[2])


def test_analyze_shows_the_groups_in_the_table_the_json_and_the_page(tmp_path, calib_npz):
    model = tmp_path / "m.onnx"
    onnx.save(tiny.residual_convs(), model)
    result = run_qonnx("analyze", model, "--calib", calib_npz, "--report", tmp_path / "s.json", "--html", tmp_path / "s.html")
    assert result.rc == 0, result.err
    table = result.out.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("group "))
    shown = {line.split()[0] for line in table[header + 1 : header + 4]}
    assert shown == {"chain:stem", "chain:branch_conv1", "residual:join"}
    groups = {g["name"]: g for g in json.loads((tmp_path / "s.json").read_text())["layer_sensitivity"]["groups"]}
    assert groups["residual:join"]["nodes"] == ["branch_conv1", "branch_relu", "branch_conv2", "join"]
    assert groups["residual:join"]["measured"] and groups["residual:join"]["global_db"] is not None
    page = (tmp_path / "s.html").read_text()
    assert "residual:join" in page and "Node groups" in page
