"""Transfer: adapt a prior to a new data set, derive, train from scratch.

The BASE recipe for a data set outside the meta-training distribution
(CIFAR-10 here): adapt the prior to a few N-way tasks drawn from the new data
set's training images, average the posterior architecture logits over those
tasks, derive one genotype, then train that genotype's standalone network
from scratch with a standard recipe and report its test accuracy, size and
the wall time of each phase. The NAS baseline that says whether the derived
architecture is worth anything, random genotypes of the same search space
trained with the same recipe, can run beside it (``random_genotypes``).
Every trained network is saved (``transfer_networks/``) for
:func:`base.load_network`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm
from flax import nnx

from base import config_utils, plots, reports
from base import prior as prior_lib
from base import task_adaptation
from base import trained_network
from base.adaptation import for_ways
from base.data import EpisodeSampler, load_image_folder
from base.errors import ConfigError
from base.genotype import build_genotype_network, genotype_of
from base.standalone import (StandaloneTrainConfig, evaluate_classifier,
                             train_classifier)
from base.supernet import count_params

# Everything one transfer run writes; a later run in the same workdir keeps
# the earlier set under time-stamped names (base.reports.keep_earlier).
NETWORKS_DIR = "transfer_networks"  # derived.msgpack, random_1.msgpack, ...
TRANSFER_FILES = ("transfer.json", "transfer.md", "transfer_cells.png",
                  NETWORKS_DIR)


@dataclasses.dataclass(frozen=True)
class TransferConfig:
  """Settings of :func:`transfer` (``config.transfer``).

  Attributes:
    prior_path: the prior to transfer ("" = the workdir's prior.msgpack).
    train_path, test_path: class-per-folder images (folder, zip, tar, or a
      folder inside one, e.g. ``cifar10-jpeg.tar.gz/train``).
    image_size: images are resized to this; grayscale: one channel (to use
      a prior meta-trained on grayscale images).
    max_train_per_class, max_test_per_class: cap the images loaded (0 = all).
    adapt_tasks: N-way tasks adapted to; their posterior logits are averaged.
    adapt_ways: N (0 = the prior's); adapt_shots: support images per class.
    adapt_steps: ELBO steps (0 = the config's adapt.steps).
    channels, num_cells: the standalone network's width and depth.
    epochs ... augment: the from-scratch training recipe (SGD, Nesterov
      momentum, cosine decay, weight decay, crop + flip augmentation).
    random_genotypes: also train this many random genotypes (each edge's
      logits drawn from a standard normal, then the same derivation rule)
      with the same recipe and seed: the random-search baseline.
  """
  prior_path: str = ""
  train_path: str = "../shared/data/cifar10/cifar10-jpeg.tar.gz/train"
  test_path: str = "../shared/data/cifar10/cifar10-jpeg.tar.gz/test"
  image_size: int = 32
  grayscale: bool = False
  max_train_per_class: int = 0
  max_test_per_class: int = 0
  adapt_tasks: int = 5
  adapt_ways: int = 0
  adapt_shots: int = 20
  adapt_steps: int = 0
  channels: int = 16
  num_cells: int = 5
  epochs: int = 10
  batch_size: int = 64
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 3e-4
  augment: bool = True
  seed: int = 0
  random_genotypes: int = 0

  def __post_init__(self):
    config_utils.check_int("transfer.random_genotypes",
                           self.random_genotypes, 0)


def transfer(config: Any, workdir: str, experiment: Any) -> dict[str, Any]:
  """Runs the transfer recipe; writes transfer.json/.md and a cell drawing."""
  from base import train  # the loops module imports this one's users
  cfg = config_utils.dataclass_from_config(TransferConfig,
                                           config.get("transfer"), "transfer")
  path = cfg.prior_path or os.path.join(workdir, train.PRIOR_FILENAME)
  prior, metadata = prior_lib.load_prior(path, return_metadata=True)
  channels = 1 if cfg.grayscale else 3
  if prior.spec.in_channels != channels:
    raise ConfigError(
        f"prior {path} takes {prior.spec.in_channels}-channel images but "
        f"transfer.grayscale={cfg.grayscale} gives {channels}")
  start = time.perf_counter()
  train_data = load_image_folder(cfg.train_path, cfg.image_size,
                                 grayscale=cfg.grayscale,
                                 max_per_class=cfg.max_train_per_class or None)
  test_data = load_image_folder(cfg.test_path, cfg.image_size,
                                grayscale=cfg.grayscale,
                                max_per_class=cfg.max_test_per_class or None)
  if test_data.class_names != train_data.class_names:
    raise ConfigError(f"train and test classes differ: "
                      f"{train_data.class_names} vs {test_data.class_names}")
  load_seconds = time.perf_counter() - start
  print(f"transfer: {len(train_data)} training and {len(test_data)} test "
        f"images of {train_data.num_classes} classes loaded in "
        f"{load_seconds:.0f} s")

  ways = cfg.adapt_ways or min(prior.spec.num_classes, train_data.num_classes)
  task_prior, task_cfg = for_ways(prior, experiment.adapt, ways)
  family = EpisodeSampler(train_data, ways, cfg.adapt_shots, 1,
                          name="transfer tasks")
  temperature = experiment.prior_temperature(metadata)
  steps = cfg.adapt_steps or experiment.adapt.steps
  rng = np.random.default_rng(cfg.seed)
  start = time.perf_counter()
  logits, accuracies = [], []
  for task in tqdm.trange(cfg.adapt_tasks, desc="adapt the prior",
                          dynamic_ncols=True):
    episode = family.sample(rng)
    result = task_adaptation.adapt(
        task_prior, episode.support_x, episode.support_y, episode.query_x,
        episode.query_y, config=task_cfg, temperature=temperature,
        steps=steps, seed=cfg.seed + task, derive=False)
    logits.append(jax.device_get(result.posterior.arch_logits))
    accuracies.append(result.query_accuracy)
  mean_logits = {k: np.mean([l[k] for l in logits], axis=0)
                 for k in logits[0]}
  genotype = genotype_of(prior.spec, mean_logits, task_cfg.genotype_rule)
  adapt_seconds = time.perf_counter() - start

  reports.keep_earlier(workdir, TRANSFER_FILES)
  networks_dir = os.path.join(workdir, NETWORKS_DIR)
  standalone = train_genotype(
      genotype, train_data, test_data, cfg, in_channels=channels,
      stem_multiplier=prior.spec.stem_multiplier,
      save_to=os.path.join(networks_dir, "derived.msgpack"))
  random_rng = np.random.default_rng([cfg.seed, 1])
  baselines = []
  for index in range(cfg.random_genotypes):
    random_logits = {k: random_rng.standard_normal(v.shape)
                     for k, v in mean_logits.items()}
    random_genotype = genotype_of(prior.spec, random_logits,
                                  task_cfg.genotype_rule)
    print(f"transfer: random genotype {index + 1} of "
          f"{cfg.random_genotypes} (the random-search baseline)")
    baselines.append(dict(
        genotype=random_genotype.to_dict(),
        **train_genotype(random_genotype, train_data, test_data, cfg,
                         in_channels=channels,
                         stem_multiplier=prior.spec.stem_multiplier,
                         save_to=os.path.join(
                             networks_dir, f"random_{index + 1}.msgpack"))))
  results = {
      "prior": os.path.abspath(path),
      "genotype": genotype.to_dict(),
      "adaptation": {"tasks": cfg.adapt_tasks, "ways": ways,
                     "shots": cfg.adapt_shots, "steps": steps,
                     "mean_query_accuracy": float(np.mean(accuracies)),
                     "seconds": adapt_seconds},
      "standalone": standalone,
      "random_genotypes": baselines,
      "load_seconds": load_seconds,
  }
  reports.write_report(workdir, "transfer", results, format_transfer(results))
  plots.save_genotype_figure(genotype,
                             os.path.join(workdir, "transfer_cells.png"))
  return results


def train_genotype(genotype: Any, train_data: Any, test_data: Any,
                   cfg: TransferConfig, *, in_channels: int,
                   stem_multiplier: int,
                   save_to: str | None = None) -> dict[str, Any]:
  """Trains ``genotype``'s standalone network from scratch; its test score.

  The recipe and the initialisation seed are ``cfg``'s, so genotypes trained
  with the same ``cfg`` differ in nothing but the architecture. With
  ``save_to`` the trained network is written there
  (:func:`base.load_network` reads it back to classify new images).
  """
  architecture = dict(num_classes=train_data.num_classes,
                      in_channels=in_channels, channels=cfg.channels,
                      num_cells=cfg.num_cells, stem_multiplier=stem_multiplier)
  network = build_genotype_network(genotype, **architecture,
                                   rngs=nnx.Rngs(cfg.seed))
  recipe = StandaloneTrainConfig(
      epochs=cfg.epochs, batch_size=cfg.batch_size,
      learning_rate=cfg.learning_rate, momentum=cfg.momentum,
      weight_decay=cfg.weight_decay, augment=cfg.augment, seed=cfg.seed,
      progress=True)
  start = time.perf_counter()
  history = train_classifier(network, train_data.images, train_data.labels,
                             recipe)
  train_seconds = time.perf_counter() - start
  results = {"parameters": count_params(network), "channels": cfg.channels,
             "num_cells": cfg.num_cells, "train_images": len(train_data),
             "test_images": len(test_data), "epochs": cfg.epochs,
             "train_seconds": train_seconds, "history": history,
             "test_accuracy": evaluate_classifier(network, test_data.images,
                                                  test_data.labels)}
  if save_to:
    trained_network.save_network(
        save_to, network, genotype, architecture=architecture,
        image_shape=train_data.images.shape[1:],
        class_names=train_data.class_names,
        metadata={"recipe": dataclasses.asdict(recipe),
                  "test_accuracy": results["test_accuracy"],
                  "test_images": len(test_data),
                  "train_images": len(train_data)})
    results["network_file"] = os.path.abspath(save_to)
  return results


def format_transfer(results: dict[str, Any]) -> str:
  """A Markdown summary of :func:`transfer`'s results."""
  a, s = results["adaptation"], results["standalone"]
  return "\n".join([
      "| phase | result | wall time |", "| --- | --- | --- |",
      f"| adapt the prior ({a['tasks']} tasks, {a['ways']}-way "
      f"{a['shots']}-shot, {a['steps']} steps) | query accuracy "
      f"{a['mean_query_accuracy']:.3f} | {a['seconds']:.1f} s |",
      f"| train the derived network ({s['parameters']} parameters, "
      f"{s['num_cells']} cells x {s['channels']} channels, {s['epochs']} "
      f"epochs on {s['train_images']} images) | test accuracy "
      f"{s['test_accuracy']:.3f} on {s['test_images']} images | "
      f"{s['train_seconds']:.1f} s |"] + [
      f"| baseline: train random genotype {i + 1} ({r['parameters']} "
      f"parameters, the same recipe) | test accuracy "
      f"{r['test_accuracy']:.3f} | {r['train_seconds']:.1f} s |"
      for i, r in enumerate(results.get("random_genotypes", []))])
