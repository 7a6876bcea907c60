"""Tiny generated models for unit tests of rewrites (never for claims about quality or speed).

Each function returns an ``onnx.ModelProto`` with deterministic random weights (``seed``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "conv_bn_relu",
    "conv_chain",
    "conv_transpose_bn",
    "gemm_bn",
    "matmul_model",
    "constants_model",
    "if_model",
    "recurrent_model",
    "loop_model",
    "detector_neck",
    "same_padded_conv",
    "embedding_model",
    "conv_bias_add",
    "function_model",
    "transformer_block",
    "residual_convs",
    "random_feed",
]

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset: int = 13, name: str = "tiny") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qonnx-tiny")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _init(rng: np.random.Generator, name: str, shape, scale: float = 0.5) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _bn_params(rng, prefix: str, channels: int) -> list[TensorProto]:
    return [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"{prefix}_gamma"),
        numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), f"{prefix}_beta"),
        numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), f"{prefix}_mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, channels).astype(np.float32), f"{prefix}_var"),
    ]


def conv_bn_relu(seed: int = 0, opset: int = 13, bias: bool = True, channels: int = 8) -> onnx.ModelProto:
    """x[1,3,16,16] → Conv(3x3) → BatchNormalization → Relu → y."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "W", (channels, 3, 3, 3))] + _bn_params(rng, "bn", channels)
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(_init(rng, "B", (channels,), 0.1))
        conv_inputs.append("B")
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_gamma", "bn_beta", "bn_mean", "bn_var"], ["b"], name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["b"], ["y"], name="relu"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", F, [1, channels, 16, 16])],
        inits,
        opset,
    )


