"""The interface every few-shot (architecture-search) method implements.

A method is meta-trained once on an experiment's meta-training task family
and then *adapts* to new tasks. For the evaluation harness and the comparison
command (``base.compare``) every method is the same two things:

* a :class:`Method` registry entry (``base.methods.get_method(name)``): its config
  dataclass (the config section named like the method, e.g.
  ``config.metanas``), a ``meta_train`` function that writes the method's
  artifact into a workdir, and a ``load_learner`` function that reads it back;
* a :class:`Learner`: the meta-trained method, which adapts to one task's
  support set and predicts labels of its query images.

Scoring (:func:`score_learner`) is shared, so all methods see the very same
episodes for the same seed and are timed the same way (adaptation only,
compilation excluded).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from base.evaluation import EpisodeScore, score_episodes


@dataclasses.dataclass
class TaskResult:
  """What a learner produced for one task.

  Attributes:
    query_predictions: predicted labels ``[M]`` of the query images.
    support_accuracy: accuracy on the support set after adaptation.
    genotype: the discrete architecture chosen for the task (a
      ``base.genotype.Genotype``), or None for a fixed backbone.
  """
  query_predictions: np.ndarray
  support_accuracy: float
  genotype: Any = None


@runtime_checkable
class Learner(Protocol):
  """A meta-trained method, ready to adapt to new N-way tasks."""

  #: Weights the learner uses at test time (for the results table).
  parameters: int

  def restrict_ways(self, ways: int) -> "Learner":
    """The learner for ``ways``-way tasks (``ways`` <= its own)."""
    ...

  def adapt_and_predict(self, support_x: np.ndarray, support_y: np.ndarray,
                        query_x: np.ndarray, *, seed: int) -> TaskResult:
    """Adapts to a support set (``[n, H, W, C]``, labels ``[n]``) and predicts
    the query labels; deterministic given ``seed``."""
    ...


MetaTrain = Callable[..., dict[str, Any]]
LoadLearner = Callable[..., Learner]


@dataclasses.dataclass(frozen=True)
class Method:
  """A registry entry.

  Attributes:
    name: the value of ``config.method`` (and the config section's name).
    title: the name in result tables.
    config_class: frozen dataclass built from ``config.<name>``.
    meta_train: ``(experiment, method_config, workdir, *, seed, progress)
      -> summary dict``; saves the method's artifact inside ``workdir``
      (atomically) and returns at least ``{"seconds": wall time}``.
    load_learner: ``(experiment, method_config, workdir) -> Learner``; a
      clear ``BaseUserError`` when the artifact is missing or corrupt.
  """
  name: str
  title: str
  config_class: type
  meta_train: MetaTrain
  load_learner: LoadLearner


def score_learner(learner: Learner, family: Any, *, episodes: int, seed: int,
                  desc: str | None = None) -> dict[str, Any]:
  """Query accuracy ± 95% CI of ``learner`` on ``episodes`` episodes.

  The first episode is adapted to once untimed (compilation), then every
  episode is timed; episodes are those of ``base.evaluation.score_episodes``
  for ``seed``, the same for every method.
  """

  def score_one(episode, index):
    if index == 0:
      learner.adapt_and_predict(episode.support_x, episode.support_y,
                                episode.query_x, seed=seed)
    start = time.perf_counter()
    result = learner.adapt_and_predict(episode.support_x, episode.support_y,
                                       episode.query_x, seed=seed + index)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(np.asarray(result.query_predictions)
                             == np.asarray(episode.query_y)))
    return EpisodeScore(accuracy, float(result.support_accuracy), seconds)

  row = score_episodes(family, score_one, episodes=episodes, seed=seed,
                       desc=desc)
  row["parameters"] = int(learner.parameters)
  return row
