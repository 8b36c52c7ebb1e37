"""Task2Vec task embeddings: the diagonal Fisher of a fixed probe network.

Task2Vec (Achille et al., "Task2Vec: Task Embedding for Meta-Learning",
ICCV 2019) embeds a labelled data set by the diagonal of the Fisher
information of a fixed *probe network*'s feature-extractor weights on that
data, after fitting the probe's classifier head to the task:

    F_ii = E_x E_{y ~ p_w(y|x)} [ (d log p_w(y|x) / d w_i)^2 ].

Tasks that need similar features load the same weights and get similar
embeddings; the distance between two tasks is a (normalised) cosine distance
of their embeddings. Warm-starting DARTS (Grobelnik & Vanschoren 2022,
``base.methods.warm_start``) uses it to find the most similar earlier task.

Choices the papers leave open, and how they are made here:

* **Probe network.** The probe is this framework's own supernet
  (``base.supernet``) with *uniform* architecture weights (every op of every
  edge weighted ``1 / num_ops``), its weights initialised from a fixed seed
  (``init_supernet_weights(spec, jax.random.key(probe_seed))``) and never
  trained: Task2Vec's ImageNet-pretrained ResNet has no counterpart for the
  small few-shot data sets here, pre-training on the meta-training tasks
  would make the embedding depend on the meta-training run, and a random
  probe still separates tasks by the statistics of their images and labels
  (``tests/test_warm_start.py`` checks digits tasks against noise). The
  probe's weights are saved with whatever stores embeddings, so embeddings
  stay comparable even if JAX's random number generation changes.
* **Classifier head.** As in Task2Vec the head is task-specific: it is
  refitted on every task by ``head_steps`` full-batch gradient steps of
  softmax regression (rate ``head_lr``), from a zero head, on the probe's
  pooled features of the support set (the feature extractor frozen; the
  features are computed once). From zeros the fit is deterministic and
  label-permutation equivariant; at least one step is needed because a zero
  head has a zero Fisher. Only the feature extractor's Fisher (every weight
  but ``classifier``) enters the embedding.
* **Which Fisher.** ``fisher="expected"`` (default) is Task2Vec's Fisher
  with the expectation over ``y ~ p(y|x)`` computed exactly (a sum over the
  ``C`` classes weighted by the predictive), so there is no Monte-Carlo
  noise; ``"sampled"`` is Task2Vec's estimator (``samples`` labels drawn
  from the predictive per example, from a given key); ``"empirical"`` uses
  the true labels (the "empirical Fisher").
* **Per-example gradients with batch norm.** The supernet normalises with
  the statistics of the batch it sees (``base.ops.normalize``), so an
  example's log-likelihood depends on the whole support batch. The
  per-example gradient is that of ``log p(y_i | x_i; batch)``: one forward
  pass over the batch, then one vector-Jacobian product per
  (example, label) pair, ``jax.vmap``-ed over pairs in chunks of ``chunk``
  (a ``lax.scan`` accumulates the weighted squares, so memory is ``chunk``
  gradients, not all of them). :func:`diagonal_fisher` is generic in the
  network; the tests compare it with a naive per-example loop.
* **Normalisation.** Fisher magnitudes scale with the head and the data;
  ``reduce="parameter"`` (default) keeps one entry per feature-extractor
  weight and divides the vector by its L2 norm; ``"layer"`` averages each
  weight array first (one entry per array, ``base.serialization.flatten``
  order) and L2-normalises that shorter vector.
* **Distance.** ``distance="normalized_cosine"`` (this module's default)
  is Task2Vec's: the cosine distance of ``a / (a + b)`` and ``b / (a + b)``
  (element-wise), which stops a few large-Fisher weights from dominating;
  ``"cosine"`` is the plain cosine distance ``1 - a.b / (|a| |b|)``.

How well it separates tasks (measured on the tiny digits supernet of
``tests/conftest.py``, untrained probe, ``reduce="parameter"``): a 3-way
digits task is nearer another task over the same digits than a task of
uniform-noise images in 98-100% (cosine) and 97-100% (normalised cosine) of
comparisons with 10 support images per class, 93-100% and 80-99% with 5,
but only about 70% with 1 (a 3-image Fisher is noisy). ``"layer"`` was
worse than ``"parameter"`` in all but one setting.

The supernet probe's embedding (:func:`embed_task`) takes one forward pass:
the features' VJP is taken once, the head is fitted on the features, and
each (example, label) cotangent is pulled back through the linear head and
then the feature extractor (:func:`fisher_from_vjp`), the same numbers as
:func:`diagonal_fisher` of the whole network at less compile time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from base import config_utils, serialization
from base.errors import ConfigError
from base.supernet import SupernetSpec, apply_supernet, init_supernet_weights

FISHER_MODES = ("expected", "sampled", "empirical")
REDUCTIONS = ("parameter", "layer")
DISTANCES = ("normalized_cosine", "cosine")
HEAD = "classifier"  # the task-specific part of the probe, left out
_EPS = 1e-12

Weights = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """How a task is embedded (static: hashable, a jit cache key).

  Attributes:
    probe_seed: seeds the probe supernet's weights.
    head_steps: gradient steps fitting the probe's head to the task (>= 1).
    head_lr: rate of those steps.
    fisher: "expected", "sampled" or "empirical" (see the module docstring).
    samples: labels drawn per example when ``fisher="sampled"``.
    reduce: "parameter" or "layer" (see the module docstring).
    distance: "normalized_cosine" or "cosine".
    chunk: (example, label) pairs whose gradients are vmapped at once.
  """
  probe_seed: int = 0
  head_steps: int = 50
  head_lr: float = 1.0
  fisher: str = "expected"
  samples: int = 1
  reduce: str = "parameter"
  distance: str = "normalized_cosine"
  chunk: int = 64

  def __post_init__(self):
    check_int("embedding.probe_seed", self.probe_seed, 0)
    check_int("embedding.head_steps", self.head_steps, 1)
    check_int("embedding.samples", self.samples, 1)
    check_int("embedding.chunk", self.chunk, 1)
    check_positive("embedding.head_lr", self.head_lr)
    check_choice("embedding.fisher", self.fisher, FISHER_MODES)
    check_choice("embedding.reduce", self.reduce, REDUCTIONS)
    check_choice("embedding.distance", self.distance, DISTANCES)


# Field validators (shared with every config dataclass).
check_int = config_utils.check_int
check_positive = config_utils.check_positive
check_choice = config_utils.check_choice


# ----------------------------------------------------------------------------
# The diagonal Fisher of any network.


def diagonal_fisher(apply_fn: Callable[[Any, jax.Array], jax.Array],
                    params: Any, x: jax.Array, y: jax.Array | None = None, *,
                    mode: str = "expected", key: jax.Array | None = None,
                    samples: int = 1, chunk: int = 64) -> Any:
  """Diagonal Fisher ``E[(d log p(y|x) / d params)^2]`` over the examples.

  Pure and jittable (``apply_fn``, ``mode``, ``samples`` and ``chunk``
  static). One forward pass over the whole batch (so batch-coupled layers
  such as batch norm see the batch they see in use), then one
  vector-Jacobian product per (example ``i``, label ``c``) pair: the
  gradient of ``log p(c | x_i)``. The pairs run ``jax.vmap``-ed, ``chunk``
  at a time inside a ``lax.scan`` that sums their weighted squares.

  Args:
    apply_fn: ``(params, x) -> logits [n, C]``.
    params: the pytree to differentiate.
    x: the inputs (``n`` examples on the leading axis).
    y: ``[n]`` integer labels; used by ``mode="empirical"`` only.
    mode: ``"expected"``: ``mean_i sum_c p(c|x_i) g_ic^2`` (the model's
      Fisher, exactly); ``"sampled"``: ``mean_i mean_s g_{i, c_is}^2`` with
      ``c_is ~ p(.|x_i)`` drawn from ``key``; ``"empirical"``:
      ``mean_i g_{i, y_i}^2``.
    key: a PRNG key, for ``mode="sampled"``.
    samples: labels drawn per example for ``mode="sampled"``.
    chunk: pairs per vmapped batch.

  Returns:
    A pytree like ``params``: the diagonal Fisher of every entry.
  """
  check_choice("fisher mode", mode, FISHER_MODES)

  def log_probs(p):
    return jax.nn.log_softmax(apply_fn(p, x).astype(jnp.float32), axis=-1)

  logp, vjp = jax.vjp(log_probs, params)
  return fisher_from_vjp(logp, lambda ct: vjp(ct)[0], params, y, mode=mode,
                         key=key, samples=samples, chunk=chunk)


def fisher_from_vjp(logp: jax.Array, vjp: Callable[[jax.Array], Any],
                    params: Any, y: jax.Array | None = None, *,
                    mode: str = "expected", key: jax.Array | None = None,
                    samples: int = 1, chunk: int = 64) -> Any:
  """:func:`diagonal_fisher` from a forward pass already taken.

  Args:
    logp: ``[n, C]`` log-probabilities of the batch.
    vjp: maps a cotangent ``[n, C]`` of ``logp`` to the gradient pytree
      (like ``params``) it pulls back.
    params: the pytree (or its shapes), for the zero accumulator.
    y, mode, key, samples, chunk: as in :func:`diagonal_fisher`.
  """
  check_choice("fisher mode", mode, FISHER_MODES)
  n, num_classes = logp.shape
  if mode == "expected":
    rows = jnp.repeat(jnp.arange(n), num_classes)
    cols = jnp.tile(jnp.arange(num_classes), n)
    weights = jax.lax.stop_gradient(jnp.exp(logp)).reshape(-1) / n
  elif mode == "sampled":
    if key is None:
      raise ConfigError("fisher mode 'sampled' needs a PRNG key")
    drawn = jax.random.categorical(key, jax.lax.stop_gradient(logp),
                                   shape=(samples, n))
    rows = jnp.tile(jnp.arange(n), samples)
    cols = drawn.reshape(-1)
    weights = jnp.full((n * samples,), 1.0 / (n * samples))
  else:
    if y is None:
      raise ConfigError("fisher mode 'empirical' needs the labels y")
    rows = jnp.arange(n)
    cols = jnp.asarray(y, jnp.int32)
    weights = jnp.full((n,), 1.0 / n)

  pairs = rows.shape[0]
  size = min(chunk, pairs)
  padded = -(-pairs // size) * size
  pad = padded - pairs
  # Padding pairs get weight 0 (and a valid index), so they add nothing.
  rows = jnp.pad(rows, (0, pad)).reshape(-1, size)
  cols = jnp.pad(cols, (0, pad)).reshape(-1, size)
  weights = jnp.pad(weights, (0, pad)).reshape(-1, size)

  def squared_grad(row, col):
    cotangent = jnp.zeros((n, num_classes), logp.dtype).at[row, col].set(1.0)
    return jax.tree.map(jnp.square, vjp(cotangent))

  def body(total, batch):
    row, col, weight = batch
    squares = jax.vmap(squared_grad)(row, col)
    return jax.tree.map(
        lambda t, s: t + jnp.tensordot(weight, s, axes=1), total,
        squares), None

  zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  fisher, _ = jax.lax.scan(body, zeros, (rows, cols, weights))
  return fisher


# ----------------------------------------------------------------------------
# The supernet probe.


def init_probe(spec: SupernetSpec, cfg: EmbeddingConfig) -> Weights:
  """The probe's weights: the supernet of ``spec`` from ``cfg.probe_seed``."""
  return init_supernet_weights(spec, jax.random.key(cfg.probe_seed))


