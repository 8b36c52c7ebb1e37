"""Warm-started DARTS: start a task's search from the most similar earlier one.

Grobelnik & Vanschoren ("Warm-starting DARTS using meta-learning", 2022)
keep a library of earlier architecture searches, each keyed by a Task2Vec
embedding of its task (``base.task_embedding``); a new task is embedded, the
nearest library task looked up, and DARTS starts from that task's searched
weights and architecture logits instead of from scratch, so fewer search
steps reach the same accuracy. Here, ``config.method = "warm_start"``:

* **The task learner** is first-order DARTS on the supernet
  (``base.supernet``): each :func:`search_step` takes one weight step (SGD
  with momentum, ``lr_weights``, ``momentum``) on the cross-entropy of the
  supernet under ``softmax(arch_logits)``, then one architecture step (Adam,
  ``lr_arch``, ``b1 = 0.5`` as in DARTS) on the same loss at the new
  weights (:func:`darts_update`). DARTS's second-order variant and its
  train/validation split are left out: a 1-shot support set cannot be
  split, and MetaNAS-style few-shot DARTS is first order too. Optimiser
  states start fresh with every search (a library entry stores parameters,
  not optimiser moments).
* **Meta-training** builds the library: ``library_size`` meta-training
  tasks (task ``t`` is ``train_family.sample(episode_rng(seed, t))``), each
  searched for ``search_steps`` from the same fixed initialisation
  (``init_supernet_weights(spec, key(seed))``, uniform logits), which is
  saved with the library (the scratch start). A meta-training task's query
  images are labelled too, so its search runs on support *and* query
  (``library_data="support_and_query"``, default; ``"support"`` to search
  only what a test task has); its embedding is always computed from its
  support set alone, like a test task's, so the two are comparable.
* **Warm start at test time** (:class:`WarmStartLearner`): embed the task's
  support set with the same probe, take the nearest library entry
  (``TaskLibrary.nearest``), copy its weights and architecture logits and run
  ``warm_steps`` search steps on the support set. Episode labels are a random
  permutation of the classes, so a stored classifier head encodes another
  task's arbitrary label order: with ``warm_head="zeros"`` (default) the head
  is reset to zeros (every class equally likely; the first weight step then
  fits it to the warm features, much like a nearest-class-mean classifier),
  ``"keep"`` keeps the stored head (cut to the task's ways with
  ``base.prior.restrict_classifier``), ``"init"`` uses the scratch start's
  random head. Measured (tiny digits config below, 60 episodes, two
  libraries): zeros 0.50/0.57 query accuracy after 2 steps, keep 0.39/0.41,
  init 0.37/0.40; after 5 steps 0.50/0.58, 0.50/0.50, 0.47/0.47.
* **Prediction** uses the supernet under the searched ``softmax(logits)``
  (as MetaNAS does in the few-shot setting; there is no retraining of the
  derived network on 1 image per class); the task's genotype is the DARTS
  derivation of the logits (``base.genotype.derive_genotype``).
* **The probe** of the embedding is ``probe="init"`` (default): the supernet
  from ``probe_seed``, untrained, with uniform architecture weights; or
  ``probe="library_mean"``: the mean of the library tasks' searched
  weights, a probe pre-trained on the meta-training tasks at no extra cost
  (the tasks are searched first and embedded afterwards). Either way the
  probe's weights are saved in the library, so embeddings stay comparable.
* **Cost saved**: :func:`compare_warm_vs_scratch` scores, on the same test
  episodes (``base.methods.api.score_learner``), (a) the warm start with
  ``warm_steps``, (b) scratch with ``warm_steps`` and (c) scratch with
  ``search_steps``, with accuracy ± 95% CI and steps and seconds per task.
  ``meta_train`` runs it on the meta-test family when ``compare_episodes``
  > 0 and puts it in its summary (``"comparison"``).

What it buys (measured on ``tests/conftest.tiny_config()``: 3-way 1-shot
held-out digits, a 4-channel supernet with 4 ops; defaults but a 10-task
library; 60 episodes, two library seeds): after ``warm_steps=5`` the warm
start reaches 0.50/0.58 query accuracy against 0.42/0.49 from scratch with
the same 5 steps and 0.61/0.65 from scratch with all 50 (after 2 steps:
0.50/0.57 against 0.34/0.40). The advantage shrinks with the budget and is
gone by about 10 steps (0.53/0.60 against 0.52/0.58; with a 20-task library
and 100 episodes even reversed, 0.50 ± 0.04 against 0.58 ± 0.04): a library
task's weights fitted to 12 images of other classes are a good start, not a
better end point. The nearest task by
Task2Vec is *not* better than a random library task here: the Fisher of 3
support images barely tells which earlier digits task transfers best
(measured over 20 library tasks and 40 episodes, every embedding variant
picked entries within noise of a random pick, 0.51-0.60 against 0.55, while
the best single entry gives 0.67); :func:`compare_warm_vs_scratch` reports
this ablation with ``random_entry=True``.

Speed on CPU: one compiled search step per (spec, data shape) -- the
optimiser settings are traced arguments (:func:`hyperparameters`), so every
setting shares it -- called in a Python loop (a ``lax.scan`` would recompile
for every step count); one compiled embedding and one compiled prediction
per shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from base import serialization
from base import task_embedding as te
from base.errors import CheckpointError, ConfigError
from base.genotype import Genotype, genotype_of
from base.methods.api import Method, TaskResult, score_learner
from base.prior import restrict_classifier
from base.task_adaptation import check_task
from base.supernet import (SupernetSpec, apply_supernet, count_params,
                           init_arch_logits, init_supernet_weights)

Weights = dict[str, Any]
LIBRARY_FILENAME = "warm_start_library.msgpack"
LIBRARY_FORMAT = "base-task-library"
LIBRARY_VERSION = 1
LIBRARY_DATA = ("support_and_query", "support")
WARM_HEADS = ("zeros", "keep", "init")
PROBES = ("init", "library_mean")


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
  """Warm-started DARTS (the ``config.warm_start`` section).

  Attributes:
    library_size: meta-training tasks searched into the library.
    search_steps: DARTS steps of a search from scratch (library tasks).
    warm_steps: DARTS steps of a warm-started search (< ``search_steps``:
      the difference is the search cost saved).
    lr_weights: SGD rate of the weight steps (0.05: slower than 0.1 from
      scratch, which leaves warm starts a clearer lead at few steps; both
      reach about the same accuracy after ``search_steps``).
    momentum: SGD momentum of the weight steps (0: plain SGD).
    lr_arch: Adam rate of the architecture steps.
    library_data: "support_and_query" or "support": what a library task's
      search trains on.
    warm_head: "zeros", "keep" or "init": the classifier head a warm start
      begins with (see the module docstring).
    probe: "init" or "library_mean": the embedding's probe network.
    probe_seed: seeds the "init" probe's weights.
    probe_head_steps, probe_head_lr: fitting the probe's head to a task.
    fisher: "expected", "sampled" or "empirical" (``base.task_embedding``).
    fisher_samples: labels drawn per example when ``fisher="sampled"``.
    embedding_reduce: "parameter" or "layer".
    distance: "cosine" (default) or "normalized_cosine" (Task2Vec's); plain
      cosine separated 10-shot digits tasks from noise tasks as well or
      better with the untrained probe (see ``base.task_embedding``).
    compare_episodes: when > 0, ``meta_train`` also runs
      :func:`compare_warm_vs_scratch` on this many meta-test episodes.
  """
  library_size: int = 20
  search_steps: int = 50
  warm_steps: int = 5
  lr_weights: float = 0.05
  momentum: float = 0.9
  lr_arch: float = 0.03
  library_data: str = "support_and_query"
  warm_head: str = "zeros"
  probe: str = "init"
  probe_seed: int = 0
  probe_head_steps: int = 50
  probe_head_lr: float = 1.0
  fisher: str = "expected"
  fisher_samples: int = 1
  embedding_reduce: str = "parameter"
  distance: str = "cosine"
  compare_episodes: int = 0

  def __post_init__(self):
    for name, minimum in (("library_size", 1), ("search_steps", 1),
                          ("warm_steps", 1), ("probe_seed", 0),
                          ("probe_head_steps", 1), ("fisher_samples", 1),
                          ("compare_episodes", 0)):
      te.check_int(f"warm_start.{name}", getattr(self, name), minimum)
    if self.warm_steps >= self.search_steps:
      raise ConfigError(f"warm_start.warm_steps must be < search_steps "
                        f"({self.search_steps}), got {self.warm_steps}")
    for name in ("lr_weights", "lr_arch", "probe_head_lr"):
      te.check_positive(f"warm_start.{name}", getattr(self, name))
    if (isinstance(self.momentum, bool)
        or not isinstance(self.momentum, (int, float, np.integer, np.floating))
        or not 0 <= self.momentum < 1):
      raise ConfigError(f"warm_start.momentum must be in [0, 1), got "
                        f"{self.momentum!r}")
    te.check_choice("warm_start.library_data", self.library_data,
                    LIBRARY_DATA)
    te.check_choice("warm_start.warm_head", self.warm_head, WARM_HEADS)
    te.check_choice("warm_start.probe", self.probe, PROBES)
    te.check_choice("warm_start.fisher", self.fisher, te.FISHER_MODES)
    te.check_choice("warm_start.embedding_reduce", self.embedding_reduce,
                    te.REDUCTIONS)
    te.check_choice("warm_start.distance", self.distance, te.DISTANCES)

  @property
  def embedding(self) -> te.EmbeddingConfig:
    """The task embedding's settings."""
    return te.EmbeddingConfig(
        probe_seed=self.probe_seed, head_steps=self.probe_head_steps,
        head_lr=self.probe_head_lr, fisher=self.fisher,
        samples=self.fisher_samples, reduce=self.embedding_reduce,
        distance=self.distance)

  @property
  def search(self) -> "SearchConfig":
    """The settings one compiled search step depends on."""
    return SearchConfig(float(self.lr_weights), float(self.momentum),
                        float(self.lr_arch))


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Optimiser settings of a DARTS step (passed traced, not compiled in)."""
  lr_weights: float
  momentum: float
  lr_arch: float


# ----------------------------------------------------------------------------
# The task library.


@dataclasses.dataclass
class LibraryEntry:
  """One searched task: its embedding, searched parameters and metadata."""
  embedding: np.ndarray
  weights: Weights
  arch_logits: dict[str, Any]
  metadata: dict[str, Any]


class TaskLibrary:
  """Searched tasks keyed by their embeddings; nearest-task lookup.

  Attributes:
    distance: how embeddings are compared (``base.task_embedding``).
    entries: the tasks, in the order added.
    extras: further named pytrees of arrays saved with the library (the warm
      start keeps its scratch initialisation and probe weights here).
    metadata: JSON-serialisable facts about the library as a whole.
  """

  def __init__(self, distance: str = "cosine",
               extras: Mapping[str, Any] | None = None,
               metadata: Mapping[str, Any] | None = None):
    self.distance = te.check_choice("distance", distance, te.DISTANCES)
    self.entries: list[LibraryEntry] = []
    self.extras: dict[str, Any] = dict(extras or {})
    self.metadata: dict[str, Any] = dict(metadata or {})

  def __len__(self) -> int:
    return len(self.entries)

  def add(self, embedding: Any, weights: Weights,
          arch_logits: Mapping[str, Any],
          metadata: Mapping[str, Any] | None = None) -> LibraryEntry:
    """Appends a task; its embedding must match the others' length."""
    embedding = np.asarray(jax.device_get(embedding), np.float32)
    if embedding.ndim != 1 or not embedding.size:
      raise ConfigError(f"a task embedding must be a non-empty vector, got "
                        f"shape {embedding.shape}")
    if self.entries and embedding.shape != self.entries[0].embedding.shape:
      raise ConfigError(f"embedding of length {embedding.size} does not match "
                        f"the library's {self.entries[0].embedding.size}")
    entry = LibraryEntry(embedding, jax.device_get(weights),
                         dict(jax.device_get(dict(arch_logits))),
                         dict(metadata or {}))
    self.entries.append(entry)
    return entry

  def distances(self, embedding: Any) -> np.ndarray:
    """Distances ``[len(self)]`` from ``embedding`` to every entry."""
    if not self.entries:
      raise ConfigError("the task library is empty")
    return te.task_distances(embedding,
                             np.stack([e.embedding for e in self.entries]),
                             self.distance)

  def nearest(self, embedding: Any, k: int = 1) -> list[LibraryEntry]:
    """The ``k`` entries nearest to ``embedding``, nearest first.

    Ties go to the entry added first.
    """
    k = te.check_int("k", k, 1)
    order = np.argsort(self.distances(embedding), kind="stable")
    return [self.entries[int(i)] for i in order[:k]]

  def save(self, path: str | os.PathLike) -> None:
    """Writes the library to one checksummed file, atomically."""
    if not self.entries:
      raise ConfigError("cannot save an empty task library")
    tree = {"entries": {i: {"embedding": e.embedding, "weights": e.weights,
                            "arch_logits": e.arch_logits}
                        for i, e in enumerate(self.entries)},
            "extras": self.extras}
    header = {"format": LIBRARY_FORMAT, "version": LIBRARY_VERSION,
              "distance": self.distance, "size": len(self.entries),
              "entry_metadata": [e.metadata for e in self.entries],
              "metadata": self.metadata}
    serialization.write_arrays_file(path, tree, header)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "TaskLibrary":
    """Reads a library written by :meth:`save`.

    Raises:
      CheckpointError: naming ``path``, when the file is missing, truncated,
        corrupt, of another format, or its entries are inconsistent.
    """
    path = os.fspath(path)
    tree, header = serialization.read_arrays_file(
        path, kind="task library", format_name=LIBRARY_FORMAT,
        version=LIBRARY_VERSION)
    try:
      size = int(header["size"])
      entry_metadata = list(header["entry_metadata"])
      library = cls(header["distance"], tree.get("extras", {}),
                    header.get("metadata", {}))
      stored = tree["entries"]
      if size < 1 or sorted(stored) != list(range(size)) or len(
          entry_metadata) != size:
        raise ValueError("entry count")
      for i in range(size):
        library.add(np.asarray(stored[i]["embedding"]), stored[i]["weights"],
                    stored[i]["arch_logits"], entry_metadata[i])
    except CheckpointError:
      raise
    except Exception as e:  # missing keys, bad shapes, bad header values
      raise CheckpointError(f"task library file {path} is inconsistent: "
                            f"{type(e).__name__}: {e}") from None
    shapes = {_shapes(e.weights) for e in library.entries}
    arch = {_shapes(e.arch_logits) for e in library.entries}
    if len(shapes) != 1 or len(arch) != 1:
      raise CheckpointError(f"task library file {path} holds entries of "
                            f"different supernets")
    return library


def _shapes(tree: Any) -> tuple:
  """Hashable ``(path, shape)`` pairs of a nested dict of arrays."""
  return tuple(sorted((k, tuple(np.shape(v)))
                      for k, v in serialization.flatten(tree).items()))


# ----------------------------------------------------------------------------
# DARTS search on one task.


def arch_weights(arch_logits: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The continuous relaxation: a softmax over the ops of every edge."""
  return {k: jax.nn.softmax(v, axis=-1) for k, v in arch_logits.items()}


def supernet_loss(spec: SupernetSpec, weights: Weights,
                  arch_logits: Mapping[str, jax.Array], x: jax.Array,
                  y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(mean cross-entropy, accuracy)`` of the relaxed supernet on a batch."""
  logits = apply_supernet(spec, weights, arch_weights(arch_logits), x)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def init_search_state(weights: Weights, arch_logits: Mapping[str, Any]
                      ) -> dict[str, Any]:
  """Parameters and fresh optimiser states of a search starting there.

  ``momentum`` is the SGD buffer of the weights; ``adam_m``, ``adam_v`` and
  ``count`` are Adam's moments of the architecture logits.
  """
  weights = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), weights)
  arch_logits = {k: jnp.asarray(v, jnp.float32) for k, v in arch_logits.items()}
  return {"weights": weights, "arch_logits": arch_logits,
          "momentum": jax.tree.map(jnp.zeros_like, weights),
          "adam_m": jax.tree.map(jnp.zeros_like, arch_logits),
          "adam_v": jax.tree.map(jnp.zeros_like, arch_logits),
          "count": jnp.zeros((), jnp.int32)}


