"""Candidate operations of the DARTS-style search space, and their registry.

Every operation is a Flax NNX module ``op(x) -> y`` mapping NHWC activations
with ``channels`` channels to the same number of channels, at ``stride`` 1 or
2. The registry ``OPS`` maps an operation's name (as it appears in a genotype)
to a constructor ``(channels, stride, rngs, *, depthwise_impl) -> nnx.Module``;
a new candidate operation is one new entry (see :func:`register_op`).

Normalisation is batch normalisation *without affine parameters*
(:class:`Normalization`). In the supernet it has no running statistics
(``normalize``): every forward pass normalises with the statistics of the
batch it sees. In few-shot meta-learning this is the usual transductive choice
(MAML, MetaNAS): each task's support and query batches are normalised on their
own, and no batch statistics need to be adapted or meta-learned. DARTS also
uses ``affine=False`` in its search phase. A standalone network, trained once
and then asked about any number of images, is built with ``running_stats``:
it keeps population statistics while it trains and normalises with them in
evaluation mode (``nnx.view(model, use_running_average=True)``), so an image's
prediction does not depend on the batch it comes in.

Three kinds of layer have two implementations each, with the same
parameters and the same result (tested), because XLA:CPU and accelerators
favour different forms; ``"auto"`` picks by the default backend:

* depthwise convolutions (inside separable and dilated convolutions):
  ``"conv"`` uses ``lax.conv_general_dilated`` with ``feature_group_count``,
  ``"shifts"`` writes the convolution as k*k shifted multiply-adds. XLA:CPU's
  grouped convolution is tens of times slower than the shifted form, while
  on GPU/TPU the grouped convolution is the fast one.
* dense convolutions (:class:`Conv`: the stem, ``conv_1x5_5x1``):
  ``"conv"`` or ``"patches"`` (im2col and one matmul), because XLA:CPU's
  kernel gradient of a convolution is pathologically slow.
* 3x3 pooling (:class:`Pool`): ``"window"`` (``lax.reduce_window``) or
  ``"slices"`` (separable shifted slices), because XLA:CPU's max-pool
  gradient (``select_and_scatter``) is slow.

``benchmarks/op_costs.py`` times every operation in both forms.
"""

from __future__ import annotations

import inspect
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from base.errors import ConfigError

NORM_EPSILON = 1e-5
DEPTHWISE_IMPLS = ("auto", "conv", "shifts")
CONV_IMPLS = ("auto", "conv", "patches")
POOL_IMPLS = ("auto", "window", "slices")


#: Weight of a new batch in :class:`Normalization`'s running averages once
#: past its first batches (PyTorch's BatchNorm ``momentum`` default).
RUNNING_STATS_RATE = 0.1


def _batch_moments(x32: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and (biased) variance over (N, H, W), shape [C]."""
  return jnp.mean(x32, axis=(0, 1, 2)), jnp.var(x32, axis=(0, 1, 2))


def _standardize(x: jax.Array, x32: jax.Array, mean: jax.Array,
                 var: jax.Array) -> jax.Array:
  return ((x32 - mean) * jax.lax.rsqrt(var + NORM_EPSILON)).astype(x.dtype)


def normalize(x: jax.Array) -> jax.Array:
  """Batch norm over (N, H, W) with batch statistics and no affine params.

  Statistics are float32 whatever ``x``'s dtype (bf16 sums over a batch
  lose too much); the result has ``x``'s dtype.
  """
  x32 = x.astype(jnp.float32)
  return _standardize(x, x32, *_batch_moments(x32))


class Normalization(nnx.Module):
  """:func:`normalize` as a layer, with population statistics on request.

  Without ``running_stats`` (the supernet) it is :func:`normalize` and holds
  no state, so it adds nothing to a prior's weights. With ``running_stats``
  it keeps per-channel ``mean`` and ``var`` (``nnx.BatchStat``): in training
  mode (``use_running_average=False``, as built) it normalises with the
  batch's statistics, exactly as :func:`normalize`, and folds them into the
  running averages, weighting batch ``t`` (counted from 1) by
  ``max(1/t, rate)``: the plain mean of the first ``1/rate`` batches, so no
  trace of the zero/one initial values stays, then an exponential average
  that follows the weights as they train. In evaluation mode
  (``use_running_average=True``: ``nnx.view`` or ``Module.eval``) it
  normalises with the averages and leaves them as they are.
  """

  def __init__(self, channels: int, *, running_stats: bool = False,
               rate: float = RUNNING_STATS_RATE):
    self.running_stats = running_stats
    self.use_running_average = False
    if running_stats:
      if not 0.0 < rate <= 1.0:
        raise ConfigError(f"running statistics rate {rate} is not in (0, 1]")
      self.rate = rate
      self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
      self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
      self.batches = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def set_view(self, use_running_average: bool | None = None):
    """``nnx.view(model, use_running_average=...)`` sets the mode."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def __call__(self, x: jax.Array) -> jax.Array:
    if not self.running_stats:
      return normalize(x)
    x32 = x.astype(jnp.float32)
    if self.use_running_average:
      return _standardize(x, x32, self.mean[...], self.var[...])
    mean, var = _batch_moments(x32)
    batches = self.batches[...] + 1
    weight = jnp.maximum(1.0 / batches.astype(jnp.float32), self.rate)
    self.mean[...] += weight * (jax.lax.stop_gradient(mean) - self.mean[...])
    self.var[...] += weight * (jax.lax.stop_gradient(var) - self.var[...])
    self.batches[...] = batches
    return _standardize(x, x32, mean, var)


