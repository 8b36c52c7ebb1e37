"""Long runs survive being killed, stop cleanly on NaNs, refuse bad workdirs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import base
from base import train
from tests.conftest import REPO_ROOT, PoisonedFamily, tiny_config

CONFIG_FILE = '''
from tests.conftest import tiny_config

def get_config():
  config = tiny_config(num_steps=8, checkpoint_every=2, log_every=2)
  config.temperature.steps = 8
  config.mode = "meta_train"
  return config
'''


def _kill_config():
  config = tiny_config(num_steps=8, checkpoint_every=2, log_every=2)
  config.temperature.steps = 8
  config.mode = "meta_train"
  return config


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
  config_path = tmp_path / "kill_config.py"
  config_path.write_text(CONFIG_FILE)
  workdir = tmp_path / "killed"
  command = [sys.executable, str(REPO_ROOT / "launch.py"),
             f"--config={config_path}", f"--workdir={workdir}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 400
  while not (workdir / "checkpoints" / "4").exists():
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert not (workdir / "prior.msgpack").exists(), "killed before the end"

  resumed = subprocess.run(command, cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=400)
  assert resumed.returncode == 0, resumed.stderr
  straight = train.meta_train(_kill_config(), str(tmp_path / "straight"),
                              progress=False)
  killed_prior = base.load_prior(workdir / "prior.msgpack")
  for a, b in zip(jax.tree.leaves(killed_prior),
                  jax.tree.leaves(straight.prior)):
    np.testing.assert_array_equal(a, b)  # bit-exact on CPU
  steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")]
  assert steps == [2, 4, 6, 8]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(num_steps=8, checkpoint_every=2, log_every=4)
  experiment = train.build_experiment(config)
  experiment = experiment._replace(
      train_family=PoisonedFamily(
          experiment.train_family,
          healthy_tasks=5 * experiment.train.meta_batch_size))
  (tmp_path / "prior.msgpack").write_bytes(b"an earlier result")
  with pytest.raises(train.NonFiniteLossError,
                     match=r"step 6 .*checkpoint \(step 4\)"):
    train.meta_train(config, str(tmp_path), experiment=experiment,
                     progress=False)
  checkpointer = base.checkpoints.MetaCheckpointer(str(tmp_path))
  assert checkpointer.latest_step() == 4
  checkpointer.close()
  assert (tmp_path / "prior.msgpack").read_bytes() == b"an earlier result"


def test_unwritable_workdir_is_refused_at_start(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(base.ConfigError, match="not writable"):
    train.meta_train(tiny_config(), str(blocker / "run"), progress=False)


def test_chunked_run_with_stop_at_step_matches_one_run(tmp_path, capsys):
  """Two chunks (stop at 2, then run on to 4) give one run's prior, and the
  chunk's prior records its step, the run's length and the temperature it
  had reached on the run's schedule; the chunk's progress bar counts to 2."""
  workdir = str(tmp_path / "chunked")
  first = train.meta_train(tiny_config(num_steps=4, stop_at_step=2), workdir,
                           progress=True)
  assert int(first.step) == 2
  bar = capsys.readouterr().err
  assert "meta-train (stops at step 2 of 4)" in bar and "2/2" in bar, bar
  _, metadata = base.load_prior(os.path.join(workdir, "prior.msgpack"),
                                return_metadata=True)
  experiment = train.build_experiment(tiny_config(num_steps=4))
  assert (metadata["step"], metadata["num_steps"]) == (2, 4)
  assert metadata["temperature"] == pytest.approx(
      float(experiment.schedule(2)))
  assert metadata["temperature"] > experiment.final_temperature
  config = tiny_config(num_steps=4, stop_at_step=2)
  config.evaluate.update(episodes=2, baselines=False)
  results = train.evaluate(config, workdir)
  assert (results["prior_step"], results["prior_num_steps"]) == (2, 4)
  # The chunk's prior adapts at the temperature it reached, not the run's
  # final one (that is only the fallback for a prior saved without it).
  assert results["temperature"] == pytest.approx(metadata["temperature"])
  assert experiment.prior_temperature(metadata) == pytest.approx(
      metadata["temperature"])
  assert experiment.prior_temperature({}) == experiment.final_temperature
  assert "meta-step 2 of 4" in open(os.path.join(workdir, "results.md")).read()
  # Meta-training seconds: the chunk's, recorded at its last step, in the
  # prior and in the evaluation's row.
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  records = [json.loads(l) for l in open(metrics_path)]
  assert records[-1]["step"] == 2 and records[-1]["seconds"] > 0
  assert metadata["meta_train_seconds"] == records[-1]["seconds"]
  assert [r["meta_train_seconds"] for r in results["rows"]] == [
      records[-1]["seconds"]]
  # The resumed run adds its seconds to those recorded at the checkpoint
  # (here made 1000 s, as if the first chunk had run long).
  records[-1]["seconds"] = 1000.0
  with open(metrics_path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  clock = time.perf_counter()
  resumed = train.meta_train(tiny_config(num_steps=4), workdir,
                             progress=False)
  resume_seconds = time.perf_counter() - clock
  final = [json.loads(l) for l in open(metrics_path)][-1]
  assert final["step"] == 4
  assert 1000.0 < final["seconds"] <= 1000.0 + resume_seconds
  straight = train.meta_train(tiny_config(num_steps=4),
                              str(tmp_path / "straight"), progress=False)
  assert int(resumed.step) == 4
  for a, b in zip(jax.tree.leaves(resumed.prior),
                  jax.tree.leaves(straight.prior)):
    np.testing.assert_array_equal(a, b)
  _, metadata = base.load_prior(os.path.join(workdir, "prior.msgpack"),
                                return_metadata=True)
  assert metadata["temperature"] == pytest.approx(experiment.final_temperature)
  assert metadata["meta_train_seconds"] == final["seconds"]


@pytest.mark.parametrize("stop_at_step", [-1, 5])
def test_stop_at_step_outside_the_run_is_refused(stop_at_step):
  with pytest.raises(base.ConfigError, match="train.stop_at_step"):
    train.build_experiment(tiny_config(num_steps=4,
                                       stop_at_step=stop_at_step))


def test_compilation_cache_is_locked_for_concurrent_processes(tmp_path):
  """The on-disk XLA cache is shared by concurrent processes (two
  launches); JAX locks it only with a size limit set, and unlocked a
  process can read an entry another is still writing."""
  cache = tmp_path / "xla"
  script = (
      "import jax, jax.numpy as jnp\n"
      "from base import cli\n"
      "cli.enable_compilation_cache()\n"
      "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
      "print(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).sum())\n")
  env = dict(os.environ, BASE_COMPILATION_CACHE=str(cache))
  for _ in range(2):  # a miss that writes, then a hit that reads
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
  assert (cache / ".lockfile").exists()
  assert any(path.name.endswith("-cache") for path in cache.iterdir()), (
      sorted(path.name for path in cache.iterdir()))


def test_cache_entries_without_access_times_get_them(tmp_path):
  """Entries cached without a size limit have no access-time file, and
  with one JAX then fails every later store; enabling the cache adds them."""
  from base import cli
  cache = tmp_path / "xla"
  cache.mkdir()
  (cache / "jit_old-abc-cache").write_bytes(b"executable")
  (cache / "jit_new-def-cache").write_bytes(b"executable")
  (cache / "jit_new-def-atime").write_bytes((7).to_bytes(8, "little"))
  assert cli.complete_cache_access_times(str(cache)) == 1
  stamp = int.from_bytes((cache / "jit_old-abc-atime").read_bytes(), "little")
  assert stamp == (cache / "jit_old-abc-cache").stat().st_mtime_ns
  assert (cache / "jit_new-def-atime").read_bytes() == (7).to_bytes(8, "little")
  assert cli.complete_cache_access_times(str(cache)) == 0
  # JAX's own store now succeeds where it raised before.
  from jax._src import lru_cache  # pylint: disable=g-import-not-at-top
  store = lru_cache.LRUCache(str(cache), max_size=1 << 20)
  store.put("jit_fresh-123", b"program")
  assert (cache / "jit_fresh-123-cache").read_bytes() == b"program"