def hyperparameters(cfg: SearchConfig) -> jax.Array:
  """``[lr_weights, momentum, lr_arch]``: traced, so one compiled step
  serves every setting."""
  return jnp.asarray([cfg.lr_weights, cfg.momentum, cfg.lr_arch], jnp.float32)


ADAM_B1, ADAM_B2, ADAM_EPS = 0.5, 0.999, 1e-8  # DARTS's architecture Adam


def darts_update(state: dict[str, Any], loss_fn: Any, hyper: jax.Array
                 ) -> tuple[dict[str, Any], jax.Array, Any]:
  """One first-order DARTS step on ``loss_fn(weights, arch_logits)``.

  The weights take an SGD-with-momentum step (``buf = momentum * buf + g;
  w -= lr_weights * buf``, the PyTorch form DARTS uses); the architecture
  logits then take an Adam step (``b1 = 0.5``, ``b2 = 0.999``, DARTS's) on
  the loss at the *updated* weights (alternating, as DARTS).

  Args:
    state: :func:`init_search_state`'s dict.
    loss_fn: ``(weights, arch_logits) -> (loss, aux)``.
    hyper: :func:`hyperparameters`.

  Returns:
    ``(new state, loss before the step, aux before the step)``.
  """
  lr_weights, momentum, lr_arch = hyper[0], hyper[1], hyper[2]
  (loss, aux), grads = jax.value_and_grad(
      lambda w: loss_fn(w, state["arch_logits"]), has_aux=True)(
          state["weights"])
  buffers = jax.tree.map(lambda b, g: momentum * b + g, state["momentum"],
                         grads)
  weights = jax.tree.map(lambda w, b: w - lr_weights * b, state["weights"],
                         buffers)
  arch_grads = jax.grad(lambda a: loss_fn(weights, a)[0])(
      state["arch_logits"])
  count = state["count"] + 1
  m = jax.tree.map(lambda m, g: ADAM_B1 * m + (1 - ADAM_B1) * g,
                   state["adam_m"], arch_grads)
  v = jax.tree.map(lambda v, g: ADAM_B2 * v + (1 - ADAM_B2) * g * g,
                   state["adam_v"], arch_grads)
  scale_m = 1.0 / (1.0 - ADAM_B1 ** count.astype(jnp.float32))
  scale_v = 1.0 / (1.0 - ADAM_B2 ** count.astype(jnp.float32))
  arch_logits = jax.tree.map(
      lambda a, m, v: a - lr_arch * (m * scale_m)
      / (jnp.sqrt(v * scale_v) + ADAM_EPS), state["arch_logits"], m, v)
  return ({"weights": weights, "arch_logits": arch_logits,
           "momentum": buffers, "adam_m": m, "adam_v": v, "count": count},
          loss, aux)


