"""MAML with the standard Conv-4 backbone: the fixed-architecture baseline.

BASE adapts a distribution over architectures *and* weights; the usual point
of comparison is a fixed architecture whose initial weights are meta-learned
with MAML (Finn et al. 2017) on the same episodes. The backbone is the
"Conv-4" of MAML and ProtoNets: four blocks of

    3x3 conv (``hidden`` channels, SAME) -> batch norm -> ReLU -> 2x2 max-pool

then a linear N-way classifier on the flattened features. Batch norm uses the
batch statistics and has no affine parameters (``base.ops.normalize``), the
same transductive choice as the supernet, so both methods normalise alike and
nothing but the weights is adapted. The convolutions have no bias (batch norm
would cancel it). Pooling is floor-sized (VALID, as in MAML) and is skipped
once the feature map is 1x1, so 8x8 digits and 28x28 Omniglot both fit.

As in ``base.supernet``, the meta-learning code holds the weights as a plain
nested dict (:func:`init_conv4`) and calls the pure :func:`apply_conv4`,
which merges them with a cached ``GraphDef`` inside traced code:

* :func:`maml_adapt`: ``inner_steps`` of plain SGD on the support set's mean
  cross-entropy (``lax.scan``); first-order MAML stops the gradient through
  the inner gradients, so the meta-gradient needs no second derivatives.
* :func:`maml_meta_train`: Adam on the initial weights, minimising the mean
  query cross-entropy after adaptation over a meta-batch of episodes;
  checkpointed with Orbax when given a directory, so a killed run resumes
  where its last checkpoint left it, and a longer ``num_steps`` continues a
  finished run (Adam at a constant rate: the same steps as one long run).
* :func:`score_maml`: the meta-test protocol of ``base.train.score_prior``
  (same episodes for the same seed, same result keys), so the two methods'
  rows sit side by side in one table.
* :func:`save_maml` / :func:`load_maml`: one self-describing file in the
  format of ``base.serialization`` (the priors' format).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from base import config_utils, ops, serialization
from base.data import Episode, TaskFamily
from base.data.episodes import check_count
from base.checkpoints import MetaCheckpointer
from base.errors import CheckpointError, ConfigError
from base.evaluation import EpisodeScore, score_episodes
from base.methods.api import Method, TaskResult
from base.prior import restrict_classifier
from base.meta import resolve_task_batching
from base.train import MAML_FILENAME, episode_rng, fetch_finite_losses

Weights = dict[str, Any]  # nested dict of arrays (nnx pure state dict)

NUM_BLOCKS = 4
FORMAT = "base-maml"
FORMAT_VERSION = 1
CHECKPOINT_SUBDIR = "maml_checkpoints"  # beside BASE's "checkpoints"
CHECKPOINT_RUN_FILE = "run.json"  # in it: what the checkpoints were made with
# The config fields that decide the meta-training trajectory (the rest decide
# its length, how often it is saved, or meta-test adaptation): a checkpoint
# resumes, and a saved file counts as trained, only when these are equal.
TRAJECTORY_FIELDS = ("hidden", "inner_steps", "inner_lr", "first_order",
                     "meta_lr", "meta_batch_size")


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
  """MAML hyper-parameters (static: hashable, a jit cache key).

  Attributes:
    hidden: channels of every Conv-4 block (64 in MAML and ProtoNets).
    inner_steps: SGD steps on the support set per task in meta-training.
    inner_lr: SGD rate of the inner steps (MAML's Omniglot setting is 0.4).
    first_order: treat inner gradients as constants (FOMAML); ``False``
      differentiates through every inner step (second order).
    meta_lr: Adam rate of the meta-update of the initial weights.
    meta_batch_size: tasks per meta-step.
    num_steps: meta-steps in total.
    eval_inner_steps: SGD steps at meta-test time (0: ``inner_steps``).
    checkpoint_every: meta-steps between checkpoints when meta-training into
      a workdir (0: none; the last step is always saved).
  """
  hidden: int = 64
  inner_steps: int = 5
  inner_lr: float = 0.4
  first_order: bool = True
  meta_lr: float = 1e-3
  meta_batch_size: int = 4
  num_steps: int = 1000
  eval_inner_steps: int = 0
  checkpoint_every: int = 100

  def __post_init__(self):
    for name, minimum in (("hidden", 1), ("inner_steps", 0),
                          ("meta_batch_size", 1), ("num_steps", 1),
                          ("eval_inner_steps", 0), ("checkpoint_every", 0)):
      config_utils.check_int(f"maml.{name}", getattr(self, name), minimum)
    for name in ("inner_lr", "meta_lr"):
      config_utils.check_positive(f"maml.{name}", getattr(self, name))
    config_utils.check_bool("maml.first_order", self.first_order)

  @property
  def eval_steps(self) -> int:
    """Inner steps at meta-test time."""
    return self.eval_inner_steps or self.inner_steps

  def trajectory(self, seed: int) -> dict[str, Any]:
    """The fields (and seed) that decide what meta-training computes."""
    return {**{name: getattr(self, name) for name in TRAJECTORY_FIELDS},
            "seed": seed}


# ----------------------------------------------------------------------------
# The Conv-4 backbone.


def pooled_sizes(image_size: int) -> tuple[tuple[bool, ...], int]:
  """Which blocks pool, and the final side: ``8 -> (T, T, T, F), 1``."""
  size, pools = image_size, []
  for _ in range(NUM_BLOCKS):
    pools.append(size > 1)
    size = size // 2 if size > 1 else size
  return tuple(pools), size


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool at stride 2 (VALID: an odd last row/column is dropped)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                               (1, 2, 2, 1), "VALID")


class Conv4(nnx.Module):
  """Four [conv -> norm -> ReLU -> max-pool] blocks and a linear classifier.

  Args:
    num_ways: classifier outputs (the N of N-way tasks).
    in_channels: image channels (1 grayscale, 3 RGB).
    image_size: side of the square input images.
    hidden: channels of every block.
    rngs: initialises the conv kernels (He normal) and the classifier.
  """

  def __init__(self, num_ways: int, in_channels: int, image_size: int,
               hidden: int, rngs: nnx.Rngs):
    for name, value in (("num_ways", num_ways), ("in_channels", in_channels),
                        ("image_size", image_size), ("hidden", hidden)):
      check_count(name, value, 1)
    self.image_size = int(image_size)
    self.pools, final = pooled_sizes(self.image_size)
    channels = [in_channels] + [hidden] * NUM_BLOCKS
    self.convs = nnx.List([
        ops.Conv(channels[i], hidden, (3, 3), 1, rngs)
        for i in range(NUM_BLOCKS)])
    self.classifier = nnx.Linear(hidden * final * final, num_ways, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits ``[n, num_ways]`` for images ``x`` ``[n, S, S, C]`` (NHWC)."""
    if tuple(x.shape[1:3]) != (self.image_size, self.image_size):
      raise ConfigError(f"Conv4 built for {self.image_size}x{self.image_size}"
                        f" images got shape {tuple(x.shape)}")
    for conv, pool in zip(self.convs, self.pools):
      x = jax.nn.relu(ops.normalize(conv(x)))
      if pool:
        x = _max_pool_2x2(x)
    return self.classifier(x.reshape(x.shape[0], -1))


@functools.lru_cache(maxsize=32)
def conv4_graphdef(num_ways: int, in_channels: int, image_size: int,
                   hidden: int) -> nnx.GraphDef:
  """The (cached) static structure of a Conv-4 network."""
  abstract = nnx.eval_shape(
      lambda: Conv4(num_ways, in_channels, image_size, hidden, nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract)
  return graphdef


def init_conv4(key: jax.Array, num_ways: int, in_channels: int,
               image_size: int, hidden: int) -> Weights:
  """Fresh Conv-4 weights as a plain nested dict of arrays.

  The dict is ``{"convs": {0..3: {"kernel": [3, 3, c_in, hidden]}},
  "classifier": {"kernel": [hidden * s * s, num_ways], "bias": [num_ways]}}``
  with ``s`` the final side of :func:`pooled_sizes`.
  """
  model = Conv4(num_ways, in_channels, image_size, hidden,
                nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def conv4_architecture(weights: Weights) -> dict[str, int]:
  """``num_ways``, ``in_channels``, ``hidden``, ``final_spatial`` of weights.

  Everything but the image size is read off the array shapes (images whose
  side pools down to ``final_spatial`` all fit).

  Raises:
    ConfigError: ``weights`` is not a Conv-4 weight dict.
  """
  try:
    kernels = [weights["convs"][i]["kernel"] for i in range(NUM_BLOCKS)]
    classifier = weights["classifier"]["kernel"]
    bias = weights["classifier"]["bias"]
  except (KeyError, TypeError, IndexError):
    raise ConfigError("not Conv-4 weights: expected convs/0..3/kernel, "
                      "classifier/kernel and classifier/bias") from None
  if any(np.ndim(k) != 4 for k in kernels) or np.ndim(classifier) != 2:
    raise ConfigError("not Conv-4 weights: conv kernels must be 4-D and the "
                      "classifier kernel 2-D")
  in_channels, hidden = int(kernels[0].shape[2]), int(kernels[0].shape[3])
  features, num_ways = (int(d) for d in classifier.shape)
  final = math.isqrt(features // hidden) if hidden else 0
  if (final < 1 or final * final * hidden != features
      or np.shape(bias) != (num_ways,)):
    raise ConfigError(f"not Conv-4 weights: classifier of shape "
                      f"{tuple(classifier.shape)} does not follow {hidden}-"
                      f"channel blocks")
  return {"num_ways": num_ways, "in_channels": in_channels, "hidden": hidden,
          "final_spatial": final}


def apply_conv4(weights: Weights, x: jax.Array) -> jax.Array:
  """Logits ``[n, num_ways]`` of Conv-4 ``weights`` for images ``x`` (NHWC).

  Pure and jittable: the architecture comes from the weights' shapes and the
  image size from ``x``'s (both static under ``jit``).
  """
  arch = conv4_architecture(weights)
  if x.ndim != 4 or x.shape[1] != x.shape[2]:
    raise ConfigError(f"Conv-4 needs square [n, S, S, C] images, got shape "
                      f"{tuple(x.shape)}")
  image_size = int(x.shape[1])
  if pooled_sizes(image_size)[1] != arch["final_spatial"]:
    raise ConfigError(
        f"these Conv-4 weights end at {arch['final_spatial']}x"
        f"{arch['final_spatial']} features; {image_size}x{image_size} images "
        f"end at {pooled_sizes(image_size)[1]}x{pooled_sizes(image_size)[1]}")
  model = nnx.merge(conv4_graphdef(arch["num_ways"], arch["in_channels"],
                                   image_size, arch["hidden"]), weights)
  return model(x.astype(jnp.float32))


def count_parameters(weights: Weights) -> int:
  """Number of scalars in ``weights`` (arrays or ``jax.eval_shape`` shapes)."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(weights)))


# ----------------------------------------------------------------------------
# Adaptation and the meta-objective.


def cross_entropy(weights: Weights, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy of Conv-4 on images ``x`` ``[n, S, S, C]``, ``y``."""
  logits = apply_conv4(weights, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _sgd_steps(weights: Weights, x: jax.Array, y: jax.Array, inner_lr: float,
               first_order: bool, steps: int) -> Weights:
  if steps == 0:
    return weights

  def step(current, _):
    grads = jax.grad(cross_entropy)(current, x, y)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    return jax.tree.map(lambda w, g: w - inner_lr * g, current, grads), None

  adapted, _ = jax.lax.scan(step, weights, None, length=steps)
  return adapted


def _check_steps(steps: Any) -> int:
  if (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
      or steps < 0):
    raise ConfigError(f"adaptation steps must be an integer >= 0, got "
                      f"{steps!r}")
  return int(steps)


def maml_adapt(weights: Weights, support_x: jax.Array, support_y: jax.Array,
               cfg: MAMLConfig, steps: int | None = None) -> Weights:
  """Weights after ``steps`` SGD steps on the support set's cross-entropy.

  Pure, jittable (``cfg`` and ``steps`` static) and differentiable in
  ``weights``; with ``cfg.first_order`` the inner gradients are constants,
  so d(adapted)/d(weights) = I.

  Args:
    weights: the initial (meta-learned) weights.
    support_x: ``[n, S, S, C]`` float images; support_y: ``[n]`` int labels.
    cfg: ``inner_lr`` and ``first_order`` are used.
    steps: SGD steps (default ``cfg.inner_steps``); 0 returns ``weights``.
  """
  steps = _check_steps(cfg.inner_steps if steps is None else steps)
  return _sgd_steps(weights, support_x, support_y, cfg.inner_lr,
                    cfg.first_order, steps)


def task_query_loss(weights: Weights, episode: Episode,
                    cfg: MAMLConfig) -> jax.Array:
  """MAML's meta-loss of one task: query cross-entropy after adaptation."""
  adapted = maml_adapt(weights, episode.support_x, episode.support_y, cfg)
  return cross_entropy(adapted, episode.query_x, episode.query_y)


def _compiled_fields(cfg: MAMLConfig) -> MAMLConfig:
  """``cfg`` with only the fields a meta-step reads; the rest at defaults.

  The compiled meta-step is cached on its (static) config, so configs that
  differ only in, say, ``num_steps`` share one program.
  """
  return MAMLConfig(inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                    first_order=cfg.first_order, meta_lr=cfg.meta_lr)


def _adam_update(weights, opt_state, grads, meta_lr):
  updates, opt_state = optax.adam(meta_lr).update(grads, opt_state, weights)
  return optax.apply_updates(weights, updates), opt_state


@functools.partial(jax.jit, static_argnames=("cfg",),
                   donate_argnames=("weights", "opt_state"))
def _meta_step_vmapped(weights, opt_state, episodes, *, cfg):
  def batch_loss(w):
    losses = jax.vmap(task_query_loss, in_axes=(None, 0, None))(
        w, episodes, cfg)
    return jnp.mean(losses)

  loss, grads = jax.value_and_grad(batch_loss)(weights)
  weights, opt_state = _adam_update(weights, opt_state, grads, cfg.meta_lr)
  return weights, opt_state, loss


@functools.partial(jax.jit, static_argnames=("cfg",))
def _task_gradient(weights, episode, *, cfg):
  return jax.value_and_grad(task_query_loss)(weights, episode, cfg)


@functools.partial(jax.jit, static_argnames=("meta_lr",),
                   donate_argnames=("weights", "opt_state"))
def _apply_mean_gradient(weights, opt_state, task_losses, task_grads, *,
                         meta_lr):
  grads = jax.tree.map(lambda *g: sum(g) / len(g), *task_grads)
  weights, opt_state = _adam_update(weights, opt_state, grads, meta_lr)
  return weights, opt_state, sum(task_losses) / len(task_losses)


def maml_meta_step(weights: Weights, opt_state: Any, episodes: Episode,
                   cfg: MAMLConfig, task_batching: str = "auto"
                   ) -> tuple[Weights, Any, jax.Array]:
  """One Adam step on the mean query loss of a meta-batch of episodes.

  ``episodes`` has a leading task axis. ``"vmap"`` runs the meta-batch as one
  compiled program; ``"loop"`` calls one compiled single-task gradient per
  task and a second program that averages and applies them (same update).
  ``"auto"`` is the loop on CPU and ``"vmap"`` elsewhere, as for the
  supernet (``base.meta.resolve_task_batching``): on XLA:CPU the loop both
  compiles and runs Conv-4 faster (measured on 2 cores, 4 tasks: 5.0 vs 7.2 s
  to compile, 5 vs 13 ms a step at hidden=8 on 8x8 images; 1.0 vs 2.0 s a
  step at hidden=64 on 28x28). ``weights`` and ``opt_state`` are donated;
  the loss stays on the device.
  """
  cfg = _compiled_fields(cfg)
  if resolve_task_batching(task_batching) == "vmap":
    return _meta_step_vmapped(weights, opt_state, episodes, cfg=cfg)
  losses, grads = [], []
  for i in range(episodes.support_x.shape[0]):
    episode = jax.tree.map(lambda a, i=i: a[i], episodes)
    loss, task_grads = _task_gradient(weights, episode, cfg=cfg)
    losses.append(loss)
    grads.append(task_grads)
  return _apply_mean_gradient(weights, opt_state, losses, grads,
                              meta_lr=cfg.meta_lr)


def _family_image_size(family: Any) -> tuple[int, int]:
  """``(image_size, channels)`` of a task family with square images."""
  if not isinstance(family, TaskFamily):
    raise ConfigError(f"expected a TaskFamily (e.g. base.data.EpisodeSampler),"
                      f" got {type(family).__name__}")
  height, width, channels = family.image_shape
  if height != width:
    raise ConfigError(f"Conv-4 needs square images, the task family has "
                      f"{height}x{width}")
  return int(height), int(channels)


def maml_meta_train(family: TaskFamily, cfg: MAMLConfig, *, seed: int = 0,
                    progress: bool = False, log_every: int = 10,
                    task_batching: str = "auto",
                    checkpoint_dir: str | None = None
                    ) -> tuple[Weights, list[float]]:
  """Meta-learns Conv-4 initial weights with MAML on ``family``'s episodes.

  Starts from ``init_conv4(jax.random.key(seed), ...)``; step ``t`` samples
  ``family.sample_batch(np.random.default_rng([seed, t]),
  cfg.meta_batch_size)``, as ``base.train.meta_train`` does, so a run is
  reproducible from ``seed`` alone, and a resumed run is the uninterrupted
  one.

  Args:
    family: the meta-training tasks (square images).
    cfg: the MAML hyper-parameters.
    seed: seeds the initial weights and the episodes.
    progress: show a progress bar.
    log_every: fetch the losses from the device every this many steps (the
      loop does not wait for the device in between).
    task_batching: see :func:`maml_meta_step`.
    checkpoint_dir: save the state every ``cfg.checkpoint_every`` steps and
      at the last one under ``checkpoint_dir/maml_checkpoints``, and resume
      from the latest checkpoint there (None: no checkpoints).

  Returns:
    ``(weights, history)``: the meta-learned initial weights and the
    meta-loss (mean query cross-entropy after adaptation) of every step,
    resumed ones included.

  Raises:
    NonFiniteLossError: the meta-loss became NaN or infinite (the first bad
      step is named; no checkpoint is written past the last good step).
    ConfigError: the checkpoints in ``checkpoint_dir`` were made with
      another trajectory config or seed, or are past ``cfg.num_steps``.
  """
  weights, history, _ = _meta_train(family, cfg, seed, progress, log_every,
                                    task_batching, checkpoint_dir)
  return weights, history


def _meta_train(family: TaskFamily, cfg: MAMLConfig, seed: int,
                progress: bool, log_every: int, task_batching: str,
                checkpoint_dir: str | None
                ) -> tuple[Weights, list[float], float]:
  """:func:`maml_meta_train`, also returning the wall seconds of all the
  steps (those of earlier, resumed runs included)."""
  clock = time.perf_counter()
  image_size, channels = _family_image_size(family)
  log_every = check_count("log_every", log_every, 1)
  weights = init_conv4(jax.random.key(seed), family.num_ways, channels,
                       image_size, cfg.hidden)
  state = {"weights": weights,
           "opt_state": optax.adam(cfg.meta_lr).init(weights),
           "history": np.zeros(0, np.float32),
           "seconds": np.zeros((), np.float32)}
  checkpointer = None
  if checkpoint_dir is not None:
    checkpointer = _open_checkpoints(checkpoint_dir, cfg, seed)
    state = _restore(checkpointer, state, cfg.num_steps)
  start = len(state["history"])
  weights, opt_state = state["weights"], state["opt_state"]
  history = [float(v) for v in state["history"]]
  earlier_seconds = float(state["seconds"])
  pending: list[jax.Array] = []
  bar = tqdm.tqdm(total=cfg.num_steps, initial=start, desc="maml meta-train",
                  disable=not progress, dynamic_ncols=True)
  try:
    for step in range(start, cfg.num_steps):
      episodes = family.sample_batch(episode_rng(seed, step),
                                     cfg.meta_batch_size)
      weights, opt_state, loss = maml_meta_step(weights, opt_state, episodes,
                                                cfg, task_batching)
      pending.append(loss)
      done = step + 1
      save_now = checkpointer is not None and (
          done == cfg.num_steps or (cfg.checkpoint_every
                                    and done % cfg.checkpoint_every == 0))
      # Losses are fetched (and checked) before every checkpoint, so a
      # non-finite state is never saved.
      if save_now or done % log_every == 0 or done == cfg.num_steps:
        fetched = fetch_finite_losses(pending, done, "MAML meta-loss")
        pending = []
        history.extend(fetched)
        bar.set_postfix(loss=f"{np.mean(fetched):.3f}")
      if save_now:
        seconds = earlier_seconds + time.perf_counter() - clock
        checkpointer.save(done, {
            "weights": weights, "opt_state": opt_state,
            "history": np.asarray(history, np.float32),
            "seconds": np.asarray(seconds, np.float32)})
      bar.update(1)
  finally:
    bar.close()
    if checkpointer is not None:
      checkpointer.close()
  return weights, history, earlier_seconds + time.perf_counter() - clock


def _open_checkpoints(directory: str, cfg: MAMLConfig,
                      seed: int) -> MetaCheckpointer:
  """The MAML checkpoints in ``directory``, refusing another trajectory's.

  ``run.json`` beside them records the trajectory fields and seed; resuming
  with different ones would silently mix two trainings.
  """
  checkpointer = MetaCheckpointer(directory, subdir=CHECKPOINT_SUBDIR)
  path = os.path.join(checkpointer.directory, CHECKPOINT_RUN_FILE)
  wanted = cfg.trajectory(seed)
  if checkpointer.latest_step() is None or not os.path.exists(path):
    with open(path, "w") as f:
      json.dump(wanted, f, indent=1)
    return checkpointer
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    checkpointer.close()
    raise CheckpointError(f"cannot read {path}: {e}") from None
  differing = sorted(k for k in wanted if recorded.get(k) != wanted[k])
  if differing:
    checkpointer.close()
    raise ConfigError(
        f"MAML checkpoints in {checkpointer.directory} were made with "
        + ", ".join(f"{k}={recorded.get(k)!r}" for k in differing)
        + " (this run: " + ", ".join(f"{k}={wanted[k]!r}" for k in differing)
        + "); use another workdir, or remove that folder to start over")
  return checkpointer


def _restore(checkpointer: MetaCheckpointer, fresh: dict[str, Any],
             num_steps: int) -> dict[str, Any]:
  """The latest checkpoint's state (``fresh`` when there is none)."""
  step = checkpointer.latest_step()
  if not step:
    return fresh
  if step > num_steps:
    checkpointer.close()
    raise ConfigError(
        f"the MAML checkpoint in {checkpointer.directory} is of step {step}, "
        f"past maml.num_steps={num_steps}; raise num_steps or use another "
        f"workdir")
  template = dict(fresh, history=np.zeros(step, np.float32))
  return checkpointer.restore(template, step)


# ----------------------------------------------------------------------------
# Evaluation on meta-test episodes.


@functools.partial(jax.jit,
                   static_argnames=("inner_lr", "first_order", "steps"))
def _adapt_single(weights, support_x, support_y, *, inner_lr, first_order,
                  steps):
  return _sgd_steps(weights, support_x, support_y, inner_lr, first_order,
                    steps)


@jax.jit
def _accuracy(weights, x, y):
  return jnp.mean(jnp.argmax(apply_conv4(weights, x), -1) == y)


def _check_fits(weights: Weights, family: TaskFamily) -> None:
  arch = conv4_architecture(weights)
  image_size, channels = _family_image_size(family)
  if (arch["num_ways"] != family.num_ways or arch["in_channels"] != channels
      or pooled_sizes(image_size)[1] != arch["final_spatial"]):
    raise ConfigError(
        f"Conv-4 weights for {arch['num_ways']}-way tasks on "
        f"{arch['in_channels']}-channel images do not fit "
        f"{family.num_ways}-way tasks on {image_size}x{image_size}x{channels}"
        f" images")


def score_maml(weights: Weights, family: TaskFamily, cfg: MAMLConfig, *,
               episodes: int, seed: int,
               steps: int | None = None) -> dict[str, Any]:
  """Adapts to ``episodes`` meta-test episodes; accuracy mean ± 95% CI.

  The protocol and result are those of ``base.train.score_prior``: episode
  ``i`` is the ``i``-th ``family.sample(rng)`` of
  ``rng = np.random.default_rng(seed)``, so for the same seed both methods
  see the very same episodes; query accuracy is averaged over episodes with
  a normal-approximation 95% interval.

  Args:
    weights: Conv-4 weights (meta-learned or not).
    family: the meta-test tasks.
    cfg: ``inner_lr`` and ``first_order`` of the adaptation.
    episodes: number of meta-test episodes.
    seed: seeds the episodes.
    steps: SGD steps per task (default ``cfg.eval_steps``).

  Returns:
    ``query_accuracy``, ``ci95`` (half-width), ``support_accuracy`` (after
    adaptation), ``episodes``, ``adapt_steps``, ``seconds_per_task`` (median
    wall time of one adaptation, compilation excluded) and ``parameters``
    (the number of Conv-4 weights).
  """
  episodes = check_count("episodes", episodes, 1)
  steps = _check_steps(cfg.eval_steps if steps is None else steps)
  _check_fits(weights, family)
  adapt = functools.partial(_adapt_single, inner_lr=cfg.inner_lr,
                            first_order=cfg.first_order, steps=steps)
  def score_one(episode, index):
    support_x = jnp.asarray(episode.support_x, jnp.float32)
    support_y = jnp.asarray(episode.support_y, jnp.int32)
    if index == 0:  # Compile outside the timed calls.
      jax.block_until_ready(adapt(weights, support_x, support_y))
    start = time.perf_counter()
    adapted = jax.block_until_ready(adapt(weights, support_x, support_y))
    seconds = time.perf_counter() - start
    return EpisodeScore(
        float(_accuracy(adapted, episode.query_x, episode.query_y)),
        float(_accuracy(adapted, support_x, support_y)), seconds)

  row = score_episodes(family, score_one, episodes=episodes, seed=seed)
  row.update(adapt_steps=steps, parameters=count_parameters(weights))
  return row


# ----------------------------------------------------------------------------
# Saving and loading.


def save_maml(path: str | os.PathLike, weights: Weights,
              metadata: Mapping[str, Any] | None = None) -> None:
  """Writes Conv-4 ``weights`` and JSON ``metadata`` to one file, atomically.

  The format is ``base.serialization``'s (as for priors): a JSON header with
  the architecture, the arrays, and a checksum; the file is written beside
  ``path`` and renamed over it, so an existing file survives a crash.

  Raises:
    ConfigError: ``weights`` are not Conv-4 weights, or ``metadata`` is not
      JSON-serialisable.
  """
  header = {"format": FORMAT, "version": FORMAT_VERSION,
            "architecture": conv4_architecture(weights),
            "metadata": dict(metadata or {})}
  serialization.write_arrays_file(path, weights, header)


def load_maml(path: str | os.PathLike) -> tuple[Weights, dict[str, Any]]:
  """Reads ``(weights, metadata)`` written by :func:`save_maml`.

  Raises:
    CheckpointError: naming ``path``, when the file is missing, truncated,
      corrupt, of another format, or its arrays are not the Conv-4 its
      header describes.
  """
  path = os.fspath(path)
  weights, header = serialization.read_arrays_file(
      path, kind="MAML weights", format_name=FORMAT, version=FORMAT_VERSION)
  _check_architecture(weights, header.get("architecture"), path)
  return weights, header.get("metadata", {})


def _check_architecture(weights: Weights, architecture: Any,
                        path: str) -> None:
  """Raises CheckpointError unless ``weights`` are the described Conv-4."""
  try:
    ways, channels, hidden, final = (
        int(architecture[k]) for k in ("num_ways", "in_channels", "hidden",
                                       "final_spatial"))
    # Any image side that pools down to `final` gives the same shapes.
    expected = jax.eval_shape(lambda: init_conv4(
        jax.random.key(0), ways, channels, 16 * final, hidden))
  except Exception as e:  # missing keys, bad values
    raise CheckpointError(f"MAML weights file {path} has an invalid "
                          f"architecture header: {type(e).__name__}") from None
  want = {k: (tuple(v.shape), np.dtype(v.dtype))
          for k, v in serialization.flatten(expected).items()}
  have = {k: (tuple(np.shape(v)), np.dtype(v.dtype))
          for k, v in serialization.flatten(weights).items()}
  if want != have:
    wrong = sorted(k for k in set(want) | set(have)
                   if want.get(k) != have.get(k))
    raise CheckpointError(f"MAML weights file {path} does not match its "
                          f"Conv-4 header: {wrong[:3]}")


def restrict_ways(weights: Weights, ways: int) -> Weights:
  """The same Conv-4 for ``ways``-way tasks: its first ``ways`` output units.

  As for a BASE prior (``base.prior.restrict_ways``): episodes relabel
  classes at random, so the output units are exchangeable.
  """
  return restrict_classifier(weights, ways, "Conv-4")


# ----------------------------------------------------------------------------
# The method interface (``config.method = "maml"``, ``base.compare``).


@dataclasses.dataclass
class MAMLLearner:
  """Meta-learned Conv-4 weights, adapted by SGD steps on a support set."""
  weights: Weights
  cfg: MAMLConfig

  @property
  def parameters(self) -> int:
    return count_parameters(self.weights)

  def restrict_ways(self, ways: int) -> "MAMLLearner":
    return MAMLLearner(restrict_ways(self.weights, ways), self.cfg)

  def adapt_and_predict(self, support_x, support_y, query_x, *, seed: int):
    del seed  # MAML's adaptation is deterministic.
    support_x = jnp.asarray(support_x, jnp.float32)
    support_y = jnp.asarray(support_y, jnp.int32)
    adapted = _adapt_single(self.weights, support_x, support_y,
                            inner_lr=self.cfg.inner_lr,
                            first_order=self.cfg.first_order,
                            steps=self.cfg.eval_steps)
    predictions = np.asarray(jnp.argmax(
        apply_conv4(adapted, jnp.asarray(query_x, jnp.float32)), -1))
    return TaskResult(predictions,
                      float(_accuracy(adapted, support_x, support_y)))


def _meta_train_method(exp, cfg: MAMLConfig, workdir: str, *, seed: int,
                       progress: bool = True) -> dict[str, Any]:
  """Meta-trains Conv-4 on the experiment's tasks into ``workdir``.

  Checkpoints go to ``workdir/maml_checkpoints`` (a killed run resumes from
  there). The file records the config and seed, so :func:`is_trained` can
  tell a later run that it need not train again.
  """
  os.makedirs(workdir, exist_ok=True)
  weights, history, seconds = _meta_train(
      exp.train_family, cfg, seed, progress, log_every=10,
      task_batching="auto", checkpoint_dir=workdir)
  save_maml(os.path.join(workdir, MAML_FILENAME), weights, {
      "steps": cfg.num_steps, "seconds": seconds,
      "final_loss": history[-1] if history else None,
      "config": dataclasses.asdict(cfg), "seed": seed})
  return {"seconds": seconds, "steps": cfg.num_steps}


def is_trained(workdir: str, cfg: MAMLConfig, seed: int) -> bool:
  """Whether ``workdir`` holds Conv-4 weights meta-trained for
  ``cfg.num_steps`` steps on ``cfg``'s trajectory with ``seed`` (a readable
  file whose recorded config and seed match; fields such as
  ``eval_inner_steps`` that do not change the training are not compared)."""
  path = os.path.join(workdir, MAML_FILENAME)
  if not os.path.exists(path):
    return False
  try:
    _, metadata = load_maml(path)
  except CheckpointError:
    return False
  recorded = metadata.get("config") or {}
  return (metadata.get("steps") == cfg.num_steps
          and cfg.trajectory(seed) == {**{k: recorded.get(k)
                                          for k in TRAJECTORY_FIELDS},
                                       "seed": metadata.get("seed")})


def _load_learner(exp, cfg: MAMLConfig, workdir: str) -> MAMLLearner:
  weights, _ = load_maml(os.path.join(workdir, MAML_FILENAME))
  return MAMLLearner(weights, cfg)


METHOD = Method(name="maml", title="MAML Conv-4 (meta-trained, same episodes)",
                config_class=MAMLConfig, meta_train=_meta_train_method,
                load_learner=_load_learner)
