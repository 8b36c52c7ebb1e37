"""Saved standalone networks: refusals of bad files and images.

The round trip of a trained network is tested with its training
(tests/test_genotype.py::test_standalone_network_trains_on_digits).
"""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import base
from base import reports, serialization
from base.errors import CheckpointError, ConfigError, DataError
from base.genotype import Genotype, build_genotype_network
from base.standalone import predict_labels

GENOTYPE = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1)),
                    normal_concat=(2,),
                    reduce=(("max_pool_3x3", 0), ("dil_conv_3x3", 1)),
                    reduce_concat=(2,))
ARCHITECTURE = dict(num_classes=10, in_channels=1, channels=4, num_cells=2,
                    stem_multiplier=3, reduction_cells=(1,), channel_scale=2)
CLASS_NAMES = tuple(f"digit {i}" for i in range(10))


def _save(path, network, **overrides):
  kwargs = dict(architecture=ARCHITECTURE, image_shape=(8, 8, 1),
                class_names=CLASS_NAMES, metadata={"note": "test"})
  kwargs.update(overrides)
  base.save_network(path, network, GENOTYPE, **kwargs)


def test_predict_names_the_expected_image_shape(tmp_path):
  network = build_genotype_network(GENOTYPE, **ARCHITECTURE, rngs=nnx.Rngs(0))
  _save(tmp_path / "net.msgpack", network)
  loaded = base.load_network(tmp_path / "net.msgpack")
  with pytest.raises(DataError, match=r"shape \(3, 8, 8, 3\).*\[n, 8, 8, 1\]"):
    loaded.predict(np.zeros((3, 8, 8, 3), np.float32))
  with pytest.raises(DataError, match=r"\[n, 8, 8, 1\]"):
    loaded.predict(np.zeros((8, 8, 1), np.float32))


def test_architecture_left_out_takes_the_builders_defaults(tmp_path):
  network = build_genotype_network(GENOTYPE, num_classes=10, in_channels=1,
                                   channels=4, num_cells=3, rngs=nnx.Rngs(0))
  _save(tmp_path / "net.msgpack", network,
        architecture=dict(num_classes=10, in_channels=1, channels=4,
                          num_cells=3))
  loaded = base.load_network(tmp_path / "net.msgpack")
  assert loaded.architecture == dict(
      num_classes=10, in_channels=1, channels=4, num_cells=3,
      stem_multiplier=3, reduction_cells=(1, 2), channel_scale=2,
      running_stats=True)
  with pytest.raises(ConfigError, match=r"unknown \['width'\]"):
    _save(tmp_path / "x.msgpack", network, architecture=dict(
        num_classes=10, in_channels=1, channels=4, num_cells=3, width=2))


def test_bad_network_files_are_refused_by_name(tmp_path):
  network = build_genotype_network(GENOTYPE, **ARCHITECTURE, rngs=nnx.Rngs(0))
  path = tmp_path / "net.msgpack"
  _save(path, network)
  blob = path.read_bytes()
  (tmp_path / "cut.msgpack").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(CheckpointError, match="cut.msgpack"):
    base.load_network(tmp_path / "cut.msgpack")
  with pytest.raises(CheckpointError, match="not found"):
    base.load_network(tmp_path / "missing.msgpack")
  # A prior is not a network.
  spec = base.SupernetSpec(num_classes=3, channels=4, num_cells=1,
                           num_nodes=1, reduction_cells=())
  base.save_prior(tmp_path / "prior.msgpack",
                  base.init_prior(spec, jax.random.key(0)))
  with pytest.raises(CheckpointError, match="not a standalone network"):
    base.load_network(tmp_path / "prior.msgpack")
  # A header that describes another network than the weights stored.
  weights, header = serialization.read_arrays_file(
      path, kind="standalone network", format_name="base-standalone-network",
      version=2)
  header["architecture"]["channels"] = 6
  serialization.write_arrays_file(tmp_path / "other.msgpack", weights, header)
  with pytest.raises(CheckpointError, match="do not fit the network"):
    base.load_network(tmp_path / "other.msgpack")
  header["architecture"]["channels"] = 4
  header["class_names"] = ["only one"]
  serialization.write_arrays_file(tmp_path / "names.msgpack", weights, header)
  with pytest.raises(CheckpointError, match="1 class names for 10 classes"):
    base.load_network(tmp_path / "names.msgpack")
  with pytest.raises(ConfigError, match="missing.*'num_cells'"):
    _save(tmp_path / "x.msgpack", network,
          architecture={k: v for k, v in ARCHITECTURE.items()
                        if k != "num_cells"})
  assert not (tmp_path / "x.msgpack").exists()


def test_keep_earlier_keeps_a_folder_with_the_files_of_its_set(tmp_path):
  (tmp_path / "transfer.json").write_text(json.dumps({"run": 1}))
  (tmp_path / "transfer_networks").mkdir()
  (tmp_path / "transfer_networks" / "derived.msgpack").write_bytes(b"1")
  suffix = reports.keep_earlier(str(tmp_path),
                                ("transfer.json", "transfer_networks"))
  assert json.loads((tmp_path / f"transfer.{suffix}.json").read_text()) == {
      "run": 1}
  assert (tmp_path / f"transfer_networks.{suffix}" / "derived.msgpack"
          ).read_bytes() == b"1"
  assert not (tmp_path / "transfer_networks").exists()


def test_running_stats_is_read_off_the_network_and_checked(tmp_path):
  plain = build_genotype_network(GENOTYPE, **ARCHITECTURE, running_stats=False,
                                 rngs=nnx.Rngs(0))
  _save(tmp_path / "plain.msgpack", plain)  # running_stats left out
  assert base.load_network(tmp_path / "plain.msgpack").architecture[
      "running_stats"] is False
  with pytest.raises(ConfigError, match="running_stats=True, but the network "
                     "keeps no population statistics"):
    _save(tmp_path / "x.msgpack", plain,
          architecture={**ARCHITECTURE, "running_stats": True})
  assert not (tmp_path / "x.msgpack").exists()


def test_a_network_of_format_version_1_still_loads(tmp_path):
  """Files written before population statistics: weights only, no
  running_stats field; they load as batch-statistics networks."""
  plain = build_genotype_network(GENOTYPE, **ARCHITECTURE, running_stats=False,
                                 rngs=nnx.Rngs(3))
  header = {"format": "base-standalone-network", "version": 1,
            "genotype": GENOTYPE.to_dict(), "architecture": ARCHITECTURE,
            "image_shape": [8, 8, 1], "class_names": list(CLASS_NAMES),
            "metadata": {"test_accuracy": 0.5}}
  serialization.write_arrays_file(
      tmp_path / "v1.msgpack", nnx.to_pure_dict(nnx.state(plain, nnx.Param)),
      header)
  loaded = base.load_network(tmp_path / "v1.msgpack")
  assert loaded.architecture == {**ARCHITECTURE, "running_stats": False}
  images = np.random.default_rng(0).random((12, 8, 8, 1), np.float32)
  np.testing.assert_array_equal(loaded.predict(images),
                                predict_labels(plain, images))
  header["version"] = 7
  serialization.write_arrays_file(tmp_path / "v7.msgpack", {}, header)
  with pytest.raises(CheckpointError, match="version 7, expected 1 or 2"):
    base.load_network(tmp_path / "v7.msgpack")