def _resolve_impl(what: str, impl: str, choices: tuple[str, ...],
                  on_cpu: str, elsewhere: str) -> str:
  """Checks ``impl`` and maps ``"auto"`` to the form measured fastest on the
  default backend (``on_cpu`` for XLA:CPU, ``elsewhere`` for GPU/TPU)."""
  if impl not in choices:
    raise ConfigError(f"unknown {what} {impl!r}; expected one of {choices}")
  if impl == "auto":
    return on_cpu if jax.default_backend() == "cpu" else elsewhere
  return impl


def resolve_depthwise_impl(impl: str) -> str:
  """The depthwise convolution's form: "shifts" on CPU, else "conv"."""
  return _resolve_impl("depthwise_impl", impl, DEPTHWISE_IMPLS, "shifts",
                       "conv")


def resolve_conv_impl(impl: str) -> str:
  """The dense convolution's form: "patches" on CPU, else "conv"."""
  return _resolve_impl("conv impl", impl, CONV_IMPLS, "patches", "conv")


def resolve_pool_impl(impl: str) -> str:
  """The 3x3 pooling's form: "slices" on CPU, else "window"."""
  return _resolve_impl("pool impl", impl, POOL_IMPLS, "slices", "window")


def _he_normal(key: jax.Array, shape: tuple[int, ...], fan_in: int,
               dtype=jnp.float32) -> jax.Array:
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in)


