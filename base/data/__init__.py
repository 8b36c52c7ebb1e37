"""Few-shot data: labelled image sets, their sources, and episode samplers.

Typical use::

  train_family, test_family = make_task_families(config.data)
  episodes = train_family.sample_batch(np.random.default_rng(0), 16)
  # episodes.support_x: [16, N*K, H, W, C]; episodes.query_y: [16, N*Q]
"""

from base.data.episodes import Episode
from base.data.episodes import EpisodeSampler
from base.data.episodes import TaskFamily
from base.data.families import make_task_families
from base.data.image_folder import IMAGE_EXTENSIONS
from base.data.image_folder import load_image_folder
from base.data.labelled import concatenate
from base.data.labelled import LabelledImages
from base.data.sources import config_field
from base.data.sources import DATA_DIR_ENV
from base.data.sources import default_data_dirs
from base.data.sources import find_data_file
from base.data.sources import load_digits
from base.data.sources import load_omniglot
from base.data.sources import load_omniglot_runs
from base.data.sources import load_tfds
from base.data.sources import OMNIGLOT_BACKGROUND_SMALL
from base.data.sources import OMNIGLOT_RUNS
from base.data.sources import register_source
from base.data.sources import SOURCES
from base.data.transforms import augment_rotations
from base.data.transforms import num_split_classes
from base.data.transforms import split_and_augment
from base.data.transforms import split_classes

__all__ = [
    'DATA_DIR_ENV',
    'Episode',
    'EpisodeSampler',
    'IMAGE_EXTENSIONS',
    'LabelledImages',
    'OMNIGLOT_BACKGROUND_SMALL',
    'OMNIGLOT_RUNS',
    'SOURCES',
    'TaskFamily',
    'augment_rotations',
    'concatenate',
    'config_field',
    'default_data_dirs',
    'find_data_file',
    'load_digits',
    'load_image_folder',
    'load_omniglot',
    'load_omniglot_runs',
    'load_tfds',
    'make_task_families',
    'num_split_classes',
    'register_source',
    'split_and_augment',
    'split_classes',
]
