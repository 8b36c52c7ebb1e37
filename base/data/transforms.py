"""Class-level transforms: meta-train/meta-test splits and rotation classes.

The right order is *split, then augment*: split the base classes into
meta-train and meta-test, then turn each meta-train class into one class per
rotation. Augmenting first would put rotated copies of a meta-test character
into meta-train. :func:`split_and_augment` does the two in that order, and
:func:`split_classes` keeps the rotations of one base class on the same side
even when handed already-augmented data, so neither order can leak a class.
"""

from __future__ import annotations

from collections.abc import Sequence
import numbers
import re

import numpy as np

from base.data.labelled import LabelledImages
from base.errors import ConfigError, DataError

_ROTATED_NAME = re.compile(r'(.+)@(\d+)')


def quarter_turns(angles: Sequence[int]) -> list[tuple[int, int]]:
  """Validates rotation angles: ``[(angle mod 360, quarter turns)]``.

  Raises:
    ConfigError: empty or non-sequence input, an angle that is not a multiple
      of 90, or two angles equal modulo 360.
  """
  try:
    angles = tuple(angles) if not isinstance(angles, (str, bytes)) else ()
  except TypeError:
    angles = ()
  if not angles:
    raise ConfigError(
        'rotation angles must be a non-empty sequence of multiples of 90,'
        f' got {angles!r}')
  result = []
  for angle in angles:
    if (isinstance(angle, bool) or not isinstance(angle, numbers.Real) or
        angle % 90 != 0):
      raise ConfigError(
          f'rotation angles must be multiples of 90 degrees, got {angle!r} in'
          f' {tuple(angles)}')
    normalized = int(angle) % 360
    if normalized in [a for a, _ in result]:
      raise ConfigError(f'rotation angles repeat {normalized}: {tuple(angles)}')
    result.append((normalized, normalized // 90))
  return result


def augment_rotations(data: LabelledImages,
                      angles: Sequence[int] = (0, 90, 180, 270)
                     ) -> LabelledImages:
  """Makes every (class, angle) pair a class of its own.

  This is the standard Omniglot class augmentation (Santoro et al. 2016): a
  character rotated by 90 degrees is treated as a new character.

  Args:
    data: images ``[n, H, W, C]``; must be square if any angle is an odd
      multiple of 90.
    angles: counter-clockwise rotations in degrees, multiples of 90 (as in
      ``np.rot90(image, angle // 90)``).

  Returns:
    ``[n * len(angles), H, W, C]`` images with ``num_classes * len(angles)``
    classes: class ``c * len(angles) + j`` is class ``c`` rotated by
    ``angles[j]``, named ``"name@angle"`` (``"name"`` for angle 0).
  """
  turns = quarter_turns(angles)
  height, width, _ = data.image_shape
  if height != width and any(k % 2 for _, k in turns):
    raise DataError(
        f'rotating by 90 degrees needs square images, got {height}x{width}')
  num_angles = len(turns)
  images = np.concatenate(
      [np.rot90(data.images, k, axes=(1, 2)) for _, k in turns])
  labels = np.concatenate(
      [data.labels * num_angles + j for j in range(num_angles)])
  names = tuple(name if angle == 0 else f'{name}@{angle}'
                for name in data.class_names for angle, _ in turns)
  return LabelledImages(images=np.ascontiguousarray(images),
                        labels=labels.astype(np.int32), class_names=names)


def _base_name(name: str) -> str:
  """The class a rotated class came from (``"a/b@90"`` -> ``"a/b"``)."""
  match = _ROTATED_NAME.fullmatch(name)
  if match and int(match.group(2)) % 90 == 0:
    return match.group(1)
  return name


def num_split_classes(num_test_classes: int | float, total: int) -> int:
  """Resolves a count or a fraction of ``total`` classes to a count.

  An int, or a float with an integral value >= 1 (as a float config field
  holds ``42``), is a count; any other float is a fraction, rounded.

  Raises:
    ConfigError: a value that is neither a positive count nor a fraction in
      ``(0, 1)``.
    DataError: a value that leaves no classes on one side of the split.
  """
  value = num_test_classes
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(
        'num_test_classes must be an int count or a float fraction in (0, 1),'
        f' got {value!r}')
  if isinstance(value, numbers.Integral) or (value >= 1 and
                                             float(value).is_integer()):
    # An integral float (42.0, e.g. from a float config field) is a count.
    count = int(value)
    if count < 1:
      raise ConfigError(f'num_test_classes must be >= 1, got {count}')
    given = f'num_test_classes={count}'
  else:
    if not 0.0 < value < 1.0:
      raise ConfigError(
          'num_test_classes as a float is a fraction and must lie in (0, 1),'
          f' got {value!r}')
    count = int(round(float(value) * total))
    given = f'num_test_classes={value} of {total} classes ({count})'
  if not 1 <= count <= total - 1:
    raise DataError(
        f'{given} leaves no classes for one side of the split: the data has'
        f' {total} (base) classes, so it must be between 1 and {total - 1}')
  return count


def split_classes(data: LabelledImages,
                  num_test_classes: int | float,
                  seed: int | np.random.Generator = 0
                 ) -> tuple[LabelledImages, LabelledImages]:
  """Splits the classes into disjoint meta-train and meta-test sets.

  Rotated copies made by :func:`augment_rotations` (``"x@90"``) stay with
  their base class ``"x"``, so the count refers to base classes. Prefer
  splitting un-augmented data and augmenting afterwards
  (:func:`split_and_augment`).

  Args:
    data: the classes to split.
    num_test_classes: number of (base) classes for meta-test, or a fraction in
      ``(0, 1)`` of them (rounded).
    seed: seed or generator for the random choice of meta-test classes.

  Returns:
    ``(meta_train, meta_test)``; each keeps its classes in the original order,
    labels re-indexed from 0.
  """
  groups: dict[str, list[int]] = {}
  for class_id, name in enumerate(data.class_names):
    groups.setdefault(_base_name(name), []).append(class_id)
  members = list(groups.values())
  count = num_split_classes(num_test_classes, len(members))
  rng = seed if isinstance(seed, np.random.Generator) else (
      np.random.default_rng(seed))
  is_test = np.zeros(len(members), bool)
  is_test[rng.permutation(len(members))[:count]] = True
  train = [c for g, ids in enumerate(members) if not is_test[g] for c in ids]
  test = [c for g, ids in enumerate(members) if is_test[g] for c in ids]
  return data.subset(train), data.subset(test)


def split_and_augment(data: LabelledImages,
                      num_test_classes: int | float,
                      seed: int | np.random.Generator = 0,
                      train_rotations: Sequence[int] = (0,),
                      test_rotations: Sequence[int] = (0,)
                     ) -> tuple[LabelledImages, LabelledImages]:
  """Splits base classes, then rotation-augments each side (the right order).

  Args:
    data: un-augmented data.
    num_test_classes: see :func:`split_classes`.
    seed: see :func:`split_classes`.
    train_rotations: angles for the meta-train classes; ``(0,)`` is none.
    test_rotations: angles for the meta-test classes; ``(0,)`` (the usual
      choice) evaluates on the original characters only.

  Returns:
    ``(meta_train, meta_test)`` with disjoint base classes.
  """
  train_turns = quarter_turns(train_rotations)
  test_turns = quarter_turns(test_rotations)
  train, test = split_classes(data, num_test_classes, seed)
  if train_turns != [(0, 0)]:
    train = augment_rotations(train, train_rotations)
  if test_turns != [(0, 0)]:
    test = augment_rotations(test, test_rotations)
  return train, test
