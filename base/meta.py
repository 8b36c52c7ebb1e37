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
                             inner_step, inner_step_keys, mean_over_tasks,
                             sample_noise, task_keys, task_loss)
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
    task_batching: how a meta-batch's tasks run: "vmap", "loop", "shard"
      or "auto" (see :func:`resolve_task_batching`).
    inner_execution: how a task's inner steps run with ``task_batching=
      "loop"``: "fused" (all steps and the outer gradient in one compiled
      program: ``lax.scan``, or unrolled with ``adapt.unroll``), "stepwise"
      (one compiled ELBO step called per step, then a compiled query
      gradient; first order only) or "auto" (stepwise on CPU when first
      order, where it measured ~3x faster than fused and compiles in a
      fraction of the time; fused elsewhere).
  """
  lr_arch: float = 3e-3
  lr_weights: float = 1e-3
  learn_weight_std: bool = True
  grad_clip: float = 10.0
  task_batching: str = "auto"
  inner_execution: str = "auto"

  def __post_init__(self):
    if self.task_batching not in TASK_BATCHING:
      raise ConfigError(f"unknown meta.task_batching {self.task_batching!r};"
                        f" expected one of {TASK_BATCHING}")
    if self.inner_execution not in INNER_EXECUTION:
      raise ConfigError(f"unknown meta.inner_execution "
                        f"{self.inner_execution!r}; expected one of "
                        f"{INNER_EXECUTION}")


TASK_BATCHING = ("auto", "vmap", "loop", "shard")
INNER_EXECUTION = ("auto", "fused", "stepwise")


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
  adapt_key, query_key = task_keys(key, cfg)
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
  """``"auto"``: tasks sharded over devices when there are several, else a
  Python loop over tasks on CPU and ``vmap`` elsewhere.

  On XLA:CPU, vmapping tasks that carry their own weights compiles to slow
  batched convolutions and takes minutes to compile, while one compiled
  single-task program called per task is both faster to build and to run;
  on GPUs and TPUs the vmapped meta-batch fills the device, and with several
  devices (or hosts) ``base.sharding`` splits the meta-batch over them.
  """
  if mode not in TASK_BATCHING:
    raise ConfigError(f"unknown task_batching {mode!r}; expected one of "
                      f"{TASK_BATCHING}")
  if mode == "auto":
    if jax.device_count() > 1:
      return "shard"
    return "loop" if jax.default_backend() == "cpu" else "vmap"
  return mode


def resolve_inner_execution(opt_cfg: MetaOptConfig, cfg: AdaptConfig) -> str:
  """"fused" or "stepwise" for the loop over tasks (see MetaOptConfig)."""
  mode = opt_cfg.inner_execution
  if mode == "stepwise" and not cfg.first_order:
    raise ConfigError("meta.inner_execution='stepwise' needs "
                      "adapt.first_order=True (second order differentiates "
                      "through the steps, which must then be one program)")
  if mode == "auto":
    return ("stepwise" if cfg.first_order and jax.default_backend() == "cpu"
            else "fused")
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


_sample_noise = jax.jit(sample_noise, static_argnames=("cfg",))


def compiled_inner_step(q, prior, key, support_x, support_y, temperature, *,
                        cfg, noise=None):
  """One ELBO step as its own program (stepwise meta-training, and
  adaptation on CPU: ``base.task_adaptation.adapt_compiled``).

  The weight noise is drawn by a separate program and passed in
  (``adaptation.sample_noise``): same values as :func:`inner_step` draws.
  ``noise``: that draw for ``key``, when the caller already has it.
  """
  if noise is None:
    noise = _sample_noise(q, key, cfg=cfg)
  return _compiled_inner_step(q, prior, key, support_x, support_y,
                              temperature, noise, cfg=cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _compiled_inner_step(q, prior, key, support_x, support_y, temperature,
                         noise, *, cfg):
  return inner_step(q, prior, key, support_x, support_y, temperature, cfg,
                    noise)


def stepwise_inner_loop(prior: SupernetDist, key: jax.Array,
                        support_x: jax.Array, support_y: jax.Array,
                        temperature: jax.Array, *, cfg: AdaptConfig,
                        steps: int
                        ) -> tuple[SupernetDist, TaskMetrics, Any]:
  """``adapt_posterior`` as ``steps`` calls of :func:`compiled_inner_step`.

  Returns the posterior, the last step's metrics and the weight noise of
  the task's own draw when the noise is drawn per task (else ``None``).
  That draw depends on the key alone (the standard-normal ε of the
  reparameterisation), so with per-task noise it is drawn once here and
  reused by every step and by the query term, instead of once per call.
  """
  q, metrics = prior, TaskMetrics(*(jnp.zeros(()),) * 4)
  task_noise = (_sample_noise(prior, key, cfg=cfg)
                if cfg.noise_per_task and steps else None)
  for step_key in (inner_step_keys(key, steps, cfg) if steps else ()):
    q, metrics = compiled_inner_step(q, prior, step_key, support_x,
                                     support_y, temperature, cfg=cfg,
                                     noise=task_noise)
  return q, metrics, task_noise


def _query_meta_gradient(q, prior, key, query_x, query_y, temperature, *, cfg,
                         num_examples, noise=None):
  if noise is None:
    noise = _sample_noise(q, key, cfg=cfg)
  return _query_meta_gradient_program(
      q, prior, key, query_x, query_y, temperature, noise, cfg=cfg,
      num_examples=num_examples)


@functools.partial(jax.jit, static_argnames=("cfg", "num_examples"))
def _query_meta_gradient_program(q, prior, key, query_x, query_y,
                                 temperature, noise, *, cfg, num_examples):
  def loss(q, prior):
    return task_loss(q, prior, key, query_x, query_y, temperature, cfg,
                     num_examples=num_examples, noise=noise)

  (_, metrics), (grad_q, grad_prior) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(q, prior)
  return jax.tree.map(jnp.add, grad_q, grad_prior), metrics


def task_meta_gradient_stepwise(prior: SupernetDist, episode: Episode,
                                key: jax.Array, temperature: jax.Array, *,
                                cfg: AdaptConfig
                                ) -> tuple[SupernetDist, dict[str, jax.Array]]:
  """:func:`task_meta_gradient` (first order) as a chain of compiled steps.

  With first-order inner steps q_T = θ + (constants), so the meta-gradient
  is ∂𝓛/∂q at q_T plus the KL's direct ∂𝓛/∂θ: no program needs to hold the
  whole inner loop. Same keys, same result as the fused program.
  """
  if not cfg.first_order:
    raise ConfigError("stepwise meta-gradients need adapt.first_order=True")
  adapt_key, query_key = task_keys(key, cfg)
  q, support, task_noise = stepwise_inner_loop(
      prior, adapt_key, episode.support_x, episode.support_y, temperature,
      cfg=cfg, steps=cfg.steps)
  # Per-task noise: the query key is the adaptation key, so the same draw.
  grads, query = _query_meta_gradient(
      q, prior, query_key, episode.query_x, episode.query_y, temperature,
      cfg=cfg, num_examples=int(episode.support_x.shape[0]),
      noise=task_noise)
  return grads, _metrics(support, query)


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
  is one compiled program over the whole meta-batch; with ``"shard"`` the
  tasks split over all devices (``base.sharding``); with ``"loop"`` one
  compiled single-task program (or a chain of compiled inner steps, see
  ``MetaOptConfig.inner_execution``) runs per task and a last one averages
  and applies the gradients. All compute the same mean gradient (same
  per-task keys). ``state`` is donated; metrics stay on the device until
  fetched.
  """
  batching = resolve_task_batching(opt_cfg.task_batching)
  if batching == "vmap":
    return _meta_step_vmapped(state, episodes, key, temperature, cfg=cfg,
                              opt_cfg=opt_cfg)
  num_tasks = episodes.support_x.shape[0]
  if batching == "shard":
    from base import sharding
    # On several hosts ``episodes`` holds this host's equal share of tasks.
    num_tasks *= jax.process_count()
    mesh = sharding.task_mesh()
    episodes = sharding.global_task_batch(episodes, num_tasks, mesh)
    return sharding.sharded_meta_step(
        state, episodes, sharding.task_keys(key, num_tasks, mesh),
        jnp.float32(temperature), cfg=cfg, opt_cfg=opt_cfg, mesh=mesh)
  keys = jax.random.split(key, num_tasks)
  task_gradient = (task_meta_gradient_stepwise
                   if resolve_inner_execution(opt_cfg, cfg) == "stepwise"
                   else task_meta_gradient)
  grads, metrics = [], []
  for i in range(num_tasks):
    episode = jax.tree.map(lambda a, i=i: a[i], episodes)
    task_grads, task_metrics = task_gradient(
        state.prior, episode, keys[i], temperature, cfg=cfg)
    grads.append(task_grads)
    metrics.append(task_metrics)
  return _apply_mean_gradient(state, grads, metrics, opt_cfg=opt_cfg)
