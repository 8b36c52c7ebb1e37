"""The prior pytree: KL terms, sampling, and the saved file format."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as npd
import pytest

import base
from base import prior as prior_lib
from base.errors import CheckpointError
from tests.conftest import tiny_spec


@pytest.fixture(scope="module")
def prior():
  p = prior_lib.init_prior(tiny_spec(), jax.random.key(0), weight_std=0.05)
  # Make every array distinct so a shuffled load could not pass.
  return jax.tree.map(
      lambda x: x + 0.01 * jax.random.normal(jax.random.key(x.size), x.shape),
      p)


def test_save_load_round_trip_is_exact(prior, tmp_path):
  path = tmp_path / "prior.msgpack"
  base.save_prior(path, prior, metadata={"step": 7})
  loaded, metadata = base.load_prior(path, return_metadata=True)
  assert loaded.spec == prior.spec and metadata == {"step": 7}
  assert jax.tree.structure(loaded) == jax.tree.structure(prior)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(prior)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  plain = loaded.to_dict()  # a plain nested dict of arrays
  assert set(plain) == {"arch_logits", "weight_mean", "weight_log_std"}
  assert isinstance(plain["weight_mean"]["cells"][0], dict)


def test_corrupt_files_are_named(prior, tmp_path):
  path = tmp_path / "prior.msgpack"
  base.save_prior(path, prior)
  blob = path.read_bytes()
  cases = {
      "truncated": blob[: len(blob) // 2],
      "garbage": b"this is not a prior",
      "flipped": blob[:-20] + bytes([blob[-20] ^ 0xFF]) + blob[-19:],
  }
  for name, data in cases.items():
    bad = tmp_path / f"{name}.msgpack"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match=str(bad)):
      base.load_prior(bad)
  with pytest.raises(CheckpointError, match="not found"):
    base.load_prior(tmp_path / "missing.msgpack")


def test_saving_over_a_prior_is_atomic(prior, tmp_path):
  path = tmp_path / "prior.msgpack"
  base.save_prior(path, prior)
  before = path.read_bytes()
  bad = prior.replace(weight_mean={"not": object()})
  with pytest.raises(Exception):
    base.save_prior(path, bad)
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["prior.msgpack"]


def test_prior_with_another_spec_is_rejected(prior, tmp_path):
  path = tmp_path / "prior.msgpack"
  other = prior.replace(spec=tiny_spec(channels=8))  # arrays do not fit
  base.save_prior(path, other)
  with pytest.raises(CheckpointError, match="does not match its supernet"):
    base.load_prior(path)


def test_kl_terms(prior):
  assert float(prior_lib.arch_kl(prior, prior)) == 0.0
  assert float(prior_lib.weight_kl(prior, prior)) == pytest.approx(0.0,
                                                                   abs=1e-3)
  shifted = prior.replace(
      weight_mean=jax.tree.map(lambda m: m + 0.1, prior.weight_mean),
      weight_log_std=jax.tree.map(lambda s: s + 0.3, prior.weight_log_std),
      arch_logits=jax.tree.map(lambda a: a.at[:, 1].add(1.0),
                               prior.arch_logits))
  expected = sum(
      float(jnp.sum(npd.kl_divergence(npd.Normal(mq, jnp.exp(sq)),
                                      npd.Normal(mp, jnp.exp(sp)))))
      for mq, sq, mp, sp in zip(jax.tree.leaves(shifted.weight_mean),
                                jax.tree.leaves(shifted.weight_log_std),
                                jax.tree.leaves(prior.weight_mean),
                                jax.tree.leaves(prior.weight_log_std)))
  assert float(prior_lib.weight_kl(shifted, prior)) == pytest.approx(
      expected, rel=1e-4)
  assert float(prior_lib.arch_kl(shifted, prior)) > 0
  point = prior_lib.weight_kl(shifted, prior, "point")
  point_again = prior_lib.weight_kl(prior, prior, "point")
  assert float(point) > float(point_again)


def test_weight_samples_follow_the_gaussian(prior):
  samples = jax.vmap(lambda k: prior_lib.sample_weights(prior, k))(
      jax.random.split(jax.random.key(3), 400))
  kernel = samples["classifier"]["kernel"]
  mean = prior.weight_mean["classifier"]["kernel"]
  std = np.exp(prior.weight_log_std["classifier"]["kernel"])
  np.testing.assert_allclose(kernel.mean(0), mean, atol=4 * std.max() / 20)
  np.testing.assert_allclose(kernel.std(0), std, rtol=0.2)
  assert prior_lib.sample_weights(prior, jax.random.key(0), "point") is (
      prior.weight_mean)


def test_precomputed_noise_gives_the_same_sample(prior):
  # The stepwise CPU programs draw the noise in a program of their own.
  key = jax.random.key(5)
  drawn_here = prior_lib.sample_weights(prior, key)
  noise = jax.jit(prior_lib.weight_noise)(prior.weight_mean, key)
  passed_in = prior_lib.sample_weights(prior, jax.random.key(99),
                                       noise=noise)
  for a, b in zip(jax.tree.leaves(drawn_here), jax.tree.leaves(passed_in)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  other = prior_lib.sample_weights(prior, jax.random.key(6))
  assert not np.allclose(other["classifier"]["kernel"],
                         drawn_here["classifier"]["kernel"])


def test_arch_shift_is_the_mean_per_edge_total_variation(prior):
  assert prior_lib.arch_shift(prior, prior) == 0.0
  logits = jax.device_get(prior.arch_logits)
  num_edges = sum(v.shape[0] for v in logits.values())
  # One edge of the normal cell moves all its mass onto one op (near-one-hot
  # from near-uniform): its distance is 1 - p(that op) under the prior.
  moved = {k: np.array(v) for k, v in logits.items()}
  moved["normal"][0] = -1e4
  moved["normal"][0, 2] = 0.0
  posterior = prior.replace(arch_logits=moved)
  before = jax.nn.softmax(logits["normal"][0])[2]
  np.testing.assert_allclose(prior_lib.arch_shift(prior, posterior),
                             (1 - before) / num_edges, rtol=1e-5)
  # Symmetric, and shifting every logit of an edge by a constant is no move.
  np.testing.assert_allclose(prior_lib.arch_shift(posterior, prior),
                             prior_lib.arch_shift(prior, posterior))
  shifted = prior.replace(arch_logits={k: v + 3.0 for k, v in logits.items()})
  assert prior_lib.arch_shift(prior, shifted) < 1e-6  # float32 rounding
