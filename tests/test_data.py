"""Tests for base.data: episodes, splits, rotations and every data source."""

import pathlib
import re
import socket
import tarfile
import zipfile

import ml_collections
import numpy as np
from PIL import Image
import pytest

from base import data as bd
from base.errors import ConfigError, DataError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared' / 'data'
OMNIGLOT_ZIPS = [SHARED / p for p in bd.OMNIGLOT_BACKGROUND_SMALL]


# ------------------------------------------------------------------ helpers


def _toy(num_classes=12, per_class=8, size=4, sizes=None):
  """Images whose pixels encode (class, index): [0,0]=class, [0,1]=id."""
  sizes = sizes or [per_class] * num_classes
  n = sum(sizes)
  labels = np.repeat(np.arange(num_classes), sizes).astype(np.int32)
  images = np.zeros((n, size, size, 1), np.float32)
  images[:, 0, 0, 0] = labels / num_classes
  images[:, 0, 1, 0] = np.arange(n) / n
  return bd.LabelledImages(images, labels,
                           tuple(f'c{i}' for i in range(num_classes)))


def _ids(x, n):
  """Recovers the unique image ids encoded by _toy from [..., H, W, C]."""
  return np.rint(x[..., 0, 1, 0] * n).astype(int)


def _classes(x, num_classes):
  return np.rint(x[..., 0, 0, 0] * num_classes).astype(int)


