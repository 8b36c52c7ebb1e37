"""Warm-started DARTS: Task2Vec embeddings, the task library, the search."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from base import config_utils, train
from base import task_embedding as te
from base.data import EpisodeSampler
from base.errors import CheckpointError, ConfigError
from base.genotype import Genotype
from base.methods import get_method, warm_start as ws
from base.methods.api import Learner, score_learner
from base.supernet import init_arch_logits, init_supernet_weights
from tests.conftest import tiny_config

# A small library searched briefly: 20 DARTS steps on a library task's 12
# labelled images, then 2 warm steps on a test task's 3 support images.
# Measured on held-out digits (24 episodes, 4 library seeds): warm 0.51-0.59
# query accuracy against 0.32-0.38 from scratch with the same 2 steps.
E2E = dict(library_size=6, search_steps=20, warm_steps=2, lr_weights=0.05)


@pytest.fixture(scope="module")
def exp():
  return train.build_experiment(tiny_config())


# ----------------------------------------------------------------------------
# The library's nearest-task lookup.


def _entry_weights(value):
  return {"w": np.full((2,), value, np.float32)}


def _arch(value):
  return {"normal": np.full((1, 2), value, np.float32),
          "reduce": np.zeros((1, 2), np.float32)}


@pytest.mark.parametrize("distance", te.DISTANCES)
def test_nearest_returns_the_closest_entries(distance):
  library = ws.TaskLibrary(distance)
  embeddings = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]
  for i, e in enumerate(embeddings):
    library.add(np.asarray(e, np.float32) / np.linalg.norm(e),
                _entry_weights(i), _arch(i), {"task": i})
  assert len(library) == 4
  assert library.nearest([0.9, 0.05, 0.05])[0].metadata["task"] == 0
  assert library.nearest([0.05, 0.05, 0.9])[0].metadata["task"] == 2
  assert [e.metadata["task"] for e in library.nearest([0.6, 0.5, 0.0], k=3)
          ] == [3, 0, 1]
  # Distances: 0 to itself, the maximum (1) to an orthogonal embedding.
  distances = library.distances([0.0, 1.0, 0.0])
  np.testing.assert_allclose(distances[[1, 2]], [0.0, 1.0], atol=1e-6)
  assert np.argmin(distances) == 1
  # k beyond the library returns all of it, nearest first.
  assert len(library.nearest([0, 1, 0], k=10)) == 4


def test_nearest_ties_go_to_the_first_entry_and_bad_input_is_named():
  library = ws.TaskLibrary("cosine")
  with pytest.raises(ConfigError, match="empty"):
    library.nearest([1.0, 0.0])
  library.add([1.0, 0.0], _entry_weights(0), _arch(0), {"task": 0})
  library.add([2.0, 0.0], _entry_weights(1), _arch(1), {"task": 1})
  assert library.nearest([1.0, 0.0])[0].metadata["task"] == 0
  with pytest.raises(ConfigError, match="does not match"):
    library.add([1.0, 0.0, 0.0], _entry_weights(2), _arch(2))
  with pytest.raises(ConfigError, match="cannot be compared"):
    library.distances([1.0, 0.0, 0.0])
  with pytest.raises(ConfigError, match="k must be"):
    library.nearest([1.0, 0.0], k=0)


def test_normalized_cosine_is_task2vecs():
  a, b = np.array([1.0, 3.0, 0.0]), np.array([1.0, 1.0, 2.0])
  na, nb = a / (a + b), b / (a + b)
  expected = 1 - na @ nb / (np.linalg.norm(na) * np.linalg.norm(nb))
  assert te.task_distance(a, b, "normalized_cosine") == pytest.approx(expected)
  assert te.task_distance(a, a, "normalized_cosine") == pytest.approx(0.0)


# ----------------------------------------------------------------------------
# The diagonal Fisher and the Task2Vec embedding.


def _tiny_net(params, x):
  """A 2-layer net whose hidden layer is batch-normalised (batch-coupled)."""
  h = x @ params["w1"]
  h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
  return jnp.tanh(h) @ params["w2"] + params["b2"]


@pytest.mark.parametrize("mode", te.FISHER_MODES)
def test_diagonal_fisher_equals_a_per_example_loop(mode):
  keys = jax.random.split(jax.random.key(0), 5)
  params = {"w1": jax.random.normal(keys[0], (4, 5)),
            "w2": jax.random.normal(keys[1], (5, 3)),
            "b2": jax.random.normal(keys[2], (3,))}
  x = jax.random.normal(keys[3], (7, 4))
  y = jnp.array([0, 1, 2, 0, 1, 2, 1])
  key, samples = keys[4], 3
  # chunk=4 leaves a padded last chunk for every mode.
  fisher = jax.jit(lambda p: te.diagonal_fisher(
      _tiny_net, p, x, y, mode=mode, key=key, samples=samples, chunk=4))(
          params)

  logp = jax.nn.log_softmax(_tiny_net(params, x))
  probs = np.exp(np.asarray(logp))
  drawn = np.asarray(jax.random.categorical(key, logp, shape=(samples, 7)))
  per_example = jax.jit(jax.grad(
      lambda p, i, c: jax.nn.log_softmax(_tiny_net(p, x))[i, c]))
  naive = jax.tree.map(np.zeros_like, params)
  for i in range(7):
    for c in range(3):
      if mode == "expected":
        weight = probs[i, c] / 7
      elif mode == "sampled":
        weight = np.sum(drawn[:, i] == c) / (7 * samples)
      else:
        weight = float(c == y[i]) / 7
      if weight == 0:
        continue
      grad = per_example(params, i, c)
      naive = jax.tree.map(lambda n, g, w=weight: n + w * np.square(g),
                           naive, grad)
  for name in params:
    np.testing.assert_allclose(fisher[name], naive[name], rtol=1e-4,
                               atol=1e-7)


def test_embedding_separates_digits_from_noise_and_is_deterministic(exp):
  """Tasks over the same digits are nearer each other than noise tasks.

  10-shot tasks: a 1-shot support set is too few images for the Fisher of
  an untrained probe to be stable (measured: 3-way 1-shot digits tasks are
  nearer each other than to noise in ~70% of comparisons, 10-shot in 98%).
  """
  cfg = te.EmbeddingConfig()
  spec = exp.spec
  probe = te.init_probe(spec, cfg)
  family = EpisodeSampler(exp.test_family.data, 3, 10, 1)
  rng = np.random.default_rng(0)
  tasks = [family.sample(rng) for _ in range(4)]
  labels = tasks[0].support_y
  noise = [rng.uniform(size=tasks[0].support_x.shape).astype(np.float32)
           for _ in range(4)]
  digits = np.stack([te.embed_task(spec, probe, t.support_x, t.support_y,
                                   cfg) for t in tasks])
  noises = np.stack([te.embed_task(spec, probe, x, labels, cfg)
                     for x in noise])
  assert digits.shape == (4, sum(
      v.size for v in jax.tree.leaves(te.feature_extractor(probe))))
  np.testing.assert_allclose(np.linalg.norm(digits, axis=1), 1.0, rtol=1e-5)
  assert np.all(digits >= 0)
  within = np.array([te.task_distances(d, digits, cfg.distance)
                     for d in digits])
  across = np.array([te.task_distances(d, noises, cfg.distance)
                     for d in digits])
  off_diagonal = within[~np.eye(4, dtype=bool)]
  assert off_diagonal.mean() < across.mean() - 0.02, (within, across)
  # Each digits task's nearest other task is a digits task.
  for i in range(4):
    assert np.delete(within[i], i).min() < across[i].min()
  # Deterministic, and blind to the (arbitrary) label order: relabelling
  # permutes the fitted head's columns, and the expected Fisher sums over
  # the classes.
  again = te.embed_task(spec, probe, tasks[0].support_x, tasks[0].support_y,
                        cfg)
  np.testing.assert_array_equal(again, digits[0])
  relabelled = te.embed_task(spec, probe, tasks[0].support_x,
                             (tasks[0].support_y + 1) % 3, cfg)
  np.testing.assert_allclose(relabelled, digits[0], rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------
# Saving and loading the library.


def _library(exp, size=2):
  spec = exp.spec
  library = ws.TaskLibrary("cosine", extras={
      "init": init_supernet_weights(spec, jax.random.key(0)),
      "probe": init_supernet_weights(spec, jax.random.key(1))},
      metadata={"config": dataclasses.asdict(ws.WarmStartConfig())})
  for i in range(size):
    arch = {k: v + i for k, v in init_arch_logits(spec).items()}
    library.add(np.arange(3, dtype=np.float32) + i,
                init_supernet_weights(spec, jax.random.key(10 + i)), arch,
                {"task": i, "final_loss": 0.5 * i})
  return library


def test_library_round_trip_and_corrupt_file(exp, tmp_path):
  library = _library(exp)
  path = tmp_path / "library.msgpack"
  library.save(path)
  loaded = ws.load_library(exp, path)
  assert loaded.distance == "cosine" and len(loaded) == 2
  assert loaded.metadata == library.metadata
  for a, b in zip(library.entries, loaded.entries):
    assert a.metadata == b.metadata
    np.testing.assert_array_equal(a.embedding, b.embedding)
    for tree_a, tree_b in ((a.weights, b.weights),
                           (a.arch_logits, b.arch_logits)):
      assert jax.tree.structure(tree_a) == jax.tree.structure(tree_b)
      for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
        np.testing.assert_array_equal(x, y)
  for name in ("init", "probe"):
    for x, y in zip(jax.tree.leaves(library.extras[name]),
                    jax.tree.leaves(loaded.extras[name])):
      np.testing.assert_array_equal(x, y)
  assert loaded.nearest([1.0, 2.0, 3.0])[0].metadata["task"] == 1

  # A flipped byte: the checksum (or the decoder) names the file.
  blob = bytearray(path.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  corrupt = tmp_path / "corrupt.msgpack"
  corrupt.write_bytes(bytes(blob))
  with pytest.raises(CheckpointError, match="corrupt"):
    ws.TaskLibrary.load(corrupt)
  truncated = tmp_path / "truncated.msgpack"
  truncated.write_bytes(path.read_bytes()[:100])
  with pytest.raises(CheckpointError, match="truncated.msgpack"):
    ws.TaskLibrary.load(truncated)
  with pytest.raises(CheckpointError, match="not found"):
    ws.TaskLibrary.load(tmp_path / "missing.msgpack")
  with pytest.raises(CheckpointError, match="not found"):
    ws.load_learner(exp, ws.WarmStartConfig(), str(tmp_path / "nowhere"))
  # A library for another supernet does not load as this one's.
  other = train.build_experiment(tiny_config())._replace(
      spec=dataclasses.replace(exp.spec, channels=8))
  with pytest.raises(CheckpointError, match="do not fit"):
    ws.load_library(other, path)
  with pytest.raises(ConfigError, match="empty"):
    ws.TaskLibrary().save(tmp_path / "empty.msgpack")


def test_learner_refuses_a_library_embedded_differently(exp, tmp_path):
  _library(exp).save(tmp_path / ws.LIBRARY_FILENAME)
  learner = ws.load_learner(exp, ws.WarmStartConfig(distance="cosine"),
                            str(tmp_path))
  assert isinstance(learner, Learner)
  with pytest.raises(ConfigError, match="warm_start.probe_seed"):
    ws.load_learner(exp, ws.WarmStartConfig(probe_seed=3), str(tmp_path))
  assert learner.restrict_ways(2).spec.num_classes == 2
  with pytest.raises(ConfigError, match="cannot serve 4-way"):
    learner.restrict_ways(4)


# ----------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize("field, value, message", [
    ("library_size", 0, "warm_start.library_size must be an integer >= 1"),
    ("search_steps", 2.5, "warm_start.search_steps must be an integer"),
    ("warm_steps", 0, "warm_start.warm_steps must be an integer >= 1"),
    ("warm_steps", 50, "warm_start.warm_steps must be < search_steps"),
    ("lr_weights", 0.0, "warm_start.lr_weights must be a positive number"),
    ("lr_arch", float("nan"), "warm_start.lr_arch must be a positive"),
    ("momentum", 1.0, r"warm_start.momentum must be in \[0, 1\)"),
    ("library_data", "query", "warm_start.library_data must be one of"),
    ("warm_head", "random", "warm_start.warm_head must be one of"),
    ("probe", "imagenet", "warm_start.probe must be one of"),
    ("probe_head_steps", 0, "warm_start.probe_head_steps must be an integer"),
    ("fisher", "true", "warm_start.fisher must be one of"),
    ("embedding_reduce", "sum", "warm_start.embedding_reduce must be one"),
    ("distance", "l2", "warm_start.distance must be one of"),
    ("compare_episodes", -1, "warm_start.compare_episodes must be"),
])
def test_config_validation(field, value, message):
  with pytest.raises(ConfigError, match=message):
    ws.WarmStartConfig(**{field: value})


def test_config_section_and_registry():
  cfg = config_utils.dataclass_from_config(
      ws.WarmStartConfig, {"library_size": 3, "warm_steps": 4},
      "warm_start")
  assert cfg.library_size == 3 and cfg.embedding.head_steps == 50
  with pytest.raises(ConfigError, match="warm_start.nope"):
    config_utils.dataclass_from_config(ws.WarmStartConfig, {"nope": 1},
                                       "warm_start")
  method = get_method("warm_start")
  assert method.config_class is ws.WarmStartConfig
  assert method.meta_train is ws.meta_train
  with pytest.raises(ConfigError, match="embedding.fisher"):
    te.EmbeddingConfig(fisher="x")


# ----------------------------------------------------------------------------
# The DARTS step and the end-to-end warm start.


def test_darts_update_is_sgd_momentum_then_adam_at_the_new_weights():
  """The defining update against optax, on a loss coupling both parts."""
  keys = jax.random.split(jax.random.key(0), 4)
  weights = {"w": jax.random.normal(keys[0], (3, 2)),
             "b": jax.random.normal(keys[1], (2,))}
  arch = {"normal": jax.random.normal(keys[2], (2, 3)),
          "reduce": jax.random.normal(keys[3], (2, 3))}

  def loss_fn(w, a):
    mix = jax.nn.softmax(a["normal"], -1) @ w["w"] + w["b"]
    loss = jnp.sum(jnp.sin(mix) ** 2) + jnp.sum(
        jax.nn.softmax(a["reduce"], -1) * jnp.cos(w["w"].T))
    return loss, jnp.float32(0.0)

  search = ws.SearchConfig(lr_weights=0.05, momentum=0.9, lr_arch=0.03)
  step = jax.jit(lambda state: ws.darts_update(
      state, loss_fn, ws.hyperparameters(search)))
  state = ws.init_search_state(weights, arch)
  sgd = optax.sgd(0.05, momentum=0.9)
  adam = optax.adam(0.03, b1=0.5, b2=0.999, eps=1e-8)
  w, a = weights, arch
  sgd_state, adam_state = sgd.init(w), adam.init(a)
  for _ in range(3):  # later steps use the momentum and Adam's moments
    state, loss, _ = step(state)
    want_loss = loss_fn(w, a)[0]
    updates, sgd_state = sgd.update(jax.grad(lambda w: loss_fn(w, a)[0])(w),
                                    sgd_state)
    w = optax.apply_updates(w, updates)
    updates, adam_state = adam.update(
        jax.grad(lambda a: loss_fn(w, a)[0])(a), adam_state)
    a = optax.apply_updates(a, updates)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
  for got, want in ((state["weights"], w), (state["arch_logits"], a)):
    for g, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-6)


def test_warm_start_beats_scratch_with_the_same_steps(exp, tmp_path):
  """Meta-train a 6-task library; warm start vs scratch on 24 episodes."""
  cfg = ws.WarmStartConfig(**E2E, compare_episodes=24)
  summary = ws.meta_train(exp, cfg, str(tmp_path), seed=0, progress=False)
  assert summary["library_size"] == 6 and summary["seconds"] > 0
  assert os.path.isfile(tmp_path / ws.LIBRARY_FILENAME)
  comparison = summary["comparison"]
  warm = comparison["warm"]["query_accuracy"]
  scratch = comparison["scratch_warm_steps"]["query_accuracy"]
  full = comparison["scratch_search_steps"]["query_accuracy"]
  print(f"\nwarm {warm:.3f} ± {comparison['warm']['ci95']:.3f} "
        f"({cfg.warm_steps} steps), scratch {scratch:.3f} ± "
        f"{comparison['scratch_warm_steps']['ci95']:.3f} ({cfg.warm_steps} "
        f"steps), scratch {full:.3f} ({cfg.search_steps} steps)")
  assert comparison["warm"]["episodes"] == 24
  assert comparison["steps_saved"] == cfg.search_steps - cfg.warm_steps
  # Measured 0.56 against 0.34 (0.61 after 20 steps); chance is 1/3.
  assert warm > scratch + 0.08
  assert comparison["warm_minus_scratch"] == pytest.approx(warm - scratch)

  # The saved library gives the same learner: same accuracy on the same
  # episodes, a genotype per task, the neighbour's start.
  learner = ws.load_learner(exp, cfg, str(tmp_path))
  row = score_learner(learner, exp.test_family, episodes=24,
                      seed=exp.evaluate.seed)
  assert row["query_accuracy"] == pytest.approx(warm)
  episode = exp.test_family.sample(np.random.default_rng(5))
  result = learner.adapt_and_predict(episode.support_x, episode.support_y,
                                     episode.query_x, seed=0)
  assert isinstance(result.genotype, Genotype)
  assert result.query_predictions.shape == episode.query_y.shape
  adaptation = learner.adapt(episode.support_x, episode.support_y)
  distances = learner.library.distances(te.embed_task(
      exp.spec, learner.library.extras["probe"], episode.support_x,
      episode.support_y, cfg.embedding))
  assert adaptation.neighbour == int(np.argmin(distances))
  assert adaptation.steps == cfg.warm_steps
  with pytest.raises(ConfigError, match="support labels"):
    learner.adapt_and_predict(episode.support_x, episode.support_y + 3,
                              episode.query_x, seed=0)

  # A probe pre-trained on the library tasks: the mean of their weights.
  mean_cfg = dataclasses.replace(cfg, probe="library_mean", library_size=2,
                                 compare_episodes=0)
  library = ws.build_library(exp, mean_cfg, seed=0)
  for probe, *entries in zip(
      jax.tree.leaves(library.extras["probe"]),
      *[jax.tree.leaves(e.weights) for e in library.entries]):
    np.testing.assert_allclose(probe, np.mean(entries, 0), rtol=1e-6)
