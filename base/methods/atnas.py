"""AT-NAS: evolutionary search over subnets of a meta-learned supernet.

After Rong et al. 2021, "AT-NAS: Adaptive Transfer Neural Architecture Search
for Few-shot Learning": the weights of a one-shot supernet are meta-learned
so that *every* subnet adapts well in a few gradient steps, an evolutionary
search over subnets runs alongside, and a new task starts from the
meta-learned population, evolves it a few generations on the task's own
support set, and adapts the best subnet's weights.

**Search space and encoding.** A discrete architecture is one operation index
per supernet edge and cell type, ``{"normal": int [E], "reduce": int [E]}``
(``base.evolution`` holds the genetic operators). :func:`encoding_to_arch_
weights` turns it into the supernet's one-hot ``arch_weights``, so the subnet
is ``apply_supernet`` with one operation per edge: the supernet's other
operations are multiplied by 0 and get zero gradient. ``none`` is *excluded*
from the choices (:func:`op_choices`): a one-shot subnet then runs every edge
(as in SPOS), no node can be disconnected, and a uniformly sampled path never
degenerates to a zero network. A spec needs at least two other operations.
The ``reduce`` part is inert when the spec has no reduction cell.

**Genotype.** The returned ``base.genotype.Genotype`` applies the DARTS rule
(``derive_genotype``: top-2 incoming edges per node, each with its best
non-``none`` op) to the one-hot logits of the encoding, each edge's row scaled
by ``1 + score``. The ops are therefore exactly the encoding's; the score
only decides which two edges a node with more than two inputs keeps. The score
is the *population agreement* (:func:`population_agreement`): the fraction of
the final population that chose the same op on that edge, i.e. the edges on
which evolution has converged. With ``num_nodes=1`` (the tiny test config)
every node has exactly two inputs, and the genotype network *is* the subnet
that was adapted (tested); with more nodes the subnet used for prediction
runs all edges and the genotype is its DARTS-format summary.

**Meta-training** (:func:`meta_train_atnas`). First-order MAML (Finn et al.
2017; as ``base.methods.maml``) on the shared supernet weights, Adam at
``meta_lr``: each task of a meta-batch draws a population member uniformly at
random (the initial population is uniformly random encodings, so this is
one-shot NAS's uniform path sampling, restricted as the search narrows to the
architectures still in the running), adapts the weights of that subnet with
``inner_steps`` SGD steps on the support cross-entropy, and contributes the
query-loss gradient at the adapted weights. We chose FOMAML over Reptile
because its meta-gradient only reaches the weights of the sampled path and
uses the query set, which is what the fitness also measures. Every
``evolve_every`` meta-steps the population evolves ``generations``
generations (``base.evolution.evolve``: tournament selection, uniform
crossover, mutation, elitism) with fitness = mean query accuracy after
``inner_steps`` adaptation on ``fitness_tasks`` fresh meta-training tasks,
the same tasks for every member. At the end the final population is scored
on fresh tasks once more (unless it just was), so the saved fitness belongs to
the saved weights.

**Fitness ties.** Accuracy on a handful of query images ties often, so every
fitness is ``accuracy - 1e-3 * min(cross-entropy, 10)``: the loss term (at
most 0.01, less than one image of 99) only orders members of equal accuracy.

**A new task** (:meth:`ATNASLearner.adapt_and_predict`). The meta-learned
population (fittest first) is re-scored on the task and evolved for
``test_generations`` generations. Fitness = accuracy on a held-out split of
the support set after ``inner_steps`` SGD steps on the rest: one example of
every class (its last) is held out. With a 1-shot support set (some class has
a single example) there is nothing to hold out, and the fitness is the
support accuracy (with the loss tie-break, so effectively the support loss)
after ``inner_steps`` steps on the full support set. The fittest subnet's
weights are then adapted on the full support set for ``eval_inner_steps``
steps (0: ``inner_steps``) and predict the query labels.

**Speed on CPU.** One jitted single-task adaptation program per (static)
number of steps, with the architecture a *traced* one-hot array, so no
architecture triggers a recompile; a separate jitted forward pass scores
(one program per batch shape); Python loops over tasks and population members
(as ``base.meta.resolve_task_batching`` advises on CPU). The summary of
:func:`meta_train` reports the median seconds of one fitness evaluation.

The artifact ``workdir/atnas.msgpack`` (``base.serialization``: checksummed,
atomic) holds the meta-learned weights, the final population and its fitness,
with the supernet spec and the config in the JSON header.
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

from base import config_utils, serialization
from base.data.episodes import check_count
from base.errors import CheckpointError, ConfigError
from base.evolution import (Encoding, evolve, random_population,
                            validate_encoding)
from base.genotype import Genotype, genotype_of
from base.methods.api import Method, TaskResult
from base.prior import restrict_classifier
from base.supernet import (CELL_TYPES, SupernetSpec, apply_supernet,
                           count_params, init_supernet_weights)

Weights = dict[str, Any]  # the supernet's nested dict of arrays

FILENAME = "atnas.msgpack"
FORMAT = "base-atnas"
FORMAT_VERSION = 1
TIE_BREAK = 1e-3
LOSS_CAP = 10.0
LOG_EVERY = 10
# Stream of np.random.default_rng([seed, stream]) for the population and
# evolution (the episodes use base.train.episode_rng(seed, step)).
_SEARCH_STREAM = 0xA7
_FITNESS_STREAM = 0xF1


@dataclasses.dataclass(frozen=True)
class ATNASConfig:
  """AT-NAS hyper-parameters (section ``config.atnas``).

  Attributes:
    population_size: architectures in the population.
    generations: generations per evolution round in meta-training.
    mutation_prob: per-edge probability that mutation resamples its op.
    crossover_prob: probability that a child has two parents.
    tournament_size: members per selection tournament.
    elite_count: fittest members kept unchanged each generation.
    inner_steps: SGD steps on a task's support set in meta-training and in
      every fitness evaluation.
    inner_lr: SGD rate of all inner steps.
    meta_lr: Adam rate of the first-order MAML update of the weights.
    meta_batch_size: tasks per meta-step (each with its own sampled subnet).
    num_steps: meta-steps in total.
    evolve_every: meta-steps between evolution rounds.
    fitness_tasks: meta-training tasks each member is scored on.
    test_generations: generations evolved on a new task's support set (0:
      only re-score the meta-learned population and take its best).
    eval_inner_steps: SGD steps of the final adaptation on a new task's full
      support set (0: ``inner_steps``).

  The defaults are the settings measured on the quickstart digits (3-way
  1-shot, tiny supernet): over seeds 0-4, 300 meta-steps of 8 tasks raised
  the query accuracy on 40 held-out episodes from 0.57-0.63 (the same start,
  not meta-trained) to 0.69-0.78 (``tests/test_atnas.py``).
  """
  population_size: int = 8
  generations: int = 1
  mutation_prob: float = 0.25
  crossover_prob: float = 0.5
  tournament_size: int = 3
  elite_count: int = 2
  inner_steps: int = 3
  inner_lr: float = 0.4
  meta_lr: float = 1e-2
  meta_batch_size: int = 8
  num_steps: int = 300
  evolve_every: int = 50
  fitness_tasks: int = 4
  test_generations: int = 2
  eval_inner_steps: int = 0

  def __post_init__(self):
    for name, minimum in (("population_size", 2), ("generations", 1),
                          ("tournament_size", 1), ("elite_count", 0),
                          ("inner_steps", 1), ("meta_batch_size", 1),
                          ("num_steps", 1), ("evolve_every", 1),
                          ("fitness_tasks", 1), ("test_generations", 0),
                          ("eval_inner_steps", 0)):
      config_utils.check_int(f"atnas.{name}", getattr(self, name), minimum)
    for name in ("mutation_prob", "crossover_prob"):
      config_utils.check_fraction(f"atnas.{name}", getattr(self, name))
    for name in ("inner_lr", "meta_lr"):
      config_utils.check_positive(f"atnas.{name}", getattr(self, name))
    if self.elite_count >= self.population_size:
      raise ConfigError(f"atnas.elite_count must be < population_size "
                        f"({self.population_size}), got {self.elite_count}")
    if self.tournament_size > self.population_size:
      raise ConfigError(f"atnas.tournament_size must be <= population_size "
                        f"({self.population_size}), got "
                        f"{self.tournament_size}")

  @property
  def eval_steps(self) -> int:
    """SGD steps of the final adaptation on a new task."""
    return self.eval_inner_steps or self.inner_steps

  def evolution_kwargs(self) -> dict[str, Any]:
    """The genetic-operator arguments of ``base.evolution.evolve``."""
    return dict(mutation_prob=float(self.mutation_prob),
                crossover_prob=float(self.crossover_prob),
                tournament_size=int(self.tournament_size),
                elite_count=int(self.elite_count))


# ----------------------------------------------------------------------------
# Encodings, one-hot architecture weights, genotypes.


def op_choices(spec: SupernetSpec) -> tuple[int, ...]:
  """Op indices an edge may take: every primitive but ``none``.

  Raises:
    ConfigError: fewer than two such primitives (nothing to search).
  """
  choices = tuple(i for i, p in enumerate(spec.primitives) if p != "none")
  if len(choices) < 2:
    raise ConfigError(f"atnas needs at least 2 supernet.primitives other "
                      f"than 'none', got {list(spec.primitives)}")
  return choices


def encoding_shapes(spec: SupernetSpec) -> dict[str, int]:
  """``{"normal": E, "reduce": E}``: edges per cell type."""
  return {name: spec.num_edges for name in CELL_TYPES}


def check_encoding(encoding: Mapping[str, Any],
                   spec: SupernetSpec) -> Encoding:
  """``encoding`` as int32 arrays; ConfigError if it does not fit ``spec``."""
  return validate_encoding(encoding, encoding_shapes(spec), op_choices(spec))


def encoding_to_arch_weights(encoding: Mapping[str, Any],
                             spec: SupernetSpec) -> dict[str, jax.Array]:
  """One-hot ``{"normal": [E, O], "reduce": [E, O]}`` float32: the subnet."""
  encoding = check_encoding(encoding, spec)
  return {name: jnp.asarray(np.eye(spec.num_ops, dtype=np.float32)[
      encoding[name]]) for name in CELL_TYPES}


def population_agreement(population: Sequence[Mapping[str, Any]],
                         encoding: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Per edge, the fraction of ``population`` sharing ``encoding``'s op."""
  return {name: np.mean([np.asarray(member[name]) == np.asarray(
      encoding[name]) for member in population], axis=0)
          for name in encoding}


