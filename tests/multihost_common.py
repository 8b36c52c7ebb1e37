"""The meta-learning problem shared by the multi-process check and its test."""

from __future__ import annotations

TASKS = 4


def make_problem():
  """(prior, task family, adapt config, meta config) on the tiny digits."""
  import jax
  from base import meta, prior as prior_lib, train
  from base.adaptation import AdaptConfig
  from conftest import tiny_config
  exp = train.build_experiment(tiny_config())
  prior = prior_lib.init_prior(exp.spec, jax.random.key(0), 0.05)
  cfg = AdaptConfig(steps=2, lr_weights=1.0, lr_arch=1.0)
  opt = meta.MetaOptConfig(task_batching="shard")
  return prior, exp.train_family, cfg, opt