def _config(**overrides):
  fields = dict(source='digits', path='', image_size=8, rotations=(0,),
                num_test_classes=4, num_ways=3, num_shots=2, num_queries=3,
                seed=0, tfds_name='', tfds_split='train')
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _png(path, array, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _gray(value, size=6):
  return np.full((size, size), value, np.uint8)


def _write_tree(root, layout):
  """layout: {relative file path: uint8 array ([H, W] or [H, W, 3])}."""
  for rel, array in layout.items():
    _png(root / rel, array)
  return root


def _zip_dir(folder, zip_path, top=None):
  with zipfile.ZipFile(zip_path, 'w') as z:
    for f in sorted(folder.rglob('*')):
      rel = f.relative_to(folder).as_posix()
      z.write(f, f'{top}/{rel}' if top else rel)
  return zip_path


@pytest.fixture(name='no_network')
def _no_network(monkeypatch):
  """Makes any attempt to open a connection fail loudly."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args} {kwargs}')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)


# ------------------------------------------------------------------ episodes


@pytest.mark.parametrize('ways,shots,queries',
                         [(5, 1, 3), (3, 2, 6), (12, 1, 1)])
def test_episode_shapes_labels_and_disjointness(ways, shots, queries):
  data = _toy()
  sampler = bd.EpisodeSampler(data, ways, shots, queries)
  rng = np.random.default_rng(0)
  for _ in range(20):
    ep = sampler.sample(rng)
    assert ep.support_x.shape == (ways * shots, 4, 4, 1)
    assert ep.query_x.shape == (ways * queries, 4, 4, 1)
    assert ep.support_x.dtype == np.float32
    assert ep.support_y.dtype == np.int32 and ep.query_y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ep.support_y, minlength=ways),
                                  [shots] * ways)
    np.testing.assert_array_equal(np.bincount(ep.query_y, minlength=ways),
                                  [queries] * ways)
    s_ids, q_ids = _ids(ep.support_x, len(data)), _ids(ep.query_x, len(data))
    all_ids = np.concatenate([s_ids, q_ids])
    assert len(set(all_ids)) == all_ids.size  # No image used twice.
    # Each episode label is one original class, distinct across labels.
    s_cls, q_cls = _classes(ep.support_x, 12), _classes(ep.query_x, 12)
    label_to_class = {}
    for y, c in zip(np.concatenate([ep.support_y, ep.query_y]),
                    np.concatenate([s_cls, q_cls])):
      assert label_to_class.setdefault(int(y), int(c)) == c
    assert len(set(label_to_class.values())) == ways


def test_labels_are_reassigned_in_random_order():
  sampler = bd.EpisodeSampler(_toy(), 5, 1, 1)
  rng = np.random.default_rng(1)
  orders = set()
  for _ in range(30):
    ep = sampler.sample(rng)
    orders.add(tuple(_classes(ep.support_x, 12)))
  unsorted = [o for o in orders if list(o) != sorted(o)]
  assert len(orders) > 20 and unsorted


def test_sampling_is_deterministic_and_batch_matches_samples():
  sampler = bd.EpisodeSampler(_toy(), 4, 2, 3)
  a = sampler.sample_batch(np.random.default_rng(7), 6)
  b = sampler.sample_batch(np.random.default_rng(7), 6)
  c = sampler.sample_batch(np.random.default_rng(8), 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.support_x, c.support_x)
  assert a.support_x.shape == (6, 8, 4, 4, 1)
  assert a.query_y.shape == (6, 12)
  rng = np.random.default_rng(7)
  singles = [sampler.sample(rng) for _ in range(6)]
  for field, batched in zip(bd.Episode._fields, a):
    np.testing.assert_array_equal(
        batched, np.stack([getattr(s, field) for s in singles]))


def test_sampler_is_a_task_family_that_vmaps():
  import jax  # pylint: disable=g-import-not-at-top
  sampler = bd.EpisodeSampler(_toy(), 3, 1, 2)
  assert isinstance(sampler, bd.TaskFamily)
  assert (sampler.num_ways, sampler.num_shots, sampler.num_queries,
          sampler.image_shape) == (3, 1, 2, (4, 4, 1))
  batch = sampler.sample_batch(np.random.default_rng(0), 5)
  sums = jax.vmap(lambda ep: ep.support_x.sum() + ep.query_y.sum())(batch)
  assert sums.shape == (5,)


def test_sampler_errors():
  with pytest.raises(
      DataError,
      match='needs 20 classes for 20-way episodes but the data has 12'):
    bd.EpisodeSampler(_toy(), 20, 1, 1)
  small = _toy(num_classes=4, sizes=[8, 8, 8, 2])
  with pytest.raises(DataError, match=r"class 'c3' has 2 images .* need 4"):
    bd.EpisodeSampler(small, 2, 1, 3)
  for bad in [dict(num_ways=0), dict(num_shots=-1), dict(num_queries=1.5)]:
    kwargs = dict(num_ways=2, num_shots=1, num_queries=1) | bad
    with pytest.raises(ConfigError, match=next(iter(bad))):
      bd.EpisodeSampler(_toy(), **kwargs)


# ----------------------------------------------------------- LabelledImages


def test_labelled_images_validation():
  x = np.zeros((3, 2, 2, 1), np.float32)
  y = np.array([0, 1, 1])
  ok = bd.LabelledImages(x, y, ('a', 'b'))
  assert ok.labels.dtype == np.int32 and ok.num_classes == 2
  assert ok.image_shape == (2, 2, 1)
  with pytest.raises(DataError, match='4-D'):
    bd.LabelledImages(x[..., 0], y, ('a', 'b'))
  with pytest.raises(DataError, match='floating point'):
    bd.LabelledImages(x.astype(np.uint8), y, ('a', 'b'))
  with pytest.raises(DataError, match='3 images but 2 labels'):
    bd.LabelledImages(x, y[:2], ('a', 'b'))
  with pytest.raises(DataError, match=r'labels must lie in 0..1'):
    bd.LabelledImages(x, np.array([0, 1, 2]), ('a', 'b'))
  with pytest.raises(DataError, match='unique'):
    bd.LabelledImages(x, y, ('a', 'a'))


def test_subset_reindexes_labels_in_given_order():
  data = _toy(num_classes=5, per_class=3)
  sub = data.subset([3, 1])
  assert sub.class_names == ('c3', 'c1')
  assert len(sub) == 6
  np.testing.assert_array_equal(_classes(sub.images, 5)[sub.labels == 0], 3)
  np.testing.assert_array_equal(_classes(sub.images, 5)[sub.labels == 1], 1)
  with pytest.raises(DataError, match='distinct'):
    data.subset([1, 1])
  with pytest.raises(DataError, match='0..4'):
    data.subset([7])


# ------------------------------------------------------------ splits, rotations


def test_split_classes_is_disjoint_deterministic_and_sized():
  data = _toy()
  train, test = bd.split_classes(data, 4, seed=3)
  assert test.num_classes == 4 and train.num_classes == 8
  assert not set(train.class_names) & set(test.class_names)
  assert set(train.class_names) | set(test.class_names) == set(
      data.class_names)
  assert len(train) + len(test) == len(data)
  again = bd.split_classes(data, 4, seed=3)
  assert again[1].class_names == test.class_names
  assert bd.split_classes(data, 0.25, seed=0)[1].num_classes == 3
  seeds = {bd.split_classes(data, 4, seed=s)[1].class_names for s in range(5)}
  assert len(seeds) > 1
  with pytest.raises(DataError, match='between 1 and 11'):
    bd.split_classes(data, 12, seed=0)
  with pytest.raises(ConfigError, match=r'fraction and must lie in \(0, 1\)'):
    bd.split_classes(data, 1.5, seed=0)
  with pytest.raises(ConfigError, match='num_test_classes must be >= 1'):
    bd.split_classes(data, 0, seed=0)
  # An integral float (what a float config field holds for 4) is a count.
  assert bd.split_classes(data, 4.0, seed=3)[1].class_names == (
      test.class_names)


def test_augment_rotations_matches_rot90():
  data = _toy(num_classes=3, per_class=2)
  data = bd.LabelledImages(
      np.random.default_rng(0).random((6, 4, 4, 1), np.float32),
      data.labels, data.class_names)
  rotated = bd.augment_rotations(data)
  assert rotated.num_classes == 12 and len(rotated) == 24
  assert rotated.class_names[:4] == ('c0', 'c0@90', 'c0@180', 'c0@270')
  for c in range(3):
    originals = data.images[data.labels == c]
    for j, angle in enumerate((0, 90, 180, 270)):
      got = rotated.images[rotated.labels == c * 4 + j]
      np.testing.assert_array_equal(
          got, np.rot90(originals, angle // 90, axes=(1, 2)))
  with pytest.raises(ConfigError, match='multiples of 90'):
    bd.augment_rotations(data, (0, 45))
  with pytest.raises(ConfigError, match='repeat'):
    bd.augment_rotations(data, (90, -270))
  wide = bd.LabelledImages(np.zeros((2, 2, 3, 1), np.float32), [0, 1],
                           ('a', 'b'))
  with pytest.raises(DataError, match='square images, got 2x3'):
    bd.augment_rotations(wide, (0, 90))
  assert bd.augment_rotations(wide, (0, 180)).num_classes == 4


def test_split_keeps_rotations_of_a_class_together():
  rotated = bd.augment_rotations(_toy())
  train, test = bd.split_classes(rotated, 3, seed=0)
  assert test.num_classes == 12 and train.num_classes == 36
  base = lambda names: {n.split('@')[0] for n in names}
  assert not base(train.class_names) & base(test.class_names)


def test_split_and_augment_rotates_meta_train_only():
  train, test = bd.split_and_augment(_toy(), 4, seed=1,
                                     train_rotations=(0, 90, 180, 270))
  assert train.num_classes == 32 and test.num_classes == 4
  assert not any('@' in n for n in test.class_names)
  assert not {n.split('@')[0] for n in train.class_names} & set(
      test.class_names)


# -------------------------------------------------------------------- digits


def test_load_digits():
  data = bd.load_digits()
  assert len(data) == 1797 and data.num_classes == 10
  assert data.images.shape == (1797, 8, 8, 1)
  assert data.images.dtype == np.float32
  assert data.images.min() == 0.0 and data.images.max() == 1.0
  np.testing.assert_array_equal(data.class_sizes() >= 174, True)
  big = bd.load_digits(16)
  assert big.images.shape == (1797, 16, 16, 1)
  assert 0.0 <= big.images.min() and big.images.max() <= 1.0
  np.testing.assert_array_equal(big.labels, data.labels)


# ------------------------------------------------------- make_task_families


def test_make_task_families_digits_disjoint():
  train, test = bd.make_task_families(_config())
  assert (train.num_classes, test.num_classes) == (6, 4)
  assert not set(train.class_names) & set(test.class_names)
  ep = train.sample_batch(np.random.default_rng(0), 2)
  assert ep.support_x.shape == (2, 6, 8, 8, 1)
  assert ep.query_x.shape == (2, 9, 8, 8, 1)
  rot_train, rot_test = bd.make_task_families(
      _config(rotations=(0, 90, 180, 270), num_ways=4))
  assert (rot_train.num_classes, rot_test.num_classes) == (24, 4)
  assert not any('@' in n for n in rot_test.class_names)
  assert {n.split('@')[0] for n in rot_train.class_names}.isdisjoint(
      rot_test.class_names)


def test_make_task_families_checks():
  with pytest.raises(
      DataError,
      match=r'meta-test split needs 5 classes for 5-way episodes but the data'
      r' has 4'):
    bd.make_task_families(_config(num_ways=5))
  with pytest.raises(DataError, match='meta-train split needs 7 classes'):
    bd.make_task_families(_config(num_test_classes=7, num_ways=7))
  with pytest.raises(ConfigError, match='unknown data source .*registered'
                     ' sources: .*digits.*image_folder.*omniglot.*tfds'):
    bd.make_task_families(_config(source='mnist'))
  with pytest.raises(ConfigError, match="no field 'num_shots'"):
    bd.make_task_families({'source': 'digits', 'num_ways': 2})
  with pytest.raises(ConfigError, match='multiples of 90'):
    bd.make_task_families(_config(rotations=(0, 30)))
  with pytest.raises(ConfigError, match='non-empty sequence'):
    bd.make_task_families(_config(rotations=90))
  with pytest.raises(ConfigError, match='needs data.path'):
    bd.make_task_families(_config(source='image_folder'))
  with pytest.raises(ConfigError, match='needs data.tfds_name'):
    bd.make_task_families(_config(source='tfds'))


def test_register_source_adds_a_config_source():
  @bd.register_source('toy_for_test')
  def _toy_source(config):
    return _toy(num_classes=config.num_classes)

  try:
    train, test = bd.make_task_families(
        _config(source='toy_for_test', num_classes=9, num_test_classes=3))
    assert (train.num_classes, test.num_classes) == (6, 3)
  finally:
    del bd.SOURCES['toy_for_test']


# -------------------------------------------------------------- image folder


def test_image_folder_one_level(tmp_path):
  root = _write_tree(tmp_path / 'd', {
      'cat/a.png': _gray(10), 'cat/b.PNG': _gray(20), 'dog/a.png': _gray(255)})
  (root / 'notes.txt').write_text('ignored')
  data = bd.load_image_folder(root, image_size=6)
  assert data.class_names == ('cat', 'dog')
  assert data.images.shape == (3, 6, 6, 1)
  np.testing.assert_allclose(data.images[:, 0, 0, 0],
                             np.array([10, 20, 255]) / 255, atol=1e-6)
  np.testing.assert_array_equal(data.labels, [0, 0, 1])
  assert bd.load_image_folder(root, image_size=3).image_shape == (3, 3, 1)


def test_image_folder_two_level_and_zips(tmp_path):
  layout = {'Greek/alpha/1.png': _gray(0), 'Greek/alpha/2.png': _gray(50),
            'Greek/beta/1.png': _gray(100), 'Latin/a/1.png': _gray(150)}
  root = _write_tree(tmp_path / 'two', layout)
  data = bd.load_image_folder(root, 6)
  assert data.class_names == ('Greek/alpha', 'Greek/beta', 'Latin/a')
  np.testing.assert_array_equal(data.class_sizes(), [2, 1, 1])
  for top in (None, 'two', 'some_wrapper'):
    zipped = _zip_dir(root, tmp_path / f'two_{top}.zip', top)
    got = bd.load_image_folder(zipped, 6)
    assert got.class_names == data.class_names, top
    np.testing.assert_array_equal(got.images, data.images)
  one = _write_tree(tmp_path / 'one',
                    {'x/1.png': _gray(1), 'y/1.png': _gray(2)})
  for top in (None, 'one_wrapped'):
    zipped = _zip_dir(one, tmp_path / 'one_wrapped.zip', top)
    assert bd.load_image_folder(zipped, 6).class_names == ('x', 'y'), top


def test_image_folder_tar_with_inner_folder(tmp_path):
  root = _write_tree(tmp_path / 'c', {
      'train/cat/1.png': _gray(1), 'train/dog/1.png': _gray(2),
      'test/cat/1.png': _gray(3)})
  tar_path = tmp_path / 'c.tar.gz'
  with tarfile.open(tar_path, 'w:gz') as tar:
    tar.add(root, arcname='.')
  data = bd.load_image_folder(f'{tar_path}/train', 6)
  assert data.class_names == ('cat', 'dog')
  assert bd.load_image_folder(root / 'test', 6).class_names == ('cat',)
  with pytest.raises(DataError, match="folder 'valid' does not exist inside"):
    bd.load_image_folder(f'{tar_path}/valid', 6)


def test_image_folder_config_source_and_max_per_class(tmp_path):
  first = _write_tree(tmp_path / 'a', {f'c{i}/{j}.png': _gray(i * 10 + j)
                                       for i in range(4) for j in range(5)})
  second = _write_tree(tmp_path / 'b', {f'd{i}/{j}.png': _gray(j)
                                        for i in range(2) for j in range(5)})
  train, test = bd.make_task_families(_config(
      source='image_folder', path=f'{first},{second}', image_size=4,
      num_test_classes=2, num_ways=2, num_shots=2, num_queries=3))
  assert train.num_classes + test.num_classes == 6
  assert train.image_shape == (4, 4, 1)
  capped = bd.load_image_folder(first, 6, max_per_class=2)
  np.testing.assert_array_equal(capped.class_sizes(), [2, 2, 2, 2])
  np.testing.assert_allclose(capped.images[:2, 0, 0, 0], [0, 1 / 255])


def test_image_folder_gray_rgb_mix(tmp_path):
  red = np.zeros((6, 6, 3), np.uint8)
  red[..., 0] = 255
  gray_first = _write_tree(tmp_path / 'g', {'a/1.png': _gray(200),
                                            'b/1.png': red})
  data = bd.load_image_folder(gray_first, 6)
  assert data.image_shape == (6, 6, 1)
  # PIL's ITU-R 601 luma of pure red: 255 * 299/1000 -> 76.
  np.testing.assert_allclose(data.images[1, 0, 0, 0], 76 / 255, atol=1e-6)
  as_rgb = bd.load_image_folder(gray_first, 6, grayscale=False)
  assert as_rgb.image_shape == (6, 6, 3)
  np.testing.assert_allclose(as_rgb.images[0, 0, 0], [200 / 255] * 3,
                             atol=1e-6)
  np.testing.assert_allclose(as_rgb.images[1, 0, 0], [1, 0, 0])
  rgb_first = _write_tree(tmp_path / 'r', {'a/1.png': red,
                                           'b/1.png': _gray(200)})
  assert bd.load_image_folder(rgb_first, 6).image_shape == (6, 6, 3)


def test_image_folder_union_dedupes_classes(tmp_path):
  first = _write_tree(tmp_path / 'p1', {'Greek/a/1.png': _gray(10),
                                        'Korean/k/1.png': _gray(20)})
  second = _write_tree(tmp_path / 'p2', {'Greek/a/1.png': _gray(99),
                                         'Greek/a/2.png': _gray(99),
                                         'Tagalog/t/1.png': _gray(30)})
  data = bd.load_image_folder([first, _zip_dir(second, tmp_path / 'p2.zip')],
                              6)
  assert data.class_names == ('Greek/a', 'Korean/k', 'Tagalog/t')
  np.testing.assert_array_equal(data.class_sizes(), [1, 1, 1])
  np.testing.assert_allclose(data.images[0, 0, 0, 0], 10 / 255, atol=1e-6)


def test_image_folder_native_size_must_agree(tmp_path):
  root = _write_tree(tmp_path / 'd', {'a/1.png': _gray(1, size=6),
                                      'b/1.png': _gray(1, size=8)})
  with pytest.raises(DataError, match=r'is 8x8 but the first image is 6x6'):
    bd.load_image_folder(root, None)
  assert bd.load_image_folder(root, 5).image_shape == (5, 5, 1)


def test_image_folder_errors(tmp_path):
  good = {'a/1.png': _gray(1), 'b/1.png': _gray(2)}
  corrupt = _write_tree(tmp_path / 'corrupt', good)
  (corrupt / 'b' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
  with pytest.raises(DataError, match=r'cannot read image file .*broken\.png'):
    bd.load_image_folder(corrupt, 6)
  zipped = _zip_dir(corrupt, tmp_path / 'corrupt.zip')
  with pytest.raises(DataError, match=r'corrupt\.zip:b/broken\.png'):
    bd.load_image_folder(zipped, 6)

  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match=r'empty.* is empty'):
    bd.load_image_folder(tmp_path / 'empty', 6)
  missing = tmp_path / 'nowhere' / 'data'
  with pytest.raises(DataError,
                     match=f'does not exist: {re.escape(str(missing))}'):
    bd.load_image_folder(missing, 6)
  not_zip = tmp_path / 'fake.zip'
  not_zip.write_bytes(b'definitely not a zip file')
  with pytest.raises(DataError, match=r'fake\.zip is not a readable zip'):
    bd.load_image_folder(not_zip, 6)
  not_tar = tmp_path / 'fake.tar.gz'
  not_tar.write_bytes(b'definitely not a tar file')
  with pytest.raises(DataError, match=r'fake\.tar\.gz is not a readable tar'):
    bd.load_image_folder(not_tar, 6)
  text = tmp_path / 'list.txt'
  text.write_text('x')
  with pytest.raises(DataError, match=r'list\.txt is a file but not a \.zip'):
    bd.load_image_folder(text, 6)
  flat = _write_tree(tmp_path / 'flat', {'1.png': _gray(1)})
  with pytest.raises(DataError,
                     match=r'flat has images but no class subfolders'):
    bd.load_image_folder(flat, 6)
  no_images = _write_tree(tmp_path / 'noimg', good)
  (no_images / 'c').mkdir()
  (no_images / 'c' / 'info.txt').write_text('x')
  with pytest.raises(DataError, match=r'class folder .*noimg/c has no images'):
    bd.load_image_folder(no_images, 6)
  two = _write_tree(tmp_path / 'two', {'G/a/1.png': _gray(1)})
  (two / 'G' / 'empty_char').mkdir()
  with pytest.raises(DataError,
                     match=r'class folder .*two/G/empty_char has no'):
    bd.load_image_folder(two, 6)
  with pytest.raises(ConfigError, match='image_size'):
    bd.load_image_folder(corrupt, 0)


# ------------------------------------------------------------------ omniglot


def test_omniglot_loader_inverts_and_uses_env_dir(tmp_path, monkeypatch):
  stroke = np.full((10, 10), 255, np.uint8)
  stroke[3:7, 3:7] = 0  # Black stroke on white, like the Omniglot files.
  root = _write_tree(tmp_path / 'src', {'Alpha/character01/1.png': stroke,
                                        'Alpha/character02/1.png': stroke})
  data_dir = tmp_path / 'data'
  (data_dir / 'omniglot').mkdir(parents=True)
  for rel in bd.OMNIGLOT_BACKGROUND_SMALL:
    _zip_dir(root, data_dir / rel, top=pathlib.Path(rel).stem)
  monkeypatch.setenv(bd.DATA_DIR_ENV, str(data_dir))
  assert bd.default_data_dirs() == [data_dir]
  data = bd.load_omniglot(image_size=10)
  assert data.class_names == ('Alpha/character01', 'Alpha/character02')
  assert data.images[0, 5, 5, 0] == 1.0 and data.images[0, 0, 0, 0] == 0.0
  raw = bd.load_omniglot(str(data_dir / bd.OMNIGLOT_BACKGROUND_SMALL[0]),
                         image_size=10, invert=False)
  assert raw.images[0, 5, 5, 0] == 0.0 and raw.images[0, 0, 0, 0] == 1.0
  monkeypatch.setenv(bd.DATA_DIR_ENV, str(tmp_path / 'elsewhere'))
  with pytest.raises(DataError, match=r'cannot find omniglot/.*BASE_DATA_DIR'):
    bd.load_omniglot()


@pytest.fixture(name='omniglot', scope='module')
def _omniglot():
  if not all(p.exists() for p in OMNIGLOT_ZIPS):
    pytest.skip(f'Omniglot zips not found under {SHARED}')
  return bd.load_omniglot(OMNIGLOT_ZIPS, image_size=28)


def test_omniglot_small1_small2_union(omniglot, monkeypatch, tmp_path):
  assert omniglot.num_classes == 242
  np.testing.assert_array_equal(omniglot.class_sizes(), 20)
  assert omniglot.image_shape == (28, 28, 1)
  assert sum(n.startswith('Greek/') for n in omniglot.class_names) == 24
  assert 0.0 <= omniglot.images.min() and omniglot.images.max() <= 1.0
  assert omniglot.images.mean() < 0.2  # Inverted: mostly 0 background.
  # The default location (relative to the repo root) is also found from
  # another working directory.
  monkeypatch.delenv(bd.DATA_DIR_ENV, raising=False)
  monkeypatch.chdir(tmp_path)
  assert bd.find_data_file(bd.OMNIGLOT_BACKGROUND_SMALL[0]) == (
      OMNIGLOT_ZIPS[0].resolve())


def test_omniglot_split_and_augment(omniglot):
  train_data, test_data = bd.split_and_augment(
      omniglot, 42, seed=0, train_rotations=(0, 90, 180, 270))
  assert (train_data.num_classes, test_data.num_classes) == (800, 42)
  sampler = bd.EpisodeSampler(test_data, 20, 1, 5)
  ep = sampler.sample(np.random.default_rng(0))
  assert ep.support_x.shape == (20, 28, 28, 1)


def test_omniglot_runs():
  runs_zip = SHARED / bd.OMNIGLOT_RUNS
  if not runs_zip.exists():
    pytest.skip(f'{runs_zip} not found')
  runs = bd.load_omniglot_runs(runs_zip, image_size=28)
  assert runs.support_x.shape == (20, 20, 28, 28, 1)
  assert runs.query_x.shape == (20, 20, 28, 28, 1)
  np.testing.assert_array_equal(runs.support_y, np.tile(np.arange(20), (20, 1)))
  for row in runs.query_y:  # Each run's 20 queries cover its 20 classes.
    np.testing.assert_array_equal(np.sort(row), np.arange(20))
  assert runs.query_y[0, 0] == 7  # run01 item01 -> class08.


# ---------------------------------------------------------------------- tfds


@pytest.fixture(name='tfds', scope='module')
def _tfds():
  return pytest.importorskip('tensorflow_datasets')


def test_tfds_mock_data_offline(tfds, tmp_path, no_network):
  del no_network
  with tfds.testing.mock_data(num_examples=40):
    data = bd.load_tfds('mnist', split='train', data_dir=str(tmp_path))
    small = bd.load_tfds('mnist', split='test', image_size=14,
                         data_dir=str(tmp_path))
  assert len(data) == 40 and data.num_classes == 10
  assert data.class_names == tuple(str(i) for i in range(10))
  assert data.image_shape == (28, 28, 1) and data.images.dtype == np.float32
  assert 0.0 <= data.images.min() and data.images.max() <= 1.0
  assert data.images.max() > 0.5  # Random mock pixels, rescaled from uint8.
  assert small.image_shape == (14, 14, 1)


def test_tfds_prepared_array_record_without_tensorflow(tfds, tmp_path,
                                                       no_network):
  """A real dataset on disk (no mock), prepared and read without TF."""
  del no_network
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (24, 6, 6), dtype=np.uint8)

  class BaseTestTinyDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'picture': tfds.features.Image(shape=(6, 6, 1)),
              'digit': tfds.features.ClassLabel(
                  names=['p', 'q', 'r', 's', 't', 'u']),
          }))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(24):  # PIL images: encoding them needs no TensorFlow.
        yield i, {'picture': Image.fromarray(pixels[i], 'L'), 'digit': i % 6}

  BaseTestTinyDigits(data_dir=str(tmp_path),
                     file_format='array_record').download_and_prepare()
  data = bd.load_tfds('base_test_tiny_digits', data_dir=str(tmp_path),
                      image_key='picture', label_key='digit')
  assert data.class_names == ('p', 'q', 'r', 's', 't', 'u')
  order = np.argsort([pixels[i].tobytes() for i in range(24)])
  got = np.argsort([(np.rint(im[..., 0] * 255).astype(np.uint8)).tobytes()
                    for im in data.images])
  np.testing.assert_array_equal(data.labels[got], (np.arange(24) % 6)[order])
  train, test = bd.make_task_families(_config(
      source='tfds', tfds_name='base_test_tiny_digits', path=str(tmp_path),
      image_size=6, num_test_classes=2, num_ways=2, num_shots=1,
      num_queries=2, tfds_image_key='picture', tfds_label_key='digit'))
  assert (train.num_classes, test.num_classes) == (4, 2)
  with pytest.raises(DataError,
                     match=r"no feature 'image'.*'digit', 'picture'"):
    bd.load_tfds('base_test_tiny_digits', data_dir=str(tmp_path))


def test_tfds_errors(tfds, tmp_path, no_network):
  del tfds, no_network
  with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_set_xyz'"):
    bd.load_tfds('no_such_set_xyz', data_dir=str(tmp_path))
  with pytest.raises(DataError, match=r"'mnist' split 'train' is not available"
                     r'.*download=True.*data_dir'):
    bd.load_tfds('mnist', data_dir=str(tmp_path))


def test_tfds_missing_tensorflow_is_a_data_error(tfds, monkeypatch):
  def needs_tf(*args, **kwargs):
    del args, kwargs
    raise ModuleNotFoundError("No module named 'tensorflow'",
                              name='tensorflow')

  monkeypatch.setattr(tfds, 'data_source', needs_tf)
  with pytest.raises(DataError,
                     match=r"needs the 'tensorflow' module \(pip install"
                     r' tensorflow-cpu\)'):
    bd.load_tfds('mnist', download=True)
