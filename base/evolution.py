"""Genetic operators over discrete architecture encodings; an evolution loop.

Evolutionary architecture search (Real et al. 2019, "Regularized Evolution";
Guo et al. 2020, "Single Path One-Shot NAS"; Rong et al. 2021, "AT-NAS:
Adaptive Transfer Neural Architecture Search for Few-shot Learning") treats an
architecture as a small vector of discrete choices and searches it with
mutation, crossover and selection. Here an *encoding* is a dict of 1-D int
arrays, e.g. ``{"normal": [E], "reduce": [E]}`` with one operation index per
supernet edge and cell type (``base.methods.atnas``); nothing in this module
knows about supernets, so the operators serve any categorical search space.

Every value of an encoding is one of ``choices``, the allowed op indices (a
search space that excludes ``none`` passes the indices of the other
operations). All functions are pure NumPy on tiny arrays and take an explicit
``np.random.Generator``, so a search is reproducible from its seed; they
never modify their arguments.

Choices this module makes (the papers leave them open):

* **Mutation** resamples each position with probability ``prob`` to a
  *different* allowed value; if no position was picked, one position chosen
  uniformly at random changes, so a mutant always differs from its parent
  (SPOS and AT-NAS mutate "at least one" choice).
* **Crossover** is uniform: each position comes from either parent with
  probability 1/2, so a child's values always come from its parents.
* **Selection** is a tournament: ``size`` members drawn uniformly *with*
  replacement, the fittest wins (the lowest index among equals).
* **Elitism**: the ``elite_count`` fittest members survive unchanged with their
  fitness; the rest of the next generation are children (crossover of two
  tournament winners with probability ``crossover_prob``, else a copy of one
  winner, then always mutated). Because elites keep their fitness and the
  fitness function is fixed during one :func:`evolve` call, the best fitness
  never decreases from one generation to the next.
* **Fitness caching**: within one :func:`evolve` call every distinct encoding
  is evaluated once (fitness functions here are deterministic: a fixed set
  of tasks and fixed weights), so duplicate children cost nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from base.errors import ConfigError

Encoding = dict[str, np.ndarray]  # {name: int array [n]}
FitnessFn = Callable[[Encoding], float]


def check_choices(choices: Sequence[int]) -> np.ndarray:
  """``choices`` as a sorted unique int array; ConfigError if fewer than 2."""
  values = np.unique(np.asarray(choices, dtype=np.int64).reshape(-1))
  if values.size < 2:
    raise ConfigError(f"evolution needs at least 2 allowed choices, got "
                      f"{list(values)}")
  if values[0] < 0:
    raise ConfigError(f"choices must be non-negative op indices, got "
                      f"{list(values)}")
  return values


def validate_encoding(encoding: Mapping[str, np.ndarray],
                      shapes: Mapping[str, int],
                      choices: Sequence[int]) -> Encoding:
  """Checks names, lengths and values; returns an int32 copy.

  Raises:
    ConfigError: a missing or extra name, a wrong length, or a value that is
      not one of ``choices``.
  """
  if not isinstance(encoding, Mapping) or set(encoding) != set(shapes):
    names = sorted(encoding) if isinstance(encoding, Mapping) else encoding
    raise ConfigError(f"encoding must have the parts {sorted(shapes)}, "
                      f"got {names!r}")
  allowed = check_choices(choices)
  result = {}
  for name in sorted(shapes):
    values = np.asarray(encoding[name])
    if values.shape != (shapes[name],) or not np.issubdtype(values.dtype,
                                                            np.integer):
      raise ConfigError(f"encoding[{name!r}] must be {shapes[name]} integers, "
                        f"got {values.dtype} array of shape {values.shape}")
    bad = sorted(set(values.tolist()) - set(allowed.tolist()))
    if bad:
      raise ConfigError(f"encoding[{name!r}] uses op indices {bad} outside "
                        f"the allowed {allowed.tolist()}")
    result[name] = values.astype(np.int32)
  return result


def encoding_key(encoding: Mapping[str, np.ndarray]) -> tuple:
  """A hashable key: equal encodings, equal keys."""
  return tuple((name, tuple(int(v) for v in np.asarray(encoding[name])))
               for name in sorted(encoding))


def random_encoding(shapes: Mapping[str, int], choices: Sequence[int],
                    rng: np.random.Generator) -> Encoding:
  """Every position uniform over ``choices`` (uniform path sampling)."""
  allowed = check_choices(choices)
  return {name: rng.choice(allowed, size=int(shapes[name])).astype(np.int32)
          for name in sorted(shapes)}


def random_population(size: int, shapes: Mapping[str, int],
                      choices: Sequence[int],
                      rng: np.random.Generator) -> list[Encoding]:
  """``size`` independent :func:`random_encoding` s."""
  if size < 1:
    raise ConfigError(f"population size must be >= 1, got {size}")
  return [random_encoding(shapes, choices, rng) for _ in range(size)]


def _resample_other(value: int, allowed: np.ndarray,
                    rng: np.random.Generator) -> int:
  others = allowed[allowed != value]
  return int(rng.choice(others))


def mutate(encoding: Mapping[str, np.ndarray], choices: Sequence[int],
           prob: float, rng: np.random.Generator) -> Encoding:
  """Each position resampled to another allowed value with probability
  ``prob``; at least one position always changes.

  A value outside ``choices`` in the parent (never produced here) is
  replaced when picked, like any other.
  """
  if not 0.0 <= prob <= 1.0:
    raise ConfigError(f"mutation probability must be in [0, 1], got {prob}")
  allowed = check_choices(choices)
  names = sorted(encoding)
  child = {name: np.array(encoding[name], dtype=np.int32) for name in names}
  picks = {name: rng.random(child[name].shape[0]) < prob for name in names}
  if not any(p.any() for p in picks.values()):
    positions = [(name, i) for name in names
                 for i in range(child[name].shape[0])]
    if not positions:
      raise ConfigError("cannot mutate an empty encoding")
    name, index = positions[int(rng.integers(len(positions)))]
    picks[name][index] = True
  for name in names:
    for index in np.flatnonzero(picks[name]):
      child[name][index] = _resample_other(int(child[name][index]), allowed,
                                           rng)
  return child


def crossover(parent_a: Mapping[str, np.ndarray],
              parent_b: Mapping[str, np.ndarray],
              rng: np.random.Generator) -> Encoding:
  """Uniform crossover: each position from ``parent_a`` or ``parent_b``."""
  if encoding_shapes(parent_a) != encoding_shapes(parent_b):
    raise ConfigError(f"cannot cross encodings of shapes "
                      f"{encoding_shapes(parent_a)} and "
                      f"{encoding_shapes(parent_b)}")
  child = {}
  for name in sorted(parent_a):
    a = np.asarray(parent_a[name], np.int32)
    b = np.asarray(parent_b[name], np.int32)
    child[name] = np.where(rng.random(a.shape[0]) < 0.5, a, b).astype(np.int32)
  return child


def encoding_shapes(encoding: Mapping[str, np.ndarray]) -> dict[str, int]:
  """``{name: length}`` of an encoding."""
  return {name: int(np.shape(encoding[name])[0]) for name in sorted(encoding)}


def tournament_select(fitness: np.ndarray, size: int,
                      rng: np.random.Generator) -> int:
  """Index of the fittest of ``size`` members drawn with replacement."""
  fitness = np.asarray(fitness, np.float64)
  if size < 1:
    raise ConfigError(f"tournament size must be >= 1, got {size}")
  entrants = np.sort(rng.integers(fitness.shape[0], size=size))
  return int(entrants[np.argmax(fitness[entrants])])


def rank(fitness: np.ndarray) -> np.ndarray:
  """Indices from fittest to least fit; ties keep their order (stable)."""
  return np.argsort(-np.asarray(fitness, np.float64), kind="stable")


@dataclasses.dataclass
class EvolutionResult:
  """What :func:`evolve` returns.

  Attributes:
    population: the final generation, fittest first.
    fitness: their fitness, ``[population_size]``, non-increasing.
    best_history: the best fitness of the initial population and after each
      generation (``generations + 1`` values; non-decreasing with elitism).
    evaluations: calls of the fitness function (after caching).
  """
  population: list[Encoding]
  fitness: np.ndarray
  best_history: list[float]
  evaluations: int


def _check_fitness(value: float, encoding: Encoding) -> float:
  value = float(value)
  if np.isnan(value):
    raise ConfigError(f"fitness function returned NaN for "
                      f"{encoding_key(encoding)}")
  return value


def evolve(population: Sequence[Mapping[str, np.ndarray]],
           fitness_fn: FitnessFn, generations: int, rng: np.random.Generator,
           *, choices: Sequence[int], mutation_prob: float,
           crossover_prob: float, tournament_size: int, elite_count: int,
           fitness: Sequence[float] | None = None) -> EvolutionResult:
  """Evolves ``population`` for ``generations`` generations, with elitism.

  Each generation keeps the ``elite_count`` fittest members and fills the
  rest with children: two tournament winners crossed over with probability
  ``crossover_prob`` (else one winner copied), then mutated (at least one
  change). Fitness is maximised; ``fitness_fn`` is called once per distinct
  encoding (see the module docstring).

  Args:
    population: the current generation (its size is kept).
    fitness_fn: ``encoding -> float``, deterministic during this call.
    generations: generations to run (0: only evaluate and sort).
    rng: the only randomness; the same state gives the same result.
    choices: allowed values of every position.
    mutation_prob: per-position mutation probability.
    crossover_prob: probability that a child has two parents.
    tournament_size: members per tournament.
    elite_count: members copied unchanged into the next generation
      (``0 <= elite_count < len(population)``).
    fitness: known fitness of ``population`` (skips evaluating it).

  Returns:
    An :class:`EvolutionResult`, fittest member first.
  """
  size = len(population)
  if size < 1:
    raise ConfigError("evolve needs a non-empty population")
  if not isinstance(generations, (int, np.integer)) or generations < 0:
    raise ConfigError(f"generations must be an integer >= 0, got "
                      f"{generations!r}")
  if not 0 <= elite_count < size and generations > 0:
    raise ConfigError(f"elite_count must be in [0, {size - 1}] for a "
                      f"population of {size}, got {elite_count}")
  if not 0.0 <= crossover_prob <= 1.0:
    raise ConfigError(f"crossover probability must be in [0, 1], got "
                      f"{crossover_prob}")
  shapes = encoding_shapes(population[0])
  members = [validate_encoding(member, shapes, choices)
             for member in population]
  cache: dict[tuple, float] = {}
  evaluations = 0

  def evaluate(encoding: Encoding) -> float:
    nonlocal evaluations
    key = encoding_key(encoding)
    if key not in cache:
      cache[key] = _check_fitness(fitness_fn(encoding), encoding)
      evaluations += 1
    return cache[key]

  if fitness is None:
    scores = np.array([evaluate(m) for m in members], np.float64)
  else:
    scores = np.asarray(fitness, np.float64).reshape(-1)
    if scores.shape != (size,) or np.isnan(scores).any():
      raise ConfigError(f"fitness must be {size} numbers (no NaN), got "
                        f"shape {scores.shape}")
    for member, score in zip(members, scores):
      cache.setdefault(encoding_key(member), float(score))
  order = rank(scores)
  members, scores = [members[i] for i in order], scores[order]
  history = [float(scores[0])]
  for _ in range(int(generations)):
    children = []
    while len(children) < size - elite_count:
      first = members[tournament_select(scores, tournament_size, rng)]
      if rng.random() < crossover_prob:
        second = members[tournament_select(scores, tournament_size, rng)]
        child = crossover(first, second, rng)
      else:
        child = {name: values.copy() for name, values in first.items()}
      children.append(mutate(child, choices, mutation_prob, rng))
    child_scores = [evaluate(child) for child in children]
    members = members[:elite_count] + children
    scores = np.concatenate([scores[:elite_count],
                             np.asarray(child_scores, np.float64)])
    order = rank(scores)
    members, scores = [members[i] for i in order], scores[order]
    history.append(float(scores[0]))
  return EvolutionResult(members, scores, history, evaluations)
