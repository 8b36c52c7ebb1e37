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


def test_running_statistics_follow_the_batches_and_serve_evaluation():
  norm = ops.Normalization(2, running_stats=True, rate=0.25)
  batches = [float(t) + (1.0 + t) * jax.random.normal(
      jax.random.key(t), (8, 5, 5, 2)) for t in range(8)]
  moments = [(np.asarray(b).mean(axis=(0, 1, 2)),
              np.asarray(b).var(axis=(0, 1, 2))) for b in batches]
  for t, x in enumerate(batches):
    # Training mode normalises with the batch's own statistics.
    np.testing.assert_array_equal(norm(x), ops.normalize(x))
    if t == 3:  # the first 1/rate batches: their plain mean, no initial bias
      np.testing.assert_allclose(norm.mean[...], np.mean(
          [m for m, _ in moments[:4]], axis=0), rtol=1e-5)
      np.testing.assert_allclose(norm.var[...], np.mean(
          [v for _, v in moments[:4]], axis=0), rtol=1e-5)
  expected = np.mean([m for m, _ in moments[:4]], axis=0)
  for m, _ in moments[4:]:  # then an exponential average with weight rate
    expected = 0.75 * expected + 0.25 * m
  np.testing.assert_allclose(norm.mean[...], expected, rtol=1e-5)
  assert int(norm.batches[...]) == 8
  # Evaluation mode normalises with the averages, image by image, and
  # leaves them alone; the view shares them with the training-mode module.
  evaluating = nnx.view(norm, use_running_average=True)
  x = batches[-1]
  mean, var = np.asarray(norm.mean[...]), np.asarray(norm.var[...])
  np.testing.assert_allclose(evaluating(x), (np.asarray(x) - mean)
                             / np.sqrt(var + ops.NORM_EPSILON), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(evaluating(x[:1]), evaluating(x)[:1])
  np.testing.assert_array_equal(norm.mean[...], mean)
  assert not norm.use_running_average


def test_ops_keep_statistics_only_when_asked():
  x = _input(channels=4, size=6)
  for name in sorted(set(ops.DARTS_PRIMITIVES + ops.METANAS_PRIMITIVES)):
    for stride in (1, 2):
      plain = ops.make_op(name, 4, stride, nnx.Rngs(0))
      kept = ops.make_op(name, 4, stride, nnx.Rngs(0), running_stats=True)
      assert not jax.tree.leaves(nnx.state(plain, nnx.BatchStat)), name
      normalises = name != "none" and (name, stride) != ("skip_connect", 1)
      assert bool(jax.tree.leaves(nnx.state(kept, nnx.BatchStat))) == (
          normalises), (name, stride)
      # Same weights; in training mode the same function.
      np.testing.assert_array_equal(kept(x), plain(x))
  rngs = nnx.Rngs(0)
  # An operation registered without a running_stats keyword still serves
  # the supernet, and is refused by name for a network with statistics.
  ops.register_op("test_plain_identity")(
      lambda c, s, rngs, *, depthwise_impl: ops.Identity())
  try:
    assert isinstance(ops.make_op("test_plain_identity", 4, 1, rngs),
                      ops.Identity)
    with pytest.raises(ConfigError, match="'test_plain_identity' takes no "
                       "running_stats"):
      ops.make_op("test_plain_identity", 4, 1, rngs, running_stats=True)
  finally:
    del ops.OPS["test_plain_identity"]
  with pytest.raises(ConfigError, match="channel count"):
    ops.Pool("max", 1, running_stats=True)


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