def uniform_arch_weights(spec: SupernetSpec) -> dict[str, jax.Array]:
  """Every op of every edge weighted ``1 / num_ops`` (the probe's mixture)."""
  return {name: jnp.full(spec.arch_shape, 1.0 / spec.num_ops, jnp.float32)
          for name in ("normal", "reduce")}


def feature_extractor(weights: Weights) -> Weights:
  """``weights`` without the classifier head."""
  return {k: v for k, v in weights.items() if k != HEAD}


def probe_features(spec: SupernetSpec, weights: Weights,
                   arch_weights: Any, x: jax.Array) -> jax.Array:
  """The supernet's pooled features ``[n, F]`` (the classifier's inputs).

  Computed with the same network by an identity head: a spec with ``F``
  outputs and an ``F x F`` identity kernel with zero bias.
  """
  features = int(weights[HEAD]["kernel"].shape[0])
  identity = {"kernel": jnp.eye(features, dtype=jnp.float32),
              "bias": jnp.zeros((features,), jnp.float32)}
  feature_spec = dataclasses.replace(spec, num_classes=features)
  return apply_supernet(feature_spec, {**weights, HEAD: identity},
                        arch_weights, x)


def fit_head(features: jax.Array, y: jax.Array, ways: int, steps: int,
             lr: float) -> Weights:
  """Softmax regression on fixed ``features`` by full-batch gradient steps.

  Starts from a zero head; returns ``{"kernel": [F, ways], "bias": [ways]}``.
  """
  features = jax.lax.stop_gradient(features)
  head = {"kernel": jnp.zeros((features.shape[-1], ways), jnp.float32),
          "bias": jnp.zeros((ways,), jnp.float32)}

  def loss(h):
    logits = features @ h["kernel"] + h["bias"]
    return -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(logits, -1), y[:, None], axis=-1))

  def step(h, _):
    grads = jax.grad(loss)(h)
    return jax.tree.map(lambda p, g: p - lr * g, h, grads), None

  head, _ = jax.lax.scan(step, head, None, length=steps)
  return head