@functools.partial(jax.jit, static_argnames=("spec",))
def search_step(state: dict[str, Any], x: jax.Array, y: jax.Array,
                hyper: jax.Array, *, spec: SupernetSpec
                ) -> tuple[dict[str, Any], jax.Array, jax.Array]:
  """:func:`darts_update` of the supernet's cross-entropy on ``(x, y)``.

  Returns:
    ``(new state, loss before the step, accuracy before the step)``.
  """
  return darts_update(
      state, lambda w, a: supernet_loss(spec, w, a, x, y), hyper)


@dataclasses.dataclass
class SearchResult:
  """The outcome of one DARTS search."""
  weights: Weights
  arch_logits: dict[str, jax.Array]
  losses: np.ndarray  # loss before every step
  seconds: float  # the steps alone (a first call includes compilation)


def darts_search(spec: SupernetSpec, weights: Weights,
                 arch_logits: Mapping[str, Any], x: Any, y: Any,
                 cfg: SearchConfig, steps: int) -> SearchResult:
  """``steps`` DARTS steps on ``(x, y)`` from ``(weights, arch_logits)``.

  A Python loop over the compiled :func:`search_step`; the losses stay on
  the device until the end.

  Raises:
    FloatingPointError: the loss became NaN or infinite.
  """
  steps = te.check_int("search steps", steps, 0)
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  state = init_search_state(weights, arch_logits)
  hyper = hyperparameters(cfg)
  losses = []
  start = time.perf_counter()
  for _ in range(steps):
    state, loss, _ = search_step(state, x, y, hyper, spec=spec)
    losses.append(loss)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  losses = np.asarray(jax.device_get(losses), np.float32)
  if losses.size and not np.all(np.isfinite(losses)):
    bad = int(np.flatnonzero(~np.isfinite(losses))[0]) + 1
    raise FloatingPointError(f"non-finite DARTS loss at step {bad} "
                             f"(loss={losses[bad - 1]}); lower "
                             f"warm_start.lr_weights or lr_arch")
  return SearchResult(state["weights"], state["arch_logits"], losses, seconds)


