"""Relaxed categorical distributions, categorical divergences and schedules.

BASE places a distribution over the discrete operation chosen on every edge of
a supernet. Training the architecture parameters by gradient descent needs a
reparameterisable, continuous stand-in for the categorical choice: the
Gumbel-softmax / Concrete distribution (Maddison et al., 2017, "The Concrete
Distribution"; Jang et al., 2017, "Categorical Reparameterization with
Gumbel-Softmax"). NumPyro ships ``RelaxedBernoulli`` but no K-way relaxation,
so this module provides:

* :func:`gumbel_softmax`, the functional hot path used inside ``jax.jit`` by
  the supernet code;
* :class:`RelaxedOneHotCategorical`, a full NumPyro distribution (sampling,
  Concrete log-density, shapes, pytree support) built on the same function so
  that the sampling math lives in one place;
* :func:`categorical_kl` and :func:`categorical_entropy`, used for the
  architecture KL term and diagnostics;
* :func:`temperature_schedule`, jittable annealing schedules for the
  relaxation temperature.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.distribution import Distribution
from numpyro.distributions.util import lazy_property
from numpyro.distributions.util import validate_sample
from numpyro.util import is_prng_key
import optax

from base.errors import ConfigError

__all__ = [
    "RelaxedOneHotCategorical",
    "categorical_entropy",
    "categorical_kl",
    "gumbel_softmax",
    "host_probabilities",
    "temperature_schedule",
    "TEMPERATURE_SCHEDULE_KINDS",
]

ArrayLike = Union[jax.Array, Any]

#: Kinds accepted by :func:`temperature_schedule`.
TEMPERATURE_SCHEDULE_KINDS = ("constant", "exponential", "linear")


def _float_dtype(x: ArrayLike) -> jnp.dtype:
  """Returns the floating dtype to compute in for ``x`` (ints become float)."""
  dtype = jnp.result_type(x)
  if jnp.issubdtype(dtype, jnp.floating):
    return dtype
  return jnp.result_type(float)


def _sample_gumbel(key: jax.Array, shape: tuple[int, ...],
                   dtype: jnp.dtype) -> jax.Array:
  """Draws standard Gumbel noise ``-log(-log(u))`` with ``u`` clipped.

  ``u`` is kept inside ``[tiny, 1 - eps]`` so that neither logarithm sees 0
  and the noise is always finite. The uniforms are drawn flat and reshaped:
  with partitionable threefry this gives the same values as a shaped draw,
  but XLA compiles the 1-D generator several times faster for rank > 2.
  """
  finfo = jnp.finfo(dtype)
  u = jax.random.uniform(key, (math.prod(shape),), dtype=dtype,
                         minval=finfo.tiny, maxval=1.0).reshape(shape)
  u = jnp.clip(u, finfo.tiny, 1.0 - finfo.eps)
  return -jnp.log(-jnp.log(u))


@functools.partial(jax.jit, static_argnames=("hard",))
def gumbel_softmax(key: jax.Array,
                   logits: ArrayLike,
                   temperature: ArrayLike,
                   hard: bool = False) -> jax.Array:
  """Draws a Gumbel-softmax (Concrete) sample over the last axis of ``logits``.

  Computes ``y = softmax((logits + g) / temperature)`` with ``g`` i.i.d.
  standard Gumbel noise of shape ``logits.shape``. The softmax is evaluated as
  ``exp(log_softmax(.))`` for numerical stability, and coordinates that
  underflow are floored at ``finfo.tiny`` so that ``log(y)`` (and hence the
  Concrete log-density of the sample) stays finite even at low temperature;
  the floor is far below float resolution, so the sample still sums to one.
  The sample is a differentiable function of ``logits`` and ``temperature``
  (pathwise / reparameterisation gradients).

  With ``hard=True`` the straight-through estimator is used: the forward value
  is exactly ``one_hot(argmax(y))`` while the gradient is that of the relaxed
  ``y`` (``y_hard + (y - stop_gradient(y))``).

  This is the hot path used inside ``jax.jit`` by the supernet;
  :meth:`RelaxedOneHotCategorical.sample` calls it as well. It is itself
  jitted (``hard`` static) so that eager calls compile once per shape
  instead of once per primitive; inside an outer ``jit`` it is inlined.

  Args:
    key: PRNG key.
    logits: Unnormalised log-probabilities, shape ``(..., K)``.
    temperature: Positive temperature, broadcastable to ``logits.shape[:-1]``
      (a scalar, or one temperature per categorical).
    hard: Whether to return straight-through hard one-hot samples. Must be a
      Python bool (it selects code, it is not traced).

  Returns:
    An array of ``logits.shape`` whose last axis lies on the simplex (exactly
    one-hot when ``hard``).
  """
  logits = jnp.asarray(logits)
  dtype = _float_dtype(logits)
  logits = logits.astype(dtype)
  temperature = jnp.expand_dims(jnp.asarray(temperature, dtype=dtype), -1)
  gumbels = _sample_gumbel(key, logits.shape, dtype)
  log_y = jax.nn.log_softmax((logits + gumbels) / temperature, axis=-1)
  y = jnp.maximum(jnp.exp(log_y), jnp.finfo(dtype).tiny)
  if not hard:
    return y
  y_hard = jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=dtype)
  # Adding the zero-valued (y - sg(y)) last keeps the forward value exactly
  # one-hot; (y_hard + y) - sg(y) would not round-trip exactly.
  return y_hard + (y - lax.stop_gradient(y))


@functools.partial(jax.jit, static_argnames=("shape", "hard"))
def _broadcast_gumbel_softmax(key: jax.Array, logits: jax.Array,
                              temperature: jax.Array, shape: tuple[int, ...],
                              hard: bool) -> jax.Array:
  """Broadcasts parameters to ``shape`` and calls :func:`gumbel_softmax`.

  One jitted program per sample shape, so eager sampling compiles once.
  """
  return gumbel_softmax(key, jnp.broadcast_to(logits, shape),
                        jnp.broadcast_to(temperature, shape[:-1]), hard=hard)


def _probs_to_logits(probs: jax.Array) -> jax.Array:
  """Returns ``log(probs)``, with ``log(0)`` clipped to the lowest float."""
  return jnp.clip(jnp.log(probs), jnp.finfo(probs.dtype).min)


@jax.jit
def _concrete_log_prob(logits: jax.Array, temperature: jax.Array,
                       value: ArrayLike) -> jax.Array:
  """Concrete log-density; see :meth:`RelaxedOneHotCategorical.log_prob`.

  Jitted so that eager calls compile once per shape.
  """
  value = jnp.asarray(value, dtype=logits.dtype)
  num_categories = logits.shape[-1]
  log_pi = jax.nn.log_softmax(logits, axis=-1)
  log_y = jnp.log(value)
  scores = log_pi - temperature[..., None] * log_y
  log_norm = math.lgamma(num_categories) + (
      (num_categories - 1) * jnp.log(temperature))
  return (log_norm + jnp.sum(jax.nn.log_softmax(scores, axis=-1), axis=-1)
          - jnp.sum(log_y, axis=-1))


class RelaxedOneHotCategorical(Distribution):
  """The Concrete / Gumbel-softmax distribution on the (K-1)-simplex.

  A sample is ``softmax((logits + g) / temperature)`` with ``g`` i.i.d.
  standard Gumbel noise (Maddison et al., 2017; Jang et al., 2017). As the
  temperature goes to zero, samples approach one-hot vectors whose argmax is
  distributed as ``Categorical(softmax(logits))``; samples are
  reparameterised, so gradients flow to ``logits`` and ``temperature``.

  ``log_prob`` is the Concrete log-density (Maddison et al., 2017,
  Definition 1) with respect to Lebesgue measure on the first K-1
  coordinates of the simplex::

      log((K-1)!) + (K-1) log τ + Σ_k [log π_k − (τ+1) log y_k]
                  − K logsumexp_k(log π_k − τ log y_k).

  The density is defined on the *open* simplex. At a value with a zero
  coordinate (for example a hard one-hot vector) it has no finite value: the
  limit is 0 or +∞ depending on the direction of approach and on whether
  ``τ (K-1)`` exceeds 1, and the formula evaluates to ``nan``. ``log_prob``
  does not hide this.

  With ``straight_through=True``, :meth:`sample` returns the hard one-hot
  ``one_hot(argmax(y))`` in the forward pass with the gradient of the relaxed
  ``y`` (straight-through Gumbel-softmax). ``log_prob`` is still the relaxed
  Concrete density evaluated at the given value; a straight-through sample is
  a hard one-hot, so its ``log_prob`` is ``nan`` (see above). Score with the
  relaxed sample or with the categorical log-probability instead.

  ``straight_through`` is static pytree auxiliary data, so instances can be
  passed through ``jax.jit`` and ``jax.vmap``.

  The mean, variance and entropy have no closed form and raise
  ``NotImplementedError``.

  Args:
    temperature: Positive temperature; broadcasts against the batch shape
      ``logits.shape[:-1]``.
    logits: Unnormalised log-probabilities, shape ``batch_shape + (K,)``.
    probs: Category probabilities on the simplex (alternative to ``logits``).
    straight_through: Whether :meth:`sample` returns straight-through hard
      one-hot samples.
    validate_args: Whether to validate the arguments and the values passed to
      :meth:`log_prob` (NumPyro convention).
  """

  arg_constraints = {
      "temperature": constraints.positive,
      "logits": constraints.real_vector,
      "probs": constraints.simplex,
  }
  support = constraints.simplex
  reparametrized_params = ["temperature", "logits", "probs"]
  has_rsample = True
  # ``probs`` is derived from ``logits`` and recomputed lazily after
  # unflattening; ``straight_through`` is static (it selects code).
  pytree_data_fields = ("temperature", "logits")
  pytree_aux_fields = ("straight_through",)

  def __init__(self,
               temperature: ArrayLike,
               logits: Optional[ArrayLike] = None,
               probs: Optional[ArrayLike] = None,
               *,
               straight_through: bool = False,
               validate_args: Optional[bool] = None) -> None:
    if (logits is None) == (probs is None):
      raise ValueError(
          "RelaxedOneHotCategorical needs exactly one of `logits` or `probs`.")
    param = jnp.asarray(logits if probs is None else probs)
    if jnp.ndim(param) < 1:
      raise ValueError(
          "RelaxedOneHotCategorical `logits`/`probs` must be at least 1-D "
          f"(the last axis indexes categories), got shape {jnp.shape(param)}.")
    dtype = _float_dtype(param)
    param = param.astype(dtype)
    temperature = jnp.asarray(temperature, dtype=dtype)
    batch_shape = lax.broadcast_shapes(
        jnp.shape(temperature), jnp.shape(param)[:-1])
    event_shape = jnp.shape(param)[-1:]
    param = jnp.broadcast_to(param, batch_shape + event_shape)
    self.temperature = jnp.broadcast_to(temperature, batch_shape)
    if probs is None:
      self.logits = param
    else:
      self.probs = param
      self.logits = _probs_to_logits(param)
    self.straight_through = bool(straight_through)
    super().__init__(batch_shape=batch_shape, event_shape=event_shape,
                     validate_args=validate_args)

  @lazy_property
  def probs(self) -> jax.Array:
    """Category probabilities ``softmax(logits)``."""
    return jax.nn.softmax(self.logits, axis=-1)

  @classmethod
  def infer_shapes(
      cls,
      temperature: tuple[int, ...] = (),
      logits: Optional[tuple[int, ...]] = None,
      probs: Optional[tuple[int, ...]] = None,
      **kwargs: Any,
  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Returns ``(batch_shape, event_shape)`` for the given argument shapes.

    Overridden because the base implementation assumes a univariate support
    and refuses simplex-valued distributions.
    """
    del kwargs  # straight_through / validate_args do not affect shapes.
    shape = logits if logits is not None else probs
    if shape is None:
      raise ValueError("infer_shapes needs the shape of `logits` or `probs`.")
    batch_shape = lax.broadcast_shapes(tuple(temperature), tuple(shape)[:-1])
    return batch_shape, tuple(shape)[-1:]

  def sample(self, key: jax.Array,
             sample_shape: tuple[int, ...] = ()) -> jax.Array:
    """Draws reparameterised samples via :func:`gumbel_softmax`.

    Args:
      key: PRNG key.
      sample_shape: Leading shape of i.i.d. draws.

    Returns:
      Array of shape ``sample_shape + batch_shape + event_shape``.
    """
    assert is_prng_key(key)
    shape = tuple(sample_shape) + self.batch_shape + self.event_shape
    return _broadcast_gumbel_softmax(key, self.logits, self.temperature,
                                     shape, self.straight_through)

  @validate_sample
  def log_prob(self, value: ArrayLike) -> jax.Array:
    """Concrete log-density of ``value`` (Maddison et al., 2017, Def. 1).

    Computed in log space as ``log((K-1)!) + (K-1) log τ
    + Σ_k log_softmax_k(a) − Σ_k log y_k`` with ``a_k = log π_k − τ log y_k``,
    which is algebraically the formula in the class docstring (the
    ``logsumexp`` is absorbed into ``log_softmax``). The density does not
    depend on how ``logits`` are normalised. Values with a zero coordinate
    (hard one-hot vectors) give ``nan``; see the class docstring.

    Args:
      value: Points on the simplex, shape broadcastable to
        ``batch_shape + (K,)``.

    Returns:
      Log-density of shape ``broadcast(value.shape[:-1], batch_shape)``.
    """
    return _concrete_log_prob(self.logits, self.temperature, value)

  @property
  def mean(self) -> jax.Array:
    """Not available: the Concrete distribution has no closed-form mean."""
    raise NotImplementedError(
        "RelaxedOneHotCategorical has no closed-form mean; estimate it from "
        "samples.")

  @property
  def variance(self) -> jax.Array:
    """Not available: the Concrete distribution has no closed-form variance."""
    raise NotImplementedError(
        "RelaxedOneHotCategorical has no closed-form variance; estimate it "
        "from samples.")

  def entropy(self) -> jax.Array:
    """Not available: the Concrete distribution has no closed-form entropy."""
    raise NotImplementedError(
        "RelaxedOneHotCategorical has no closed-form entropy; use "
        "categorical_entropy(logits) for the underlying categorical.")


