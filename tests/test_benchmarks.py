"""The benchmark script runs on CPU in a tiny configuration (a smoke test)."""

import json

import pytest

from benchmarks import meta_step


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
