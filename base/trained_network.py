"""Saving and loading trained standalone networks (a genotype and its weights).

A derived genotype trained from scratch (``base.transfer``) is the end
product of a search; it is saved as one self-describing file
(``base.serialization``: JSON header, arrays, checksum) holding the genotype,
the keyword arguments that rebuild the network with
:func:`base.genotype.build_genotype_network`, the image shape and class names
it was trained on, and its weights. :func:`load_network` gives it back ready to
classify new images, with no config or workdir needed::

  trained = base.load_network("runs/cifar/transfer_networks/derived.msgpack")
  labels = trained.predict(images)                    # [n] class indices
  names = [trained.class_names[i] for i in labels]

A network normalises with the population statistics it kept while it trained
(``running_stats``, the default of ``build_genotype_network``; saved beside
its weights), so each image is classified on its own, one at a time or ten
thousand. Files of format version 1 (written before population statistics
existed) still load: they normalise with the statistics of the batch they are
given, so their ``predict`` classifies in batches of a seeded random order (as
their test score was computed), and a handful of images of one class at a
time gets worse answers than the recorded test accuracy.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from base import serialization
from base.errors import CheckpointError, ConfigError, DataError
from base.genotype import Genotype, build_genotype_network
from base.standalone import predict_labels
from base.supernet import darts_reduction_cells

NETWORK_FORMAT = "base-standalone-network"
# 2: population statistics (nnx.BatchStat) stored with the weights and
# ``running_stats`` in the architecture; 1: weights only, batch statistics.
NETWORK_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
# What build_genotype_network needs besides the genotype (and rngs).
ARCHITECTURE_FIELDS = ("num_classes", "in_channels", "channels", "num_cells",
                       "stem_multiplier", "reduction_cells", "channel_scale",
                       "running_stats")
# What a network's file stores: weights and population statistics.
STORED_STATE = (nnx.Param, nnx.BatchStat)


@dataclasses.dataclass(frozen=True)
class TrainedNetwork:
  """A standalone network read back by :func:`load_network`.

  Attributes:
    network: the Flax NNX module with the trained weights.
    genotype: the cell structure it was built from.
    architecture: :func:`build_genotype_network`'s keyword arguments.
    image_shape: ``(height, width, channels)`` of the training images.
    class_names: the label of each output unit (None when not recorded).
    metadata: what the saver recorded (recipe, test accuracy, ...).
  """
  network: nnx.Module
  genotype: Genotype
  architecture: dict[str, Any]
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...] | None
  metadata: dict[str, Any]

  def predict(self, images: np.ndarray, *, batch_size: int = 500,
              seed: int = 0) -> np.ndarray:
    """Class indices ``[n]`` for images ``[n, H, W, C]`` of the trained shape.

    Raises:
      DataError: the images are not ``[n] + image_shape``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
      raise DataError(f"images of shape {images.shape}: this network takes "
                      f"[n, {', '.join(map(str, self.image_shape))}] "
                      f"(n images of height, width, channels)")
    return predict_labels(self.network, images, batch_size=batch_size,
                          seed=seed)


def complete_architecture(architecture: Mapping[str, Any]) -> dict[str, Any]:
  """All ``ARCHITECTURE_FIELDS``: ``architecture`` and, for the fields it
  leaves out, :func:`build_genotype_network`'s defaults (the DARTS
  reduction cells for ``reduction_cells=None``).

  Raises:
    ConfigError: a field that is not one, or a required one left out.
  """
  parameters = inspect.signature(build_genotype_network).parameters
  defaults = {k: parameters[k].default for k in ARCHITECTURE_FIELDS
              if parameters[k].default is not inspect.Parameter.empty}
  unknown = sorted(set(architecture) - set(ARCHITECTURE_FIELDS))
  missing = sorted(set(ARCHITECTURE_FIELDS) - set(architecture) - set(defaults))
  if missing or unknown:
    raise ConfigError(f"architecture of a network: missing {missing}, "
                      f"unknown {unknown} (fields: {ARCHITECTURE_FIELDS})")
  full = {**defaults, **architecture}
  if full["reduction_cells"] is None:
    full["reduction_cells"] = darts_reduction_cells(full["num_cells"])
  return full