@functools.partial(jax.jit, static_argnames=("spec",))
def _logits(weights, arch_logits, x, *, spec):
  return apply_supernet(spec, weights, arch_weights(arch_logits), x)


def predict(spec: SupernetSpec, weights: Weights,
            arch_logits: Mapping[str, Any], x: Any) -> np.ndarray:
  """Predicted labels ``[n]`` of the relaxed supernet for images ``x``."""
  logits = _logits(weights, dict(arch_logits), jnp.asarray(x, jnp.float32),
                   spec=spec)
  return np.asarray(jnp.argmax(logits, -1))


# ----------------------------------------------------------------------------
# Meta-training: building the library.


def _ways_spec(spec: SupernetSpec, ways: int) -> SupernetSpec:
  return spec if ways == spec.num_classes else dataclasses.replace(
      spec, num_classes=ways)


def _mean_weights(library_weights: Sequence[Weights]) -> Weights:
  return jax.tree.map(lambda *w: np.mean(np.stack(w), 0), *library_weights)


def build_library(exp: Any, cfg: WarmStartConfig, *, seed: int,
                  progress: bool = False) -> TaskLibrary:
  """Searches ``cfg.library_size`` meta-training tasks from scratch.

  Task ``t`` is ``exp.train_family.sample(np.random.default_rng([seed, t]))``
  (``base.train.episode_rng``); every search starts from
  ``init_supernet_weights(exp.spec, jax.random.key(seed))`` and uniform
  logits. The library's extras hold that start (``"init"``) and the probe's
  weights (``"probe"``).
  """
  from base.train import episode_rng
  spec = exp.spec
  init = jax.device_get(init_supernet_weights(spec, jax.random.key(seed)))
  init_arch = jax.device_get(init_arch_logits(spec))
  tasks, results = [], []
  bar = tqdm.tqdm(total=cfg.library_size, desc="warm_start library",
                  disable=not progress, dynamic_ncols=True)
  try:
    for t in range(cfg.library_size):
      episode = exp.train_family.sample(episode_rng(seed, t))
      x, y = episode.support_x, episode.support_y
      if cfg.library_data == "support_and_query":
        x = np.concatenate([x, episode.query_x])
        y = np.concatenate([y, episode.query_y])
      try:
        result = darts_search(spec, init, init_arch, x, y, cfg.search,
                              cfg.search_steps)
      except FloatingPointError as e:
        from base.train import NonFiniteLossError
        raise NonFiniteLossError(f"library task {t}: {e}") from None
      tasks.append(episode)
      results.append(result)
      bar.update(1)
      bar.set_postfix(loss=f"{results[-1].losses[-1]:.3f}")
  finally:
    bar.close()
  if cfg.probe == "library_mean":
    probe = _mean_weights([jax.device_get(r.weights) for r in results])
  else:
    probe = jax.device_get(te.init_probe(spec, cfg.embedding))
  library = TaskLibrary(cfg.distance, extras={"init": init, "probe": probe},
                        metadata={"spec": spec.to_dict(), "seed": int(seed),
                                  "config": dataclasses.asdict(cfg)})
  for t, (episode, result) in enumerate(zip(tasks, results)):
    embedding = te.embed_task(spec, probe, episode.support_x,
                              episode.support_y, cfg.embedding, seed=t)
    library.add(embedding, result.weights, result.arch_logits, {
        "task": t, "search_steps": cfg.search_steps,
        "initial_loss": float(result.losses[0]),
        "final_loss": float(result.losses[-1]),
        "search_seconds": result.seconds})
  return library


