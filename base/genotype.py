"""Discrete architectures: the Genotype type, its derivation, its network.

A :class:`Genotype` says, for each cell type, which edges each node keeps
and which single operation each kept edge runs; it serialises to and from
JSON. :func:`derive_genotype` turns architecture logits into the most probable
genotype (by the DARTS rule, or each edge's mode with ``none`` included), and
:func:`build_genotype_network` builds the standalone network (no mixed
operations) that trains on its own.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np
from flax import nnx

from base import ops
from base.distributions import host_probabilities
from base.errors import ConfigError
from base.supernet import (Cell, CellNetwork, SupernetSpec,
                           darts_reduction_cells)

Edge = tuple[str, int]  # (operation name, input state index)


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A discrete cell architecture (the DARTS genotype format).

  Attributes:
    normal: for each node of the normal cell, in order, its kept edges as
      ``(op, input)`` pairs; ``input`` 0 and 1 are the cell's inputs and
      ``2 + j`` is node ``j``.
    normal_concat: state indices (>= 2) concatenated into the cell output.
    reduce, reduce_concat: the same for the reduction cell.
    edges_per_node: how many edges each node lists (2 in DARTS). A
      ``none`` edge is no edge (zero output, no weights): nodes with fewer
      real inputs list ``("none", j)`` edges to fill up.
  """
  normal: tuple[Edge, ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[Edge, ...]
  reduce_concat: tuple[int, ...]
  edges_per_node: int = 2

  def __post_init__(self):
    for name in ("normal", "reduce"):
      edges = tuple((str(op), int(j)) for op, j in getattr(self, name))
      object.__setattr__(self, name, edges)
      concat = tuple(int(i) for i in getattr(self, f"{name}_concat"))
      object.__setattr__(self, f"{name}_concat", concat)
      if len(edges) % self.edges_per_node:
        raise ConfigError(
            f"genotype.{name} has {len(edges)} edges, not a multiple of "
            f"edges_per_node={self.edges_per_node}")
      num_nodes = len(edges) // self.edges_per_node
      for index, (op, j) in enumerate(edges):
        if op not in ops.OPS:
          raise ConfigError(f"genotype.{name} edge {index} has unknown "
                            f"operation {op!r}; registered: {sorted(ops.OPS)}")
        node = index // self.edges_per_node
        if not 0 <= j < 2 + node:
          raise ConfigError(f"genotype.{name} edge {index} (node {node}) reads "
                            f"state {j}; allowed 0..{1 + node}")
      bad = [i for i in concat if not 2 <= i < 2 + num_nodes]
      if bad or not concat:
        raise ConfigError(f"genotype.{name}_concat {list(concat)} must name "
                          f"node states in 2..{1 + num_nodes}")

  @property
  def num_nodes(self) -> int:
    return len(self.normal) // self.edges_per_node

  def node_edges(self, cell_type: str) -> list[list[Edge]]:
    """The edges of each node of ``cell_type`` ("normal" or "reduce")."""
    edges = getattr(self, cell_type)
    k = self.edges_per_node
    return [list(edges[i:i + k]) for i in range(0, len(edges), k)]

  def to_dict(self) -> dict[str, Any]:
    return {"normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
            "edges_per_node": self.edges_per_node}

  def to_json(self, **kwargs) -> str:
    return json.dumps(self.to_dict(), **kwargs)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Genotype":
    expected = {f.name for f in dataclasses.fields(cls)}
    required = expected - {"edges_per_node"}
    if not isinstance(d, Mapping):
      raise ConfigError(f"a genotype must be a JSON object, got "
                        f"{type(d).__name__}")
    unknown, missing = sorted(set(d) - expected), sorted(required - set(d))
    if unknown or missing:
      raise ConfigError(f"malformed genotype: unknown keys {unknown}, "
                        f"missing keys {missing}")
    try:
      return cls(normal=tuple(tuple(e) for e in d["normal"]),
                 normal_concat=tuple(d["normal_concat"]),
                 reduce=tuple(tuple(e) for e in d["reduce"]),
                 reduce_concat=tuple(d["reduce_concat"]),
                 edges_per_node=int(d.get("edges_per_node", 2)))
    except (TypeError, ValueError) as e:
      if isinstance(e, ConfigError):
        raise
      raise ConfigError(f"malformed genotype: {e}") from None

  @classmethod
  def from_json(cls, text: str) -> "Genotype":
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise ConfigError(f"genotype is not valid JSON: {e}") from None
    return cls.from_dict(d)

  def __str__(self) -> str:
    def cell(name):
      return "; ".join(
          f"n{i}<-" + ("+".join(f"{op}({j})" for op, j in edges
                                if op != "none") or "none")
          for i, edges in enumerate(self.node_edges(name)))
    return f"normal: {cell('normal')} | reduce: {cell('reduce')}"


GENOTYPE_RULES = ("darts", "argmax")


def _darts_node_edges(node_probs: np.ndarray, primitives: tuple[str, ...],
                      edges_per_node: int) -> list[Edge]:
  """A node's ``edges_per_node`` strongest edges, each with its best op
  other than ``none`` (the DARTS rule)."""
  allowed = np.array([p != "none" for p in primitives])
  probs = np.where(allowed, node_probs, -1.0)
  strength = probs.max(-1)
  keep = sorted(np.argsort(-strength, kind="stable")[
      :min(edges_per_node, len(probs))])
  return [(primitives[int(probs[j].argmax())], int(j)) for j in keep]


def _argmax_node_edges(node_probs: np.ndarray,
                       primitives: tuple[str, ...]) -> list[Edge]:
  """Every edge of a node whose most probable op is not ``none``, with it."""
  best = node_probs.argmax(-1)
  return [(primitives[int(op)], int(j)) for j, op in enumerate(best)
          if primitives[int(op)] != "none"]


def derive_genotype(arch_logits: Mapping[str, Any],
                    primitives: Sequence[str], num_nodes: int,
                    edges_per_node: int = 2, rule: str = "darts") -> Genotype:
  """The most probable genotype under architecture logits.

  ``rule="darts"`` (the DARTS rule, the default): for every node, each
  incoming edge is scored by its most probable operation other than
  ``none``; the ``edges_per_node`` best edges are kept, each with that
  operation. Every node gets exactly that many inputs, whatever the
  probability of ``none``.

  ``rule="argmax"``: every edge takes its most probable operation, ``none``
  included, i.e. the path that a hard (single-path) sample most likely runs
  (the GDAS reading). A node keeps every edge whose mode is not ``none``, so
  nodes may have any number of inputs, and a node whose edges are all
  ``none`` outputs zeros, as in the supernet. Nodes with fewer edges than
  the most connected one are padded with ``("none", 0)`` edges (no weights,
  zero output) so that the genotype keeps one ``edges_per_node`` (the
  ``edges_per_node`` argument is then unused).

  In both rules all nodes are concatenated into the output.

  Args:
    arch_logits: ``{"normal": [E, O], "reduce": [E, O]}`` logits.
    primitives: the O operation names, in the logits' order.
    num_nodes: intermediate nodes per cell (E = sum of 2 + i).
    edges_per_node: edges a node keeps under the DARTS rule.
    rule: "darts" or "argmax".
  """
  primitives = tuple(primitives)
  if rule not in GENOTYPE_RULES:
    raise ConfigError(f"unknown genotype rule {rule!r}; expected one of "
                      f"{GENOTYPE_RULES}")
  if rule == "darts" and all(p == "none" for p in primitives):
    raise ConfigError("cannot derive a genotype: every primitive is 'none'")
  node_edges = {}
  for cell_type in ("normal", "reduce"):
    probs = host_probabilities(arch_logits[cell_type])
    expected = (sum(2 + i for i in range(num_nodes)), len(primitives))
    if probs.shape != expected:
      raise ConfigError(f"arch_logits[{cell_type!r}] has shape {probs.shape},"
                        f" expected {expected}")
    nodes, start = [], 0
    for node in range(num_nodes):
      node_probs = probs[start:start + 2 + node]
      nodes.append(
          _darts_node_edges(node_probs, primitives, edges_per_node)
          if rule == "darts" else _argmax_node_edges(node_probs, primitives))
      start += 2 + node
    node_edges[cell_type] = nodes
  width = max(1, max(len(edges) for nodes in node_edges.values()
                     for edges in nodes))
  cells = {cell_type: tuple(edge for edges in nodes
                            for edge in edges + [("none", 0)] * (
                                width - len(edges)))
           for cell_type, nodes in node_edges.items()}
  concat = tuple(range(2, 2 + num_nodes))
  return Genotype(normal=cells["normal"], normal_concat=concat,
                  reduce=cells["reduce"], reduce_concat=concat,
                  edges_per_node=width)


def genotype_of(spec: SupernetSpec, arch_logits: Mapping[str, Any],
                rule: str = "darts") -> Genotype:
  """:func:`derive_genotype` of logits over ``spec``'s operations and nodes."""
  return derive_genotype(arch_logits, spec.primitives, spec.num_nodes,
                         rule=rule)


def build_genotype_network(genotype: Genotype, *, num_classes: int,
                           in_channels: int, channels: int, num_cells: int,
                           stem_multiplier: int = 3,
                           reduction_cells: Sequence[int] | None = None,
                           depthwise_impl: str = "auto",
                           channel_scale: int = 2,
                           running_stats: bool = True,
                           rngs: nnx.Rngs) -> CellNetwork:
  """The standalone network of ``genotype``: one fixed operation per edge.

  ``reduction_cells=None`` uses the DARTS positions (as ``SupernetSpec``).
  With ``running_stats`` (the default) every normalisation keeps population
  statistics as it trains (``ops.Normalization``), and
  :func:`base.standalone.predict_labels` classifies with them, each image
  on its own; ``running_stats=False`` normalises with the statistics of
  whatever batch it is given, as the supernet does.
  """
  if reduction_cells is None:
    reduction_cells = darts_reduction_cells(num_cells)

  def make_cell(index, c_pp, c_p, c, reduction, reduction_prev):
    del index
    cell_type = "reduce" if reduction else "normal"
    node_edges = genotype.node_edges(cell_type)
    flat_ops = [op for edges in node_edges for op, _ in edges]

    def make_edge(edge, stride):
      return ops.make_op(flat_ops[edge], c, stride, rngs,
                         depthwise_impl=depthwise_impl,
                         running_stats=running_stats)

    concat = [i - 2 for i in getattr(genotype, f"{cell_type}_concat")]
    return Cell([[j for _, j in edges] for edges in node_edges], make_edge,
                c_pp, c_p, c, reduction, reduction_prev, rngs, concat=concat,
                running_stats=running_stats)

  return CellNetwork(num_classes=num_classes, in_channels=in_channels,
                     channels=channels, num_cells=num_cells,
                     stem_multiplier=stem_multiplier,
                     reduction_cells=tuple(reduction_cells),
                     make_cell=make_cell, rngs=rngs,
                     channel_scale=channel_scale, running_stats=running_stats)


def op_param_count(name: str, channels: int, stride: int) -> int:
  """Weights of one candidate operation, computed from its definition."""
  c = channels
  if name.startswith("sep_conv_"):
    k = int(name.split("x")[-1])
    return 2 * (k * k * c + c * c)
  if name.startswith("dil_conv_") or name == "conv_3x3":
    k = int(name.split("x")[-1])
    return k * k * c + c * c
  if name == "skip_connect":
    return 0 if stride == 1 else 2 * c * (c // 2)
  if name == "conv_1x5_5x1":
    return 10 * c * c
  if name in ("none", "max_pool_3x3", "avg_pool_3x3"):
    return 0
  raise ConfigError(f"no parameter formula for operation {name!r}")


def genotype_param_count(genotype: Genotype, *, num_classes: int,
                         in_channels: int, channels: int, num_cells: int,
                         stem_multiplier: int = 3,
                         reduction_cells: Sequence[int] | None = None,
                         channel_scale: int = 2) -> int:
  """Weights of the genotype's standalone network, counted analytically.

  Independent of the NNX modules, so a test can check that the network built
  by :func:`build_genotype_network` has exactly the weights its genotype says.
  """
  if reduction_cells is None:
    reduction_cells = darts_reduction_cells(num_cells)
  stem = stem_multiplier * channels
  total = 9 * in_channels * stem
  c_pp, c_p, c = stem, stem, channels
  for index in range(num_cells):
    reduction = index in reduction_cells
    c = channel_scale * c if reduction else c
    cell_type = "reduce" if reduction else "normal"
    # preprocess0 (a 1x1 conv, or a factorized reduce with as many weights)
    # and preprocess1 (a 1x1 conv).
    total += c_pp * c + c_p * c
    for op, j in getattr(genotype, cell_type):
      total += op_param_count(op, c, 2 if reduction and j < 2 else 1)
    c_pp, c_p = c_p, len(getattr(genotype, f"{cell_type}_concat")) * c
  return total + c_p * num_classes + num_classes
