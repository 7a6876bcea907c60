"""qonnx.pipeline: text pipelines, the pass manager's records, preserved analyses, verify, dumps."""

from __future__ import annotations

import uuid
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qonnx import ir as qir
from qonnx import pipeline
from qonnx.calib.sources import ListSource, input_specs
from qonnx.errors import UserError
from qonnx.models import tiny
from qonnx.passes.verify import VerificationError, verify_model
from qonnx.pipeline import Context, Pass, PipelineStep, build, parse_pipeline, run_pipeline


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


# --------------------------------------------------------------------------------------------
# throwaway passes, registered under unique names and removed again by the fixture


class _Options(Pass):
    summary = "test pass with typed options"

    def __init__(
        self,
        context=None,
        *,
        count: int = 1,
        ratio: float = 0.5,
        flag: bool = False,
        label: str | None = "x",
        level: Literal["low", "high"] = "low",
        mode: Literal["fast", "slow"] | None = None,
    ) -> None:
        super().__init__(context)
        self.count, self.ratio, self.flag, self.label, self.level, self.mode = count, ratio, flag, label, level, mode

    def call(self, model):
        return ir.passes.PassResult(model, modified=False)


class _AddIdentity(Pass):
    """Appends one dangling Identity node (a real, valid change) and reports a modification."""

    summary = "test pass that adds an Identity node"

    def call(self, model):
        x = model.graph.inputs[0]
        node = ir.node("Identity", [x], name=qir.unique_name(model.graph, "extra"))
        node.outputs[0].name = qir.unique_name(model.graph, "extra_out")
        model.graph.append(node)
        return ir.passes.PassResult(model, modified=True)


class _KeepsRanges(_AddIdentity):
    preserves = frozenset({"ranges"})


class _KeepsNothing(_AddIdentity):
    preserves = frozenset()


class _Looks(Pass):
    """Reads the model, changes nothing, preserves nothing (and need not: it does not modify)."""

    summary = "test pass that changes nothing"
    preserves = frozenset()

    def call(self, model):
        return ir.passes.PassResult(model, modified=False)


class _RemovesUsedNode(Pass):
    """Broken on purpose: removes relu0 although conv1 and the residual Add read its output."""

    summary = "test pass that breaks the graph"

    def call(self, model):
        node = next(n for n in model.graph if n.name == "relu0")
        model.graph.remove(node, safe=False)
        return ir.passes.PassResult(model, modified=True)


class _BadAttribute(Pass):
    """Broken on purpose: gives a 2-D Conv a 3-element kernel_shape."""

    summary = "test pass that sets an invalid attribute"

    def call(self, model):
        conv = next(n for n in model.graph if n.op_type == "Conv")
        conv.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", [3, 3, 3])
        return ir.passes.PassResult(model, modified=True)


@pytest.fixture
def temp_pass():
    """Register a throwaway subclass of a pass under a unique name; unregister it afterwards."""
    added: list[str] = []

    def _register(cls: type[Pass]) -> type[Pass]:
        name = f"test-{cls.__name__.strip('_').lower()}-{uuid.uuid4().hex[:8]}"
        sub = type(cls.__name__, (cls,), {"name": name})
        pipeline.register(sub)
        added.append(name)
        return sub

    yield _register
    for name in added:
        pipeline.registry.pop(name, None)
    assert not any(name in pipeline.registry for name in added)


# --------------------------------------------------------------------------------------------
# parse_pipeline


def test_alias_normalize_expands():
    steps = parse_pipeline("normalize")
    assert [s.name for s in steps] == pipeline.aliases["normalize"].split(",")
    assert all(s.options == {} for s in steps)
    assert len(steps) > 1


def test_parse_mixed_pipeline_with_options():
    expansion = pipeline.aliases["normalize"].split(",")
    steps = parse_pipeline("normalize,calibrate(method=minmax),verify")
    assert [s.name for s in steps] == [*expansion, "calibrate", "verify"]
    assert steps[len(expansion)] == PipelineStep("calibrate", {"method": "minmax"})
    assert str(steps[len(expansion)]) == "calibrate(method=minmax)"


def test_int_option_is_converted():
    (step,) = parse_pipeline("fold-constants(max_elements=10)")
    assert step.options == {"max_elements": 10}
    assert type(step.options["max_elements"]) is int


def test_optional_str_option():
    (step,) = parse_pipeline("calibrate(ranges=none,save=out/ranges.json)")
    assert step.options == {"ranges": None, "save": "out/ranges.json"}


def test_whitespace_is_tolerated():
    steps = parse_pipeline("  fold-constants ( max_elements = 7 ) ,  verify ")
    assert steps == [PipelineStep("fold-constants", {"max_elements": 7}), PipelineStep("verify", {})]