def categorical_kl(q_logits: ArrayLike, p_logits: ArrayLike) -> jax.Array:
  """KL(Cat(softmax(q_logits)) || Cat(softmax(p_logits))) over the last axis.

  BASE uses the KL between the categoricals underlying two relaxed
  distributions as the architecture KL term: the KL between two Concrete
  distributions has no closed form, whereas the categorical KL is exact,
  cheap and is the zero-temperature limit of the relaxation.

  Computed in log space from ``log_softmax`` of both arguments, so it is
  invariant to adding a constant to either set of logits. Categories with
  zero probability under ``q`` (``-inf`` logits) contribute exactly zero
  (with zero gradient); a category with positive ``q`` mass and zero ``p``
  mass gives ``+inf``.

  Args:
    q_logits: Logits of the first (posterior) categorical, shape ``(..., K)``.
    p_logits: Logits of the second (prior) categorical, broadcastable to
      ``q_logits``.

  Returns:
    KL divergence per categorical (e.g. per edge), shape
    ``broadcast(q_logits, p_logits).shape[:-1]``.
  """
  log_q = jax.nn.log_softmax(jnp.asarray(q_logits), axis=-1)
  log_p = jax.nn.log_softmax(jnp.asarray(p_logits), axis=-1)
  q = jnp.exp(log_q)
  positive = q > 0
  # Double-where so that 0 * (-inf) never reaches the value or the gradient.
  log_ratio = jnp.where(positive, log_q - log_p, 0.0)
  return jnp.sum(jnp.where(positive, q * log_ratio, 0.0), axis=-1)


