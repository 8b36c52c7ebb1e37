"""Shared fixtures: tiny supernets and configs that compile in seconds on CPU."""

from __future__ import annotations

import os
import pathlib

import ml_collections
import numpy as np
import pytest

from base.supernet import SupernetSpec

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

#: Four ops, two cells (normal + reduction), one node: the smallest supernet
#: that still has every structural part (both cell types, factorized reduce,
#: mixed edges, the `none` op).
TINY_PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def tiny_spec(num_classes: int = 3, in_channels: int = 1,
              **overrides) -> SupernetSpec:
  fields = dict(num_classes=num_classes, in_channels=in_channels, channels=4,
                num_cells=2, num_nodes=1, stem_multiplier=1,
                primitives=TINY_PRIMITIVES, reduction_cells=(1,))
  fields.update(overrides)
  return SupernetSpec(**fields)


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
  """The quickstart config shrunk to a supernet that compiles in seconds."""
  from configs import quickstart
  config = quickstart.get_config()
  config.data.num_ways = 3
  config.data.num_queries = 3
  config.data.num_test_classes = 3
  config.supernet.channels = 4
  config.supernet.num_nodes = 1
  config.supernet.stem_multiplier = 1
  config.supernet.primitives = TINY_PRIMITIVES
  config.adapt.steps = 2
  config.adapt.eval_samples = 2
  config.train.num_steps = 4
  config.train.meta_batch_size = 2
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.evaluate.episodes = 4
  config.train.update(train_overrides)
  return config


class PoisonedFamily:
  """A task family whose episodes turn to NaN after some healthy ones.

  Wraps ``family`` (every other attribute is the family's own). Healthy are
  the first ``healthy_batches`` calls of ``sample_batch`` or the first
  ``healthy_tasks`` calls of ``sample`` (per-task sampling); later episodes
  have NaN support images, so the meta-loss of the step that sees them is
  not finite.
  """

  def __init__(self, family, *, healthy_batches: int | None = None,
               healthy_tasks: int | None = None):
    self.family = family
    self.healthy_batches, self.healthy_tasks = healthy_batches, healthy_tasks
    self.batches = self.tasks = 0

  def __getattr__(self, name):
    return getattr(self.family, name)

  @staticmethod
  def _poison(episode):
    return episode._replace(support_x=np.full_like(episode.support_x, np.nan))

  def sample(self, rng):
    episode = self.family.sample(rng)
    self.tasks += 1
    if self.healthy_tasks is not None and self.tasks > self.healthy_tasks:
      episode = self._poison(episode)
    return episode

  def sample_batch(self, rng, batch_size):
    episodes = self.family.sample_batch(rng, batch_size)
    self.batches += 1
    if self.healthy_batches is not None and self.batches > self.healthy_batches:
      episodes = self._poison(episodes)
    return episodes


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """An on-disk XLA cache per xdist worker, kept across sessions.

  Not one shared by the workers: with a shared one, a worker crashed
  (segfault in JAX's cache read) in two full runs, before the mapping cap
  below was found (it may have been the same abort; a shared cache was
  not tried again). Separate caches take cross-worker reads out of play.
  """
  from base import cli
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  os.environ.setdefault(cli.CACHE_ENV,
                        str(REPO_ROOT / ".pytest_cache" / "xla" / worker))
  cli.enable_compilation_cache()
  yield


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Unmaps compiled programs when a worker nears ``vm.max_map_count``.

  A worker compiles thousands of programs in one run of the suite and JAX
  keeps them all; at the kernel's limit on memory mappings (65530 by
  default) LLVM fails to map the next one and the worker aborts (seen in
  ``test_omniglot_config_runs_end_to_end``, near the end of a run: the
  core dump held 65532 mappings). See ``base.compiled_programs``.
  """
  yield
  from base import compiled_programs
  compiled_programs.release_if_near_limit()
