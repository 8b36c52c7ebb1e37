"""The DARTS-style cell supernet, in Flax NNX, and pure functions around it.

A network is a 3x3 conv stem, ``num_cells`` cells and a linear classifier on
globally pooled features. Each cell takes the outputs of the two previous cells,
preprocesses them to ``C`` channels, and computes ``num_nodes`` intermediate
nodes; node ``i`` sums one edge from every earlier state (the two inputs and
nodes ``0..i-1``), and the cell outputs the concatenation of its nodes. Cells at
``reduction_cells`` halve the resolution and double ``C`` (DARTS).

In the *supernet* every edge is a :class:`MixedOp`: the weighted sum of all
candidate operations, with weights given per call (a relaxed or hard sample of
the architecture distribution), shape ``[num_edges, num_ops]`` for each of the
two cell types (``"normal"`` and ``"reduce"``). The standalone network of a
derived genotype (``base.genotype``) reuses :class:`Cell` and
:class:`CellNetwork` with one fixed operation per edge.

The meta-learning code never holds a module: it holds the weights as a plain
nested dict (``init_supernet_weights``) and calls :func:`apply_supernet`, which
merges them with a cached ``GraphDef`` inside the traced function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from base import ops
from base import single_path as single_path_lib
from base.errors import ConfigError

CELL_TYPES = ("normal", "reduce")
Weights = dict[str, Any]  # nested dict of arrays (nnx pure state dict)
ArchWeights = Mapping[str, jax.Array]  # {"normal": [E, O], "reduce": [E, O]}
# Static per cell type, edge and op: False = pruned, never computed.
OpMask = Mapping[str, Sequence[Sequence[bool]]]


def darts_reduction_cells(num_cells: int) -> tuple[int, ...]:
  """DARTS' reduction cells: at 1/3 and 2/3 of the depth (none below 3)."""
  if num_cells < 3:
    return ()
  default = sorted({num_cells // 3, 2 * num_cells // 3})
  return tuple(i for i in default if 0 < i < num_cells)


@dataclasses.dataclass(frozen=True)
class SupernetSpec:
  """Everything needed to rebuild a supernet; hashable, saved with a prior.

  Attributes:
    num_classes: outputs of the classifier (the N of N-way tasks).
    in_channels: image channels (1 grayscale, 3 RGB).
    channels: C, channels of each edge in the first cells.
    num_cells: number of cells.
    num_nodes: intermediate nodes per cell.
    stem_multiplier: stem outputs ``stem_multiplier * channels`` channels.
    primitives: candidate operations on every edge (names in ``ops.OPS``).
    reduction_cells: indices of reduction cells; empty tuple for none,
      ``None`` for the DARTS default (``num_cells // 3`` and ``2 * num_cells // 3``).
    depthwise_impl: "auto", "conv" or "shifts" (same parameters and result).
    channel_scale: C is multiplied by this at every reduction cell (DARTS:
      2; MetaNAS's few-shot space keeps 28 channels throughout: 1).
  """
  num_classes: int
  in_channels: int = 1
  channels: int = 16
  num_cells: int = 5
  num_nodes: int = 4
  stem_multiplier: int = 3
  primitives: tuple[str, ...] = ops.DARTS_PRIMITIVES
  reduction_cells: tuple[int, ...] | None = None
  depthwise_impl: str = "auto"
  channel_scale: int = 2

  def __post_init__(self):
    object.__setattr__(self, "primitives", tuple(self.primitives))
    if self.reduction_cells is None:
      object.__setattr__(self, "reduction_cells",
                         darts_reduction_cells(self.num_cells))
    else:
      object.__setattr__(self, "reduction_cells",
                         tuple(int(i) for i in self.reduction_cells))
    ops.check_primitives(self.primitives)
    for name in ("num_classes", "in_channels", "channels", "num_cells",
                 "num_nodes", "stem_multiplier", "channel_scale"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ConfigError(f"supernet.{name} must be a positive integer, "
                          f"got {value!r}")
    bad = [i for i in self.reduction_cells if not 0 <= i < self.num_cells]
    if bad:
      raise ConfigError(f"supernet.reduction_cells {bad} outside "
                        f"0..{self.num_cells - 1}")
    ops.resolve_depthwise_impl(self.depthwise_impl)

  @property
  def num_edges(self) -> int:
    return num_cell_edges(self.num_nodes)

  @property
  def num_ops(self) -> int:
    return len(self.primitives)

  @property
  def arch_shape(self) -> tuple[int, int]:
    return (self.num_edges, self.num_ops)

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly dict; ``from_dict(to_dict())`` gives an equal spec."""
    d = dataclasses.asdict(self)
    d["primitives"] = list(self.primitives)
    d["reduction_cells"] = list(self.reduction_cells)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "SupernetSpec":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ConfigError(f"unknown supernet field(s) {unknown}; "
                        f"expected some of {sorted(fields)}")
    d = dict(d)
    for key in ("primitives", "reduction_cells"):
      if d.get(key) is not None:
        d[key] = tuple(d[key])
    return cls(**d)


def num_cell_edges(num_nodes: int) -> int:
  """Edges of a supernet cell with ``num_nodes`` nodes: node i has 2 + i."""
  return sum(2 + i for i in range(num_nodes))


def all_node_inputs(num_nodes: int) -> list[list[int]]:
  """Inputs of every node in a supernet cell: node i reads states 0..i+1."""
  return [list(range(2 + i)) for i in range(num_nodes)]


class Cell(nnx.Module):
  """A cell: two preprocessed inputs, nodes that sum edges, concat of nodes.

  Args:
    node_inputs: for each node, the state index each of its edges reads
      (0, 1 = the preprocessed inputs, 2 + j = node j).
    make_edge: ``(edge_index, stride) -> module``; a supernet edge is a
      MixedOp called as ``edge(x, weights)``, a fixed edge as ``edge(x)``.
    concat: node indices whose outputs are concatenated (default: all).
    running_stats: the input preprocessing keeps population statistics
      (``ops.Normalization``; standalone networks), the edges' own are
      ``make_edge``'s business.
  """

  def __init__(self, node_inputs: Sequence[Sequence[int]],
               make_edge: Callable[[int, int], nnx.Module],
               channels_prev_prev: int, channels_prev: int, channels: int,
               reduction: bool, reduction_prev: bool, rngs: nnx.Rngs,
               concat: Sequence[int] | None = None,
               running_stats: bool = False):
    self.node_inputs = tuple(tuple(int(j) for j in inputs)
                             for inputs in node_inputs)
    self.concat = tuple(range(len(self.node_inputs)) if concat is None
                        else concat)
    self.reduction = reduction
    preprocess0 = ops.FactorizedReduce if reduction_prev else ops.ReLUConvNorm
    self.preprocess0 = preprocess0(channels_prev_prev, channels, rngs,
                                   running_stats=running_stats)
    self.preprocess1 = ops.ReLUConvNorm(channels_prev, channels, rngs,
                                        running_stats=running_stats)
    edges = []
    for inputs in self.node_inputs:
      for j in inputs:
        stride = 2 if reduction and j < 2 else 1
        edges.append(make_edge(len(edges), stride))
    self.edges = nnx.List(edges)

  @property
  def out_channels_multiplier(self) -> int:
    return len(self.concat)

  def __call__(self, s0: jax.Array, s1: jax.Array,
               edge_weights: jax.Array | None = None,
               single_path: bool = False,
               op_mask: Sequence[Sequence[bool]] | None = None) -> jax.Array:
    states = [self.preprocess0(s0), self.preprocess1(s1)]
    edge = 0
    for inputs in self.node_inputs:
      total = None
      for j in inputs:
        module = self.edges[edge]
        out = (module(states[j]) if edge_weights is None
               else module(states[j], edge_weights[edge], single_path,
                           None if op_mask is None else op_mask[edge]))
        total = out if total is None else total + out
        edge += 1
      states.append(total)
    return jnp.concatenate([states[2 + i] for i in self.concat], axis=-1)


class CellNetwork(nnx.Module):
  """Stem -> cells -> global average pool -> linear classifier.

  Args:
    make_cell: ``(index, c_prev_prev, c_prev, c, reduction, reduction_prev)
      -> Cell``.
    channel_scale: C's factor at each reduction cell (2 in DARTS).
    running_stats: the stem's normalisation keeps population statistics
      (``ops.Normalization``; standalone networks), the cells' are
      ``make_cell``'s business.
  """

  def __init__(self, *, num_classes: int, in_channels: int, channels: int,
               num_cells: int, stem_multiplier: int,
               reduction_cells: Sequence[int],
               make_cell: Callable[..., Cell], rngs: nnx.Rngs,
               channel_scale: int = 2, running_stats: bool = False):
    stem_channels = stem_multiplier * channels
    self.stem = ops.Conv(in_channels, stem_channels, (3, 3), 1, rngs)
    self.stem_norm = ops.Normalization(stem_channels,
                                       running_stats=running_stats)
    c_prev_prev, c_prev, c = stem_channels, stem_channels, channels
    cells, reduction_prev = [], False
    for index in range(num_cells):
      reduction = index in reduction_cells
      if reduction:
        c *= channel_scale
      cell = make_cell(index, c_prev_prev, c_prev, c, reduction,
                       reduction_prev)
      cells.append(cell)
      reduction_prev = reduction
      c_prev_prev, c_prev = c_prev, cell.out_channels_multiplier * c
    self.cells = nnx.List(cells)
    self.classifier = nnx.Linear(c_prev, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, arch_weights: ArchWeights | None = None,
               single_path: bool = False,
               op_mask: OpMask | None = None) -> jax.Array:
    s0 = s1 = self.stem_norm(self.stem(x))
    for cell in self.cells:
      weights = mask = None
      cell_type = "reduce" if cell.reduction else "normal"
      if arch_weights is not None:
        weights = arch_weights[cell_type]
      if op_mask is not None:
        mask = op_mask[cell_type]
      s0, s1 = s1, cell(s0, s1, weights, single_path, mask)
    pooled = jnp.mean(s1, axis=(1, 2))
    return self.classifier(pooled.astype(jnp.float32))


class MixedOp(nnx.Module):
  """All candidate operations of one edge, summed with per-call weights.

  ``none`` is never computed: its output is zero, so it adds nothing to the
  sum and its weight's gradient is zero.
  """

  def __init__(self, channels: int, stride: int, primitives: Sequence[str],
               rngs: nnx.Rngs, depthwise_impl: str):
    self.primitives = tuple(primitives)
    self.stride = stride
    self.ops = nnx.List([
        ops.make_op(name, channels, stride, rngs,
                    depthwise_impl=depthwise_impl)
        for name in self.primitives])

  def __call__(self, x: jax.Array, weights: jax.Array,
               single_path: bool = False,
               keep: Sequence[bool] | None = None) -> jax.Array:
    """``sum_k weights[k] * op_k(x)``; with ``single_path`` only the op of
    ``argmax(weights)`` runs (``weights`` must then be a hard sample);
    ops whose ``keep`` flag is False (pruned, static) are never computed."""
    if single_path:
      return self._single_path(x, weights)
    total = None
    for k, name in enumerate(self.primitives):
      if name == "none" or (keep is not None and not keep[k]):
        continue
      term = weights[k].astype(x.dtype) * self.ops[k](x)
      total = term if total is None else total + term
    if total is None:
      return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])
    return total


  def _single_path(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    index, weight = single_path_lib.picked_op(weights)
    splits = [nnx.split(op) for op in self.ops]
    graphdefs = [graphdef for graphdef, _ in splits]
    states = tuple(state for _, state in splits)

    def branch(k):
      def run(states, x):
        return nnx.merge(graphdefs[k], states[k])(x)
      return run

    out = single_path_lib.remat_switch(
        index, [branch(k) for k in range(len(self.ops))], states, x)
    return weight.astype(x.dtype) * out


def build_supernet(spec: SupernetSpec, rngs: nnx.Rngs) -> CellNetwork:
  """The supernet module for ``spec``, with freshly initialised weights."""

  node_inputs = all_node_inputs(spec.num_nodes)

  def make_cell(index, c_pp, c_p, c, reduction, reduction_prev):
    del index

    def make_edge(edge, stride):
      del edge
      return MixedOp(c, stride, spec.primitives, rngs, spec.depthwise_impl)

    return Cell(node_inputs, make_edge, c_pp, c_p, c, reduction,
                reduction_prev, rngs)

  return CellNetwork(num_classes=spec.num_classes,
                     in_channels=spec.in_channels, channels=spec.channels,
                     num_cells=spec.num_cells,
                     stem_multiplier=spec.stem_multiplier,
                     reduction_cells=spec.reduction_cells,
                     make_cell=make_cell, rngs=rngs,
                     channel_scale=spec.channel_scale)


@functools.lru_cache(maxsize=32)
def supernet_graphdef(spec: SupernetSpec) -> nnx.GraphDef:
  """The (cached) static structure of the supernet for ``spec``."""
  abstract = nnx.eval_shape(lambda: build_supernet(spec, nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract)
  return graphdef


def init_supernet_weights(spec: SupernetSpec, key: jax.Array) -> Weights:
  """Fresh supernet weights as a plain nested dict of arrays."""
  model = build_supernet(spec, nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


COMPUTE_DTYPES = ("float32", "bfloat16")


def apply_supernet(spec: SupernetSpec, weights: Weights,
                   arch_weights: ArchWeights, x: jax.Array, *,
                   single_path: bool = False,
                   compute_dtype: str = "float32",
                   op_mask: OpMask | None = None) -> jax.Array:
  """Logits ``[batch, num_classes]`` of the supernet for images ``x`` (NHWC).

  Pure: ``weights`` is the nested dict of :func:`init_supernet_weights` and
  ``arch_weights`` holds one ``[num_edges, num_ops]`` array per cell type.

  Args:
    single_path: ``arch_weights`` is a hard sample; every edge computes only
      its picked op (``base.single_path``).
    compute_dtype: "bfloat16" runs the network on bf16 copies of the weights
      and images (mixed precision: gradients flow back to the float32
      master weights; normalisation statistics and logits stay float32).
    op_mask: static ``{cell type: [[keep op k of edge e]]}``; pruned ops are
      left out of the program (as if their weight were zero).
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"unknown compute_dtype {compute_dtype!r}; expected "
                      f"one of {COMPUTE_DTYPES}")
  if compute_dtype != "float32":
    dtype = jnp.dtype(compute_dtype)
    weights = jax.tree.map(lambda w: w.astype(dtype), weights)
    x = x.astype(dtype)
  model = nnx.merge(supernet_graphdef(spec), weights)
  return model(x, arch_weights, single_path, op_mask).astype(jnp.float32)


def init_arch_logits(spec: SupernetSpec) -> dict[str, jax.Array]:
  """Uniform architecture logits (zeros), one ``[E, O]`` array per cell type."""
  return {name: jnp.zeros(spec.arch_shape, jnp.float32) for name in CELL_TYPES}


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (or an NNX module's params)."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(tree)))
