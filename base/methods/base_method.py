"""BASE itself behind the method interface (``config.method = "base"``).

Meta-training is ``base.train.meta_train`` (the prior lands in
``workdir/prior.msgpack``); the learner adapts the prior to a task by the
ELBO steps of ``base.adaptation`` and predicts with the posterior
predictive, exactly as ``base.train.evaluate`` scores it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from base import prior as prior_lib
from base import task_adaptation
from base.adaptation import for_ways
from base.supernet import count_params
from base.methods.api import Method, TaskResult


@dataclasses.dataclass(frozen=True)
class BaseMethodConfig:
  """BASE needs no section of its own: it reads ``adapt``, ``meta``,
  ``train``, ``temperature`` and ``prior``."""


@dataclasses.dataclass
class BaseLearner:
  """A prior and the adaptation that turns it into a task posterior."""
  prior: prior_lib.SupernetDist
  adapt_config: Any
  temperature: float
  steps: int

  @property
  def parameters(self) -> int:
    return count_params(self.prior.weight_mean)

  def restrict_ways(self, ways: int) -> "BaseLearner":
    prior, adapt_config = for_ways(self.prior, self.adapt_config, ways)
    return dataclasses.replace(self, prior=prior, adapt_config=adapt_config)

  def adapt_and_predict(self, support_x, support_y, query_x, *,
                        seed: int) -> TaskResult:
    result = task_adaptation.adapt(self.prior, support_x, support_y, query_x,
                                   config=self.adapt_config,
                                   temperature=self.temperature,
                                   steps=self.steps, seed=seed)
    return TaskResult(np.asarray(result.query_predictions),
                      result.support_accuracy, result.genotype)


def meta_train(exp, cfg: BaseMethodConfig, workdir: str, *, seed: int,
               progress: bool = True) -> dict[str, Any]:
  """Meta-trains the prior into ``workdir/prior.msgpack``."""
  del cfg, seed  # BASE's seed is ``config.seed``, the callers' seed too.
  from base import train
  start = time.perf_counter()
  state = train.meta_train(exp.config, workdir, experiment=exp,
                           progress=progress)
  # The prior records the seconds of all the runs that resumed it; one of
  # an older version's metrics does not, and then this run's time is all.
  _, metadata = prior_lib.load_prior(
      os.path.join(workdir, train.PRIOR_FILENAME), return_metadata=True)
  seconds = metadata.get("meta_train_seconds")
  return {"seconds": time.perf_counter() - start if seconds is None
          else seconds, "steps": int(state.step)}


def load_learner(exp, cfg: BaseMethodConfig, workdir: str) -> BaseLearner:
  """The prior in ``workdir`` (or ``config.prior_path``), ready to adapt."""
  del cfg
  from base import train
  path = exp.config.get("prior_path") or os.path.join(workdir,
                                                      train.PRIOR_FILENAME)
  prior, metadata = train.load_prior_for(exp, path)
  return BaseLearner(prior, exp.adapt, exp.prior_temperature(metadata),
                     exp.evaluate.adapt_steps or exp.adapt.steps)


METHOD = Method(name="base", title="BASE (meta-learned prior, adapted)",
                config_class=BaseMethodConfig, meta_train=meta_train,
                load_learner=load_learner)
