r"""CIFAR-10: meta-train a prior on class-subset tasks, then transfer.

BASE meta-trains over tasks built from one data set: here 5-way 5-shot tasks
over 5 of CIFAR-10's classes (the other 5 are meta-test classes), from
``../shared/data/cifar10/cifar10-jpeg.tar.gz`` (or data.path). Then the prior
is adapted to 5-way tasks over all ten classes, one genotype is derived from
the averaged posterior, and its standalone network is trained from scratch on
the training set (SGD + cosine, crop + flip) and scored on the test set.

  python launch.py --config=configs/cifar10.py --workdir=runs/cifar10
  python launch.py --config=configs/cifar10.py --workdir=runs/cifar10 \
      --config.mode=transfer --config.transfer.epochs=30

Meant for a GPU at full size; on 2 CPU cores shrink transfer.epochs,
transfer.max_train_per_class and train.num_steps.
"""

import ml_collections

from configs import quickstart

CIFAR = "../shared/data/cifar10/cifar10-jpeg.tar.gz"


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.mode = "meta_train,evaluate,transfer"
  config.data.update(dict(
      source="image_folder", path=f"{CIFAR}/train", image_size=32,
      rotations=(0,), num_test_classes=5, num_ways=5, num_shots=5,
      num_queries=5, seed=0))
  config.data.max_per_class = 500  # meta-training needs few images a class
  config.data.grayscale = False
  config.supernet.update(dict(channels=8, num_cells=3, num_nodes=2,
                              reduction_cells=(1, 2)))
  config.train.update(dict(num_steps=500, meta_batch_size=4))
  config.transfer = ml_collections.ConfigDict(dict(
      prior_path="", train_path=f"{CIFAR}/train", test_path=f"{CIFAR}/test",
      image_size=32, grayscale=False, max_train_per_class=0,
      max_test_per_class=0, adapt_tasks=5, adapt_ways=0, adapt_shots=20,
      adapt_steps=0, channels=16, num_cells=5, epochs=10, batch_size=64,
      learning_rate=0.05, momentum=0.9, weight_decay=3e-4, augment=True,
      seed=0,
      # Also train this many random genotypes with the same recipe (the
      # random-search baseline); each costs as much as the derived one.
      random_genotypes=0))
  return config
