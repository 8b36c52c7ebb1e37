"""Training a derived (standalone) network from scratch, the usual way.

After search, the derived genotype's network is trained on its own with a
standard recipe: SGD with Nesterov momentum, cosine learning-rate decay,
weight decay, and optional random-crop + horizontal-flip augmentation.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from base.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class StandaloneTrainConfig:
  """Settings of :func:`train_classifier`."""
  epochs: int = 10
  batch_size: int = 64
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 3e-4
  augment: bool = False  # random crop (pad 4) and horizontal flip
  seed: int = 0
  progress: bool = False  # a progress bar over epochs


def augment_batch(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Random crops of the zero-padded images and random horizontal flips."""
  n, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (h, w, image.shape[-1]))

  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1, :], cropped)


def _loss(model: nnx.Module, x: jax.Array, y: jax.Array):
  logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


@nnx.jit(static_argnames=("augment",))
def _train_step(model, optimizer, key, x, y, augment):
  if augment:
    x = augment_batch(key, x)
  (loss, acc), grads = nnx.value_and_grad(_loss, has_aux=True)(model, x, y)
  optimizer.update(model, grads)
  return loss, acc


@nnx.jit
def _predict_step(model, x):
  return jnp.argmax(model(x), -1)


def inference_view(model: nnx.Module) -> nnx.Module:
  """``model`` in evaluation mode, sharing its weights: normalisations that
  keep population statistics (``ops.Normalization(running_stats=True)``)
  normalise with them and stop updating them; others are unchanged."""
  return nnx.view(model, use_running_average=True, raise_if_not_found=False)


def train_classifier(model: nnx.Module, images: np.ndarray, labels: np.ndarray,
                     cfg: StandaloneTrainConfig = StandaloneTrainConfig()
                     ) -> list[dict[str, float]]:
  """Trains ``model`` in place; returns per-epoch loss, accuracy, seconds."""
  n = len(images)
  if n < cfg.batch_size:
    raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {n} "
                      f"training images")
  steps_per_epoch = n // cfg.batch_size
  schedule = optax.cosine_decay_schedule(cfg.learning_rate,
                                         cfg.epochs * steps_per_epoch)
  optimizer = nnx.Optimizer(
      model, optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                         optax.sgd(schedule, cfg.momentum, nesterov=True)),
      wrt=nnx.Param)
  rng = np.random.default_rng(cfg.seed)
  key = jax.random.key(cfg.seed)
  history = []
  for epoch in tqdm.trange(cfg.epochs, desc="train derived network",
                           disable=not cfg.progress, dynamic_ncols=True):
    start = time.perf_counter()
    order = rng.permutation(n)
    losses, accs = [], []
    for step in range(steps_per_epoch):
      index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
      key, step_key = jax.random.split(key)
      loss, acc = _train_step(model, optimizer, step_key,
                              jnp.asarray(images[index]),
                              jnp.asarray(labels[index]), cfg.augment)
      losses.append(loss)
      accs.append(acc)
    history.append({"epoch": epoch + 1,
                    "loss": float(np.mean(jax.device_get(losses))),
                    "accuracy": float(np.mean(jax.device_get(accs))),
                    "seconds": time.perf_counter() - start})
  return history


def predict_labels(model: nnx.Module, images: np.ndarray,
                   batch_size: int = 500, seed: int = 0) -> np.ndarray:
  """Predicted class indices ``[n]``, computed in batches of a random order.

  The model runs in evaluation mode (:func:`inference_view`): a standalone
  network built with population statistics (the default of
  :func:`base.genotype.build_genotype_network`) classifies every image on
  its own, whatever the batch. A model that normalises with the statistics
  of the batch it is given (``running_stats=False``, as the supernet, and
  networks saved before population statistics existed) depends on the
  batch: visiting a class-sorted set (as image folders load) in order would
  give batches of one class, whose statistics erase what tells the classes
  apart (CIFAR-10 scored at chance that way), so images go in a ``seed``-ed
  random order (the same for every model of a comparison), in batches of
  near-equal size.
  """
  n = len(images)
  if n == 0:
    return np.zeros((0,), np.int32)
  model = inference_view(model)
  order = np.random.default_rng(seed).permutation(n)
  labels = np.empty((n,), np.int32)
  for index in np.array_split(order, -(-n // batch_size)):
    labels[index] = jax.device_get(
        _predict_step(model, jnp.asarray(images[index])))
  return labels


def evaluate_classifier(model: nnx.Module, images: np.ndarray,
                        labels: np.ndarray, batch_size: int = 500,
                        seed: int = 0) -> float:
  """Accuracy over ``images`` (:func:`predict_labels`'s batches)."""
  predicted = predict_labels(model, images, batch_size=batch_size, seed=seed)
  return float(np.mean(predicted == np.asarray(labels)))
