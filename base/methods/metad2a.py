"""MetaD2A: architectures generated from data sets, ranked by a predictor.

Lee, Hyun, Jeong & Hwang, "Rapid Neural Architecture Search by Learning to
Generate Graphs from Datasets" (ICLR 2021). MetaD2A meta-learns, from a
database of (data set, architecture, accuracy) triples, a set encoder that
embeds a data set, a generator of architectures conditioned on the
embedding, and a performance predictor; for a new data set it generates
candidates and keeps the one the predictor ranks best, *without training
anything on the new data set to choose it*. Here, in our search space
(``base.supernet``, networks in ``base.methods.metad2a_models``):

Database (:func:`build_database`). ``num_database_tasks`` meta-training
episodes; for each, ``archs_per_task`` uniformly random discrete
architectures (per node a random pair of kept edges, per kept edge a random
operation other than ``none``; ``metad2a_models.random_archs``), each
trained from one shared initialisation (``init_supernet_weights`` of the run
seed; never meta-learned, as MetaD2A trains every architecture from scratch)
on the episode's support set for ``train_steps`` plain SGD steps at
``train_lr``, with its query accuracy recorded. The subnet is the supernet
with one-hot ``arch_weights`` (zero rows for dropped edges), and the
architecture is a traced argument of one jitted training function, so every
architecture of a shape runs one compiled program. The database (support
images and labels, architectures, accuracies) is stored in the artifact, and
``reuse_database`` rebuilds only the networks from a stored one.

Training. The set encoder's inputs are class prototypes of fixed random conv
features (see ``metad2a_models``). The predictor and the generator each have
their own set encoder, as in the paper (trained jointly with them):

* predictor: MSE between predicted and measured accuracy over all database
  entries (:func:`predictor_loss`), full-batch Adam for
  ``predictor_epochs`` steps;
* generator: maximum likelihood of each task's best architectures
  (:func:`generator_loss`). The targets of a task are the architectures
  whose accuracy reaches its ``top_k``-th best (ties included, so equally
  good architectures share the weight evenly). MetaD2A's cross-modal VAE is
  kept in its simplest form: the set encoder outputs a Gaussian q(z | D),
  ``z`` is drawn by reparameterisation, and ``kl_weight`` times
  KL(q(z | D) || N(0, I)) is added; the graph decoder is simplified to the
  amortised per-edge categoricals of ``metad2a_models.Generator``.

Selection (:func:`select_architecture`). Embed the new support set, draw
``num_candidates`` architectures from the generator (each with its own
``z ~ q(z | D)``), score them with the predictor (at the mean embedding),
keep the best. This uses no training on the task. ``adapt_and_predict`` then
trains the chosen subnet from the shared initialisation on the support set
for ``train_steps`` steps (the budget the database measured, the only
training the evaluation needs to produce predictions) and predicts the query
labels; its genotype is read directly off the encoding
(``metad2a_models.arch_to_genotype``).

Choices the paper leaves open here: the shared initialisation and the
network initialisations come from the run seed (:func:`init_learner`, also
the untrained starting point); ``adapt_and_predict``'s ``seed`` seeds the
candidates' sampling, so a call is deterministic; the learner's
``parameters`` count the shared supernet initialisation (every chosen
subnet is cut from it) plus the selection networks, all held at test time;
``restrict_ways`` cuts only the shared initialisation's classifier, since
the set encoders pool over any number of class prototypes.

The artifact ``workdir/metad2a.msgpack`` (``base.serialization``: JSON
header with the supernet spec and this config, checksummed arrays, atomic
write) holds the shared initialisation, all network weights and the
database.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from base import config_utils, serialization
from base.errors import CheckpointError, ConfigError
from base.methods import metad2a_models as models
from base.methods.api import Method, TaskResult
from base.prior import restrict_classifier
from base.supernet import (CELL_TYPES, SupernetSpec, apply_supernet,
                           count_params, init_supernet_weights,
                           num_cell_edges)
from base.train import NonFiniteLossError, episode_rng

ARTIFACT_FILENAME = "metad2a.msgpack"
FORMAT = "base-metad2a"
FORMAT_VERSION = 1
NETWORKS = ("extractor", "predictor_encoder", "predictor",
            "generator_encoder", "generator")


@dataclasses.dataclass(frozen=True)
class MetaD2AConfig:
  """MetaD2A hyper-parameters (section ``config.metad2a``).

  Attributes:
    num_database_tasks: meta-training episodes in the database.
    archs_per_task: random architectures trained and measured per episode.
    train_steps: SGD steps training a subnet on a support set (database
      measurements and meta-test adaptation alike).
    train_lr: SGD rate of those steps.
    feature_channels: channels (= feature size) of the fixed random conv
      feature extractor.
    hidden: width of the set encoders', generator's and predictor's MLPs.
    embed_dim: size of the dataset embedding ``z``.
    top_k: the generator learns the architectures whose accuracy reaches a
      task's ``top_k``-th best.
    kl_weight: weight of KL(q(z | D) || N(0, I)) in the generator's loss
      (0: a deterministic embedding, i.e. no VAE term). 1 is the ELBO; with
      few database tasks a weak KL (1e-3, measured) lets ``z`` memorise each
      task's own best architectures, and the generator then puts less mass
      on the generally good architectures of a new data set than an
      untrained one.
    generator_epochs, generator_lr: full-batch Adam steps and rate for the
      generator and its set encoder.
    predictor_epochs, predictor_lr: the same for the predictor.
    num_candidates: architectures generated and ranked for a new task.
    reuse_database: reuse the database of an existing artifact in the
      workdir when it was built with the same spec, seed and database
      settings (only the networks are retrained).
  """
  num_database_tasks: int = 40
  archs_per_task: int = 16
  train_steps: int = 20
  train_lr: float = 0.5
  feature_channels: int = 32
  hidden: int = 64
  embed_dim: int = 16
  top_k: int = 2
  kl_weight: float = 1.0
  generator_epochs: int = 300
  generator_lr: float = 3e-3
  predictor_epochs: int = 300
  predictor_lr: float = 3e-3
  num_candidates: int = 32
  reuse_database: bool = False

  def __post_init__(self):
    for name, minimum in (("num_database_tasks", 1), ("archs_per_task", 2),
                          ("train_steps", 1), ("feature_channels", 1),
                          ("hidden", 1), ("embed_dim", 1), ("top_k", 1),
                          ("generator_epochs", 1), ("predictor_epochs", 1),
                          ("num_candidates", 1)):
      config_utils.check_int(f"metad2a.{name}", getattr(self, name), minimum)
    if self.top_k > self.archs_per_task:
      raise ConfigError(f"metad2a.top_k must be <= metad2a.archs_per_task "
                        f"({self.archs_per_task}), got {self.top_k}")
    for name in ("train_lr", "generator_lr", "predictor_lr"):
      config_utils.check_positive(f"metad2a.{name}", getattr(self, name))
    config_utils.check_nonnegative("metad2a.kl_weight", self.kl_weight)
    config_utils.check_bool("metad2a.reuse_database", self.reuse_database)


class Dims(NamedTuple):
  """The static shapes of MetaD2A's networks (hashable: a jit cache key)."""
  in_channels: int
  feature_dim: int
  hidden: int
  embed_dim: int
  num_nodes: int
  primitives: tuple[str, ...]

  @property
  def num_edges(self) -> int:
    return num_cell_edges(self.num_nodes)

  @property
  def num_ops(self) -> int:
    return len(self.primitives)

  @property
  def arch_shape(self) -> tuple[int, int, int]:
    return (len(CELL_TYPES), self.num_edges, self.num_ops)

  def network(self, name: str) -> tuple[str, tuple[int, ...]]:
    """``(kind, constructor dims)`` of network ``name`` (one of NETWORKS)."""
    if name == "extractor":
      return "extractor", (self.in_channels, self.feature_dim)
    if name.endswith("encoder"):
      return "encoder", (self.feature_dim, self.hidden, self.embed_dim)
    if name == "generator":
      return "generator", (self.embed_dim, self.hidden, self.num_edges,
                           self.num_ops)
    if name == "predictor":
      return "predictor", (self.embed_dim, self.hidden,
                           int(np.prod(self.arch_shape)))
    raise ConfigError(f"unknown MetaD2A network {name!r}")


