"""The prior (and posterior) over architectures and weights, as a pytree.

Both the meta-learned prior p_θ(α, w) and a task posterior q_τ(α, w) are a
:class:`SupernetDist`:

* α: one categorical per edge and cell type over the candidate operations,
  given by ``arch_logits`` (``{"normal": [E, O], "reduce": [E, O]}``),
  relaxed to a Concrete / Gumbel-softmax distribution when sampled;
* w: a mean-field Gaussian over every supernet weight, ``weight_mean`` and
  ``weight_log_std`` (nested dicts with the supernet's structure).

The ``spec`` (a :class:`~base.supernet.SupernetSpec`) is static pytree data, so
``jax.tree.map`` and ``jit`` see only the arrays. ``save_prior``/``load_prior``
write and read one self-describing file that also holds the spec, so a saved
prior can be used without the code or config that made it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from base import distributions, serialization
from base.errors import CheckpointError, ConfigError
from base.supernet import (CELL_TYPES, SupernetSpec, init_arch_logits,
                           init_supernet_weights)

FORMAT = "base-prior"
FORMAT_VERSION = 1
WEIGHT_POSTERIORS = ("gaussian", "point")


@struct.dataclass
class SupernetDist:
  """A distribution over (architecture, weights) of one supernet."""
  arch_logits: dict[str, jax.Array]
  weight_mean: dict[str, Any]
  weight_log_std: dict[str, Any]
  spec: SupernetSpec = struct.field(pytree_node=False)

  def to_dict(self) -> dict[str, Any]:
    """The arrays as a plain nested dict (no spec)."""
    return {"arch_logits": self.arch_logits, "weight_mean": self.weight_mean,
            "weight_log_std": self.weight_log_std}

  @property
  def arch_probs(self) -> dict[str, jax.Array]:
    return {k: jax.nn.softmax(v, axis=-1) for k, v in self.arch_logits.items()}


def init_prior(spec: SupernetSpec, key: jax.Array,
               weight_std: float = 0.01) -> SupernetDist:
  """A fresh prior: uniform architecture, He-initialised weight means.

  Args:
    weight_std: initial standard deviation of every weight (prior scale).
  """
  if weight_std <= 0:
    raise ConfigError(f"weight_std must be positive, got {weight_std}")
  mean = init_supernet_weights(spec, key)
  log_std = jax.tree.map(lambda m: jnp.full_like(m, np.log(weight_std)), mean)
  return SupernetDist(init_arch_logits(spec), mean, log_std, spec)


def weight_noise(weight_mean: Any, key: jax.Array) -> list[jax.Array]:
  """The standard normal noise of :func:`sample_weights`, one array per leaf
  of ``weight_mean`` (in ``jax.tree.leaves`` order)."""
  leaves = jax.tree.leaves(weight_mean)
  keys = jax.random.split(key, len(leaves))
  return [jax.random.normal(k, m.shape, m.dtype) for m, k in zip(leaves, keys)]


def sample_weights(dist: SupernetDist, key: jax.Array,
                   weight_posterior: str = "gaussian",
                   noise: list[jax.Array] | None = None) -> dict[str, Any]:
  """A reparameterised weight sample (the mean for a point posterior).

  ``noise`` is ``weight_noise(dist.weight_mean, key)`` computed elsewhere
  (then ``key`` is unused): the stepwise CPU programs take it as an input,
  see ``base.meta.compiled_inner_step``.
  """
  if weight_posterior == "point":
    return dist.weight_mean
  if noise is None:
    noise = weight_noise(dist.weight_mean, key)
  leaves, treedef = jax.tree.flatten(dist.weight_mean)
  stds = jax.tree.leaves(dist.weight_log_std)
  return jax.tree.unflatten(treedef, [
      m + jnp.exp(s) * e for m, s, e in zip(leaves, stds, noise)])


def sample_arch(dist: SupernetDist, key: jax.Array, temperature: jax.Array,
                hard: bool = False) -> dict[str, jax.Array]:
  """A relaxed (or straight-through hard) sample of every edge's op weights."""
  keys = jax.random.split(key, len(CELL_TYPES))
  return {name: distributions.gumbel_softmax(k, dist.arch_logits[name],
                                             temperature, hard=hard)
          for name, k in zip(CELL_TYPES, keys)}


def expected_arch(dist: SupernetDist) -> dict[str, jax.Array]:
  """The mean relaxed architecture, softmax(logits), for deterministic use."""
  return dist.arch_probs


def arch_kl(q: SupernetDist, p: SupernetDist) -> jax.Array:
  """Σ over edges of KL(Cat(q) ‖ Cat(p)) between the underlying categoricals.

  The KL between two Concrete distributions has no closed form; the KL of the
  categoricals they relax is exact for the discrete architecture and is what
  the relaxation converges to as the temperature goes to zero.
  """
  return sum(jnp.sum(distributions.categorical_kl(q.arch_logits[k],
                                                  p.arch_logits[k]))
             for k in CELL_TYPES)


