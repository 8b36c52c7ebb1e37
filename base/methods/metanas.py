"""MetaNAS: DARTS as the task learner inside Reptile (Elsken et al., CVPR 2020).

"Meta-Learning of Neural Architectures for Few-Shot Learning" meta-learns
both the weights ``w`` and the architecture logits ``alpha`` of a DARTS
supernet, so that a few steps of DARTS on a new task's support set give a
good task-specific architecture *and* weights. Here, as in the authors' code
(github.com/boschresearch/metanas, ``hp_setting=og_metanas``):

* **Task learner (DARTS).** From the meta parameters, ``inner_steps`` steps,
  each an architecture step followed by a weight step (the order of
  MetaNAS's ``darts.train``), both on the support loss of the supernet whose
  edges mix their operations with ``softmax(alpha / tau)``:

  - the architecture step is first-order DARTS (MetaNAS runs with
    ``--use_first_order_darts``): the gradient of the support cross-entropy
    in ``alpha`` at the current weights. It uses the *same* support set as
    the weight step, because MetaNAS's task "validation loader" is its
    training loader; with ``batch_size > 0`` the two steps draw independent
    minibatches (with replacement, like MetaNAS's ``RandomSampler``) from it.
    Optimiser: Adam with ``beta1 = 0, beta2 = 0.999`` (MetaNAS) plus L2
    weight decay ``arch_weight_decay`` on ``alpha`` (MetaNAS's
    ``alpha_weight_decay = 1e-3``), or plain SGD (``arch_optimizer``).
  - the weight step is SGD on the support cross-entropy (default), or Adam
    with ``beta1 = 0`` as MetaNAS uses (``weights_optimizer="adam"``).
  - Optimiser states start fresh for every task. (MetaNAS keeps its task
    Adam state across tasks during meta-training; a fresh state makes the
    adaptation a pure function of the meta parameters, the task and the
    seed, which meta-test scoring needs.)

* **Soft pruning.** The temperature ``tau`` is annealed *within* each task,
  over the steps that adapt the architecture, from ``tau_start`` at the
  first to exactly ``tau_end`` at the last (``tau_schedule``: ``"linear"``
  as MetaNAS's ``normalizer_temp_anneal_mode=linear``, or geometric
  ``"exponential"``), so the adapted architecture is nearly discrete at the
  end of task learning. Steps after the last architecture step (at meta-test
  with ``eval_arch_fraction < 1``) keep ``tau_end``; steps during the
  warm-up, which does not adapt the architecture, keep ``tau_start``
  (MetaNAS does not advance its normaliser during warm-up). The query set is
  predicted at the last step's temperature. See :func:`inner_temperatures`.

* **Meta-learner (Reptile).** ``w <- w + meta_lr_weights * mean_t(w_t - w)``
  and ``alpha <- alpha + meta_lr_arch * mean_t(alpha_t - alpha)`` over the
  ``meta_batch_size`` tasks of a meta-step (MetaNAS's ``NAS_Reptile`` with
  SGD meta-optimisers), see :func:`reptile_update`. The meta learning rates
  are constant by default (``og_metanas`` sets ``w_meta_anneal`` and
  ``a_meta_anneal`` to 0) or decay linearly to 0 over the run as in the
  Reptile paper (``meta_lr_schedule="linear"``). During the first
  ``warm_up_steps`` meta-steps the architecture is not adapted (MetaNAS's
  ``warm_up_epochs``), so only the weights are meta-learned.

* **Hard pruning of the meta-architecture.** Every ``prune_every`` meta-steps
  (0: never during the run) and always once after meta-training, operations
  whose meta mixture weight ``softmax(alpha / tau_end)`` is below
  ``prune_threshold`` are removed, as MetaNAS's ``prune_alphas`` (which
  evaluates its normaliser at the last task step, i.e. at ``t_min``). A
  pruned operation's logit is set to ``PRUNED_LOGIT`` (MetaNAS's ``-10e8``)
  *and* it is recorded in a static boolean mask: the mixture gives it weight
  exactly 0, its logit and weights get no updates, and the masked forward
  (:func:`apply_masked_supernet`) never computes it, so pruning also makes
  adaptation cheaper (one recompilation per pruning event). The most
  probable operation other than ``none`` of every edge is always kept. See
  :func:`hard_prune`.

* **Meta-test.** :class:`MetaNASLearner` runs the same DARTS task learner
  from the meta parameters for ``eval_inner_steps`` steps (of which the
  first ``eval_arch_fraction`` adapt the architecture; MetaNAS's meta-test
  script uses 100 steps and 0.5), predicts the query labels with the adapted
  supernet at the final temperature, and returns the task's genotype: the
  DARTS rule (:func:`base.genotype.derive_genotype`) on the adapted
  ``alpha / tau_final``, with pruned operations excluded.

* **Initialisation.** ``w`` from ``init_supernet_weights(spec, key(seed))``
  and ``alpha ~ 1e-3 * N(0, 1)`` (MetaNAS's ``1e-3 * torch.randn``), which
  breaks the ties of uniform logits.

Left out of MetaNAS: its pairwise input-node alphas (the genotype uses the
DARTS top-2 rule instead), drop-path, the forward-time
``alpha_prune_threshold`` (ops with a tiny *current* weight skipped per
forward: data-dependent shapes under ``jit``), 15-shot support sets during
meta-training (the task family has one ``num_shots``). Constant channel
counts across reduction cells (MetaNAS's ``feature_scale_rate=1``) are
``supernet.channel_scale=1`` in ``configs/metanas.py``. Batch norm uses
batch statistics, as every supernet in this package.

Speed on CPU: one jitted program per inner step (architecture + weights, or
weights only), called in a Python loop over steps and tasks; a second small
jitted program applies the Reptile update; metrics stay on the device and
are fetched every ``log_every`` meta-steps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from base import config_utils, serialization
from base.data.episodes import check_count
from base.errors import CheckpointError, ConfigError
from base.genotype import Genotype, genotype_of
from base.methods.api import Method, TaskResult
from base.prior import restrict_classifier
from base.supernet import (CELL_TYPES, SupernetSpec, apply_supernet,
                           init_supernet_weights)
from base.train import NonFiniteLossError, episode_rng

Weights = dict[str, Any]  # nested dict of arrays (nnx pure state dict)
ArchLogits = dict[str, Any]  # {"normal": [E, O], "reduce": [E, O]}
MaskArrays = dict[str, np.ndarray]  # {"normal": bool [E, O], ...}
FrozenMask = tuple[tuple[tuple[bool, ...], ...], ...]  # per CELL_TYPES

ARTIFACT_FILENAME = "metanas.msgpack"
METRICS_FILENAME = "metanas_metrics.jsonl"
FORMAT = "base-metanas"
FORMAT_VERSION = 1
#: The logit of a pruned operation (MetaNAS's ``prune_alphas`` uses -10e8).
PRUNED_LOGIT = -1e9
#: Scale of the initial architecture logits (MetaNAS: ``1e-3 * randn``).
ARCH_INIT_SCALE = 1e-3
ADAM_B2 = 0.999
ADAM_EPS = 1e-8

OPTIMIZERS = ("sgd", "adam")
TAU_SCHEDULES = ("linear", "exponential")
META_LR_SCHEDULES = ("constant", "linear")


# ----------------------------------------------------------------------------
# Configuration.


def _is_real(value: Any) -> bool:
  return (not isinstance(value, bool)
          and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class MetaNASConfig:
  """MetaNAS hyper-parameters (the ``config.metanas`` section).

  Attributes:
    inner_steps: DARTS steps per task in meta-training (MetaNAS: 5).
    inner_lr_weights: learning rate of the weight steps.
    inner_lr_arch: learning rate of the architecture steps (0 freezes
      ``alpha`` within tasks).
    weights_optimizer: ``"sgd"`` or ``"adam"`` (``beta1 = 0``, MetaNAS).
    arch_optimizer: ``"adam"`` (``beta1 = 0``, MetaNAS) or ``"sgd"``.
    arch_weight_decay: L2 coefficient added to the architecture gradient.
    tau_start, tau_end: the softmax temperature at the first and the last
      architecture step of a task (``0 < tau_end <= tau_start``).
    tau_schedule: ``"linear"`` (MetaNAS) or ``"exponential"`` annealing.
    meta_lr_weights, meta_lr_arch: Reptile step sizes (MetaNAS: 1.0, 0.6).
    meta_lr_schedule: ``"constant"`` (MetaNAS) or ``"linear"`` decay to 0.
    meta_batch_size: tasks per meta-step.
    num_steps: meta-steps in total.
    warm_up_steps: first meta-steps that adapt only the weights.
    eval_inner_steps: DARTS steps at meta-test time (0: ``inner_steps``).
    eval_arch_fraction: fraction of the meta-test steps (rounded, at least
      one) that also adapt the architecture; the rest adapt only weights.
    batch_size: support examples per step (0 or the support size: all of
      them; otherwise drawn with replacement).
    eval_batch_size: the same at meta-test time (-1: ``batch_size``).
    prune_threshold: hard-prune meta operations whose weight at ``tau_end``
      is below this (0: never prune).
    prune_every: also hard-prune every this many meta-steps (0: only once,
      after meta-training).
    log_every: fetch and log metrics every this many meta-steps.
  """
  inner_steps: int = 5
  inner_lr_weights: float = 0.1
  inner_lr_arch: float = 0.005
  weights_optimizer: str = "sgd"
  arch_optimizer: str = "adam"
  arch_weight_decay: float = 1e-3
  tau_start: float = 1.0
  tau_end: float = 0.05
  tau_schedule: str = "linear"
  meta_lr_weights: float = 1.0
  meta_lr_arch: float = 0.6
  meta_lr_schedule: str = "constant"
  meta_batch_size: int = 10
  num_steps: int = 1000
  warm_up_steps: int = 0
  eval_inner_steps: int = 0
  eval_arch_fraction: float = 1.0
  batch_size: int = 0
  eval_batch_size: int = -1
  prune_threshold: float = 0.01
  prune_every: int = 0
  log_every: int = 10

  def __post_init__(self):
    for name, minimum in (("inner_steps", 1), ("meta_batch_size", 1),
                          ("num_steps", 1), ("warm_up_steps", 0),
                          ("eval_inner_steps", 0), ("batch_size", 0),
                          ("eval_batch_size", -1), ("prune_every", 0),
                          ("log_every", 1)):
      config_utils.check_int(f"metanas.{name}", getattr(self, name), minimum)
    for name, positive in (("inner_lr_weights", True),
                           ("inner_lr_arch", False),
                           ("arch_weight_decay", False),
                           ("tau_start", True), ("tau_end", True),
                           ("meta_lr_weights", True),
                           ("meta_lr_arch", False)):
      check = (config_utils.check_positive if positive
               else config_utils.check_nonnegative)
      check(f"metanas.{name}", getattr(self, name))
    if self.tau_end > self.tau_start:
      raise ConfigError(f"metanas.tau_end must be <= metanas.tau_start "
                        f"(annealing), got {self.tau_end} > {self.tau_start}")
    for name, allowed in (("weights_optimizer", OPTIMIZERS),
                          ("arch_optimizer", OPTIMIZERS),
                          ("tau_schedule", TAU_SCHEDULES),
                          ("meta_lr_schedule", META_LR_SCHEDULES)):
      config_utils.check_choice(f"metanas.{name}", getattr(self, name),
                                allowed)
    if not _is_real(self.eval_arch_fraction) or not (
        0 < self.eval_arch_fraction <= 1):
      raise ConfigError(f"metanas.eval_arch_fraction must be in (0, 1], "
                        f"got {self.eval_arch_fraction!r}")
    if not _is_real(self.prune_threshold) or not (
        0 <= self.prune_threshold < 1):
      raise ConfigError(f"metanas.prune_threshold must be in [0, 1), "
                        f"got {self.prune_threshold!r}")

  @property
  def eval_steps(self) -> int:
    """DARTS steps at meta-test time."""
    return self.eval_inner_steps or self.inner_steps

  @property
  def eval_arch_steps(self) -> int:
    """Meta-test steps that adapt the architecture (at least one)."""
    return max(1, int(round(self.eval_arch_fraction * self.eval_steps)))

  @property
  def test_batch_size(self) -> int:
    """Support examples per meta-test step (0: all)."""
    return self.batch_size if self.eval_batch_size < 0 else self.eval_batch_size

  def meta_lrs(self, step: int) -> tuple[float, float]:
    """Reptile step sizes ``(weights, arch)`` at meta-step ``step``."""
    scale = 1.0
    if self.meta_lr_schedule == "linear":
      scale = max(0.0, 1.0 - step / self.num_steps)
    return self.meta_lr_weights * scale, self.meta_lr_arch * scale


def config_from(config: Any) -> MetaNASConfig:
  """The ``metanas`` section of an experiment config (defaults if absent)."""
  return config_utils.dataclass_from_config(
      MetaNASConfig, config.get("metanas"), "metanas")


def inner_temperatures(cfg: MetaNASConfig, steps: int,
                       arch_steps: int) -> np.ndarray:
  """The softmax temperature of each of a task's ``steps`` inner steps.

  The first ``arch_steps`` steps adapt the architecture and anneal ``tau``
  from ``tau_start`` (step 0) to exactly ``tau_end`` (step
  ``arch_steps - 1``; a single architecture step uses ``tau_end``); the
  remaining steps keep ``tau_end``. With ``arch_steps == 0`` (warm-up) no
  annealing happens: every step uses ``tau_start``.
  """
  steps = check_count("steps", steps, 1)
  arch_steps = check_count("arch_steps", arch_steps, 0)
  if arch_steps > steps:
    raise ConfigError(f"arch_steps ({arch_steps}) exceeds steps ({steps})")
  if arch_steps == 0:
    return np.full(steps, cfg.tau_start, np.float64)
  fraction = np.minimum(np.arange(steps) / max(arch_steps - 1, 1), 1.0)
  if cfg.tau_schedule == "linear":
    taus = cfg.tau_start + (cfg.tau_end - cfg.tau_start) * fraction
  else:
    taus = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** fraction
  taus[arch_steps - 1:] = cfg.tau_end  # exact, free of rounding
  return taus


# ----------------------------------------------------------------------------
# Pruning masks and the masked supernet.


def full_mask(spec: SupernetSpec) -> MaskArrays:
  """Every operation kept: ``{"normal": ones [E, O] bool, "reduce": ...}``."""
  return {c: np.ones(spec.arch_shape, bool) for c in CELL_TYPES}


def freeze_mask(mask: Mapping[str, Any]) -> FrozenMask:
  """A hashable copy of ``mask`` (a static argument of compiled steps)."""
  return tuple(tuple(tuple(bool(v) for v in row)
                     for row in np.asarray(mask[c], bool))
               for c in CELL_TYPES)


def thaw_mask(frozen: FrozenMask) -> MaskArrays:
  """The inverse of :func:`freeze_mask`."""
  return {c: np.array(rows, bool) for c, rows in zip(CELL_TYPES, frozen)}


def mixture_weights(arch_logits: Mapping[str, jax.Array],
                    mask: Mapping[str, Any], temperature: Any
                    ) -> dict[str, jax.Array]:
  """``softmax(alpha / tau)`` per edge over the kept operations.

  Pruned operations (``mask`` False) get weight exactly 0 and no gradient.
  """
  out = {}
  for c in CELL_TYPES:
    keep = jnp.asarray(np.asarray(mask[c], bool))
    scaled = jnp.where(keep, arch_logits[c] / temperature, -jnp.inf)
    out[c] = jax.nn.softmax(scaled, axis=-1)
  return out


def apply_masked_supernet(spec: SupernetSpec, weights: Weights,
                          arch_weights: Mapping[str, jax.Array],
                          x: jax.Array, mask: FrozenMask) -> jax.Array:
  """Logits of the supernet in which pruned operations are never computed.

  Equal to :func:`base.supernet.apply_supernet` with zero weight on the
  pruned operations (which it would still compute). ``mask`` is static
  (frozen).
  """
  return apply_supernet(spec, weights, arch_weights, x,
                        op_mask=dict(zip(CELL_TYPES, mask)))


def hard_prune(arch_logits: Mapping[str, Any], mask: Mapping[str, Any],
               threshold: float, temperature: float,
               primitives: Sequence[str]) -> tuple[ArchLogits, MaskArrays]:
  """Removes meta operations whose mixture weight is below ``threshold``.

  The weight of an operation is its ``softmax(alpha / temperature)`` over
  the edge's kept operations (MetaNAS prunes at the final temperature).
  Already pruned operations stay pruned; the most probable operation other
  than ``none`` of every edge is always kept (``none`` alone would cut the
  edge). Pruned logits become :data:`PRUNED_LOGIT`.

  Returns:
    ``(logits, mask)`` as numpy arrays (``float32`` and ``bool``).
  """
  primitives = tuple(primitives)
  real = np.array([p != "none" for p in primitives])
  logits_out, mask_out = {}, {}
  for c in CELL_TYPES:
    logits = np.asarray(jax.device_get(arch_logits[c]), np.float64)
    keep = np.asarray(mask[c], bool)
    if logits.shape != keep.shape or logits.shape[-1] != len(primitives):
      raise ConfigError(f"arch logits {logits.shape} and mask {keep.shape} "
                        f"do not fit {len(primitives)} primitives")
    scaled = np.where(keep, logits / temperature, -np.inf)
    scaled -= scaled.max(-1, keepdims=True)
    probs = np.where(keep, np.exp(scaled), 0.0)
    probs /= probs.sum(-1, keepdims=True)
    new_keep = keep & (probs >= threshold)
    candidates = keep & real if real.any() else keep
    candidates = np.where(candidates.any(-1, keepdims=True), candidates, keep)
    best = np.argmax(np.where(candidates, logits, -np.inf), axis=-1)
    new_keep[np.arange(len(best)), best] = True
    mask_out[c] = new_keep
    logits_out[c] = np.where(new_keep, logits, PRUNED_LOGIT).astype(
        np.float32)
  return logits_out, mask_out


def num_pruned(mask: Mapping[str, Any]) -> int:
  """How many (edge, operation) pairs of both cell types are pruned."""
  return int(sum(np.sum(~np.asarray(mask[c], bool)) for c in CELL_TYPES))


def active_parameter_count(spec: SupernetSpec, weights: Weights,
                           mask: Mapping[str, Any]) -> int:
  """Scalars of ``weights`` outside pruned operations (those ever used)."""
  keep = {c: np.asarray(mask[c], bool) for c in CELL_TYPES}
  total = 0
  for path, value in serialization.flatten(weights).items():
    parts = path.split("/")
    if (len(parts) > 5 and parts[0] == "cells" and parts[2] == "edges"
        and parts[4] == "ops"):
      cell, edge, op = int(parts[1]), int(parts[3]), int(parts[5])
      cell_type = "reduce" if cell in spec.reduction_cells else "normal"
      if not keep[cell_type][edge, op]:
        continue
    total += int(np.prod(np.shape(value)))
  return total


# ----------------------------------------------------------------------------
# The DARTS task learner.


@dataclasses.dataclass(frozen=True)
class TaskProgram:
  """Everything static about a task learner (its compiled programs' key).

  Attributes:
    spec: the supernet.
    mask: the hard-pruning mask (:func:`freeze_mask`); pruned operations
      are left out of the programs.
    weights_optimizer, arch_optimizer: ``"sgd"`` or ``"adam"``.
    arch_weight_decay: L2 coefficient of the architecture steps.
    batch_size: support examples per step (0: all).
  """
  spec: SupernetSpec
  mask: FrozenMask
  weights_optimizer: str
  arch_optimizer: str
  arch_weight_decay: float
  batch_size: int


def _transform(name: str) -> optax.GradientTransformation:
  """The optimiser without its learning rate (applied as ``-lr * update``)."""
  if name == "adam":
    return optax.scale_by_adam(b1=0.0, b2=ADAM_B2, eps=ADAM_EPS)
  return optax.identity()


def _key(seed_words: jax.Array) -> jax.Array:
  key = jax.random.key(0)
  for i in range(seed_words.shape[0]):
    key = jax.random.fold_in(key, seed_words[i])
  return key


def _minibatch(key, x, y, batch_size):
  n = x.shape[0]
  if batch_size in (0, n):
    return x, y
  index = jax.random.randint(key, (batch_size,), 0, n)
  return x[index], y[index]


def _support_loss(weights, arch_logits, x, y, tau, program):
  mix = mixture_weights(arch_logits, thaw_mask(program.mask), tau)
  logits = apply_masked_supernet(program.spec, weights, mix, x, program.mask)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  return loss


def _inner_step(weights, arch_logits, w_state, a_state, x, y, seed_words,
                step, tau, lr_weights, lr_arch, *, program, update_arch):
  """One DARTS step: architecture step (optional), then weight step."""
  key = jax.random.fold_in(_key(seed_words), step)
  arch_key, weight_key = jax.random.split(key)
  if update_arch:
    xa, ya = _minibatch(arch_key, x, y, program.batch_size)
    grads = jax.grad(_support_loss, argnums=1)(weights, arch_logits, xa, ya,
                                               tau, program)
    keep = thaw_mask(program.mask)
    grads = {c: jnp.where(keep[c],
                          grads[c] + program.arch_weight_decay
                          * arch_logits[c], 0.0) for c in CELL_TYPES}
    updates, a_state = _transform(program.arch_optimizer).update(
        grads, a_state, arch_logits)
    arch_logits = {c: arch_logits[c] - lr_arch * updates[c]
                   for c in CELL_TYPES}
  xw, yw = _minibatch(weight_key, x, y, program.batch_size)
  loss, grads = jax.value_and_grad(_support_loss)(weights, arch_logits, xw,
                                                  yw, tau, program)
  updates, w_state = _transform(program.weights_optimizer).update(
      grads, w_state, weights)
  weights = jax.tree.map(lambda p, u: p - lr_weights * u, weights, updates)
  return weights, arch_logits, w_state, a_state, loss


def _init_states(weights, arch_logits, *, program):
  return (_transform(program.weights_optimizer).init(weights),
          _transform(program.arch_optimizer).init(arch_logits))


def _logits(weights, arch_logits, x, tau, *, program):
  mix = mixture_weights(arch_logits, thaw_mask(program.mask), tau)
  return apply_masked_supernet(program.spec, weights, mix, x, program.mask)


class _Compiled(NamedTuple):
  arch_and_weights: Any
  weights_only: Any
  init_states: Any
  logits: Any


@functools.lru_cache(maxsize=16)
def _compiled(program: TaskProgram) -> _Compiled:
  """Jitted programs of a task learner (statics bound: no per-call hashing)."""
  return _Compiled(
      jax.jit(functools.partial(_inner_step, program=program,
                                update_arch=True)),
      jax.jit(functools.partial(_inner_step, program=program,
                                update_arch=False)),
      jax.jit(functools.partial(_init_states, program=program)),
      jax.jit(functools.partial(_logits, program=program)))


def task_program(spec: SupernetSpec, mask: Mapping[str, Any],
                 cfg: MetaNASConfig, batch_size: int) -> TaskProgram:
  """The task learner of ``spec`` pruned by ``mask``, with ``cfg``'s
  optimisers and ``batch_size`` support examples per step (0: all)."""
  return TaskProgram(spec, freeze_mask(mask), cfg.weights_optimizer,
                  cfg.arch_optimizer, float(cfg.arch_weight_decay),
                  int(batch_size))


def task_seed(seed: int, step: int = -1, task: int = 0) -> np.ndarray:
  """The minibatch seed of a task: ``(seed, meta-step, task index)``.

  Always three words (one compiled step for meta-training and meta-test);
  meta-test adaptation uses ``step = -1``, which no meta-step has.
  """
  return np.array([int(w) % (1 << 32) for w in (seed, step, task)],
                  np.uint32)


def darts_adapt(weights: Weights, arch_logits: ArchLogits,
                support_x: Any, support_y: Any, *, program: TaskProgram,
                cfg: MetaNASConfig, steps: int, arch_steps: int,
                seed_words: np.ndarray
                ) -> tuple[Weights, ArchLogits, jax.Array, float]:
  """Runs the DARTS task learner on one support set.

  Args:
    weights, arch_logits: the starting (meta) parameters; not modified.
    support_x: ``[n, H, W, C]`` images; support_y: ``[n]`` labels.
    program: the supernet, pruning mask, optimisers and batch size.
    cfg: learning rates and the temperature schedule.
    steps: inner steps; the first ``arch_steps`` adapt the architecture.
    seed_words: seeds the minibatches (unused with full batches).

  Returns:
    ``(weights, arch_logits, last_support_loss, final_temperature)``; the
    arrays stay on the device (nothing here waits for it).
  """
  compiled = _compiled(program)
  schedule = inner_temperatures(cfg, steps, arch_steps)
  taus = schedule.astype(np.float32)
  lr_weights = np.float32(cfg.inner_lr_weights)
  lr_arch = np.float32(cfg.inner_lr_arch)
  w_state, a_state = compiled.init_states(weights, arch_logits)
  loss = None
  for k in range(steps):
    step_fn = (compiled.arch_and_weights if k < arch_steps
               else compiled.weights_only)
    weights, arch_logits, w_state, a_state, loss = step_fn(
        weights, arch_logits, w_state, a_state, support_x, support_y,
        seed_words, np.int32(k), taus[k], lr_weights, lr_arch)
  return weights, arch_logits, loss, float(schedule[-1])


# ----------------------------------------------------------------------------
# Reptile.


@jax.jit
def reptile_update(meta_weights: Weights, meta_arch: ArchLogits,
                   task_weights: Sequence[Weights],
                   task_arch: Sequence[ArchLogits], lr_weights: Any,
                   lr_arch: Any) -> tuple[Weights, ArchLogits]:
  """Reptile: move the meta parameters toward the mean adapted parameters.

  ``w + lr_weights * mean_t(w_t - w)`` and
  ``alpha + lr_arch * mean_t(alpha_t - alpha)``.
  """
  count = len(task_weights)

  def move(lr):
    def fn(meta, *tasks):
      return meta + lr * (sum(t - meta for t in tasks) / count)
    return fn

  return (jax.tree.map(move(lr_weights), meta_weights, *task_weights),
          jax.tree.map(move(lr_arch), meta_arch, *task_arch))


@jax.jit
def _query_metrics(logits, labels):
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels))
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


@jax.jit
def _mean_metrics(metrics):
  return jax.tree.map(lambda *v: sum(v) / len(v), *metrics)


def init_meta_params(spec: SupernetSpec, seed: int
                     ) -> tuple[Weights, ArchLogits, MaskArrays]:
  """The starting point of meta-training: ``(weights, arch_logits, mask)``.

  Weights from ``init_supernet_weights(spec, key(seed))``, logits
  ``1e-3 * N(0, 1)`` (MetaNAS), nothing pruned.
  """
  weight_key, arch_key = jax.random.split(jax.random.key(seed))
  weights = init_supernet_weights(spec, weight_key)
  keys = jax.random.split(arch_key, len(CELL_TYPES))
  arch = {c: ARCH_INIT_SCALE * jax.random.normal(k, spec.arch_shape)
          for c, k in zip(CELL_TYPES, keys)}
  return weights, arch, full_mask(spec)


def _prune(arch, mask, cfg, spec):
  if cfg.prune_threshold <= 0:
    return arch, mask
  logits, mask = hard_prune(arch, mask, cfg.prune_threshold, cfg.tau_end,
                            spec.primitives)
  return {c: jnp.asarray(v) for c, v in logits.items()}, mask


def metanas_meta_train(family: Any, spec: SupernetSpec, cfg: MetaNASConfig,
                       *, seed: int = 0, progress: bool = False,
                       log_fn: Any = None
                       ) -> tuple[Weights, ArchLogits, MaskArrays,
                                  list[dict[str, float]]]:
  """Meta-learns supernet weights and architecture logits with MetaNAS.

  Step ``t`` samples ``family.sample_batch(np.random.default_rng([seed, t]),
  cfg.meta_batch_size)`` (as ``base.train.meta_train``), adapts each task
  with :func:`darts_adapt` and applies :func:`reptile_update`; the
  meta-architecture is hard-pruned every ``cfg.prune_every`` steps and at
  the end.

  Args:
    family: the meta-training tasks.
    spec: the supernet (``num_classes`` = the family's ways).
    cfg: the MetaNAS hyper-parameters.
    seed: seeds the initial parameters, the episodes and the minibatches.
    progress: show a progress bar.
    log_fn: called with each logged record (a dict), if given.

  Returns:
    ``(weights, arch_logits, mask, history)``: the meta parameters, the
    pruning mask and the logged records (``step``, ``support_loss``,
    ``query_loss``, ``query_accuracy``: means over the meta-steps since the
    previous record, of the last inner step's support loss and the adapted
    supernet's query loss and accuracy; ``pruned``; ``seconds``).

  Raises:
    NonFiniteLossError: a loss became NaN or infinite.
  """
  if spec.num_classes != family.num_ways:
    raise ConfigError(f"supernet has {spec.num_classes} outputs, the task "
                      f"family {family.num_ways} ways")
  weights, arch, mask = init_meta_params(spec, seed)
  program = task_program(spec, mask, cfg, cfg.batch_size)
  history: list[dict[str, float]] = []
  pending: list[Any] = []
  start = time.perf_counter()
  bar = tqdm.tqdm(total=cfg.num_steps, desc="metanas meta-train",
                  disable=not progress, dynamic_ncols=True)
  try:
    for step in range(cfg.num_steps):
      episodes = family.sample_batch(episode_rng(seed, step),
                                     cfg.meta_batch_size)
      arch_steps = cfg.inner_steps if step >= cfg.warm_up_steps else 0
      task_w, task_a, metrics = [], [], []
      logits_fn = _compiled(program).logits
      for t in range(cfg.meta_batch_size):
        w_t, a_t, loss, tau = darts_adapt(
            weights, arch, episodes.support_x[t], episodes.support_y[t],
            program=program, cfg=cfg, steps=cfg.inner_steps,
            arch_steps=arch_steps, seed_words=task_seed(seed, step, t))
        logits = logits_fn(w_t, a_t, episodes.query_x[t], np.float32(tau))
        metrics.append((loss, *_query_metrics(logits, episodes.query_y[t])))
        task_w.append(w_t)
        task_a.append(a_t)
      lr_w, lr_a = cfg.meta_lrs(step)
      weights, arch = reptile_update(weights, arch, task_w, task_a,
                                     np.float32(lr_w), np.float32(lr_a))
      pending.append(_mean_metrics(metrics))
      done = step + 1
      if (cfg.prune_every and done % cfg.prune_every == 0
          and done < cfg.num_steps):
        arch, mask = _prune(arch, mask, cfg, spec)
        program = task_program(spec, mask, cfg, cfg.batch_size)
      if done % cfg.log_every == 0 or done == cfg.num_steps:
        fetched = np.asarray(jax.device_get(pending), np.float64)
        pending = []
        bad = np.flatnonzero(~np.isfinite(fetched).all(-1))
        if bad.size:
          raise NonFiniteLossError(
              f"non-finite MetaNAS loss at meta-step "
              f"{done - len(fetched) + int(bad[0]) + 1}; stopping")
        mean = fetched.mean(0)
        record = {"step": done, "support_loss": float(mean[0]),
                  "query_loss": float(mean[1]),
                  "query_accuracy": float(mean[2]),
                  "pruned": num_pruned(mask),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if log_fn is not None:
          log_fn(record)
        bar.set_postfix(loss=f"{mean[1]:.3f}", acc=f"{mean[2]:.2f}")
      bar.update(1)
  finally:
    bar.close()
  arch, mask = _prune(arch, mask, cfg, spec)
  return weights, arch, mask, history


# ----------------------------------------------------------------------------
# The learner.


def _check_images(x: Any, name: str, channels: int) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or x.shape[-1] != channels or x.shape[0] < 1:
    raise ConfigError(f"{name} must be [n, H, W, {channels}] images, got "
                      f"shape {x.shape}")
  return x


@dataclasses.dataclass
class MetaNASLearner:
  """Meta-learned supernet weights and architecture, adapted by DARTS.

  Attributes:
    spec: the supernet as meta-trained (``num_classes``: the most ways it
      serves).
    weights: meta-learned supernet weights (all ``spec.num_classes``
      outputs).
    arch_logits: meta-learned architecture logits (pruned: ``PRUNED_LOGIT``).
    mask: which operations survive hard pruning (bool ``[E, O]`` per cell
      type).
    cfg: the test-time settings (``eval_steps``, learning rates, ...).
    ways: the N of the N-way tasks it adapts to (0: ``spec.num_classes``);
      the classifier keeps its first ``ways`` outputs (meta-training
      relabels classes at random, so they are exchangeable).
  """
  spec: SupernetSpec
  weights: Weights
  arch_logits: ArchLogits
  mask: MaskArrays
  cfg: MetaNASConfig
  ways: int = 0

  def __post_init__(self):
    self.ways = int(self.ways or self.spec.num_classes)
    self.task_weights = (
        self.weights if self.ways == self.spec.num_classes
        else restrict_classifier(self.weights, self.ways, "MetaNAS supernet"))
    self.task_spec = dataclasses.replace(self.spec, num_classes=self.ways)
    self._program = task_program(self.task_spec, self.mask, self.cfg,
                                 self.cfg.test_batch_size)

  @property
  def parameters(self) -> int:
    """Supernet weights outside pruned operations, for ``ways`` outputs."""
    return active_parameter_count(self.task_spec, self.task_weights,
                                  self.mask)

  def restrict_ways(self, ways: int) -> "MetaNASLearner":
    """The learner for ``ways``-way tasks (``2 <= ways <= spec.num_classes``).

    Always cut from the full meta-learned classifier, so a learner restricted
    to fewer ways can be restricted again to more.
    """
    return dataclasses.replace(self, ways=ways)

  def adapt(self, support_x: Any, support_y: Any, *, seed: int
            ) -> tuple[Weights, ArchLogits, float]:
    """``(weights, arch_logits, temperature)`` adapted to a support set."""
    support_x = _check_images(support_x, "support_x",
                              self.task_spec.in_channels)
    support_y = np.asarray(support_y, np.int32)
    if (support_y.shape != (support_x.shape[0],) or support_y.min() < 0
        or support_y.max() >= self.ways):
      raise ConfigError(f"support_y must be {support_x.shape[0]} labels in "
                        f"0..{self.ways - 1}")
    weights, arch, _, tau = darts_adapt(
        self.task_weights, self.arch_logits, support_x, support_y,
        program=self._program, cfg=self.cfg, steps=self.cfg.eval_steps,
        arch_steps=self.cfg.eval_arch_steps, seed_words=task_seed(seed))
    return weights, arch, tau

  def predict_logits(self, weights: Weights, arch_logits: ArchLogits,
                     x: Any, temperature: float) -> np.ndarray:
    """Logits of the (adapted) supernet for images ``x``."""
    x = _check_images(x, "images", self.task_spec.in_channels)
    return np.asarray(_compiled(self._program).logits(
        weights, arch_logits, x, np.float32(temperature)))

  def genotype(self, arch_logits: ArchLogits, temperature: float) -> Genotype:
    """The DARTS-rule genotype of ``alpha / temperature``, pruned ops out."""
    scaled = {c: np.where(self.mask[c], np.asarray(arch_logits[c],
                                                   np.float64) / temperature,
                          PRUNED_LOGIT) for c in CELL_TYPES}
    return genotype_of(self.spec, scaled)

  def adapt_and_predict(self, support_x: Any, support_y: Any, query_x: Any,
                        *, seed: int) -> TaskResult:
    """DARTS from the meta parameters, then the query labels and genotype."""
    weights, arch, tau = self.adapt(support_x, support_y, seed=seed)
    query_logits = self.predict_logits(weights, arch, query_x, tau)
    support_logits = self.predict_logits(weights, arch, support_x, tau)
    support_accuracy = float(np.mean(np.argmax(support_logits, -1)
                                     == np.asarray(support_y)))
    return TaskResult(np.argmax(query_logits, -1), support_accuracy,
                      self.genotype(jax.device_get(arch), tau))


# ----------------------------------------------------------------------------
# Saving and loading.


def save_metanas(path: str | os.PathLike, spec: SupernetSpec,
                 weights: Weights, arch_logits: ArchLogits,
                 mask: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None = None) -> None:
  """Writes the meta parameters, pruning mask and spec to one file, atomically.

  The format is ``base.serialization``'s: a JSON header (format, version,
  ``spec.to_dict()``, ``metadata``), the arrays and a checksum, written
  beside ``path`` and renamed over it.
  """
  header = {"format": FORMAT, "version": FORMAT_VERSION,
            "spec": spec.to_dict(), "metadata": dict(metadata or {})}
  tree = {"weights": weights,
          "arch_logits": {c: arch_logits[c] for c in CELL_TYPES},
          "mask": {c: np.asarray(mask[c], np.uint8) for c in CELL_TYPES}}
  serialization.write_arrays_file(path, tree, header)


def load_metanas(path: str | os.PathLike
                 ) -> tuple[SupernetSpec, Weights, ArchLogits, MaskArrays,
                            dict[str, Any]]:
  """Reads ``(spec, weights, arch_logits, mask, metadata)`` of a save.

  Raises:
    CheckpointError: naming ``path``, when the file is missing, truncated,
      corrupt, of another format, or its arrays do not match its spec.
  """
  path = os.fspath(path)
  tree, header = serialization.read_arrays_file(
      path, kind="MetaNAS meta-parameters", format_name=FORMAT,
      version=FORMAT_VERSION)
  try:
    spec = SupernetSpec.from_dict(header["spec"])
    expected = jax.eval_shape(
        lambda: init_supernet_weights(spec, jax.random.key(0)))
  except Exception as e:  # missing keys, bad values
    raise CheckpointError(f"MetaNAS file {path} has an invalid spec header: "
                          f"{type(e).__name__}: {e}") from None
  if set(tree) != {"weights", "arch_logits", "mask"}:
    raise CheckpointError(f"MetaNAS file {path} holds {sorted(tree)}, "
                          f"expected weights, arch_logits and mask")
  want = {k: tuple(v.shape) for k, v in
          serialization.flatten(expected).items()}
  have = {k: tuple(np.shape(v)) for k, v in
          serialization.flatten(tree["weights"]).items()}
  if want != have:
    wrong = sorted(k for k in set(want) | set(have)
                   if want.get(k) != have.get(k))
    raise CheckpointError(f"MetaNAS file {path}: weights do not match its "
                          f"supernet spec: {wrong[:3]}")
  arch, mask = {}, {}
  for c in CELL_TYPES:
    logits = np.asarray(tree["arch_logits"].get(c, np.zeros(0)), np.float32)
    keep = np.asarray(tree["mask"].get(c, np.zeros(0)))
    if logits.shape != spec.arch_shape or keep.shape != spec.arch_shape:
      raise CheckpointError(f"MetaNAS file {path}: {c} logits/mask of shape "
                            f"{logits.shape}/{keep.shape}, expected "
                            f"{spec.arch_shape}")
    keep = keep.astype(bool)
    if not np.isfinite(logits).all() or not keep.any(-1).all():
      raise CheckpointError(f"MetaNAS file {path}: {c} logits are not finite"
                            f" or an edge has no operation left")
    arch[c], mask[c] = jnp.asarray(logits), keep
  return spec, tree["weights"], arch, mask, dict(header.get("metadata", {}))


def _artifact_path(workdir: str) -> str:
  return os.path.join(os.fspath(workdir), ARTIFACT_FILENAME)


# ----------------------------------------------------------------------------
# The method interface.


def meta_train(exp: Any, cfg: MetaNASConfig, workdir: str, *, seed: int,
               progress: bool = True) -> dict[str, Any]:
  """Meta-trains MetaNAS on ``exp.train_family``; writes the artifact.

  The artifact is ``workdir/metanas.msgpack`` (see :func:`save_metanas`);
  metrics go to ``workdir/metanas_metrics.jsonl``.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} cannot be created: "
                      f"{e.strerror}") from None
  start = time.perf_counter()
  metrics_path = os.path.join(workdir, METRICS_FILENAME)
  with open(metrics_path, "w"):
    pass

  def log(record):
    with open(metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")

  weights, arch, mask, history = metanas_meta_train(
      exp.train_family, exp.spec, cfg, seed=seed, progress=progress,
      log_fn=log)
  learner = MetaNASLearner(exp.spec, weights, arch, mask, cfg)
  genotype = learner.genotype(jax.device_get(arch), cfg.tau_end)
  seconds = time.perf_counter() - start
  last = history[-1] if history else {}
  summary = {"seconds": seconds, "steps": cfg.num_steps,
             "final_query_loss": last.get("query_loss"),
             "final_query_accuracy": last.get("query_accuracy"),
             "pruned_ops": num_pruned(mask),
             "parameters": learner.parameters,
             "meta_genotype": genotype.to_dict()}
  save_metanas(_artifact_path(workdir), exp.spec, weights, arch, mask,
               {**summary, "seed": seed, "config": dataclasses.asdict(cfg)})
  summary["path"] = _artifact_path(workdir)
  return summary


def load_learner(exp: Any, cfg: MetaNASConfig, workdir: str
                 ) -> MetaNASLearner:
  """The MetaNAS learner saved in ``workdir``, fitted to ``exp``'s tasks.

  Raises:
    CheckpointError: the artifact is missing or corrupt.
    ConfigError: it was meta-trained for another supernet (other than the
      number of ways), other image channels, or fewer ways than the
      experiment's meta-test tasks.
  """
  path = _artifact_path(workdir)
  spec, weights, arch, mask, _ = load_metanas(path)
  differ = [f.name for f in dataclasses.fields(SupernetSpec)
            if f.name not in ("num_classes", "depthwise_impl")
            and getattr(spec, f.name) != getattr(exp.spec, f.name)]
  if differ:
    raise ConfigError(
        f"MetaNAS artifact {path} was meta-trained for another supernet ("
        + ", ".join(f"{n}={getattr(spec, n)!r} vs config "
                    f"{getattr(exp.spec, n)!r}" for n in differ) + ")")
  ways = int(exp.test_family.num_ways)
  if spec.num_classes < ways:
    raise ConfigError(f"MetaNAS artifact {path} serves up to "
                      f"{spec.num_classes}-way tasks, the experiment asks "
                      f"for {ways}-way; meta-train with num_ways >= {ways}")
  spec = dataclasses.replace(spec, depthwise_impl=exp.spec.depthwise_impl)
  return MetaNASLearner(spec, weights, arch, mask, cfg, ways=ways)


METHOD = Method(name="metanas", title="MetaNAS (DARTS in Reptile)",
                config_class=MetaNASConfig, meta_train=meta_train,
                load_learner=load_learner)