def reduce_fisher(fisher: Weights, reduce: str) -> jax.Array:
  """A feature-extractor Fisher pytree as one L2-normalised vector."""
  check_choice("embedding.reduce", reduce, REDUCTIONS)
  flat = serialization.flatten(fisher)
  leaves = [flat[k] for k in sorted(flat)]
  if reduce == "parameter":
    vector = jnp.concatenate([jnp.ravel(v) for v in leaves])
  else:
    vector = jnp.stack([jnp.mean(v) for v in leaves])
  return vector / (jnp.linalg.norm(vector) + _EPS)


@functools.partial(jax.jit, static_argnames=("spec", "cfg"))
def _embed(probe_weights, x, y, key, *, spec, cfg):
  arch = uniform_arch_weights(spec)
  body = feature_extractor(probe_weights)
  # One forward pass of the supernet serves the head fit and the Fisher:
  # pull the log-likelihood cotangents back through the (linear) head, then
  # through the feature extractor.
  features, features_vjp = jax.vjp(
      lambda b: probe_features(spec, {**b, HEAD: probe_weights[HEAD]}, arch,
                               x), body)
  head = fit_head(features, y, spec.num_classes, cfg.head_steps, cfg.head_lr)
  logp, head_vjp = jax.vjp(
      lambda f: jax.nn.log_softmax(f @ head["kernel"] + head["bias"], -1),
      features)
  fisher = fisher_from_vjp(
      logp, lambda ct: features_vjp(head_vjp(ct)[0])[0], body, y,
      mode=cfg.fisher, key=key, samples=cfg.samples, chunk=cfg.chunk)
  return reduce_fisher(fisher, cfg.reduce)