# ----------------------------------------------------------------------------
# The learner.


def _checked_task(spec: SupernetSpec, x: Any, y: Any, name: str):
  x, y = check_task(spec, x, y, name)
  return np.asarray(x), None if y is None else np.asarray(y)


@dataclasses.dataclass
class TaskAdaptation:
  """What one adaptation did, beyond the predictions."""
  weights: Weights
  arch_logits: dict[str, jax.Array]
  support_accuracy: float
  steps: int
  search_seconds: float
  embed_seconds: float
  neighbour: int | None  # library index started from (None: scratch)
  neighbour_distance: float | None


@dataclasses.dataclass
class WarmStartLearner:
  """DARTS on a task, from the nearest library task or from scratch.

  Attributes:
    spec: the supernet, ``num_classes`` = the ways it serves.
    cfg: the method's settings.
    library: the searched meta-training tasks (with ``"init"`` and
      ``"probe"`` extras).
    start: "warm" (nearest library task), "scratch" (the library's shared
      initialisation) or "random_entry" (a library task picked uniformly at
      random from the adaptation seed, an ablation of the embedding).
    steps: DARTS steps per task.
  """
  spec: SupernetSpec
  cfg: WarmStartConfig
  library: TaskLibrary
  start: str = "warm"
  steps: int = 0

  def __post_init__(self):
    te.check_choice("start", self.start, ("warm", "scratch", "random_entry"))
    self.steps = te.check_int("steps", self.steps or self.cfg.warm_steps, 1)

  @property
  def parameters(self) -> int:
    """Supernet weights and architecture logits searched per task."""
    shapes = jax.eval_shape(lambda: init_supernet_weights(
        self.spec, jax.random.key(0)))
    return count_params(shapes) + 2 * math.prod(self.spec.arch_shape)

  def restrict_ways(self, ways: int) -> "WarmStartLearner":
    """The learner for ``ways``-way tasks (``2 <= ways <=`` its own)."""
    if not 2 <= ways <= self.spec.num_classes:
      raise ConfigError(f"a {self.spec.num_classes}-way warm_start learner "
                        f"cannot serve {ways}-way tasks")
    return dataclasses.replace(self, spec=_ways_spec(self.spec, ways))

  def _start(self, embedding: np.ndarray | None, seed: int):
    """``(weights, arch_logits, index, distance)`` a search starts from."""
    ways = self.spec.num_classes
    init = restrict_classifier(self.library.extras["init"], ways,
                               "warm_start initialisation")
    if self.start == "scratch":
      return init, init_arch_logits(self.spec), None, None
    if self.start == "warm":
      distances = self.library.distances(embedding)
      index = int(np.argmin(distances))  # the first of equally near ones
      distance = float(distances[index])
    else:
      index = int(np.random.default_rng(seed).integers(len(self.library)))
      distance = None
    entry = self.library.entries[index]
    weights = dict(entry.weights)
    if self.cfg.warm_head == "keep":
      weights = restrict_classifier(weights, ways, "library entry")
    elif self.cfg.warm_head == "init":
      weights["classifier"] = init["classifier"]
    else:
      kernel = entry.weights["classifier"]["kernel"]
      weights["classifier"] = {
          "kernel": np.zeros((kernel.shape[0], ways), np.float32),
          "bias": np.zeros((ways,), np.float32)}
    return weights, entry.arch_logits, index, distance

  def adapt(self, support_x: Any, support_y: Any, *,
            seed: int = 0) -> TaskAdaptation:
    """Embeds the task (warm start), picks the start, searches ``steps``."""
    support_x, support_y = _checked_task(self.spec, support_x, support_y,
                                       "support")
    start = time.perf_counter()
    embedding = None
    if self.start == "warm":
      embedding = te.embed_task(self.spec, self.library.extras["probe"],
                                support_x, support_y, self.cfg.embedding,
                                seed=seed)
    embed_seconds = time.perf_counter() - start
    weights, arch_logits, index, distance = self._start(embedding, seed)
    result = darts_search(self.spec, weights, arch_logits, support_x,
                          support_y, self.cfg.search, self.steps)
    accuracy = float(np.mean(predict(self.spec, result.weights,
                                     result.arch_logits, support_x)
                             == support_y))
    return TaskAdaptation(result.weights, result.arch_logits, accuracy,
                          self.steps, result.seconds, embed_seconds, index,
                          distance)

  def genotype(self, arch_logits: Mapping[str, Any]) -> Genotype:
    """The DARTS genotype of searched logits."""
    return genotype_of(self.spec, arch_logits)

  def adapt_and_predict(self, support_x: np.ndarray, support_y: np.ndarray,
                        query_x: np.ndarray, *, seed: int) -> TaskResult:
    """Searches on the support set; predicts the query; derives the genotype."""
    adaptation = self.adapt(support_x, support_y, seed=seed)
    query_x, _ = _checked_task(self.spec, query_x, None, "query")
    predictions = predict(self.spec, adaptation.weights,
                          adaptation.arch_logits, query_x)
    return TaskResult(predictions, adaptation.support_accuracy,
                      self.genotype(adaptation.arch_logits))


