"""Meta-training and evaluation loops around the compiled steps.

``launch.py`` dispatches here; notebooks and tests call the same functions.
Everything inside the loops that touches arrays is a jitted pure function
(``base.meta.meta_step``; adaptation to one task in
``base.task_adaptation``); this module only samples episodes, schedules the
temperature, logs, checkpoints and reports.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import tensorboardX
import tqdm

from base import compiled_programs, config_utils, distributions, reports
from base import prior as prior_lib
from base.adaptation import AdaptConfig, for_ways
from base.checkpoints import MetaCheckpointer
from base.data import EpisodeSampler, load_omniglot_runs, make_task_families
from base.data.prefetch import prefetch
from base.errors import BaseUserError, ConfigError
from base.evaluation import (EpisodeScore, format_rows_table,
                             format_runs_table, parse_protocol,
                             score_episodes, score_runs)
from base.genotype import genotype_param_count
from base.meta import MetaOptConfig, MetaState, init_meta_state, meta_step
from base.sharding import sample_task_batch
from base.prior import SupernetDist
from base.supernet import SupernetSpec, count_params
from base.task_adaptation import adapt

PRIOR_FILENAME = "prior.msgpack"
METRICS_FILENAME = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Meta-training loop settings.

  Attributes:
    num_steps: meta-steps in total (a resumed run stops there too); the
      temperature schedule spans them.
    stop_at_step: end this run after this many steps (0: ``num_steps``),
      writing a checkpoint and a prior of that step. For meta-training in
      chunks (wall-time-limited jobs, or to evaluate a long run part way):
      a later run with a larger value resumes from the checkpoint and
      continues the same ``num_steps`` schedule, so the chunks give the
      same prior as one run.
    meta_batch_size: tasks per meta-step.
    log_every: fetch metrics from the device and log every this many steps.
    checkpoint_every: save a resumable checkpoint every this many steps.
    prefetch: meta-batches sampled ahead by a background thread
      (``base.data.prefetch``).
  """
  num_steps: int = 200
  meta_batch_size: int = 4
  log_every: int = 10
  checkpoint_every: int = 50
  prefetch: int = 2
  stop_at_step: int = 0

  def __post_init__(self):
    for name in ("num_steps", "meta_batch_size", "log_every",
                 "checkpoint_every", "prefetch"):
      if getattr(self, name) < 1:
        raise ConfigError(f"train.{name} must be >= 1, got "
                          f"{getattr(self, name)}")
    if not 0 <= self.stop_at_step <= self.num_steps:
      raise ConfigError(f"train.stop_at_step must be between 0 (run all "
                        f"train.num_steps) and train.num_steps="
                        f"{self.num_steps}, got {self.stop_at_step}")

  @property
  def last_step(self) -> int:
    """The step this run ends after."""
    return self.stop_at_step or self.num_steps


@dataclasses.dataclass(frozen=True)
class TemperatureConfig:
  """Gumbel-softmax temperature schedule over meta-training steps.

  ``steps=0`` anneals over the whole run (``train.num_steps``).
  """
  schedule: str = "exponential"
  initial: float = 1.0
  final: float = 0.5
  steps: int = 0


@dataclasses.dataclass(frozen=True)
class PriorConfig:
  """Initial prior: ``weight_std`` is every weight's initial scale."""
  weight_std: float = 0.01


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """Evaluation on meta-test episodes.

  Attributes:
    episodes: meta-test episodes to adapt to and score.
    adapt_steps: ELBO steps at test time (0: as in meta-training).
    seed: seeds the meta-test episodes, the same for every method.
    baselines: also score the unadapted prior and a random-init supernet
      adapted with the same budget and not adapted.
    protocols: N-way K-shot protocols to score, e.g. ("20-way 1-shot",
      "5-way 5-shot"); empty: the config's own. A prior meta-trained for N
      ways serves any N' <= N (see ``base.prior.restrict_ways``).
    omniglot_runs: also score the 20 official Omniglot one-shot runs
      (``all_runs.zip`` from ``runs_path``, or the shared data folder).
    runs_path: where ``all_runs.zip`` (or its folder) is; "" = default.
  """
  episodes: int = 100
  adapt_steps: int = 0
  seed: int = 1234
  baselines: bool = True
  protocols: tuple[str, ...] = ()
  omniglot_runs: bool = False
  runs_path: str = ""


