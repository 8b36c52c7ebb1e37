"""Adapting a prior to one new task, predicting with the result, saving it.

:func:`adapt` runs the inner ELBO steps (compiled the way the backend runs
them fastest), scores the support and optional query images and derives the
genotype. The :class:`Adaptation` it returns keeps the seed, temperature and
settings the posterior was adapted with, so that later predictions on new
images (:meth:`Adaptation.predict`, also after :meth:`Adaptation.save` and
:func:`load_adaptation`) draw the same samples as the adaptation's own: with
noise drawn per task (single-path or hard samples) that is the architecture
path the task's weights were trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from base import config_utils
from base import prior as prior_lib
from base.adaptation import (AdaptConfig, accuracy, adapt_posterior, predict,
                             prediction_arch_key)
from base.errors import CheckpointError, ConfigError
from base.genotype import Genotype, genotype_of
from base.prior import SupernetDist
from base.supernet import SupernetSpec

ADAPTATION_METADATA_KEY = "adaptation"


@functools.partial(jax.jit, static_argnames=("cfg", "steps"))
def _adapt_fused(prior, key, support_x, support_y, temperature, *, cfg, steps):
  return adapt_posterior(prior, key, support_x, support_y, temperature, cfg,
                         steps)[0]


def adapt_compiled(prior: SupernetDist, key: jax.Array, support_x: jax.Array,
                   support_y: jax.Array, temperature: jax.Array, *,
                   cfg: AdaptConfig, steps: int) -> SupernetDist:
  """``adapt_posterior`` run the way this backend runs it fastest.

  On CPU: the compiled single ELBO step of meta-training, called ``steps``
  times (the same program, so adapting after meta-training compiles
  nothing; XLA:CPU ran a scan over steps ~3x slower). Elsewhere: all steps in
  one program (``lax.scan``). Both give the same posterior (same keys).
  """
  if jax.default_backend() != "cpu" or steps == 0:
    return _adapt_fused(prior, key, support_x, support_y, temperature,
                        cfg=cfg, steps=steps)
  from base.meta import stepwise_inner_loop
  return stepwise_inner_loop(prior, key, support_x, support_y, temperature,
                             cfg=cfg, steps=steps)[0]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _predict(dist, key, x, temperature, arch_key=None, *, cfg):
  return predict(dist, key, x, temperature, cfg, arch_key)


def _task_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(adaptation key, prediction key) of :func:`adapt` with ``seed``."""
  adapt_key, eval_key = jax.random.split(jax.random.key(seed))
  return adapt_key, eval_key


def _task_predictive(posterior: SupernetDist, x: jax.Array, cfg: AdaptConfig,
                     temperature: float, seed: int) -> np.ndarray:
  """The predictive of checked images ``x`` under the samples of the
  adaptation with ``seed`` (see :meth:`Adaptation.predict_proba`)."""
  adapt_key, eval_key = _task_keys(seed)
  return np.asarray(_predict(posterior, eval_key, x, jnp.float32(temperature),
                             prediction_arch_key(adapt_key, cfg), cfg=cfg))


def _genotype_of(posterior: SupernetDist, cfg: AdaptConfig) -> Genotype:
  """The discrete cells of a posterior's architecture logits, by the rule
  ``cfg`` names."""
  return genotype_of(posterior.spec, posterior.arch_logits, cfg.genotype_rule)


