"""Where the Cast nodes go: a minimum s-t cut that converts the fewest bytes.

The problem: every node runs in FP32 or in the low-precision format (FP16/BF16). Some nodes must be
FP32 (an island chosen from evidence), some must be low (the compute the conversion is for), and
the rest are *free*: data movement and cheap element-wise ops, whose format only decides where the
island boundaries lie. A tensor whose producer and some reader disagree needs one Cast, shared by
all readers on the other side, and that Cast moves the tensor's bytes. Choose the free nodes'
formats so that the bytes cast are fewest.

This is a minimum cut. Source ``FP32``, sink ``LOW``; a node on the source side runs in FP32.
Forced nodes hang on their terminal by an infinite edge. For a tensor t of b bytes, produced by p
and read by c1..ck, two auxiliary vertices model the one shared Cast in either direction:

* ``p → up(t)`` with capacity b and ``up(t) → ci`` infinite: when p is FP32 and any reader is
  low, ``up(t)`` must be on the low side and the edge from p is cut once;
* ``ci → down(t)`` infinite and ``down(t) → p`` with capacity b: when p is low and any reader is
  FP32, ``down(t)`` must be on the FP32 side and the edge into p is cut once.

A cut therefore costs exactly the bytes of the Casts it implies, so the minimum cut is the
cheapest placement. Ties go to the low format: every free node also has an edge to ``LOW`` of
capacity 1, and tensor capacities are scaled by (free nodes + 1), so that the preference never
outweighs a byte. ``networkx.minimum_cut`` solves it (preflow-push); the answer is deterministic
for a given insertion order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Mapping
from typing import Literal

import networkx as nx

__all__ = ["FP32", "LOW", "Tensor", "Placement", "place_casts", "cast_bytes"]

FP32 = "\x00fp32"  # terminals: a producer or reader fixed to that format (graph inputs/outputs, fixed-type slots)
LOW = "\x00low"
# Tags of the auxiliary vertices (tag, tensor index): objects no node id can equal.
_UP, _DOWN = object(), object()

Kind = Literal["fp32", "low", "free"]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A float tensor: who makes it, who reads it (node ids or a terminal) and its size in bytes."""

    producer: Hashable
    readers: tuple[Hashable, ...]
    bytes: int

    def __post_init__(self):
        if self.bytes < 0:
            raise ValueError(f"a tensor of {self.bytes} bytes")


@dataclasses.dataclass(frozen=True)
class Placement:
    low: frozenset  # the nodes that run in the low format
    cast_bytes: int  # bytes moved by the Casts this placement needs


def _side(node: Hashable, low: frozenset | set) -> bool:
    if node == FP32:
        return False
    if node == LOW:
        return True
    return node in low


def cast_bytes(tensors: Iterable[Tensor], low: frozenset | set) -> int:
    """Bytes the Casts of an assignment move: each tensor once when any reader disagrees with its producer."""
    total = 0
    for t in tensors:
        side = _side(t.producer, low)
        if any(_side(r, low) != side for r in t.readers):
            total += t.bytes
    return total


def place_casts(kinds: Mapping[Hashable, Kind], tensors: Iterable[Tensor]) -> Placement:
    """The formats of the free nodes that minimize the bytes cast (ties: low)."""
    tensors = list(tensors)
    free = [n for n, kind in kinds.items() if kind == "free"]
    scale = len(free) + 1
    graph = nx.DiGraph()
    graph.add_node(FP32)
    graph.add_node(LOW)
    for node, kind in kinds.items():
        graph.add_node(node)
        if kind == "fp32":
            graph.add_edge(FP32, node)  # no capacity attribute: infinite
        elif kind == "low":
            graph.add_edge(node, LOW)
        else:
            graph.add_edge(node, LOW, capacity=1)
    for index, t in enumerate(tensors):
        readers = [r for r in dict.fromkeys(t.readers) if r != t.producer]
        if not readers:  # (a tensor of 0 bytes adds edges of capacity 0: they cut nothing)
            continue
        up, down = (_UP, index), (_DOWN, index)
        graph.add_edge(t.producer, up, capacity=t.bytes * scale)
        graph.add_edge(down, t.producer, capacity=t.bytes * scale)
        for reader in readers:
            graph.add_edge(up, reader)
            graph.add_edge(reader, down)
    _, (_, low_side) = nx.minimum_cut(graph, FP32, LOW)
    low = frozenset(n for n in kinds if n in low_side)
    return Placement(low, cast_bytes(tensors, low))
