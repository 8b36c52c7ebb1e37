"""An in-memory labelled image set: the common currency of every data source.

Every loader (digits, image folders, Omniglot, TFDS) returns a
:class:`LabelledImages`; the class-level transforms (splits, rotation
augmentation) and the episode samplers only ever see this type, so a new source
needs nothing but a function that builds one.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

from base.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledImages:
  """Images with integer class labels and one name per class.

  Attributes:
    images: ``[n, H, W, C]`` floating array with values in ``[0, 1]``
      (float32 from every loader in this package).
    labels: ``[n]`` int32 class ids in ``0..num_classes-1``; integer input of
      another width is converted to int32.
    class_names: one unique name per class id, e.g. ``"Greek/character01"``;
      names, not ids, identify a class across loaders and transforms.
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    images, labels = self.images, self.labels
    if not isinstance(images, np.ndarray) or images.ndim != 4:
      shape = getattr(images, 'shape', None)
      raise DataError(
          f'LabelledImages.images must be a 4-D [n, H, W, C] array, got shape'
          f' {shape}')
    if not np.issubdtype(images.dtype, np.floating):
      raise DataError(
          f'LabelledImages.images must be floating point in [0, 1], got dtype'
          f' {images.dtype}')
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or
                                labels.size == 0):
      raise DataError(
          f'LabelledImages.labels must be a 1-D integer array, got shape'
          f' {labels.shape} and dtype {labels.dtype}')
    if labels.shape[0] != images.shape[0]:
      raise DataError(
          f'LabelledImages has {images.shape[0]} images but'
          f' {labels.shape[0]} labels')
    if isinstance(self.class_names, str):
      raise DataError('LabelledImages.class_names must be a sequence of names,'
                      f' got the string {self.class_names!r}')
    class_names = tuple(str(name) for name in self.class_names)
    if len(set(class_names)) != len(class_names):
      seen, dupes = set(), []
      for name in class_names:
        if name in seen:
          dupes.append(name)
        seen.add(name)
      raise DataError(
          f'LabelledImages.class_names must be unique; repeated: {dupes[:5]}')
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
      raise DataError(
          f'LabelledImages.labels must lie in 0..{len(class_names) - 1} (one'
          f' per class name), got range {labels.min()}..{labels.max()}')
    object.__setattr__(self, 'labels', labels.astype(np.int32, copy=False))
    object.__setattr__(self, 'class_names', class_names)

  def __len__(self) -> int:
    return self.images.shape[0]

  def __repr__(self) -> str:
    return (f'LabelledImages(n={len(self)}, num_classes={self.num_classes},'
            f' image_shape={self.image_shape})')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of every image."""
    height, width, channels = self.images.shape[1:]
    return int(height), int(width), int(channels)

  def class_sizes(self) -> np.ndarray:
    """``[num_classes]`` int array: the number of images of each class."""
    return np.bincount(self.labels, minlength=self.num_classes)

  def subset(self, class_ids: Sequence[int] | np.ndarray) -> LabelledImages:
    """Keeps only the given classes, re-indexing their labels ``0..len-1``.

    Args:
      class_ids: distinct class ids; the i-th becomes class ``i`` of the result
        (its name moves with it), so the order given is the new class order.

    Returns:
      A new :class:`LabelledImages` whose images keep their original relative
      order.
    """
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_classes):
      raise DataError(
          f'subset: class ids must lie in 0..{self.num_classes - 1}, got'
          f' {ids.min()}..{ids.max()}')
    if len(np.unique(ids)) != ids.size:
      raise DataError(f'subset: class ids must be distinct, got {ids.tolist()}')
    new_label = np.full(self.num_classes, -1, dtype=np.int64)
    new_label[ids] = np.arange(ids.size)
    mapped = new_label[self.labels]
    keep = mapped >= 0
    return LabelledImages(
        images=self.images[keep],
        labels=mapped[keep].astype(np.int32),
        class_names=tuple(self.class_names[i] for i in ids))

  def subset_by_name(self, names: Sequence[str]) -> LabelledImages:
    """Like :meth:`subset`, selecting classes by name."""
    index = {name: i for i, name in enumerate(self.class_names)}
    missing = [name for name in names if name not in index]
    if missing:
      raise DataError(f'subset_by_name: unknown classes {missing[:5]}')
    return self.subset([index[name] for name in names])


def concatenate(parts: Sequence[LabelledImages]) -> LabelledImages:
  """Joins data sets with disjoint class names into one (classes in order).

  Raises:
    DataError: if the parts disagree on image shape or share a class name.
  """
  if not parts:
    raise DataError('concatenate needs at least one LabelledImages')
  shapes = {p.image_shape for p in parts}
  if len(shapes) > 1:
    raise DataError(f'concatenate: image shapes differ: {sorted(shapes)}')
  offsets = np.cumsum([0] + [p.num_classes for p in parts])
  return LabelledImages(
      images=np.concatenate([p.images for p in parts]),
      labels=np.concatenate(
          [p.labels + off for p, off in zip(parts, offsets)]).astype(np.int32),
      class_names=sum((p.class_names for p in parts), ()))
