"""Task posteriors by optimisation embedding: unrolled ELBO steps from the prior.

For a task with support set D, the posterior q_τ is reached by ``steps``
gradient steps on the negative task ELBO,

    L(q) = E_q[ −mean log p(y | x, α, w) ] + β · KL(q ‖ p_θ) / |D|,

starting at q₀ = p_θ (the prior's logits, weight means and weight scales).
The expectation uses one reparameterised sample of α (Gumbel-softmax at the
current temperature, optionally straight-through hard) and of w per step.
Each step is plain SGD with separate rates for the architecture logits, the
weight means and the weight log-scales.

With ``first_order`` the inner gradients are treated as constants, so
dq_T/dθ = I and the meta-gradient needs no second derivatives (the choice
MAML-style first-order methods and the BASE paper make for speed); without
it, the meta-gradient differentiates through every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from base import prior as prior_lib
from base.errors import ConfigError
from base.genotype import GENOTYPE_RULES
from base.prior import SupernetDist
from base.supernet import COMPUTE_DTYPES, apply_supernet


INNER_NOISE = ("auto", "per_step", "per_task")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
  """Hyper-parameters of the posterior's inner optimisation (static).

  Attributes:
    steps: unrolled ELBO steps from the prior (T).
    lr_weights: SGD rate of the weight means.
    lr_arch: SGD rate of the architecture logits.
    lr_log_std: SGD rate of the weight log-scales (0 keeps q's scales at the
      prior's).
    beta: weight of KL(q ‖ p) per support example, in the inner ELBO and in
      the meta-objective alike.
    first_order: treat inner gradients as constants in the meta-gradient.
    weight_posterior: "gaussian" (mean-field, sampled) or "point" (MAP).
    hard: straight-through hard Gumbel samples instead of relaxed ones.
    eval_samples: posterior samples averaged by :func:`predict`.
    unroll: python-unroll the steps (else ``lax.scan``); XLA:CPU runs the
      unrolled form faster, at a longer compile.
    single_path: sample hard architectures and compute only the picked op
      of every edge (GDAS-style straight-through gradient to the sampled
      coordinate; ``base.single_path``); implies ``hard``.
    compute_dtype: "float32" or "bfloat16" (mixed precision: bf16 network
      compute, float32 master weights, logits and updates).
    inner_noise: "per_step" draws fresh (α, w) noise for every inner step
      and for the query term; "per_task" draws it once per task and uses it
      in all T steps and the query term (common random numbers: with hard
      or single-path samples the task trains, and is scored on, the path
      its logits pick, instead of spreading T updates over many ops and
      scoring yet another), and prediction after adaptation
      (:func:`prediction_arch_key`) keeps that architecture noise and
      averages over weight samples alone. "auto" (default): "per_task" with
      hard or single-path samples, where it measured better (README),
      "per_step" with relaxed ones.
    scale_rates_with_ways: the rates are those of tasks with as many ways
      as the prior was meta-trained for; :func:`for_ways` scales the
      classifier's by N'/N for N'-way tasks (see there). False keeps them.
    classifier_rate_scale: factor on the weight rates (means and
      log-scales) of the linear classifier alone; :func:`for_ways` sets it.
    genotype_rule: how the discrete genotype is read off the adapted logits
      (``base.genotype.derive_genotype``): "darts" (each node's two strongest
      edges, ``none`` excluded; the default) or "argmax" (each edge's most
      probable op, ``none`` included: the path single-path sampling most
      likely runs). Not part of the inner optimisation; kept here so that a
      saved prior or adaptation derives its genotype as it was configured.
  """
  steps: int = 5
  lr_weights: float = 0.1
  lr_arch: float = 1.0
  lr_log_std: float = 0.0
  beta: float = 1e-3
  first_order: bool = True
  weight_posterior: str = "gaussian"
  hard: bool = False
  eval_samples: int = 4
  unroll: bool = False
  single_path: bool = False
  compute_dtype: str = "float32"
  inner_noise: str = "auto"
  scale_rates_with_ways: bool = True
  classifier_rate_scale: float = 1.0
  genotype_rule: str = "darts"

  def __post_init__(self):
    if self.steps < 0:
      raise ConfigError(f"adapt steps must be >= 0, got {self.steps}")
    if self.weight_posterior not in prior_lib.WEIGHT_POSTERIORS:
      raise ConfigError(f"unknown weight_posterior {self.weight_posterior!r};"
                        f" expected one of {prior_lib.WEIGHT_POSTERIORS}")
    if self.classifier_rate_scale < 0:
      raise ConfigError(f"classifier_rate_scale must be >= 0, got "
                        f"{self.classifier_rate_scale}")
    if self.beta < 0:
      raise ConfigError(f"beta must be >= 0, got {self.beta}")
    if self.eval_samples < 1:
      raise ConfigError(f"eval_samples must be >= 1, got {self.eval_samples}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ConfigError(f"unknown adapt.compute_dtype {self.compute_dtype!r};"
                        f" expected one of {COMPUTE_DTYPES}")
    if self.inner_noise not in INNER_NOISE:
      raise ConfigError(f"unknown adapt.inner_noise {self.inner_noise!r};"
                        f" expected one of {INNER_NOISE}")
    if self.genotype_rule not in GENOTYPE_RULES:
      raise ConfigError(f"unknown adapt.genotype_rule "
                        f"{self.genotype_rule!r}; expected one of "
                        f"{GENOTYPE_RULES}")

  @property
  def hard_samples(self) -> bool:
    return self.hard or self.single_path

  @property
  def noise_per_task(self) -> bool:
    """Whether one noise draw serves a task's inner steps, query term and
    prediction (``inner_noise``, with "auto" resolved)."""
    if self.inner_noise == "auto":
      return self.hard_samples
    return self.inner_noise == "per_task"


def for_ways(dist: SupernetDist, cfg: AdaptConfig, ways: int
             ) -> tuple[SupernetDist, AdaptConfig]:
  """A prior of N-way tasks, and its inner optimisation, for ``ways``-way ones.

  Cuts the classifier to its first ``ways`` rows
  (:func:`base.prior.restrict_ways`) and, with ``cfg.scale_rates_with_ways``,
  multiplies the classifier's inner rates by ``ways / N``
  (``classifier_rate_scale``); the body's and the logits' stay.

  Why: the inner NLL is a mean over the support set, so a class's
  classifier row gets 1/N' of the gradient in an N'-way task (the body's
  gradient has no such factor). Meta-training tunes the prior (its feature
  scales, its weights) to the step sizes of N-way tasks; with fewer ways the
  same rate takes N/N'-times larger steps on those rows and can overshoot.
  Measured on the full Omniglot config (single path, meta-step 400, a
  20-way prior on 100 5-way 1-shot episodes): unscaled, support accuracy
  0.68 after 5 steps (some tasks 0.0) and query 0.580; classifier rate
  scaled by 5/20, support 1.00 and query 0.889; every rate scaled, 0.880,
  but the random-init baseline, whose body needs its full steps, fell from
  0.509 to 0.458 (0.506 with the classifier alone). README has the table.
  """
  scale = ways / dist.spec.num_classes if cfg.scale_rates_with_ways else 1.0
  dist = prior_lib.restrict_ways(dist, ways)
  if scale == 1:
    return dist, cfg
  return dist, dataclasses.replace(
      cfg, classifier_rate_scale=cfg.classifier_rate_scale * scale)


class TaskMetrics(NamedTuple):
  loss: jax.Array
  nll: jax.Array
  accuracy: jax.Array
  kl: jax.Array


def task_loss(q: SupernetDist, prior: SupernetDist, key: jax.Array,
              x: jax.Array, y: jax.Array, temperature: jax.Array,
              cfg: AdaptConfig, num_examples: int | None = None,
              noise: list[jax.Array] | None = None
              ) -> tuple[jax.Array, TaskMetrics]:
  """One-sample estimate of mean NLL(x, y) under q plus β·KL(q‖p)/n.

  Args:
    x: images ``[n, H, W, C]``; y: labels ``[n]``.
    num_examples: n in the KL's normalisation (default ``len(x)``).
    noise: precomputed weight noise (:func:`sample_noise`), else drawn here.
  """
  logits = sample_logits(q, key, x, temperature, cfg, noise)
  nll = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  kl = (prior_lib.arch_kl(q, prior)
        + prior_lib.weight_kl(q, prior, cfg.weight_posterior))
  n = x.shape[0] if num_examples is None else num_examples
  loss = nll + cfg.beta * kl / n
  accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
  return loss, TaskMetrics(loss, nll, accuracy, kl)


def _arch_and_weight_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The keys of α's and of w's noise in the joint sample of ``key``."""
  arch_key, weight_key = jax.random.split(key)
  return arch_key, weight_key


def sample_noise(dist: SupernetDist, key: jax.Array,
                 cfg: AdaptConfig) -> list[jax.Array] | None:
  """The weight noise that :func:`sample_logits` draws for ``key``.

  Computed in a program of its own and passed in (``noise=``), it cannot be
  fused into the backward pass: XLA:CPU otherwise recomputes the random bits
  and ``erf_inv`` of small kernels (a depthwise conv's taps) for every
  element of the activation gradients that use them.
  """
  if cfg.weight_posterior == "point":
    return None
  _, weight_key = _arch_and_weight_keys(key)
  return prior_lib.weight_noise(dist.weight_mean, weight_key)


def sample_logits(dist: SupernetDist, key: jax.Array, x: jax.Array,
                  temperature: jax.Array, cfg: AdaptConfig,
                  noise: list[jax.Array] | None = None,
                  arch_key: jax.Array | None = None) -> jax.Array:
  """Logits of ``x`` under one joint sample of (α, w) from ``dist``
  (``noise``: :func:`sample_noise` of ``key``, if already drawn;
  ``arch_key``: the α noise's key instead of ``key``'s)."""
  own_arch_key, weight_key = _arch_and_weight_keys(key)
  arch_key = own_arch_key if arch_key is None else arch_key
  arch = prior_lib.sample_arch(dist, arch_key, temperature, cfg.hard_samples)
  weights = prior_lib.sample_weights(dist, weight_key, cfg.weight_posterior,
                                     noise)
  return apply_supernet(dist.spec, weights, arch, x,
                        single_path=cfg.single_path,
                        compute_dtype=cfg.compute_dtype)


def inner_step_keys(key: jax.Array, steps: int,
                    cfg: AdaptConfig) -> jax.Array:
  """The ``[steps]`` keys of the inner ELBO steps of one task: distinct, or
  ``key`` repeated when the noise is drawn per task. Every execution of
  the inner loop (fused, scanned, stepwise) takes its keys from here."""
  if cfg.noise_per_task:
    return jnp.broadcast_to(key, (steps,))
  return jax.random.split(key, steps)


def task_keys(key: jax.Array,
              cfg: AdaptConfig) -> tuple[jax.Array, jax.Array]:
  """(adaptation key, query key) of one task's meta-loss; the same key
  twice when the noise is drawn per task, so the query term scores the
  sample the inner steps trained."""
  adapt_key, query_key = jax.random.split(key)
  if cfg.noise_per_task:
    return adapt_key, adapt_key
  return adapt_key, query_key


def prediction_arch_key(adapt_key: jax.Array,
                        cfg: AdaptConfig) -> jax.Array | None:
  """The α noise :func:`predict` uses after adapting with ``adapt_key``.

  With noise drawn per task (``AdaptConfig.noise_per_task``) it is the
  task's own draw, the one its inner steps trained and meta-training's
  query term scored, so a hard or single-path prediction runs the path the
  weights were adapted on (fresh paths pick ops whose weights the task
  never trained: measured worse, see the README). Otherwise ``None``:
  fresh α noise per sample.
  """
  if not cfg.noise_per_task:
    return None
  return _arch_and_weight_keys(adapt_key)[0]


def inner_update(q: SupernetDist, grads: SupernetDist,
                 cfg: AdaptConfig) -> SupernetDist:
  """One SGD step with the per-field learning rates."""
  def step(params, grad, lr):
    return jax.tree.map(lambda p, g: p - lr * g.astype(p.dtype), params, grad)

  def weight_step(params, grad, lr):
    stepped = step(params, grad, lr)
    if cfg.classifier_rate_scale != 1:
      stepped = {**stepped, "classifier": step(
          params["classifier"], grad["classifier"],
          lr * cfg.classifier_rate_scale)}
    return stepped

  return q.replace(
      arch_logits=step(q.arch_logits, grads.arch_logits, cfg.lr_arch),
      weight_mean=weight_step(q.weight_mean, grads.weight_mean,
                              cfg.lr_weights),
      weight_log_std=weight_step(q.weight_log_std, grads.weight_log_std,
                                 cfg.lr_log_std))


def inner_step(q: SupernetDist, prior: SupernetDist, key: jax.Array,
               support_x: jax.Array, support_y: jax.Array,
               temperature: jax.Array, cfg: AdaptConfig,
               noise: list[jax.Array] | None = None
               ) -> tuple[SupernetDist, TaskMetrics]:
  """One ELBO gradient step on the support set; returns (q', metrics at q)."""
  grads, metrics = jax.grad(task_loss, has_aux=True)(
      q, prior, key, support_x, support_y, temperature, cfg, None, noise)
  if cfg.first_order:
    grads = jax.lax.stop_gradient(grads)
  return inner_update(q, grads, cfg), metrics


def adapt_posterior(prior: SupernetDist, key: jax.Array, support_x: jax.Array,
                    support_y: jax.Array, temperature: jax.Array,
                    cfg: AdaptConfig, steps: int | None = None
                    ) -> tuple[SupernetDist, TaskMetrics]:
  """q_T after ``steps`` (default ``cfg.steps``) ELBO steps from the prior.

  Pure and differentiable in ``prior``. Returns the posterior and the metrics
  of the last step (at q_{T-1}); ``steps=0`` returns the prior itself.
  """
  steps = cfg.steps if steps is None else steps
  zeros = TaskMetrics(*(jnp.zeros(()),) * 4)
  if steps == 0:
    return prior, zeros
  keys = inner_step_keys(key, steps, cfg)

  def body(q, step_key):
    return inner_step(q, prior, step_key, support_x, support_y, temperature,
                      cfg)

  if cfg.unroll:
    q, metrics = prior, zeros
    for step_key in keys:
      q, metrics = body(q, step_key)
    return q, metrics
  q, metrics = jax.lax.scan(body, prior, keys)
  return q, jax.tree.map(lambda m: m[-1], metrics)


def predict(dist: SupernetDist, key: jax.Array, x: jax.Array,
            temperature: jax.Array, cfg: AdaptConfig,
            arch_key: jax.Array | None = None) -> jax.Array:
  """Posterior predictive class probabilities ``[n, classes]``.

  Averages the softmax over ``cfg.eval_samples`` joint samples of (α, w),
  the Monte Carlo Bayesian predictive. With ``arch_key`` (see
  :func:`prediction_arch_key`) every sample shares that α noise and the
  average is over w alone.
  """
  def one(sample_key):
    return jax.nn.softmax(sample_logits(dist, sample_key, x, temperature, cfg,
                                        arch_key=arch_key), -1)

  probs = jax.lax.map(one, jax.random.split(key, cfg.eval_samples))
  return jnp.mean(probs, axis=0)


def accuracy(probs: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(probs, -1) == labels)


def mean_over_tasks(tree: Any) -> Any:
  return jax.tree.map(lambda v: jnp.mean(v, axis=0), tree)
