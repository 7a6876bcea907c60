"""Groups of nodes that are sensitive together, found from the graph's structure.

A single node is sometimes too fine a unit for mixed precision: the error of a Conv and of the
activation that reads its output are made and felt together, and an attention block's MatMuls and
Softmax only make sense as one. Three kinds, each named after the node that anchors it, so that a
name stays the same from run to run:

- ``chain:NODE``: a layer (Conv/ConvTranspose/Gemm/MatMul with a constant weight) and the element-wise ops that
  follow it, as long as they read nothing but the chain's own values and constants: a bias Add,
  Relu, Clip, Sigmoid/HardSigmoid/Tanh, a swish (``x * Sigmoid(x)``), GELU's Div/Erf/Add/Mul;
- ``attention:SOFTMAX``: the nodes between the Q/K/V projections and the output projection (the
  projections and their chains excluded): the score MatMul, its scaling and mask Add, the Softmax,
  the MatMul with V and the Reshape/Transpose around them. Values shared with other blocks (the
  attention mask, computed once for all layers) are not part of any block;
- ``residual:ADD``: the nodes on the paths from a fork (a value read twice, or a graph input) to the
  Add that rejoins it, the Add included and the fork's producer not; at most ``max_nodes`` nodes
  (a skip across a whole network is no useful unit). A fork that another Add inside the branch
  reads too is a value broadcast to many blocks (an attention mask added to every layer's
  scores), not a skip. Only float values count: shape arithmetic joins no group.

Chains and attention blocks do not overlap (the block stops at the chains of its projections);
residual branches contain them. ``units`` partitions a set of nodes into attention blocks, then
chains, then single nodes: the steps the automatic policy moves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import onnx_ir as ir

__all__ = ["NodeGroup", "find_groups", "units", "WEIGHTED_OPS", "ELEMENTWISE_OPS"]

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ELEMENTWISE_OPS = frozenset(
    "Relu LeakyRelu PRelu Elu Selu Celu Gelu Sigmoid HardSigmoid HardSwish Tanh Softplus Softsign Clip Erf "
    "Add Sub Mul Div Pow Sqrt Neg Abs Exp".split()
)


@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """``name``: ``KIND:ANCHOR``; ``nodes``: the members, in graph order."""

    name: str
    kind: str  # "chain", "attention" or "residual"
    nodes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "nodes": list(self.nodes)}


def _is_constant(value: ir.Value | None) -> bool:
    if value is None:
        return True
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    if producer is None:
        return False
    # A weight stored as integers and read through DequantizeLinear, or a Constant node.
    return producer.op_type == "Constant" or (producer.op_type == "DequantizeLinear" and _is_constant(producer.inputs[0]))


_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


def _is_float(value: ir.Value) -> bool:
    """A float tensor (or one of unknown type): shape arithmetic (Shape, Gather, Concat of int64)
    is no part of a group."""
    return value.dtype is None or value.dtype in _FLOATS


def _is_projection(node: ir.Node) -> bool:
    """A weighted op with a constant weight (a layer, not an activation-by-activation MatMul)."""
    if node.op_type not in WEIGHTED_OPS:
        return False
    if node.op_type == "MatMul":
        return any(_is_constant(v) for v in node.inputs)
    return len(node.inputs) > 1 and _is_constant(node.inputs[1])


def _readers(node: ir.Node) -> list[ir.Node]:
    return [user for out in node.outputs for user, _ in out.uses()]


def _chain(node: ir.Node) -> list[ir.Node]:
    """The layer ``node`` and the element-wise ops after it that read only the chain's values and
    constants, grown while every reader of the chain is element-wise (a reader that also needs a
    value the chain has not made yet waits for it: GELU's Mul waits for its Erf branch)."""
    members = [node]
    inside = {id(node)}
    while True:
        pending = list({id(r): r for m in members for r in _readers(m) if id(r) not in inside}.values())
        if not pending or any(r.op_type not in ELEMENTWISE_OPS for r in pending):
            break
        ready = [r for r in pending if all(v is None or _is_constant(v) or id(v.producer()) in inside for v in r.inputs)]
        if not ready:
            break
        members += ready
        inside |= {id(r) for r in ready}
    return members


def _reach(graph: ir.Graph) -> tuple[dict[str, int], list[str], list[int], list[int], dict[str, list[str]]]:
    """Producer → reader edges between nodes (a graph input is a node of its own, ``input:NAME``)
    as bit sets: each node's index, the names by index, the ancestors and the descendants of
    each index (``1 << i`` for node ``i``), and each node's readers. One pass in graph order each
    way, where a search per node took a minute on a 2,000-node decoder."""
    index: dict[str, int] = {}
    names: list[str] = []
    parents: list[list[int]] = []

    def vertex(name: str) -> int:
        if name not in index:
            index[name] = len(names)
            names.append(name)
            parents.append([])
        return index[name]

    for value in graph.inputs:  # before every node: the nearest fork is a node when one is common
        vertex(f"input:{value.name}")
    readers: dict[str, list[str]] = {}
    for node in graph:
        inputs = []
        for value in node.inputs:
            if value is None or _is_constant(value) or not _is_float(value):
                continue
            producer = value.producer()
            inputs.append(vertex(producer.name if producer is not None else f"input:{value.name}"))
        me = vertex(node.name)
        parents[me] += inputs
        for parent in inputs:
            readers.setdefault(names[parent], []).append(node.name)
    ancestors = [0] * len(names)
    for i in range(len(names)):  # a producer always comes before its readers
        for parent in parents[i]:
            ancestors[i] |= ancestors[parent] | (1 << parent)
    descendants = [0] * len(names)
    for i in reversed(range(len(names))):
        for parent in parents[i]:
            descendants[parent] |= descendants[i] | (1 << i)
    return index, names, ancestors, descendants, readers


def _attention(softmax: ir.Node, boundary: set[int]) -> list[ir.Node]:
    """The nodes around ``softmax`` up to the projections (and their chains) on both sides."""
    block = {id(softmax): softmax}
    down = [softmax]
    while down:  # towards the output projection
        node = down.pop()
        for reader in _readers(node):
            if id(reader) in block or id(reader) in boundary or _is_projection(reader) or not any(_is_float(v) for v in reader.outputs):
                continue
            block[id(reader)] = reader
            down.append(reader)
    up = list(block.values())
    while up:  # towards the Q/K/V projections, through values read only inside the block
        node = up.pop()
        for value in node.inputs:
            producer = None if value is None or _is_constant(value) or not _is_float(value) else value.producer()
            if producer is None or id(producer) in block or id(producer) in boundary or _is_projection(producer):
                continue
            if any(id(r) not in block for r in _readers(producer)):
                continue  # shared with other blocks (the attention mask)
            block[id(producer)] = producer
            up.append(producer)
    return list(block.values())


def find_groups(model: ir.Model, *, max_nodes: int = 32) -> list[NodeGroup]:
    """The chains, attention blocks and residual branches of ``model``'s main graph (every node
    named), in that order, each kind in graph order. Groups of a single node are left out."""
    graph = model.graph
    order = {node.name: i for i, node in enumerate(graph)}

    def group(kind: str, anchor: str, members: Iterable[ir.Node]) -> NodeGroup:
        return NodeGroup(f"{kind}:{anchor}", kind, tuple(sorted({m.name for m in members}, key=order.__getitem__)))

    chains = [_chain(node) for node in graph if _is_projection(node)]
    found = [group("chain", c[0].name, c) for c in chains if len(c) > 1]
    boundary = {id(m) for c in chains for m in c}
    for node in graph:
        if node.op_type == "Softmax":
            block = _attention(node, boundary)
            if any(m.op_type == "MatMul" for m in block):
                found.append(group("attention", node.name, block))

    index, names, ancestors, descendants, readers = _reach(graph)
    by_name = {node.name: node for node in graph}
    for node in graph:
        if node.op_type not in ("Add", "Sum") or len(node.inputs) < 2:
            continue
        sources = [v for v in node.inputs if v is not None and not _is_constant(v) and _is_float(v)]
        if len(sources) < 2:
            continue
        tops = [index[v.producer().name if v.producer() is not None else f"input:{v.name}"] for v in sources]
        common = ~0
        for top in tops:
            common &= ancestors[top] | (1 << top)
        if not common:
            continue
        # The fork: the common ancestor nearest the Add, the last in graph order (none of its
        # descendants is a common ancestor: they all come after it).
        fork = common.bit_length() - 1
        between = (descendants[fork] & ancestors[index[node.name]]) | (1 << index[node.name])
        joins = {r for r in readers.get(names[fork], ()) if by_name[r].op_type in ("Add", "Sum") and between >> index[r] & 1}
        if joins != {node.name}:
            continue  # the fork is joined again inside: a value broadcast to many blocks (an attention mask), no skip
        if 1 < between.bit_count() <= max_nodes:
            members = [names[i] for i in range(between.bit_length()) if between >> i & 1]
            found.append(group("residual", node.name, (by_name[n] for n in members if n in by_name)))
    return found


def units(candidates: Sequence[str], groups: Sequence[NodeGroup]) -> list[tuple[str, list[str]]]:
    """``candidates`` partitioned into the steps of a ranking: attention blocks first, then chains,
    each with its members among ``candidates`` (two at least), then every other candidate alone.
    Returns (name, members) pairs; a single node's name is its own."""
    left = dict.fromkeys(candidates)
    found = []
    for kind in ("attention", "chain"):
        for g in groups:
            if g.kind != kind:
                continue
            members = [n for n in g.nodes if n in left]
            if len(members) < 2:
                continue
            for n in members:
                del left[n]
            found.append((g.name, members))
    return found + [(n, [n]) for n in left]