@dataclasses.dataclass
class Adaptation:
  """The result of adapting a prior to one task.

  ``config``, ``temperature`` and ``seed`` are what the posterior was
  adapted with; :meth:`predict` needs them to draw the adaptation's own
  samples. ``steps``: the ELBO steps run (``config.steps`` unless
  :func:`adapt` was told otherwise).
  """
  posterior: SupernetDist
  genotype: Genotype | None
  support_accuracy: float
  query_accuracy: float | None
  edge_entropy: dict[str, np.ndarray]  # nats, per edge and cell type
  seconds: float  # the adaptation alone (excludes prediction)
  query_predictions: np.ndarray | None = None  # predicted query labels
  config: AdaptConfig = AdaptConfig()
  temperature: float = 0.5
  seed: int = 0
  steps: int | None = None

  def summary(self) -> str:
    query = ("n/a" if self.query_accuracy is None
             else f"{self.query_accuracy:.3f}")
    entropy = {k: float(np.mean(v)) for k, v in self.edge_entropy.items()}
    return (f"support accuracy {self.support_accuracy:.3f}, query accuracy "
            f"{query}, mean edge entropy {entropy} nats, "
            f"{self.seconds:.2f} s\ngenotype: {self.genotype}")

  def predict_proba(self, images: Any) -> np.ndarray:
    """The posterior predictive ``[n, classes]`` of ``images`` (``[n, H, W,
    C]`` floats in [0, 1]).

    The same Monte Carlo samples as :func:`adapt`'s own predictions (for
    the same images, the same probabilities as ``query_predictions`` came
    from). The supernet normalises with the statistics of the batch it is
    given, as the adaptation did (transductive, the few-shot convention):
    pass the task's images together, not one at a time.
    """
    x, _ = check_task(self.posterior.spec, images, None, "images")
    return _task_predictive(self.posterior, x, self.config, self.temperature,
                            self.seed)

  def predict(self, images: Any) -> np.ndarray:
    """Predicted labels ``[n]`` of ``images`` (see :meth:`predict_proba`)."""
    return np.argmax(self.predict_proba(images), -1)

  def save(self, path: str | os.PathLike,
           metadata: Mapping[str, Any] | None = None) -> None:
    """Writes the posterior with what :meth:`predict` needs, atomically.

    The file is a prior file (``base.load_prior`` reads the posterior as a
    plain pytree); :func:`load_adaptation` reads it back as an
    :class:`Adaptation`. ``metadata`` is stored beside it.
    """
    record = {"config": dataclasses.asdict(self.config),
              "temperature": float(self.temperature), "seed": int(self.seed),
              "steps": self.steps,
              "support_accuracy": float(self.support_accuracy),
              "query_accuracy": self.query_accuracy,
              "seconds": float(self.seconds)}
    prior_lib.save_prior(path, self.posterior,
                         {**dict(metadata or {}),
                          ADAPTATION_METADATA_KEY: record})


def load_adaptation(path: str | os.PathLike) -> Adaptation:
  """Reads an :class:`Adaptation` written by :meth:`Adaptation.save`.

  The genotype and edge entropies are derived again from the posterior;
  ``query_predictions`` are not stored.

  A record with a setting this version does not know (one written by a
  newer version) is refused as malformed rather than dropped, unlike
  :func:`saved_adaptation_settings`: those only suggest how to adapt a
  prior, while this record is what :meth:`Adaptation.predict` must
  reproduce, and a setting it cannot honour could change the predictions.

  Raises:
    CheckpointError: the file is missing or corrupt (see
      ``base.load_prior``), or holds a prior rather than an adapted
      posterior, or its adaptation record is malformed.
  """
  posterior, metadata = prior_lib.load_prior(path, return_metadata=True)
  record = metadata.get(ADAPTATION_METADATA_KEY)
  if not isinstance(record, dict):
    raise CheckpointError(
        f"{path} holds a prior, not an adapted posterior (no "
        f"{ADAPTATION_METADATA_KEY!r} record): adapt it with base.adapt and "
        "save the result with Adaptation.save")
  try:
    config = AdaptConfig(**record["config"])
    temperature, seed = float(record["temperature"]), int(record["seed"])
    support_accuracy = float(record["support_accuracy"])
    seconds = float(record["seconds"])
    query_accuracy = record["query_accuracy"]
    query_accuracy = None if query_accuracy is None else float(query_accuracy)
    steps = record.get("steps")
    steps = None if steps is None else int(steps)
  except (ConfigError, KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path} has a malformed adaptation record: "
                          f"{type(e).__name__}: {e}") from None
  return Adaptation(
      posterior, _genotype_of(posterior, config), support_accuracy,
      query_accuracy,
      jax.device_get(prior_lib.arch_entropy(posterior)), seconds,
      config=config, temperature=temperature, seed=seed, steps=steps)