def conv_chain(seed: int = 0, depth: int = 3, channels: int = 4, dynamic: bool = False) -> onnx.ModelProto:
    """x → (Conv → Relu) × depth, with a depthwise Conv in the middle and a residual Add."""
    rng = np.random.default_rng(seed)
    inits, nodes, previous = [], [], "x"
    for i in range(depth):
        group = channels if i == 1 else 1
        in_channels = 3 if i == 0 else channels
        inits.append(_init(rng, f"W{i}", (channels, in_channels // group, 3, 3)))
        inits.append(_init(rng, f"B{i}", (channels,), 0.1))
        nodes.append(helper.make_node("Conv", [previous, f"W{i}", f"B{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1], group=group))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        previous = f"r{i}"
    nodes.append(helper.make_node("Add", [previous, "r0"], ["y"], name="residual"))
    shape = ["n", 3, "h", "w"] if dynamic else [1, 3, 16, 16]
    out_shape = ["n", channels, "h", "w"] if dynamic else [1, channels, 16, 16]
    return _model(nodes, [helper.make_tensor_value_info("x", F, shape)], [helper.make_tensor_value_info("y", F, out_shape)], inits)


def conv_transpose_bn(seed: int = 0, group: int = 2) -> onnx.ModelProto:
    """x[1,4,8,8] → ConvTranspose(stride 2, group) → BatchNormalization → y."""
    rng = np.random.default_rng(seed)
    c_in, c_out = 4, 6
    inits = [_init(rng, "W", (c_in, c_out // group, 2, 2)), _init(rng, "B", (c_out,), 0.1)] + _bn_params(rng, "bn", c_out)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "W", "B"], ["c"], name="deconv", strides=[2, 2], group=group),
        helper.make_node("BatchNormalization", ["c", "bn_gamma", "bn_beta", "bn_mean", "bn_var"], ["y"], name="bn"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, c_in, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, c_out, 16, 16])],
        inits,
    )


def gemm_bn(seed: int = 0, trans_b: int = 1) -> onnx.ModelProto:
    """x[2,16] → Gemm(transB) → BatchNormalization → y[2,8]."""
    rng = np.random.default_rng(seed)
    shape = (8, 16) if trans_b else (16, 8)
    inits = [_init(rng, "W", shape), _init(rng, "B", (8,), 0.1)] + _bn_params(rng, "bn", 8)
    nodes = [
        helper.make_node("Gemm", ["x", "W", "B"], ["g"], name="gemm", transB=trans_b),
        helper.make_node("BatchNormalization", ["g", "bn_gamma", "bn_beta", "bn_mean", "bn_var"], ["y"], name="bn"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [2, 16])], [helper.make_tensor_value_info("y", F, [2, 8])], inits)


def matmul_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,4,16] → MatMul(constant W[16,8]) → a; a × aᵀ (MatMul of two activations) → y."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="proj"),
        helper.make_node("Transpose", ["a"], ["at"], name="t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["a", "at"], ["y"], name="scores"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 4, 16])],
        [helper.make_tensor_value_info("y", F, [1, 4, 4])],
        [_init(rng, "W", (16, 8))],
    )


def constants_model(seed: int = 0, opset: int = 11) -> onnx.ModelProto:
    """Weights in Constant nodes (as Paddle2ONNX exports them), a foldable Mul, at ``opset``."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], name="const_w", value=numpy_helper.from_array(w, "W")),
        helper.make_node("Constant", [], ["two"], name="const_two", value=numpy_helper.from_array(np.float32(2.0), "two")),
        helper.make_node("Mul", ["W", "two"], ["W2"], name="scale_w"),
        helper.make_node("Conv", ["x", "W2"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
        helper.make_node("Constant", [], ["unused"], name="dead", value=numpy_helper.from_array(np.float32(1.0), "unused")),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
        opset=opset,
    )


def if_model(seed: int = 0) -> onnx.ModelProto:
    """An If whose branches hold a Conv with a Constant weight: a subgraph case."""
    rng = np.random.default_rng(seed)

    def branch(name: str, factor: float) -> onnx.GraphProto:
        w = (rng.standard_normal((2, 3, 1, 1)) * factor).astype(np.float32)
        return helper.make_graph(
            [
                helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(w, f"{name}_w")),
                helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_conv"),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", F, [1, 2, 4, 4])],
        )

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=branch("then", 1.0), else_branch=branch("else", -1.0)),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 2, 4, 4])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )


def recurrent_model(op_type: str = "LSTM", seed: int = 0, hidden: int = 16, direction: str = "forward", steps: int = 6) -> onnx.ModelProto:
    """x[steps, 1, 8] → LSTM / GRU / RNN (constant W, R, B; state inputs h0 (and c0)) → Y, Y_h.

    ``direction`` "bidirectional" gives W [2, gates * hidden, 8]. Weights of scale 0.3: the gates
    neither saturate nor stay linear on unit-normal inputs.
    """
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op_type]
    dirs = 2 if direction == "bidirectional" else 1
    inits = [
        _init(rng, "W", (dirs, gates * hidden, 8), 0.3),
        _init(rng, "R", (dirs, gates * hidden, hidden), 0.3),
        _init(rng, "B", (dirs, 2 * gates * hidden), 0.1),
    ]
    inputs = [helper.make_tensor_value_info("x", F, [steps, 1, 8]), helper.make_tensor_value_info("h0", F, [dirs, 1, hidden])]
    node_inputs = ["x", "W", "R", "B", "", "h0"]
    outputs = ["Y", "Y_h"]
    if op_type == "LSTM":
        inputs.append(helper.make_tensor_value_info("c0", F, [dirs, 1, hidden]))
        node_inputs.append("c0")
    node = helper.make_node(op_type, node_inputs, outputs, name=op_type.lower(), hidden_size=hidden, direction=direction)
    return _model(
        [node],
        inputs,
        [helper.make_tensor_value_info("Y", F, [steps, dirs, 1, hidden]), helper.make_tensor_value_info("Y_h", F, [dirs, 1, hidden])],
        inits,
        opset=14,
    )


def loop_model(seed: int = 0, trips: int = 3) -> onnx.ModelProto:
    """x[1, 8] → Loop (``trips`` iterations) whose body carries h through MatMul(h, W) → Tanh, W a
    Constant inside the body; and a Gemm on the result in the main graph."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((8, 8)) * 0.4).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["body_w"], value=numpy_helper.from_array(w, "body_w")),
            helper.make_node("MatMul", ["h_in", "body_w"], ["h_mm"], name="body_matmul"),
            helper.make_node("Tanh", ["h_mm"], ["h_out"], name="body_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", F, [1, 8]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", F, [1, 8])],
    )
    nodes = [
        helper.make_node("Loop", ["trips", "", "x"], ["h"], name="loop", body=body),
        helper.make_node("Gemm", ["h", "G"], ["y"], name="head"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        [numpy_helper.from_array(np.array(trips, np.int64), "trips"), _init(rng, "G", (8, 4), 0.4)],
    )


def detector_neck(seed: int = 0) -> onnx.ModelProto:
    """A YOLO-like neck: SiLU convolutions, nearest Resize, Concat, MaxPool, x / 6, Reshape + Transpose.

    x[1,3,16,16] → Conv → SiLU (x·Sigmoid(x)) = a; a → Conv(stride 2) → SiLU → Resize(×2, nearest) = u;
    Concat(a, u) → MaxPool(3, pad 1) → Div(6) → Conv(1x1) → Reshape[1,4,256] → Transpose → y[1,256,4].
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "W0", (4, 3, 3, 3)), _init(rng, "B0", (4,), 0.1),
        _init(rng, "W1", (4, 4, 3, 3)), _init(rng, "B1", (4,), 0.1),
        _init(rng, "W2", (4, 8, 1, 1)), _init(rng, "B2", (4,), 0.1),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.float32(6.0), "six"),
        numpy_helper.from_array(np.array([1, 4, 256], np.int64), "shape"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "W0", "B0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c0"], ["s0"], name="sig0"),
        helper.make_node("Mul", ["c0", "s0"], ["a"], name="silu0"),
        helper.make_node("Conv", ["a", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["d"], name="silu1"),
        helper.make_node("Resize", ["d", "", "scales"], ["u"], name="up", mode="nearest"),
        helper.make_node("Concat", ["a", "u"], ["cat"], name="cat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["p", "six"], ["p6"], name="sixth"),
        helper.make_node("Conv", ["p6", "W2", "B2"], ["c2"], name="conv2"),
        helper.make_node("Reshape", ["c2", "shape"], ["r"], name="flat"),
        helper.make_node("Transpose", ["r"], ["y"], name="swap", perm=[0, 2, 1]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", F, [1, 256, 4])],
        inits,
    )


def same_padded_conv(seed: int = 0) -> onnx.ModelProto:
    """TensorFlow-style "same" padding: x[1,3,9,9] → Pad(0 / 1 top-left, 2 bottom-right) → Conv(3x3, stride 2) → Div(6)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "W", (4, 3, 3, 3)),
        _init(rng, "B", (4,), 0.1),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 2, 2], np.int64), "pads"),
        numpy_helper.from_array(np.float32(6.0), "six"),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad", mode="constant"),
        helper.make_node("Conv", ["padded", "W", "B"], ["c"], name="conv", strides=[2, 2]),
        helper.make_node("Div", ["c", "six"], ["y"], name="sixth"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("y", F, [1, 4, 5, 5])],
        inits,
    )