class Experiment(NamedTuple):
  """A config parsed once into typed parts (no arrays yet)."""
  config: Any
  train_family: EpisodeSampler
  test_family: EpisodeSampler
  spec: SupernetSpec
  adapt: AdaptConfig
  meta: MetaOptConfig
  train: TrainConfig
  temperature: TemperatureConfig
  prior: PriorConfig
  evaluate: EvaluateConfig
  maml: Any = None  # base.methods.maml.MAMLConfig when maml.enabled
  method: str = "base"  # config.method, a key of base.methods.METHOD_MODULES
  method_config: Any = None  # the config dataclass of ``method``

  @property
  def schedule(self):
    t = self.temperature
    return distributions.temperature_schedule(
        t.schedule, t.initial, t.final, t.steps or self.train.num_steps)

  @property
  def final_temperature(self) -> float:
    return float(self.schedule(self.train.num_steps))

  def prior_temperature(self, metadata: dict[str, Any]) -> float:
    """The Gumbel temperature to adapt a saved prior at.

    The one its meta-training reached (stored in ``metadata``, also by a run
    stopped early), else, for a prior saved without it, this experiment's
    schedule's final temperature.
    """
    return float(metadata.get("temperature", self.final_temperature))


def build_experiment(config: Any) -> Experiment:
  """Validates ``config`` and loads its data; raises one-line user errors."""
  config_utils.check_top_level(config)
  from base import methods  # the registry; method modules load on demand
  method = methods.get_method(config.get("method", "base"))
  train_family, test_family = make_task_families(config.data)
  height, width, channels = train_family.image_shape
  spec = config_utils.dataclass_from_config(
      SupernetSpec, config.supernet, "supernet",
      num_classes=train_family.num_ways, in_channels=channels)
  return Experiment(
      config=config, train_family=train_family, test_family=test_family,
      spec=spec,
      adapt=config_utils.dataclass_from_config(AdaptConfig, config.adapt,
                                               "adapt"),
      meta=config_utils.dataclass_from_config(MetaOptConfig, config.meta,
                                              "meta"),
      train=config_utils.dataclass_from_config(TrainConfig, config.train,
                                               "train"),
      temperature=config_utils.dataclass_from_config(
          TemperatureConfig, config.temperature, "temperature"),
      prior=config_utils.dataclass_from_config(PriorConfig, config.prior,
                                               "prior"),
      evaluate=config_utils.dataclass_from_config(
          EvaluateConfig, config.get("evaluate"), "evaluate"),
      maml=_maml_config(config.get("maml")),
      method=method.name,
      method_config=method_config(method.name, config))


def method_config(name: str, config: Any) -> Any:
  """The config dataclass of method ``name`` from section ``config.<name>``.

  A missing section gives the method's defaults; ``enabled`` (the switch of
  the MAML baseline inside BASE runs) is not a method setting.
  """
  from base import methods
  method = methods.get_method(name)
  values = config_utils.as_dict(config.get(name))
  values.pop("enabled", None)
  return config_utils.dataclass_from_config(method.config_class, values, name)


def _maml_config(section: Any):
  """The MAML Conv-4 baseline's config, or None when not enabled."""
  values = config_utils.as_dict(section)
  if not values.pop("enabled", False):
    return None
  from base.methods import maml  # the core never needs the baseline
  return config_utils.dataclass_from_config(maml.MAMLConfig, values, "maml")


MAML_FILENAME = "maml_conv4.msgpack"  # the MAML baseline's file in a workdir


def meta_train_maml(exp: Experiment, workdir: str, seed: int,
                    progress: bool = True, *, force: bool = True) -> bool:
  """Meta-trains the MAML Conv-4 baseline on the same task family.

  Writes ``maml_conv4.msgpack`` into ``workdir``. With ``force=False`` it
  does nothing when that file already holds weights meta-trained with the
  same config and seed (a resumed run does not train the baseline again).
  Returns whether it trained.
  """
  from base.methods import maml
  workdir = _check_workdir(workdir)
  if not force and maml.is_trained(workdir, exp.maml, seed):
    return False
  maml.METHOD.meta_train(exp, exp.maml, workdir, seed=seed,
                         progress=progress)
  return True


