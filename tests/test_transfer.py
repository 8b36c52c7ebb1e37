"""Transfer to CIFAR-10: adapt, derive, train the derived network, report."""

import json

import numpy as np
import pytest

import base
from base import cli
from base.genotype import Genotype, genotype_param_count
from tests.conftest import REPO_ROOT, tiny_config

CIFAR = REPO_ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"


@pytest.mark.skipif(not CIFAR.exists(), reason="needs ../shared/data/cifar10")
def test_cifar10_meta_train_then_transfer(tmp_path):
  from configs import cifar10
  config = cifar10.get_config()
  shrunk = tiny_config()
  config.supernet = shrunk.supernet
  config.adapt = shrunk.adapt
  config.data.update(dict(path=f"{CIFAR}/train", max_per_class=12,
                          num_shots=1, num_queries=2, num_ways=3,
                          num_test_classes=3))
  config.train.update(num_steps=2, meta_batch_size=1, log_every=1,
                      checkpoint_every=2)
  config.transfer.update(dict(
      train_path=f"{CIFAR}/train", test_path=f"{CIFAR}/test",
      max_train_per_class=30, max_test_per_class=10, adapt_tasks=2,
      adapt_shots=2, channels=4, num_cells=2, epochs=2, batch_size=30,
      random_genotypes=1))
  config.mode = "meta_train,transfer"
  cli.run(config, str(tmp_path))
  results = json.load(open(tmp_path / "transfer.json"))
  assert results["adaptation"]["ways"] == 3
  standalone = results["standalone"]
  assert standalone["train_images"] == 300 and standalone["test_images"] == 100
  assert 0.0 <= standalone["test_accuracy"] <= 1.0
  assert len(standalone["history"]) == 2
  genotype = Genotype.from_dict(results["genotype"])
  assert standalone["parameters"] == genotype_param_count(
      genotype, num_classes=10, in_channels=3, channels=4, num_cells=2,
      stem_multiplier=config.supernet.stem_multiplier)
  # The random-search baseline: another genotype of the same space, the
  # same recipe.
  [baseline] = results["random_genotypes"]
  random_genotype = Genotype.from_dict(baseline["genotype"])
  assert {op for op, _ in random_genotype.normal + random_genotype.reduce} \
      <= set(config.supernet.primitives)
  assert baseline["parameters"] == genotype_param_count(
      random_genotype, num_classes=10, in_channels=3, channels=4, num_cells=2,
      stem_multiplier=config.supernet.stem_multiplier)
  assert 0.0 <= baseline["test_accuracy"] <= 1.0
  assert len(baseline["history"]) == 2
  assert "random genotype 1" in (tmp_path / "transfer.md").read_text()
  assert (tmp_path / "transfer_cells.png").exists()
  # The trained networks are saved; read back, each classifies the test
  # images as scored.
  from base.data import load_image_folder
  test = load_image_folder(f"{CIFAR}/test", 32, max_per_class=10)
  for record, name in ((standalone, "derived"), (baseline, "random_1")):
    path = tmp_path / "transfer_networks" / f"{name}.msgpack"
    assert record["network_file"] == str(path)
    network = base.load_network(path)
    assert network.genotype == Genotype.from_dict(
        results["genotype"] if name == "derived" else baseline["genotype"])
    assert network.class_names == test.class_names
    assert np.mean(network.predict(test.images) == test.labels) == \
        pytest.approx(record["test_accuracy"])
