"""Loads class-per-folder image collections from folders and archives.

Two layouts are understood, told apart by how deep the image files sit:

* one level, ``root/<class>/<image>``: each subfolder is a class;
* two levels, ``root/<group>/<class>/<image>``: each sub-subfolder is a class
  named ``"<group>/<class>"`` (Omniglot's ``<alphabet>/<character>``).

``root`` may be a folder, a ``.zip`` or a ``.tar[.gz|.bz2|.xz]`` archive (where
the layout may sit under one top folder, as in the Omniglot zips), or a folder
inside an archive written as ``archive.tar.gz/train``. A list of roots loads
their union, keeping the first root's images for a class name met twice.

:func:`scan_root`, :func:`open_image` and :func:`image_to_array` are shared
with the other loaders of this package (e.g. the Omniglot runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import io
import os
import pathlib
import tarfile
import zipfile

import numpy as np
from PIL import Image

from base.data.labelled import LabelledImages
from base.errors import ConfigError, DataError

PathLike = str | os.PathLike
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
_TAR_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tbz2', '.tar.xz',
                 '.txz')
_GRAY_MODES = frozenset({'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16L', 'I;16B',
                         'I;16N', 'F'})
_LAYOUT_HINT = ('expected <root>/<class>/<image> or'
                ' <root>/<group>/<class>/<image> with .png/.jpg/.jpeg images')


@dataclasses.dataclass
class TreeNode:
  """A folder of the scanned tree: subfolders, image and other files (keys)."""
  dirs: dict[str, TreeNode] = dataclasses.field(default_factory=dict)
  images: list[str] = dataclasses.field(default_factory=list)
  other_files: list[str] = dataclasses.field(default_factory=list)

  def child(self, name: str) -> TreeNode:
    return self.dirs.setdefault(name, TreeNode())

  def image_depths(self, depth: int = 0) -> set[int]:
    depths = {depth} if self.images else set()
    for node in self.dirs.values():
      depths |= node.image_depths(depth + 1)
    return depths

  def is_empty(self) -> bool:
    return not self.dirs and not self.images and not self.other_files


@dataclasses.dataclass
class ScannedRoot:
  """One scanned root: its folder tree and how to read an image by key."""
  display: str  # The path as the user should see it in messages.
  tree: TreeNode
  read: Callable[[str], bytes | str]  # key -> bytes, or a file path.
  is_archive: bool
  stem: str  # Archive name without extensions (for unwrapping a top folder).
  close: Callable[[], None] = lambda: None


def _is_hidden(name: str) -> bool:
  return name.startswith('.') or name == '__MACOSX'


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def _insert(tree: TreeNode, parts: Sequence[str], key: str | None) -> None:
  """Adds a file (``key`` given) or folder (``key`` None) at ``parts``."""
  if any(_is_hidden(p) for p in parts[:-1 if key is not None else None]):
    return
  node = tree
  dir_parts = parts[:-1] if key is not None else parts
  for part in dir_parts:
    node = node.child(part)
  if key is not None:
    if _is_image(parts[-1]):
      node.images.append(key)
    elif not _is_hidden(parts[-1]):
      node.other_files.append(key)


def _strip_suffix(name: str) -> str:
  lower = name.lower()
  for suffix in sorted(_TAR_SUFFIXES + ('.zip',), key=len, reverse=True):
    if lower.endswith(suffix):
      return name[:-len(suffix)]
  return name


def _split_archive_path(path: pathlib.Path) -> tuple[pathlib.Path, str]:
  """Splits ``a/b.zip/x/y`` into an existing file ``a/b.zip`` and ``x/y``."""
  for parent in path.parents:
    if parent.is_file():
      return parent, path.relative_to(parent).as_posix()
    if parent.exists():
      break
  raise DataError(f'image folder path does not exist: {path}')


def _scan_dir(path: pathlib.Path) -> ScannedRoot:
  tree = TreeNode()
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
    rel = pathlib.Path(dirpath).relative_to(path).parts
    node = tree
    for part in rel:
      node = node.child(part)
    for d in dirnames:
      node.child(d)
    for f in sorted(filenames):
      if _is_image(f):
        node.images.append(os.path.join(dirpath, f))
      elif not _is_hidden(f):
        node.other_files.append(os.path.join(dirpath, f))
  return ScannedRoot(display=str(path), tree=tree, read=lambda key: key,
                     is_archive=False, stem=path.name)


def _scan_zip(path: pathlib.Path, inner: str) -> ScannedRoot:
  try:
    archive = zipfile.ZipFile(path)
    names = archive.namelist()
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise DataError(f'{path} is not a readable zip archive ({e})') from e
  prefix = inner.strip('/') + '/' if inner else ''
  if prefix and not any(n.replace('\\', '/').startswith(prefix)
                        for n in names):
    archive.close()
    raise DataError(f'folder {inner!r} does not exist inside {path}')
  tree = TreeNode()
  for name in names:
    norm = name.replace('\\', '/')
    if not norm.startswith(prefix):
      continue
    rel = norm[len(prefix):]
    parts = [p for p in rel.split('/') if p]
    if not parts:
      continue
    _insert(tree, parts, None if norm.endswith('/') else name)
  display = f'{path}/{inner}' if inner else str(path)
  return ScannedRoot(display=display, tree=tree, read=archive.read,
                     is_archive=True,
                     stem=_strip_suffix(path.name) if not inner else '',
                     close=archive.close)


def _scan_tar(path: pathlib.Path, inner: str) -> ScannedRoot:
  prefix = inner.strip('/') + '/' if inner else ''
  tree, contents, found = TreeNode(), {}, False
  try:
    with tarfile.open(path, 'r:*') as archive:
      for member in archive:
        name = member.name
        while name.startswith('./'):
          name = name[2:]
        if not (name + '/').startswith(prefix):
          continue
        found = True
        parts = [p for p in name[len(prefix):].split('/') if p]
        if not parts:
          continue
        if member.isdir():
          _insert(tree, parts, None)
        elif member.isfile():
          _insert(tree, parts, name)
          if not any(_is_hidden(p) for p in parts):
            contents[name] = archive.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DataError(f'{path} is not a readable tar archive ({e})') from e
  if prefix and not found:
    raise DataError(f'folder {inner!r} does not exist inside {path}')
  display = f'{path}/{inner}' if inner else str(path)
  return ScannedRoot(display=display, tree=tree, read=contents.__getitem__,
                     is_archive=True,
                     stem=_strip_suffix(path.name) if not inner else '')


def scan_root(path: PathLike) -> ScannedRoot:
  """Reads the folder tree of a folder, archive or folder inside an archive."""
  path = pathlib.Path(os.path.expanduser(os.fspath(path)))
  if path.is_dir():
    return _scan_dir(path)
  inner = ''
  if not path.exists():
    path, inner = _split_archive_path(path)
  lower = path.name.lower()
  if lower.endswith(_TAR_SUFFIXES):
    return _scan_tar(path, inner)
  if lower.endswith('.zip') or zipfile.is_zipfile(path):
    return _scan_zip(path, inner)
  raise DataError(
      f'{path} is a file but not a .zip or .tar archive; expected a folder'
      ' of class subfolders or an archive of one')


def _find_classes(root: ScannedRoot) -> list[tuple[str, list[str]]]:
  """Detects the layout and lists ``(class name, image keys)`` sorted by name.

  Raises:
    DataError: empty roots, roots without class folders and class folders
      without images, naming the offending path.
  """
  tree, display = root.tree, root.display
  if tree.is_empty():
    raise DataError(f'image folder {display} is empty; {_LAYOUT_HINT}')
  # Unwrap single top folders that cannot be part of the layout: images three
  # or more levels down, or an archive "name.zip" holding one folder "name/".
  while not tree.images and len(tree.dirs) == 1:
    (name, only), = tree.dirs.items()
    depths = tree.image_depths()
    if not depths:
      break
    if min(depths) >= 3 or (root.is_archive and name == root.stem and
                            min(depths) >= 2):
      tree, display = only, f'{display}/{name}'
    else:
      break
  if not tree.dirs:
    what = 'images but' if tree.images else 'no images and'
    raise DataError(
        f'image folder {display} has {what} no class subfolders;'
        f' {_LAYOUT_HINT}')
  groups = sorted(tree.dirs.items())
  if any(node.images for _, node in groups):  # One level: root/class/image.
    classes = []
    for name, node in groups:
      if not node.images:
        mixed = ' (it only has subfolders: mixed one- and two-level layout)'
        raise DataError(
            f'class folder {display}/{name} has no images'
            f'{mixed if node.dirs else ""}; {_LAYOUT_HINT}')
      classes.append((name, sorted(node.images)))
    return classes
  classes = []  # Two levels: root/group/class/image.
  for group, group_node in groups:
    if not group_node.dirs:
      raise DataError(
          f'folder {display}/{group} has no images and no class subfolders;'
          f' {_LAYOUT_HINT}')
    for name, node in sorted(group_node.dirs.items()):
      if not node.images:
        raise DataError(
            f'class folder {display}/{group}/{name} has no images;'
            f' {_LAYOUT_HINT}')
      classes.append((f'{group}/{name}', sorted(node.images)))
  return classes


def open_image(root: ScannedRoot, key: str) -> Image.Image:
  """Opens and fully decodes one image, as DataError if it cannot be read."""
  shown = key if not root.is_archive else f'{root.display}:{key}'
  try:
    source = root.read(key)
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes)
                       else source)
    image.load()
    return image
  except Exception as e:  # pylint: disable=broad-except
    # PIL, zlib and zipfile raise many types for a corrupt file; all of them
    # mean the same thing to the user.
    raise DataError(f'cannot read image file {shown}: {e}') from e


def _is_gray(image: Image.Image) -> bool:
  if image.mode in _GRAY_MODES:
    return True
  if image.mode in ('P', 'PA'):
    rgb = np.asarray(image.convert('RGB'))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and
                (rgb[..., 1] == rgb[..., 2]).all())
  return False


def image_to_array(image: Image.Image, grayscale: bool,
                   size: tuple[int, int] | None) -> np.ndarray:
  """``[H, W, C]`` uint8 in the chosen mode, resized when ``size`` given."""
  if image.mode in ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F'):
    # 16-bit and float grayscale: rescale to 8 bits instead of clipping.
    values = np.asarray(image, dtype=np.float64)
    hi = 65535.0 if image.mode.startswith('I;16') or values.max() > 255 else (
        1.0 if image.mode == 'F' and values.max() <= 1.0 else 255.0)
    image = Image.fromarray(
        np.clip(values / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), 'L')
  image = image.convert('L' if grayscale else 'RGB')
  if size is not None and image.size != size:
    image = image.resize(size, Image.Resampling.LANCZOS)
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if grayscale else array


def _as_path_list(path: PathLike | Sequence[PathLike]) -> list[PathLike]:
  if isinstance(path, (str, os.PathLike)):
    return [path]
  paths = list(path)
  if not paths:
    raise DataError('load_image_folder got an empty list of paths')
  return paths


def load_image_folder(path: PathLike | Sequence[PathLike],
                      image_size: int | None,
                      grayscale: bool | None = None,
                      *,
                      max_per_class: int | None = None) -> LabelledImages:
  """Loads a class-per-folder image collection (see the module docstring).

  Args:
    path: a folder, a ``.zip``/``.tar*`` archive, a folder inside an archive
      (``data.tar.gz/train``), or a list of these whose classes are united (a
      class name already loaded from an earlier path is skipped).
    image_size: resize every image to ``image_size x image_size`` (PIL
      Lanczos, antialiased); ``None`` keeps the native size, which must then be
      the same for all images.
    grayscale: ``True`` for one channel, ``False`` for RGB; ``None`` follows
      the first image. Images of the other mode are converted to the chosen
      one, so mixed collections load consistently.
    max_per_class: keep at most this many images (the first, by file name) of
      each class, e.g. to load a large collection quickly.

  Returns:
    :class:`LabelledImages` with images ``[n, S, S, C]`` float32 in ``[0, 1]``
    (``C`` 1 or 3), classes sorted by name within each path, images by file
    name within each class.

  Raises:
    DataError: a missing path, an empty folder, a folder without class
      subfolders, a class folder without images, an unreadable archive or
      image file (each named), or images of different sizes when
      ``image_size`` is None.
  """
  if image_size is not None and (isinstance(image_size, bool) or
                                 not isinstance(image_size, (int, np.integer))
                                 or image_size < 1):
    raise ConfigError(
        f'image_size must be a positive integer or None, got {image_size!r}')
  if max_per_class is not None and (isinstance(max_per_class, bool) or
                                    max_per_class < 1):
    raise ConfigError(
        f'max_per_class must be a positive integer, got {max_per_class!r}')
  roots: list[ScannedRoot] = []
  try:
    # (class name, root, image keys) for the union of all roots, in order.
    classes: list[tuple[str, ScannedRoot, list[str]]] = []
    seen: set[str] = set()
    for p in _as_path_list(path):
      roots.append(scan_root(p))
      for name, keys in _find_classes(roots[-1]):
        if name not in seen:
          seen.add(name)
          classes.append((name, roots[-1], keys[:max_per_class]))
    return _decode_all(classes, image_size, grayscale)
  finally:
    for root in roots:
      root.close()


def _decode_all(classes: list[tuple[str, ScannedRoot, list[str]]],
                image_size: int | None,
                grayscale: bool | None) -> LabelledImages:
  """Decodes every listed image into one :class:`LabelledImages`."""
  first_root, first_keys = classes[0][1], classes[0][2]
  first = open_image(first_root, first_keys[0])
  if grayscale is None:
    grayscale = _is_gray(first)
  size = (int(image_size),) * 2 if image_size is not None else first.size
  num_images = sum(len(keys) for _, _, keys in classes)
  channels = 1 if grayscale else 3
  images = np.empty((num_images, size[1], size[0], channels), np.uint8)
  labels = np.empty((num_images,), np.int32)
  i = 0
  for label, (_, root, keys) in enumerate(classes):
    for key in keys:
      image = first if i == 0 else open_image(root, key)
      if image_size is None and image.size != size:
        shown = key if not root.is_archive else f'{root.display}:{key}'
        raise DataError(
            f'image {shown} is {image.size[0]}x{image.size[1]} but the first'
            f' image is {size[0]}x{size[1]}; pass image_size to resize all'
            ' images to one size')
      images[i] = image_to_array(image, grayscale,
                                 size if image_size else None)
      labels[i] = label
      i += 1
  return LabelledImages(
      images=images.astype(np.float32) / np.float32(255.0),
      labels=labels,
      class_names=tuple(name for name, _, _ in classes))
