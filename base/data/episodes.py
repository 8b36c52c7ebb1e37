"""Few-shot episodes and the task families that sample them.

A *task family* (in the sense of google/learned_optimization) is an object that
samples tasks; here a task is an N-way K-shot classification :class:`Episode`
made of plain NumPy arrays, so a batch of episodes is just the same arrays
with a leading task axis, ready for ``jax.vmap`` over tasks.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from base.data.labelled import LabelledImages
from base.errors import ConfigError, DataError


class Episode(NamedTuple):
  """One N-way K-shot task (or a batch of them, with leading axes ``...``).

  Attributes:
    support_x: ``[..., N*K, H, W, C]`` float32 support images.
    support_y: ``[..., N*K]`` int32 support labels in ``0..N-1``.
    query_x: ``[..., N*Q, H, W, C]`` float32 query images.
    query_y: ``[..., N*Q]`` int32 query labels in ``0..N-1``.
  """

  support_x: np.ndarray
  support_y: np.ndarray
  query_x: np.ndarray
  query_y: np.ndarray


@runtime_checkable
class TaskFamily(Protocol):
  """Samples few-shot classification tasks with fixed shapes.

  Every sample has the same shapes (``N*K`` support and ``N*Q`` query images
  of ``image_shape``), so samples stack into batches and ``vmap`` cleanly.
  """

  num_ways: int
  num_shots: int
  num_queries: int
  image_shape: tuple[int, int, int]

  def sample(self, rng: np.random.Generator) -> Episode:
    """One episode; deterministic given the state of ``rng``."""
    ...

  def sample_batch(self, rng: np.random.Generator, batch_size: int) -> Episode:
    """``batch_size`` independent episodes stacked on a leading task axis."""
    ...


def check_count(name: str, value: object, minimum: int) -> int:
  """``value`` as an int, or ConfigError naming ``name`` if not >= minimum."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
      value < minimum):
    raise ConfigError(f'{name} must be an integer >= {minimum}, got {value!r}')
  return int(value)


class EpisodeSampler:
  """The :class:`TaskFamily` of N-way K-shot episodes over a labelled set.

  Each episode picks ``num_ways`` distinct classes uniformly at random and,
  within each, ``num_shots + num_queries`` distinct images, the first
  ``num_shots`` for the support set and the rest for the query set (so the two
  never share an image). The chosen classes get labels ``0..N-1`` in a fresh
  random order every episode, so a learner cannot memorise a fixed class-label
  mapping. Support and query examples are ordered class by class.
  """

  def __init__(self,
               data: LabelledImages,
               num_ways: int,
               num_shots: int,
               num_queries: int,
               *,
               name: str = 'EpisodeSampler'):
    """Checks that every episode can be formed.

    Args:
      data: the classes and images to sample from.
      num_ways: N, classes per episode.
      num_shots: K, support images per class.
      num_queries: Q, query images per class.
      name: what to call this sampler in error messages (e.g. "meta-test").

    Raises:
      ConfigError: if N, K or Q is not a positive integer.
      DataError: if the data has fewer than N classes, or a class has fewer
        than K + Q images.
    """
    if not isinstance(data, LabelledImages):
      raise DataError(
          f'{name}: expected LabelledImages, got {type(data).__name__}')
    self.num_ways = check_count('num_ways', num_ways, 1)
    self.num_shots = check_count('num_shots', num_shots, 1)
    self.num_queries = check_count('num_queries', num_queries, 1)
    self.name = name
    self.data = data
    self.image_shape = data.image_shape
    if data.num_classes < self.num_ways:
      raise DataError(
          f'{name} needs {self.num_ways} classes for {self.num_ways}-way'
          f' episodes but the data has {data.num_classes}')
    per_class = self.num_shots + self.num_queries
    sizes = data.class_sizes()
    small = np.flatnonzero(sizes < per_class)
    if small.size:
      c = int(small[0])
      more = f' (and {small.size - 1} more classes)' if small.size > 1 else ''
      raise DataError(
          f'{name}: class {data.class_names[c]!r} has {sizes[c]} images but'
          f' {self.num_shots}-shot episodes with {self.num_queries} queries'
          f' need {per_class} per class{more}')
    # Image indices of each class, in data order: [num_classes] arrays.
    order = np.argsort(data.labels, kind='stable')
    self._class_indices = np.split(order, np.cumsum(sizes)[:-1])

  def __repr__(self) -> str:
    return (f'EpisodeSampler(name={self.name!r}, num_classes='
            f'{self.data.num_classes}, num_ways={self.num_ways}, num_shots='
            f'{self.num_shots}, num_queries={self.num_queries}, image_shape='
            f'{self.image_shape})')

  @property
  def num_classes(self) -> int:
    return self.data.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.data.class_names

  def _sample_indices(self, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``([N*K], [N*Q])`` image indices; episode class ``i`` comes i-th."""
    k, per_class = self.num_shots, self.num_shots + self.num_queries
    # A random class order doubles as the random label assignment.
    classes = rng.choice(self.data.num_classes, self.num_ways, replace=False)
    picks = np.stack([
        self._class_indices[c][rng.choice(
            self._class_indices[c].size, per_class, replace=False)]
        for c in classes
    ])  # [N, K+Q]
    return picks[:, :k].reshape(-1), picks[:, k:].reshape(-1)

  def _labels(self, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(self.num_ways, dtype=np.int32), per_class)

  def sample(self, rng: np.random.Generator) -> Episode:
    """One episode: support ``[N*K, H, W, C]``, query ``[N*Q, H, W, C]``."""
    support, query = self._sample_indices(rng)
    images = self.data.images
    return Episode(
        support_x=images[support].astype(np.float32, copy=False),
        support_y=self._labels(self.num_shots),
        query_x=images[query].astype(np.float32, copy=False),
        query_y=self._labels(self.num_queries))

  def sample_batch(self, rng: np.random.Generator, batch_size: int) -> Episode:
    """``batch_size`` episodes: support ``[B, N*K, H, W, C]``, query likewise.

    Equal to stacking ``batch_size`` successive :meth:`sample` calls on the
    same ``rng``, but gathers all images in one indexing operation.
    """
    batch_size = check_count('batch_size', batch_size, 1)
    pairs = [self._sample_indices(rng) for _ in range(batch_size)]
    support = np.stack([s for s, _ in pairs])  # [B, N*K]
    query = np.stack([q for _, q in pairs])  # [B, N*Q]
    images = self.data.images
    tile = lambda y: np.broadcast_to(y, (batch_size,) + y.shape).copy()
    return Episode(
        support_x=images[support].astype(np.float32, copy=False),
        support_y=tile(self._labels(self.num_shots)),
        query_x=images[query].astype(np.float32, copy=False),
        query_y=tile(self._labels(self.num_queries)))