def saved_adaptation_settings(metadata: Mapping[str, Any]) -> dict[str, Any]:
  """How a saved prior was meta-trained to adapt, as keywords of :func:`adapt`.

  ``metadata`` is ``base.load_prior(path, return_metadata=True)[1]``. Returns
  ``config`` (its ``AdaptConfig``: rates, steps, sampling), ``steps`` and
  ``temperature`` (the Gumbel temperature meta-training reached), each only
  if recorded, so that ``base.adapt(prior, x, y, **settings)`` adapts as
  meta-training's inner loop did; :func:`adapt`'s own defaults
  (``AdaptConfig()``, temperature 0.5) are generic, not this prior's.
  Settings of a newer version that this one does not know are left out.
  """
  settings: dict[str, Any] = {}
  recorded = metadata.get("adapt")
  if isinstance(recorded, Mapping):
    known = {f.name for f in dataclasses.fields(AdaptConfig)}
    config = config_utils.dataclass_from_config(
        AdaptConfig, {k: v for k, v in recorded.items() if k in known},
        "adapt")
    settings.update(config=config, steps=config.steps)
  if "temperature" in metadata:
    settings["temperature"] = float(metadata["temperature"])
  return settings


def adapt(prior: SupernetDist, support_x: Any, support_y: Any,
          query_x: Any = None, query_y: Any = None, *,
          config: AdaptConfig | None = None, temperature: float = 0.5,
          steps: int | None = None, seed: int = 0,
          derive: bool = True) -> Adaptation:
  """Adapts ``prior`` to one task; returns posterior, genotype and metrics.

  Args:
    prior: a meta-learned (or any) :class:`SupernetDist`.
    support_x: ``[n, H, W, C]`` images, float in [0, 1]; support_y: ``[n]``
      labels in ``0..num_classes-1``. For a task with k classes, fewer than
      the prior's, pass ``base.for_ways(prior, config, k)`` instead (the
      classifier cut to k units, its rate scaled to k ways).
    query_x, query_y: optional held-out images of the same classes, to
      predict (``query_predictions``) and, with labels, to score.
    config: the inner optimisation (default ``AdaptConfig()``).
    temperature: Gumbel-softmax temperature (use the prior's final one).
    steps: ELBO steps (default ``config.steps``).
    seed: seeds the posterior's samples.
    derive: derive the genotype (skip it in tight evaluation loops).
  """
  cfg = config or AdaptConfig()
  steps = cfg.steps if steps is None else steps
  support_x, support_y = check_task(prior.spec, support_x, support_y,
                                     "support")
  if query_y is not None and query_x is None:
    raise ConfigError("query_y was given without query_x")
  adapt_key, _ = _task_keys(seed)
  start = time.perf_counter()
  posterior = adapt_compiled(prior, adapt_key, support_x, support_y,
                             jnp.float32(temperature), cfg=cfg, steps=steps)
  jax.block_until_ready(posterior)
  seconds = time.perf_counter() - start
  temperature = float(temperature)
  support_accuracy = float(accuracy(
      _task_predictive(posterior, support_x, cfg, temperature, seed),
      support_y))
  query_accuracy = query_predictions = None
  if query_x is not None:
    query_x, query_y = check_task(prior.spec, query_x, query_y, "query")
    query_predictions = np.argmax(
        _task_predictive(posterior, query_x, cfg, temperature, seed), -1)
    if query_y is not None:
      query_accuracy = float(np.mean(query_predictions == np.asarray(query_y)))
  return Adaptation(posterior, _genotype_of(posterior, cfg) if derive else None,
                    support_accuracy, query_accuracy,
                    jax.device_get(prior_lib.arch_entropy(posterior)),
                    seconds, query_predictions, config=cfg,
                    temperature=temperature, seed=seed, steps=steps)


def check_task(spec: SupernetSpec, x: Any, y: Any, name: str):
  """Validated float32 images and int32 labels (``y`` may be None) of a task
  for a supernet of ``spec``; ConfigError naming the problem otherwise."""
  x = np.asarray(x)
  if x.ndim != 4 or x.shape[-1] != spec.in_channels:
    raise ConfigError(f"{name} images must be [n, H, W, {spec.in_channels}] "
                      f"for this prior, got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ConfigError(f"{name} images must be floats in [0, 1], got dtype "
                      f"{x.dtype}")
  if y is None:
    return jnp.asarray(x, jnp.float32), None
  y = np.asarray(y)
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ConfigError(f"{name} labels must be {x.shape[0]} integers, got "
                      f"shape {y.shape} dtype {y.dtype}")
  if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
    raise ConfigError(f"{name} labels must lie in 0..{spec.num_classes - 1}, "
                      f"got {y.min()}..{y.max()}")
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
