"""Evaluation protocols: confidence intervals, N-way K-shot sweeps, the 20 runs.

Everything here is model-agnostic where it can be: the Omniglot 20-run
benchmark is scored through a ``classify(support_x, support_y, query_x)``
function, so the scorer is tested on its own with a hand-built run.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import numpy as np
import tqdm

from base.errors import ConfigError

Classifier = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def confidence_interval(values: Any, z: float = 1.96) -> tuple[float, float]:
  """Mean and half-width of the normal-approximation 95% interval."""
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return float(values.mean()), float("nan")
  return (float(values.mean()),
          float(z * values.std(ddof=1) / np.sqrt(values.size)))


class EpisodeScore(NamedTuple):
  """What one method achieved on one episode."""
  query_accuracy: float
  support_accuracy: float
  seconds: float  # wall time of the adaptation alone
  # Mean per-edge total variation between the architecture distribution
  # before and after adaptation (base.prior.arch_shift); None for methods
  # without one.
  arch_shift: float | None = None


def score_episodes(family: Any, score_one: Callable[[Any, int], EpisodeScore],
                   *, episodes: int, seed: int,
                   desc: str | None = None) -> dict[str, Any]:
  """Scores a method on ``episodes`` episodes of ``family``; mean ± 95% CI.

  Episode ``i`` is the ``i``-th ``family.sample(rng)`` of
  ``rng = np.random.default_rng(seed)``, so every method scored with the same
  seed sees the very same episodes. ``score_one(episode, i)`` adapts to one
  episode and scores it; ``desc`` shows a progress bar with that label.
  ``seconds_per_task`` is a median, which leaves out a first call's
  compilation. ``arch_shift`` (the mean over episodes) is there when every
  score has one.
  """
  rng = np.random.default_rng(seed)
  scores = [score_one(family.sample(rng), index)
            for index in tqdm.trange(episodes, desc=desc, disable=desc is None,
                                     leave=False, dynamic_ncols=True)]
  mean, half_width = confidence_interval([s.query_accuracy for s in scores])
  row = {"query_accuracy": mean, "ci95": half_width,
         "support_accuracy": float(np.mean([s.support_accuracy
                                            for s in scores])),
         "episodes": episodes,
         "seconds_per_task": float(np.median([s.seconds for s in scores]))}
  shifts = [s.arch_shift for s in scores]
  if all(shift is not None for shift in shifts):
    row["arch_shift"] = float(np.mean(shifts))
  return row


_PROTOCOL = re.compile(r"^\s*(\d+)-way\s+(\d+)-shot\s*$")


def parse_protocol(text: str) -> tuple[int, int]:
  """``"20-way 1-shot"`` -> ``(20, 1)``."""
  match = _PROTOCOL.match(text)
  if not match:
    raise ConfigError(f"cannot read protocol {text!r}; write it like "
                      f"'20-way 1-shot'")
  ways, shots = int(match.group(1)), int(match.group(2))
  if ways < 2 or shots < 1:
    raise ConfigError(f"protocol {text!r} needs >= 2 ways and >= 1 shot")
  return ways, shots


def score_runs(runs: Any, classify: Classifier) -> dict[str, Any]:
  """Scores the Omniglot one-shot runs exactly as the benchmark does.

  Each test item of a run is classified among that run's training images
  (one per class); the score is the error rate over all test items
  (400 for the 20 official runs).

  Args:
    runs: an ``Episode`` with a leading run axis (``base.data.
      load_omniglot_runs``): support ``[R, N, H, W, C]`` with labels
      ``[R, N]``, queries ``[R, M, H, W, C]`` with labels ``[R, M]``.
    classify: ``(support_x, support_y, query_x) -> predicted labels [M]``.
  """
  per_run = []
  for r in range(runs.support_x.shape[0]):
    predicted = np.asarray(classify(runs.support_x[r], runs.support_y[r],
                                    runs.query_x[r]))
    if predicted.shape != runs.query_y[r].shape:
      raise ValueError(f"classify returned shape {predicted.shape} for "
                       f"{runs.query_y[r].shape[0]} test items")
    per_run.append(int(np.sum(predicted != runs.query_y[r])))
  items = int(np.prod(runs.query_y.shape))
  return {"error_rate": sum(per_run) / items, "errors": sum(per_run),
          "items": items, "runs": len(per_run), "errors_per_run": per_run}


def format_rows_table(rows: list[dict[str, Any]]) -> list[str]:
  """Markdown lines of scored rows: one per method and protocol.

  Columns: accuracy ± 95% CI, meta-training seconds (``–`` when unknown),
  adaptation seconds per task, the architecture shift (only when some row
  has one: methods that adapt an architecture distribution) and parameters.
  """
  with_shift = any("arch_shift" in row for row in rows)
  shift_head = (" arch shift |", " --- |") if with_shift else ("", "")
  lines = ["| method | protocol | query accuracy | 95% CI | meta-train s | "
           f"adapt s/task |{shift_head[0]} parameters |",
           f"| --- | --- | --- | --- | --- | --- |{shift_head[1]} --- |"]
  for row in rows:
    cells = [row["method"], row["protocol"], f"{row['query_accuracy']:.3f}",
             f"± {row['ci95']:.3f}",
             _optional(row.get("meta_train_seconds"), ".0f"),
             f"{row['seconds_per_task']:.3f}"]
    if with_shift:
      cells.append(_optional(row.get("arch_shift"), ".4f"))
    cells.append(str(row["parameters"]))
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _optional(value: float | None, spec: str) -> str:
  return "–" if value is None else format(value, spec)


def format_runs_table(runs: dict[str, Any]) -> list[str]:
  """Markdown lines of the 20-run error rates, one row per method."""
  lines = ["", "Omniglot 20 one-shot runs (20-way, within alphabet):", "",
           "| method | error rate | errors / items |", "| --- | --- | --- |"]
  for name, run in runs.items():
    lines.append(f"| {name} | {100 * run['error_rate']:.1f}% | "
                 f"{run['errors']} / {run['items']} |")
  return lines
