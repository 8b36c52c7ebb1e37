"""Tests for ``base.distributions``: Concrete distribution, KL, schedules."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as npd
import pytest

from base import distributions as bd
from base.errors import ConfigError

RelaxedOneHotCategorical = bd.RelaxedOneHotCategorical


def _key(seed: int = 0) -> jax.Array:
  return jax.random.key(seed)


# --------------------------------------------------------------------------
# log_prob
# --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("logit", [-1.5, 0.0, 0.7])
def test_log_prob_k2_matches_numpyro_relaxed_bernoulli(temperature, logit):
  # With logits [0, l], the second coordinate is sigmoid((l + Logistic)/tau),
  # i.e. RelaxedBernoulliLogits(tau, l); the density with respect to the first
  # coordinate has unit Jacobian.
  y = jnp.array([0.02, 0.2, 0.5, 0.77, 0.97])
  value = jnp.stack([1.0 - y, y], axis=-1)
  dist = RelaxedOneHotCategorical(temperature, logits=jnp.array([0.0, logit]))
  expected = npd.RelaxedBernoulliLogits(temperature, logit).log_prob(y)
  np.testing.assert_allclose(dist.log_prob(value), expected, rtol=1e-4,
                             atol=1e-4)


def test_log_prob_invariant_to_logit_shift_and_probs_parameterisation():
  logits = jnp.array([0.3, -1.0, 2.0])
  value = jnp.array([0.2, 0.1, 0.7])
  base = RelaxedOneHotCategorical(0.8, logits=logits).log_prob(value)
  shifted = RelaxedOneHotCategorical(0.8, logits=logits + 5.0).log_prob(value)
  from_probs = RelaxedOneHotCategorical(
      0.8, probs=jax.nn.softmax(logits)).log_prob(value)
  np.testing.assert_allclose(shifted, base, rtol=1e-5)
  np.testing.assert_allclose(from_probs, base, rtol=1e-5)


def test_log_prob_matches_direct_formula():
  logits = np.array([0.3, -1.0, 2.0, 0.1])
  tau = 0.6
  y = np.array([0.1, 0.05, 0.6, 0.25])
  k = len(y)
  log_pi = logits - np.log(np.sum(np.exp(logits)))
  a = log_pi - tau * np.log(y)
  expected = (math.log(math.factorial(k - 1)) + (k - 1) * math.log(tau)
              + np.sum(log_pi - (tau + 1) * np.log(y))
              - k * np.log(np.sum(np.exp(a))))
  got = RelaxedOneHotCategorical(tau, logits=jnp.asarray(logits)).log_prob(y)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_density_integrates_to_one_k2(temperature):
  # Integrate over z = logit(y) so that the (integrable) boundary
  # singularities at small temperature become smooth tails.
  z = jnp.linspace(-80.0, 80.0, 20001)
  y = jax.nn.sigmoid(z)
  value = jnp.stack([jax.nn.sigmoid(-z), y], axis=-1)
  dist = RelaxedOneHotCategorical(temperature, logits=jnp.array([0.4, -0.3]))
  integrand = np.exp(np.asarray(dist.log_prob(value), np.float64)) * (
      np.asarray(y, np.float64) * np.asarray(jax.nn.sigmoid(-z), np.float64))
  total = np.trapezoid(integrand, np.asarray(z, np.float64))
  assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_density_integrates_to_one_k3(temperature):
  # Additive log-ratio coordinates y = softmax([z1, z2, 0]); the Jacobian of
  # (z1, z2) -> (y1, y2) has determinant y1 * y2 * y3.
  grid = jnp.linspace(-40.0, 40.0, 801)
  z1, z2 = jnp.meshgrid(grid, grid, indexing="ij")
  z = jnp.stack([z1, z2, jnp.zeros_like(z1)], axis=-1)
  log_y = jax.nn.log_softmax(z, axis=-1)
  dist = RelaxedOneHotCategorical(
      temperature, logits=jnp.array([0.5, -0.2, 0.1]))
  log_integrand = dist.log_prob(jnp.exp(log_y)) + jnp.sum(log_y, axis=-1)
  integrand = np.exp(np.asarray(log_integrand, np.float64))
  h = float(grid[1] - grid[0])
  total = integrand.sum() * h * h
  assert total == pytest.approx(1.0, abs=5e-3)


def test_log_prob_of_hard_one_hot_is_nan_not_a_number_pretending():
  dist = RelaxedOneHotCategorical(0.5, logits=jnp.zeros(3),
                                  straight_through=True)
  assert np.isnan(np.asarray(dist.log_prob(jnp.array([0.0, 1.0, 0.0]))))


def test_straight_through_log_prob_is_relaxed_density():
  logits = jnp.array([0.2, 1.0, -0.5])
  value = jnp.array([0.3, 0.5, 0.2])
  relaxed = RelaxedOneHotCategorical(0.7, logits=logits)
  hard = RelaxedOneHotCategorical(0.7, logits=logits, straight_through=True)
  np.testing.assert_allclose(hard.log_prob(value), relaxed.log_prob(value))


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------

# Statistical tests share one sample shape so that XLA compiles the sampler
# once for all of them.
_N = 20000
_LOGITS3 = jnp.array([1.0, -0.5, 0.3])


def test_argmax_of_samples_follows_categorical_probabilities():
  probs = np.asarray(jax.nn.softmax(_LOGITS3), np.float64)
  samples = np.asarray(
      RelaxedOneHotCategorical(1.0, logits=_LOGITS3).sample(_key(1), (_N,)))
  counts = np.bincount(samples.argmax(-1), minlength=3)
  chi2 = np.sum((counts - _N * probs) ** 2 / (_N * probs))
  assert chi2 < 13.82  # 99.9% quantile of chi-square with 2 dof.


def test_low_temperature_samples_are_near_one_hot_with_softmax_mean():
  dist = RelaxedOneHotCategorical(0.001, logits=_LOGITS3)
  samples = np.asarray(dist.sample(_key(4), (_N,)))
  assert np.mean(samples.max(-1) > 0.99) > 0.99
  # Gumbel-max: at low temperature E[y] -> softmax(logits).
  np.testing.assert_allclose(samples.mean(0), jax.nn.softmax(_LOGITS3),
                             atol=0.015)


def test_log_prob_of_low_temperature_samples_is_finite():
  # Underflowing coordinates are floored at finfo.tiny, so sample scores stay
  # finite even when the relaxation is nearly discrete.
  dist = RelaxedOneHotCategorical(0.05, logits=_LOGITS3)
  samples = dist.sample(_key(3), (_N,))
  assert np.all(np.isfinite(np.asarray(dist.log_prob(samples))))


def test_samples_lie_on_simplex():
  dist = RelaxedOneHotCategorical(
      jnp.array([0.1, 1.0, 10.0]), logits=jnp.array([[2.0, -1.0, 0.0, 4.0]]))
  samples = dist.sample(_key(2), (500,))
  assert samples.shape == (500, 3, 4)
  assert bool(npd.constraints.simplex(samples).all())
  samples = np.asarray(samples)
  assert np.all(samples > 0.0)
  np.testing.assert_allclose(samples.sum(-1), 1.0, atol=1e-5)


def test_gumbel_softmax_function_matches_distribution_sample():
  logits = jnp.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]])
  temperature = jnp.array([0.5, 2.0])
  direct = bd.gumbel_softmax(_key(6), logits, temperature)
  via_dist = RelaxedOneHotCategorical(temperature, logits=logits).sample(
      _key(6))
  np.testing.assert_array_equal(direct, via_dist)


def test_gumbel_softmax_accepts_integer_logits():
  y = bd.gumbel_softmax(_key(0), jnp.array([1, 2, 3]), 1.0)
  assert jnp.issubdtype(y.dtype, jnp.floating)
  assert float(y.sum()) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------
# Reparameterisation and straight-through gradients
# --------------------------------------------------------------------------


def test_pathwise_gradient_matches_common_random_number_finite_difference():
  key = _key(7)
  weights = jnp.array([0.3, -1.2, 2.0])

  @jax.jit
  def objective(logits, temperature):
    dist = RelaxedOneHotCategorical(temperature, logits=logits)
    return jnp.mean(dist.sample(key, (256,)) @ weights)

  logits = np.array([0.2, -0.1, 0.4], np.float32)
  tau = np.float32(0.7)
  grad_logits, grad_tau = jax.jit(jax.grad(objective, argnums=(0, 1)))(
      logits, tau)
  assert np.all(np.isfinite(grad_logits)) and np.isfinite(grad_tau)
  eps = np.float32(1e-2)
  for i in range(3):
    step = np.zeros(3, np.float32)
    step[i] = eps
    fd = (objective(logits + step, tau) - objective(logits - step, tau)) / (
        2 * eps)
    assert float(grad_logits[i]) == pytest.approx(float(fd), abs=2e-3)
  fd_tau = (objective(logits, tau + eps) - objective(logits, tau - eps)) / (
      2 * eps)
  assert float(grad_tau) == pytest.approx(float(fd_tau), abs=2e-3)


def test_pathwise_gradient_is_unbiased_for_known_value():
  # K = 2, logits [0, l]: y2 = sigmoid(l + L) with L ~ Logistic(0, 1) at
  # tau = 1, so d/dl E[y2] = E[sigmoid'(l + L)], computed here by quadrature.
  l = 0.5
  x = np.linspace(-40.0, 40.0, 40001)
  sig = 1.0 / (1.0 + np.exp(-(l + x)))
  logistic_pdf = np.exp(-x) / (1.0 + np.exp(-x)) ** 2
  expected = np.trapezoid(sig * (1.0 - sig) * logistic_pdf, x)

  def mean_y2(logit):
    dist = RelaxedOneHotCategorical(1.0, logits=jnp.stack([0.0, logit]))
    return jnp.mean(dist.sample(_key(8), (_N,))[:, 1])

  grad = float(jax.jit(jax.grad(mean_y2))(jnp.asarray(l)))
  # Per-sample gradients lie in [0, 1/4]; 20k samples give sd < 1e-3.
  assert grad == pytest.approx(expected, abs=4e-3)


@functools.lru_cache(maxsize=None)
def _linear_objective_and_grad(straight_through: bool):
  """Returns (samples, d/dlogits of sum(w * samples)) for a fixed key."""
  weights = jnp.array([0.5, -1.0, 2.0, 0.25])

  def objective(logits):
    dist = RelaxedOneHotCategorical(0.9, logits=logits,
                                    straight_through=straight_through)
    y = dist.sample(_key(11), (64,))
    return jnp.sum(y * weights), y

  logits = jnp.array([[0.3, 0.1, -0.2, 0.0], [2.0, 0.0, 0.0, 1.0]])
  grad, samples = jax.jit(jax.grad(objective, has_aux=True))(logits)
  return np.asarray(samples), np.asarray(grad)


def test_straight_through_forward_is_exact_one_hot_of_relaxed_argmax():
  y_soft, _ = _linear_objective_and_grad(False)
  y_hard, _ = _linear_objective_and_grad(True)
  assert y_hard.shape == (64, 2, 4)
  np.testing.assert_array_equal(y_hard, np.eye(4)[y_soft.argmax(-1)])
  assert set(np.unique(y_hard).tolist()) == {0.0, 1.0}


def test_straight_through_gradient_equals_relaxed_gradient():
  _, g_soft = _linear_objective_and_grad(False)
  _, g_hard = _linear_objective_and_grad(True)
  assert np.any(g_soft != 0.0)
  np.testing.assert_allclose(g_hard, g_soft, rtol=1e-5, atol=1e-6)


def test_gumbel_softmax_hard_flag_under_jit():
  fn = jax.jit(bd.gumbel_softmax, static_argnames="hard")
  y = fn(_key(12), jnp.array([0.0, 1.0, 2.0]), 0.5, hard=True)
  assert sorted(np.asarray(y).tolist()) == [0.0, 0.0, 1.0]


# --------------------------------------------------------------------------
# Shapes, transformations, validation
# --------------------------------------------------------------------------


def test_shapes_and_temperature_broadcasting():
  dist = RelaxedOneHotCategorical(jnp.array([[0.5], [1.0]]),
                                  logits=jnp.zeros((3, 5)))
  assert dist.batch_shape == (2, 3)
  assert dist.event_shape == (5,)
  assert dist.sample(_key(0), (7,)).shape == (7, 2, 3, 5)
  assert dist.log_prob(jnp.full((5,), 0.2)).shape == (2, 3)
  assert RelaxedOneHotCategorical.infer_shapes(
      (2, 1), logits=(3, 5)) == ((2, 3), (5,))


def test_class_attributes():
  dist = RelaxedOneHotCategorical(1.0, logits=jnp.zeros(3))
  assert dist.has_rsample
  assert dist.support is npd.constraints.simplex
  assert set(dist.reparametrized_params) == {"temperature", "logits", "probs"}
  np.testing.assert_allclose(dist.probs, jnp.full(3, 1 / 3))


def test_expand():
  dist = RelaxedOneHotCategorical(0.5, logits=jnp.array([0.0, 1.0, 2.0]))
  expanded = dist.expand((4, 2))
  assert expanded.batch_shape == (4, 2)
  assert expanded.event_shape == (3,)
  samples = expanded.sample(_key(13), (5,))
  assert samples.shape == (5, 4, 2, 3)
  np.testing.assert_allclose(expanded.log_prob(samples),
                             dist.log_prob(samples), rtol=1e-6)


def test_pytree_jit_keeps_straight_through_static():
  dist = RelaxedOneHotCategorical(0.5, logits=jnp.array([0.0, 1.0, 2.0]),
                                  straight_through=True)
  leaves = jax.tree_util.tree_leaves(dist)
  assert len(leaves) == 2 and all(isinstance(x, jax.Array) for x in leaves)

  seen = []

  @jax.jit
  def sample(d, key):
    seen.append(d.straight_through)  # Runs at trace time: must be static.
    return d.sample(key, (16,))

  samples = sample(dist, _key(14))
  assert seen == [True]
  np.testing.assert_array_equal(samples, dist.sample(_key(14), (16,)))
  assert set(np.unique(np.asarray(samples)).tolist()) == {0.0, 1.0}


def test_vmap_over_batch_of_logits():
  logits = jnp.asarray(np.random.default_rng(15).normal(size=(6, 4)),
                       jnp.float32)
  keys = jax.random.split(_key(16), 6)
  value = jnp.array([0.1, 0.2, 0.3, 0.4])

  def per_row(row_logits, key):
    dist = RelaxedOneHotCategorical(0.7, logits=row_logits)
    sample = dist.sample(key, (3,))
    return sample, dist.log_prob(value)

  samples, log_probs = jax.jit(jax.vmap(per_row))(logits, keys)
  assert samples.shape == (6, 3, 4)
  batched = RelaxedOneHotCategorical(0.7, logits=logits)
  np.testing.assert_allclose(log_probs, batched.log_prob(value), rtol=1e-5)
  np.testing.assert_allclose(samples[2], per_row(logits[2], keys[2])[0],
                             rtol=1e-5, atol=1e-7)


def test_vmap_over_distribution_pytree():
  dist = RelaxedOneHotCategorical(jnp.array([0.5, 1.0]),
                                  logits=jnp.array([[0.0, 1.0], [2.0, 0.0]]))
  value = jnp.array([0.3, 0.7])
  out = jax.vmap(lambda d: d.log_prob(value))(dist)
  np.testing.assert_allclose(out, dist.log_prob(value), rtol=1e-6)


def test_validate_args_rejects_negative_temperature():
  with pytest.raises(ValueError, match="temperature"):
    RelaxedOneHotCategorical(-1.0, logits=jnp.zeros(3), validate_args=True)


def test_validate_args_rejects_non_simplex_probs():
  with pytest.raises(ValueError, match="probs"):
    RelaxedOneHotCategorical(1.0, probs=jnp.array([0.5, 0.6]),
                             validate_args=True)


def test_validate_args_masks_out_of_support_values():
  dist = RelaxedOneHotCategorical(1.0, logits=jnp.zeros(2), validate_args=True)
  with pytest.warns(UserWarning, match="Out-of-support"):
    lp = dist.log_prob(jnp.array([0.5, 0.9]))
  assert float(lp) == -np.inf


def test_constructor_requires_exactly_one_of_logits_probs():
  with pytest.raises(ValueError, match="exactly one"):
    RelaxedOneHotCategorical(1.0)
  with pytest.raises(ValueError, match="exactly one"):
    RelaxedOneHotCategorical(1.0, logits=jnp.zeros(2),
                             probs=jnp.array([0.5, 0.5]))


def test_moments_have_no_closed_form():
  dist = RelaxedOneHotCategorical(1.0, logits=jnp.zeros(3))
  with pytest.raises(NotImplementedError, match="closed-form"):
    _ = dist.mean
  with pytest.raises(NotImplementedError, match="closed-form"):
    _ = dist.variance


# --------------------------------------------------------------------------
# Categorical KL and entropy
# --------------------------------------------------------------------------


def test_categorical_kl_zero_for_equal_logits():
  logits = jnp.asarray(np.random.default_rng(17).normal(size=(5, 7)),
                       jnp.float32)
  np.testing.assert_allclose(bd.categorical_kl(logits, logits), 0.0,
                             atol=1e-6)


def test_categorical_kl_matches_numpy():
  q = np.array([[0.2, -1.0, 1.5], [0.0, 0.0, 3.0]])
  p = np.array([[1.0, 0.5, -0.5], [2.0, -2.0, 0.0]])
  qp = np.exp(q) / np.exp(q).sum(-1, keepdims=True)
  pp = np.exp(p) / np.exp(p).sum(-1, keepdims=True)
  expected = np.sum(qp * np.log(qp / pp), -1)
  got = bd.categorical_kl(jnp.asarray(q), jnp.asarray(p))
  assert got.shape == (2,)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert np.all(np.asarray(got) > 0)


def test_categorical_kl_invariant_to_logit_shift():
  q = jnp.array([0.2, -1.0, 1.5])
  p = jnp.array([1.0, 0.5, -0.5])
  base = bd.categorical_kl(q, p)
  np.testing.assert_allclose(bd.categorical_kl(q + 3.0, p - 7.0), base,
                             rtol=1e-5)


def test_categorical_kl_broadcasts_prior_and_handles_masked_categories():
  q = jnp.array([[0.0, 1.0, -jnp.inf], [0.5, 0.5, 0.5]])
  p = jnp.zeros(3)
  kl = bd.categorical_kl(q, p)
  assert kl.shape == (2,)
  qp = np.array([1.0, np.e]) / (1.0 + np.e)
  expected0 = np.sum(qp * np.log(qp * 3.0))
  np.testing.assert_allclose(kl, [expected0, 0.0], rtol=1e-5, atol=1e-6)
  grad = jax.jit(jax.grad(lambda x: bd.categorical_kl(x, p).sum()))(q)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_categorical_entropy():
  np.testing.assert_allclose(bd.categorical_entropy(jnp.zeros((2, 5))),
                             [math.log(5)] * 2, rtol=1e-6)
  logits = np.array([0.3, -0.7, 1.1])
  pi = np.exp(logits) / np.exp(logits).sum()
  np.testing.assert_allclose(bd.categorical_entropy(jnp.asarray(logits)),
                             -np.sum(pi * np.log(pi)), rtol=1e-5)
  assert float(bd.categorical_entropy(jnp.array([0.0, -jnp.inf]))) == 0.0


# --------------------------------------------------------------------------
# Temperature schedules
# --------------------------------------------------------------------------


def test_constant_schedule():
  schedule = bd.temperature_schedule("constant", 2.0, 0.5, 100)
  for step in (0, 50, 100, 1000):
    assert float(schedule(step)) == pytest.approx(2.0)


def test_exponential_schedule():
  schedule = bd.temperature_schedule("exponential", 5.0, 0.5, 100)
  assert float(schedule(0)) == pytest.approx(5.0, rel=1e-6)
  assert float(schedule(50)) == pytest.approx(math.sqrt(5.0 * 0.5), rel=1e-5)
  assert float(schedule(25)) == pytest.approx(5.0 * 0.1 ** 0.25, rel=1e-5)
  assert float(schedule(100)) == pytest.approx(0.5, rel=1e-5)
  assert float(schedule(10_000)) == pytest.approx(0.5, rel=1e-6)


def test_exponential_schedule_can_increase():
  schedule = bd.temperature_schedule("exponential", 0.5, 2.0, 10)
  assert float(schedule(5)) == pytest.approx(1.0, rel=1e-5)
  assert float(schedule(50)) == pytest.approx(2.0, rel=1e-6)


def test_linear_schedule():
  schedule = bd.temperature_schedule("linear", 1.0, 0.2, 40)
  assert float(schedule(0)) == pytest.approx(1.0)
  assert float(schedule(20)) == pytest.approx(0.6, rel=1e-6)
  assert float(schedule(40)) == pytest.approx(0.2, rel=1e-6)
  assert float(schedule(400)) == pytest.approx(0.2, rel=1e-6)


@pytest.mark.parametrize("kind", ["constant", "exponential", "linear"])
def test_schedules_are_jittable_with_traced_step(kind):
  schedule = bd.temperature_schedule(kind, 3.0, 0.3, 10)
  steps = jnp.arange(0, 15, dtype=jnp.int32)
  jitted = jax.jit(jax.vmap(schedule))(steps)
  eager = np.array([float(schedule(int(s))) for s in steps])
  assert jitted.shape == (15,) and jitted.dtype == jnp.float32
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  assert np.all(np.asarray(jitted) > 0)


def test_schedule_unknown_kind_raises_config_error():
  with pytest.raises(ConfigError, match="'cosine'.*'exponential'"):
    bd.temperature_schedule("cosine", 1.0, 0.1, 10)


@pytest.mark.parametrize("initial,final", [(0.0, 0.1), (1.0, -0.5),
                                           (float("nan"), 1.0)])
def test_schedule_non_positive_temperature_raises_config_error(initial, final):
  with pytest.raises(ConfigError, match="positive"):
    bd.temperature_schedule("linear", initial, final, 10)


def test_schedule_non_positive_steps_raises_config_error():
  with pytest.raises(ConfigError, match="steps=0"):
    bd.temperature_schedule("exponential", 1.0, 0.1, 0)
  # A constant schedule does not use ``steps``.
  assert float(bd.temperature_schedule("constant", 1.0, 1.0, 0)(5)) == 1.0


def test_config_error_messages_are_one_line():
  with pytest.raises(ConfigError) as info:
    bd.temperature_schedule("bogus", 1.0, 0.1, 10)
  assert "\n" not in str(info.value)
