"""GPTQ- and AWQ-style rounding of block-wise INT4 weights, the statistics they read, and AWQ's folds.

Layer errors are ``||X W - X Ŵ||_F`` on the calibration tokens themselves (the quantity both
methods minimise); the margins asserted are below the ones measured (stated beside each) so that
another BLAS's rounding does not flip them.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx.blockwise import block_params, quantize_rows, quantize_rtn
from qonnx.calib.sources import ListSource, input_specs
from qonnx.calib.weight_statistics import InputStatistics, WeightInputStatistics
from qonnx.input_scaling import fold_input_scales, scale_inputs
from qonnx.pipeline import Context
from qonnx.weight_rounding import ScaledBlockQuantized, clip_search, layer_error, quantize, search_input_scales

from conftest import outputs, to_ir


def _statistics(x: np.ndarray) -> InputStatistics:
    stats = InputStatistics(x.shape[-1])
    stats.update(x)
    return stats


def _correlated_outliers(tokens=2048, k=128, n=64, seed=0):
    """Activations mixed across channels, four channels 20x the rest; small random weights."""
    rng = np.random.default_rng(seed)
    mix = np.eye(k) + 2 * rng.normal(size=(k, k)) / np.sqrt(k)
    x = rng.normal(size=(tokens, k)) @ mix
    x[:, rng.choice(k, 4, replace=False)] *= 20
    w = rng.normal(size=(k, n)) * 0.05
    return x.astype(np.float32), w.astype(np.float32)


def _error(x, w, q) -> float:
    scales = getattr(q, "input_scales", None)
    inputs = x if scales is None else x / scales
    return float(np.linalg.norm(x.astype(np.float64) @ w - inputs.astype(np.float64) @ q.dequantize()))


def _reference_gptq(w, hessian, block_size, symmetric):
    """GPTQ as the paper writes it, on ``W^T``, one column at a time, no lazy batches."""
    from qonnx.weight_rounding import _damped

    h, dead = _damped(hessian, 0.01)
    wt = w.astype(np.float64).T.copy()
    wt[:, dead] = 0
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    codes = np.zeros(w.shape, np.uint8)
    for i in range(w.shape[0]):
        if i % block_size == 0:
            s, z = block_params(wt[:, i : i + block_size].T, 4, symmetric)
        codes[i] = q = quantize_rows(wt[None, :, i], s, z, 4)[0]
        error = (wt[:, i] - (q.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s) / u[i, i]
        wt[:, i:] -= np.outer(error, u[i, i:])
    return codes


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_gptq_is_the_papers_algorithm_and_beats_rtn(symmetric):
    x, w = _correlated_outliers()
    stats = _statistics(x)
    q = quantize(w, algorithm="gptq", statistics=stats, block_size=32, symmetric=symmetric)
    # Lazy batches of rows and error feedback give the codes of the plain column-by-column loop.
    np.testing.assert_array_equal(q.codes, _reference_gptq(w, stats.hessian, 32, symmetric))
    rtn = _error(x, w, quantize_rtn(w, 4, 32, symmetric))
    # Measured: 117.0 vs RTN 143.6 (symmetric), 110.8 vs 132.8 (asymmetric): 18 % and 17 % lower.
    assert _error(x, w, q) < 0.9 * rtn


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_act_order_keeps_blocks_contiguous_and_beats_rtn(symmetric):
    x, w = _correlated_outliers()
    q = quantize(w, algorithm="gptq", statistics=_statistics(x), block_size=32, symmetric=symmetric, act_order=True)
    # Static groups: block b's range is that of the original rows b*32 .. b*32+31, natural order.
    for b in range(4):
        scales, zero_points = block_params(w[b * 32 : (b + 1) * 32], 4, symmetric)
        np.testing.assert_array_equal(q.scales[b], scales)
        np.testing.assert_array_equal(q.zero_points[b], zero_points)
    assert q.scales.shape == (4, 64) and q.block_size == 32
    rtn = _error(x, w, quantize_rtn(w, 4, 32, symmetric))
    plain = _error(x, w, quantize(w, algorithm="gptq", statistics=_statistics(x), symmetric=symmetric))
    # Measured: 71.0 vs RTN 143.6 (symmetric), 65.0 vs 132.8 (asymmetric): about half; and below plain GPTQ.
    assert _error(x, w, q) < 0.6 * rtn and _error(x, w, q) < plain


def test_gptq_with_dead_inputs_and_a_ragged_last_block():
    x, w = _correlated_outliers(k=80, n=16)
    x[:, [3, 41]] = 0  # never active: zero rows and columns of X^T X
    q = quantize(w, algorithm="gptq", statistics=_statistics(x), block_size=32, act_order=True)
    assert q.codes.shape == (80, 16) and q.scales.shape == (3, 16) and np.isfinite(q.dequantize()).all()
    assert _error(x, w, q) < _error(x, w, quantize_rtn(w, 4, 32, True))


def test_clip_search_never_loses_to_rtn_on_its_own_measure():
    x, w = _correlated_outliers()
    stats = _statistics(x)
    rtn = quantize_rtn(w, 4, 32, True)
    plain = clip_search(w, bits=4, block_size=32, symmetric=True)  # identity H: the weights' squared error
    assert layer_error(w, plain.dequantize(), None) <= layer_error(w, rtn.dequantize(), None)
    weighted = quantize(w, algorithm="rtn", clip=True, statistics=stats)
    # Measured: 88.6 vs RTN 143.6. The search is per block (the diagonal blocks of H): the full error
    # is not bound to fall, so the margin is loose.
    assert _error(x, w, weighted) < 0.8 * _error(x, w, rtn)


def _few_large_channels(tokens=2048, k=128, n=96, seed=1):
    """Independent activations, a few channels 30x larger in magnitude: AWQ's salient channels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, k)) * rng.uniform(0.5, 1.5, size=k)
    x[:, rng.choice(k, 3, replace=False)] *= 30
    w = rng.normal(size=(k, n)) * 0.05
    return x.astype(np.float32), w.astype(np.float32)


