"""A model run a segment at a time (``qonnx.calib.segments``): the same values as one run of the
whole model, only the values that cross a cut held between segments, constants never among them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx.calib.segments import SegmentedRun, node_reads
from qonnx.calib.sources import ListSource, input_specs
from qonnx.models import tiny

from conftest import outputs, to_ir

F = TensorProto.FLOAT


def _chain(seed: int = 0, width: int = 8):
    """x -> Relu -> MatMul(W1) -> MatMul(Transpose(E)) -> Add(x-derived skip); the Transpose of
    the constant E comes first in graph order, as exporters put it."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(width, width)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(6, width)).astype(np.float32), "e"),
        numpy_helper.from_array(rng.normal(size=(width, 6)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Transpose", ["e"], ["e_t"], name="transpose", perm=[1, 0]),
        helper.make_node("Relu", ["x"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "w1"], ["a"], name="mm1"),
        helper.make_node("MatMul", ["a", "e_t"], ["b"], name="mm2"),
        helper.make_node("MatMul", ["x", "w2"], ["skip"], name="skip_mm"),
        helper.make_node("Add", ["b", "skip"], ["y"], name="add"),
    ]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", F, [1, 4, width])], [helper.make_tensor_value_info("y", F, [1, 4, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count=3, seed=0, width=8):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(1, 4, width)).astype(np.float32)} for _ in range(count)]


def _run(proto, feeds):
    model = to_ir(proto)
    return model, SegmentedRun(model, ListSource(feeds, input_specs(model)), len(feeds))


def test_segments_give_the_values_of_one_run_and_hold_no_constant():
    proto = _chain()
    feeds = _feeds()
    model, run = _run(proto, feeds)
    expected = [outputs(proto, f)[0] for f in feeds]
    for tensor in ("h", "a", "b"):
        got = list(run.run_to([tensor]))
        assert [indices for indices, _ in got] == [[0], [1], [2]]
        held = set(run._boundary[0][1])
        assert "e_t" not in held  # the Transpose of a constant runs inside the segment that reads it
        assert held <= {"x", "h", "a", "b", "skip"}
    assert run.segments_run == 3 and run.restarts == 0
    # what is still to be read later is held (x, for the skip MatMul; b, for the Add), nothing else
    assert set(run._boundary[0][1]) == {"x", "b"}
    final = list(run.run_to(["y"]))
    for (_, values), want in zip(final, expected):
        np.testing.assert_allclose(values["y"], want, rtol=1e-6, atol=1e-6)  # the same ops, float32 sums


def test_asking_for_an_earlier_tensor_runs_again_from_the_inputs():
    proto = _chain()
    feeds = _feeds()
    _, run = _run(proto, feeds)
    list(run.run_to(["b"]))
    again = list(run.run_to(["h"]))
    assert run.restarts == 1
    for (_, values), feed in zip(again, feeds):
        np.testing.assert_array_equal(values["h"], np.maximum(feed["x"], 0))


def test_a_subgraph_reads_across_the_cut():
    """The If's branches read ``x`` from the outer graph: the segment with the If takes it as an input."""
    proto = tiny.if_model()
    model = to_ir(proto)
    if_node = next(n for n in model.graph if n.op_type == "If")
    assert "x" in {v.name for v in node_reads(if_node)}
    feeds = [tiny.random_feed(proto, seed=s) for s in range(2)]
    _, run = _run(proto, feeds)
    list(run.run_to(["s"]))
    assert "x" in run._boundary[0][1]
    for (_, values), feed in zip(run.run_to(["y"]), feeds):
        np.testing.assert_allclose(values["y"], outputs(proto, feed)[0], rtol=1e-6, atol=1e-6)


def test_a_value_divided_by_a_rewrite_follows_across_the_cut():
    proto = _chain()
    feeds = _feeds()
    _, run = _run(proto, feeds)
    before = [values["a"].copy() for _, values in run.run_to(["a"])]
    s = np.linspace(0.5, 2, 8).astype(np.float32)
    run.divide("a", s)
    for (_, values), old in zip(run._boundary, before):
        np.testing.assert_allclose(values["a"], old / s, rtol=1e-6)
    run.divide("a", s, renamed="a_scaled")
    assert "a_scaled" in run._boundary[0][1] and "a_scaled" in run._done


def test_an_unknown_tensor_is_refused():
    _, run = _run(_chain(), _feeds())
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        list(run.run_to(["nope"]))


def test_large_initializers_go_to_onnxruntime_as_arrays():
    """A segment's weights of 1 KiB or more are placeholders in the protobuf, their data handed over
    in memory; the session computes as with the data inline."""
    from qonnx.calib.segments import segment_model
    from qonnx import runtime

    proto = _chain(width=32)  # w1 holds 4 KiB; e and w2 768 bytes
    model = to_ir(proto)
    nodes = list(model.graph)
    made = segment_model(model, nodes, [model.graph.inputs[0]], [nodes[-1].outputs[0]])
    assert set(made.initializers) == {"w1"}
    assert len(made.proto) < 4096
    feed = _feeds(1, width=32)[0]
    got = runtime.session(made.proto, initializers=made.initializers).run(feed)["y"]
    np.testing.assert_allclose(got, outputs(proto, feed)[0], rtol=1e-6, atol=1e-6)
    made.release()
    assert made.initializers == {}


def test_freed_heap_pages_go_back_on_glibc():
    from qonnx import heap

    assert heap.trim() in (True, False)
    if __import__("platform").libc_ver()[0] == "glibc":
        assert heap._libc() is not None