def make_dims(spec: SupernetSpec, cfg: MetaD2AConfig) -> Dims:
  """The network shapes for a supernet ``spec`` and config ``cfg``."""
  models.allowed_ops(spec.primitives)  # at least one op other than none
  return Dims(spec.in_channels, cfg.feature_channels, cfg.hidden,
              cfg.embed_dim, spec.num_nodes, tuple(spec.primitives))


def init_networks(dims: Dims, key: jax.Array) -> dict[str, Any]:
  """Fresh weights of every network, ``{name: params}`` for NETWORKS."""
  keys = jax.random.split(key, len(NETWORKS))
  return {name: models.init_params(*dims.network(name), k)
          for name, k in zip(NETWORKS, keys)}


def _apply(dims: Dims, name: str, params: Any, *args) -> Any:
  return models.apply(*dims.network(name), params, *args)


# ----------------------------------------------------------------------------
# Training a subnet (the database's measurement and meta-test adaptation).


@functools.partial(jax.jit, static_argnames=("spec", "steps", "lr"))
def train_and_predict(weights: Any, arch: jax.Array, support_x: jax.Array,
                      support_y: jax.Array, query_x: jax.Array, *,
                      spec: SupernetSpec, steps: int, lr: float
                      ) -> tuple[jax.Array, jax.Array]:
  """Trains subnet ``arch`` from ``weights`` on the support set; predicts.

  ``steps`` plain SGD steps on the support set's mean cross-entropy
  (``lax.scan``) of the supernet with one-hot ``arch_weights``. ``arch`` is
  traced, so all architectures share one compiled program.

  Returns:
    ``(query logits [M, N], support accuracy after training)``.
  """
  aw = models.arch_weights(arch)

  def loss(w):
    logits = apply_supernet(spec, w, aw, support_x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, support_y))

  def step(w, _):
    grads = jax.grad(loss)(w)
    return jax.tree.map(lambda p, g: p - lr * g, w, grads), None

  trained, _ = jax.lax.scan(step, weights, None, length=steps)
  support_logits = apply_supernet(spec, trained, aw, support_x)
  support_accuracy = jnp.mean(jnp.argmax(support_logits, -1) == support_y)
  return apply_supernet(spec, trained, aw, query_x), support_accuracy


