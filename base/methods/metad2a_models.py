"""The networks of MetaD2A (Lee et al., ICLR 2021), in Flax NNX.

MetaD2A ("Rapid Neural Architecture Search by Learning to Generate Graphs from
Datasets") embeds a data set with a set encoder, generates architectures
conditioned on the embedding, and ranks them with a dataset-conditioned
performance predictor. This module holds its four networks and the pure
functions around them; ``base.methods.metad2a`` builds the database, trains
them and selects architectures.

* :class:`FeatureExtractor`: a *fixed, randomly initialised* two-layer conv
  net mapping each image to a feature vector. The paper uses a ResNet-18
  pre-trained on ImageNet; none is available offline and it would dwarf the
  supernets here. Random conv features are informative (Jarrett et al. 2009,
  Saxe et al. 2011) and, being fixed, make the set encoder's inputs a
  function of the data alone, so the database never has to be re-embedded.
  Each feature vector is standardised per image (no batch statistics), so an
  image's features do not depend on the other images of its set.
* :class:`SetEncoder`: the paper's intra-class then inter-class set pooling.
  Intra-class pooling is the class *prototype* (mean feature per class,
  :func:`class_prototypes`), which is invariant to the order of the support
  examples; inter-class pooling is a DeepSets / Set-Transformer-lite block:
  a per-prototype MLP, then the concatenation of a mean pool and an
  attention pool (a learned scoring vector, softmax over the prototypes),
  then an MLP to the mean and log-std of a Gaussian over the dataset
  embedding ``z`` (the cross-modal VAE's ``q(z | D)``). Both pools are
  symmetric functions, so ``z`` is invariant to the class order too (and
  to how the labels are assigned), and any number of classes fits.
* :class:`Generator`: ``z`` -> per cell type, per edge, logits over the
  operations ``[2, E, O]`` and an edge score ``[2, E]``. MetaD2A decodes a
  graph with a GRU-based graph VAE decoder; here the decoder is amortised
  (an MLP emits every edge's categorical at once), which suffices for a
  DARTS cell whose topology is fixed up to the kept edges (see
  :func:`arch_log_prob` for the distribution this defines).
* :class:`Predictor`: ``(z, architecture encoding) -> accuracy``; the
  architecture goes through an MLP, ``z`` through a linear map, and the head
  reads their concatenation and elementwise product (so the predicted effect
  of an operation can depend on the data set).

Architectures are encoded as ``[2, E, O]`` arrays (normal cell, reduction
cell): a kept edge's row is the one-hot of its operation, a dropped edge's
row is zero. That is exactly what ``base.supernet.apply_supernet`` takes as
``arch_weights`` (a zero row adds nothing, like ``none``), and it is a DARTS
genotype: every node keeps :data:`EDGES_PER_NODE` incoming edges, each with
one operation other than ``none`` (``none`` is never chosen for a kept edge:
the genotype rule of ``base.genotype.derive_genotype`` skips it too).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from base import ops
from base.errors import ConfigError
from base.genotype import Genotype
from base.supernet import CELL_TYPES, num_cell_edges

Params = dict[str, Any]  # nested dict of arrays (nnx pure state dict)

#: Incoming edges every node keeps (as in DARTS genotypes).
EDGES_PER_NODE = 2
#: log-std of q(z | D) is clipped to this range (numerical safety).
LOG_STD_RANGE = (-6.0, 2.0)


# ----------------------------------------------------------------------------
# The architecture space.


def allowed_ops(primitives: Sequence[str]) -> np.ndarray:
  """``[O]`` bool mask of the operations a kept edge may run (not ``none``)."""
  mask = np.array([p != "none" for p in primitives])
  if not mask.any():
    raise ConfigError("MetaD2A needs at least one primitive other than 'none'")
  return mask


def node_edge_ranges(num_nodes: int) -> list[tuple[int, int]]:
  """``(first edge, number of inputs)`` of every node of a cell."""
  ranges, start = [], 0
  for node in range(num_nodes):
    ranges.append((start, 2 + node))
    start += 2 + node
  return ranges


def node_pairs(num_nodes: int) -> list[np.ndarray]:
  """For every node, the ``[P, 2]`` global edge indices of its edge pairs."""
  pairs = []
  for start, inputs in node_edge_ranges(num_nodes):
    combos = itertools.combinations(range(inputs), EDGES_PER_NODE)
    pairs.append(np.array([[start + a, start + b] for a, b in combos],
                          np.int32))
  return pairs


def random_archs(rng: np.random.Generator, count: int, num_nodes: int,
                 primitives: Sequence[str]) -> np.ndarray:
  """``[count, 2, E, O]`` uniformly random discrete architectures.

  Per node, a uniformly random pair of incoming edges is kept; each kept edge
  gets a uniformly random operation other than ``none``.
  """
  allowed = np.flatnonzero(allowed_ops(primitives))
  num_edges = num_cell_edges(num_nodes)
  archs = np.zeros((count, len(CELL_TYPES), num_edges, len(primitives)),
                   np.float32)
  pairs = node_pairs(num_nodes)
  for i in range(count):
    for c in range(len(CELL_TYPES)):
      for node_pairs_ in pairs:
        for edge in node_pairs_[rng.integers(len(node_pairs_))]:
          archs[i, c, edge, allowed[rng.integers(len(allowed))]] = 1.0
  return archs


def check_arch(arch: np.ndarray, num_nodes: int,
               primitives: Sequence[str]) -> None:
  """Raises ConfigError unless ``arch`` ``[2, E, O]`` is a valid encoding."""
  arch = np.asarray(arch)
  num_edges = num_cell_edges(num_nodes)
  shape = (len(CELL_TYPES), num_edges, len(primitives))
  if arch.shape != shape:
    raise ConfigError(f"architecture encoding has shape {arch.shape}, "
                      f"expected {shape}")
  if not np.all((arch == 0) | (arch == 1)):
    raise ConfigError("architecture encoding must be 0/1")
  rows = arch.sum(-1)
  if np.any(rows > 1):
    raise ConfigError("architecture encoding has an edge with two operations")
  if np.any(arch[..., ~allowed_ops(primitives)] != 0):
    raise ConfigError("architecture encoding keeps an edge running 'none'")
  for start, inputs in node_edge_ranges(num_nodes):
    kept = rows[:, start:start + inputs].sum(-1)
    if np.any(kept != min(EDGES_PER_NODE, inputs)):
      raise ConfigError(f"architecture encoding keeps {kept.tolist()} edges "
                        f"of a node, expected {EDGES_PER_NODE}")


def arch_to_genotype(arch: np.ndarray, primitives: Sequence[str],
                     num_nodes: int) -> Genotype:
  """The genotype of an encoding, read off directly (kept edges, their ops)."""
  arch = np.asarray(arch)
  check_arch(arch, num_nodes, primitives)
  cells = {}
  for c, cell_type in enumerate(CELL_TYPES):
    edges = []
    for start, inputs in node_edge_ranges(num_nodes):
      for j in range(inputs):
        row = arch[c, start + j]
        if row.any():
          edges.append((primitives[int(row.argmax())], j))
    cells[cell_type] = tuple(edges)
  concat = tuple(range(2, 2 + num_nodes))
  return Genotype(normal=cells["normal"], normal_concat=concat,
                  reduce=cells["reduce"], reduce_concat=concat)


def arch_weights(arch: jax.Array) -> dict[str, jax.Array]:
  """``[2, E, O]`` encoding -> the supernet's ``{"normal", "reduce"}`` dict."""
  return {name: arch[c] for c, name in enumerate(CELL_TYPES)}


