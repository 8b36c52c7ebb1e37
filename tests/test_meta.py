"""The inner ELBO steps and the compiled meta-step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from base import prior as prior_lib
from base.adaptation import AdaptConfig, adapt_posterior, task_loss
from base.data import load_digits, EpisodeSampler
from base.meta import MetaOptConfig, batch_meta_loss, init_meta_state, meta_step
from tests.conftest import tiny_spec

CFG = AdaptConfig(steps=2, lr_weights=0.5, lr_arch=2.0, eval_samples=2)
OPT = MetaOptConfig(lr_arch=0.01, lr_weights=0.01)


@pytest.fixture(scope="module")
def episodes():
  family = EpisodeSampler(load_digits(), num_ways=3, num_shots=2,
                          num_queries=3)
  return family.sample_batch(np.random.default_rng(0), 2)


@pytest.fixture(scope="module")
def prior():
  return prior_lib.init_prior(tiny_spec(), jax.random.key(0), weight_std=0.05)


def test_inner_steps_reduce_the_support_loss(prior, episodes):
  x, y = episodes.support_x[0], episodes.support_y[0]
  key, temperature = jax.random.key(1), jnp.float32(1.0)
  cfg = AdaptConfig(steps=5, lr_weights=2.0, lr_arch=2.0,
                    weight_posterior="point")
  before, _ = task_loss(prior, prior, key, x, y, temperature, cfg)
  q, _ = jax.jit(adapt_posterior, static_argnames=("cfg",))(
      prior, key, x, y, temperature, cfg=cfg)
  after, _ = task_loss(q, prior, key, x, y, temperature, cfg)
  assert float(after) < float(before) - 0.1
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       q.arch_logits, prior.arch_logits)
  assert all(v > 0 for v in moved.values()), "architecture adapts too"


def test_meta_step_reduces_the_meta_loss_on_a_fixed_problem(prior, episodes):
  state = init_meta_state(prior, OPT)
  key, temperature = jax.random.key(2), jnp.float32(1.0)
  meta_loss = jax.jit(batch_meta_loss, static_argnums=4)
  initial, _ = meta_loss(prior, episodes, key, temperature, CFG)
  losses = []
  for _ in range(15):
    state, metrics = meta_step(state, episodes, key, temperature, cfg=CFG,
                               opt_cfg=OPT)
    losses.append(float(metrics["meta_loss"]))
  final, _ = meta_loss(state.prior, episodes, key, temperature, CFG)
  assert int(state.step) == 15
  assert float(final) < float(initial) - 0.2, (initial, losses, final)
  assert np.all(np.isfinite(losses))


def test_first_and_second_order_meta_gradients(prior, episodes):
  key, temperature = jax.random.key(4), jnp.float32(1.0)
  grads = {}
  for first_order in (True, False):
    cfg = AdaptConfig(steps=1, lr_weights=0.5, lr_arch=2.0,
                      first_order=first_order, weight_posterior="point")
    grads[first_order] = jax.jit(jax.grad(
        lambda p: batch_meta_loss(p, episodes, key, temperature, cfg)[0]))(prior)
  first = jax.tree.leaves(grads[True])
  second = jax.tree.leaves(grads[False])
  assert all(np.all(np.isfinite(g)) for g in first + second)
  difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(first, second))
  scale = max(float(jnp.max(jnp.abs(a))) for a in first)
  # Second order adds the curvature term: close to, but not equal to, first.
  assert 0 < difference < scale


def test_loop_and_vmap_task_batching_agree(prior, episodes):
  key, temperature = jax.random.key(5), jnp.float32(0.7)
  results = {}
  for mode in ("loop", "vmap"):
    opt = MetaOptConfig(lr_arch=0.01, lr_weights=0.01, task_batching=mode)
    state, metrics = meta_step(init_meta_state(prior, opt), episodes, key,
                               temperature, cfg=CFG, opt_cfg=opt)
    results[mode] = (state, metrics)
  (loop_state, loop_metrics), (vmap_state, vmap_metrics) = (
      results["loop"], results["vmap"])
  np.testing.assert_allclose(loop_metrics["meta_loss"],
                             vmap_metrics["meta_loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(loop_state.prior),
                  jax.tree.leaves(vmap_state.prior)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