class Database(NamedTuple):
  """MetaD2A's database: T tasks x A architectures and their accuracies.

  Attributes:
    support_x: ``[T, n, H, W, C]`` support images of each task.
    support_y: ``[T, n]`` support labels.
    archs: ``[T, A, 2, E, O]`` architecture encodings.
    accuracies: ``[T, A]`` query accuracy after ``train_steps`` SGD steps.
  """
  support_x: np.ndarray
  support_y: np.ndarray
  archs: np.ndarray
  accuracies: np.ndarray

  def to_dict(self) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in self._asdict().items()}


def build_database(family: Any, spec: SupernetSpec, shared_init: Any,
                   cfg: MetaD2AConfig, *, seed: int,
                   progress: bool = False) -> Database:
  """Measures ``cfg.archs_per_task`` random architectures on each of
  ``cfg.num_database_tasks`` episodes of ``family`` (see the module doc).

  Task ``t`` is ``family.sample(episode_rng(seed, t))``; the architectures
  come from ``np.random.default_rng([seed, t, 1])``.
  """
  supports_x, supports_y, all_archs, all_accs = [], [], [], []
  bar = tqdm.tqdm(total=cfg.num_database_tasks * cfg.archs_per_task,
                  desc="metad2a database", disable=not progress,
                  dynamic_ncols=True)
  try:
    for t in range(cfg.num_database_tasks):
      episode = family.sample(episode_rng(seed, t))
      archs = models.random_archs(np.random.default_rng([seed, t, 1]),
                                  cfg.archs_per_task, spec.num_nodes,
                                  spec.primitives)
      sx = jnp.asarray(episode.support_x, jnp.float32)
      sy = jnp.asarray(episode.support_y, jnp.int32)
      qx = jnp.asarray(episode.query_x, jnp.float32)
      accs = []
      for arch in archs:
        logits, _ = train_and_predict(shared_init, jnp.asarray(arch), sx, sy,
                                      qx, spec=spec, steps=cfg.train_steps,
                                      lr=float(cfg.train_lr))
        accs.append(jnp.mean(jnp.argmax(logits, -1) == episode.query_y))
        bar.update(1)
      supports_x.append(np.asarray(episode.support_x, np.float32))
      supports_y.append(np.asarray(episode.support_y, np.int32))
      all_archs.append(archs)
      all_accs.append(np.asarray(jax.device_get(accs), np.float32))
  finally:
    bar.close()
  return Database(np.stack(supports_x), np.stack(supports_y),
                  np.stack(all_archs), np.stack(all_accs))