def embed_task(spec: SupernetSpec, probe_weights: Weights, support_x: Any,
               support_y: Any, cfg: EmbeddingConfig, *,
               seed: int = 0) -> np.ndarray:
  """The Task2Vec embedding of a task, from its support set.

  One compiled program (per spec, config and support shape): probe
  features, head fit, diagonal Fisher of the feature extractor, reduction.

  Args:
    spec: the probe supernet; ``spec.num_classes`` is the task's ways (the
      head is refitted, so ``probe_weights``' own head only sets ``F``).
    probe_weights: the probe's weights (:func:`init_probe`).
    support_x: ``[n, H, W, C]`` float images; support_y: ``[n]`` labels in
      ``0..spec.num_classes - 1``.
    cfg: the embedding's settings.
    seed: seeds the label draws of ``fisher="sampled"`` (unused otherwise).

  Returns:
    A float32 vector, L2 norm 1 (``reduce="parameter"``: one entry per
    feature-extractor weight; ``"layer"``: one per weight array).
  """
  key = jax.random.fold_in(jax.random.key(cfg.probe_seed), seed)
  vector = _embed(probe_weights, jnp.asarray(support_x, jnp.float32),
                  jnp.asarray(support_y, jnp.int32), key, spec=spec, cfg=cfg)
  vector = np.asarray(jax.device_get(vector), np.float32)
  if not np.all(np.isfinite(vector)):
    raise FloatingPointError("the task embedding is not finite (the probe's "
                             "Fisher overflowed); lower embedding.head_lr")
  return vector


# ----------------------------------------------------------------------------
# Distances.


def task_distances(query: Any, embeddings: Any,
                   distance: str = "normalized_cosine") -> np.ndarray:
  """Distances ``[m]`` from one embedding ``[d]`` to each of ``[m, d]``.

  ``"cosine"``: ``1 - a.b / (|a| |b|)``. ``"normalized_cosine"`` (Task2Vec):
  the cosine distance of ``a / (a + b)`` and ``b / (a + b)``, element-wise,
  for non-negative embeddings (Fisher diagonals); entries where both are 0
  are left out (weights neither task uses say nothing about either).
  """
  check_choice("distance", distance, DISTANCES)
  a = np.asarray(query, np.float64)
  b = np.atleast_2d(np.asarray(embeddings, np.float64))
  if a.ndim != 1 or b.shape[-1] != a.shape[0]:
    raise ConfigError(f"embedding of shape {a.shape} cannot be compared with "
                      f"embeddings of shape {b.shape}")
  if distance == "normalized_cosine":
    total = a[None, :] + b
    safe = np.where(total > 0, total, 1.0)
    a = np.where(total > 0, a[None, :] / safe, 0.0)
    b = np.where(total > 0, b / safe, 0.0)
  else:
    a = np.broadcast_to(a, b.shape)
  dots = np.sum(a * b, axis=-1)
  norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return 1.0 - dots / np.maximum(norms, _EPS)


def task_distance(a: Any, b: Any,
                  distance: str = "normalized_cosine") -> float:
  """The distance between two embeddings (see :func:`task_distances`)."""
  return float(task_distances(a, np.asarray(b)[None], distance)[0])