def test_awq_scales_beat_rtn_on_a_few_large_channels():
    x, w = _few_large_channels()
    stats = _statistics(x)
    q = quantize(w, algorithm="awq", statistics=stats, block_size=32)
    assert isinstance(q, ScaledBlockQuantized) and q.input_scales.shape == (128,)
    rtn = _error(x, w, quantize_rtn(w, 4, 32, True))
    scaled_only = _error(x, w, quantize(w, algorithm="awq", statistics=stats, block_size=32, clip=False))
    # Measured: AWQ 38.6 (alpha 0.35, with clip), 42.2 scaling alone, RTN 95.4: 60 % and 56 % lower.
    assert _error(x, w, q) < 0.8 * rtn and scaled_only < rtn
    search = search_input_scales([w], stats, block_size=32)
    assert search.alpha > 0 and search.error < search.rtn_error
    # The search's error is the layer's output error with RTN codes of diag(s) W, from H alone.
    direct = _error(x, w, quantize(w, algorithm="awq", statistics=stats, block_size=32, clip=False, input_scales=search.scales))
    np.testing.assert_allclose(direct**2, search.error, rtol=1e-3)  # float32 products of H and ΔW


def test_coarse_to_fine_search_chooses_as_the_full_grid():
    """Every other alpha, then the best's neighbours: the full grid's choice on these layers (whose
    error is unimodal in alpha), exactly, from fewer candidates."""
    x, w = _few_large_channels()
    rng = np.random.default_rng(7)
    stats = _statistics(x)
    for weights in ([w], [w, (rng.normal(size=w.shape) * 0.05).astype(np.float32)]):
        fast, full = search_input_scales(weights, stats), search_input_scales(weights, stats, exhaustive=True)
        assert (fast.alpha, fast.weighted, fast.error, fast.rtn_error) == (full.alpha, full.weighted, full.error, full.rtn_error)
        np.testing.assert_array_equal(fast.scales, full.scales)


def test_symmetric_range_keeps_the_sign_of_the_first_largest_value():
    """The symmetric scale is the signed value of largest magnitude over -2^(bits-1); of +a and -a
    in one block, the first (as argmax |x| picks), bit-exactly, zero blocks and NaN included."""
    rng = np.random.default_rng(3)
    block = np.round(rng.normal(size=(6, 32, 40)) * 2).astype(np.float32)  # many +-a ties
    block[0, :, 0] = 0
    block[1, :, 1] = -0.0
    block[2, 5, 2] = np.nan
    block[3, :, 3] = 0
    block[3, 4, 3], block[3, 9, 3] = -3, 3  # -3 first
    scales, zero_points = block_params(block, 4, True)
    rows = np.argmax(np.abs(block), axis=-2)
    expected = np.take_along_axis(block, rows[:, None, :], axis=-2)[:, 0, :] / np.float32(-8)
    np.testing.assert_array_equal(scales, expected)
    assert np.array_equal(np.signbit(scales), np.signbit(expected)) and scales[3, 3] == np.float32(3 / 8)
    assert (zero_points == 8).all()