# ----------------------------------------------------------------------------
# Networks.


class FeatureExtractor(nnx.Module):
  """Fixed random features: [conv3x3 -> ReLU -> avg-pool 2x2] x 2 -> mean.

  Args:
    in_channels: image channels.
    channels: conv channels = feature dimension.
    rngs: initialises the (He normal) kernels; they are never trained.
  """

  def __init__(self, in_channels: int, channels: int, rngs: nnx.Rngs):
    self.conv1 = ops.Conv(in_channels, channels, (3, 3), 1, rngs)
    self.conv2 = ops.Conv(channels, channels, (3, 3), 1, rngs)

  @staticmethod
  def _pool(x: jax.Array) -> jax.Array:
    if min(x.shape[1:3]) < 2:
      return x
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1),
                                 (1, 2, 2, 1), "VALID") / 4.0

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, H, W, C]`` images -> ``[n, channels]`` standardised features."""
    h = self._pool(jax.nn.relu(self.conv1(x.astype(jnp.float32))))
    h = self._pool(jax.nn.relu(self.conv2(h)))
    h = jnp.mean(h, axis=(1, 2))
    h = h - jnp.mean(h, axis=-1, keepdims=True)
    return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)


class MLP(nnx.Module):
  """Linear layers with ReLU between them (none after the last)."""

  def __init__(self, sizes: Sequence[int], rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x


class SetEncoder(nnx.Module):
  """Prototypes ``[N, F]`` -> ``(mean, log_std)`` of q(z | D), each ``[D]``.

  phi (per prototype) -> [mean pool, attention pool] -> rho.
  """

  def __init__(self, feature_dim: int, hidden: int, embed_dim: int,
               rngs: nnx.Rngs):
    self.phi = MLP((feature_dim, hidden, hidden), rngs)
    self.score = nnx.Linear(hidden, 1, rngs=rngs)
    self.rho = MLP((2 * hidden, hidden, 2 * embed_dim), rngs)
    self.embed_dim = embed_dim

  def __call__(self, prototypes: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = jax.nn.relu(self.phi(prototypes))  # [N, hidden]
    attention = jax.nn.softmax(self.score(h)[:, 0])  # [N]
    pooled = jnp.concatenate([jnp.mean(h, 0), attention @ h])
    out = self.rho(pooled)
    mean, log_std = out[:self.embed_dim], out[self.embed_dim:]
    return mean, jnp.clip(log_std, *LOG_STD_RANGE)


class Generator(nnx.Module):
  """``z`` -> op logits ``[2, E, O]`` and edge scores ``[2, E]``."""

  def __init__(self, embed_dim: int, hidden: int, num_edges: int,
               num_ops: int, rngs: nnx.Rngs):
    self.shape = (len(CELL_TYPES), num_edges, num_ops)
    size = int(np.prod(self.shape))
    self.mlp = MLP((embed_dim, hidden, hidden, size + size // num_ops), rngs)

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    out = self.mlp(z)
    size = int(np.prod(self.shape))
    return out[:size].reshape(self.shape), out[size:].reshape(self.shape[:2])


class Predictor(nnx.Module):
  """``(z [D], arch [2, E, O])`` -> predicted accuracy (a scalar)."""

  def __init__(self, embed_dim: int, hidden: int, arch_dim: int,
               rngs: nnx.Rngs):
    self.arch_mlp = MLP((arch_dim, hidden, hidden), rngs)
    self.z_proj = nnx.Linear(embed_dim, hidden, rngs=rngs)
    self.head = MLP((3 * hidden, hidden, 1), rngs)

  def __call__(self, z: jax.Array, arch: jax.Array) -> jax.Array:
    a = jax.nn.relu(self.arch_mlp(arch.reshape(-1)))
    d = self.z_proj(z)
    return self.head(jnp.concatenate([a, d, a * d]))[0]


# ----------------------------------------------------------------------------
# Pure functions: weights are plain nested dicts merged with cached graphdefs.


@functools.lru_cache(maxsize=64)
def _graphdef(kind: str, *dims: int) -> nnx.GraphDef:
  builders = {"extractor": FeatureExtractor, "encoder": SetEncoder,
              "generator": Generator, "predictor": Predictor}
  abstract = nnx.eval_shape(lambda: builders[kind](*dims, rngs=nnx.Rngs(0)))
  return nnx.split(abstract)[0]


def init_params(kind: str, dims: tuple[int, ...], key: jax.Array) -> Params:
  """Fresh weights of network ``kind`` (``"extractor"``, ``"encoder"``,
  ``"generator"``, ``"predictor"``) built with constructor ``dims``."""
  builders = {"extractor": FeatureExtractor, "encoder": SetEncoder,
              "generator": Generator, "predictor": Predictor}
  model = builders[kind](*dims, rngs=nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def apply(kind: str, dims: tuple[int, ...], params: Params, *args) -> Any:
  """Calls network ``kind`` (built with ``dims``) with ``params`` on args."""
  return nnx.merge(_graphdef(kind, *dims), params)(*args)


def class_prototypes(features: jax.Array, labels: jax.Array,
                     ways: int) -> jax.Array:
  """``[N, F]`` mean feature of each class (intra-class set pooling).

  A class without examples gets a zero prototype.
  """
  one_hot = jax.nn.one_hot(labels, ways, dtype=features.dtype)  # [n, N]
  counts = jnp.maximum(one_hot.sum(0), 1.0)
  return (one_hot.T @ features) / counts[:, None]


def masked_op_log_probs(op_logits: jax.Array,
                        primitives: Sequence[str]) -> jax.Array:
  """Log-softmax of ``[..., O]`` op logits over the ops other than ``none``."""
  mask = jnp.asarray(allowed_ops(primitives))
  return jax.nn.log_softmax(jnp.where(mask, op_logits, -1e9), axis=-1)


def pair_log_probs(edge_scores: jax.Array, num_nodes: int) -> list[jax.Array]:
  """Per node, ``[P]`` log-probabilities of its edge pairs.

  ``p({a, b}) ∝ exp(s_a + s_b)`` over the node's pairs of incoming edges
  (``edge_scores`` ``[E]``): a pairwise-factorised choice of the two kept
  edges, normalised exactly by enumerating the (few) pairs.
  """
  out = []
  for pairs in node_pairs(num_nodes):
    logits = edge_scores[pairs[:, 0]] + edge_scores[pairs[:, 1]]
    out.append(jax.nn.log_softmax(logits))
  return out


def arch_log_prob(op_logits: jax.Array, edge_scores: jax.Array,
                  arch: jax.Array, primitives: Sequence[str],
                  num_nodes: int) -> jax.Array:
  """log p(arch | generator output) for one ``[2, E, O]`` encoding.

  p(arch) = prod over cell types and nodes of p(kept pair) times the product
  over kept edges of p(op | edge); dropped edges contribute nothing else.
  """
  op_term = jnp.sum(arch * masked_op_log_probs(op_logits, primitives))
  kept = arch.sum(-1)  # [2, E]
  pair_term = 0.0
  for c in range(len(CELL_TYPES)):
    for pairs, log_p in zip(node_pairs(num_nodes),
                            pair_log_probs(edge_scores[c], num_nodes)):
      chosen = kept[c, pairs[:, 0]] * kept[c, pairs[:, 1]]  # [P] one-hot
      pair_term = pair_term + jnp.sum(chosen * log_p)
  return op_term + pair_term


def sample_arch(key: jax.Array, op_logits: jax.Array, edge_scores: jax.Array,
                primitives: Sequence[str], num_nodes: int) -> jax.Array:
  """One ``[2, E, O]`` encoding drawn from the generator's distribution."""
  op_key, pair_key = jax.random.split(key)
  num_ops = op_logits.shape[-1]
  ops_idx = jax.random.categorical(
      op_key, masked_op_log_probs(op_logits, primitives), axis=-1)  # [2, E]
  one_hot = jax.nn.one_hot(ops_idx, num_ops, dtype=jnp.float32)
  kept = jnp.zeros(edge_scores.shape, jnp.float32)
  pair_keys = jax.random.split(pair_key, len(CELL_TYPES) * num_nodes)
  for c in range(len(CELL_TYPES)):
    all_pairs = node_pairs(num_nodes)
    for n, (pairs, log_p) in enumerate(zip(
        all_pairs, pair_log_probs(edge_scores[c], num_nodes))):
      choice = jax.random.categorical(pair_keys[c * num_nodes + n], log_p)
      chosen = jnp.asarray(pairs)[choice]
      kept = kept.at[c, chosen].set(1.0)
  return one_hot * kept[..., None]