# ----------------------------------------------------------------------------
# Comparison, meta-training and loading (the method interface).


def compare_warm_vs_scratch(exp: Any, cfg: WarmStartConfig,
                            library: TaskLibrary, family: Any, episodes: int,
                            seed: int, *, random_entry: bool = False
                            ) -> dict[str, Any]:
  """Warm start against search from scratch, on the same test episodes.

  Scores with ``base.methods.api.score_learner`` (same episodes for the same
  seed, compilation excluded, median seconds per task):

  * ``"warm"``: nearest library task, ``cfg.warm_steps`` steps (its
    ``seconds_per_task`` includes embedding the task);
  * ``"scratch_warm_steps"``: the shared initialisation, ``warm_steps``;
  * ``"scratch_search_steps"``: the shared initialisation, ``search_steps``;
  * with ``random_entry``, ``"random_entry"``: a random library task,
    ``warm_steps`` (is the embedding's choice better than any entry?).

  Each row has ``query_accuracy``, ``ci95``, ``support_accuracy``,
  ``seconds_per_task``, ``parameters`` and ``steps``. Also returned:
  ``steps_saved`` (``search_steps - warm_steps``), ``step_fraction``
  (``warm_steps / search_steps``), ``warm_minus_scratch`` (accuracy of (a)
  minus (b)) and ``warm_minus_full_search`` ((a) minus (c)).
  """
  episodes = te.check_int("episodes", episodes, 1)
  spec = _ways_spec(exp.spec, family.num_ways)
  runs = {"warm": ("warm", cfg.warm_steps),
          "scratch_warm_steps": ("scratch", cfg.warm_steps),
          "scratch_search_steps": ("scratch", cfg.search_steps)}
  if random_entry:
    runs["random_entry"] = ("random_entry", cfg.warm_steps)
  rows = {}
  for name, (start, steps) in runs.items():
    learner = WarmStartLearner(spec, cfg, library, start, steps)
    row = score_learner(learner, family, episodes=episodes, seed=seed)
    row["steps"] = steps
    rows[name] = row
  rows["steps_saved"] = cfg.search_steps - cfg.warm_steps
  rows["step_fraction"] = cfg.warm_steps / cfg.search_steps
  rows["warm_minus_scratch"] = (rows["warm"]["query_accuracy"]
                                - rows["scratch_warm_steps"]["query_accuracy"])
  rows["warm_minus_full_search"] = (
      rows["warm"]["query_accuracy"]
      - rows["scratch_search_steps"]["query_accuracy"])
  return rows