def test_one_scale_for_layers_that_share_an_input():
    x, w = _few_large_channels()
    rng = np.random.default_rng(5)
    weights = [w, (rng.normal(size=w.shape) * 0.05).astype(np.float32)]
    stats = _statistics(x)
    group = search_input_scales(weights, stats)
    alone = [search_input_scales([v], stats) for v in weights]
    assert group.error <= sum(a.error for a in alone) * 1.5 and group.error < group.rtn_error
    np.testing.assert_allclose(group.rtn_error, sum(a.rtn_error for a in alone), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Statistics


def _mlp(k=64, hidden=96, layers=2, seed=0) -> onnx.ModelProto:
    """x [batch, seq, k] -> per layer: RMSNorm (decomposed, weight Mul) -> q/k/v MatMuls (shared input)
    summed -> gate/up MatMuls -> silu(gate) * up -> down MatMul; residual adds."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    h = "x"
    eps = init("eps", [1e-5])
    for i in range(layers):
        p = f"l{i}_"
        nodes += [
            helper.make_node("Mul", [h, h], [p + "sq"], name=p + "square"),
            helper.make_node("ReduceMean", [p + "sq"], [p + "ms"], name=p + "mean", keepdims=1, axes=[-1]),
            helper.make_node("Add", [p + "ms", eps], [p + "mse"], name=p + "add_eps"),
            helper.make_node("Sqrt", [p + "mse"], [p + "rms"], name=p + "sqrt"),
            helper.make_node("Div", [h, p + "rms"], [p + "normed"], name=p + "div"),
            helper.make_node("Mul", [p + "normed", init(p + "norm_w", rng.uniform(0.5, 2, k))], [p + "xn"], name=p + "norm"),
        ]
        for proj in "qkv":
            nodes.append(helper.make_node("MatMul", [p + "xn", init(p + proj + "_w", rng.normal(size=(k, k)) * 0.1)], [p + proj], name=p + proj + "_proj"))
        nodes += [
            helper.make_node("Add", [p + "q", p + "k"], [p + "qk"], name=p + "qk"),
            helper.make_node("Add", [p + "qk", p + "v"], [p + "qkv"], name=p + "qkv"),
            helper.make_node("Add", [h, p + "qkv"], [p + "h1"], name=p + "residual1"),
            helper.make_node("Mul", [p + "h1", init(p + "norm2_w", rng.uniform(0.5, 2, k))], [p + "xn2"], name=p + "norm2"),
            helper.make_node("MatMul", [p + "xn2", init(p + "gate_w", rng.normal(size=(k, hidden)) * 0.1)], [p + "gate"], name=p + "gate_proj"),
            helper.make_node("MatMul", [p + "xn2", init(p + "up_w", rng.normal(size=(k, hidden)) * 0.1)], [p + "up"], name=p + "up_proj"),
            helper.make_node("Sigmoid", [p + "gate"], [p + "sig"], name=p + "sigmoid"),
            helper.make_node("Mul", [p + "gate", p + "sig"], [p + "silu"], name=p + "silu"),
            helper.make_node("Mul", [p + "silu", p + "up"], [p + "act"], name=p + "act"),
            helper.make_node("MatMul", [p + "act", init(p + "down_w", rng.normal(size=(hidden, k)) * 0.1)], [p + "down"], name=p + "down_proj"),
            helper.make_node("Add", [p + "h1", p + "down"], [p + "h2"], name=p + "residual2"),
        ]
        h = p + "h2"
    nodes.append(helper.make_node("MatMul", [h, init("head_w", rng.normal(size=(k, 10)) * 0.1)], ["y"], name="head"))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(count=6, seq=(5, 9, 7), k=64, seed=0):
    rng = np.random.default_rng(seed)
    feeds = []
    for i in range(count):
        x = rng.normal(size=(1, seq[i % len(seq)], k)).astype(np.float32)
        x[..., :3] *= 10  # large channels
        feeds.append({"x": x})
    return feeds


def _source(model: ir.Model, feeds) -> ListSource:
    return ListSource(feeds, input_specs(model))


def test_statistics_in_several_bounded_runs_equal_one_run():
    proto = _mlp()
    model = to_ir(proto)
    feeds = _feeds()
    one = WeightInputStatistics(model, _source(model, feeds), segmented=False)
    split = WeightInputStatistics(model, _source(model, feeds), memory_budget=40_000, batch_size=1, segmented=False)
    assert one.tensor_of["l0_q_proj"] == one.tensor_of["l0_k_proj"] == one.tensor_of["l0_v_proj"] == "l0_xn"
    for name in one:
        assert one[name].count == 5 + 9 + 7 + 5 + 9 + 7
    assert one.groups_computed == 1
    for name in split:
        # Same onnxruntime outputs, same sums in the same order: equal to the last bit.
        np.testing.assert_array_equal(split[name].hessian, one[name].hessian)
        np.testing.assert_array_equal(split[name].mean_abs, one[name].mean_abs)
    assert split.groups_computed >= 4  # the budget holds about one K=96 tensor's sums at a time
    # q/k/v: one capture, one object; only the group last asked for is held.
    assert split["l1_q_proj"] is split["l1_v_proj"]
    assert len(split.held_tensors) < len(set(split.tensor_of.values())) and "l1_xn" in split.held_tensors


def test_segmented_statistics_equal_whole_model_ones_in_one_pass():
    """A segment at a time (a group per tensor here), asked in ``node_groups`` order: each segment
    runs once, and the statistics equal the whole-model run's. Tolerance: onnxruntime computing
    the same ops in smaller graphs, 1e-6 of the largest entry (measured: equal)."""
    model = to_ir(_mlp())
    feeds = _feeds()
    whole = WeightInputStatistics(model, _source(model, feeds), segmented=False)
    segmented = WeightInputStatistics(model, _source(model, feeds), memory_budget=1)
    groups = segmented.node_groups()
    assert [g[0] for g in groups] == ["l0_q_proj", "l0_gate_proj", "l0_down_proj", "l1_q_proj", "l1_gate_proj", "l1_down_proj", "head"]
    for group in groups:
        for name in group:
            expected = whole[name].hessian
            np.testing.assert_allclose(segmented[name].hessian, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
            assert segmented[name].count == whole[name].count
        assert len(segmented.held_tensors) <= 2  # this group's and the one before
    assert segmented.run.segments_run == len(groups) and segmented.run.restarts == 0
    assert segmented.groups_computed == len(groups)
    # Going back runs the data again from the graph's inputs, to the same sums.
    again = segmented["l0_down_proj"].hessian
    assert segmented.run.restarts == 1
    np.testing.assert_allclose(again, whole["l0_down_proj"].hessian, rtol=0, atol=1e-6 * np.abs(again).max())


def _with_output(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def test_statistics_match_numpy_and_merge_like_one_pass():
    """Tolerance: products of float32 values summed in float32 within a chunk of 4096 tokens,
    then in float64: 1e-6 of the largest entry (the float32 rounding of a few hundred terms)."""
    proto = _mlp(layers=1)
    model = to_ir(proto)
    feeds = _feeds(count=4)
    stats = WeightInputStatistics(model, _source(model, feeds), batch_size=1)
    xn = np.concatenate([outputs(_with_output(proto, "l0_xn"), f)[1].reshape(-1, 64) for f in feeds]).astype(np.float64)
    expected = xn.T @ xn
    np.testing.assert_allclose(stats["l0_q_proj"].hessian, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert not np.array_equal(stats["l0_q_proj"].hessian, np.zeros_like(expected))
    np.testing.assert_allclose(stats["l0_q_proj"].mean_abs, np.abs(xn).mean(axis=0), rtol=1e-7)
    halves = [WeightInputStatistics(model, _source(model, part))["l0_q_proj"] for part in (feeds[:2], feeds[2:])]
    halves[0].merge(halves[1])
    np.testing.assert_allclose(halves[0].hessian, stats["l0_q_proj"].hessian, rtol=1e-12, atol=1e-9)
    again = InputStatistics.from_dict(stats["l0_q_proj"].to_dict())
    np.testing.assert_array_equal(again.hessian, stats["l0_q_proj"].hessian)


def test_the_analysis_from_a_pipeline_context():
    proto = _mlp(layers=1)
    model = to_ir(proto)
    context = Context(calib=_source(model, _feeds(count=3)))
    stats = context.analysis("weight-input-statistics", model)
    assert stats.get("l0_down_proj").hessian.shape == (96, 96)
    assert stats.get("l0_sigmoid") is None and context.analysis("weight-input-statistics", model) is stats


# ---------------------------------------------------------------------------------------------
# Folds


def _matmul(model: ir.Model, name: str) -> ir.Node:
    return next(node for node in model.graph if node.name == name)


def _assert_same_function(before: onnx.ModelProto, after: ir.Model, feeds):
    """Tolerance: 1/s and s are rounded to float32 separately, a few float32 ulps per product;
    outputs of magnitude ~10 agree to 1e-5 relative."""
    for feed in feeds:
        expected, got = outputs(before, feed)[0], outputs(after, feed)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_fold_into_a_mul_by_a_constant_keeps_the_function():
    proto = _mlp(layers=1)
    model = to_ir(proto)
    nodes = [_matmul(model, f"l0_{p}_proj") for p in "qkv"]
    s = np.random.default_rng(0).uniform(0.2, 5, 64).astype(np.float32)
    fold = fold_input_scales(model, nodes, s)
    assert fold.kind == "mul-constant" and fold.target == "l0_norm"
    _assert_same_function(proto, model, _feeds(count=3))
    # A part of the group alone cannot take the fold: the Mul feeds the others too.
    assert not fold_input_scales(model, nodes[:2], s)


def test_fold_into_up_proj_columns_keeps_the_function():
    proto = _mlp(layers=1)
    model = to_ir(proto)
    s = np.random.default_rng(1).uniform(0.2, 5, 96).astype(np.float32)
    up_before = ir.from_proto(proto).graph.initializers["l0_up_w"].const_value.numpy()
    fold = fold_input_scales(model, [_matmul(model, "l0_down_proj")], s)
    assert fold.kind == "matmul-columns" and fold.target == "l0_up_proj"
    np.testing.assert_allclose(model.graph.initializers["l0_up_w"].const_value.numpy(), up_before / s, rtol=1e-6)
    _assert_same_function(proto, model, _feeds(count=3))


def test_fold_into_a_layer_normalization_keeps_the_function():
    rng = np.random.default_rng(3)
    k = 32
    inits = [numpy_helper.from_array(rng.uniform(0.5, 2, k).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(size=k).astype(np.float32), "beta"),
             numpy_helper.from_array((rng.normal(size=(k, 8)) * 0.1).astype(np.float32), "w")]
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["xn"], name="ln", axis=-1),
         helper.make_node("MatMul", ["xn", "w"], ["y"], name="proj")],
        "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = to_ir(proto)
    fold = fold_input_scales(model, [_matmul(model, "proj")], rng.uniform(0.2, 5, k).astype(np.float32))
    assert fold.kind == "normalization" and fold.target == "ln"
    _assert_same_function(proto, model, [{"x": rng.normal(size=(2, k)).astype(np.float32)} for _ in range(3)])


def test_no_exact_fold_is_refused_or_becomes_an_inserted_mul():
    proto = _mlp(layers=1)
    model = to_ir(proto)
    s = np.random.default_rng(2).uniform(0.5, 2, 64).astype(np.float32)
    head = _matmul(model, "head")  # reads a residual Add: no constant to take 1/s
    fold = fold_input_scales(model, [head], s)
    assert not fold and "Add" in fold.reason
    fold = fold_input_scales(model, [head], s, insert_mul=True)
    assert fold.kind == "inserted-mul"
    _assert_same_function(proto, model, _feeds(count=2))


def test_awq_over_a_model_folds_groups_and_keeps_the_function():
    proto = _mlp(layers=2)
    model = to_ir(proto)
    feeds = _feeds(count=4)
    stats = WeightInputStatistics(model, _source(model, feeds), memory_budget=60_000)
    result = scale_inputs(model, stats, block_size=32)
    kinds = {name: r.fold.kind for name, r in result.items()}
    assert kinds["head"] is None and "Add" in result["head"].fold.reason
    assert {kinds[f"l0_{p}_proj"] for p in "qkv"} <= {"mul-constant", None}
    scaled = [n for n, k in kinds.items() if k]
    assert scaled, kinds
    for name in scaled:
        r = result[name]
        assert r.error <= r.rtn_error and r.alpha > 0
    _assert_same_function(proto, model, feeds)
    # The statistics follow the fold: those of x / s, as a fresh capture on the folded model reads.
    fresh = WeightInputStatistics(model, _source(model, feeds))
    for name in scaled:
        np.testing.assert_allclose(stats[name].hessian, fresh[name].hessian, rtol=1e-4, atol=1e-6 * np.abs(fresh[name].hessian).max())


def test_a_group_is_searched_with_its_own_format():
    """A plan that gives one group 8 bits (as an 8-bit lm_head): its scales are searched against the
    8-bit grid, whose RTN error is far below the 4-bit one the other groups are searched with."""
    four, eight = to_ir(_mlp(layers=2)), to_ir(_mlp(layers=2))
    feeds = _feeds(count=4)
    name = "l1_down_proj"
    at_four = scale_inputs(four, WeightInputStatistics(four, _source(four, feeds)), block_size=32)
    at_eight = scale_inputs(eight, WeightInputStatistics(eight, _source(eight, feeds)), block_size=32, formats={name: (8, 32, True)})
    # 8 bits: 16x finer steps, so the error without scaling falls by about 256x; 20x leaves room
    assert at_eight[name].rtn_error < at_four[name].rtn_error / 20
    assert at_eight[name].error <= at_eight[name].rtn_error  # and the search still beats no scaling on that grid


def test_the_scale_search_measures_the_error_of_the_weight_rtn_stores():
    """The search's in-place measure equals ``tr(ΔW^T H ΔW)`` of ``diag(1/s) Q(diag(s) W)`` built
    from ``quantize_rtn``; tolerance: float32 products and row sums against float64, 1e-5."""
    from qonnx.weight_rounding import _ScaledError

    x, w = _correlated_outliers(k=96, n=40)
    stats = _statistics(x)
    s = np.random.default_rng(3).uniform(0.5, 2, 96).astype(np.float32)
    for symmetric in (True, False):
        measure = _ScaledError(w, stats.hessian.astype(np.float32), 4, 32, symmetric)
        effective = quantize_rtn(w * s[:, None], 4, 32, symmetric).dequantize().astype(np.float64) / s[:, None]
        expected = layer_error(w, effective, stats.hessian)
        assert measure(s) == pytest.approx(expected, rel=1e-5)
        assert measure(s) == measure(s)  # the buffers are reused, not accumulated


def test_clip_search_in_column_slices_equals_one_pass(monkeypatch):
    import qonnx.weight_rounding as rounding

    x, w = _correlated_outliers(k=64, n=50)
    hessian = _statistics(x).hessian
    whole = clip_search(w, bits=4, block_size=32, symmetric=False, hessian=hessian)
    monkeypatch.setattr(rounding, "_CLIP_SLICE_BYTES", 64 * 8 * 7)  # 7 columns a slice, the last one shorter
    sliced = clip_search(w, bits=4, block_size=32, symmetric=False, hessian=hessian)
    for a, b in ((whole.codes, sliced.codes), (whole.scales, sliced.scales), (whole.zero_points, sliced.zero_points)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("algorithm", ["awq", "gptq"])
def test_the_float_weights_go_once_their_codes_exist(algorithm):
    """AWQ puts a scaled copy of each weight in memory; once the layer is stored in blocks nothing
    may keep it (the pass's bookkeeping held the Values: a whole model's float weights by the end)."""
    from qonnx.pipeline import build, parse_pipeline, run_pipeline

    model = to_ir(_mlp(layers=2))
    weights = {node.name: node.inputs[1] for node in model.graph if node.op_type == "MatMul"}
    context = Context(calib=_source(model, _feeds(count=3)), precision="int4")
    passes = build(parse_pipeline(f"normalize,resolve-policy,quantize-weights(algorithm={algorithm}),remove-dead,finalize"), context)
    run_pipeline(model, passes, context)
    assert {n.op_type for n in model.graph if n.name in weights} == {"MatMulNBits"}
    for name, value in weights.items():
        assert value.name not in model.graph.initializers, name
        assert value.const_value is None, f"{name}: its float weight is still in memory"
