"""Evaluation protocols: the 20-run scorer, intervals, protocols, ways."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from base import prior as prior_lib
from base import reports
from base.data import Episode
from base.errors import ConfigError
from base.evaluation import confidence_interval, parse_protocol, score_runs
from base.supernet import apply_supernet
from tests.conftest import tiny_spec


def _nearest_neighbour(support_x, support_y, query_x):
  d = ((query_x[:, None] - support_x[None]) ** 2).reshape(
      len(query_x), len(support_x), -1).sum(-1)
  return support_y[np.argmin(d, axis=1)]


def test_run_scorer_on_hand_built_runs_with_known_answer():
  """Two 4-way runs; test items are noisy copies, two of them mislabelled."""
  rng = np.random.default_rng(0)
  runs = []
  for _ in range(2):
    support = rng.random((4, 6, 6, 1))
    order = rng.permutation(4)
    query = support[order] + 0.01 * rng.random((4, 6, 6, 1))
    runs.append((support, np.arange(4), query, order.copy()))
  # Run 2: the true class of items 0 and 1 swapped -> 2 known errors for NN.
  runs[1][3][[0, 1]] = runs[1][3][[1, 0]]
  episode = Episode(*(np.stack(parts) for parts in zip(*runs)))
  result = score_runs(episode, _nearest_neighbour)
  assert result == {"error_rate": 2 / 8, "errors": 2, "items": 8, "runs": 2,
                    "errors_per_run": [0, 2]}
  with pytest.raises(ValueError, match="shape"):
    score_runs(episode, lambda sx, sy, qx: np.zeros(3))


def test_confidence_interval():
  values = np.array([0.0, 1.0] * 50)
  mean, half_width = confidence_interval(values)
  assert mean == 0.5
  assert half_width == pytest.approx(1.96 * np.std(values, ddof=1) / 10)
  assert np.isnan(confidence_interval([0.7])[1])


def test_parse_protocol():
  assert parse_protocol("20-way 1-shot") == (20, 1)
  assert parse_protocol(" 5-way  5-shot ") == (5, 5)
  for bad in ("20 way 1 shot", "1-way 1-shot", "5-way 0-shot"):
    with pytest.raises(ConfigError):
      parse_protocol(bad)


def test_restrict_ways_keeps_the_first_output_units():
  prior = prior_lib.init_prior(tiny_spec(num_classes=6), jax.random.key(0))
  small = prior_lib.restrict_ways(prior, 3)
  assert small.spec.num_classes == 3
  prior_lib.check_fits_spec(small)
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
  arch = prior.arch_probs
  full = apply_supernet(prior.spec, prior.weight_mean, arch, x)
  part = apply_supernet(small.spec, small.weight_mean, arch, x)
  np.testing.assert_allclose(part, full[:, :3], rtol=1e-6)
  with pytest.raises(ConfigError, match="cannot serve 7-way"):
    prior_lib.restrict_ways(prior, 7)


def test_for_ways_scales_the_classifier_rate_with_the_ways():
  """A 6-way prior adapting to 3-way tasks: the classifier is cut and its
  inner rate halves (the mean NLL gives each class row 1/N' of the
  gradient, so unscaled steps on those rows would double), while the body
  and the logits keep theirs; BASE's learner (evaluation, comparison) goes
  through it."""
  import jax.numpy as jnp
  from base.adaptation import AdaptConfig, for_ways, inner_update
  from base.methods.base_method import BaseLearner
  prior = prior_lib.init_prior(tiny_spec(num_classes=6), jax.random.key(0))
  cfg = AdaptConfig(lr_weights=1.0, lr_arch=2.0, lr_log_std=0.1)
  small, small_cfg = for_ways(prior, cfg, 3)
  assert small.spec.num_classes == 3
  assert small_cfg == dataclasses.replace(cfg, classifier_rate_scale=0.5)
  assert for_ways(prior, cfg, 6) == (prior, cfg)
  fixed = AdaptConfig(lr_weights=1.0, scale_rates_with_ways=False)
  assert for_ways(prior, fixed, 3)[1] == fixed
  # One step with unit gradients: the classifier moves half as far.
  ones = jax.tree.map(jnp.ones_like, small)
  moved = {}
  for c in (cfg, small_cfg):
    q = inner_update(small, ones, c)
    moved[c] = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                            small.to_dict(), q.to_dict())
  full, half = moved[cfg], moved[small_cfg]
  for part in ("weight_mean", "weight_log_std"):
    assert half[part]["classifier"]["kernel"] == pytest.approx(
        full[part]["classifier"]["kernel"] / 2, rel=1e-4)
    assert half[part]["stem"] == full[part]["stem"]
  assert half["arch_logits"] == full["arch_logits"]
  learner = BaseLearner(prior, cfg, temperature=0.5, steps=2).restrict_ways(3)
  assert learner.prior.spec.num_classes == 3
  assert learner.adapt_config == small_cfg
  with pytest.raises(ConfigError, match="cannot serve 7-way"):
    for_ways(prior, cfg, 7)
  with pytest.raises(ConfigError, match="classifier_rate_scale"):
    AdaptConfig(classifier_rate_scale=-1.0)


def test_reports_keep_the_earlier_pair_under_a_time_stamp(tmp_path):
  assert reports.write_report(str(tmp_path), "results", {"run": 1},
                              "first") is None
  os.utime(tmp_path / "results.json", (0, 86400))  # 1970-01-02 UTC
  kept = reports.write_report(str(tmp_path), "results", {"run": 2}, "second")
  assert kept == str(tmp_path / "results.19700102T000000.json")
  assert json.load(open(kept)) == {"run": 1}
  assert (tmp_path / "results.19700102T000000.md").read_text() == "first\n"
  assert json.load(open(tmp_path / "results.json")) == {"run": 2}
  # Another report from the same second gets its own name.
  os.utime(tmp_path / "results.json", (0, 86400))
  kept = reports.write_report(str(tmp_path), "results", {"run": 3}, "third")
  assert kept.endswith("results.19700102T000000-2.json")
  assert json.load(open(kept)) == {"run": 2}
  assert (tmp_path / "results.md").read_text() == "third\n"