def meta_train(exp: Any, cfg: WarmStartConfig, workdir: str, *, seed: int,
               progress: bool = True) -> dict[str, Any]:
  """Builds the library into ``workdir/warm_start_library.msgpack``.

  Returns ``seconds`` (wall time, library and comparison), ``library_size``,
  ``search_steps``, ``search_seconds_per_task`` (median, first search
  excluded when there are several: it compiles) and, when
  ``cfg.compare_episodes`` > 0, ``comparison`` (:func:`compare_warm_vs_scratch`
  on ``exp.test_family`` with ``exp.evaluate.seed``).
  """
  start = time.perf_counter()
  library = build_library(exp, cfg, seed=seed, progress=progress)
  os.makedirs(workdir, exist_ok=True)
  library.save(os.path.join(workdir, LIBRARY_FILENAME))
  seconds = [e.metadata["search_seconds"] for e in library.entries]
  summary = {
      "library_size": len(library), "search_steps": cfg.search_steps,
      "warm_steps": cfg.warm_steps,
      "search_seconds_per_task": float(np.median(seconds[1:] or seconds)),
      "final_loss": float(np.mean([e.metadata["final_loss"]
                                   for e in library.entries]))}
  if cfg.compare_episodes:
    summary["comparison"] = compare_warm_vs_scratch(
        exp, cfg, library, exp.test_family, cfg.compare_episodes,
        exp.evaluate.seed)
  summary["seconds"] = time.perf_counter() - start
  return summary


