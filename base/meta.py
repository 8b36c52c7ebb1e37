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
    task_batching: how a meta-batch's tasks run: "vmap", "loop" or "auto"
      (see :func:`resolve_task_batching`).
  """
  lr_arch: float = 3e-3
  lr_weights: float = 1e-3
  learn_weight_std: bool = True
  grad_clip: float = 10.0
  task_batching: str = "auto"


TASK_BATCHING = ("auto", "vmap", "loop")


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
  """Step 0 with a copy of ``prior`` (the meta-step donates its state)."""
  prior = jax.tree.map(jnp.copy, prior)
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


def resolve_task_batching(mode: str) -> str:
  """``"auto"``: a Python loop over tasks on CPU, ``vmap`` elsewhere.

  On XLA:CPU, vmapping tasks that carry their own weights compiles to slow
  batched convolutions and takes minutes to compile, while one compiled
  single-task program called per task is both faster to build and to run;
  on GPUs and TPUs the vmapped meta-batch fills the device.
  """
  if mode not in TASK_BATCHING:
    raise ConfigError(f"unknown task_batching {mode!r}; expected one of "
                      f"{TASK_BATCHING}")
  if mode == "auto":
    return "loop" if jax.default_backend() == "cpu" else "vmap"
  return mode


def apply_meta_gradient(state: MetaState, grads: SupernetDist,
                        opt_cfg: MetaOptConfig) -> tuple[MetaState, jax.Array]:
  """The Optax update of the prior; returns the new state and |grad|."""
  optimizer = make_optimizer(opt_cfg)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.prior)
  prior = optax.apply_updates(state.prior, updates)
  return MetaState(state.step + 1, prior, opt_state), optax.tree.norm(grads)


@functools.partial(jax.jit, static_argnames=("cfg", "opt_cfg"),
                   donate_argnames=("state",))
def _meta_step_vmapped(state, episodes, key, temperature, *, cfg, opt_cfg):
  (_, metrics), grads = jax.value_and_grad(batch_meta_loss, has_aux=True)(
      state.prior, episodes, key, temperature, cfg)
  state, metrics["grad_norm"] = apply_meta_gradient(state, grads, opt_cfg)
  return state, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def task_meta_gradient(prior: SupernetDist, episode: Episode, key: jax.Array,
                       temperature: jax.Array, *, cfg: AdaptConfig
                       ) -> tuple[SupernetDist, dict[str, jax.Array]]:
  """Meta-gradient and metrics of one task (a compiled single-task program)."""
  (_, metrics), grads = jax.value_and_grad(task_meta_loss, has_aux=True)(
      prior, episode, key, temperature, cfg)
  return grads, metrics


@functools.partial(jax.jit, static_argnames=("opt_cfg",),
                   donate_argnames=("state",))
def _apply_mean_gradient(state, task_grads, task_metrics, *, opt_cfg):
  grads = jax.tree.map(lambda *g: sum(g) / len(g), *task_grads)
  metrics = jax.tree.map(lambda *m: sum(m) / len(m), *task_metrics)
  state, metrics["grad_norm"] = apply_meta_gradient(state, grads, opt_cfg)
  return state, metrics


def meta_step(state: MetaState, episodes: Episode, key: jax.Array,
              temperature: jax.Array, *, cfg: AdaptConfig,
              opt_cfg: MetaOptConfig
              ) -> tuple[MetaState, dict[str, jax.Array]]:
  """One meta-step: adapt every task, average meta-gradients, update.

  ``episodes`` has a leading task axis. With ``task_batching="vmap"`` this
  is one compiled program over the whole meta-batch; with ``"loop"`` one
  compiled single-task program runs per task and a second one averages and
  applies the gradients. Both compute the same mean gradient (same per-task
  keys). ``state`` is donated; metrics stay on the device until fetched.
  """
  if resolve_task_batching(opt_cfg.task_batching) == "vmap":
    return _meta_step_vmapped(state, episodes, key, temperature, cfg=cfg,
                              opt_cfg=opt_cfg)
  num_tasks = episodes.support_x.shape[0]
  keys = jax.random.split(key, num_tasks)
  grads, metrics = [], []
  for i in range(num_tasks):
    episode = jax.tree.map(lambda a, i=i: a[i], episodes)
    task_grads, task_metrics = task_meta_gradient(
        state.prior, episode, keys[i], temperature, cfg=cfg)
    grads.append(task_grads)
    metrics.append(task_metrics)
  return _apply_mean_gradient(state, grads, metrics, opt_cfg=opt_cfg)