def test_options_are_converted_to_annotated_types(temp_pass):
    cls = temp_pass(_Options)
    (step,) = parse_pipeline(f"{cls.name}(count=3,ratio=0.25,flag=yes,label=none,level=high,mode=slow)")
    assert step.options == {"count": 3, "ratio": 0.25, "flag": True, "label": None, "level": "high", "mode": "slow"}
    assert type(step.options["count"]) is int and type(step.options["ratio"]) is float
    for text, value in [("true", True), ("1", True), ("False", False), ("no", False), ("0", False)]:
        assert parse_pipeline(f"{cls.name}(flag={text})")[0].options["flag"] is value
    (built,) = build(parse_pipeline(f"{cls.name}(count=4,label=abc)"), Context())
    assert (built.count, built.label, built.flag) == (4, "abc", False)


@pytest.mark.parametrize(
    "text, match",
    [
        ("normalize,no-such-pass", r"unknown pass 'no-such-pass'.*fold-constants"),
        ("fold-constants(bogus=1)", r"unknown option 'bogus'.*max_elements"),
        ("fold-constants(max_elements=ten)", r"'ten' is not a valid int"),
        ("fold-constants(max_elements=1.5)", r"'1.5' is not a valid int"),
        ("fold-constants(max_elements)", r"'max_elements' needs the form key=value"),
        ("calibrate(method=minmax", r"cannot parse pipeline"),
        ("calibrate)method=minmax(", r"cannot parse pipeline"),
        ("calibrate((method=minmax))", r"cannot parse pipeline"),
        ("calibrate,,verify", r"cannot parse pipeline"),
        ("normalize(x=1)", r"normalize stands for several passes"),
        ("", r"empty pipeline"),
        ("   ", r"empty pipeline"),
        ("verify(context=1)", r"unknown option 'context'"),
    ],
)
def test_bad_pipelines_are_user_errors(text, match):
    with pytest.raises(UserError, match=match):
        parse_pipeline(text)


@pytest.mark.parametrize(
    "options, match",
    [
        ("flag=maybe", r"'maybe' is not a valid bool"),
        ("count=many", r"'many' is not a valid int"),
        ("ratio=half", r"'half' is not a valid float"),
        ("level=medium", r"'medium' is not one of low, high"),
    ],
)
def test_bad_option_values_are_user_errors(temp_pass, options, match):
    cls = temp_pass(_Options)
    with pytest.raises(UserError, match=match):
        parse_pipeline(f"{cls.name}({options})")


def test_optional_literal_option_is_checked(temp_pass):
    cls = temp_pass(_Options)
    with pytest.raises(UserError, match="not one of fast, slow"):
        parse_pipeline(f"{cls.name}(mode=medium)")


def test_temp_pass_fixture_cleans_registry(temp_pass):
    cls = temp_pass(_Looks)
    assert pipeline.registry[cls.name] is cls
    assert cls.name.startswith("test-")


# --------------------------------------------------------------------------------------------
# run_pipeline: records


def test_records_per_pass(temp_pass):
    add = temp_pass(_KeepsNothing)
    look = temp_pass(_Looks)
    model = _ir(tiny.conv_bn_relu())
    context = Context()
    passes = build(parse_pipeline(f"fold-batchnorm,{add.name},{look.name}"), context)
    seen = []
    records = run_pipeline(model, passes, context, on_pass=seen.append)

    assert seen == records
    assert [r.name for r in records] == ["fold-batchnorm", add.name, look.name]
    fold, added, looked = records
    assert (fold.modified, fold.nodes_before, fold.nodes_after, fold.op_delta) == (True, 3, 2, {"BatchNormalization": -1})
    assert (added.modified, added.nodes_before, added.nodes_after, added.op_delta) == (True, 2, 3, {"Identity": 1})
    assert (looked.modified, looked.nodes_before, looked.nodes_after, looked.op_delta) == (False, 3, 3, {})
    for r in records:
        assert isinstance(r.seconds, float) and r.seconds >= 0
        assert set(r.to_dict()) == {"name", "seconds", "modified", "nodes_before", "nodes_after", "op_delta", "skipped"}
    # The records describe the model as it ends up.
    assert sorted(n.op_type for n in model.graph) == ["Conv", "Identity", "Relu"]


def test_records_for_constant_lifting_and_folding():
    model = _ir(tiny.constants_model())
    context = Context()
    records = run_pipeline(model, build(parse_pipeline("constants-to-initializers,fold-constants"), context), context)
    lift, fold = records
    assert (lift.modified, lift.op_delta) == (True, {"Constant": -3})
    assert (fold.modified, fold.op_delta) == (True, {"Mul": -1})
    assert fold.nodes_after == 2  # Conv and Relu; the dead Constant is an (unused) initializer now


