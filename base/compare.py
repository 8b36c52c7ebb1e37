"""One command that runs several methods through one harness, into one table.

``python launch.py --config=configs/compare.py --workdir=runs/compare``
meta-trains every method in ``config.compare.methods`` on the experiment's
meta-training tasks (each into ``workdir/<method>/``), then scores each on
the very same meta-test episodes (same seed) for every protocol, and
optionally on the 20 official Omniglot one-shot runs. It writes
``compare.json`` and ``compare.md``: method, protocol, accuracy ± 95% CI,
meta-training (search) time, adaptation time per task and parameters.

All methods share the config's ``data`` and ``supernet`` sections, so they
search the same space on the same tasks; each reads its own hyper-parameters
from the section named like it (``config.metanas``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from base import methods as methods_lib
from base import compiled_programs, reports
from base.data import EpisodeSampler, load_omniglot_runs
from base.errors import ConfigError
from base.evaluation import (format_rows_table, format_runs_table,
                             parse_protocol, score_runs)
from base.methods.api import score_learner

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"


@dataclasses.dataclass(frozen=True)
class CompareConfig:
  """Which methods to compare and whether to meta-train them first.

  Attributes:
    methods: names from ``base.methods.METHOD_MODULES``.
    meta_train: meta-train each method into ``workdir/<method>`` first;
      ``False`` scores what earlier runs saved there.
  """
  methods: tuple[str, ...] = tuple(methods_lib.METHOD_MODULES)
  meta_train: bool = True

  def __post_init__(self):
    if not self.methods:
      raise ConfigError("compare.methods is empty")
    for name in self.methods:
      methods_lib.get_method(name)  # unknown names fail here, by name
    if len(set(self.methods)) != len(self.methods):
      raise ConfigError(f"compare.methods lists a method twice: "
                        f"{list(self.methods)}")


def compare(config: Any, workdir: str, experiment: Any = None,
            progress: bool = True) -> dict[str, Any]:
  """Meta-trains (optionally) and scores every method; writes the table."""
  from base import config_utils, train
  exp = experiment or train.build_experiment(config)
  cfg = config_utils.dataclass_from_config(CompareConfig,
                                           config.get("compare"), "compare")
  return run_methods(exp, cfg.methods, workdir, meta_train=cfg.meta_train,
                     progress=progress)


def run_methods(exp: Any, names: tuple[str, ...], workdir: str, *,
                meta_train: bool, progress: bool = True,
                output_name: str = "compare",
                subdirectories: bool = True) -> dict[str, Any]:
  """Meta-trains (if asked) and scores ``names`` on the same episodes.

  Each method's artifact lives in ``workdir/<name>`` (``subdirectories``)
  or in ``workdir`` itself (one method, ``config.method``'s own run).
  """
  from base import train
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  ev = exp.evaluate
  protocols = ev.protocols or (f"{exp.test_family.num_ways}-way "
                               f"{exp.test_family.num_shots}-shot",)
  seed = int(exp.config.seed)
  rows, runs, training = [], {}, {}
  for name in names:
    method = methods_lib.get_method(name)
    cfg = train.method_config(name, exp.config)
    method_dir = os.path.join(workdir, name) if subdirectories else workdir
    if meta_train:
      print(f"[{name}] meta-training into {method_dir}")
      training[name] = meta_train_method(method, exp, cfg, method_dir,
                                         seed=seed, progress=progress)
    else:
      training[name] = saved_summary(method_dir, name, workdir, output_name)
    learner = method.load_learner(exp, cfg, method_dir)
    for protocol in protocols:
      ways, shots = parse_protocol(protocol)
      family = EpisodeSampler(exp.test_family.data, ways, shots,
                              exp.test_family.num_queries,
                              name=f"meta-test {protocol}")
      compiled_programs.release_if_near_limit()
      row = score_learner(learner.restrict_ways(ways), family,
                          episodes=ev.episodes, seed=ev.seed,
                          desc=f"{protocol}: {name}" if progress else None)
      row.update(method=method.title, method_key=name, protocol=protocol,
                 meta_train_seconds=training[name].get("seconds"))
      rows.append(row)
      print(f"[{name}] {protocol}: {row['query_accuracy']:.3f} ± "
            f"{row['ci95']:.3f}")
    if ev.omniglot_runs:
      runs[method.title] = score_learner_on_runs(learner, exp, ev.runs_path,
                                                 seed=ev.seed)
  results = {"rows": rows, "omniglot_runs": runs, "meta_training": training,
             "episodes": ev.episodes, "seed": ev.seed,
             "meta_test_classes": exp.test_family.data.num_classes,
             "queries_per_class": exp.test_family.num_queries}
  reports.write_report(workdir, output_name, results,
                       format_comparison(results), json_default=_json_default)
  return results


def score_learner_on_runs(learner: Any, exp: Any, runs_path: str = "", *,
                          seed: int = 0) -> dict[str, Any]:
  """Error rate of a learner on the 20 official Omniglot one-shot runs."""
  runs = load_omniglot_runs(runs_path or None,
                            image_size=exp.train_family.image_shape[0])
  learner = learner.restrict_ways(runs.support_x.shape[1])

  def classify(support_x, support_y, query_x):
    return learner.adapt_and_predict(support_x, support_y, query_x,
                                     seed=seed).query_predictions

  return score_runs(runs, classify)


def summary_path(method_dir: str, name: str) -> str:
  """Where :func:`meta_train_method` records a method's training summary."""
  return os.path.join(method_dir, f"{name}_meta_train.json")


def meta_train_method(method: Any, exp: Any, cfg: Any, method_dir: str, *,
                      seed: int, progress: bool = True) -> dict[str, Any]:
  """``method.meta_train`` with its summary (wall time, steps...) recorded
  beside the artifact, so that scoring in a later process (``mode=evaluate``
  after ``mode=meta_train``) still reports the meta-training time."""
  summary = method.meta_train(exp, cfg, method_dir, seed=seed,
                              progress=progress)
  os.makedirs(method_dir, exist_ok=True)
  with open(summary_path(method_dir, method.name), "w") as f:
    json.dump(summary, f, indent=2, default=_json_default)
  return summary


def saved_summary(method_dir: str, name: str, workdir: str,
                  output_name: str) -> dict:
  """Meta-training summary of an earlier run: the one recorded beside the
  artifact, else the one in an earlier report of ``workdir``; {} if none."""
  recorded = summary_path(method_dir, name)
  if os.path.exists(recorded):
    with open(recorded) as f:
      return json.load(f)
  report = os.path.join(workdir, f"{output_name}.json")
  if os.path.exists(report):
    with open(report) as f:
      return json.load(f).get("meta_training", {}).get(name, {})
  return {}


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.floating, np.integer, np.ndarray)):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_comparison(results: dict[str, Any]) -> str:
  """The Markdown table of :func:`run_methods`' results."""
  lines = [f"{results['episodes']} meta-test episodes per protocol (seed "
           f"{results['seed']}, the same for every method) over "
           f"{results['meta_test_classes']} held-out classes.", ""]
  lines += format_rows_table(results["rows"])
  if results.get("omniglot_runs"):
    lines += format_runs_table(results["omniglot_runs"])
  return "\n".join(lines)
