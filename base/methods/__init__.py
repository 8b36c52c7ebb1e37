"""Meta-learning methods, all behind one interface (``base.methods.api``).

``config.method`` picks one; ``base.compare`` runs several on the same tasks
and episodes. Each method lives in its own module, imported only when used,
and defines ``METHOD`` (a :class:`base.methods.api.Method`):

* ``base``: BASE, the meta-learned Bayesian prior adapted by ELBO steps
  (``base.methods.base_method`` wraps ``base.train``);
* ``maml``: MAML with the fixed Conv-4 backbone (``base.methods.maml``);
* ``metanas``: MetaNAS, DARTS inside Reptile (``base.methods.metanas``);
* ``warm_start``: DARTS warm-started from the most similar earlier task
  (``base.methods.warm_start``);
* ``atnas``: AT-NAS, evolution over subnets of a meta-learned supernet
  (``base.methods.atnas``);
* ``metad2a``: MetaD2A, dataset-conditioned generation with a performance
  predictor (``base.methods.metad2a``).
"""

from __future__ import annotations

import importlib

from base.errors import ConfigError

METHOD_MODULES = {
    "base": "base.methods.base_method",
    "maml": "base.methods.maml",
    "metanas": "base.methods.metanas",
    "warm_start": "base.methods.warm_start",
    "atnas": "base.methods.atnas",
    "metad2a": "base.methods.metad2a",
}


def get_method(name: str):
  """The registry entry (``base.methods.api.Method``) of method ``name``."""
  if name not in METHOD_MODULES:
    raise ConfigError(f"unknown method {name!r}; available: "
                      f"{', '.join(METHOD_MODULES)}")
  return importlib.import_module(METHOD_MODULES[name]).METHOD