class DepthwiseConv(nnx.Module):
  """Depthwise k x k convolution (one filter per channel), 'SAME'-style padding.

  The kernel has the shape ``(k, k, 1, C)`` of a grouped ``nnx.Conv``, so the
  two implementations share parameters exactly.
  """

  def __init__(self, channels: int, kernel_size: int, stride: int,
               dilation: int, rngs: nnx.Rngs, *, impl: str = "auto"):
    self.kernel_size = kernel_size
    self.stride = stride
    self.dilation = dilation
    self.impl = resolve_depthwise_impl(impl)
    self.kernel = nnx.Param(_he_normal(
        rngs.params(), (kernel_size, kernel_size, 1, channels),
        fan_in=kernel_size * kernel_size))

  @property
  def padding(self) -> int:
    return self.dilation * (self.kernel_size - 1) // 2

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(x.dtype)
    if self.impl == "conv":
      return jax.lax.conv_general_dilated(
          x, kernel, window_strides=(self.stride, self.stride),
          padding=[(self.padding, self.padding)] * 2,
          rhs_dilation=(self.dilation, self.dilation),
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=x.shape[-1])
    return self._shifted_sum(x, kernel)

  def _shifted_sum(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The same convolution as k*k strided slices times per-channel taps."""
    pad = self.padding
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    size = self.kernel_size
    taps = kernel.reshape(size * size, kernel.shape[-1])  # row-major taps
    windows = shifted_windows(x, (size, size), self.stride, self.dilation)
    out = None
    for window, tap in zip(windows, taps):
      term = window * tap
      out = term if out is None else out + term
    return out


def shifted_windows(x: jax.Array, kernel_size: tuple[int, int], stride: int,
                    dilation: int = 1) -> list[jax.Array]:
  """The kh*kw strided windows of an already padded NHWC ``x``, one per
  kernel tap in row-major order: window ``(i, j)`` holds the inputs that tap
  ``(i, j)`` of a (dilated, strided) kh x kw convolution multiplies."""
  n, h, w, c = x.shape
  kh, kw = kernel_size
  out_h = (h - dilation * (kh - 1) - 1) // stride + 1
  out_w = (w - dilation * (kw - 1) - 1) // stride + 1
  windows = []
  for i in range(kh):
    for j in range(kw):
      top, left = i * dilation, j * dilation
      windows.append(jax.lax.slice(
          x, (0, top, left, 0),
          (n, top + (out_h - 1) * stride + 1, left + (out_w - 1) * stride + 1,
           c), (1, stride, stride, 1)))
  return windows


class PointwiseConv(nnx.Module):
  """1x1 convolution without bias, written as a matmul over channels."""

  def __init__(self, in_channels: int, out_channels: int, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_he_normal(
        rngs.params(), (in_channels, out_channels), fan_in=in_channels))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x @ self.kernel[...].astype(x.dtype)


class Conv(nnx.Module):
  """Dense k1 x k2 convolution without bias (stem and plain conv ops).

  Two implementations with the same parameters and result (``impl``):
  ``"conv"`` is ``lax.conv_general_dilated``; ``"patches"`` gathers the
  k1*k2 shifted (strided) windows side by side on the channel axis and
  multiplies by the kernel reshaped to ``[k1*k2*C_in, C_out]`` (im2col), so
  that the forward pass and both gradients are matrix products. On XLA:CPU
  the kernel gradient of ``conv_general_dilated`` (a convolution whose
  window is the whole image) was measured at up to 190 ms for one 5x1 conv
  on 20 images of 28x28x28, against a few ms as a matmul; ``"auto"`` picks
  ``"patches"`` on CPU and ``"conv"`` elsewhere.
  """

  def __init__(self, in_channels: int, out_channels: int,
               kernel_size: tuple[int, int], stride: int, rngs: nnx.Rngs,
               *, impl: str = "auto"):
    self.stride = stride
    self.kernel_size = tuple(kernel_size)
    self.impl = resolve_conv_impl(impl)
    self.kernel = nnx.Param(_he_normal(
        rngs.params(), (*kernel_size, in_channels, out_channels),
        fan_in=kernel_size[0] * kernel_size[1] * in_channels))

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(x.dtype)
    pads = [((k - 1) // 2, (k - 1) // 2) for k in self.kernel_size]
    if self.impl == "conv":
      return jax.lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), pads,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    windows = shifted_windows(jnp.pad(x, ((0, 0), *pads, (0, 0))),
                              self.kernel_size, self.stride)
    patches = windows[0] if len(windows) == 1 else jnp.concatenate(
        windows, axis=-1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


class Zero(nnx.Module):
  """The ``none`` operation: zeros of the output shape (no edge)."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


class Identity(nnx.Module):
  """The ``skip_connect`` operation at stride 1."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class FactorizedReduce(nnx.Module):
  """Halves the resolution with two offset stride-2 1x1 convs (DARTS).

  Used for ``skip_connect`` at stride 2 and to preprocess the output of the
  cell before a reduction cell. ``out_channels`` must be even.
  """

  def __init__(self, in_channels: int, out_channels: int, rngs: nnx.Rngs, *,
               running_stats: bool = False):
    if out_channels % 2:
      raise ConfigError(
          f"FactorizedReduce needs an even channel count, got {out_channels}")
    self.conv_a = PointwiseConv(in_channels, out_channels // 2, rngs)
    self.conv_b = PointwiseConv(in_channels, out_channels // 2, rngs)
    self.norm = Normalization(out_channels, running_stats=running_stats)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(x)
    if x.shape[1] % 2 or x.shape[2] % 2:
      x = jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2),
                      (0, 0)))
    a = self.conv_a(x[:, ::2, ::2, :])
    b = self.conv_b(x[:, 1::2, 1::2, :])
    return self.norm(jnp.concatenate([a, b], axis=-1))


class ReLUConvNorm(nnx.Module):
  """ReLU -> 1x1 conv -> norm: the preprocessing of a cell's inputs."""

  def __init__(self, in_channels: int, out_channels: int, rngs: nnx.Rngs, *,
               running_stats: bool = False):
    self.conv = PointwiseConv(in_channels, out_channels, rngs)
    self.norm = Normalization(out_channels, running_stats=running_stats)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(jax.nn.relu(x)))


class DilatedConv(nnx.Module):
  """ReLU -> depthwise k x k (dilated) conv -> 1x1 conv -> norm (DARTS)."""

  def __init__(self, channels: int, kernel_size: int, stride: int,
               dilation: int, rngs: nnx.Rngs, *, depthwise_impl: str = "auto",
               running_stats: bool = False):
    self.depthwise = DepthwiseConv(channels, kernel_size, stride, dilation,
                                   rngs, impl=depthwise_impl)
    self.pointwise = PointwiseConv(channels, channels, rngs)
    self.norm = Normalization(channels, running_stats=running_stats)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.pointwise(self.depthwise(jax.nn.relu(x))))