def encoding_to_genotype(encoding: Mapping[str, Any], spec: SupernetSpec,
                         edge_scores: Mapping[str, Any] | None = None
                         ) -> Genotype:
  """The DARTS genotype of an encoding (see the module docstring).

  Args:
    encoding: one op index per edge and cell type.
    spec: the supernet (primitives, nodes).
    edge_scores: optional ``{"normal": [E], "reduce": [E]}`` in [0, 1]; of a
      node's incoming edges the two of highest score are kept (ties: the
      lower input index). The ops are always the encoding's.
  """
  encoding = check_encoding(encoding, spec)
  logits = {}
  for name in CELL_TYPES:
    scale = np.ones(spec.num_edges)
    if edge_scores is not None:
      scores = np.asarray(edge_scores[name], np.float64)
      if scores.shape != (spec.num_edges,) or not np.all(
          (scores >= 0) & (scores <= 1)):
        raise ConfigError(f"edge_scores[{name!r}] must be {spec.num_edges} "
                          f"numbers in [0, 1]")
      scale = 1.0 + scores
    one_hot = np.eye(spec.num_ops)[encoding[name]]
    logits[name] = one_hot * scale[:, None]
  return genotype_of(spec, logits)


def subnet_param_count(weights: Weights, encoding: Mapping[str, Any],
                       spec: SupernetSpec) -> int:
  """Weights the subnet actually uses: the supernet's, less unused ops'."""
  encoding = check_encoding(encoding, spec)
  unused = 0
  for index, cell in weights["cells"].items():
    chosen = encoding["reduce" if index in spec.reduction_cells else "normal"]
    for edge, edge_weights in cell["edges"].items():
      for op, op_weights in edge_weights["ops"].items():
        if op != int(chosen[edge]):
          unused += count_params(op_weights)
  return count_params(weights) - unused


