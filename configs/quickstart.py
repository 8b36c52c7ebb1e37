r"""Quickstart: meta-train a small prior on scikit-learn's digits, adapt, derive.

Needs no download. Meta-trains over 5-way 1-shot tasks built from 5 digits
(each rotated by 0/90/180/270 degrees into 20 classes), then adapts the prior
to tasks over the 5 held-out digits, compares it with baselines and prints the
derived genotype. A few minutes on 2 CPU cores (most of it XLA compiling the
meta-step once; the compiled programs are cached on disk for later runs).

  python launch.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections

from base import ops


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "all"  # meta_train | evaluate | adapt | all
  config.method = "base"
  config.seed = 0
  config.prior_path = ""  # default: <workdir>/prior.msgpack

  config.data = ml_collections.ConfigDict(dict(
      source="digits", path="", image_size=8,
      rotations=(0, 90, 180, 270), num_test_classes=5,
      num_ways=5, num_shots=1, num_queries=5, seed=0,
      tfds_name="", tfds_split="train"))

  config.supernet = ml_collections.ConfigDict(dict(
      channels=8, num_cells=2, num_nodes=2, stem_multiplier=2,
      # The DARTS ops less the 5x5 convolutions (pointless on 8x8 digits,
      # and each op adds XLA compile time); configs/darts.py has all eight.
      primitives=tuple(p for p in ops.DARTS_PRIMITIVES if "5x5" not in p),
      reduction_cells=(1,),
      depthwise_impl="auto"))

  config.prior = ml_collections.ConfigDict(dict(weight_std=0.05))

  config.adapt = ml_collections.ConfigDict(dict(
      steps=3, lr_weights=2.0, lr_arch=2.0, lr_log_std=0.0, beta=1e-3,
      first_order=True, weight_posterior="gaussian", hard=False,
      eval_samples=4, unroll=False,
      # Only the sampled op of each edge runs (hard samples; GDAS gradient).
      single_path=False,
      compute_dtype="float32",  # "bfloat16": mixed precision
      # per_step: fresh (alpha, w) noise each inner step and for the query;
      # per_task: one draw for the task's steps, query and prediction (a
      # single-path sample keeps its path); auto: per_task with hard samples.
      inner_noise="auto",
      # Tasks with N' < N ways (an N-way prior, restricted): the
      # classifier's rate x N'/N (base.adaptation.for_ways).
      scale_rates_with_ways=True,
      classifier_rate_scale=1.0,  # the classifier's rates / the others'
      # The derived genotype: "darts" (two strongest non-none edges per
      # node) or "argmax" (each edge's mode, none included; single path).
      genotype_rule="darts"))

  config.meta = ml_collections.ConfigDict(dict(
      lr_arch=3e-2, lr_weights=3e-3, learn_weight_std=True, grad_clip=10.0,
      # auto: loop over tasks + stepwise inner steps on CPU, vmap on one
      # GPU, sharded over several devices (see base.meta.MetaOptConfig).
      task_batching="auto", inner_execution="auto"))

  config.temperature = ml_collections.ConfigDict(dict(
      schedule="exponential", initial=1.0, final=0.5, steps=0))

  config.train = ml_collections.ConfigDict(dict(
      num_steps=300, meta_batch_size=8, log_every=10, checkpoint_every=100,
      prefetch=2,
      # Meta-train in chunks: end this run at this step (0: num_steps); a
      # later run with a larger value resumes from the checkpoint.
      stop_at_step=0))

  # The MAML baseline: a Conv-4 meta-trained with (first-order) MAML on the
  # same tasks, scored on the same episodes (enable with maml.enabled=True).
  # Checkpointed every checkpoint_every steps into workdir/maml_checkpoints:
  # a killed run resumes, and a larger num_steps continues a finished one.
  config.maml = ml_collections.ConfigDict(dict(
      enabled=False, hidden=32, inner_steps=3, inner_lr=0.4, first_order=True,
      meta_lr=1e-3, meta_batch_size=8, num_steps=300, eval_inner_steps=0,
      checkpoint_every=100))

  config.evaluate = ml_collections.ConfigDict(dict(
      episodes=100, adapt_steps=0, seed=1234, baselines=True,
      protocols=(), omniglot_runs=False, runs_path=""))
  return config