def weight_kl(q: SupernetDist, p: SupernetDist,
              weight_posterior: str = "gaussian") -> jax.Array:
  """KL(q(w) ‖ p(w)) for the Gaussian posterior, summed over all weights.

  For a point posterior (``weight_posterior="point"``) the term is the
  negative log prior density of the point, −log p(μ_q) up to a constant: the
  MAP form of the ELBO, whose gradient in ``log_std_p`` still meta-learns the
  prior's scale.
  """
  def gaussian_kl(mq, sq, mp, sp):
    return jnp.sum(sp - sq + (jnp.exp(2 * sq) + (mq - mp) ** 2)
                   / (2 * jnp.exp(2 * sp)) - 0.5)

  def neg_log_density(mq, mp, sp):
    return jnp.sum(sp + (mq - mp) ** 2 / (2 * jnp.exp(2 * sp)))

  if weight_posterior == "point":
    terms = jax.tree.map(neg_log_density, q.weight_mean, p.weight_mean,
                         p.weight_log_std)
  elif weight_posterior == "gaussian":
    terms = jax.tree.map(gaussian_kl, q.weight_mean, q.weight_log_std,
                         p.weight_mean, p.weight_log_std)
  else:
    raise ConfigError(f"unknown weight_posterior {weight_posterior!r}; "
                      f"expected one of {WEIGHT_POSTERIORS}")
  return sum(jax.tree.leaves(terms))


def restrict_classifier(weights: dict[str, Any], ways: int,
                        what: str = "prior") -> dict[str, Any]:
  """``weights`` with the linear ``classifier`` cut to its first ``ways`` units.

  Meta-training relabels the classes of every episode in a random order, so
  the N output units of a meta-learned classifier are exchangeable and any
  ``ways <= N`` of them serve ``ways``-way tasks (how a 20-way prior scores
  5-way protocols).
  """
  classifier = weights["classifier"]
  num_classes = classifier["bias"].shape[0]
  if not 2 <= ways <= num_classes:
    raise ConfigError(f"a {num_classes}-way {what} cannot serve {ways}-way "
                      f"tasks; meta-train one with num_ways >= {ways}")
  return {**weights, "classifier": {**classifier,
                                    "kernel": classifier["kernel"][:, :ways],
                                    "bias": classifier["bias"][:ways]}}


def restrict_ways(dist: SupernetDist, ways: int) -> SupernetDist:
  """The same distribution for ``ways``-way tasks (see restrict_classifier)."""
  if ways == dist.spec.num_classes:
    return dist
  spec = dataclasses.replace(dist.spec, num_classes=ways)
  return SupernetDist(dist.arch_logits,
                      restrict_classifier(dist.weight_mean, ways),
                      restrict_classifier(dist.weight_log_std, ways), spec)


def arch_entropy(dist: SupernetDist) -> dict[str, jax.Array]:
  """Entropy (nats) of every edge's categorical, ``{"normal": [E], ...}``."""
  return {k: distributions.categorical_entropy(v)
          for k, v in dist.arch_logits.items()}


def arch_shift(prior: SupernetDist, posterior: SupernetDist) -> float:
  """How far adaptation moved the architecture distribution.

  The total-variation distance ``½ Σ_o |p_o - q_o|`` between an edge's
  categorical under ``prior`` and under ``posterior``, averaged over every
  edge of both cell types: 0 when no edge moved, 1 when every edge moved
  all its mass to other operations.
  """
  probs = distributions.host_probabilities
  distances = [0.5 * np.abs(probs(prior.arch_logits[k])
                            - probs(posterior.arch_logits[k])).sum(-1)
               for k in prior.arch_logits]
  return float(np.mean(np.concatenate(distances)))


# ----------------------------------------------------------------------------
# Saving and loading.


def save_prior(path: str | os.PathLike, prior: SupernetDist,
               metadata: Mapping[str, Any] | None = None) -> None:
  """Writes ``prior`` (arrays, spec, metadata) to one file, atomically.

  The file is written beside ``path`` and renamed over it, so an existing
  prior at ``path`` survives a crash mid-write (``base.serialization``).
  """
  serialization.write_arrays_file(
      path, prior.to_dict(),
      {"format": FORMAT, "version": FORMAT_VERSION,
       "spec": prior.spec.to_dict(), "metadata": dict(metadata or {})})


def load_prior(path: str | os.PathLike,
               return_metadata: bool = False) -> SupernetDist | tuple[
                   SupernetDist, dict[str, Any]]:
  """Reads a prior written by :func:`save_prior`.

  Returns a :class:`SupernetDist`, whose ``to_dict()`` is a plain nested dict
  of arrays and whose ``spec`` rebuilds the supernet; with
  ``return_metadata`` also the metadata dict saved with it.

  Raises:
    CheckpointError: the file is missing, truncated, corrupt, of another
      format, or its arrays do not fit its own supernet spec.
  """
  tree, header = serialization.read_arrays_file(
      path, kind="prior", format_name=FORMAT, version=FORMAT_VERSION)
  try:
    spec = SupernetSpec.from_dict(header["spec"])
  except (ConfigError, KeyError, TypeError) as e:
    raise CheckpointError(f"prior file {path} has an invalid spec: {e}") from None
  prior = SupernetDist(tree.get("arch_logits", {}), tree.get("weight_mean", {}),
                       tree.get("weight_log_std", {}), spec)
  check_fits_spec(prior, source=os.fspath(path))
  if return_metadata:
    return prior, header.get("metadata", {})
  return prior


def check_fits_spec(dist: SupernetDist, source: str = "prior") -> None:
  """Raises CheckpointError unless the arrays have the spec's structure."""
  expected = jax.eval_shape(lambda: init_prior(dist.spec, jax.random.key(0)))
  want = {k: v.shape
          for k, v in serialization.flatten(expected.to_dict()).items()}
  have = {k: np.shape(v)
          for k, v in serialization.flatten(dist.to_dict()).items()}
  if want != have:
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    raise CheckpointError(
        f"{source} does not match its supernet spec: missing {missing[:3]}, "
        f"unexpected {extra[:3]}, wrong shapes {wrong[:3]}")