# --------------------------------------------------------------------------------------------
# preserved analyses


def _analyses():
    return {"ranges": object(), "shapes": object(), "other": object()}


def test_modifying_pass_keeps_only_what_it_preserves(temp_pass):
    keeps = temp_pass(_KeepsRanges)
    analyses = _analyses()
    context = Context(analyses=dict(analyses))
    (record,) = run_pipeline(_ir(tiny.conv_chain()), build(parse_pipeline(keeps.name), context), context)
    assert record.modified
    assert context.analyses == {"ranges": analyses["ranges"]}
    assert context.analyses["ranges"] is analyses["ranges"]


def test_modifying_pass_that_preserves_nothing_drops_everything(temp_pass):
    drops = temp_pass(_KeepsNothing)
    context = Context(analyses=_analyses())
    run_pipeline(_ir(tiny.conv_chain()), build(parse_pipeline(drops.name), context), context)
    assert context.analyses == {}


def test_pass_that_does_not_modify_keeps_everything(temp_pass):
    looks = temp_pass(_Looks)
    analyses = _analyses()
    context = Context(analyses=dict(analyses))
    (record,) = run_pipeline(_ir(tiny.conv_chain()), build(parse_pipeline(looks.name), context), context)
    assert not record.modified
    assert context.analyses == analyses


def test_analyses_through_a_sequence(temp_pass):
    keeps, looks, drops = temp_pass(_KeepsRanges), temp_pass(_Looks), temp_pass(_KeepsNothing)
    context = Context(analyses=_analyses())
    snapshots = []
    run_pipeline(
        _ir(tiny.conv_chain()),
        build(parse_pipeline(f"{looks.name},{keeps.name},{looks.name},{drops.name}"), context),
        context,
        on_pass=lambda record: snapshots.append(sorted(context.analyses)),
    )
    assert snapshots == [["other", "ranges", "shapes"], ["ranges"], ["ranges"], []]


# --------------------------------------------------------------------------------------------
# verify after every pass (debug mode)


def test_verify_runs_after_every_pass_of_the_default_pipeline():
    proto = tiny.conv_chain()
    model = _ir(proto)
    feeds = [tiny.random_feed(proto, seed=i) for i in range(4)]
    context = Context(calib=ListSource(feeds, input_specs(model)))
    passes = build(parse_pipeline(pipeline.DEFAULT_PIPELINE), context)
    verified = []

    def verify(m, after):
        verify_model(m, after)
        verified.append(after)

    records = run_pipeline(model, passes, context, verify=verify)
    assert verified == [r.name for r in records] == [p.name for p in passes]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph)


@pytest.mark.parametrize("broken", [_RemovesUsedNode, _BadAttribute], ids=["removed-used-node", "bad-attribute"])
def test_verify_names_the_pass_that_broke_the_model(temp_pass, broken):
    looks = temp_pass(_Looks)
    bad = temp_pass(broken)
    after_bad = temp_pass(_Looks)
    context = Context()
    passes = build(parse_pipeline(f"{looks.name},{bad.name},{after_bad.name}"), context)
    ran = []
    with pytest.raises(VerificationError, match=f"after {bad.name}") as info:
        run_pipeline(_ir(tiny.conv_chain()), passes, context, verify=verify_model, on_pass=lambda r: ran.append(r.name))
    assert looks.name not in str(info.value)
    assert ran == [looks.name, bad.name], "the pipeline must stop at the broken pass"


def test_without_verify_a_broken_pass_goes_unnoticed_by_the_manager(temp_pass):
    # Control for the test above: it is the verify callback, not the manager, that catches the damage.
    bad = temp_pass(_RemovesUsedNode)
    context = Context()
    model = _ir(tiny.conv_chain())
    run_pipeline(model, build(parse_pipeline(bad.name), context), context)
    with pytest.raises(VerificationError):
        verify_model(model)


# --------------------------------------------------------------------------------------------
# dump_after


def test_dump_after_writes_numbered_models(tmp_path):
    model = _ir(tiny.constants_model())
    context = Context()
    passes = build(parse_pipeline("constants-to-initializers,remove-dead,fold-constants,remove-dead"), context)
    run_pipeline(model, passes, context, dump_after=["fold-constants", "remove-dead"], dump_dir=tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "after-01-remove-dead.onnx",
        "after-02-fold-constants.onnx",
        "after-03-remove-dead.onnx",
    ]
    first = onnx.load(str(tmp_path / "after-01-remove-dead.onnx"))
    folded = onnx.load(str(tmp_path / "after-02-fold-constants.onnx"))
    # Each dump is the model as it stood after that pass: the Mul is still there before folding.
    assert [n.op_type for n in first.graph.node] == ["Mul", "Conv", "Relu"]
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    onnx.checker.check_model(folded, full_check=True)
    # The folded weight is W * 2 (exact in float32: multiplying by two only changes the exponent).
    w = next(n for n in tiny.constants_model().graph.node if n.name == "const_w").attribute[0].t
    conv_weight = folded.graph.node[0].input[1]
    saved = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}
    np.testing.assert_array_equal(saved[conv_weight], onnx.numpy_helper.to_array(w) * np.float32(2))


