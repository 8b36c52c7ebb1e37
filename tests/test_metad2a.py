"""Tests of MetaD2A (base.methods.metad2a): set encoder, predictor, generator,
encodings, config, artifact, and an end-to-end run on tiny digits."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from base import config_utils, train
from base.errors import CheckpointError, ConfigError
from base.genotype import derive_genotype
from base.methods import api, get_method
from base.methods import metad2a
from base.methods import metad2a_models as models
from conftest import TINY_PRIMITIVES, tiny_config, tiny_spec

SEP = TINY_PRIMITIVES.index("sep_conv_3x3")
#: A search space with a real choice of kept edges: two nodes per cell.
TWO_NODE_DIMS = metad2a.Dims(in_channels=1, feature_dim=8, hidden=32,
                             embed_dim=8, num_nodes=2,
                             primitives=TINY_PRIMITIVES)


@functools.partial(jax.jit, static_argnames=("dims", "ways"))
def _embed(networks, support_x, support_y, dims, ways):
  protos = metad2a.task_prototypes(networks["extractor"], support_x,
                                   support_y, dims=dims, ways=ways)
  return metad2a.embed(dims, networks["generator_encoder"], protos)[0]


def _embedding(networks, dims, support_x, support_y, ways):
  return np.asarray(_embed(networks, jnp.asarray(support_x),
                           jnp.asarray(support_y), dims, ways))


def test_set_encoder_is_permutation_invariant():
  dims = TWO_NODE_DIMS
  networks = metad2a.init_networks(dims, jax.random.key(0))
  rng = np.random.default_rng(0)
  ways, shots = 4, 3
  x = rng.uniform(size=(ways * shots, 8, 8, 1)).astype(np.float32)
  y = np.repeat(np.arange(ways), shots).astype(np.int32)
  z = _embedding(networks, dims, x, y, ways)

  order = rng.permutation(len(y))  # shuffle the support examples
  np.testing.assert_allclose(_embedding(networks, dims, x[order], y[order],
                                        ways), z, rtol=1e-5, atol=1e-5)
  relabel = rng.permutation(ways)  # the same classes under other labels
  np.testing.assert_allclose(_embedding(networks, dims, x, relabel[y], ways),
                             z, rtol=1e-5, atol=1e-5)
  # ... but it does depend on the data.
  other = _embedding(networks, dims, rng.uniform(size=x.shape).astype(
      np.float32), y, ways)
  assert np.abs(other - z).max() > 1e-3


def _synthetic_database(rng, tasks, archs_per_task, dims):
  """Random prototypes; accuracy = share of kept edges running sep_conv."""
  protos = rng.normal(size=(tasks, 3, dims.feature_dim)).astype(np.float32)
  archs = np.stack([models.random_archs(rng, archs_per_task, dims.num_nodes,
                                        dims.primitives)
                    for _ in range(tasks)])
  kept = archs.sum((-1, -2, -3))
  accs = archs[..., SEP].sum((-1, -2)) / kept
  accs = accs + rng.normal(scale=0.02, size=accs.shape)
  return protos, archs, accs.astype(np.float32)


def test_predictor_learns_and_ranks_held_out_architectures():
  dims = TWO_NODE_DIMS
  rng = np.random.default_rng(1)
  protos, archs, accs = _synthetic_database(rng, 16, 24, dims)
  networks = metad2a.init_networks(dims, jax.random.key(1))
  params = {k: networks[k] for k in ("predictor_encoder", "predictor")}
  trained, losses = metad2a.fit_predictor(params, protos, archs, accs, dims,
                                          epochs=300, lr=3e-3)
  assert losses[-1] < 0.2 * losses[0]

  test_protos, test_archs, test_accs = _synthetic_database(rng, 4, 24, dims)
  for p, a, t in zip(test_protos, test_archs, test_accs):
    predicted = metad2a.predict_accuracy(
        dims, trained["predictor_encoder"], trained["predictor"],
        jnp.asarray(p), jnp.asarray(a))
    assert stats.spearmanr(np.asarray(predicted), t)[0] > 0.5


def test_generator_puts_more_mass_on_the_best_architectures():
  dims = TWO_NODE_DIMS
  rng = np.random.default_rng(2)
  protos, archs, accs = _synthetic_database(rng, 16, 24, dims)
  networks = metad2a.init_networks(dims, jax.random.key(2))
  untrained = {k: networks[k] for k in ("generator_encoder", "generator")}
  trained, losses = metad2a.fit_generator(
      untrained, protos, archs, accs, dims, epochs=300, lr=3e-3, top_k=2,
      kl_weight=1.0, key=jax.random.key(3))
  assert losses[-1] < losses[0]

  # The best architectures: every kept edge runs sep_conv (any edge pairs);
  # the worst: every kept edge runs max_pool.
  def all_edges_running(op):
    kept = models.random_archs(rng, 16, dims.num_nodes,
                               dims.primitives).sum(-1, keepdims=True)
    return kept * np.eye(dims.num_ops, dtype=np.float32)[op]

  best = all_edges_running(SEP)
  worst = all_edges_running(TINY_PRIMITIVES.index("max_pool_3x3"))
  test_protos = rng.normal(size=(3, dims.feature_dim)).astype(np.float32)

  def mean_log_prob(params, encodings):
    return float(jnp.mean(metad2a.arch_log_probs(
        params, jnp.asarray(test_protos), jnp.asarray(encodings), dims)))

  assert mean_log_prob(trained, best) > mean_log_prob(untrained, best) + 1.5
  assert mean_log_prob(trained, best) > mean_log_prob(trained, worst) + 3.0


def test_generated_encodings_are_valid_genotypes():
  dims = TWO_NODE_DIMS
  networks = metad2a.init_networks(dims, jax.random.key(4))
  rng = np.random.default_rng(4)
  x = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32)
  y = np.repeat(np.arange(3), 2).astype(np.int32)
  best, candidates, scores = metad2a.select_architecture(
      networks, jnp.asarray(x), jnp.asarray(y), jax.random.key(5), dims=dims,
      ways=3, count=20)
  assert candidates.shape == (20, *dims.arch_shape)
  assert scores.shape == (20,)
  assert best.shape == dims.arch_shape
  assert np.asarray(best).tolist() in np.asarray(candidates).tolist()
  candidates = np.asarray(candidates)
  assert len({c.tobytes() for c in candidates}) > 1  # not degenerate
  none = TINY_PRIMITIVES.index("none")
  for arch in candidates:
    models.check_arch(arch, dims.num_nodes, dims.primitives)
    assert set(np.unique(arch)) <= {0.0, 1.0}
    assert not arch[..., none].any()
    genotype = models.arch_to_genotype(arch, dims.primitives, dims.num_nodes)
    logits = {"normal": 10 * arch[0], "reduce": 10 * arch[1]}
    assert genotype == derive_genotype(logits, dims.primitives,
                                       dims.num_nodes)
  # The encoding's log-probability is a proper distribution over the space.
  op_logits, edge_scores = jax.random.normal(jax.random.key(6), (2, 5, 4)), \
      jax.random.normal(jax.random.key(7), (2, 5))
  every = _all_archs(dims)
  total = jnp.sum(jnp.exp(jax.vmap(lambda a: models.arch_log_prob(
      op_logits, edge_scores, a, dims.primitives, dims.num_nodes))(every)))
  np.testing.assert_allclose(float(total), 1.0, rtol=1e-4)


def _all_archs(dims):
  """Every valid ``[2, E, O]`` encoding (both cells), enumerated."""
  allowed = np.flatnonzero(models.allowed_ops(dims.primitives))
  per_node = []
  for pairs in models.node_pairs(dims.num_nodes):
    options = []
    for pair in pairs:
      for ops_ in itertools.product(allowed, repeat=len(pair)):
        options.append(list(zip(pair, ops_)))
    per_node.append(options)
  cells = []
  for choice in itertools.product(*per_node):
    cell = np.zeros((dims.num_edges, dims.num_ops), np.float32)
    for edge, op in itertools.chain(*choice):
      cell[edge, op] = 1.0
    cells.append(cell)
  cells = np.stack(cells)  # [C, E, O]
  count = len(cells)
  # 3 ops^2 for node 0 times 3 pairs x 3 ops^2 for node 1.
  assert count == 9 * 27
  return jnp.asarray(np.stack([np.repeat(cells, count, 0),
                               np.tile(cells, (count, 1, 1))], 1))


@pytest.mark.parametrize("field, value", [
    ("num_database_tasks", 0), ("archs_per_task", 1), ("train_steps", 0),
    ("train_lr", 0.0), ("train_lr", float("nan")), ("kl_weight", -1.0),
    ("top_k", 0), ("hidden", 2.5), ("num_candidates", True),
    ("reuse_database", "yes")])
def test_config_validation(field, value):
  with pytest.raises(ConfigError, match=f"metad2a.{field}"):
    metad2a.MetaD2AConfig(**{field: value})


def test_config_cross_field_and_unknown_keys():
  with pytest.raises(ConfigError, match="metad2a.top_k"):
    metad2a.MetaD2AConfig(archs_per_task=4, top_k=5)
  with pytest.raises(ConfigError, match="metad2a.nope"):
    config_utils.dataclass_from_config(metad2a.MetaD2AConfig, {"nope": 1},
                                       "metad2a")
  assert metad2a.MetaD2AConfig(kl_weight=0.0).kl_weight == 0.0
  assert get_method("metad2a") is metad2a.METHOD


def test_artifact_round_trip_and_corruption(tmp_path):
  spec = tiny_spec()
  cfg = metad2a.MetaD2AConfig(num_database_tasks=2, archs_per_task=3,
                              top_k=1)
  learner = metad2a.init_learner(spec, cfg, seed=0)
  rng = np.random.default_rng(0)
  database = metad2a.Database(
      rng.uniform(size=(2, 3, 8, 8, 1)).astype(np.float32),
      np.tile(np.arange(3, dtype=np.int32), (2, 1)),
      np.stack([models.random_archs(rng, 3, 1, spec.primitives)
                for _ in range(2)]),
      rng.uniform(size=(2, 3)).astype(np.float32))
  path = tmp_path / metad2a.ARTIFACT_FILENAME
  metad2a.save_artifact(path, learner, database, seed=0)
  loaded, db, header = metad2a.load_artifact(path)
  assert loaded.spec == spec and loaded.cfg == cfg
  assert header["database"]["seed"] == 0
  np.testing.assert_array_equal(db.archs, database.archs)
  for a, b in zip(jax.tree.leaves(learner.networks),
                  jax.tree.leaves(loaded.networks)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  blob = bytearray(path.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  path.write_bytes(bytes(blob))
  with pytest.raises(CheckpointError, match=str(path)):
    metad2a.load_artifact(path)
  path.write_bytes(bytes(blob[:100]))
  with pytest.raises(CheckpointError, match=str(path)):
    metad2a.load_artifact(path)
  with pytest.raises(CheckpointError, match="not found"):
    metad2a.load_artifact(tmp_path / "missing.msgpack")


def _random_arch_accuracy(exp, learner, family, episodes, seed, per_episode):
  """Expected query accuracy of a uniformly random architecture, trained
  exactly like MetaD2A's pick, on the episodes ``score_learner`` draws."""
  rng = np.random.default_rng(seed)
  arch_rng = np.random.default_rng(seed + 1)
  accuracies = []
  for _ in range(episodes):
    episode = family.sample(rng)
    for arch in models.random_archs(arch_rng, per_episode, exp.spec.num_nodes,
                                    exp.spec.primitives):
      logits, _ = metad2a.train_and_predict(
          learner.shared_init, jnp.asarray(arch),
          jnp.asarray(episode.support_x), jnp.asarray(episode.support_y),
          jnp.asarray(episode.query_x), spec=learner.spec,
          steps=learner.cfg.train_steps, lr=float(learner.cfg.train_lr))
      accuracies.append(float(np.mean(np.asarray(jnp.argmax(logits, -1))
                                      == episode.query_y)))
  return float(np.mean(accuracies))


