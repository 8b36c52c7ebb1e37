r"""Every method on the same tasks, search space and episodes: one table.

Meta-trains BASE, the MAML Conv-4 baseline, MetaNAS, warm-started DARTS,
AT-NAS and MetaD2A (``compare.methods``) on the same meta-training tasks
and supernet (``data`` and ``supernet``, shared), then scores each on the
same meta-test episodes (``evaluate``; same seed for all) and writes
``compare.json`` and ``compare.md`` into the workdir: method, protocol,
accuracy ± 95% CI, meta-training (search) time, adaptation time per task,
parameters.

CPU-sized by default (scikit-learn's digits, the quickstart supernet; tens
of minutes on 2 cores, most of it XLA compiling each method's programs):

  python launch.py --config=configs/compare.py --workdir=runs/compare

Full budgets on Omniglot 20-way 1-shot (meant for a GPU):

  python launch.py --config=configs/compare.py:omniglot --workdir=runs/compare_og

Score what an earlier run saved without meta-training again:
``--config.compare.meta_train=False``; a subset of methods:
``--config.compare.methods=base,metanas``.
"""

import ml_collections

from configs import metanas as metanas_config
from configs import omniglot, quickstart

VARIANTS = ("digits", "omniglot")
METHODS = ("base", "maml", "metanas", "warm_start", "atnas", "metad2a")


def get_config(variant: str = "digits") -> ml_collections.ConfigDict:
  """The comparison on ``digits`` (CPU budgets) or ``omniglot`` (full)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/compare.py; "
                     f"expected one of {VARIANTS}")
  config = (quickstart.get_config() if variant == "digits"
            else omniglot.get_config())
  config.mode = "compare"
  config.compare = ml_collections.ConfigDict(dict(methods=METHODS,
                                                  meta_train=True))
  config.maml.update(dict(enabled=False))
  config.metanas = metanas_config.get_config(
      "digits" if variant == "digits" else "omniglot").metanas
  config.warm_start = ml_collections.ConfigDict(dict(
      library_size=20, search_steps=50, warm_steps=5, lr_weights=0.05,
      momentum=0.9, lr_arch=0.03, library_data="support_and_query",
      warm_head="zeros", probe="init", probe_seed=0, probe_head_steps=50,
      probe_head_lr=1.0, fisher="expected", fisher_samples=1,
      embedding_reduce="parameter", distance="cosine", compare_episodes=0))
  config.atnas = ml_collections.ConfigDict(dict(
      population_size=8, generations=1, mutation_prob=0.25,
      crossover_prob=0.5, tournament_size=3, elite_count=2, inner_steps=3,
      inner_lr=0.4, meta_lr=1e-2, meta_batch_size=8, num_steps=300,
      evolve_every=50, fitness_tasks=4, test_generations=2,
      eval_inner_steps=0))
  config.metad2a = ml_collections.ConfigDict(dict(
      num_database_tasks=40, archs_per_task=16, train_steps=20,
      train_lr=0.5, feature_channels=32, hidden=64, embed_dim=16, top_k=2,
      kl_weight=1.0, generator_epochs=300, generator_lr=3e-3,
      predictor_epochs=300, predictor_lr=3e-3, num_candidates=32,
      reuse_database=False))
  if variant == "omniglot":
    config.warm_start.update(dict(library_size=200, search_steps=100,
                                  warm_steps=10))
    config.atnas.update(dict(population_size=20, num_steps=5000,
                             evolve_every=250, inner_steps=5))
    config.metad2a.update(dict(num_database_tasks=200, archs_per_task=32,
                               train_steps=50, num_candidates=100))
  else:
    config.evaluate.update(dict(episodes=100, baselines=False))
  return config