def test_no_dump_unless_asked(tmp_path):
    model = _ir(tiny.constants_model())
    context = Context()
    run_pipeline(model, build(parse_pipeline("normalize"), context), context, dump_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# The order of a pipeline, checked from the analyses the passes declare, before any pass runs


@pytest.mark.parametrize(
    "text",
    [
        pipeline.DEFAULT_PIPELINE,
        pipeline.default_pipeline("fp16", calibrated=True),
        pipeline.default_pipeline("bf16", calibrated=False, keep_io_types=False),
        "normalize,resolve-policy,calibrate,insert-qdq,verify,evaluate,sensitivity,latency",
        "resolve-policy,calibrate,remove-dead,insert-qdq",  # remove-dead keeps the plan and the ranges
        "verify,evaluate",  # passes that need no analysis
    ],
)
def test_well_ordered_pipelines_pass_the_check(text):
    pipeline.check_order([s.name for s in pipeline.parse_pipeline(text)])


@pytest.mark.parametrize(
    "text, message",
    [
        ("normalize,insert-qdq,calibrate", "insert-qdq needs the plan analysis, which no earlier pass produces: put resolve-policy before insert-qdq"),
        ("normalize,resolve-policy,insert-qdq,calibrate", "insert-qdq needs the ranges analysis, which no earlier pass produces: put calibrate before insert-qdq"),
        ("calibrate", "calibrate needs the plan analysis, which no earlier pass produces: put resolve-policy before calibrate"),
        ("convert-float", "convert-float needs the plan analysis, which no earlier pass produces: put resolve-policy before convert-float"),
        (
            "resolve-policy,div-to-mul,calibrate,insert-qdq",
            "calibrate needs the plan analysis, which div-to-mul (after resolve-policy) does not preserve: put resolve-policy after div-to-mul",
        ),
        (
            "resolve-policy,calibrate,fold-batchnorm,insert-qdq",
            "insert-qdq needs the plan analysis, which fold-batchnorm (after resolve-policy) does not preserve: put resolve-policy after fold-batchnorm",
        ),
    ],
)
def test_misordered_pipelines_are_refused_naming_the_fix(text, message):
    with pytest.raises(UserError) as caught:
        pipeline.check_order([s.name for s in pipeline.parse_pipeline(text)])
    assert str(caught.value) == message


def test_an_analysis_already_held_counts_and_build_checks_the_order():
    pipeline.check_order(["insert-qdq"], available={"plan", "ranges"})  # placement is computed from the plan
    with pytest.raises(UserError, match="needs the ranges analysis"):
        pipeline.check_order(["insert-qdq"], available={"plan"})
    context = pipeline.Context()
    with pytest.raises(UserError, match="put resolve-policy before calibrate"):
        pipeline.build(pipeline.parse_pipeline("calibrate"), context)
    context.analyses["plan"] = True
    assert [p.name for p in pipeline.build(pipeline.parse_pipeline("calibrate"), context)] == ["calibrate"]


def test_on_demand_analyses_are_computed_once_and_dropped_by_a_modifying_pass():
    model = ir.serde.deserialize_model(tiny.conv_chain())
    context = pipeline.Context(calib=None, reduce_range=True)
    pipeline.run_pipeline(model, pipeline.build(pipeline.parse_pipeline("normalize,resolve-policy"), context), context)
    first = context.analysis("placement", model)
    assert first.calibrated and context.analysis("placement", model) is first  # cached, not recomputed
    source = ListSource([tiny.random_feed(tiny.conv_chain(), seed=i) for i in range(2)], input_specs(model))
    context.calib = source
    pipeline.run_pipeline(model, pipeline.build(pipeline.parse_pipeline("calibrate"), context), context)
    assert context.analyses["placement"] is first  # calibrate changes nothing: kept for insert-qdq
    pipeline.run_pipeline(model, pipeline.build(pipeline.parse_pipeline("insert-qdq"), context), context)
    assert "placement" not in context.analyses and {"plan", "ranges"} <= set(context.analyses)
    with pytest.raises(UserError, match="no bogus available"):
        context.analysis("bogus", model)