# ----------------------------------------------------------------------------
# Set encoding, losses and the training of the predictor and the generator.


@functools.partial(jax.jit, static_argnames=("dims", "ways"))
def task_prototypes(extractor: Any, support_x: jax.Array,
                    support_y: jax.Array, *, dims: Dims,
                    ways: int) -> jax.Array:
  """``[N, F]`` class prototypes of fixed features of one support set."""
  features = _apply(dims, "extractor", extractor, support_x)
  return models.class_prototypes(features, support_y, ways)


def database_prototypes(extractor: Any, database: Database, dims: Dims,
                        ways: int) -> jax.Array:
  """``[T, N, F]`` prototypes of every database task."""
  return jnp.stack([
      task_prototypes(extractor, jnp.asarray(sx), jnp.asarray(sy),
                      dims=dims, ways=ways)
      for sx, sy in zip(database.support_x, database.support_y)])


def embed(dims: Dims, encoder: Any, prototypes: jax.Array
          ) -> tuple[jax.Array, jax.Array]:
  """``(mean, log_std)`` of q(z | D) for ``[N, F]`` prototypes.

  ``encoder`` is either set encoder's weights (both have the same shapes).
  """
  return _apply(dims, "generator_encoder", encoder, prototypes)


def predict_accuracy(dims: Dims, encoder: Any, predictor: Any,
                     prototypes: jax.Array, archs: jax.Array) -> jax.Array:
  """``[A]`` predicted accuracies of ``archs`` ``[A, 2, E, O]`` on a task."""
  z, _ = embed(dims, encoder, prototypes)
  return jax.vmap(lambda a: _apply(dims, "predictor", predictor, z, a))(archs)


def predictor_loss(params: dict[str, Any], prototypes: jax.Array,
                   archs: jax.Array, accuracies: jax.Array,
                   dims: Dims) -> jax.Array:
  """Mean squared error of the predicted accuracies over all entries.

  ``params`` holds ``predictor_encoder`` and ``predictor``; ``prototypes``
  ``[T, N, F]``, ``archs`` ``[T, A, 2, E, O]``, ``accuracies`` ``[T, A]``.
  """
  predicted = jax.vmap(predict_accuracy, in_axes=(None, None, None, 0, 0))(
      dims, params["predictor_encoder"], params["predictor"], prototypes,
      archs)
  return jnp.mean(jnp.square(predicted - accuracies))


def target_weights(accuracies: np.ndarray, top_k: int) -> np.ndarray:
  """``[T, A]`` per-task weights of the generator's target architectures.

  Architectures whose accuracy reaches the task's ``top_k``-th best share
  weight 1 evenly (ties included).
  """
  accuracies = np.asarray(accuracies, np.float64)
  kth = -np.sort(-accuracies, axis=-1)[:, top_k - 1:top_k]
  chosen = (accuracies >= kth).astype(np.float32)
  return chosen / chosen.sum(-1, keepdims=True)


def generator_loss(params: dict[str, Any], prototypes: jax.Array,
                   archs: jax.Array, weights: jax.Array, key: jax.Array,
                   dims: Dims, kl_weight: float) -> jax.Array:
  """-E_q[log p(best archs | z)] + kl_weight * KL(q(z | D) || N(0, I)).

  Averaged over tasks; ``weights`` ``[T, A]`` from :func:`target_weights`.
  """

  def task_loss(protos, task_archs, task_weights, task_key):
    mean, log_std = embed(dims, params["generator_encoder"], protos)
    z = mean + jnp.exp(log_std) * jax.random.normal(task_key, mean.shape)
    op_logits, edge_scores = _apply(dims, "generator", params["generator"], z)
    log_p = jax.vmap(lambda a: models.arch_log_prob(
        op_logits, edge_scores, a, dims.primitives, dims.num_nodes))(
            task_archs)
    kl = 0.5 * jnp.sum(jnp.exp(2 * log_std) + mean ** 2 - 1 - 2 * log_std)
    return -jnp.sum(task_weights * log_p) + kl_weight * kl

  keys = jax.random.split(key, prototypes.shape[0])
  return jnp.mean(jax.vmap(task_loss)(prototypes, archs, weights, keys))


