"""The MAML baseline: Conv-4, inner SGD, meta-training, scoring, files."""

from __future__ import annotations

import dataclasses
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization

from base import prior as prior_lib
from base import serialization as base_serialization
from base import train
from base.adaptation import AdaptConfig
from base.data import EpisodeSampler, load_digits
from base.errors import CheckpointError, ConfigError
from base.methods import maml
from conftest import PoisonedFamily

HIDDEN = 8
# 5-shot, 2 inner steps: a clear gap between meta-learned and random init
# after 80 meta-steps (0.6 -> 0.8 query accuracy on held-out digits).
CFG = maml.MAMLConfig(hidden=HIDDEN, inner_steps=2, inner_lr=0.4,
                      meta_lr=1e-2, meta_batch_size=4, num_steps=80)


@pytest.fixture(scope="module")
def digits():
  return load_digits()


@pytest.fixture(scope="module")
def train_family(digits):
  return EpisodeSampler(digits.subset(range(7)), num_ways=3, num_shots=5,
                        num_queries=5, name="meta-train")


@pytest.fixture(scope="module")
def test_family(digits):
  """Digits 7, 8, 9: never seen in meta-training."""
  return EpisodeSampler(digits.subset([7, 8, 9]), num_ways=3, num_shots=5,
                        num_queries=5, name="meta-test")


@pytest.fixture(scope="module")
def meta_trained(train_family):
  return maml.maml_meta_train(train_family, CFG, seed=0, log_every=16)


def _init(seed=0, num_ways=3, in_channels=1, image_size=8, hidden=HIDDEN):
  return maml.init_conv4(jax.random.key(seed), num_ways, in_channels,
                         image_size, hidden)


@pytest.mark.parametrize("field, value", [
    ("hidden", 0), ("inner_steps", -1), ("inner_lr", 0.0),
    ("inner_lr", float("nan")), ("meta_lr", -1e-3), ("meta_batch_size", 0),
    ("num_steps", 0), ("eval_inner_steps", -2), ("hidden", 2.5),
    ("first_order", "yes")])
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ConfigError, match=f"maml.{field}") as error:
    maml.MAMLConfig(**{field: value})
  assert "\n" not in str(error.value)


def test_config_eval_steps_default_to_inner_steps():
  assert maml.MAMLConfig(inner_steps=3).eval_steps == 3
  assert maml.MAMLConfig(inner_steps=3, eval_inner_steps=7).eval_steps == 7


@pytest.mark.parametrize("ways, channels, size, hidden, final", [
    (3, 1, 8, 8, 1),     # 8 -> 4 -> 2 -> 1, the fourth pool skipped
    (5, 3, 28, 4, 1),    # Omniglot: 28 -> 14 -> 7 -> 3 -> 1
    (2, 1, 32, 4, 2)])   # 32 -> 16 -> 8 -> 4 -> 2
def test_conv4_shape_and_parameter_count(ways, channels, size, hidden, final):
  # Shapes only (jax.eval_shape): nothing is compiled.
  weights = jax.eval_shape(lambda: maml.init_conv4(
      jax.random.key(0), ways, channels, size, hidden))
  x = jax.ShapeDtypeStruct((6, size, size, channels), jnp.float32)
  assert jax.eval_shape(maml.apply_conv4, weights, x).shape == (6, ways)
  assert maml.pooled_sizes(size)[1] == final
  expected = (9 * channels * hidden + 3 * 9 * hidden * hidden
              + hidden * final ** 2 * ways + ways)
  assert maml.count_parameters(weights) == expected
  assert maml.conv4_architecture(weights) == {
      "num_ways": ways, "in_channels": channels, "hidden": hidden,
      "final_spatial": final}


def test_apply_conv4_is_the_module():
  """The pure function over the weight dict computes the NNX module."""
  x = jnp.asarray(np.random.default_rng(0).random((6, 8, 8, 1)), jnp.float32)
  model = maml.Conv4(3, 1, 8, HIDDEN, nnx.Rngs(params=jax.random.key(0)))
  logits = nnx.jit(lambda m, x: m(x))(model, x)
  assert logits.shape == (6, 3)
  np.testing.assert_allclose(jax.jit(maml.apply_conv4)(_init(), x), logits,
                             rtol=1e-5, atol=1e-6)


