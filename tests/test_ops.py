"""Every candidate operation: output shapes, gradients, implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from base import ops
from base.errors import ConfigError

ALL_OPS = sorted(ops.OPS)


def _input(channels=4, size=8, batch=3):
  return jax.random.normal(jax.random.key(0), (batch, size, size, channels))


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_op_shape_and_gradient(name, stride):
  x = _input()
  op = ops.make_op(name, 4, stride, nnx.Rngs(0), depthwise_impl="shifts")
  graphdef, params = nnx.split(op, nnx.Param)

  def loss(params, x):
    y = nnx.merge(graphdef, params)(x)
    return jnp.sum(y * jnp.arange(y.size).reshape(y.shape) / y.size), y

  (value, y), (grad_params, grad_x) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(params, x)
  assert y.shape == (3, 8 // stride, 8 // stride, 4)
  assert np.isfinite(value)
  leaves = jax.tree.leaves(grad_params)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  if name == "none":
    assert np.all(y == 0) and np.all(grad_x == 0)
  else:
    assert np.any(grad_x != 0), "the input must receive a gradient"
    assert all(np.any(g != 0) for g in leaves), "every weight must learn"


@pytest.mark.parametrize("kernel,dilation,stride",
                         [(3, 1, 1), (3, 1, 2), (5, 2, 1), (5, 1, 2),
                          (3, 2, 2)])
def test_depthwise_implementations_agree(kernel, dilation, stride):
  x = _input(channels=5, size=9)
  conv = ops.DepthwiseConv(5, kernel, stride, dilation, nnx.Rngs(1),
                           impl="conv")
  shifts = ops.DepthwiseConv(5, kernel, stride, dilation, nnx.Rngs(1),
                             impl="shifts")
  np.testing.assert_array_equal(conv.kernel[...], shifts.kernel[...])
  np.testing.assert_allclose(conv(x), shifts(x), rtol=1e-5, atol=1e-5)


def test_normalize_uses_batch_statistics():
  x = 3.0 + 2.0 * _input(channels=2, size=6, batch=16)
  y = ops.normalize(x)
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_avg_pool_excludes_padding():
  x = jnp.ones((1, 4, 4, 1))
  pool = ops.Pool("avg", 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1),
                                (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  assert float(total[0, 0, 0, 0]) == 4.0  # a corner window sees 4 pixels
  # All-ones input averages to exactly 1 everywhere (padding excluded), so
  # the output is constant before normalisation and 0 after it.
  np.testing.assert_allclose(pool(x), 0.0, atol=1e-6)


def test_unknown_op_is_named():
  with pytest.raises(ConfigError, match="conv_9x9"):
    ops.make_op("conv_9x9", 4, 1, nnx.Rngs(0))
  with pytest.raises(ConfigError, match="depthwise_impl"):
    ops.resolve_depthwise_impl("winograd")