class SeparableConv(nnx.Module):
  """Two stacked depthwise-separable convs; only the first is strided (DARTS)."""

  def __init__(self, channels: int, kernel_size: int, stride: int,
               rngs: nnx.Rngs, *, depthwise_impl: str = "auto",
               running_stats: bool = False):
    self.first = DilatedConv(channels, kernel_size, stride, 1, rngs,
                             depthwise_impl=depthwise_impl,
                             running_stats=running_stats)
    self.second = DilatedConv(channels, kernel_size, 1, 1, rngs,
                              depthwise_impl=depthwise_impl,
                              running_stats=running_stats)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.second(self.first(x))


class Pool(nnx.Module):
  """3x3 max or average pooling (average excludes padding) -> norm.

  Two implementations with the same result (``impl``): ``"window"`` is
  ``lax.reduce_window``; ``"slices"`` pools rows then columns, each as three
  shifted (strided) slices combined elementwise, and divides an average by
  window sizes known at trace time. On XLA:CPU the backward pass of a
  ``reduce_window`` max (``select_and_scatter``) was measured at 16 ms on
  20 images of 28x28x28 against 3 ms for the slices; ``"auto"`` picks
  ``"slices"`` on CPU. Max pooling's forward result is bitwise equal either
  way; at exactly tied inputs the slices' gradient is shared between the
  tied inputs rather than given to the first (both are subgradients).

  ``channels`` is needed only with ``running_stats``.
  """

  def __init__(self, kind: str, stride: int, *, impl: str = "auto",
               channels: int | None = None, running_stats: bool = False):
    if running_stats and channels is None:
      raise ConfigError("Pool with running_stats needs its channel count")
    self.kind = kind
    self.stride = stride
    self.impl = resolve_pool_impl(impl)
    self.norm = Normalization(channels or 0, running_stats=running_stats)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl == "window":
      return self.norm(self._reduce_window(x))
    return self.norm(self._separable_slices(x))

  def _reduce_window(self, x: jax.Array) -> jax.Array:
    window = (1, 3, 3, 1)
    strides = (1, self.stride, self.stride, 1)
    padding = ((0, 0), (1, 1), (1, 1), (0, 0))
    if self.kind == "max":
      return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides,
                                   padding)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides,
                                  padding)
    return total / _window_counts(x.shape[1], x.shape[2], self.stride,
                                  x.dtype)

  def _separable_slices(self, x: jax.Array) -> jax.Array:
    is_max = self.kind == "max"
    combine = jnp.maximum if is_max else jnp.add
    n, h, w, c = x.shape
    s = self.stride
    out_h, out_w = (h - 1) // s + 1, (w - 1) // s + 1
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                constant_values=-jnp.inf if is_max else 0)
    rows = None
    for i in range(3):
      part = jax.lax.slice(x, (0, i, 0, 0), (n, i + (out_h - 1) * s + 1,
                                             w + 2, c), (1, s, 1, 1))
      rows = part if rows is None else combine(rows, part)
    out = None
    for j in range(3):
      part = jax.lax.slice(rows, (0, 0, j, 0),
                           (n, out_h, j + (out_w - 1) * s + 1, c),
                           (1, 1, s, 1))
      out = part if out is None else combine(out, part)
    if is_max:
      return out
    return out / _window_counts(h, w, s, x.dtype)


def _window_counts(height: int, width: int, stride: int,
                   dtype) -> jax.Array:
  """Inputs inside each 3x3 window (padding excluded), ``[1, H', W', 1]``."""

  def counts(size):
    starts = np.arange(0, size, stride)
    return np.minimum(starts + 1, size - 1) - np.maximum(starts - 1, 0) + 1

  grid = np.outer(counts(height), counts(width)).astype(np.float32)
  return jnp.asarray(grid[None, :, :, None], dtype)


class StackedConv(nnx.Module):
  """ReLU -> 1 x k conv -> k x 1 conv -> norm (MetaNAS's ``conv_1x5_5x1``)."""

  def __init__(self, channels: int, kernel_sizes: tuple[tuple[int, int], ...],
               stride: int, rngs: nnx.Rngs, *, running_stats: bool = False):
    strides = [stride] + [1] * (len(kernel_sizes) - 1)
    self.convs = nnx.List([
        Conv(channels, channels, k, s, rngs)
        for k, s in zip(kernel_sizes, strides)])
    self.norm = Normalization(channels, running_stats=running_stats)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(x)
    for conv in self.convs:
      x = conv(x)
    return self.norm(x)


