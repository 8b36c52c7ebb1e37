"""MetaNAS: Reptile update, soft and hard pruning, config, files, end to end."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from base import train
from base.errors import CheckpointError, ConfigError
from base.genotype import Genotype
from base.methods import get_method
from base.methods import metanas
from base.methods.api import score_learner
from base.supernet import apply_supernet, init_supernet_weights
from tests.conftest import tiny_config, tiny_spec

# The end-to-end setting: tiny_config's supernet on 3-way 5-shot digits
# without rotations (held-out digits are never rotated). Sixty Reptile steps
# lift the held-out query accuracy of the same initial parameters from 0.56
# to 0.77 (seed 0, 40 episodes; seeds 1 and 2: +0.11 and +0.23).
E2E_CFG = metanas.MetaNASConfig(
    inner_steps=5, inner_lr_weights=0.3, inner_lr_arch=0.005,
    meta_lr_weights=1.0, meta_lr_arch=0.6, meta_lr_schedule="linear",
    meta_batch_size=4, num_steps=60, prune_threshold=0.01, log_every=20)


@pytest.fixture(scope="module")
def experiment():
  return train.build_experiment(tiny_config())


@pytest.fixture(scope="module")
def five_shot_experiment():
  config = tiny_config()
  config.data.num_shots = 5
  config.data.rotations = (0,)
  return train.build_experiment(config)


def _tree(rng, scale=1.0):
  return {"a": {"k": scale * rng.normal(size=(3, 2)).astype(np.float32)},
          "b": scale * rng.normal(size=(4,)).astype(np.float32)}


def _arch(rng, shape=(2, 4)):
  return {c: rng.normal(size=shape).astype(np.float32)
          for c in ("normal", "reduce")}


def test_reptile_update_is_the_mean_parameter_difference():
  rng = np.random.default_rng(0)
  meta_w, meta_a = _tree(rng), _arch(rng)
  task_w = [_tree(rng) for _ in range(3)]
  task_a = [_arch(rng) for _ in range(3)]
  new_w, new_a = metanas.reptile_update(meta_w, meta_a, task_w, task_a,
                                        np.float32(0.7), np.float32(0.25))
  for path in (("a", "k"), ("b",)):
    def get(tree, path=path):
      for p in path:
        tree = tree[p]
      return np.asarray(tree, np.float64)
    expected = get(meta_w) + 0.7 * np.mean(
        [get(t) - get(meta_w) for t in task_w], axis=0)
    np.testing.assert_allclose(get(new_w), expected, rtol=1e-5, atol=1e-6)
  for c in ("normal", "reduce"):
    expected = meta_a[c] + 0.25 * np.mean(
        [t[c] - meta_a[c] for t in task_a], axis=0)
    np.testing.assert_allclose(new_a[c], expected, rtol=1e-5, atol=1e-6)
  # A step size of 1 lands exactly on the mean of the adapted parameters.
  mean_w, _ = metanas.reptile_update(meta_w, meta_a, task_w, task_a,
                                     np.float32(1.0), np.float32(0.0))
  np.testing.assert_allclose(mean_w["b"], np.mean([t["b"] for t in task_w], 0),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "exponential"])
def test_soft_pruning_anneals_to_tau_end_and_becomes_one_hot(schedule):
  cfg = metanas.MetaNASConfig(tau_start=1.0, tau_end=0.05,
                              tau_schedule=schedule)
  taus = metanas.inner_temperatures(cfg, steps=5, arch_steps=5)
  assert taus[0] == 1.0 and taus[-1] == 0.05
  assert np.all(np.diff(taus) < 0)
  if schedule == "linear":
    np.testing.assert_allclose(np.diff(taus), -0.95 / 4)
  else:
    np.testing.assert_allclose(taus[1:] / taus[:-1], 0.05 ** 0.25)
  # Weight-only steps after the architecture steps keep tau_end; warm-up
  # (no architecture steps) keeps tau_start; one architecture step: tau_end.
  held = metanas.inner_temperatures(cfg, steps=6, arch_steps=3)
  np.testing.assert_allclose(held[2:], 0.05)
  np.testing.assert_allclose(
      metanas.inner_temperatures(cfg, steps=4, arch_steps=0), 1.0)
  assert metanas.inner_temperatures(cfg, steps=1, arch_steps=1)[0] == 0.05
  # Logits 0.3 apart: a soft mixture at tau_start, nearly one-hot at tau_end.
  logits = {c: jnp.array([[0.5, 0.2, 0.1, 0.0], [0.0, 0.0, 0.3, 0.0]])
            for c in ("normal", "reduce")}
  mask = {c: np.ones((2, 4), bool) for c in ("normal", "reduce")}
  soft = metanas.mixture_weights(logits, mask, taus[0])["normal"]
  hard = metanas.mixture_weights(logits, mask, taus[-1])["normal"]
  assert float(soft.max()) < 0.4
  assert np.all(np.asarray(hard.max(-1)) > 0.99)
  np.testing.assert_array_equal(np.argmax(hard, -1), [0, 2])
  np.testing.assert_allclose(np.asarray(hard.sum(-1)), 1.0, rtol=1e-6)


def test_hard_pruning_removes_weak_ops_and_keeps_one_per_edge():
  primitives = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
  logits = {"normal": np.array([[0.0, 1.0, 0.9, -1.0],     # keeps 1, 2
                                [0.0, 0.0, 0.0, 0.0],      # all equal
                                [5.0, 0.0, 0.1, 0.0]],     # none dominates
                               np.float32),
            "reduce": np.zeros((3, 4), np.float32)}
  mask = {c: np.ones((3, 4), bool) for c in logits}
  new_logits, new_mask = metanas.hard_prune(logits, mask, threshold=0.2,
                                            temperature=0.5,
                                            primitives=primitives)
  np.testing.assert_array_equal(new_mask["normal"], [
      [False, True, True, False],
      [True, True, True, True],       # 0.25 each: all above 0.2
      [True, False, True, False]])    # none kept, and the best real op
  assert np.all(new_mask["reduce"])
  assert np.all(new_logits["normal"][~new_mask["normal"]]
                == metanas.PRUNED_LOGIT)
  np.testing.assert_array_equal(new_logits["normal"][new_mask["normal"]],
                                logits["normal"][new_mask["normal"]])
  assert metanas.num_pruned(new_mask) == 4
  # A threshold above 1/O prunes all but one real op on every edge; pruned
  # ops stay pruned; pruned ops get mixture weight exactly 0.
  _, strict = metanas.hard_prune(new_logits, new_mask, threshold=0.9,
                                 temperature=0.5, primitives=primitives)
  for c in strict:
    assert np.all(strict[c][:, 1:].sum(-1) == 1)
    assert not np.any(strict[c] & ~new_mask[c])
  mix = metanas.mixture_weights(
      {c: jnp.asarray(v) for c, v in new_logits.items()}, new_mask, 0.05)
  assert np.all(np.asarray(mix["normal"])[~new_mask["normal"]] == 0.0)


def test_pruned_ops_are_not_computed_and_match_zero_weights():
  spec = tiny_spec()
  weights = init_supernet_weights(spec, jax.random.key(0))
  rng = np.random.default_rng(1)
  mask = {c: np.ones(spec.arch_shape, bool) for c in ("normal", "reduce")}
  mask["normal"][0, 3] = mask["normal"][1, 1] = mask["reduce"][1, 3] = False
  frozen = metanas.freeze_mask(mask)
  assert metanas.thaw_mask(frozen)["normal"].tolist() == mask["normal"].tolist()
  logits = {c: jnp.asarray(rng.normal(size=spec.arch_shape), jnp.float32)
            for c in mask}
  mix = metanas.mixture_weights(logits, mask, 0.7)
  x = jnp.asarray(rng.normal(size=(5, 8, 8, 1)), jnp.float32)
  masked_fn = functools.partial(metanas.apply_masked_supernet, spec,
                                mask=frozen)
  masked = jax.jit(masked_fn)(weights, mix, x)
  reference = jax.jit(functools.partial(apply_supernet, spec))(weights, mix, x)
  np.testing.assert_allclose(masked, reference, rtol=1e-4, atol=1e-5)
  # The pruned operations are not in the program at all.
  def count(frozen_mask):
    jaxpr = jax.make_jaxpr(functools.partial(
        metanas.apply_masked_supernet, spec, mask=frozen_mask))(weights, mix, x)
    return len(jaxpr.eqns)
  assert count(frozen) < count(metanas.freeze_mask(metanas.full_mask(spec)))
  full = metanas.active_parameter_count(spec, weights, metanas.full_mask(spec))
  assert full == sum(v.size for v in jax.tree.leaves(weights))
  assert metanas.active_parameter_count(spec, weights, mask) < full


def test_darts_task_learner_minibatches_and_weight_only_steps():
  spec = tiny_spec()
  cfg = metanas.MetaNASConfig(inner_lr_arch=0.05, batch_size=2)
  weights, arch, mask = metanas.init_meta_params(spec, 0)
  program = metanas.task_program(spec, mask, cfg, cfg.batch_size)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 8, 8, 1)).astype(np.float32)
  y = np.repeat(np.arange(3, dtype=np.int32), 2)

  def adapt(steps, arch_steps, seed):
    return metanas.darts_adapt(weights, arch, x, y, program=program, cfg=cfg,
                               steps=steps, arch_steps=arch_steps,
                               seed_words=metanas.task_seed(seed))

  w2, a2, _, tau2 = adapt(2, 2, seed=1)
  w4, a4, loss, tau4 = adapt(4, 2, seed=1)
  assert tau2 == tau4 == cfg.tau_end and np.isfinite(float(loss))
  # Steps 3 and 4 adapt only the weights; steps 1 and 2 are the same draws.
  for c in ("normal", "reduce"):
    assert not np.allclose(a2[c], arch[c])
    np.testing.assert_array_equal(a2[c], a4[c])
  assert not np.allclose(w2["stem"]["kernel"], w4["stem"]["kernel"])
  # Another seed draws other minibatches of 2 of the 6 support images.
  w_other, _, _, _ = adapt(2, 2, seed=2)
  assert not np.allclose(w2["stem"]["kernel"], w_other["stem"]["kernel"])


@pytest.mark.parametrize("field, value, message", [
    ("inner_steps", 0, "metanas.inner_steps must be an integer >= 1, got 0"),
    ("meta_batch_size", 2.5, "metanas.meta_batch_size must be an integer"),
    ("inner_lr_weights", 0.0, "metanas.inner_lr_weights must be a positive"),
    ("meta_lr_arch", float("nan"), "metanas.meta_lr_arch must be a number >= 0"),
    ("tau_end", 2.0, "metanas.tau_end must be <= metanas.tau_start"),
    ("tau_schedule", "cosine", "metanas.tau_schedule must be one of"),
    ("weights_optimizer", "rmsprop", "metanas.weights_optimizer must be"),
    ("prune_threshold", 1.0, "metanas.prune_threshold must be in [0, 1)"),
    ("eval_arch_fraction", 0.0, "metanas.eval_arch_fraction must be in"),
    ("eval_batch_size", -2, "metanas.eval_batch_size must be an integer"),
])
def test_config_validation_names_the_field(field, value, message):
  with pytest.raises(ConfigError) as error:
    metanas.MetaNASConfig(**{field: value})
  assert str(error.value).startswith(message), str(error.value)
  assert "\n" not in str(error.value)


def test_config_section_and_derived_settings():
  config = tiny_config()
  assert metanas.config_from(config) == metanas.MetaNASConfig()
  config.metanas = dict(inner_steps=4, eval_inner_steps=10,
                        eval_arch_fraction=0.5, batch_size=2)
  cfg = metanas.config_from(config)
  assert (cfg.eval_steps, cfg.eval_arch_steps, cfg.test_batch_size) == (
      10, 5, 2)
  config.metanas = dict(inner_stepz=4)
  with pytest.raises(ConfigError, match="metanas.inner_stepz"):
    metanas.config_from(config)
  assert get_method("metanas") is metanas.METHOD
  assert metanas.METHOD.config_class is metanas.MetaNASConfig


@pytest.mark.parametrize("variant", ["omniglot", "digits"])
def test_experiment_config_file(variant):
  from base import config_utils, ops
  from base.supernet import SupernetSpec
  from configs import metanas as metanas_config
  config = metanas_config.get_config(variant)
  config_utils.check_top_level(config)
  assert config.method == "metanas"
  cfg = metanas.config_from(config)
  spec = config_utils.dataclass_from_config(SupernetSpec, config.supernet,
                                            "supernet", num_classes=5)
  assert spec.primitives == ops.METANAS_PRIMITIVES
  assert "none" not in spec.primitives and spec.num_ops == 7
  if variant == "omniglot":
    assert (config.data.source, config.data.num_ways,
            config.data.num_shots) == ("omniglot", 20, 1)
    assert (spec.num_cells, spec.num_nodes, spec.channels,
            spec.reduction_cells) == (4, 3, 28, (1, 3))
    assert (cfg.meta_lr_weights, cfg.meta_lr_arch, cfg.tau_end) == (
        1.0, 0.6, 0.05)
    assert (cfg.eval_steps, cfg.eval_arch_steps, cfg.test_batch_size) == (
        100, 50, 10)
  else:
    assert (config.data.source, config.data.image_size) == ("digits", 8)
  # Both variants take the same override keys.
  assert (set(config_utils.as_dict(config))
          == set(config_utils.as_dict(metanas_config.get_config())))


def _save_initial(path, spec, seed=0):
  weights, arch, mask = metanas.init_meta_params(spec, seed)
  mask["normal"][0, 2] = False
  arch["normal"] = arch["normal"].at[0, 2].set(metanas.PRUNED_LOGIT)
  metanas.save_metanas(path, spec, weights, arch, mask, {"note": "init"})
  return weights, arch, mask


def _save_zeros(path, spec):
  """An artifact of the right shapes for ``spec`` (no initialiser to run)."""
  shapes = jax.eval_shape(
      lambda: init_supernet_weights(spec, jax.random.key(0)))
  weights = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  arch = {c: np.zeros(spec.arch_shape, np.float32)
          for c in ("normal", "reduce")}
  metanas.save_metanas(path, spec, weights, arch, metanas.full_mask(spec))


def test_artifact_round_trip_and_corrupt_files(tmp_path):
  spec = tiny_spec()
  path = tmp_path / metanas.ARTIFACT_FILENAME
  weights, arch, mask = _save_initial(path, spec)
  spec2, weights2, arch2, mask2, metadata = metanas.load_metanas(path)
  assert spec2 == spec and metadata == {"note": "init"}
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(weights), jax.tree.leaves(weights2)))
  for c in mask:
    np.testing.assert_array_equal(mask2[c], mask[c])
    np.testing.assert_array_equal(arch2[c], arch[c])
  header = json.loads(json.dumps(spec.to_dict()))
  assert header["primitives"] == list(spec.primitives)

  with pytest.raises(CheckpointError, match="not found"):
    metanas.load_metanas(tmp_path / "missing.msgpack")
  blob = path.read_bytes()
  truncated = tmp_path / "truncated.msgpack"
  truncated.write_bytes(blob[:len(blob) // 2])
  flipped = tmp_path / "flipped.msgpack"
  flipped.write_bytes(blob[:-100] + bytes([blob[-100] ^ 0xFF]) + blob[-99:])
  for bad in (truncated, flipped):
    with pytest.raises(CheckpointError, match=str(bad)):
      metanas.load_metanas(bad)
  # Arrays that do not fit the spec in the header.
  other = tmp_path / "other.msgpack"
  metanas.save_metanas(other, dataclasses.replace(spec, channels=6), weights,
                       arch, mask)
  with pytest.raises(CheckpointError, match="do not match its supernet"):
    metanas.load_metanas(other)


def test_load_learner_checks_the_experiment(tmp_path, experiment):
  cfg = metanas.MetaNASConfig()
  with pytest.raises(CheckpointError, match=str(tmp_path)):
    metanas.load_learner(experiment, cfg, str(tmp_path))
  path = tmp_path / metanas.ARTIFACT_FILENAME
  _save_zeros(path, dataclasses.replace(experiment.spec, num_classes=5))
  learner = metanas.load_learner(experiment, cfg, str(tmp_path))
  assert learner.ways == experiment.test_family.num_ways == 3
  assert learner.task_weights["classifier"]["bias"].shape == (3,)
  # Restricted from the full 5-way classifier, so 3 ways can go back to 4.
  wider = learner.restrict_ways(4)
  np.testing.assert_array_equal(wider.task_weights["classifier"]["kernel"],
                                learner.weights["classifier"]["kernel"][:, :4])
  assert wider.parameters == learner.parameters + 9  # 8 features + 1 bias
  with pytest.raises(ConfigError, match="5-way MetaNAS supernet cannot "
                     "serve 7-way"):
    learner.restrict_ways(7)
  _save_zeros(path, dataclasses.replace(experiment.spec, num_classes=2))
  with pytest.raises(ConfigError, match="serves up to 2-way tasks"):
    metanas.load_learner(experiment, cfg, str(tmp_path))
  _save_zeros(path, dataclasses.replace(experiment.spec, channels=6))
  with pytest.raises(ConfigError, match="channels=6 vs config 4"):
    metanas.load_learner(experiment, cfg, str(tmp_path))
  _save_zeros(path, dataclasses.replace(experiment.spec, in_channels=3))
  with pytest.raises(ConfigError, match="in_channels=3 vs config 1"):
    metanas.load_learner(experiment, cfg, str(tmp_path))


def test_meta_training_beats_the_untrained_start_on_held_out_digits(
    tmp_path, five_shot_experiment):
  experiment = five_shot_experiment
  summary = metanas.METHOD.meta_train(experiment, E2E_CFG, str(tmp_path),
                                      seed=0, progress=False)
  assert summary["seconds"] > 0 and summary["steps"] == 60
  assert os.path.exists(tmp_path / metanas.ARTIFACT_FILENAME)
  records = [json.loads(line) for line in
             open(tmp_path / metanas.METRICS_FILENAME)]
  assert [r["step"] for r in records] == [20, 40, 60]
  assert all(np.isfinite(r["query_loss"]) for r in records)

  learned = metanas.METHOD.load_learner(experiment, E2E_CFG, str(tmp_path))
  assert metanas.num_pruned(learned.mask) == summary["pruned_ops"] > 0
  # The same initial parameters, zero meta-steps.
  initial = metanas.MetaNASLearner(
      experiment.spec, *metanas.init_meta_params(experiment.spec, 0), E2E_CFG)
  assert learned.parameters < initial.parameters
  scores = {name: score_learner(learner, experiment.test_family, episodes=40,
                                seed=7)
            for name, learner in (("initial", initial), ("learned", learned))}
  gain = scores["learned"]["query_accuracy"] - scores["initial"][
      "query_accuracy"]
  assert gain > max(0.05, scores["learned"]["ci95"]), scores

  episode = experiment.test_family.sample(np.random.default_rng(3))
  result = learned.adapt_and_predict(episode.support_x, episode.support_y,
                                     episode.query_x, seed=0)
  assert isinstance(result.genotype, Genotype)
  assert result.genotype.num_nodes == experiment.spec.num_nodes
  # The task's genotype only uses operations that survived hard pruning.
  for c in ("normal", "reduce"):
    start = 0
    for node, edges in enumerate(result.genotype.node_edges(c)):
      for op, j in edges:
        assert learned.mask[c][start + j,
                               experiment.spec.primitives.index(op)], (c, op)
      start += 2 + node
  assert result.query_predictions.shape == episode.query_y.shape
  assert 0.0 <= result.support_accuracy <= 1.0
  again = learned.adapt_and_predict(episode.support_x, episode.support_y,
                                    episode.query_x, seed=0)
  np.testing.assert_array_equal(again.query_predictions,
                                result.query_predictions)