def embedding_model(seed: int = 0, vocab: int = 50, width: int = 16) -> onnx.ModelProto:
    """ids[1,6] (int64) → Gather(table[vocab,width]) + position → MatMul(W[width,8]) → Add(bias) → y."""
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "table", (vocab, width)),
        _init(rng, "position", (1, 6, width), 0.1),
        _init(rng, "W", (width, 8)),
        _init(rng, "bias", (8,), 0.1),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("Add", ["e", "position"], ["h"], name="add_position"),
        helper.make_node("MatMul", ["h", "W"], ["m"], name="proj"),
        helper.make_node("Add", ["m", "bias"], ["y"], name="add_bias"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", F, [1, 6, 8])],
        inits,
    )


def conv_bias_add(seed: int = 0) -> onnx.ModelProto:
    """Paddle2ONNX's bias: x[1,3,8,8] → Conv(3x3, no bias) → Add(c[1,4,1,1]) → Relu → y."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "W", (4, 3, 3, 3)), _init(rng, "c", (1, 4, 1, 1), 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["v"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["v", "c"], ["b"], name="bias"),
        helper.make_node("Relu", ["b"], ["y"], name="relu"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
        inits,
    )


def function_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] → ConvRelu (a model-local function: Constant weight, Conv, Relu) → y."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    body = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
        helper.make_node("Conv", ["inp", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["out"]),
    ]
    function = helper.make_function("local", "ConvRelu", ["inp"], ["out"], body, [helper.make_opsetid("", 13)])
    graph = helper.make_graph(
        [helper.make_node("ConvRelu", ["x"], ["y"], domain="local", name="block")],
        "tiny",
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("local", 1)], functions=[function], producer_name="qonnx-tiny"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def transformer_block(seed: int = 0, tokens: int = 8, width: int = 16, heads: int = 2) -> onnx.ModelProto:
    """One encoder layer without LayerNorm, on float inputs x[1, T, H]: Q/K/V projections (MatMul +
    bias Add), two heads (Reshape, Transpose), scores (MatMul, scaling Mul, Softmax), the context
    MatMul, the output projection with its bias, a residual Add; then the feed-forward block
    (MatMul + bias, GELU as Div/Erf/Add/Mul/Mul, MatMul + bias) and a second residual Add."""
    rng = np.random.default_rng(seed)
    d = width // heads
    inits = [_init(rng, f"W{n}", (width, width), 0.3) for n in "qkvo"] + [_init(rng, f"b{n}", (width,), 0.1) for n in "qkvo"]
    inits += [_init(rng, "W1", (width, 2 * width), 0.3), _init(rng, "b1", (2 * width,), 0.1), _init(rng, "W2", (2 * width, width), 0.3), _init(rng, "b2", (width,), 0.1)]
    consts = {"heads_shape": np.array([1, tokens, heads, d], np.int64), "merged_shape": np.array([1, tokens, width], np.int64),
              "scale": np.array(1 / np.sqrt(d), np.float32), "sqrt2": np.array(np.sqrt(2), np.float32),
              "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}  # fmt: skip
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    node = helper.make_node
    nodes = []
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            node("MatMul", ["x", f"W{n}"], [f"{n}0"], name=f"{n}_proj"),
            node("Add", [f"{n}0", f"b{n}"], [f"{n}1"], name=f"{n}_bias"),
            node("Reshape", [f"{n}1", "heads_shape"], [f"{n}2"], name=f"{n}_heads"),
            node("Transpose", [f"{n}2"], [f"{n}3"], name=f"{n}_transpose", perm=perm),
        ]
    nodes += [
        node("MatMul", ["q3", "k3"], ["s0"], name="scores"),
        node("Mul", ["s0", "scale"], ["s1"], name="scale_scores"),
        node("Softmax", ["s1"], ["p"], name="softmax", axis=-1),
        node("MatMul", ["p", "v3"], ["c0"], name="context"),
        node("Transpose", ["c0"], ["c1"], name="context_transpose", perm=[0, 2, 1, 3]),
        node("Reshape", ["c1", "merged_shape"], ["c2"], name="context_merge"),
        node("MatMul", ["c2", "Wo"], ["o0"], name="o_proj"),
        node("Add", ["o0", "bo"], ["o1"], name="o_bias"),
        node("Add", ["x", "o1"], ["h"], name="residual1"),
        node("MatMul", ["h", "W1"], ["f0"], name="ffn1"),
        node("Add", ["f0", "b1"], ["f1"], name="ffn1_bias"),
        node("Div", ["f1", "sqrt2"], ["g0"], name="gelu_div"),
        node("Erf", ["g0"], ["g1"], name="gelu_erf"),
        node("Add", ["g1", "one"], ["g2"], name="gelu_add"),
        node("Mul", ["f1", "g2"], ["g3"], name="gelu_mul"),
        node("Mul", ["g3", "half"], ["g4"], name="gelu_half"),
        node("MatMul", ["g4", "W2"], ["f2"], name="ffn2"),
        node("Add", ["f2", "b2"], ["f3"], name="ffn2_bias"),
        node("Add", ["h", "f3"], ["y"], name="residual2"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [1, tokens, width])], [helper.make_tensor_value_info("y", F, [1, tokens, width])], inits)


def residual_convs(seed: int = 0, channels: int = 4) -> onnx.ModelProto:
    """x → stem Conv → Relu → (Conv → Relu → Conv) + the Relu's output → Relu → head Conv → y: a
    residual block as in ResNet."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "W0", (channels, 3, 3, 3)), _init(rng, "B0", (channels,), 0.1)]
    inits += [_init(rng, f"W{i}", (channels, channels, 3, 3), 0.3) for i in (1, 2, 3)]
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "W0", "B0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        node("Relu", ["c0"], ["r0"], name="stem_relu"),
        node("Conv", ["r0", "W1"], ["c1"], name="branch_conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"], name="branch_relu"),
        node("Conv", ["r1", "W2"], ["c2"], name="branch_conv2", pads=[1, 1, 1, 1]),
        node("Add", ["r0", "c2"], ["s"], name="join"),
        node("Relu", ["s"], ["r2"], name="join_relu"),
        node("Conv", ["r2", "W3"], ["y"], name="head", pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [1, 3, 16, 16])], [helper.make_tensor_value_info("y", F, [1, channels, 16, 16])], inits)


def random_feed(model: onnx.ModelProto, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """A feed of standard-normal FP32 inputs; symbolic dimensions take values from ``dims`` (else 8)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feed = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param, 8) for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == TensorProto.INT64:
            feed[value.name] = rng.integers(0, 8, shape, dtype=np.int64)  # indices valid for every tiny table
        else:
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feed