def test_apply_conv4_rejects_images_of_another_size():
  with pytest.raises(ConfigError, match="end at 1x1 features; 32x32"):
    maml.apply_conv4(_init(), jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ConfigError, match="not Conv-4 weights"):
    maml.apply_conv4({"convs": {}}, jnp.zeros((2, 8, 8, 1)))


def test_adaptation_lowers_the_support_loss(train_family):
  episode = train_family.sample(np.random.default_rng(3))
  weights = _init()
  adapt = jax.jit(maml.maml_adapt, static_argnames=("cfg", "steps"))
  loss = jax.jit(maml.cross_entropy)
  before = loss(weights, episode.support_x, episode.support_y)
  adapted = adapt(weights, episode.support_x, episode.support_y, cfg=CFG,
                  steps=5)
  after = loss(adapted, episode.support_x, episode.support_y)
  assert float(after) < 0.5 * float(before), (before, after)
  unchanged = adapt(weights, episode.support_x, episode.support_y, cfg=CFG,
                    steps=0)
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(unchanged), jax.tree.leaves(weights)))


def test_first_order_gradient_is_the_gradient_at_the_adapted_weights(
    train_family):
  """FOMAML: d(query loss)/d(init) = query gradient at the adapted weights."""
  episode = train_family.sample(np.random.default_rng(4))
  weights = _init()
  grads = {}
  for first_order in (True, False):
    cfg = maml.MAMLConfig(hidden=HIDDEN, inner_steps=1, inner_lr=0.4,
                          first_order=first_order)
    grads[first_order] = jax.jit(jax.grad(
        lambda w, cfg=cfg: maml.task_query_loss(w, episode, cfg)))(weights)
  cfg = maml.MAMLConfig(hidden=HIDDEN, inner_steps=1, inner_lr=0.4)

  @jax.jit
  def at_adapted(w):
    adapted = maml.maml_adapt(w, episode.support_x, episode.support_y, cfg)
    return jax.grad(maml.cross_entropy)(adapted, episode.query_x,
                                        episode.query_y)

  at_adapted = at_adapted(weights)
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(at_adapted)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  first, second = jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])
  assert all(np.all(np.isfinite(g)) for g in second)
  difference = max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(first, second))
  assert difference > 1e-6, "second order adds the curvature term"