def arch_log_probs(params: dict[str, Any], prototypes: jax.Array,
                   archs: jax.Array, dims: Dims) -> jax.Array:
  """``[A]`` log p(arch | mean z) under the generator for one task."""
  z, _ = embed(dims, params["generator_encoder"], prototypes)
  op_logits, edge_scores = _apply(dims, "generator", params["generator"], z)
  return jax.vmap(lambda a: models.arch_log_prob(
      op_logits, edge_scores, a, dims.primitives, dims.num_nodes))(archs)


@functools.partial(jax.jit, static_argnames=("dims", "lr"),
                   donate_argnames=("params", "opt_state"))
def _predictor_step(params, opt_state, prototypes, archs, accuracies, *,
                    dims, lr):
  loss, grads = jax.value_and_grad(predictor_loss)(
      params, prototypes, archs, accuracies, dims)
  updates, opt_state = optax.adam(lr).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames=("dims", "lr", "kl_weight"),
                   donate_argnames=("params", "opt_state"))
def _generator_step(params, opt_state, prototypes, archs, weights, key, *,
                    dims, lr, kl_weight):
  loss, grads = jax.value_and_grad(generator_loss)(
      params, prototypes, archs, weights, key, dims, kl_weight)
  updates, opt_state = optax.adam(lr).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def _fit(step, params, epochs, lr, progress, desc, *args, keyed=None):
  opt_state = optax.adam(lr).init(params)
  losses = []
  for epoch in tqdm.trange(epochs, desc=desc, disable=not progress,
                           leave=False, dynamic_ncols=True):
    extra = () if keyed is None else (jax.random.fold_in(keyed, epoch),)
    params, opt_state, loss = step(params, opt_state, *args, *extra)
    losses.append(loss)
  return params, [float(v) for v in jax.device_get(losses)]


def fit_predictor(params: dict[str, Any], prototypes: Any, archs: Any,
                  accuracies: Any, dims: Dims, *, epochs: int, lr: float,
                  progress: bool = False
                  ) -> tuple[dict[str, Any], list[float]]:
  """Full-batch Adam on :func:`predictor_loss`; ``(params, loss history)``.

  ``params`` holds ``predictor_encoder`` and ``predictor`` (copied, not
  donated: the caller's arrays stay valid).
  """
  params = jax.tree.map(jnp.array, params)
  step = functools.partial(_predictor_step, dims=dims, lr=float(lr))
  return _fit(step, params, epochs, lr, progress, "metad2a predictor",
              jnp.asarray(prototypes), jnp.asarray(archs),
              jnp.asarray(accuracies, jnp.float32))


def fit_generator(params: dict[str, Any], prototypes: Any, archs: Any,
                  accuracies: Any, dims: Dims, *, epochs: int, lr: float,
                  top_k: int, kl_weight: float, key: jax.Array,
                  progress: bool = False
                  ) -> tuple[dict[str, Any], list[float]]:
  """Full-batch Adam on :func:`generator_loss`; ``(params, loss history)``.

  ``params`` holds ``generator_encoder`` and ``generator``.
  """
  params = jax.tree.map(jnp.array, params)
  weights = jnp.asarray(target_weights(accuracies, top_k))
  step = functools.partial(_generator_step, dims=dims, lr=float(lr),
                           kl_weight=float(kl_weight))
  return _fit(step, params, epochs, lr, progress, "metad2a generator",
              jnp.asarray(prototypes), jnp.asarray(archs), weights,
              keyed=key)


# ----------------------------------------------------------------------------
# Selection for a new data set.


