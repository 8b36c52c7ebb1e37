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
  y_conv, (dparams_conv, dx_conv) = _value_and_grads(conv, x)
  y_shifts, (dparams_shifts, dx_shifts) = _value_and_grads(shifts, x)
  np.testing.assert_allclose(y_shifts, y_conv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx_shifts, dx_conv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dparams_shifts["kernel"],
                             dparams_conv["kernel"], rtol=1e-4, atol=1e-4)


def _value_and_grads(module, x):
  """Output, d(output·r)/dx and /dparams for a fixed random projection r."""
  graphdef, params = nnx.split(module, nnx.Param)

  def project(params, x):
    y = nnx.merge(graphdef, params)(x)
    r = jax.random.normal(jax.random.key(7), y.shape)
    return jnp.sum(y * r), y

  (_, y), grads = jax.value_and_grad(project, argnums=(0, 1),
                                     has_aux=True)(params, x)
  return y, grads


@pytest.mark.parametrize("kernel", [(3, 3), (1, 5), (5, 1)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9])
def test_dense_conv_implementations_agree(kernel, stride, size):
  x = _input(channels=3, size=size)
  conv = ops.Conv(3, 6, kernel, stride, nnx.Rngs(2), impl="conv")
  patches = ops.Conv(3, 6, kernel, stride, nnx.Rngs(2), impl="patches")
  y_conv, (dparams_conv, dx_conv) = _value_and_grads(conv, x)
  y_patches, (dparams_patches, dx_patches) = _value_and_grads(patches, x)
  assert y_patches.shape == y_conv.shape
  np.testing.assert_allclose(y_patches, y_conv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx_patches, dx_conv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dparams_patches["kernel"],
                             dparams_conv["kernel"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9])
def test_pool_implementations_agree(kind, stride, size):
  # Distinct values: max pooling's subgradient is unique without ties.
  values = jax.random.permutation(jax.random.key(3), 3 * size * size * 4)
  x = values.reshape(3, size, size, 4).astype(jnp.float32) / values.size
  window = ops.Pool(kind, stride, impl="window")
  slices = ops.Pool(kind, stride, impl="slices")
  y_window, (_, dx_window) = _value_and_grads(window, x)
  y_slices, (_, dx_slices) = _value_and_grads(slices, x)
  out = (size - 1) // stride + 1
  assert y_slices.shape == y_window.shape == (3, out, out, 4)
  np.testing.assert_allclose(y_slices, y_window, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx_slices, dx_window, rtol=1e-4, atol=1e-4)
  assert np.any(dx_slices != 0)


def test_max_pool_slices_forward_is_exact():
  x = _input(channels=2, size=7)
  pooled = [ops.Pool("max", 1, impl=impl)._reduce_window(x)
            if impl == "window" else
            ops.Pool("max", 1, impl=impl)._separable_slices(x)
            for impl in ("window", "slices")]
  np.testing.assert_array_equal(pooled[0], pooled[1])


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
  with pytest.raises(ConfigError, match="conv impl 'fft'"):
    ops.resolve_conv_impl("fft")
  with pytest.raises(ConfigError, match="pool impl 'sum'"):
    ops.resolve_pool_impl("sum")
