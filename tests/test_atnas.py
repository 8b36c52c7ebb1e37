"""AT-NAS: genetic operators, subnet encodings, config, artifact, end to end."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

from base import config_utils, evolution, train
from base import serialization as base_serialization
from base.errors import CheckpointError, ConfigError
from base.genotype import (Genotype, build_genotype_network,
                           genotype_param_count)
from base.methods import atnas, get_method
from base.methods.api import Learner, score_learner
from base.supernet import apply_supernet, init_supernet_weights
from base.train import NonFiniteLossError

from conftest import PoisonedFamily, tiny_config, tiny_spec

SHAPES = {"normal": 5, "reduce": 5}
CHOICES = (1, 2, 3)  # op 0 ("none") excluded
# Measured on 2 shared cores: meta-training takes 15-25 s; on 40 held-out
# episodes, seeds 0-4 gave init -> learned query accuracy 0.59 -> 0.71,
# 0.57 -> 0.73, 0.63 -> 0.78, 0.58 -> 0.70, 0.59 -> 0.69 (chance 1/3).
E2E_CFG = atnas.ATNASConfig(
    population_size=8, generations=1, mutation_prob=0.25, crossover_prob=0.5,
    tournament_size=3, elite_count=2, inner_steps=3, inner_lr=0.4,
    meta_lr=1e-2, meta_batch_size=8, num_steps=300, evolve_every=50,
    fitness_tasks=4, test_generations=2, eval_inner_steps=0)


def _encodings(count, seed=0):
  rng = np.random.default_rng(seed)
  return [evolution.random_encoding(SHAPES, CHOICES, rng)
          for _ in range(count)]


def _same(a, b):
  return evolution.encoding_key(a) == evolution.encoding_key(b)


# ----------------------------------------------------------------------------
# Genetic operators.


def test_mutation_changes_at_least_one_edge_within_the_allowed_ops():
  rng = np.random.default_rng(1)
  for parent in _encodings(200):
    for prob in (0.0, 0.2, 1.0):
      child = evolution.mutate(parent, CHOICES, prob, rng)
      assert {k: v.shape for k, v in child.items()} == {
          "normal": (5,), "reduce": (5,)}
      changed = sum(int(np.sum(child[k] != parent[k])) for k in SHAPES)
      assert changed >= 1
      if prob == 0.0:
        assert changed == 1
      if prob == 1.0:
        assert changed == 10
      for values in child.values():
        assert values.dtype == np.int32
        assert set(values.tolist()) <= set(CHOICES)  # never op 0
  # A parent that holds an excluded op loses it when that edge mutates.
  parent = {"normal": np.zeros(5, np.int32), "reduce": np.zeros(5, np.int32)}
  child = evolution.mutate(parent, CHOICES, 1.0, rng)
  assert all(set(v.tolist()) <= set(CHOICES) for v in child.values())
  before = {k: v.copy() for k, v in parent.items()}
  evolution.mutate(parent, CHOICES, 0.5, rng)
  assert _same(parent, before)  # arguments are never modified


def test_crossover_takes_every_edge_from_a_parent():
  rng = np.random.default_rng(2)
  population = _encodings(100, seed=3)
  mixed = 0
  for a, b in zip(population[::2], population[1::2]):
    child = evolution.crossover(a, b, rng)
    for name in SHAPES:
      assert child[name].shape == (5,) and child[name].dtype == np.int32
      assert np.all((child[name] == a[name]) | (child[name] == b[name]))
    mixed += not (_same(child, a) or _same(child, b))
  assert mixed > 30  # usually a genuine mix of both parents
  with pytest.raises(ConfigError, match="cannot cross"):
    evolution.crossover(a, {"normal": a["normal"]}, rng)


def test_operators_are_deterministic_for_a_seed():
  def run(seed):
    rng = np.random.default_rng(seed)
    a, b = (evolution.random_encoding(SHAPES, CHOICES, rng) for _ in range(2))
    return [evolution.encoding_key(e) for e in (
        a, b, evolution.mutate(a, CHOICES, 0.3, rng),
        evolution.crossover(a, b, rng))] + [
            evolution.tournament_select(np.arange(8.0), 3, rng)]
  assert run(5) == run(5)
  assert run(5) != run(6)


def test_tournament_and_rank():
  rng = np.random.default_rng(0)
  fitness = np.array([0.1, 0.9, 0.5, 0.9])
  wins = [evolution.tournament_select(fitness, 3, rng) for _ in range(300)]
  assert set(wins) <= {0, 1, 2, 3}
  assert np.mean([w in (1, 3) for w in wins]) > 0.6  # selection pressure
  assert 1 in wins and 3 in wins  # ties: the lower index among entrants
  assert evolution.rank(fitness).tolist() == [1, 3, 2, 0]
  big = [evolution.tournament_select(fitness, 1, rng) for _ in range(400)]
  assert set(big) == {0, 1, 2, 3}  # size 1 is uniform


def test_evolve_with_elitism_improves_monotonically_to_the_optimum():
  calls = []

  def count_op_2(encoding):  # toy fitness: edges using op 2 (optimum 10)
    calls.append(1)
    return float(sum(int(np.sum(v == 2)) for v in encoding.values()))

  def run(seed):
    rng = np.random.default_rng(seed)
    population = evolution.random_population(8, SHAPES, CHOICES, rng)
    return evolution.evolve(population, count_op_2, 30, rng, choices=CHOICES,
                            mutation_prob=0.1, crossover_prob=0.5,
                            tournament_size=3, elite_count=2)

  result = run(0)
  history = result.best_history
  assert len(history) == 31
  assert all(b >= a for a, b in zip(history, history[1:])), history
  assert history[0] < 10 and history[-1] == 10.0
  assert result.fitness[0] == 10.0 and np.all(np.diff(result.fitness) <= 0)
  assert evolution.encoding_key(result.population[0]) == (
      ("normal", (2,) * 5), ("reduce", (2,) * 5))
  for member, value in zip(result.population, result.fitness):
    assert count_op_2(member) == value
  # Cached: each distinct encoding is scored once, fewer than 8 + 30 * 6.
  assert result.evaluations == len(calls) - 8 < 8 + 30 * 6
  again = run(0)
  assert again.best_history == history
  assert [evolution.encoding_key(m) for m in again.population] == [
      evolution.encoding_key(m) for m in result.population]
  # Known fitness is used as is; 0 generations only sorts.
  rng = np.random.default_rng(1)
  population = _encodings(4)
  sorted_only = evolution.evolve(
      population, lambda e: pytest.fail("must not evaluate"), 0, rng,
      choices=CHOICES, mutation_prob=0.1, crossover_prob=0.5,
      tournament_size=2, elite_count=1, fitness=[0.0, 3.0, 1.0, 2.0])
  assert sorted_only.fitness.tolist() == [3.0, 2.0, 1.0, 0.0]
  assert _same(sorted_only.population[0], population[1])


def test_evolve_rejects_bad_arguments():
  population = _encodings(4)
  kwargs = dict(choices=CHOICES, mutation_prob=0.1, crossover_prob=0.5,
                tournament_size=2)
  rng = np.random.default_rng(0)
  with pytest.raises(ConfigError, match="elite_count"):
    evolution.evolve(population, lambda e: 0.0, 1, rng, elite_count=4,
                     **kwargs)
  with pytest.raises(ConfigError, match="NaN"):
    evolution.evolve(population, lambda e: float("nan"), 1, rng,
                     elite_count=1, **kwargs)
  with pytest.raises(ConfigError, match="outside the allowed"):
    bad = [{"normal": np.zeros(5, np.int32), "reduce": np.ones(5, np.int32)}]
    evolution.evolve(bad, lambda e: 0.0, 1, rng, elite_count=0, **kwargs)
  with pytest.raises(ConfigError, match="at least 2 allowed choices"):
    evolution.random_encoding(SHAPES, (1,), rng)


# ----------------------------------------------------------------------------
# Encodings, subnets and genotypes.


def _genotype_weights(supernet_weights, genotype_model, encoding, spec):
  """The supernet's weights of the subnet, in the genotype network's tree."""
  graphdef, state = nnx.split(genotype_model)
  flat = {}
  for path, value in base_serialization.flatten(
      supernet_weights).items():
    parts = path.split("/")
    if parts[0] == "cells":
      cell, edge = int(parts[1]), int(parts[3]) if parts[2] == "edges" else 0
      if parts[2] == "edges":
        cell_type = "reduce" if cell in spec.reduction_cells else "normal"
        if int(parts[5]) != int(encoding[cell_type][edge]):
          continue  # an unused op of the supernet
        path = "/".join(parts[:4] + parts[6:])
    flat[path] = value
  pure = base_serialization.unflatten(flat)
  assert set(base_serialization.flatten(pure)) == set(
      base_serialization.flatten(nnx.to_pure_dict(state)))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def test_an_encoding_is_a_one_hot_subnet_and_its_genotype_network():
  spec = tiny_spec()
  assert atnas.op_choices(spec) == (1, 2, 3)
  encoding = {"normal": np.array([3, 2], np.int32),
              "reduce": np.array([1, 3], np.int32)}
  arch = atnas.encoding_to_arch_weights(encoding, spec)
  manual = {"normal": jnp.array([[0, 0, 0, 1], [0, 0, 1, 0]], jnp.float32),
            "reduce": jnp.array([[0, 1, 0, 0], [0, 0, 0, 1]], jnp.float32)}
  for name in ("normal", "reduce"):
    np.testing.assert_array_equal(arch[name], manual[name])
  weights = init_supernet_weights(spec, jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(0).random((6, 8, 8, 1)), jnp.float32)
  forward = jax.jit(apply_supernet, static_argnums=0)
  logits = forward(spec, weights, arch, x)
  np.testing.assert_array_equal(logits, forward(spec, weights, manual, x))
  # Unused ops do not matter; a used one does.
  perturbed = jax.tree.map(lambda w: w, weights)
  unused = perturbed["cells"][0]["edges"][1]["ops"][3]["first"]["pointwise"]
  unused["kernel"] = unused["kernel"] + 1.0
  np.testing.assert_array_equal(forward(spec, perturbed, arch, x), logits)
  used = perturbed["cells"][0]["edges"][0]["ops"][3]["first"]["pointwise"]
  used["kernel"] = used["kernel"] + 1.0
  assert not np.allclose(forward(spec, perturbed, arch, x), logits)

  genotype = atnas.encoding_to_genotype(encoding, spec)
  assert isinstance(genotype, Genotype)
  assert genotype.normal == (("sep_conv_3x3", 0), ("skip_connect", 1))
  assert genotype.reduce == (("max_pool_3x3", 0), ("sep_conv_3x3", 1))
  assert Genotype.from_json(genotype.to_json()) == genotype
  # With one node per cell the genotype network *is* the subnet: same
  # weights (the supernet's, unused ops dropped), same logits, same count
  # (built with the supernet's batch-statistics normalisation).
  model = build_genotype_network(
      genotype, num_classes=3, in_channels=1, channels=spec.channels,
      num_cells=spec.num_cells, stem_multiplier=spec.stem_multiplier,
      reduction_cells=spec.reduction_cells, depthwise_impl=spec.depthwise_impl,
      running_stats=False, rngs=nnx.Rngs(params=1))
  model = _genotype_weights(weights, model, encoding, spec)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), logits,
                             rtol=1e-5, atol=1e-5)
  assert atnas.subnet_param_count(weights, encoding, spec) == (
      genotype_param_count(genotype, num_classes=3, in_channels=1,
                           channels=spec.channels, num_cells=spec.num_cells,
                           stem_multiplier=spec.stem_multiplier,
                           reduction_cells=spec.reduction_cells))
  with pytest.raises(ConfigError, match="outside the allowed"):
    atnas.encoding_to_arch_weights({"normal": np.array([0, 1]),
                                    "reduce": np.array([1, 1])}, spec)
  with pytest.raises(ConfigError, match="2 integers"):
    atnas.encoding_to_arch_weights({"normal": np.array([1, 1, 1]),
                                    "reduce": np.array([1, 1])}, spec)


def test_genotype_keeps_the_edges_the_population_agrees_on():
  spec = tiny_spec(num_nodes=3)  # 2 + 3 + 4 edges per cell
  assert atnas.encoding_shapes(spec) == {"normal": 9, "reduce": 9}
  best = {"normal": np.array([1, 2, 3, 1, 2, 3, 1, 2, 3], np.int32),
          "reduce": np.full(9, 3, np.int32)}
  other = {"normal": np.array([1, 2, 1, 2, 2, 1, 2, 2, 1], np.int32),
           "reduce": np.full(9, 3, np.int32)}
  scores = atnas.population_agreement([best, other], best)
  np.testing.assert_array_equal(
      scores["normal"], [1, 1, 0.5, 0.5, 1, 0.5, 0.5, 1, 0.5])
  genotype = atnas.encoding_to_genotype(best, spec, scores)
  names = spec.primitives
  # Node 1 (edges 2..4) keeps inputs 2 (agreement 1) and 0 (tie: lower
  # input); node 2 (edges 5..8) keeps inputs 2 and 0.
  assert genotype.node_edges("normal") == [
      [(names[1], 0), (names[2], 1)],
      [(names[3], 0), (names[2], 2)],
      [(names[3], 0), (names[2], 2)]]
  assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
  with pytest.raises(ConfigError, match="at least 2 supernet.primitives"):
    atnas.op_choices(tiny_spec(primitives=("none", "skip_connect")))


def test_support_split_holds_out_one_example_per_class():
  train_idx, held_out = atnas.support_split(np.array([2, 2, 0, 0, 1, 1]))
  assert held_out.tolist() == [1, 3, 5] and train_idx.tolist() == [0, 2, 4]
  assert atnas.support_split(np.array([1, 0, 2])) is None  # 1-shot
  assert atnas.fitness_value(1.0, 0.5) == pytest.approx(1.0 - 5e-4)
  assert atnas.fitness_value(0.5, float("inf")) == pytest.approx(0.49)


# ----------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize("field, value", [
    ("population_size", 1), ("generations", 0), ("mutation_prob", 1.5),
    ("crossover_prob", -0.1), ("tournament_size", 0), ("elite_count", -1),
    ("inner_steps", 0), ("inner_lr", 0.0), ("meta_lr", float("nan")),
    ("meta_batch_size", 0), ("num_steps", 0), ("evolve_every", 0),
    ("fitness_tasks", 0), ("test_generations", -1), ("eval_inner_steps", -1),
    ("population_size", 2.5), ("inner_steps", True), ("mutation_prob", "x")])
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ConfigError, match=f"atnas.{field}") as error:
    atnas.ATNASConfig(**{field: value})
  assert "\n" not in str(error.value)


def test_config_cross_field_checks_and_the_config_section():
  with pytest.raises(ConfigError, match="atnas.elite_count must be < "):
    atnas.ATNASConfig(population_size=4, elite_count=4)
  with pytest.raises(ConfigError, match="atnas.tournament_size must be <= "):
    atnas.ATNASConfig(population_size=4, tournament_size=5)
  assert atnas.ATNASConfig(inner_steps=3).eval_steps == 3
  assert atnas.ATNASConfig(eval_inner_steps=7).eval_steps == 7
  cfg = config_utils.dataclass_from_config(
      atnas.ATNASConfig, {"population_size": 6, "inner_lr": 0.1}, "atnas")
  assert (cfg.population_size, cfg.inner_lr) == (6, 0.1)
  with pytest.raises(ConfigError, match="atnas.popsize"):
    config_utils.dataclass_from_config(atnas.ATNASConfig, {"popsize": 6},
                                       "atnas")
  assert get_method("atnas") is atnas.METHOD
  assert atnas.METHOD.config_class is atnas.ATNASConfig


# ----------------------------------------------------------------------------
# Artifact.


def test_corrupt_or_mismatched_artifacts_raise_checkpoint_errors(tmp_path):
  spec = tiny_spec()
  cfg = atnas.ATNASConfig(population_size=4, elite_count=1)
  state = atnas.init_state(spec, cfg, seed=0)
  state.fitness = np.array([0.5, 0.4, 0.25, 0.0])
  path = tmp_path / "atnas.msgpack"
  with pytest.raises(CheckpointError, match="not found"):
    atnas.load_atnas(path)
  atnas.save_atnas(path, state, spec, cfg, {"note": "test"})
  loaded, loaded_spec, header = atnas.load_atnas(path)
  assert loaded_spec == spec and header["metadata"] == {"note": "test"}
  assert header["config"] == dataclasses.asdict(cfg)
  assert [evolution.encoding_key(m) for m in loaded.population] == [
      evolution.encoding_key(m) for m in state.population]
  np.testing.assert_allclose(loaded.fitness, state.fitness)
  for a, b in zip(jax.tree.leaves(loaded.weights),
                  jax.tree.leaves(state.weights)):
    np.testing.assert_array_equal(a, b)
  blob = path.read_bytes()
  middle = len(blob) // 2
  cases = {"truncated": blob[:middle],
           "garbage": b"\x00not msgpack" * 10,
           "flipped": blob[:middle] + bytes([blob[middle] ^ 1])
                      + blob[middle + 1:]}
  for name, data in cases.items():
    bad = tmp_path / f"{name}.msgpack"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match=str(bad)) as error:
      atnas.load_atnas(bad)
    assert "\n" not in str(error.value)
  # Intact files whose contents do not fit their header.
  other_spec = tmp_path / "other_spec.msgpack"
  atnas.save_atnas(other_spec, state, tiny_spec(channels=8), cfg)
  with pytest.raises(CheckpointError, match="do not match its supernet"):
    atnas.load_atnas(other_spec)
  bad_population = tmp_path / "bad_population.msgpack"
  tree = {"weights": state.weights,
          "population": {"normal": np.zeros((4, 2), np.int32),
                         "reduce": np.ones((4, 2), np.int32)},
          "fitness": np.zeros(4, np.float32)}
  base_serialization.write_arrays_file(bad_population, tree, {
      "format": atnas.FORMAT, "version": atnas.FORMAT_VERSION,
      "spec": spec.to_dict()})
  with pytest.raises(CheckpointError, match="invalid population"):
    atnas.load_atnas(bad_population)
  other_format = tmp_path / "maml.msgpack"
  other_format.write_bytes(serialization.msgpack_serialize({
      "header": json.dumps({"format": "base-maml", "version": 1}),
      "arrays": {}, "sha256": ""}))
  with pytest.raises(CheckpointError,
                     match="is not a meta-trained AT-NAS file"):
    atnas.load_atnas(other_format)


# ----------------------------------------------------------------------------
# End to end on the tiny digits config.


@pytest.fixture(scope="module")
def experiment():
  return train.build_experiment(tiny_config())


@pytest.fixture(scope="module")
def meta_trained(experiment, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("atnas"))
  summary = atnas.METHOD.meta_train(experiment, E2E_CFG, workdir, seed=0,
                                    progress=False)
  return workdir, summary


def test_meta_training_beats_the_untrained_start_on_held_out_digits(
    experiment, meta_trained):
  workdir, summary = meta_trained
  assert os.listdir(workdir) == [atnas.FILENAME]
  assert summary["steps"] == E2E_CFG.num_steps and summary["seconds"] > 0
  assert summary["evolution_rounds"] == E2E_CFG.num_steps // 50
  assert 0 < summary["seconds_per_fitness"] < 1.0
  assert np.isfinite(summary["final_meta_loss"])
  learner = atnas.METHOD.load_learner(experiment, E2E_CFG, workdir)
  assert isinstance(learner, Learner)
  state = learner.state
  assert len(state.population) == E2E_CFG.population_size
  assert np.all(np.diff(state.fitness) <= 0)  # fittest first
  assert state.fitness[0] == pytest.approx(summary["best_fitness"], abs=1e-6)
  # The very start meta-training starts from (zero meta-steps), scored on
  # the same 40 held-out episodes.
  start = atnas.ATNASLearner(
      experiment.spec, E2E_CFG, atnas.init_state(experiment.spec, E2E_CFG,
                                                 seed=0))
  before = score_learner(start, experiment.test_family, episodes=40, seed=7)
  after = score_learner(learner, experiment.test_family, episodes=40, seed=7)
  print(f"\nAT-NAS query accuracy on 40 held-out episodes: "
        f"{before['query_accuracy']:.3f} -> {after['query_accuracy']:.3f}; "
        f"{summary['seconds_per_fitness'] * 1e3:.1f} ms per fitness "
        f"evaluation ({E2E_CFG.fitness_tasks} tasks), meta-training "
        f"{summary['seconds']:.1f} s")
  assert after["query_accuracy"] > before["query_accuracy"] + 0.05, (
      before, after)
  assert after["query_accuracy"] > 0.6  # chance is 1/3
  assert after["parameters"] == learner.parameters > 0


def test_adapt_and_predict_returns_a_deterministic_genotype(
    experiment, meta_trained):
  learner = atnas.METHOD.load_learner(experiment, E2E_CFG, meta_trained[0])
  episode = experiment.test_family.sample(np.random.default_rng(3))
  args = (episode.support_x, episode.support_y, episode.query_x)
  first = learner.adapt_and_predict(*args, seed=11)
  again = learner.adapt_and_predict(*args, seed=11)
  np.testing.assert_array_equal(first.query_predictions,
                                again.query_predictions)
  assert first.genotype == again.genotype
  assert isinstance(first.genotype, Genotype)
  assert first.query_predictions.shape == episode.query_y.shape
  assert 0 <= first.support_accuracy <= 1
  result = learner.search(episode.support_x, episode.support_y, seed=11)
  assert len(result.best_history) == E2E_CFG.test_generations + 1
  assert all(b >= a for a, b in zip(result.best_history,
                                    result.best_history[1:]))
  best = result.population[0]
  assert first.genotype.normal == tuple(
      (experiment.spec.primitives[op], j)
      for j, op in enumerate(best["normal"]))
  with pytest.raises(ConfigError, match="support_y"):
    learner.adapt_and_predict(episode.support_x, episode.support_y + 5,
                              episode.query_x, seed=0)
  two_way = learner.restrict_ways(2)
  assert two_way.spec.num_classes == 2
  assert two_way.state.weights["classifier"]["kernel"].shape[-1] == 2
  assert learner.restrict_ways(3) is learner
  # An artifact of another supernet is refused by name.
  other = experiment._replace(spec=tiny_spec(channels=8))
  with pytest.raises(CheckpointError, match="the config asks for"):
    atnas.METHOD.load_learner(other, E2E_CFG, meta_trained[0])


def test_a_non_finite_meta_loss_stops_training(experiment):
  cfg = dataclasses.replace(E2E_CFG, num_steps=10, evolve_every=50)
  with pytest.raises(NonFiniteLossError, match="at step 2 ") as error:
    atnas.meta_train_atnas(PoisonedFamily(experiment.train_family, healthy_batches=1),
                           experiment.spec, cfg)
  assert "\n" not in str(error.value)