def load_library(exp: Any, path: str | os.PathLike) -> TaskLibrary:
  """The library at ``path``, checked against ``exp``'s supernet.

  Raises:
    CheckpointError: naming ``path``: missing, corrupt, or built for
      another supernet.
  """
  path = os.fspath(path)
  library = TaskLibrary.load(path)
  for name in ("init", "probe"):
    if name not in library.extras:
      raise CheckpointError(f"task library file {path} has no {name!r} "
                            f"weights; rebuild it with warm_start meta_train")
  expected = _shapes(jax.eval_shape(
      lambda: init_supernet_weights(exp.spec, jax.random.key(0))))
  for what, tree in (("initialisation", library.extras["init"]),
                     ("probe", library.extras["probe"]),
                     ("entries", library.entries[0].weights)):
    if _shapes(tree) != expected:
      raise CheckpointError(f"task library file {path}: its {what} do not "
                            f"fit the configured supernet")
  if _shapes(library.entries[0].arch_logits) != _shapes(
      jax.eval_shape(lambda: init_arch_logits(exp.spec))):
    raise CheckpointError(f"task library file {path}: its architecture "
                          f"logits do not fit the configured supernet")
  return library


#: Settings a library's embeddings were computed with; a learner must embed
#: new tasks the same way.
EMBEDDING_FIELDS = ("probe", "probe_seed", "probe_head_steps",
                    "probe_head_lr", "fisher", "fisher_samples",
                    "embedding_reduce")


def check_library_config(library: TaskLibrary, cfg: WarmStartConfig,
                         path: str) -> None:
  """Raises ConfigError if ``cfg`` embeds tasks unlike ``library`` did.

  ``distance`` may differ (it only compares stored embeddings).
  """
  stored = library.metadata.get("config", {})
  for name in EMBEDDING_FIELDS:
    if name in stored and stored[name] != getattr(cfg, name):
      raise ConfigError(
          f"warm_start.{name} is {getattr(cfg, name)!r} but the task library "
          f"{path} was embedded with {stored[name]!r}; use that value or "
          f"rebuild the library")


def load_learner(exp: Any, cfg: WarmStartConfig,
                 workdir: str) -> WarmStartLearner:
  """The warm-starting learner over the library in ``workdir``.

  Raises:
    CheckpointError: the library is missing, corrupt or for another
      supernet.
    ConfigError: ``cfg`` embeds tasks differently from the library.
  """
  path = os.path.join(workdir, LIBRARY_FILENAME)
  library = load_library(exp, path)
  check_library_config(library, cfg, path)
  library.distance = cfg.distance
  return WarmStartLearner(exp.spec, cfg, library, "warm", cfg.warm_steps)


METHOD = Method(name="warm_start",
                title="Warm-started DARTS (Task2Vec nearest task)",
                config_class=WarmStartConfig, meta_train=meta_train,
                load_learner=load_learner)
