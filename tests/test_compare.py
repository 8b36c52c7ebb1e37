"""The comparison command: several methods, same episodes, one table."""

from __future__ import annotations

import json

import pytest

from base import cli, compare, train
from base.errors import ConfigError
from conftest import tiny_config


def _config(methods):
  config = tiny_config()
  config.maml.hidden = 8
  config.maml.num_steps = 4
  config.maml.meta_batch_size = 2
  config.evaluate.episodes = 5
  config.compare = dict(methods=methods, meta_train=True)
  return config


def test_compare_writes_one_table_for_all_methods(tmp_path):
  config = _config(("base", "maml"))
  config.mode = "compare"
  cli.run(config, str(tmp_path))
  results = json.loads((tmp_path / compare.COMPARE_JSON).read_text())
  assert [r["method_key"] for r in results["rows"]] == ["base", "maml"]
  for row in results["rows"]:
    assert row["episodes"] == 5 and row["protocol"] == "3-way 1-shot"
    assert 0.0 <= row["query_accuracy"] <= 1.0
    assert row["meta_train_seconds"] > 0 and row["parameters"] > 0
  assert (tmp_path / "base" / train.PRIOR_FILENAME).exists()
  table = (tmp_path / compare.COMPARE_MD).read_text()
  assert "| BASE (meta-learned prior, adapted) | 3-way 1-shot |" in table
  assert "MAML Conv-4" in table
  # Scoring again without meta-training reads what the first run saved.
  config.compare.meta_train = False
  again = compare.compare(config, str(tmp_path), progress=False)
  assert ([r["query_accuracy"] for r in again["rows"]]
          == [r["query_accuracy"] for r in results["rows"]])


def test_single_method_modes_through_launch(tmp_path, capsys):
  config = _config(("maml",))
  config.method = "maml"
  config.mode = "meta_train"
  cli.run(config, str(tmp_path))
  recorded = json.loads(
      (tmp_path / compare.summary_path("", "maml")).read_text())
  # Scored by a later process, the table still has the meta-training time.
  config.mode = "evaluate,adapt"
  cli.run(config, str(tmp_path))
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["rows"][0]["method_key"] == "maml"
  assert results["rows"][0]["meta_train_seconds"] == recorded["seconds"] > 0
  assert results["meta_training"]["maml"]["steps"] == 4
  assert "adapted to a new 3-way task" in capsys.readouterr().out


def test_compare_rejects_unknown_methods(tmp_path):
  config = _config(("base", "darts_from_scratch"))
  with pytest.raises(ConfigError, match="unknown method 'darts_from_scratch'"):
    compare.compare(config, str(tmp_path))
  config = _config(("maml", "maml"))
  with pytest.raises(ConfigError, match="twice"):
    compare.compare(config, str(tmp_path))


def test_transfer_is_refused_for_other_methods(tmp_path):
  config = _config(("maml",))
  config.method = "maml"
  config.mode = "transfer"
  with pytest.raises(ConfigError, match="transfer"):
    cli.run(config, str(tmp_path))
