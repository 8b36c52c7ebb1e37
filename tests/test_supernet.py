"""The supernet: shapes, gradients, the mixture, the spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from base.errors import ConfigError
from base.supernet import (SupernetSpec, apply_supernet, count_params,
                           init_arch_logits, init_supernet_weights)
from tests.conftest import tiny_spec


def _arch(spec, key=None):
  logits = init_arch_logits(spec)
  if key is not None:
    logits = {k: jax.random.normal(jax.random.fold_in(key, i), v.shape)
              for i, (k, v) in enumerate(sorted(logits.items()))}
  return {k: jax.nn.softmax(v, -1) for k, v in logits.items()}


def test_supernet_shapes_and_gradients():
  spec = tiny_spec(num_nodes=2)
  weights = init_supernet_weights(spec, jax.random.key(0))
  arch = _arch(spec, jax.random.key(1))
  x = jax.random.uniform(jax.random.key(2), (6, 8, 8, 1))
  assert spec.arch_shape == (5, 4)
  logits = apply_supernet(spec, weights, arch, x)
  assert logits.shape == (6, 3)

  def loss(weights, arch):
    return jnp.mean(jax.nn.log_softmax(apply_supernet(spec, weights, arch, x))[:, 0])

  grad_w, grad_a = jax.jit(jax.grad(loss, argnums=(0, 1)))(weights, arch)
  for name in ("normal", "reduce"):
    g = np.asarray(grad_a[name])
    assert g.shape == spec.arch_shape and np.all(np.isfinite(g))
    assert np.all(g[:, 0] == 0), "'none' contributes nothing"
    assert np.all(np.abs(g[:, 1:]) > 0), "every other op gets a gradient"
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad_w))


def test_one_hot_architecture_selects_a_single_op():
  """With all weight on `none` in every edge, cells output zeros."""
  spec = tiny_spec()
  weights = init_supernet_weights(spec, jax.random.key(0))
  none_only = {k: jnp.zeros(spec.arch_shape).at[:, 0].set(1.0)
               for k in ("normal", "reduce")}
  x = jax.random.uniform(jax.random.key(2), (4, 8, 8, 1))
  logits = apply_supernet(spec, weights, none_only, x)
  bias = weights["classifier"]["bias"]
  np.testing.assert_allclose(logits, jnp.broadcast_to(bias, logits.shape),
                             atol=1e-6)


def test_spec_round_trip_and_defaults():
  spec = SupernetSpec(num_classes=5, num_cells=8)
  assert spec.reduction_cells == (2, 5)
  assert spec.num_edges == 14 and spec.num_ops == 8
  assert SupernetSpec.from_dict(spec.to_dict()) == spec
  assert count_params(init_supernet_weights(tiny_spec(), jax.random.key(0))) > 0


@pytest.mark.parametrize("fields,match", [
    (dict(primitives=("none", "warp_drive")), "warp_drive"),
    (dict(channels=0), "channels"),
    (dict(reduction_cells=(7,)), "reduction_cells"),
])
def test_spec_errors_name_the_problem(fields, match):
  with pytest.raises(ConfigError, match=match):
    SupernetSpec(num_classes=3, num_cells=2, **fields)
  with pytest.raises(ConfigError, match="unknown supernet field"):
    SupernetSpec.from_dict({"num_classes": 3, "chanels": 4})