# ----------------------------------------------------------------------------
# Compiled single-task programs (the architecture is a traced one-hot array).


def _cross_entropy(weights, arch, x, y, spec):
  logits = apply_supernet(spec, weights, arch, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@functools.partial(jax.jit, static_argnames=("spec", "steps"))
def _adapt(weights, arch, support_x, support_y, inner_lr, *, spec, steps):
  def step(current, _):
    grads = jax.grad(_cross_entropy)(current, arch, support_x, support_y,
                                     spec)
    return jax.tree.map(lambda w, g: w - inner_lr * g, current, grads), None

  adapted, _ = jax.lax.scan(step, weights, None, length=steps)
  return adapted


@functools.partial(jax.jit, static_argnames=("spec",))
def _query_gradient(weights, arch, query_x, query_y, *, spec):
  return jax.value_and_grad(_cross_entropy)(weights, arch, query_x, query_y,
                                            spec)


@functools.partial(jax.jit, static_argnames=("spec",))
def _logits(weights, arch, x, *, spec):
  return apply_supernet(spec, weights, arch, x)


@functools.partial(jax.jit, static_argnames=("meta_lr",))
def _apply_mean_gradient(weights, opt_state, losses, grads, *, meta_lr):
  mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
  updates, opt_state = optax.adam(meta_lr).update(mean, opt_state, weights)
  return (optax.apply_updates(weights, updates), opt_state,
          sum(losses) / len(losses))


def adapt_subnet(weights: Weights, arch: Mapping[str, jax.Array],
                 support_x: Any, support_y: Any, spec: SupernetSpec,
                 inner_lr: float, steps: int) -> Weights:
  """The weights after ``steps`` SGD steps of the subnet ``arch`` (one-hot)
  on the support cross-entropy (``steps=0``: ``weights`` unchanged)."""
  steps = check_count("steps", steps, 0)
  if steps == 0:
    return weights
  return _adapt(weights, arch, jnp.asarray(support_x, jnp.float32),
                jnp.asarray(support_y, jnp.int32),
                jnp.float32(inner_lr), spec=spec, steps=steps)


def score_logits(logits: Any, labels: Any) -> tuple[float, float]:
  """``(accuracy, mean cross-entropy)`` of logits ``[n, C]``, in NumPy."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  loss = float(-np.mean(log_probs[np.arange(labels.shape[0]), labels]))
  return float(np.mean(logits.argmax(-1) == labels)), loss


def fitness_value(accuracy: float, loss: float) -> float:
  """Accuracy, ties broken by the (capped) loss: see the module docstring."""
  if not math.isfinite(loss):
    loss = LOSS_CAP
  return accuracy - TIE_BREAK * min(loss, LOSS_CAP)


def subnet_fitness(weights: Weights, arch: Mapping[str, jax.Array],
                   train_x: Any, train_y: Any, eval_x: Any, eval_y: Any,
                   spec: SupernetSpec, inner_lr: float, steps: int) -> float:
  """:func:`fitness_value` on ``eval`` after ``steps`` steps on ``train``."""
  adapted = adapt_subnet(weights, arch, train_x, train_y, spec, inner_lr,
                         steps)
  logits = _logits(adapted, arch, jnp.asarray(eval_x, jnp.float32),
                   spec=spec)
  return fitness_value(*score_logits(logits, eval_y))


def support_split(support_y: Any) -> tuple[np.ndarray, np.ndarray] | None:
  """``(train, held_out)`` indices: the last example of every class held
  out; None when some class has a single example (nothing to hold out)."""
  labels = np.asarray(support_y)
  classes = np.unique(labels)
  held_out = []
  for label in classes:
    where = np.flatnonzero(labels == label)
    if where.size < 2:
      return None
    held_out.append(where[-1])
  held_out = np.sort(np.asarray(held_out))
  train = np.setdiff1d(np.arange(labels.shape[0]), held_out)
  return train, held_out


# ----------------------------------------------------------------------------
# Meta-training.


@dataclasses.dataclass
class ATNASState:
  """Meta-learned supernet weights and the population, fittest first.

  ``fitness`` is zeros for a population that was never scored.
  """
  weights: Weights
  population: list[Encoding]
  fitness: np.ndarray


def init_state(spec: SupernetSpec, cfg: ATNASConfig, seed: int) -> ATNASState:
  """Where meta-training starts: fresh weights (``jax.random.key(seed)``)
  and ``population_size`` uniformly random encodings (unscored)."""
  rng = np.random.default_rng([seed, _SEARCH_STREAM])
  population = random_population(cfg.population_size, encoding_shapes(spec),
                                 op_choices(spec), rng)
  return ATNASState(init_supernet_weights(spec, jax.random.key(seed)),
                    population, np.zeros(cfg.population_size))


def _task(episodes: Any, index: int) -> tuple[jax.Array, ...]:
  return tuple(jnp.asarray(a[index]) for a in episodes)


def population_fitness_fn(weights: Weights, spec: SupernetSpec,
                          cfg: ATNASConfig, episodes: Any,
                          timings: list[float] | None = None):
  """``encoding -> fitness``: mean query fitness over a batch of episodes
  after ``cfg.inner_steps`` adaptation (meta-training's fitness)."""
  tasks = [_task(episodes, i) for i in range(episodes.support_x.shape[0])]

  def fitness_fn(encoding: Encoding) -> float:
    start = time.perf_counter()
    arch = encoding_to_arch_weights(encoding, spec)
    value = float(np.mean([
        subnet_fitness(weights, arch, sx, sy, qx, qy, spec, cfg.inner_lr,
                       cfg.inner_steps) for sx, sy, qx, qy in tasks]))
    if timings is not None:
      timings.append(time.perf_counter() - start)
    return value

  return fitness_fn


def meta_train_atnas(family: Any, spec: SupernetSpec, cfg: ATNASConfig, *,
                     seed: int = 0, progress: bool = False
                     ) -> tuple[ATNASState, dict[str, Any]]:
  """Meta-learns the supernet weights while evolving the population.

  Step ``t`` samples ``family.sample_batch(np.random.default_rng([seed, t]),
  cfg.meta_batch_size)`` (as ``base.train.meta_train``); evolution round
  after step ``t`` scores members on ``cfg.fitness_tasks`` tasks of
  ``np.random.default_rng([seed, t, 0xF1])``. See the module docstring.

  Returns:
    ``(state, log)``: the final weights and population (fittest first, with
    fitness), and ``{"meta_loss": [per step], "evolution": [per round:
    step, best, mean, evaluations], "fitness_seconds": [per evaluation]}``.

  Raises:
    NonFiniteLossError: the meta-loss became NaN or infinite.
  """
  from base.train import episode_rng, fetch_finite_losses
  if family.num_ways != spec.num_classes:
    raise ConfigError(f"a {spec.num_classes}-way supernet cannot meta-train "
                      f"on {family.num_ways}-way tasks")
  state = init_state(spec, cfg, seed)
  weights, population = state.weights, state.population
  fitness: np.ndarray | None = None
  rng = np.random.default_rng([seed, _SEARCH_STREAM, 1])
  choices = op_choices(spec)
  opt_state = optax.adam(cfg.meta_lr).init(weights)
  inner_lr = jnp.float32(cfg.inner_lr)
  log: dict[str, Any] = {"meta_loss": [], "evolution": [],
                         "fitness_seconds": []}
  pending: list[jax.Array] = []

  def score_round(step: int, generations: int) -> None:
    nonlocal population, fitness
    episodes = family.sample_batch(
        np.random.default_rng([seed, step, _FITNESS_STREAM]),
        cfg.fitness_tasks)
    result = evolve(population,
                    population_fitness_fn(weights, spec, cfg, episodes,
                                          log["fitness_seconds"]),
                    generations, rng, choices=choices,
                    **cfg.evolution_kwargs())
    population, fitness = result.population, result.fitness
    log["evolution"].append({"step": step + 1,
                             "best": float(fitness[0]),
                             "mean": float(np.mean(fitness)),
                             "evaluations": result.evaluations})

  bar = tqdm.tqdm(total=cfg.num_steps, desc="atnas meta-train",
                  disable=not progress, dynamic_ncols=True)
  try:
    for step in range(cfg.num_steps):
      episodes = family.sample_batch(episode_rng(seed, step),
                                     cfg.meta_batch_size)
      members = rng.integers(len(population), size=cfg.meta_batch_size)
      losses, grads = [], []
      for i, member in enumerate(members):
        sx, sy, qx, qy = _task(episodes, i)
        arch = encoding_to_arch_weights(population[member], spec)
        adapted = _adapt(weights, arch, sx, sy, inner_lr, spec=spec,
                         steps=cfg.inner_steps)
        loss, task_grads = _query_gradient(adapted, arch, qx, qy, spec=spec)
        losses.append(loss)
        grads.append(task_grads)
      weights, opt_state, loss = _apply_mean_gradient(
          weights, opt_state, losses, grads, meta_lr=cfg.meta_lr)
      pending.append(loss)
      done = step + 1
      if done % LOG_EVERY == 0 or done == cfg.num_steps:
        fetched = fetch_finite_losses(pending, done, "AT-NAS meta-loss")
        pending = []
        log["meta_loss"].extend(fetched)
        bar.set_postfix(loss=f"{np.mean(fetched):.3f}")
      if done % cfg.evolve_every == 0:
        score_round(step, cfg.generations)
      bar.update(1)
    if fitness is None or cfg.num_steps % cfg.evolve_every:
      score_round(cfg.num_steps - 1, 0)  # score the final population only
  finally:
    bar.close()
  return ATNASState(weights, population, np.asarray(fitness)), log


# ----------------------------------------------------------------------------
# The learner.


def _check_images(x: Any, spec: SupernetSpec, name: str) -> jax.Array:
  x = np.asarray(x)
  if x.ndim != 4 or x.shape[-1] != spec.in_channels or x.shape[0] < 1:
    raise ConfigError(f"{name} must be [n, H, W, {spec.in_channels}] images, "
                      f"got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ConfigError(f"{name} contains NaN or infinite values")
  return jnp.asarray(x, jnp.float32)


def _check_labels(y: Any, n: int, ways: int) -> np.ndarray:
  y = np.asarray(y)
  if (y.shape != (n,) or not np.issubdtype(y.dtype, np.integer)
      or (y.size and (y.min() < 0 or y.max() >= ways))):
    raise ConfigError(f"support_y must be {n} integer labels in "
                      f"0..{ways - 1}, got {y.dtype} of shape {y.shape}")
  return y.astype(np.int32)


@dataclasses.dataclass
class ATNASLearner:
  """Meta-learned supernet weights and population, ready for new tasks.

  ``parameters`` counts the weights of the population's best subnet (the
  architecture a task's search starts from); the subnet chosen per task is
  in each ``TaskResult.genotype``.
  """
  spec: SupernetSpec
  cfg: ATNASConfig
  state: ATNASState

  @property
  def parameters(self) -> int:
    return subnet_param_count(self.state.weights, self.state.population[0],
                              self.spec)

  def restrict_ways(self, ways: int) -> "ATNASLearner":
    if ways == self.spec.num_classes:
      return self
    weights = restrict_classifier(self.state.weights, ways, "AT-NAS supernet")
    return dataclasses.replace(
        self, spec=dataclasses.replace(self.spec, num_classes=ways),
        state=dataclasses.replace(self.state, weights=weights))

  def search(self, support_x: Any, support_y: Any, *, seed: int):
    """Evolves the population on one support set; ``EvolutionResult``."""
    sx = _check_images(support_x, self.spec, "support_x")
    sy = _check_labels(support_y, sx.shape[0], self.spec.num_classes)
    split = support_split(sy)
    if split is None:
      train_x, train_y, eval_x, eval_y = sx, sy, sx, sy
    else:
      train, held_out = split
      train_x, train_y = sx[train], sy[train]
      eval_x, eval_y = sx[held_out], sy[held_out]
    weights, spec, cfg = self.state.weights, self.spec, self.cfg

    def fitness_fn(encoding: Encoding) -> float:
      return subnet_fitness(weights, encoding_to_arch_weights(encoding, spec),
                            train_x, train_y, eval_x, eval_y, spec,
                            cfg.inner_lr, cfg.inner_steps)

    return evolve(self.state.population, fitness_fn, cfg.test_generations,
                  np.random.default_rng(seed), choices=op_choices(spec),
                  **cfg.evolution_kwargs())

  def adapt_and_predict(self, support_x: Any, support_y: Any, query_x: Any,
                        *, seed: int) -> TaskResult:
    """Evolves on the support set, adapts the best subnet, predicts."""
    result = self.search(support_x, support_y, seed=seed)
    best = result.population[0]
    sx = _check_images(support_x, self.spec, "support_x")
    sy = _check_labels(support_y, sx.shape[0], self.spec.num_classes)
    qx = _check_images(query_x, self.spec, "query_x")
    arch = encoding_to_arch_weights(best, self.spec)
    adapted = adapt_subnet(self.state.weights, arch, sx, sy, self.spec,
                           self.cfg.inner_lr, self.cfg.eval_steps)
    query_logits = _logits(adapted, arch, qx, spec=self.spec)
    support_accuracy, _ = score_logits(
        _logits(adapted, arch, sx, spec=self.spec), sy)
    genotype = encoding_to_genotype(
        best, self.spec, population_agreement(result.population, best))
    return TaskResult(np.asarray(jnp.argmax(query_logits, -1)),
                      support_accuracy, genotype)


# ----------------------------------------------------------------------------
# The artifact.


def save_atnas(path: str | os.PathLike, state: ATNASState,
               spec: SupernetSpec, cfg: ATNASConfig,
               metadata: Mapping[str, Any] | None = None) -> None:
  """Writes weights, population and fitness to one file, atomically.

  The header holds the supernet spec, the config and ``metadata`` (JSON).
  """
  population = {name: np.stack([np.asarray(m[name], np.int32)
                                for m in state.population])
                for name in CELL_TYPES}
  tree = {"weights": state.weights, "population": population,
          "fitness": np.asarray(state.fitness, np.float32)}
  header = {"format": FORMAT, "version": FORMAT_VERSION,
            "spec": spec.to_dict(), "config": dataclasses.asdict(cfg),
            "metadata": dict(metadata or {})}
  serialization.write_arrays_file(path, tree, header)


def load_atnas(path: str | os.PathLike
               ) -> tuple[ATNASState, SupernetSpec, dict[str, Any]]:
  """Reads ``(state, spec, header)`` written by :func:`save_atnas`.

  Raises:
    CheckpointError: naming ``path``, when the file is missing, corrupt, of
      another format, or its arrays do not fit the spec in its header.
  """
  path = os.fspath(path)
  tree, header = serialization.read_arrays_file(
      path, kind="meta-trained AT-NAS", format_name=FORMAT,
      version=FORMAT_VERSION)
  try:
    spec = SupernetSpec.from_dict(header["spec"])
    expected = jax.eval_shape(
        lambda: init_supernet_weights(spec, jax.random.key(0)))
  except Exception as e:  # a missing or invalid spec
    raise CheckpointError(f"AT-NAS file {path} has an invalid supernet spec "
                          f"header: {type(e).__name__}") from None
  want = {k: tuple(v.shape)
          for k, v in serialization.flatten(expected).items()}
  weights = tree.get("weights", {})
  have = {k: tuple(np.shape(v))
          for k, v in serialization.flatten(weights).items()}
  if want != have:
    wrong = sorted(k for k in set(want) | set(have)
                   if want.get(k) != have.get(k))
    raise CheckpointError(f"AT-NAS file {path} weights do not match its "
                          f"supernet spec: {wrong[:3]}")
  try:
    arrays = {name: np.asarray(tree["population"][name])
              for name in CELL_TYPES}
    fitness = np.asarray(tree["fitness"], np.float64)
    size = fitness.shape[0]
    population = [check_encoding({n: arrays[n][i] for n in CELL_TYPES}, spec)
                  for i in range(size)]
    if any(a.shape[0] != size for a in arrays.values()) or size < 1:
      raise ConfigError("population and fitness sizes differ")
  except (KeyError, IndexError, TypeError, ConfigError) as e:
    raise CheckpointError(f"AT-NAS file {path} has an invalid population: "
                          f"{e}") from None
  return ATNASState(weights, population, fitness), spec, header


# ----------------------------------------------------------------------------
# The method interface.


def meta_train(exp: Any, cfg: ATNASConfig, workdir: str, *, seed: int,
               progress: bool = True) -> dict[str, Any]:
  """Meta-trains on ``exp.train_family``; writes ``workdir/atnas.msgpack``."""
  start = time.perf_counter()
  state, log = meta_train_atnas(exp.train_family, exp.spec, cfg, seed=seed,
                                progress=progress)
  seconds = time.perf_counter() - start
  timings = log["fitness_seconds"]
  summary = {
      "seconds": seconds, "steps": cfg.num_steps,
      "final_meta_loss": float(np.mean(log["meta_loss"][-LOG_EVERY:])),
      "best_fitness": float(state.fitness[0]),
      "evolution_rounds": len(log["evolution"]),
      "fitness_evaluations": len(timings),
      # Median over members of one fitness evaluation (cfg.fitness_tasks
      # tasks); the first evaluations include compilation.
      "seconds_per_fitness": float(np.median(timings)) if timings else 0.0,
      "best_genotype": encoding_to_genotype(
          state.population[0], exp.spec,
          population_agreement(state.population,
                               state.population[0])).to_dict()}
  save_atnas(os.path.join(workdir, FILENAME), state, exp.spec, cfg,
             {"seed": seed, **{k: v for k, v in summary.items()
                               if k != "best_genotype"},
              "evolution": log["evolution"]})
  return summary


def load_learner(exp: Any, cfg: ATNASConfig, workdir: str) -> ATNASLearner:
  """The learner of ``workdir/atnas.msgpack``, with ``cfg``'s test settings.

  Raises:
    CheckpointError: the file is missing or corrupt, or was meta-trained for
      another supernet than ``exp.spec``.
  """
  path = os.path.join(workdir, FILENAME)
  state, spec, _ = load_atnas(path)
  if spec != exp.spec:
    raise CheckpointError(f"AT-NAS file {path} holds a supernet "
                          f"{spec.to_dict()}, the config asks for "
                          f"{exp.spec.to_dict()}")
  return ATNASLearner(spec, cfg, state)


METHOD = Method(name="atnas", title="AT-NAS (evolved subnets, meta-learned "
                "supernet)", config_class=ATNASConfig, meta_train=meta_train,
                load_learner=load_learner)
