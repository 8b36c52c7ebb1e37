"""Data sources: loaders returning :class:`LabelledImages`, and a registry.

``SOURCES`` maps a config name (``data.source``) to a function that takes the
data config and returns :class:`LabelledImages`; adding a source is one
``@register_source("name")`` function. The loaders themselves are ordinary
functions usable without any config:

* :func:`load_digits`: scikit-learn's bundled 8x8 digits, no download needed;
* :func:`load_image_folder`: class-per-folder images (folders, zips, tars);
* :func:`load_omniglot`: the Omniglot background zips, strokes 1 on 0;
* :func:`load_omniglot_runs`: the 20 official 20-way 1-shot Omniglot runs;
* :func:`load_tfds`: a TensorFlow Datasets dataset the user has prepared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from base.data import image_folder as image_folder_lib
from base.data.episodes import Episode
from base.data.image_folder import load_image_folder
from base.data.image_folder import PathLike
from base.data.labelled import LabelledImages
from base.errors import ConfigError, DataError

SourceFn = Callable[[Any], LabelledImages]
SOURCES: dict[str, SourceFn] = {}

DATA_DIR_ENV = 'BASE_DATA_DIR'
OMNIGLOT_BACKGROUND_SMALL = ('omniglot/images_background_small1.zip',
                             'omniglot/images_background_small2.zip')
OMNIGLOT_RUNS = 'omniglot/all_runs.zip'
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_MISSING = object()


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
  """Registers ``fn(data_config) -> LabelledImages`` as ``data.source=name``.

  Registering a name again replaces the earlier entry (so reloading a module
  in a notebook works).
  """

  def decorator(fn: SourceFn) -> SourceFn:
    SOURCES[name] = fn
    return fn

  return decorator


def config_field(config: Any, name: str, default: Any = _MISSING) -> Any:
  """Reads ``config.name`` (or ``config[name]`` for a mapping).

  Raises:
    ConfigError: if the field is missing and no default is given.
  """
  if isinstance(config, Mapping):
    value = config.get(name, default)
  else:
    try:
      value = getattr(config, name)
    except (AttributeError, KeyError):
      value = default
  if value is _MISSING:
    raise ConfigError(f'the data config has no field {name!r}')
  return value


# ----------------------------------------------------------------- locations


def default_data_dirs() -> list[pathlib.Path]:
  """Where the shared offline data sets are looked for, in order.

  ``$BASE_DATA_DIR`` if set; otherwise ``../shared/data`` relative to the
  current directory and relative to the repository root (the parent of the
  ``base`` package).
  """
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return [pathlib.Path(env).expanduser()]
  dirs = []
  for base in (pathlib.Path.cwd(), _REPO_ROOT):
    candidate = (base / '..' / 'shared' / 'data').resolve()
    if candidate not in dirs:
      dirs.append(candidate)
  return dirs


def find_data_file(relative: str) -> pathlib.Path:
  """The first ``dir/relative`` that exists among :func:`default_data_dirs`.

  Raises:
    DataError: naming every place looked at.
  """
  dirs = default_data_dirs()
  for d in dirs:
    if (d / relative).exists():
      return d / relative
  tried = ', '.join(str(d / relative) for d in dirs)
  raise DataError(
      f'cannot find {relative}: looked at {tried}; pass the path explicitly'
      f' or set {DATA_DIR_ENV} to the folder that holds {relative}')


def _split_paths(path: Any) -> list[PathLike] | None:
  """``""``/None -> None; ``"a.zip,b.zip"`` or a list -> a list of paths."""
  if path is None or (isinstance(path, str) and not path.strip()):
    return None
  if isinstance(path, (str, os.PathLike)):
    text = os.fspath(path)
    if ',' in text and not os.path.exists(text):
      return [p.strip() for p in text.split(',') if p.strip()]
    return [path]
  return list(path)


# -------------------------------------------------------------------- digits


def _resize_float(images: np.ndarray, size: int) -> np.ndarray:
  """``[n, H, W]`` float in [0, 1] -> ``[n, size, size]`` (PIL bilinear)."""
  out = np.empty((images.shape[0], size, size), np.float32)
  for i, image in enumerate(images):
    pil = Image.fromarray(image.astype(np.float32), mode='F')
    out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
  return np.clip(out, 0.0, 1.0)


def load_digits(image_size: int = 8) -> LabelledImages:
  """scikit-learn's bundled handwritten digits (no download).

  Args:
    image_size: side of the returned images; the native 8x8 images are
      resized with PIL bilinear interpolation when it differs.

  Returns:
    1797 images ``[1797, S, S, 1]`` float32 in ``[0, 1]`` (raw values 0..16
    divided by 16), 10 classes named ``"0"``..``"9"``.
  """
  if (isinstance(image_size, bool) or
      not isinstance(image_size, (int, np.integer)) or image_size < 1):
    raise ConfigError(
        f'image_size must be a positive integer, got {image_size!r}')
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = digits.images.astype(np.float32) / np.float32(16.0)  # [n, 8, 8]
  if image_size != images.shape[1]:
    images = _resize_float(images, int(image_size))
  return LabelledImages(
      images=images[..., None],
      labels=digits.target.astype(np.int32),
      class_names=tuple(str(d) for d in range(10)))


# ------------------------------------------------------------------ omniglot


def load_omniglot(path: PathLike | Sequence[PathLike] | None = None,
                  image_size: int = 28,
                  invert: bool = True) -> LabelledImages:
  """Omniglot characters, one class per ``"<alphabet>/<character>"``.

  Args:
    path: Omniglot zip(s) or extracted folder(s) (``images_background*``);
      None or ``""`` loads both ``images_background_small*.zip`` from
      :func:`default_data_dirs` (242 distinct characters: Greek and Latin
      appear in both zips and are loaded once).
    image_size: side of the returned images (the originals are 105x105).
    invert: make strokes 1.0 and background 0.0 (the files are black on
      white), the usual input for Omniglot models.

  Returns:
    ``[n, S, S, 1]`` float32 images in ``[0, 1]``, 20 per character.
  """
  paths = _split_paths(path)
  if paths is None:
    paths = [find_data_file(p) for p in OMNIGLOT_BACKGROUND_SMALL]
  data = load_image_folder(paths, image_size, grayscale=True)
  if invert:
    data = LabelledImages(images=1.0 - data.images, labels=data.labels,
                          class_names=data.class_names)
  return data


def load_omniglot_runs(path: PathLike | None = None,
                       image_size: int = 28,
                       invert: bool = True) -> Episode:
  """The 20 official Omniglot one-shot runs (Lake et al. 2015) as episodes.

  Each run is a 20-way 1-shot task over characters of the evaluation
  alphabets: ``training/classNN.png`` are the support images (label
  ``NN - 1``) and ``test/itemNN.png`` the queries, labelled by
  ``class_labels.txt``.

  Args:
    path: ``all_runs.zip`` or its extracted folder; None or ``""`` looks for
      ``omniglot/all_runs.zip`` in :func:`default_data_dirs`.
    image_size: side of the returned images.
    invert: make strokes 1.0 and background 0.0.

  Returns:
    An :class:`Episode` with a leading run axis: ``support_x`` and
    ``query_x`` ``[20, 20, S, S, 1]``, ``support_y`` and ``query_y``
    ``[20, 20]``.
  """
  paths = _split_paths(path)
  root = image_folder_lib.scan_root(
      paths[0] if paths else find_data_file(OMNIGLOT_RUNS))
  try:
    episode = _read_runs(root, image_size)
  finally:
    root.close()
  if invert:
    episode = episode._replace(support_x=1.0 - episode.support_x,
                               query_x=1.0 - episode.query_x)
  return episode


def _read_runs(root: image_folder_lib.ScannedRoot,
               image_size: int) -> Episode:
  """Decodes every ``runNN`` of a scanned all_runs tree (see above)."""
  tree = root.tree
  while len(tree.dirs) == 1 and not any(  # Unwrap "all_runs/run01/...".
      name.startswith('run') for name in tree.dirs):
    (_, tree), = tree.dirs.items()
  runs = sorted(name for name in tree.dirs if name.startswith('run'))
  if not runs:
    raise DataError(
        f'{root.display} has no runNN folders; expected the Omniglot'
        ' all_runs layout runNN/{training,test}/*.png + class_labels.txt')
  size = (image_size, image_size)

  def load(key: str) -> np.ndarray:
    image = image_folder_lib.open_image(root, key)
    array = image_folder_lib.image_to_array(image, True, size)
    return array.astype(np.float32) / np.float32(255.0)

  name = lambda key: pathlib.PurePosixPath(key).name
  support_x, support_y, query_x, query_y = [], [], [], []
  for run in runs:
    node = tree.dirs[run]
    try:
      training = {name(k): k for k in node.dirs['training'].images}
      test = {name(k): k for k in node.dirs['test'].images}
      labels_key = next(k for k in node.other_files
                        if name(k) == 'class_labels.txt')
      words = _read_text(root, labels_key).split()
      classes = sorted(training)
      pairs = list(zip(words[0::2], words[1::2]))
      query_keys = [test[name(q)] for q, _ in pairs]
      query_labels = [classes.index(name(c)) for _, c in pairs]
    except (KeyError, StopIteration, ValueError) as e:
      raise DataError(
          f'{root.display}/{run} does not match the Omniglot all_runs layout'
          ' (training/classNN.png, test/itemNN.png and a class_labels.txt'
          f' naming them): {e}') from e
    if support_x and (len(classes), len(pairs)) != (
        support_x[0].shape[0], query_x[0].shape[0]):
      raise DataError(f'{root.display}/{run} has a different number of'
                      ' classes or items than the first run')
    support_x.append(np.stack([load(training[c]) for c in classes]))
    support_y.append(np.arange(len(classes), dtype=np.int32))
    query_x.append(np.stack([load(k) for k in query_keys]))
    query_y.append(np.array(query_labels, np.int32))
  return Episode(np.stack(support_x), np.stack(support_y),
                 np.stack(query_x), np.stack(query_y))


def _read_text(root: image_folder_lib.ScannedRoot, key: str) -> str:
  """A small text file of a scanned root (e.g. class_labels.txt)."""
  source = root.read(key)
  if isinstance(source, bytes):
    return source.decode()
  return pathlib.Path(source).read_text()


# ---------------------------------------------------------------------- tfds


def _chunks(source: Any, size: int = 2048) -> Iterator[list[Any]]:
  """Examples of a random-access TFDS data source in order, a chunk at a time.

  Uses the batched ``__getitems__`` read when it works (about 1.5x faster)
  and falls back to one ``source[i]`` per example.
  """
  n = len(source)
  getitems = getattr(source, '__getitems__', None)
  batched = getitems is not None
  for start in range(0, n, size):
    keys = list(range(start, min(n, start + size)))
    if batched:
      try:
        yield list(getitems(keys))
        continue
      except TypeError:
        # tfds.testing.mock_data (4.9.x) patches __getitems__ with a broken
        # signature; the per-item path reads the same examples.
        if start:
          raise
        batched = False
    yield [source[i] for i in keys]


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """``[H, W]`` or ``[H, W, C]`` -> ``[H, W, channels]`` for channels 1 or 3."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == channels:
    return image
  if channels == 3:
    return np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else (
        image[..., :3])
  luma = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                       np.float32)
  return luma[..., None].astype(image.dtype)


