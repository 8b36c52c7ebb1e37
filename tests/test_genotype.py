"""Genotypes: derivation, JSON, the standalone network and its size."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import base
from base import ops
from base.adaptation import AdaptConfig
from base.data import load_digits
from base.errors import ConfigError
from base.genotype import (Genotype, build_genotype_network, derive_genotype,
                           genotype_param_count)
from base.standalone import (StandaloneTrainConfig, evaluate_classifier,
                             predict_labels, train_classifier)
from base.supernet import count_params

PRIMS = ops.DARTS_PRIMITIVES  # none, max, avg, skip, sep3, sep5, dil3, dil5


def _logits(num_nodes=2):
  edges = sum(2 + i for i in range(num_nodes))
  return np.zeros((edges, len(PRIMS)), np.float32)


def test_derivation_keeps_the_strongest_non_none_edges():
  normal = _logits()
  normal[0, PRIMS.index("none")] = 9.0  # 'none' is never chosen ...
  normal[0, PRIMS.index("sep_conv_3x3")] = 2.0  # ... its best other op is
  normal[1, PRIMS.index("skip_connect")] = 1.0
  normal[2, PRIMS.index("dil_conv_5x5")] = 3.0  # node 1: edges 2, 3, 4
  normal[3, PRIMS.index("max_pool_3x3")] = 0.5
  normal[4, PRIMS.index("avg_pool_3x3")] = 4.0
  reduce = _logits()
  reduce[:, PRIMS.index("sep_conv_5x5")] = 1.0
  genotype = derive_genotype({"normal": normal, "reduce": reduce}, PRIMS, 2)
  assert genotype.normal == (("sep_conv_3x3", 0), ("skip_connect", 1),
                             ("dil_conv_5x5", 0), ("avg_pool_3x3", 2))
  assert genotype.reduce == (("sep_conv_5x5", 0), ("sep_conv_5x5", 1),
                             ("sep_conv_5x5", 0), ("sep_conv_5x5", 1))
  assert genotype.normal_concat == (2, 3)


def test_argmax_rule_keeps_each_edge_whose_mode_is_not_none():
  """The path a hard sample most likely runs: ``none`` can win an edge, so a
  node keeps any number of inputs (padded with ``none`` edges)."""
  num_nodes = 3  # edges: node 0 <- 0, 1; node 1 <- 0..2; node 2 <- 0..3
  normal = _logits(num_nodes)
  normal[:, PRIMS.index("none")] = 1.0  # every edge's mode is none ...
  normal[1, PRIMS.index("sep_conv_3x3")] = 2.0  # ... except these
  for edge, op in ((5, "max_pool_3x3"), (7, "dil_conv_5x5"),
                   (8, "skip_connect")):
    normal[edge, PRIMS.index(op)] = 3.0
  reduce = _logits(num_nodes)
  reduce[:, PRIMS.index("avg_pool_3x3")] = 1.0
  logits = {"normal": normal, "reduce": reduce}
  genotype = derive_genotype(logits, PRIMS, num_nodes, rule="argmax")
  assert genotype.edges_per_node == 4  # reduce's node 2 keeps all four
  assert genotype.node_edges("normal") == [
      [("sep_conv_3x3", 1)] + [("none", 0)] * 3,
      [("none", 0)] * 4,  # node 1 outputs zeros, as in the supernet
      [("max_pool_3x3", 0), ("dil_conv_5x5", 2), ("skip_connect", 3),
       ("none", 0)]]
  assert genotype.node_edges("reduce")[2] == [
      ("avg_pool_3x3", j) for j in range(4)]
  assert str(genotype).startswith(
      "normal: n0<-sep_conv_3x3(1); n1<-none; n2<-max_pool_3x3(0)+")
  assert Genotype.from_json(genotype.to_json()) == genotype
  # The DARTS rule never picks none: two edges per node, whatever none's odds.
  darts = derive_genotype(logits, PRIMS, num_nodes)
  assert darts.edges_per_node == 2
  assert all(op != "none" for op, _ in darts.normal + darts.reduce)
  # Three edges a node: node 0 has only two inputs and is padded.
  three = derive_genotype(logits, PRIMS, num_nodes, edges_per_node=3)
  assert three.num_nodes == num_nodes and three.edges_per_node == 3
  assert [sum(op != "none" for op, _ in edges)
          for edges in three.node_edges("reduce")] == [2, 3, 3]
  with pytest.raises(ConfigError, match="unknown genotype rule 'mode'"):
    derive_genotype(logits, PRIMS, num_nodes, rule="mode")
  with pytest.raises(ConfigError, match="adapt.genotype_rule 'mode'"):
    AdaptConfig(genotype_rule="mode")


def test_json_round_trip():
  genotype = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1)),
                      normal_concat=(2,),
                      reduce=(("max_pool_3x3", 0), ("dil_conv_3x3", 1)),
                      reduce_concat=(2,))
  assert Genotype.from_json(genotype.to_json()) == genotype


@pytest.mark.parametrize("text,match", [
    ('{"normal": [["conv_99x99", 0], ["skip_connect", 1]], "normal_concat": [2],'
     ' "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
     "conv_99x99"),
    ('{"normal": [["skip_connect", 5], ["skip_connect", 1]], "normal_concat": [2],'
     ' "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
     "reads state 5"),
    ('{"normal": []}', "missing keys"),
    ('[1, 2]', "JSON object"),
    ('{not json', "not valid JSON"),
])
def test_malformed_genotypes_are_named(text, match):
  with pytest.raises(ConfigError, match=match):
    Genotype.from_json(text)


@pytest.mark.parametrize("num_cells,reduction_cells,rule", [
    (3, None, "darts"), (2, (1,), "darts"), (2, (1,), "argmax")])
def test_standalone_network_has_the_genotypes_parameter_count(
    num_cells, reduction_cells, rule):
  rng = np.random.default_rng(0)
  logits = {k: rng.normal(size=(5, len(PRIMS))) for k in ("normal", "reduce")}
  logits["normal"][:3, PRIMS.index("none")] = 9.0  # argmax: node 0 is empty
  genotype = derive_genotype(logits, PRIMS, 2, rule=rule)
  kwargs = dict(num_classes=10, in_channels=3, channels=6,
                num_cells=num_cells, reduction_cells=reduction_cells)
  net = build_genotype_network(genotype, rngs=nnx.Rngs(0), **kwargs)
  assert count_params(net) == genotype_param_count(genotype, **kwargs)
  y = net(jnp.ones((2, 8, 8, 3)))
  assert y.shape == (2, 10)


def test_standalone_network_trains_on_digits(tmp_path):
  data = load_digits()
  genotype = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1)),
                      normal_concat=(2,),
                      reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1)),
                      reduce_concat=(2,))
  net = build_genotype_network(genotype, num_classes=10, in_channels=1,
                               channels=8, num_cells=2, reduction_cells=(1,),
                               rngs=nnx.Rngs(0))
  train_x, train_y = data.images[:1200], data.labels[:1200]
  test_x, test_y = data.images[1200:], data.labels[1200:]
  before = evaluate_classifier(net, test_x, test_y)
  history = train_classifier(net, train_x, train_y, StandaloneTrainConfig(
      epochs=3, batch_size=50, learning_rate=0.1))
  after = evaluate_classifier(net, test_x, test_y)
  assert history[-1]["loss"] < history[0]["loss"]
  assert after > 0.8 and after > before + 0.5, (before, after)
  # It normalises with the population statistics it kept while training:
  # each image is classified on its own, whatever the batch around it.
  alone = np.concatenate([predict_labels(net, test_x[i:i + 1])
                          for i in range(0, 40)])
  np.testing.assert_array_equal(alone, predict_labels(net, test_x)[:40])
  by_class = np.argsort(test_y, kind="stable")
  assert evaluate_classifier(net, test_x[by_class], test_y[by_class],
                             batch_size=60) == pytest.approx(after)
  # The same weights normalised with batch statistics (running_stats=False,
  # as the supernet) depend on the batch. A class-sorted test set (as image
  # folders load) still scores as a shuffled one: the batches mix classes
  # (in order, each batch of 60 would hold one class and score near chance).
  transductive = build_genotype_network(
      genotype, num_classes=10, in_channels=1, channels=8, num_cells=2,
      reduction_cells=(1,), running_stats=False, rngs=nnx.Rngs(1))
  nnx.update(transductive, nnx.state(net, nnx.Param))
  shuffled = evaluate_classifier(transductive, test_x, test_y)
  sorted_score = evaluate_classifier(transductive, test_x[by_class],
                                     test_y[by_class], batch_size=60)
  assert shuffled > 0.5 and abs(sorted_score - shuffled) < 0.05, (
      sorted_score, shuffled)
  # Saved and read back (base.load_network), it predicts exactly the same.
  architecture = dict(num_classes=10, in_channels=1, channels=8, num_cells=2,
                      stem_multiplier=3, reduction_cells=(1,), channel_scale=2,
                      running_stats=True)
  base.save_network(tmp_path / "net.msgpack", net, genotype,
                    architecture=architecture, image_shape=(8, 8, 1),
                    class_names=[str(i) for i in range(10)],
                    metadata={"test_accuracy": after})
  loaded = base.load_network(tmp_path / "net.msgpack")
  assert (loaded.genotype, loaded.architecture) == (genotype, architecture)
  assert loaded.class_names[3] == "3"
  assert loaded.metadata == {"test_accuracy": after}
  predicted = loaded.predict(test_x)
  np.testing.assert_array_equal(predicted, predict_labels(net, test_x))
  assert np.mean(predicted == test_y) == pytest.approx(after)
