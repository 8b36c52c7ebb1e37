"""The meta-objective and the compiled meta-step.

For a meta-batch of tasks (episodes with a support and a query set) the
meta-loss of the prior θ is

    𝓛(θ) = mean_tasks [ E_{q_τ}[ −mean log p(y_query | x_query, α, w) ]
                        + β · KL(q_τ ‖ p_θ) / |support| ],

where q_τ = adapt_posterior(θ, support) (``base.adaptation``). The meta-step
vmaps that over the tasks, averages, differentiates in θ and applies two Optax
optimizers: one for the architecture logits and one for the weight means and
log-scales.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from base.adaptation import (AdaptConfig, TaskMetrics, adapt_posterior,
                             mean_over_tasks, task_loss)
from base.data import Episode
from base.errors import ConfigError
from base.prior import SupernetDist


@dataclasses.dataclass(frozen=True)
class MetaOptConfig:
  """Meta-optimiser settings.

  Attributes:
    lr_arch: Adam rate of the prior's architecture logits.
    lr_weights: Adam rate of the prior's weight means and log-scales.
    learn_weight_std: meta-learn the prior's weight log-scales (else fixed).
    grad_clip: global-norm clip of the meta-gradient (0 disables).
  """
  lr_arch: float = 3e-3
  lr_weights: float = 1e-3
  learn_weight_std: bool = True
  grad_clip: float = 10.0


@struct.dataclass
class MetaState:
  """Everything meta-training carries from step to step (a pytree)."""
  step: jax.Array
  prior: SupernetDist
  opt_state: Any


def make_optimizer(cfg: MetaOptConfig) -> optax.GradientTransformation:
  """Adam on arch logits and on weights, each with its own rate."""
  if cfg.lr_arch < 0 or cfg.lr_weights < 0:
    raise ConfigError("meta learning rates must be >= 0")

  def labels(dist: SupernetDist) -> SupernetDist:
    std_label = "weights" if cfg.learn_weight_std else "frozen"
    return dist.replace(
        arch_logits=jax.tree.map(lambda _: "arch", dist.arch_logits),
        weight_mean=jax.tree.map(lambda _: "weights", dist.weight_mean),
        weight_log_std=jax.tree.map(lambda _: std_label, dist.weight_log_std))

  tx = optax.multi_transform(
      {"arch": optax.adam(cfg.lr_arch), "weights": optax.adam(cfg.lr_weights),
       "frozen": optax.set_to_zero()}, labels)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def init_meta_state(prior: SupernetDist, opt_cfg: MetaOptConfig) -> MetaState:
  return MetaState(step=jnp.zeros((), jnp.int32), prior=prior,
                   opt_state=make_optimizer(opt_cfg).init(prior))


def task_meta_loss(prior: SupernetDist, episode: Episode, key: jax.Array,
                   temperature: jax.Array, cfg: AdaptConfig
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Meta-loss of one task: adapt on support, score q_T on the query set."""
  adapt_key, query_key = jax.random.split(key)
  posterior, support = adapt_posterior(prior, adapt_key, episode.support_x,
                                       episode.support_y, temperature, cfg)
  loss, query = task_loss(posterior, prior, query_key, episode.query_x,
                          episode.query_y, temperature, cfg,
                          num_examples=episode.support_x.shape[0])
  return loss, _metrics(support, query)


def _metrics(support: TaskMetrics, query: TaskMetrics) -> dict[str, jax.Array]:
  return {"meta_loss": query.loss, "query_nll": query.nll,
          "query_accuracy": query.accuracy, "kl": query.kl,
          "support_nll": support.nll, "support_accuracy": support.accuracy}


def batch_meta_loss(prior: SupernetDist, episodes: Episode, key: jax.Array,
                    temperature: jax.Array, cfg: AdaptConfig
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean meta-loss over a meta-batch (leading task axis), vmapped."""
  keys = jax.random.split(key, episodes.support_x.shape[0])
  losses, metrics = jax.vmap(task_meta_loss, in_axes=(None, 0, 0, None, None))(
      prior, episodes, keys, temperature, cfg)
  return jnp.mean(losses), mean_over_tasks(metrics)


@functools.partial(jax.jit, static_argnames=("cfg", "opt_cfg"),
                   donate_argnames=("state",))
def meta_step(state: MetaState, episodes: Episode, key: jax.Array,
              temperature: jax.Array, *, cfg: AdaptConfig,
              opt_cfg: MetaOptConfig
              ) -> tuple[MetaState, dict[str, jax.Array]]:
  """One compiled meta-step: adapt every task, meta-gradient, update.

  ``state`` is donated: its buffers are reused for the new state. Metrics are
  returned as device arrays; callers fetch them only every few steps.
  """
  (_, metrics), grads = jax.value_and_grad(batch_meta_loss, has_aux=True)(
      state.prior, episodes, key, temperature, cfg)
  optimizer = make_optimizer(opt_cfg)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.prior)
  prior = optax.apply_updates(state.prior, updates)
  metrics["grad_norm"] = optax.global_norm(grads)
  return MetaState(state.step + 1, prior, opt_state), metrics
