r"""MetaNAS (Elsken et al., CVPR 2020) on Omniglot 20-way 1-shot.

DARTS as the task learner inside Reptile (``base.methods.metanas``), on the
data of ``configs/omniglot.py`` (the union of background_small1/2 from
../shared/data/omniglot, 42 characters held out, rotations of meta-training
characters as extra classes, 28x28 images):

  python launch.py --config=configs/metanas.py --workdir=runs/metanas
  python launch.py --config=configs/metanas.py --workdir=runs/metanas \
      --config.mode=evaluate

On scikit-learn's digits (no download; 5-way 1-shot 8x8 as in
``configs/quickstart.py``, with a smaller supernet and budget that run on a
CPU), either pick the ``digits`` variant:

  python launch.py --config=configs/metanas.py:digits \
      --workdir=runs/metanas_digits

or override the data section of this config (keeping its supernet):

  python launch.py --config=configs/metanas.py --workdir=runs/metanas_digits \
      --config.data.source=digits --config.data.image_size=8 \
      --config.data.num_ways=5 --config.data.num_test_classes=5 \
      --config.metanas.num_steps=300

Search space (``config.supernet``), as MetaNAS's few-shot setting
(``scripts/run_og_meta_train.sh`` of github.com/boschresearch/metanas): the
seven operations of ``base.ops.METANAS_PRIMITIVES`` (no ``none``), 4 cells
of 3 nodes, 28 initial channels, stem multiplier 3 (MetaNAS's default).
Reduction cells: MetaNAS runs ``--reduction_layers 1 3``, i.e. the 2nd and
4th of the 4 cells (0-based indices 1 and 3), so ``reduction_cells=(1, 3)``
here, not the 2nd and 3rd. MetaNAS keeps the channel count at reductions
(``feature_scale_rate=1``), hence ``channel_scale=1``: with MetaNAS's ops
(its ``conv_3x3`` is one depthwise-separable 3x3 conv) the supernet then has
462,104 weights, the reference's 462,272 less its stem norm's affine ones.

Hyper-parameters (``config.metanas``) are MetaNAS's ``og_metanas`` setting
and Omniglot scripts where they exist:

* task learner: 5 DARTS steps (``task_train_steps``), Adam with
  ``beta1 = 0`` at 0.005 for both weights and architecture (``w_lr``,
  ``alpha_lr``; the published setting, rather than SGD), architecture weight
  decay 1e-3, support batches of 20 (all of a 20-way 1-shot support set);
* soft pruning: temperature annealed linearly from 1.0 to 0.05 within each
  task (``normalizer_t_max``, ``normalizer_t_min``);
* Reptile: meta step sizes 1.0 (weights) and 0.6 (architecture), constant
  (``w_meta_anneal = a_meta_anneal = 0``), 10 tasks per meta-step, 30000
  meta-steps of which the first 15000 adapt only the weights
  (``warm_up_epochs``);
* hard pruning: threshold 0.01 every 2500 meta-steps (``eval_freq``,
  ``meta_model_prune_threshold``) and after meta-training;
* meta-test: 100 DARTS steps, the architecture adapted in the first half
  (``test_task_train_steps=100``, ``test_adapt_steps=0.5``), batches of 10
  (``batch_size_test``).

MetaNAS meta-trains on 15-shot tasks (``n_train``); here meta-training uses
the data section's shots, like every method of the comparison. The full
budget is meant for a GPU.
"""

import ml_collections

from base import ops
from configs import omniglot, quickstart

VARIANTS = ("omniglot", "digits")


def get_config(variant: str = "omniglot") -> ml_collections.ConfigDict:
  """The MetaNAS experiment; ``variant`` is ``omniglot`` or ``digits``."""
  variant = variant or "omniglot"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/metanas.py; "
                     f"expected one of {VARIANTS}")
  config = omniglot.get_config()
  config.method = "metanas"
  config.supernet.update(dict(
      channels=28, num_cells=4, num_nodes=3, stem_multiplier=3,
      primitives=ops.METANAS_PRIMITIVES, reduction_cells=(1, 3),
      channel_scale=1))
  config.metanas = ml_collections.ConfigDict(dict(
      inner_steps=5, inner_lr_weights=0.005, inner_lr_arch=0.005,
      weights_optimizer="adam", arch_optimizer="adam",
      arch_weight_decay=1e-3, tau_start=1.0, tau_end=0.05,
      tau_schedule="linear", meta_lr_weights=1.0, meta_lr_arch=0.6,
      meta_lr_schedule="constant", meta_batch_size=10, num_steps=30000,
      warm_up_steps=15000, eval_inner_steps=100, eval_arch_fraction=0.5,
      batch_size=20, eval_batch_size=10, prune_threshold=0.01,
      prune_every=2500, log_every=50))
  if variant == "digits":
    config.data = quickstart.get_config().data
    config.supernet.update(dict(
        channels=8, num_cells=3, num_nodes=2, stem_multiplier=2,
        reduction_cells=(1,)))
    # SGD inner steps (0.3 fits the support sets of digits in a few steps),
    # the meta step sizes decayed linearly over a CPU-sized run.
    config.metanas.update(dict(
        inner_lr_weights=0.3, weights_optimizer="sgd", meta_lr_schedule=
        "linear", meta_batch_size=4, num_steps=300, warm_up_steps=0,
        eval_inner_steps=10, batch_size=0, eval_batch_size=-1,
        prune_every=0, log_every=10))
    config.evaluate.update(dict(episodes=100, omniglot_runs=False,
                                protocols=()))
  return config
