"""Builds the meta-train and meta-test task families from a data config."""

from __future__ import annotations

from typing import Any

from base.data.episodes import check_count
from base.data.episodes import EpisodeSampler
from base.data.sources import config_field
from base.data.sources import SOURCES
from base.data.transforms import quarter_turns
from base.data.transforms import split_and_augment
from base.errors import ConfigError, DataError


def make_task_families(data_config: Any
                      ) -> tuple[EpisodeSampler, EpisodeSampler]:
  """Loads the configured source and returns disjoint-class task families.

  The base classes are split first (``num_test_classes``, ``seed``), then the
  meta-train classes alone are rotation-augmented (``rotations``), so no
  meta-test character, rotated or not, is seen in meta-training.

  Args:
    data_config: an ``ml_collections.ConfigDict``, a mapping or any object
      with the fields ``source`` (a key of ``SOURCES``), ``num_ways``,
      ``num_shots``, ``num_queries``, ``num_test_classes`` (int count or float
      fraction of base classes), and optionally ``path`` (``""``),
      ``image_size`` (per-source default), ``rotations`` (``(0,)``: none),
      ``seed`` (0), ``tfds_name``, ``tfds_split`` (``"train"``),
      ``tfds_image_key`` (``"image"``) and ``tfds_label_key`` (``"label"``);
      for ``source="tfds"``, ``path`` is the TFDS ``data_dir``.

  Returns:
    ``(meta_train_family, meta_test_family)``: :class:`EpisodeSampler` s over
    disjoint classes.

  Raises:
    ConfigError: an unknown source or a missing/invalid field.
    DataError: the data cannot be loaded, or a split has too few classes (or
      images per class) for the requested episodes.
  """
  source = config_field(data_config, 'source')
  if source not in SOURCES:
    raise ConfigError(
        f'unknown data source {source!r}; registered sources:'
        f' {", ".join(sorted(SOURCES))}')
  num_ways = check_count('num_ways', config_field(data_config, 'num_ways'), 1)
  num_shots = check_count('num_shots', config_field(data_config, 'num_shots'),
                           1)
  num_queries = check_count('num_queries',
                             config_field(data_config, 'num_queries'), 1)
  num_test_classes = config_field(data_config, 'num_test_classes')
  # Validate (and normalise mod 360) the angles before loading any data.
  rotations = tuple(angle for angle, _ in quarter_turns(
      config_field(data_config, 'rotations', (0,)) or (0,)))
  seed = config_field(data_config, 'seed', 0)

  data = SOURCES[source](data_config)
  train, test = split_and_augment(data, num_test_classes, seed,
                                  train_rotations=rotations)
  for split, name in ((test, 'meta-test'), (train, 'meta-train')):
    if split.num_classes < num_ways:
      how = ('raise num_test_classes or lower num_ways' if name == 'meta-test'
             else 'lower num_test_classes or num_ways, or add rotations')
      raise DataError(
          f'the {name} split needs {num_ways} classes for {num_ways}-way'
          f' episodes but the data has {split.num_classes}'
          f' ({source!r} has {data.num_classes} classes,'
          f' num_test_classes={num_test_classes!r},'
          f' rotations={rotations}); {how}')
  return (EpisodeSampler(train, num_ways, num_shots, num_queries,
                         name='meta-train'),
          EpisodeSampler(test, num_ways, num_shots, num_queries,
                         name='meta-test'))