def host_probabilities(logits: Any) -> np.ndarray:
  """``softmax(logits)`` over the last axis, as float64 NumPy on the host.

  For what reads architecture logits outside ``jit``: genotype derivation,
  the arch-shift report, plots.
  """
  logits = np.asarray(jax.device_get(logits), np.float64)
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def categorical_entropy(logits: ArrayLike) -> jax.Array:
  """Entropy ``-Σ_k π_k log π_k`` of ``Cat(softmax(logits))``, last axis.

  Computed from ``log_softmax``; zero-probability categories contribute
  exactly zero.

  Args:
    logits: Unnormalised log-probabilities, shape ``(..., K)``.

  Returns:
    Entropy in nats, shape ``logits.shape[:-1]``.
  """
  log_pi = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
  pi = jnp.exp(log_pi)
  positive = pi > 0
  safe_log_pi = jnp.where(positive, log_pi, 0.0)
  return -jnp.sum(jnp.where(positive, pi * safe_log_pi, 0.0), axis=-1)


def temperature_schedule(
    kind: str, initial: float, final: float,
    steps: int) -> Callable[[Union[int, jax.Array]], jax.Array]:
  """Builds a jittable schedule ``step -> temperature`` for the relaxation.

  Annealing the Gumbel-softmax temperature from a high value (smooth, low
  variance gradients) to a low value (nearly discrete samples) is the usual
  recipe. Kinds:

  * ``"constant"``: always ``initial`` (``final`` and ``steps`` are ignored).
  * ``"exponential"``: geometric interpolation
    ``initial * (final / initial) ** (step / steps)`` for
    ``0 <= step <= steps``, then held at ``final``
    (``optax.exponential_decay``).
  * ``"linear"``: linear interpolation from ``initial`` to ``final`` over
    ``steps``, then held at ``final`` (``optax.linear_schedule``).

  Steps before 0 are treated as step 0.

  Args:
    kind: One of :data:`TEMPERATURE_SCHEDULE_KINDS`.
    initial: Temperature at step 0; must be positive.
    final: Temperature from step ``steps`` on; must be positive.
    steps: Number of annealing steps; a positive integer unless ``kind`` is
      ``"constant"``.

  Returns:
    A function of an integer step (Python int or traced array) returning a
    scalar float32 array.

  Raises:
    ConfigError: For an unknown ``kind``, a non-positive temperature or a
      non-positive ``steps``.
  """
  allowed = ", ".join(repr(k) for k in TEMPERATURE_SCHEDULE_KINDS)
  if kind not in TEMPERATURE_SCHEDULE_KINDS:
    raise ConfigError(
        f"unknown temperature schedule kind {kind!r}; allowed kinds: "
        f"{allowed}")
  for name, value in (("initial", initial), ("final", final)):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or (
        not value > 0 or math.isinf(value)):
      raise ConfigError(
          f"temperature schedule {kind!r} needs a positive finite {name} "
          f"temperature, got {name}={value!r} (allowed kinds: {allowed})")
  if kind != "constant" and (
      isinstance(steps, bool) or not isinstance(steps, numbers.Integral)
      or steps < 1):
    raise ConfigError(
        f"temperature schedule {kind!r} needs steps to be a positive "
        f"integer, got steps={steps!r} (allowed kinds: {allowed})")

  initial = float(initial)
  final = float(final)
  if kind == "constant":
    schedule = optax.constant_schedule(initial)
  elif kind == "exponential":
    schedule = optax.exponential_decay(
        init_value=initial, transition_steps=steps,
        decay_rate=final / initial, end_value=final)
  else:
    schedule = optax.linear_schedule(
        init_value=initial, end_value=final, transition_steps=steps)

  def temperature_at(step: Union[int, jax.Array]) -> jax.Array:
    """Returns the temperature at ``step`` as a scalar float32 array."""
    step = jnp.maximum(jnp.asarray(step), 0)
    return jnp.asarray(schedule(step), dtype=jnp.float32)

  return temperature_at
