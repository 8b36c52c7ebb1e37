"""Shared fixtures: tiny supernets and configs that compile in seconds on CPU."""

from __future__ import annotations

import os
import pathlib

import ml_collections
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


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """One on-disk XLA cache for the session (shared by xdist workers)."""
  from base import cli
  os.environ.setdefault(cli.CACHE_ENV,
                        str(REPO_ROOT / ".pytest_cache" / "xla"))
  cli.enable_compilation_cache()
  yield