def _tfds_image(image: Any, channels: int, shape: tuple[int, int] | None,
                name: str, image_key: str) -> np.ndarray:
  """One TFDS image as ``[S, S, channels]`` float32 in [0, 255]."""
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise DataError(
        f'TFDS dataset {name!r} feature {image_key!r} has shape {image.shape};'
        ' expected [H, W, C] images')
  if np.issubdtype(image.dtype, np.floating):
    image = np.rint(np.clip(image, 0.0, 1.0) * 255.0)
  image = _to_channels(image.astype(np.uint8), channels)
  if shape is not None and image.shape[:2] != shape:
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    image = np.asarray(pil.resize(shape[::-1], Image.Resampling.LANCZOS))
    image = image.reshape(shape + (channels,))
  return image.astype(np.float32)


def load_tfds(name: str,
              split: str = 'train',
              image_size: int | None = None,
              data_dir: str | None = None,
              image_key: str = 'image',
              label_key: str = 'label',
              *,
              download: bool = False) -> LabelledImages:
  """A TensorFlow Datasets image classification split as LabelledImages.

  Reads through ``tfds.data_source`` (random access to ``array_record``
  files), which needs neither TensorFlow nor a network once the data is
  prepared; ``tensorflow_datasets`` is imported only when this is called.

  Args:
    name: registered TFDS name, optionally with config/version
      (``"omniglot"``, ``"mnist:3.0.1"``).
    split: TFDS split spec, slicing included (``"train[:10%]"``).
    image_size: resize to ``image_size x image_size`` (PIL Lanczos); None
      keeps the native size, which must then be uniform.
    data_dir: where the prepared dataset lives (TFDS default:
      ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    image_key: feature holding the ``[H, W, C]`` uint8 image.
    label_key: feature holding the integer label; its ``ClassLabel`` names
      become the class names (all of them, in TFDS order, so label ids match
      the dataset's).
    download: download and prepare the dataset in ``array_record`` format
      first (needs a network; most builders also need TensorFlow to encode
      images while preparing).

  Returns:
    :class:`LabelledImages` with ``[n, S, S, C]`` float32 images in [0, 1].

  Raises:
    DataError: tensorflow_datasets missing, unknown dataset, dataset or split
      not available under ``data_dir``, or missing image/label features.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        'load_tfds needs tensorflow-datasets: pip install tensorflow-datasets'
    ) from e
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  try:
    source = tfds.data_source(
        name, split=split, data_dir=data_dir, download=download,
        builder_kwargs={'file_format': 'array_record'})
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
        f'unknown TFDS dataset {name!r}; see tfds.list_builders() for the'
        ' registered names') from e
  except ModuleNotFoundError as e:
    package = ('tensorflow-cpu' if (e.name or '').startswith('tensorflow')
               else e.name)
    raise DataError(
        f'preparing TFDS dataset {name!r} needs the {e.name!r} module (pip'
        f' install {package}), or prepare it elsewhere with'
        " file_format='array_record' and pass its data_dir") from e
  except Exception as e:  # pylint: disable=broad-except
    # TFDS reports a missing or tfrecord-only dataset as KeyError,
    # NotImplementedError, FileNotFoundError, ... depending on the state.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise DataError(
        f'TFDS dataset {name!r} split {split!r} is not available in'
        f' array_record format under {where} ({type(e).__name__}:'
        f' {first_line}); pass download=True to download and prepare it, or'
        ' data_dir=<folder where it was prepared with'
        " file_format='array_record'>") from e
  num_examples = len(source)
  if num_examples == 0:
    raise DataError(f'TFDS dataset {name!r} split {split!r} has no examples')
  images = labels = channels = shape = None
  i = 0
  for chunk in _chunks(source):
    if images is None:  # The first example fixes the layout.
      missing = [k for k in (image_key, label_key) if k not in chunk[0]]
      if missing:
        raise DataError(
            f'TFDS dataset {name!r} has no feature {missing[0]!r}; its'
            f' features are {sorted(chunk[0])}; pass image_key=/label_key=')
      first = np.asarray(chunk[0][image_key])
      channels = 1 if first.ndim == 2 or first.shape[-1] == 1 else 3
      shape = ((int(image_size),) * 2 if image_size is not None
               else tuple(first.shape[:2]))
      images = np.empty((num_examples,) + shape + (channels,), np.float32)
      labels = np.empty((num_examples,), np.int64)
    for example in chunk:
      image = _tfds_image(example[image_key], channels,
                          shape if image_size is not None else None, name,
                          image_key)
      if image.shape[:2] != shape:
        raise DataError(
            f'TFDS dataset {name!r} has images of different sizes ({shape}'
            f' and {image.shape[:2]}); pass image_size')
      images[i] = image
      labels[i] = int(example[label_key])
      i += 1
  images /= np.float32(255.0)
  feature = None
  try:
    feature = source.dataset_info.features[label_key]
  except (AttributeError, KeyError, TypeError):
    pass
  names = getattr(feature, 'names', None)
  if names:
    class_names = tuple(str(n) for n in names)
  else:  # A plain integer label: keep the values that occur, in order.
    values, labels = np.unique(labels, return_inverse=True)
    class_names = tuple(str(v) for v in values)
  return LabelledImages(images=images, labels=labels.astype(np.int32),
                        class_names=class_names)


# ------------------------------------------------------------------ registry


def _image_size(config: Any, default: int | None) -> int | None:
  size = config_field(config, 'image_size', None)
  return default if size in (None, 0) else size


@register_source('digits')
def _digits_source(config: Any) -> LabelledImages:
  return load_digits(_image_size(config, 8))


@register_source('omniglot')
def _omniglot_source(config: Any) -> LabelledImages:
  return load_omniglot(_split_paths(config_field(config, 'path', '')),
                       _image_size(config, 28))


@register_source('image_folder')
def _image_folder_source(config: Any) -> LabelledImages:
  paths = _split_paths(config_field(config, 'path', ''))
  if paths is None:
    raise ConfigError(
        "data.source='image_folder' needs data.path: a folder, zip or tar of"
        ' class subfolders (several separated by commas)')
  max_per_class = config_field(config, 'max_per_class', 0) or None
  grayscale = config_field(config, 'grayscale', None)
  return load_image_folder(paths, _image_size(config, None),
                           grayscale=grayscale, max_per_class=max_per_class)


@register_source('tfds')
def _tfds_source(config: Any) -> LabelledImages:
  name = config_field(config, 'tfds_name', '')
  if not name:
    raise ConfigError(
        "data.source='tfds' needs data.tfds_name (e.g. 'omniglot')")
  return load_tfds(
      name,
      split=config_field(config, 'tfds_split', '') or 'train',
      image_size=_image_size(config, None),
      data_dir=config_field(config, 'path', '') or None,
      image_key=config_field(config, 'tfds_image_key', '') or 'image',
      label_key=config_field(config, 'tfds_label_key', '') or 'label')