def test_loop_and_vmap_meta_steps_agree(train_family):
  episodes = train_family.sample_batch(np.random.default_rng(5), 4)
  results = {}
  for mode in ("loop", "vmap"):
    weights = _init()
    opt_state = optax.adam(CFG.meta_lr).init(weights)
    results[mode] = maml.maml_meta_step(weights, opt_state, episodes, CFG,
                                        mode)
  np.testing.assert_allclose(results["loop"][2], results["vmap"][2],
                             rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results["loop"][0]),
                  jax.tree.leaves(results["vmap"][0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ConfigError, match="task_batching"):
    maml.maml_meta_step(_init(), opt_state, episodes, CFG, "threads")


def test_meta_training_beats_the_initialisation_on_held_out_digits(
    meta_trained, test_family):
  weights, history = meta_trained
  assert len(history) == CFG.num_steps
  assert all(isinstance(v, float) and np.isfinite(v) for v in history)
  assert np.mean(history[-10:]) < np.mean(history[:10]) - 0.2, history
  # The very start maml_meta_train starts from, scored on the same episodes.
  initial = maml.score_maml(_init(seed=0), test_family, CFG, episodes=40,
                            seed=7)
  learned = maml.score_maml(weights, test_family, CFG, episodes=40, seed=7)
  assert learned["query_accuracy"] > initial["query_accuracy"] + 0.05, (
      initial, learned)
  assert learned["query_accuracy"] > 0.6  # chance is 1/3
  assert learned["adapt_steps"] == CFG.eval_steps == 2
  assert learned["episodes"] == 40
  assert learned["parameters"] == maml.count_parameters(weights) == 1827
  assert 0 < learned["seconds_per_task"] < 1.0
  assert 0 < learned["ci95"] < 0.2
  assert 0 <= learned["support_accuracy"] <= 1


class RecordingFamily:
  """A task family that records the support images of what it samples."""

  def __init__(self, family):
    self._family = family
    self.num_ways, self.num_shots = family.num_ways, family.num_shots
    self.num_queries, self.image_shape = family.num_queries, family.image_shape
    self.sampled = []

  def sample(self, rng):
    episode = self._family.sample(rng)
    self.sampled.append(episode.support_x)
    return episode

  def sample_batch(self, rng, batch_size):
    raise AssertionError("scoring samples episodes one by one")


def test_score_maml_sees_the_episodes_and_keys_of_score_prior(
    test_family, monkeypatch):
  # score_prior's own sampling loop and result, with its supernet adaptation
  # stubbed out (compiling even a tiny supernet takes ~10 s on CPU).
  def fake_adapt(prior, support_x, support_y, query_x, query_y, **kwargs):
    del prior, support_x, support_y, query_x, query_y, kwargs
    return types.SimpleNamespace(query_accuracy=0.5, support_accuracy=1.0,
                                 seconds=0.01, posterior=None)

  monkeypatch.setattr(train, "adapt", fake_adapt)
  monkeypatch.setattr(train.prior_lib, "arch_shift", lambda p, q: 0.0)
  for_maml, for_prior = (RecordingFamily(test_family),
                         RecordingFamily(test_family))
  row = maml.score_maml(_init(), for_maml, CFG, episodes=3, seed=11,
                        steps=1)
  prior_row = train.score_prior(None, for_prior, AdaptConfig(), 1.0,
                                episodes=3, steps=1, seed=11)
  assert len(for_maml.sampled) == len(for_prior.sampled) == 3
  for a, b in zip(for_maml.sampled, for_prior.sampled):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(for_maml.sampled[0], for_maml.sampled[1])
  # The same columns, but for the supernet's arch shift (MAML has none).
  assert set(row) | {"arch_shift"} == set(prior_row) | {"parameters"}
  assert row["adapt_steps"] == prior_row["adapt_steps"] == 1
  assert row["episodes"] == prior_row["episodes"] == 3


def test_score_maml_rejects_weights_for_other_tasks(test_family):
  with pytest.raises(ConfigError, match="5-way tasks .* do not fit 3-way"):
    maml.score_maml(jax.eval_shape(lambda: _init(num_ways=5)), test_family,
                    CFG, episodes=2, seed=0)
  with pytest.raises(ConfigError, match="episodes"):
    maml.score_maml(_init(), test_family, CFG, episodes=0, seed=0)


def test_save_and_load_round_trip(meta_trained, tmp_path):
  weights, history = meta_trained
  path = tmp_path / "sub" / "maml.msgpack"
  maml.save_maml(path, weights, {"step": CFG.num_steps,
                                 "final_loss": history[-1]})
  loaded, metadata = maml.load_maml(path)
  assert metadata == {"step": CFG.num_steps, "final_loss": history[-1]}
  assert (jax.tree.structure(loaded) == jax.tree.structure(weights))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(weights)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert os.listdir(path.parent) == ["maml.msgpack"]  # no temporary left
  x = jnp.asarray(np.random.default_rng(0).random((4, 8, 8, 1)), jnp.float32)
  np.testing.assert_array_equal(maml.apply_conv4(loaded, x),
                                maml.apply_conv4(weights, x))
  with pytest.raises(ConfigError, match="JSON"):
    maml.save_maml(path, weights, {"bad": object()})


def test_corrupt_or_missing_files_raise_checkpoint_errors(tmp_path):
  path = tmp_path / "maml.msgpack"
  with pytest.raises(CheckpointError, match="not found"):
    maml.load_maml(path)
  maml.save_maml(path, _init(), {})
  blob = path.read_bytes()
  cases = {
      "truncated": blob[: len(blob) // 2],
      "garbage": b"\x00not msgpack at all" * 10,
      # One flipped byte in the middle of the arrays.
      "flipped": (blob[: len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 1])
                  + blob[len(blob) // 2 + 1:]),
  }
  for name, data in cases.items():
    bad = tmp_path / f"{name}.msgpack"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match=str(bad)) as error:
      maml.load_maml(bad)
    assert "\n" not in str(error.value), name
  # Intact, but the arrays are not the Conv-4 that the header describes.
  mismatched = tmp_path / "mismatched.msgpack"
  base_serialization.write_arrays_file(mismatched, _init(), {
      "format": maml.FORMAT, "version": maml.FORMAT_VERSION,
      "architecture": {"num_ways": 3, "in_channels": 1, "hidden": 4,
                       "final_spatial": 1}})
  with pytest.raises(CheckpointError, match="does not match its Conv-4"):
    maml.load_maml(mismatched)
  # A readable file of another format (a BASE prior's header).
  other = tmp_path / "prior.msgpack"
  other.write_bytes(serialization.msgpack_serialize({
      "header": json.dumps({"format": prior_lib.FORMAT, "version": 1}),
      "arrays": {}, "sha256": ""}))
  with pytest.raises(CheckpointError, match="not a MAML weights file"):
    maml.load_maml(other)


def test_a_non_finite_meta_loss_stops_training_naming_the_step(train_family):
  cfg = dataclasses.replace(CFG, num_steps=4)  # shares CFG's programs
  with pytest.raises(train.NonFiniteLossError, match="at step 2 ") as error:
    maml.maml_meta_train(PoisonedFamily(train_family, healthy_batches=1), cfg, log_every=3)
  assert "\n" not in str(error.value)


def _leaves_equal(a, b):
  return all(np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_crashed_run_resumes_and_a_longer_one_continues_exactly(
    train_family, tmp_path):
  cfg = dataclasses.replace(CFG, num_steps=6, checkpoint_every=2)
  straight, straight_history = maml.maml_meta_train(train_family, cfg,
                                                    log_every=4)
  workdir = str(tmp_path)
  # Step 3 sees NaN images: the run stops, its checkpoint of step 2 stays.
  with pytest.raises(train.NonFiniteLossError, match="at step 3 "):
    maml.maml_meta_train(PoisonedFamily(train_family, healthy_batches=2),
                         dataclasses.replace(cfg, num_steps=4),
                         checkpoint_dir=workdir)
  checkpoints = tmp_path / maml.CHECKPOINT_SUBDIR
  assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) \
      == ["2"]
  # Resumed to step 4, then a longer run continues it to step 6.
  counting = PoisonedFamily(train_family)
  maml.maml_meta_train(counting, dataclasses.replace(cfg, num_steps=4),
                       checkpoint_dir=workdir)
  assert counting.batches == 2, "steps 3 and 4 only"
  weights, history = maml.maml_meta_train(counting, cfg,
                                          checkpoint_dir=workdir)
  assert counting.batches == 4
  assert _leaves_equal(weights, straight)
  assert history == straight_history and len(history) == 6
  # A finished run loads without sampling a single episode.
  again, _ = maml.maml_meta_train(counting, cfg, checkpoint_dir=workdir)
  assert counting.batches == 4 and _leaves_equal(again, straight)


def test_checkpoints_of_another_run_are_refused(train_family, tmp_path):
  cfg = dataclasses.replace(CFG, num_steps=2, checkpoint_every=1)
  maml.maml_meta_train(train_family, cfg, checkpoint_dir=str(tmp_path))
  for other, named in ((dataclasses.replace(cfg, meta_lr=0.5), "meta_lr"),
                       (cfg, "seed")):
    seed = 1 if named == "seed" else 0
    with pytest.raises(ConfigError, match=rf"{named}=.*use another workdir"):
      maml.maml_meta_train(train_family, other, seed=seed,
                           checkpoint_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="step 2, past maml.num_steps=1"):
    maml.maml_meta_train(train_family, dataclasses.replace(cfg, num_steps=1),
                         checkpoint_dir=str(tmp_path))


def test_is_trained_compares_what_decides_the_training(train_family,
                                                       tmp_path):
  cfg = dataclasses.replace(CFG, num_steps=2)
  experiment = types.SimpleNamespace(train_family=train_family)
  summary = maml.METHOD.meta_train(experiment, cfg, str(tmp_path), seed=0,
                                   progress=False)
  assert summary["steps"] == 2 and summary["seconds"] > 0
  assert (tmp_path / maml.CHECKPOINT_SUBDIR).is_dir()
  assert maml.is_trained(str(tmp_path), cfg, 0)
  # Meta-test settings do not change the trained weights ...
  assert maml.is_trained(str(tmp_path), dataclasses.replace(
      cfg, eval_inner_steps=7, checkpoint_every=5), 0)
  # ... the length, the rates and the seed do.
  for changed in (dataclasses.replace(cfg, num_steps=3),
                  dataclasses.replace(cfg, inner_lr=0.1)):
    assert not maml.is_trained(str(tmp_path), changed, 0)
  assert not maml.is_trained(str(tmp_path), cfg, 1)