def test_end_to_end_selection_beats_random_architectures(tmp_path):
  """MetaD2A's pick vs a random architecture, same training, same episodes.

  Architecture selection is all MetaD2A adds (every architecture is trained
  from the same shared initialisation with the same budget), so the
  meaningful reference is the expected accuracy of a *random* architecture
  on the same 60 held-out (meta-test class) episodes, averaged over 6
  random architectures per episode to remove most of the baseline's own
  noise. Architecture effects in this 81-architecture space are small (best
  ~+6 points over the average of all architectures, measured), so the
  episodes get 30 queries per class (a 1/90 accuracy resolution) instead of
  3. Measured at seed 0: MetaD2A 0.627, random architecture 0.582, untrained
  MetaD2A 0.600. The untrained learner (random generator and predictor)
  ranks by an arbitrary fixed function, so it is lucky or unlucky by seed and
  no stable reference; it is printed, not asserted. Across method seeds 0-3
  the gain over random was +4.5, +2.0, -0.8, +6.7 points on the meta-test
  classes (and +2.3, +1.6, +3.8, +5.3 on new episodes of the meta-training
  classes): in this tiny space the ranking of architectures transfers only
  partly to unseen digits, so the test pins seed 0 (deterministic) with a
  1-point margin.
  """
  config = tiny_config()
  config.data.num_queries = 30
  exp = train.build_experiment(config)
  cfg = metad2a.MetaD2AConfig(
      num_database_tasks=48, archs_per_task=16, train_steps=10, train_lr=0.5,
      feature_channels=16, hidden=32, embed_dim=8, top_k=2,
      generator_epochs=200, predictor_epochs=200, num_candidates=32)
  method = get_method("metad2a")
  summary = method.meta_train(exp, cfg, str(tmp_path), seed=0, progress=False)
  assert summary["seconds"] > 0
  assert summary["predictor_loss"][1] < summary["predictor_loss"][0]
  learner = method.load_learner(exp, cfg, str(tmp_path))
  assert isinstance(learner, api.Learner)

  episodes, seed = 60, 123
  trained = api.score_learner(learner, exp.test_family, episodes=episodes,
                              seed=seed)
  untrained = api.score_learner(metad2a.init_learner(exp.spec, cfg, seed=0),
                                exp.test_family, episodes=episodes, seed=seed)
  random_acc = _random_arch_accuracy(exp, learner, exp.test_family, episodes,
                                     seed, per_episode=6)
  print(f"MetaD2A {trained['query_accuracy']:.3f} ± {trained['ci95']:.3f}, "
        f"untrained {untrained['query_accuracy']:.3f}, random architecture "
        f"{random_acc:.3f}, database {summary}")
  assert trained["query_accuracy"] >= random_acc + 0.01

  episode = exp.test_family.sample(np.random.default_rng(0))
  result = learner.adapt_and_predict(episode.support_x, episode.support_y,
                                     episode.query_x, seed=0)
  assert result.query_predictions.shape == episode.query_y.shape
  assert result.genotype is not None
  again = learner.adapt_and_predict(episode.support_x, episode.support_y,
                                    episode.query_x, seed=0)
  np.testing.assert_array_equal(result.query_predictions,
                                again.query_predictions)

  with pytest.raises(ConfigError, match="labels"):
    learner.adapt_and_predict(episode.support_x, episode.support_y + 3,
                              episode.query_x, seed=0)
  assert learner.restrict_ways(3) is learner
  two_way = learner.restrict_ways(2)
  assert two_way.spec.num_classes == 2
  assert two_way.shared_init["classifier"]["bias"].shape == (2,)

  # Reusing the stored database retrains only the networks.
  reuse = dataclasses.replace(cfg, reuse_database=True, predictor_epochs=5,
                              generator_epochs=5)
  again = method.meta_train(exp, reuse, str(tmp_path), seed=0)
  assert again["reused_database"]
  assert again["database_mean_accuracy"] == summary["database_mean_accuracy"]