def save_network(path: str | os.PathLike, network: nnx.Module,
                 genotype: Genotype, *, architecture: Mapping[str, Any],
                 image_shape: Sequence[int],
                 class_names: Sequence[str] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
  """Writes ``network``'s weights and what rebuilds it to ``path``.

  Args:
    architecture: the keyword arguments ``network`` was built with by
      :func:`build_genotype_network` (those of ``ARCHITECTURE_FIELDS``; the
      ones left out take that function's defaults, but ``running_stats``,
      which is read off ``network``; the depthwise implementation is not
      stored: every one computes the same function with the same weights).
    image_shape: ``(height, width, channels)`` it takes.
    metadata: JSON-serialisable extras (training recipe, scores).

  Raises:
    ConfigError: an architecture field that is not one, or a required one
      left out, or ``running_stats`` that ``network`` contradicts.
  """
  has_stats = bool(jax.tree.leaves(nnx.state(network, nnx.BatchStat)))
  architecture = {"running_stats": has_stats, **architecture}
  if bool(architecture["running_stats"]) != has_stats:
    raise ConfigError(
        f"architecture says running_stats={architecture['running_stats']}, "
        f"but the network {'keeps' if has_stats else 'keeps no'} "
        f"population statistics")
  header = {"format": NETWORK_FORMAT, "version": NETWORK_FORMAT_VERSION,
            "genotype": genotype.to_dict(),
            "architecture": complete_architecture(architecture),
            "image_shape": [int(d) for d in image_shape],
            "class_names": None if class_names is None else list(class_names),
            "metadata": dict(metadata or {})}
  weights = nnx.to_pure_dict(nnx.state(network, STORED_STATE))
  serialization.write_arrays_file(path, weights, header)


def load_network(path: str | os.PathLike) -> TrainedNetwork:
  """Reads a network written by :func:`save_network`.

  Raises:
    CheckpointError: naming ``path``, when the file is missing, corrupt, of
      another kind, or its weights do not fit the network its header
      describes.
  """
  weights, header = serialization.read_arrays_file(
      path, kind="standalone network", format_name=NETWORK_FORMAT,
      version=READABLE_FORMAT_VERSIONS)
  try:
    genotype = Genotype.from_dict(header["genotype"])
    stored_architecture = dict(header["architecture"])
    if header["version"] == 1:  # before population statistics
      stored_architecture.setdefault("running_stats", False)
    architecture = {k: stored_architecture[k] for k in ARCHITECTURE_FIELDS}
    architecture["reduction_cells"] = tuple(architecture["reduction_cells"])
    image_shape = tuple(int(d) for d in header["image_shape"])
    class_names = header["class_names"]
    class_names = None if class_names is None else tuple(class_names)
    if len(image_shape) != 3:
      raise ValueError(f"image shape {image_shape} is not (H, W, C)")
    if class_names is not None and (len(class_names)
                                    != architecture["num_classes"]):
      raise ValueError(f"{len(class_names)} class names for "
                       f"{architecture['num_classes']} classes")
    network = build_genotype_network(genotype, **architecture,
                                     rngs=nnx.Rngs(0))
  except (ConfigError, KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path} has a malformed network header: "
                          f"{type(e).__name__}: {e}") from None
  state = nnx.state(network, STORED_STATE)
  expected = {k: v.shape for k, v in
              serialization.flatten(nnx.to_pure_dict(state)).items()}
  stored = {k: v.shape for k, v in serialization.flatten(weights).items()}
  if expected != stored:
    differ = sorted(set(expected.items()) ^ set(stored.items()))[:3]
    raise CheckpointError(f"{path}: the stored weights do not fit the "
                          f"network its header describes (first "
                          f"differences: {differ})")
  nnx.replace_by_pure_dict(state, weights)
  nnx.update(network, state)
  return TrainedNetwork(network, genotype, architecture, image_shape,
                        class_names, dict(header.get("metadata") or {}))