def fetch_finite_losses(pending: list, done: int, what: str) -> list[float]:
  """Fetches the losses of the steps ending at ``done`` from the device.

  Raises NonFiniteLossError naming the first step whose loss is not finite
  (``what`` names the loss, e.g. "MAML meta-loss").
  """
  fetched = [float(v) for v in jax.device_get(pending)]
  for offset, value in enumerate(fetched):
    if not math.isfinite(value):
      raise NonFiniteLossError(
          f"non-finite {what} at step {done - len(fetched) + offset + 1} "
          f"({what}={value}); stopping")
  return fetched


def episode_rng(seed: int, step: int) -> np.random.Generator:
  """The episode sampler's generator for a step: resumable by construction."""
  return np.random.default_rng([seed, step])


def step_key(seed: int, step: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


class MetricsWriter:
  """Logs metrics twice: ``workdir/metrics.jsonl`` and TensorBoard events.

  The JSON-lines file (one object per logged step) is for scripts; the event
  files under ``workdir/tensorboard`` are for ``tensorboard --logdir``.
  """

  def __init__(self, workdir: str):
    # On several hosts only process 0 writes (the others' metrics are the
    # same replicated values).
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILENAME)
    self._tensorboard = tensorboardX.SummaryWriter(
        os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> dict[str, Any] | None:
    """Drops records past ``step`` (logged after the checkpoint resumed from).

    Returns the record of ``step`` itself (None: not logged, or not process
    0), which a resumed run continues from.
    """
    if not self.enabled or not os.path.exists(self.path):
      return None
    with open(self.path) as f:
      kept = [(l, json.loads(l)) for l in f if l.strip()]
    kept = [(l, r) for l, r in kept if r["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(l for l, _ in kept)
    return next((r for _, r in kept if r["step"] == step), None)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    step = int(record["step"])
    for name, value in record.items():
      if name not in ("step", "time", "seconds"):
        self._tensorboard.add_scalar(f"meta_train/{name}", value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._tensorboard.close()


def _check_workdir(workdir: str) -> str:
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: {e.strerror}") from None
  return workdir


class NonFiniteLossError(BaseUserError, FloatingPointError):
  """The meta-loss became NaN or infinite."""


def _check_finite(fetched: list[dict[str, Any]], first_step: int,
                  checkpointer: MetaCheckpointer) -> None:
  """Raises NonFiniteLossError naming the first step with a bad meta-loss."""
  for offset, metrics in enumerate(fetched):
    values = {k: float(v) for k, v in metrics.items()}
    if not all(math.isfinite(v) for v in values.values()):
      last = checkpointer.latest_step()
      kept = (f"the last good checkpoint (step {last}) in "
              f"{checkpointer.directory} is kept" if last else
              "no checkpoint had been written yet")
      raise NonFiniteLossError(
          f"non-finite meta-loss at step {first_step + offset} "
          f"(meta_loss={values.get('meta_loss')}); stopping; {kept}")


def meta_train(config: Any, workdir: str, *, experiment: Experiment | None = None,
               progress: bool = True) -> MetaState:
  """Meta-trains a prior, resuming from ``workdir``'s latest checkpoint.

  Writes ``checkpoints/``, ``metrics.jsonl`` and, at the end,
  ``prior.msgpack`` into ``workdir``. Runs to ``train.stop_at_step`` when
  set (the prior then records that step and its temperature; a later run
  continues). Every metrics record and the prior's metadata carry
  ``seconds``: the wall time of meta-training so far, summed over the runs
  that resumed it (compilation included, time between runs not). Returns
  the final meta-state.
  """
  exp = experiment or build_experiment(config)
  workdir = _check_workdir(workdir)
  seed = int(config.seed)
  checkpointer = MetaCheckpointer(workdir)
  prior = prior_lib.init_prior(exp.spec, jax.random.key(seed),
                               exp.prior.weight_std)
  state = init_meta_state(prior, exp.meta)
  start = checkpointer.latest_step() or 0
  if start:
    state = checkpointer.restore(state, start)
  last = max(exp.train.last_step, start)
  schedule = exp.schedule
  # Task t of step s is sampled from its own generator, so each host of a
  # multi-host run samples just the tasks that land on its devices.
  task_ids = list(range(exp.train.meta_batch_size))
  if jax.process_count() > 1:
    from base import sharding
    task_ids = sharding.local_task_ids(exp.train.meta_batch_size,
                                       sharding.task_mesh())
  metrics_writer = MetricsWriter(workdir)
  # The record of the checkpoint resumed from (one is logged at every
  # checkpoint; none at step 0) holds the seconds so far; metrics of older
  # versions do not.
  last_logged = metrics_writer.truncate_after(start)
  earlier_seconds = ((last_logged or {}).get("seconds") if start else 0.0)
  clock = time.perf_counter()
  # A chunk of a longer schedule (train.stop_at_step) counts to its own end.
  desc = ("meta-train" if last == exp.train.num_steps
          else f"meta-train (stops at step {last} of {exp.train.num_steps})")
  bar = tqdm.tqdm(total=last, initial=start, desc=desc,
                  disable=not progress, dynamic_ncols=True)
  pending = []
  try:
    batches = prefetch(
        (sample_task_batch(exp.train_family, seed, step, task_ids)
         for step in range(start, last)),
        size=exp.train.prefetch)
    for step, episodes in zip(range(start, last), batches):
      temperature = schedule(step)
      state, metrics = meta_step(state, episodes, step_key(seed, step),
                                 temperature, cfg=exp.adapt, opt_cfg=exp.meta)
      pending.append(metrics)
      done = step + 1
      checkpoint_now = (done % exp.train.checkpoint_every == 0
                        or done == last)
      # Metrics are fetched (and checked) before every checkpoint, so a
      # non-finite state is never saved over a good one.
      if checkpoint_now or done % exp.train.log_every == 0:
        fetched = jax.device_get(pending)
        pending = []
        _check_finite(fetched, done - len(fetched) + 1, checkpointer)
        record = {k: float(np.mean([m[k] for m in fetched]))
                  for k in fetched[0]}
        record.update(step=done, temperature=float(temperature),
                      time=time.time())
        if earlier_seconds is not None:
          record["seconds"] = earlier_seconds + time.perf_counter() - clock
        metrics_writer.write(record)
        last_logged = record
        bar.set_postfix(loss=f"{record['meta_loss']:.3f}",
                        acc=f"{record['query_accuracy']:.3f}")
      if checkpoint_now:
        checkpointer.save(done, state)
      bar.update(1)
  finally:
    bar.close()
    checkpointer.close()
    metrics_writer.close()
  if jax.process_index() != 0:
    return state
  prior_lib.save_prior(
      os.path.join(workdir, PRIOR_FILENAME), state.prior,
      metadata={"step": int(state.step),
                "num_steps": exp.train.num_steps,
                # The temperature meta-training reached (that of num_steps
                # unless the run stopped early): adaptation uses it.
                "temperature": float(schedule(int(state.step))),
                "image_shape": list(exp.train_family.image_shape),
                "data_source": str(config.data.source),
                "adapt": dataclasses.asdict(exp.adapt),
                "meta_train_seconds": (last_logged or {}).get("seconds"),
                "last_metrics": last_logged})
  return state


# ----------------------------------------------------------------------------
# Evaluation on meta-test episodes.


def score_prior(prior: SupernetDist, family: EpisodeSampler,
                cfg: AdaptConfig, temperature: float, *, episodes: int,
                steps: int, seed: int, desc: str | None = None
                ) -> dict[str, Any]:
  """Adapts to ``episodes`` meta-test episodes; accuracy mean ± 95% CI, and
  how far the architecture distribution moved (``arch_shift``).

  ``desc`` shows a progress bar with that label.

  Episodes run one by one through the single-task programs of :func:`adapt`
  (compiled once, shared with it); on CPU that beats vmapping tasks.
  """
  def score_one(episode, index):
    result = adapt(prior, episode.support_x, episode.support_y,
                   episode.query_x, episode.query_y, config=cfg,
                   temperature=temperature, steps=steps,
                   seed=seed * 100_003 + index, derive=False)
    return EpisodeScore(result.query_accuracy, result.support_accuracy,
                        result.seconds,
                        prior_lib.arch_shift(prior, result.posterior))

  row = score_episodes(family, score_one, episodes=episodes, seed=seed,
                       desc=desc)
  row["adapt_steps"] = steps
  return row


def load_prior_for(exp: Experiment, path: str
                   ) -> tuple[SupernetDist, dict[str, Any]]:
  """Loads a prior and checks it fits the experiment's images and ways."""
  prior, metadata = prior_lib.load_prior(path, return_metadata=True)
  if prior.spec.in_channels != exp.spec.in_channels:
    raise ConfigError(
        f"prior {path} is for images with {prior.spec.in_channels} "
        f"channel(s); the config's data has {exp.spec.in_channels}")
  if prior.spec.num_classes < exp.spec.num_classes:
    raise ConfigError(
        f"prior {path} is for {prior.spec.num_classes}-way tasks; the "
        f"config asks for {exp.spec.num_classes}-way")
  return prior, metadata


def evaluate(config: Any, workdir: str, *, prior_path: str | None = None,
             experiment: Experiment | None = None) -> dict[str, Any]:
  """Scores a saved prior on meta-test episodes and benchmarks, with baselines.

  For every protocol in ``config.evaluate.protocols`` (default: the config's
  own N-way K-shot) the same ``evaluate.episodes`` episodes over the
  meta-test classes (same seed for every method) are adapted to and scored;
  optionally also the 20 official Omniglot one-shot runs. Writes
  ``results.json`` and ``results.md`` (Markdown tables) into ``workdir``.
  """
  exp = experiment or build_experiment(config)
  workdir = _check_workdir(workdir)
  path = prior_path or config.get("prior_path") or os.path.join(
      workdir, PRIOR_FILENAME)
  prior, metadata = load_prior_for(exp, path)
  ev = exp.evaluate
  temperature = exp.prior_temperature(metadata)
  steps = ev.adapt_steps or exp.adapt.steps
  methods = {"base (meta-learned prior, adapted)": (prior, steps)}
  if ev.baselines:
    random_prior = prior_lib.init_prior(
        prior.spec, jax.random.key(int(config.seed) + 1),
        exp.prior.weight_std)
    methods.update({
        "meta-learned prior, not adapted": (prior, 0),
        "random init, adapted (same budget)": (random_prior, steps),
        "random init, not adapted": (random_prior, 0)})
  supernet_parameters = count_params(prior.weight_mean)
  # None for priors of older versions, which did not record it.
  prior_seconds = metadata.get("meta_train_seconds")
  maml_weights = None
  if exp.maml is not None:
    from base.methods import maml
    maml_weights, maml_metadata = maml.load_maml(
        os.path.join(workdir, MAML_FILENAME))
  protocols = ev.protocols or (f"{exp.test_family.num_ways}-way "
                               f"{exp.test_family.num_shots}-shot",)
  rows = []
  for protocol in protocols:
    ways, shots = parse_protocol(protocol)
    family = EpisodeSampler(exp.test_family.data, ways, shots,
                            exp.test_family.num_queries,
                            name=f"meta-test {protocol}")
    for name, (dist, k) in methods.items():
      # Each protocol's shapes compile programs of their own: keep the
      # process clear of the kernel's limit on memory mappings.
      compiled_programs.release_if_near_limit()
      task_dist, task_cfg = for_ways(dist, exp.adapt, ways)
      row = score_prior(task_dist, family, task_cfg, temperature, steps=k,
                        episodes=ev.episodes, seed=ev.seed,
                        desc=f"{protocol}: {name}")
      row.update(method=name, protocol=protocol,
                 parameters=supernet_parameters,
                 meta_train_seconds=prior_seconds if dist is prior else 0.0,
                 classifier_rate_scale=task_cfg.classifier_rate_scale)
      rows.append(row)
    if maml_weights is not None:
      row = maml.score_maml(maml.restrict_ways(maml_weights, ways), family,
                            exp.maml, episodes=ev.episodes, seed=ev.seed)
      row.update(method=MAML_METHOD, protocol=protocol,
                 meta_train_seconds=maml_metadata.get("seconds"))
      rows.append(row)
  runs = {}
  if ev.omniglot_runs:
    runs = score_omniglot_runs(methods, exp, temperature, ev.runs_path)
    if maml_weights is not None:
      runs[MAML_METHOD] = score_omniglot_runs_maml(maml_weights, exp,
                                                   ev.runs_path)
  episode = exp.test_family.sample(np.random.default_rng(ev.seed))
  task_prior, task_cfg = for_ways(prior, exp.adapt, exp.test_family.num_ways)
  adaptation = adapt(task_prior,
                     episode.support_x, episode.support_y, episode.query_x,
                     episode.query_y, config=task_cfg,
                     temperature=temperature, steps=steps, seed=ev.seed)
  spec = prior.spec
  results = {
      "prior": os.path.abspath(path),
      # A prior of a run stopped early (train.stop_at_step) says so here.
      "prior_step": metadata.get("step"),
      "prior_num_steps": metadata.get("num_steps", metadata.get("step")),
      "temperature": temperature,
      "queries_per_class": exp.test_family.num_queries,
      "meta_test_classes": exp.test_family.data.num_classes,
      "rows": rows,
      # The rows of the first protocol, by method name.
      "methods": {r["method"]: r for r in rows
                  if r["protocol"] == protocols[0]},
      "omniglot_runs": runs,
      "example_genotype": adaptation.genotype.to_dict(),
      "derived_network_parameters": genotype_param_count(
          adaptation.genotype, num_classes=exp.test_family.num_ways,
          in_channels=spec.in_channels, channels=spec.channels,
          num_cells=spec.num_cells, stem_multiplier=spec.stem_multiplier,
          reduction_cells=spec.reduction_cells,
          channel_scale=spec.channel_scale),
  }
  reports.write_report(workdir, "results", results, format_results(results))
  return results


def score_omniglot_runs(methods: dict[str, tuple[SupernetDist, int]],
                        exp: Experiment, temperature: float,
                        runs_path: str = "") -> dict[str, Any]:
  """Error rates on the 20 official Omniglot within-alphabet one-shot runs."""
  height = exp.train_family.image_shape[0]
  runs = load_omniglot_runs(runs_path or None, image_size=height)
  ways = runs.support_x.shape[1]
  results = {}
  for name, (dist, steps) in methods.items():
    dist, cfg = for_ways(dist, exp.adapt, ways)

    def classify(support_x, support_y, query_x, dist=dist, cfg=cfg,
                 steps=steps):
      return adapt(dist, support_x, support_y, query_x, config=cfg,
                   temperature=temperature, steps=steps,
                   derive=False).query_predictions

    results[name] = score_runs(runs, classify)
  return results


MAML_METHOD = "MAML Conv-4 (meta-trained, same episodes)"


def score_omniglot_runs_maml(weights: Any, exp: Experiment,
                             runs_path: str = "") -> dict[str, Any]:
  """The 20 one-shot runs for the MAML Conv-4 baseline."""
  from base.methods import maml
  runs = load_omniglot_runs(runs_path or None,
                            image_size=exp.train_family.image_shape[0])
  # The compiled adaptation of the episode evaluation; eager maml_adapt ran
  # its scan op by op, and reading that primitive back from the on-disk
  # compilation cache crashed a test worker twice.
  learner = maml.MAMLLearner(weights, exp.maml).restrict_ways(
      runs.support_x.shape[1])

  def classify(support_x, support_y, query_x):
    return learner.adapt_and_predict(support_x, support_y, query_x,
                                     seed=0).query_predictions

  return score_runs(runs, classify)


def format_results(results: dict[str, Any]) -> str:
  """Markdown tables of :func:`evaluate`'s results."""
  step, num_steps = results.get("prior_step"), results.get("prior_num_steps")
  partial = ([f"The prior is of meta-step {step} of {num_steps} "
              f"(a run stopped early with train.stop_at_step).", ""]
             if step is not None and num_steps and step < num_steps else [])
  lines = partial + [
      f"Meta-test classes: {results['meta_test_classes']}, "
      f"{results['queries_per_class']} queries per class; parameters = "
      f"supernet weights used by the posterior predictive (the derived "
      f"network has {results['derived_network_parameters']}); meta-train s "
      f"= wall time of meta-training (resumed runs summed; 0 for a random "
      f"init); arch shift = mean per-edge total variation between the "
      f"architecture distribution before and after adaptation (0: unmoved, "
      f"1: every edge's mass moved to other ops).", ""]
  lines += format_rows_table(results["rows"])
  if results.get("omniglot_runs"):
    lines += format_runs_table(results["omniglot_runs"])
  return "\n".join(lines)
