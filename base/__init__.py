"""BASE: Bayesian meta architecture search in JAX.

Meta-train a prior over DARTS-style architectures and their weights across
many tasks, then adapt it to a new task in a few ELBO steps::

  import base
  prior, meta = base.load_prior("runs/quickstart/prior.msgpack",
                                return_metadata=True)        # a JAX pytree
  settings = base.saved_adaptation_settings(meta)  # rates, steps, temperature
  result = base.adapt(prior, support_x, support_y, **settings)  # posterior
  print(result.genotype)                                      # discrete cell
  labels = result.predict(new_images)   # more images of the task's classes
  result.save("posterior.msgpack")      # base.load_adaptation reads it back

A task with k classes, fewer than the prior's N, adapts from
``base.for_ways(prior, settings["config"], k)`` (the classifier cut to k
units, its inner rate scaled by k/N).

A derived network trained from scratch by ``mode=transfer`` is read back with
``base.load_network("WORKDIR/transfer_networks/derived.msgpack")``; its
``predict(images)`` gives class indices, ``class_names`` their labels.
"""

from base.adaptation import AdaptConfig
from base.adaptation import for_ways
from base.distributions import RelaxedOneHotCategorical
from base.distributions import gumbel_softmax
from base.distributions import temperature_schedule
from base.errors import BaseUserError
from base.errors import CheckpointError
from base.errors import ConfigError
from base.errors import DataError
from base.genotype import Genotype
from base.genotype import build_genotype_network
from base.genotype import derive_genotype
from base.genotype import genotype_param_count
from base.meta import MetaOptConfig
from base.meta import meta_step
from base.prior import SupernetDist
from base.prior import init_prior
from base.prior import load_prior
from base.prior import save_prior
from base.supernet import SupernetSpec
from base.supernet import apply_supernet
from base.supernet import build_supernet
from base.task_adaptation import Adaptation
from base.task_adaptation import adapt
from base.task_adaptation import load_adaptation
from base.task_adaptation import saved_adaptation_settings
from base.trained_network import TrainedNetwork
from base.trained_network import load_network
from base.trained_network import save_network
from base.train import evaluate
from base.train import meta_train

__all__ = [
    "AdaptConfig", "Adaptation", "BaseUserError", "CheckpointError",
    "ConfigError", "DataError", "Genotype", "MetaOptConfig",
    "RelaxedOneHotCategorical", "SupernetDist", "SupernetSpec",
    "TrainedNetwork", "adapt",
    "apply_supernet", "build_genotype_network", "build_supernet",
    "derive_genotype", "evaluate", "for_ways", "genotype_param_count",
    "gumbel_softmax", "init_prior", "load_adaptation", "load_network",
    "load_prior", "meta_step", "meta_train", "save_network", "save_prior",
    "saved_adaptation_settings",
    "temperature_schedule",
]
