r"""Test accuracy of one trained standalone network under each normalisation.

A derived network is trained once (``base.standalone.train_classifier``) with
population statistics (``running_stats=True``, the default of
``base.build_genotype_network``), and the same weights are then scored four
ways on the test images:

* population statistics, batches of 500 and one image at a time (the two
  must agree exactly: that is the point of keeping them);
* batch statistics (``running_stats=False``, how standalone networks
  normalised before, and how files of format version 1 still do), in
  seeded random batches of 500, one image at a time, and in the test set's
  class-sorted order (batches of 100, as an image folder loads).

Prints a table and writes JSON with ``--out``.

  python benchmarks/standalone_normalization.py                 # digits
  python benchmarks/standalone_normalization.py \
    --data=../shared/data/cifar10/cifar10-jpeg.tar.gz --max-train-per-class=1000 \
    --epochs=5 --out=benchmarks/results/standalone_normalization_cifar10.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from base.data import LabelledImages, load_digits, load_image_folder
from base.genotype import Genotype, build_genotype_network
from base.standalone import (StandaloneTrainConfig, predict_labels,
                             train_classifier)
from benchmarks.report import write_json

GENOTYPE = Genotype(
    normal=(("sep_conv_3x3", 0), ("skip_connect", 1),
            ("sep_conv_3x3", 0), ("max_pool_3x3", 2)), normal_concat=(2, 3),
    reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 2), ("dil_conv_3x3", 1)), reduce_concat=(2, 3))


def load(args):
  """(train, test) LabelledImages: digits split 1200/597, or a folder."""
  if args.data == "digits":
    data = load_digits()
    return tuple(LabelledImages(data.images[part], data.labels[part],
                                data.class_names)
                 for part in (slice(0, 1200), slice(1200, None)))
  return tuple(load_image_folder(
      os.path.join(args.data, split), args.image_size,
      grayscale=args.grayscale, max_per_class=cap or None)
      for split, cap in (("train", args.max_train_per_class),
                         ("test", args.max_test_per_class)))


def one_at_a_time(model, images):
  return np.concatenate([predict_labels(model, images[i:i + 1])
                         for i in range(len(images))])


def main(argv=None) -> dict:
  """Trains, scores, prints the table; returns (and with --out writes) it."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="digits",
                      help="'digits', or a folder/archive with train/ test/")
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--grayscale", action="store_true")
  parser.add_argument("--max-train-per-class", type=int, default=0)
  parser.add_argument("--max-test-per-class", type=int, default=0)
  parser.add_argument("--single-images", type=int, default=1000,
                      help="test images scored one at a time")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--channels", type=int, default=16)
  parser.add_argument("--cells", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  train, test = load(args)
  architecture = dict(num_classes=train.num_classes,
                      in_channels=train.images.shape[-1],
                      channels=args.channels, num_cells=args.cells)
  net = build_genotype_network(GENOTYPE, **architecture, rngs=nnx.Rngs(0))
  start = time.perf_counter()
  history = train_classifier(net, train.images, train.labels,
                             StandaloneTrainConfig(epochs=args.epochs,
                                                   augment=args.data != "digits",
                                                   progress=True))
  train_seconds = time.perf_counter() - start
  batch_stats = build_genotype_network(GENOTYPE, **architecture,
                                       running_stats=False, rngs=nnx.Rngs(0))
  nnx.update(batch_stats, nnx.state(net, nnx.Param))

  labels = np.asarray(test.labels)
  single = np.random.default_rng(0).permutation(len(test))[:args.single_images]
  by_class = np.argsort(labels, kind="stable")

  def accuracy(predicted, index=slice(None)):
    return float(np.mean(predicted == labels[index]))

  population = predict_labels(net, test.images)
  population_single = one_at_a_time(net, test.images[single])
  rows = [
      ("population statistics", "batches of 500", accuracy(population)),
      ("population statistics", f"one image at a time ({len(single)})",
       accuracy(population_single, single)),
      ("batch statistics", "random batches of 500",
       accuracy(predict_labels(batch_stats, test.images))),
      ("batch statistics", f"one image at a time ({len(single)})",
       accuracy(one_at_a_time(batch_stats, test.images[single]), single)),
      ("batch statistics", "class-sorted batches of 100",
       accuracy(np.concatenate([
           predict_labels(batch_stats, test.images[chunk])
           for chunk in np.array_split(by_class, -(-len(test) // 100))]),
                by_class)),
  ]
  if not np.array_equal(population_single, population[single]):
    raise RuntimeError("with population statistics, images classified one "
                       "at a time must get their batched predictions")
  print(f"\n{args.data}: {len(train)} training images, {args.epochs} epochs "
        f"({train_seconds:.0f} s, final training accuracy "
        f"{history[-1]['accuracy']:.3f}), {len(test)} test images\n")
  print("| normalisation | test images scored in | test accuracy |")
  print("| --- | --- | --- |")
  for norm, how, acc in rows:
    print(f"| {norm} | {how} | {acc:.3f} |")
  report = {"args": vars(args),
            "machine": platform.processor() or platform.machine(),
            "train_seconds": train_seconds, "history": history,
            "genotype": GENOTYPE.to_dict(),
            "rows": [dict(normalisation=n, scored_in=h, accuracy=a)
                     for n, h, a in rows]}
  write_json(args.out, report)
  return report


if __name__ == "__main__":
  main()
