"""The benchmark script runs on CPU in a tiny configuration (a smoke test)."""

import json

from benchmarks import meta_step


def test_meta_step_benchmark_writes_a_table_and_json(tmp_path, capsys):
  out = tmp_path / "tiny.json"
  report = meta_step.main(["--preset=tiny", "--steps=1", "--modes=loop",
                           f"--out={out}"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  rows = {r["row"]: r for r in report["rows"]}
  assert set(rows) == {"meta-step, loop", "adapt to a new task (2 steps)"}
  assert rows["meta-step, loop"]["step_s"] > 0
  assert report["matmul_gflops_per_s"] > 0
  printed = capsys.readouterr().out
  assert "| meta-step, loop |" in printed
