"""What ``launch.py`` runs for each mode; prints human-readable summaries."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from base import compare as compare_lib
from base import plots
from base import reports
from base import task_adaptation
from base import train
from base import transfer as transfer_lib
from base.adaptation import for_ways
from base.errors import ConfigError

MODES = ("meta_train", "evaluate", "adapt", "transfer", "compare", "all")
# What mode=adapt writes into the workdir; a later run keeps these aside
# under a time-stamped name (base.reports.keep_earlier) before writing its own.
GENOTYPE_FILE = "adapted_genotype.json"
ADAPT_FILES = (GENOTYPE_FILE, "adapted_cells.png", "arch_distribution.png",
               "posterior.msgpack")
CACHE_ENV = "BASE_COMPILATION_CACHE"
CACHE_MAX_BYTES = 8 << 30  # least recently used entries go beyond this


def enable_compilation_cache() -> str | None:
  """Caches compiled XLA programs on disk across runs (CPU compiles are slow).

  The directory is ``$BASE_COMPILATION_CACHE`` (empty disables it), by
  default ``~/.cache/base-jax/xla``. A size limit is set because only then
  does JAX guard the cache with a file lock: unlimited, it writes entries
  in place unlocked, and a process reading an entry another one is still
  writing (two launches, or pytest-xdist workers, sharing the cache) can
  load a truncated executable.
  """
  path = os.environ.get(CACHE_ENV,
                        os.path.expanduser("~/.cache/base-jax/xla"))
  if not path:
    return None
  os.makedirs(path, exist_ok=True)
  complete_cache_access_times(path)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
  return path


def complete_cache_access_times(path: str) -> int:
  """Gives every entry of the XLA cache at ``path`` an access-time file.

  With a size limit JAX's cache reads the ``<key>-atime`` file of every
  entry whenever it stores a new one (to find the least recently used);
  entries written without a limit (by earlier versions of this package, or
  another program sharing the directory) have none, and then every store
  fails with a warning and nothing new is cached. Each missing file gets
  the entry's modification time. Returns how many were written.
  """
  import filelock  # pylint: disable=g-import-not-at-top
  written = 0
  with filelock.FileLock(os.path.join(path, ".lockfile")):
    names = set(os.listdir(path))
    for name in sorted(names):
      if not name.endswith("-cache"):
        continue
      atime = name[:-len("-cache")] + "-atime"
      if atime in names:
        continue
      try:
        stamp = os.stat(os.path.join(path, name)).st_mtime_ns
      except FileNotFoundError:  # evicted meanwhile by a process not locking
        continue
      with open(os.path.join(path, atime), "wb") as f:
        f.write(stamp.to_bytes(8, "little"))
      written += 1
  return written


def run(config: Any, workdir: str | None) -> None:
  mode = config.get("mode", "all")
  modes = [m.strip() for m in mode.split(",")]
  unknown = [m for m in modes if m not in MODES]
  if unknown:
    raise ConfigError(f"unknown mode {', '.join(unknown)!r}; expected one or "
                      f"more (comma-separated) of {MODES}")
  if "all" in modes:
    modes = ["meta_train", "evaluate", "adapt"] + [
        m for m in modes if m not in ("all", "meta_train", "evaluate", "adapt")]
  workdir = workdir or os.path.join("runs", "default")
  enable_compilation_cache()
  experiment = train.build_experiment(config)
  print(f"supernet: {experiment.spec.num_cells} cells x "
        f"{experiment.spec.num_nodes} nodes, {experiment.spec.num_ops} ops "
        f"{list(experiment.spec.primitives)}, {experiment.spec.channels} "
        f"channels; tasks: {experiment.train_family.num_ways}-way "
        f"{experiment.train_family.num_shots}-shot on "
        f"{config.data.source}; workdir {os.path.abspath(workdir)}")
  if experiment.method != "base":
    run_method(experiment, modes, workdir)
    return
  if "meta_train" in modes:
    logging.info("meta-training (the first step compiles the meta-step)")
    state = train.meta_train(config, workdir, experiment=experiment)
    print(f"prior saved to {os.path.join(workdir, train.PRIOR_FILENAME)} "
          f"after {int(state.step)} meta-steps")
    if experiment.maml is not None:
      meta_train_maml_baseline(experiment, int(state.step), workdir,
                               int(config.seed))
  if "evaluate" in modes:
    results = train.evaluate(config, workdir, experiment=experiment)
    print(train.format_results(results))
    print(f"results written to {os.path.join(workdir, 'results.json')} "
          f"and results.md")
  if "adapt" in modes:
    adapt_one_task(config, workdir, experiment)
  if "compare" in modes:
    run_comparison(config, workdir, experiment)
  if "transfer" in modes:
    results = transfer_lib.transfer(config, workdir, experiment)
    print(transfer_lib.format_transfer(results))
    networks = os.path.join(workdir, transfer_lib.NETWORKS_DIR)
    print(f"transfer results written to "
          f"{os.path.join(workdir, 'transfer.json')} and transfer.md; the "
          f"trained networks to {networks} (base.load_network reads one back)")


def meta_train_maml_baseline(experiment: train.Experiment, base_step: int,
                             workdir: str, seed: int) -> None:
  """Meta-trains the MAML baseline once BASE's meta-training is complete.

  Not after a run stopped early (``train.stop_at_step``), and not again when
  the workdir already holds it, trained with the same config and seed.
  """
  path = os.path.join(workdir, train.MAML_FILENAME)
  if base_step < experiment.train.num_steps:
    print(f"meta-training stopped at step {base_step} of "
          f"{experiment.train.num_steps} (train.stop_at_step); the MAML "
          f"baseline is meta-trained once it completes")
  elif train.meta_train_maml(experiment, workdir, seed, force=False):
    print(f"MAML Conv-4 baseline saved to {path}")
  else:
    print(f"MAML Conv-4 baseline already trained with this config: {path}")


def run_comparison(config: Any, workdir: str,
                   experiment: train.Experiment) -> None:
  """Every method of ``config.compare`` on the same episodes; one table."""
  results = compare_lib.compare(config, workdir, experiment)
  print(compare_lib.format_comparison(results))
  print(f"comparison written to {os.path.join(workdir, compare_lib.COMPARE_JSON)}"
        f" and {compare_lib.COMPARE_MD}")


def run_method(experiment: train.Experiment, modes: list[str],
               workdir: str) -> None:
  """The modes for a method other than BASE (``config.method``)."""
  from base import methods
  method = methods.get_method(experiment.method)
  cfg = experiment.method_config
  if "transfer" in modes:
    raise ConfigError(f"mode 'transfer' transfers a BASE prior; it is not "
                      f"available for method {method.name!r}")
  if "meta_train" in modes:
    summary = compare_lib.meta_train_method(
        method, experiment, cfg, workdir, seed=int(experiment.config.seed))
    print(f"{method.title}: meta-trained in {summary['seconds']:.1f} s; "
          f"saved in {os.path.abspath(workdir)}")
  if "evaluate" in modes:
    results = compare_lib.run_methods(experiment, (method.name,), workdir,
                                      meta_train=False, output_name="results",
                                      subdirectories=False)
    print(compare_lib.format_comparison(results))
    print(f"results written to {os.path.join(workdir, 'results.json')} "
          f"and results.md")
  if "compare" in modes:
    run_comparison(experiment.config, workdir, experiment)
  if "adapt" in modes:
    learner = method.load_learner(experiment, cfg, workdir)
    seed = int(experiment.config.seed) + 7
    episode = experiment.test_family.sample(np.random.default_rng(seed))
    result = learner.adapt_and_predict(episode.support_x, episode.support_y,
                                       episode.query_x, seed=seed)
    accuracy = float(np.mean(result.query_predictions == episode.query_y))
    print(f"{method.title} adapted to a new "
          f"{experiment.test_family.num_ways}-way task: support accuracy "
          f"{result.support_accuracy:.3f}, query accuracy {accuracy:.3f}")
    if result.genotype is not None:
      print(f"genotype: {result.genotype}")
      reports.keep_earlier(workdir, (GENOTYPE_FILE,))
      with open(os.path.join(workdir, GENOTYPE_FILE), "w") as f:
        f.write(result.genotype.to_json(indent=2))


def adapt_one_task(config: Any, workdir: str,
                   experiment: train.Experiment) -> task_adaptation.Adaptation:
  """Adapts the saved prior to one new meta-test task and reports it."""
  path = config.get("prior_path") or os.path.join(workdir,
                                                  train.PRIOR_FILENAME)
  prior, metadata = train.load_prior_for(experiment, path)
  prior, cfg = for_ways(prior, experiment.adapt,
                        experiment.test_family.num_ways)
  seed = int(config.seed) + 7
  episode = experiment.test_family.sample(np.random.default_rng(seed))
  steps = experiment.evaluate.adapt_steps or experiment.adapt.steps
  temperature = experiment.prior_temperature(metadata)
  # Warm-up on the same shapes, so that the timed call below measures the
  # adaptation and not XLA compiling (or loading) the program.
  task_adaptation.adapt(prior, episode.support_x, episode.support_y,
                        config=cfg, temperature=temperature,
                        steps=steps, derive=False)
  result = task_adaptation.adapt(
      prior, episode.support_x, episode.support_y, episode.query_x,
      episode.query_y, config=cfg,
      temperature=temperature, steps=steps, seed=seed)
  print(f"adapted to a new {experiment.test_family.num_ways}-way task: "
        f"{result.summary()}")
  kept = reports.keep_earlier(workdir, ADAPT_FILES)
  if kept:
    print(f"the earlier adaptation's files are kept as *.{kept}.*")
  genotype_path, cells_path, heatmap_path, posterior_path = (
      os.path.join(workdir, name) for name in ADAPT_FILES)
  with open(genotype_path, "w") as f:
    f.write(result.genotype.to_json(indent=2))
  plots.save_genotype_figure(result.genotype, cells_path)
  distributions = {"prior": jax.device_get(prior.arch_logits),
                   "task 1 posterior": jax.device_get(
                       result.posterior.arch_logits)}
  for task in (2, 3):
    other = experiment.test_family.sample(np.random.default_rng(seed + task))
    other_result = task_adaptation.adapt(
        prior, other.support_x, other.support_y, config=cfg,
        temperature=temperature, steps=steps, seed=seed + task, derive=False)
    distributions[f"task {task} posterior"] = jax.device_get(
        other_result.posterior.arch_logits)
  plots.save_arch_heatmap(distributions, prior.spec.primitives,
                          prior.spec.num_nodes, heatmap_path)
  print(f"pictures: {cells_path}, {heatmap_path}")
  # With what the prediction needs: base.load_adaptation(...).predict(x).
  result.save(posterior_path, metadata={"adapted_from": os.path.abspath(path)})
  return result
