"""The benchmark script runs on CPU in a tiny configuration (a smoke test)."""

import json

import pytest

from base.errors import ConfigError
from benchmarks import meta_step, op_costs, standalone_normalization


def test_meta_step_benchmark_writes_a_table_and_json(tmp_path, capsys):
  out = tmp_path / "tiny.json"
  # Soft rows only: the adaptation reuses the meta-step's compiled ELBO step.
  report = meta_step.main(["--preset=tiny", "--steps=1", "--single_path=0",
                           "--rows=default,adapt", f"--out={out}"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  keys = [r["key"] for r in report["rows"]]
  assert keys == ["default", "adapt"]
  for row in report["rows"]:
    assert row["step_s"] > 0 and row["tasks_per_s"] > 0
  assert "soft" in report["rows"][0]["row"]
  assert report["rows"][0]["gflops_per_s"] > 0  # the soft row has FLOPs
  assert report["matmul_gflops_per_s"] > 0 and report["peak_memory_mib"] > 0
  printed = capsys.readouterr().out
  assert "| meta-step [default]:" in printed


def test_meta_step_benchmark_rejects_unknown_rows():
  with pytest.raises(SystemExit):
    meta_step.main(["--preset=tiny", "--rows=warp_drive"])


def test_op_costs_benchmark_times_ops_and_layer_forms(tmp_path, capsys):
  out = tmp_path / "ops.json"
  report = op_costs.main(["--batch=2", "--size=6", "--channels=4",
                          "--strides=1", "--repeats=1",
                          "--ops=skip_connect,max_pool_3x3", f"--out={out}"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  assert [r["op"] for r in report["ops"]] == ["skip_connect", "max_pool_3x3"]
  forms = {(r["layer"], r["impl"]) for r in report["layers"]}
  assert ("dense conv 1x5", "patches") in forms
  assert ("max pool 3x3", "window") in forms
  assert all(r["forward_backward_ms"] > 0 for r in report["layers"])
  assert "| max_pool_3x3 | 1 |" in capsys.readouterr().out


def test_op_costs_benchmark_rejects_unknown_ops():
  with pytest.raises(ConfigError, match="conv_9x9"):
    op_costs.main(["--ops=conv_9x9"])


def test_standalone_normalization_benchmark_scores_each_way(tmp_path, capsys):
  out = tmp_path / "norm.json"
  report = standalone_normalization.main([
      "--epochs=1", "--channels=4", "--cells=2", "--single-images=8",
      f"--out={out}"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  rows = {(r["normalisation"], r["scored_in"]): r["accuracy"]
          for r in report["rows"]}
  assert len(rows) == 5 and all(0 <= a <= 1 for a in rows.values())
  assert rows[("population statistics", "batches of 500")] > 0.3
  assert "| batch statistics | one image at a time (8) |" in (
      capsys.readouterr().out)