@functools.partial(jax.jit, static_argnames=("dims", "ways", "count"))
def select_architecture(networks: dict[str, Any], support_x: jax.Array,
                        support_y: jax.Array, key: jax.Array, *, dims: Dims,
                        ways: int, count: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Generates ``count`` candidates for a support set and ranks them.

  No training on the task: embed the support set, draw each candidate from
  the generator at its own ``z ~ q(z | D)``, predict each one's accuracy.

  Returns:
    ``(best encoding [2, E, O], candidates [count, 2, E, O], predicted
    accuracies [count])``.
  """
  protos = task_prototypes(networks["extractor"], support_x, support_y,
                           dims=dims, ways=ways)
  mean, log_std = embed(dims, networks["generator_encoder"], protos)

  def draw(k):
    z_key, arch_key = jax.random.split(k)
    z = mean + jnp.exp(log_std) * jax.random.normal(z_key, mean.shape)
    op_logits, edge_scores = _apply(dims, "generator",
                                    networks["generator"], z)
    return models.sample_arch(arch_key, op_logits, edge_scores,
                              dims.primitives, dims.num_nodes)

  candidates = jax.vmap(draw)(jax.random.split(key, count))
  scores = predict_accuracy(dims, networks["predictor_encoder"],
                            networks["predictor"], protos, candidates)
  return candidates[jnp.argmax(scores)], candidates, scores


class MetaD2ALearner:
  """MetaD2A at meta-test time: select by prediction, then train the subnet.

  Attributes:
    spec: the supernet (its ``num_classes`` = the ways served).
    cfg: the config (``num_candidates``, ``train_steps``, ``train_lr``).
    networks: ``{name: params}`` for NETWORKS.
    shared_init: the supernet weights every subnet starts from.
    parameters: the shared supernet initialisation (every chosen subnet is
      cut from it) plus the selection networks: all weights held at test
      time.
  """

  def __init__(self, spec: SupernetSpec, cfg: MetaD2AConfig,
               networks: dict[str, Any], shared_init: Any):
    self.spec, self.cfg = spec, cfg
    self.networks, self.shared_init = networks, shared_init
    self.dims = make_dims(spec, cfg)
    self.parameters = count_params(shared_init) + count_params(networks)

  def restrict_ways(self, ways: int) -> "MetaD2ALearner":
    """The learner for ``ways``-way tasks: the classifier's first units.

    The set encoders pool over any number of class prototypes, so only the
    shared initialisation's classifier is cut (``restrict_classifier``).
    """
    if ways == self.spec.num_classes:
      return self
    init = restrict_classifier(self.shared_init, ways, "MetaD2A supernet")
    return MetaD2ALearner(dataclasses.replace(self.spec, num_classes=ways),
                          self.cfg, self.networks, init)

  def _check(self, support_x, support_y, query_x):
    shape = tuple(np.shape(support_x)[1:])
    if (np.ndim(support_x) != 4 or np.ndim(query_x) != 4
        or tuple(np.shape(query_x)[1:]) != shape
        or shape[-1] != self.spec.in_channels):
      raise ConfigError(
          f"MetaD2A expects support/query images [n, H, W, "
          f"{self.spec.in_channels}], got {np.shape(support_x)} and "
          f"{np.shape(query_x)}")
    y = np.asarray(support_y)
    if y.shape != (np.shape(support_x)[0],) or (
        y.size and (y.min() < 0 or y.max() >= self.spec.num_classes)):
      raise ConfigError(f"support labels must be [{np.shape(support_x)[0]}] "
                        f"in 0..{self.spec.num_classes - 1}")

  def select(self, support_x: Any, support_y: Any, *, seed: int
             ) -> np.ndarray:
    """The ``[2, E, O]`` encoding MetaD2A picks for a support set."""
    best, _, _ = select_architecture(
        self.networks, jnp.asarray(support_x, jnp.float32),
        jnp.asarray(support_y, jnp.int32), jax.random.key(seed),
        dims=self.dims, ways=self.spec.num_classes,
        count=self.cfg.num_candidates)
    return np.asarray(best)

  def adapt_and_predict(self, support_x: np.ndarray, support_y: np.ndarray,
                        query_x: np.ndarray, *, seed: int) -> TaskResult:
    """Selects an architecture (no training), trains it, predicts queries."""
    self._check(support_x, support_y, query_x)
    arch = self.select(support_x, support_y, seed=seed)
    logits, support_accuracy = train_and_predict(
        self.shared_init, jnp.asarray(arch),
        jnp.asarray(support_x, jnp.float32),
        jnp.asarray(support_y, jnp.int32), jnp.asarray(query_x, jnp.float32),
        spec=self.spec, steps=self.cfg.train_steps,
        lr=float(self.cfg.train_lr))
    return TaskResult(
        query_predictions=np.asarray(jnp.argmax(logits, -1)),
        support_accuracy=float(support_accuracy),
        genotype=models.arch_to_genotype(arch, self.spec.primitives,
                                         self.spec.num_nodes))


def init_learner(spec: SupernetSpec, cfg: MetaD2AConfig, *,
                 seed: int) -> MetaD2ALearner:
  """The untrained learner: MetaD2A's starting point before meta-training.

  Same shared initialisation and network initialisation as
  :func:`meta_train_state` with this seed, so the two differ by training
  only.
  """
  init_key, net_key = jax.random.split(jax.random.key(seed))
  return MetaD2ALearner(spec, cfg, init_networks(make_dims(spec, cfg),
                                                 net_key),
                        init_supernet_weights(spec, init_key))


# ----------------------------------------------------------------------------
# Meta-training and the artifact.


def meta_train_state(family: Any, spec: SupernetSpec, cfg: MetaD2AConfig, *,
                     seed: int, progress: bool = False,
                     database: Database | None = None
                     ) -> tuple[MetaD2ALearner, Database, dict[str, Any]]:
  """Builds the database (unless given) and trains predictor and generator.

  Returns:
    ``(trained learner, database, summary)``.
  """
  start = time.perf_counter()
  learner = init_learner(spec, cfg, seed=seed)
  dims = learner.dims
  if database is None:
    database = build_database(family, spec, learner.shared_init, cfg,
                              seed=seed, progress=progress)
  db_seconds = time.perf_counter() - start
  protos = database_prototypes(learner.networks["extractor"], database,
                               dims, spec.num_classes)
  nets = learner.networks
  predictor, pred_losses = fit_predictor(
      {k: nets[k] for k in ("predictor_encoder", "predictor")}, protos,
      database.archs, database.accuracies, dims,
      epochs=cfg.predictor_epochs, lr=cfg.predictor_lr, progress=progress)
  generator, gen_losses = fit_generator(
      {k: nets[k] for k in ("generator_encoder", "generator")}, protos,
      database.archs, database.accuracies, dims,
      epochs=cfg.generator_epochs, lr=cfg.generator_lr, top_k=cfg.top_k,
      kl_weight=cfg.kl_weight,
      key=jax.random.fold_in(jax.random.key(seed), 7), progress=progress)
  for name, losses in (("predictor", pred_losses), ("generator", gen_losses)):
    if not all(math.isfinite(v) for v in losses):
      raise NonFiniteLossError(f"non-finite MetaD2A {name} loss; lower "
                               f"metad2a.{name}_lr")
  trained = MetaD2ALearner(spec, cfg, {**nets, **predictor, **generator},
                           learner.shared_init)
  accs = database.accuracies
  summary = {
      "database_entries": int(accs.size),
      "database_mean_accuracy": float(accs.mean()),
      "database_best_mean_accuracy": float(accs.max(-1).mean()),
      "database_seconds": db_seconds,
      "predictor_loss": [pred_losses[0], pred_losses[-1]],
      "generator_loss": [gen_losses[0], gen_losses[-1]],
      "seconds": time.perf_counter() - start}
  return trained, database, summary


def _database_header(spec: SupernetSpec, cfg: MetaD2AConfig,
                     seed: int) -> dict[str, Any]:
  return {"spec": spec.to_dict(), "seed": int(seed),
          **{k: getattr(cfg, k) for k in ("num_database_tasks",
                                          "archs_per_task", "train_steps",
                                          "train_lr")}}


def save_artifact(path: str | os.PathLike, learner: MetaD2ALearner,
                  database: Database, *, seed: int,
                  summary: dict[str, Any] | None = None) -> None:
  """Writes networks, shared init and database to one file, atomically."""
  header = {"format": FORMAT, "version": FORMAT_VERSION,
            "spec": learner.spec.to_dict(),
            "config": dataclasses.asdict(learner.cfg),
            "database": _database_header(learner.spec, learner.cfg, seed),
            "summary": dict(summary or {})}
  tree = {"networks": learner.networks, "shared_init": learner.shared_init,
          "database": database.to_dict()}
  serialization.write_arrays_file(path, tree, header)


def load_artifact(path: str | os.PathLike
                  ) -> tuple[MetaD2ALearner, Database, dict[str, Any]]:
  """Reads ``(learner, database, header)`` written by :func:`save_artifact`.

  Raises:
    CheckpointError: naming ``path``, when the file is missing, truncated,
      corrupt, of another format, or its arrays do not have the shapes its
      header describes.
  """
  path = os.fspath(path)
  tree, header = serialization.read_arrays_file(
      path, kind="MetaD2A artifact", format_name=FORMAT,
      version=FORMAT_VERSION)
  try:
    spec = SupernetSpec.from_dict(header["spec"])
    cfg = MetaD2AConfig(**header["config"])
    dims = make_dims(spec, cfg)
    networks, shared_init = tree["networks"], tree["shared_init"]
    database = Database(**{k: np.asarray(tree["database"][k])
                           for k in Database._fields})
  except Exception as e:  # missing keys, bad header values
    raise CheckpointError(f"MetaD2A artifact {path} has an invalid header or "
                          f"layout: {type(e).__name__}: {e}") from None
  expected = jax.eval_shape(lambda: (
      init_networks(dims, jax.random.key(0)),
      init_supernet_weights(spec, jax.random.key(0))))
  want = {k: tuple(v.shape) for k, v in serialization.flatten(
      {"networks": expected[0], "shared_init": expected[1]}).items()}
  have = {k: tuple(np.shape(v)) for k, v in serialization.flatten(
      {"networks": networks, "shared_init": shared_init}).items()}
  t, a = database.accuracies.shape if database.accuracies.ndim == 2 else (0, 0)
  if (want != have or database.archs.shape[:2] != (t, a)
      or database.archs.shape[2:] != dims.arch_shape
      or database.support_y.shape[0] != t
      or database.support_x.shape[0] != t):
    wrong = sorted(k for k in set(want) | set(have)
                   if want.get(k) != have.get(k))
    raise CheckpointError(f"MetaD2A artifact {path} does not match its "
                          f"header: {wrong[:3] or ['database']}")
  return MetaD2ALearner(spec, cfg, networks, shared_init), database, header


def _check_compatible(artifact: MetaD2ALearner, spec: SupernetSpec,
                      cfg: MetaD2AConfig, path: str) -> None:
  base_spec = dataclasses.replace(artifact.spec, num_classes=spec.num_classes)
  if base_spec != spec or artifact.spec.num_classes < spec.num_classes:
    raise CheckpointError(f"MetaD2A artifact {path} was built for supernet "
                          f"{artifact.spec.to_dict()}, the config asks for "
                          f"{spec.to_dict()}")
  if make_dims(artifact.spec, artifact.cfg)[1:] != make_dims(spec, cfg)[1:]:
    raise CheckpointError(
        f"MetaD2A artifact {path} has networks of feature_channels="
        f"{artifact.cfg.feature_channels}, hidden={artifact.cfg.hidden}, "
        f"embed_dim={artifact.cfg.embed_dim}; the config asks for "
        f"{cfg.feature_channels}, {cfg.hidden}, {cfg.embed_dim}")


def meta_train(exp: Any, cfg: MetaD2AConfig, workdir: str, *, seed: int,
               progress: bool = False) -> dict[str, Any]:
  """Builds the database, trains the networks, writes ``metad2a.msgpack``.

  With ``cfg.reuse_database`` the database of an existing artifact built
  with the same spec, seed and database settings is reused.
  """
  path = os.path.join(workdir, ARTIFACT_FILENAME)
  database = None
  if cfg.reuse_database and os.path.isfile(path):
    _, stored, header = load_artifact(path)
    if header.get("database") == _database_header(exp.spec, cfg, seed):
      database = stored
  reused = database is not None
  learner, database, summary = meta_train_state(
      exp.train_family, exp.spec, cfg, seed=seed, progress=progress,
      database=database)
  summary["reused_database"] = reused
  save_artifact(path, learner, database, seed=seed, summary=summary)
  summary["path"] = path
  return summary


def load_learner(exp: Any, cfg: MetaD2AConfig, workdir: str
                 ) -> MetaD2ALearner:
  """The learner of ``workdir/metad2a.msgpack`` for ``exp``'s tasks.

  Network shapes come from the artifact (and must match ``cfg``); the
  selection and training settings (``num_candidates``, ``train_steps``,
  ``train_lr``) come from ``cfg``.
  """
  path = os.path.join(workdir, ARTIFACT_FILENAME)
  stored, _, _ = load_artifact(path)
  _check_compatible(stored, exp.spec, cfg, path)
  learner = MetaD2ALearner(stored.spec, cfg, stored.networks,
                           stored.shared_init)
  return learner.restrict_ways(exp.spec.num_classes)


METHOD = Method(name="metad2a", title="MetaD2A", config_class=MetaD2AConfig,
                meta_train=meta_train, load_learner=load_learner)