class OpConstructor(Protocol):
  """``(channels, stride, rngs, *, depthwise_impl[, running_stats]) -> op``.

  ``running_stats`` (a standalone network's ops keep population statistics
  for inference, see :class:`Normalization`) is passed only when True, so a
  constructor that does not take it still serves the supernet.
  """

  def __call__(self, channels: int, stride: int, rngs: nnx.Rngs, *,
               depthwise_impl: str, running_stats: bool = False) -> nnx.Module:
    ...


OPS: dict[str, OpConstructor] = {}


def register_op(name: str) -> Callable[[OpConstructor], OpConstructor]:
  """Decorator that adds a candidate operation to :data:`OPS`."""

  def register(constructor: OpConstructor) -> OpConstructor:
    OPS[name] = constructor
    return constructor

  return register


def _skip(channels, stride, rngs, *, depthwise_impl, running_stats=False):
  del depthwise_impl
  if stride == 1:
    return Identity()
  return FactorizedReduce(channels, channels, rngs,
                          running_stats=running_stats)


def _pool(kind):
  def make(channels, stride, rngs, *, depthwise_impl, running_stats=False):
    del rngs, depthwise_impl
    return Pool(kind, stride, channels=channels, running_stats=running_stats)
  return make


register_op("none")(
    lambda c, s, rngs, *, depthwise_impl, running_stats=False: Zero(s))
register_op("skip_connect")(_skip)
register_op("max_pool_3x3")(_pool("max"))
register_op("avg_pool_3x3")(_pool("avg"))
for _k in (3, 5):
  register_op(f"sep_conv_{_k}x{_k}")(
      lambda c, s, rngs, *, depthwise_impl, running_stats=False, k=_k:
      SeparableConv(c, k, s, rngs, depthwise_impl=depthwise_impl,
                    running_stats=running_stats))
  register_op(f"dil_conv_{_k}x{_k}")(
      lambda c, s, rngs, *, depthwise_impl, running_stats=False, k=_k:
      DilatedConv(c, k, s, 2, rngs, depthwise_impl=depthwise_impl,
                  running_stats=running_stats))
# MetaNAS's "conv_3x3" is one depthwise-separable 3x3 conv (its DilConv with
# dilation 1), not a dense 3x3 conv: with it the MetaNAS few-shot supernet
# (4 cells, 3 nodes, 28 channels) has the reference's weight count.
register_op("conv_3x3")(
    lambda c, s, rngs, *, depthwise_impl, running_stats=False: DilatedConv(
        c, 3, s, 1, rngs, depthwise_impl=depthwise_impl,
        running_stats=running_stats))
register_op("conv_1x5_5x1")(
    lambda c, s, rngs, *, depthwise_impl, running_stats=False: StackedConv(
        c, ((1, 5), (5, 1)), s, rngs, running_stats=running_stats))

#: The eight DARTS candidate operations (Liu et al. 2019).
DARTS_PRIMITIVES: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
    "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

#: The seven MetaNAS few-shot operations (Elsken et al. 2020), no ``none``.
METANAS_PRIMITIVES: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "conv_1x5_5x1",
    "conv_3x3", "sep_conv_3x3", "dil_conv_3x3")


def check_primitives(primitives: tuple[str, ...]) -> None:
  """Raises ConfigError naming any operation that is not registered."""
  unknown = [p for p in primitives if p not in OPS]
  if unknown:
    raise ConfigError(
        f"unknown operation(s) {unknown}; registered: {sorted(OPS)}")
  if len(set(primitives)) != len(primitives):
    raise ConfigError(f"duplicate operations in {list(primitives)}")


def make_op(name: str, channels: int, stride: int, rngs: nnx.Rngs, *,
            depthwise_impl: str = "auto",
            running_stats: bool = False) -> nnx.Module:
  """Builds the registered operation ``name``.

  Raises:
    ConfigError: ``name`` is not registered, or ``running_stats`` is asked
      of an operation whose constructor does not take it.
  """
  check_primitives((name,))
  constructor = OPS[name]
  if not running_stats:
    return constructor(channels, stride, rngs, depthwise_impl=depthwise_impl)
  parameters = inspect.signature(constructor).parameters.values()
  if not any(p.name == "running_stats" or p.kind is p.VAR_KEYWORD
             for p in parameters):
    raise ConfigError(f"operation {name!r} takes no running_stats argument, "
                      f"so it cannot be part of a standalone network with "
                      f"population statistics (register it with a "
                      f"running_stats keyword, or build with "
                      f"running_stats=False)")
  return constructor(channels, stride, rngs, depthwise_impl=depthwise_impl,
                     running_stats=True)
