"""End to end on digits: meta-train, evaluate, resume, and bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import base
from base import train
from tests.conftest import REPO_ROOT, tiny_config


def _same_trees(a, b):
  return all(np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_meta_training_beats_the_unadapted_random_init(tmp_path):
  config = tiny_config(num_steps=200, meta_batch_size=4, log_every=20,
                       checkpoint_every=100)
  config.evaluate.episodes = 60
  train.meta_train(config, str(tmp_path), progress=False)
  assert (tmp_path / "prior.msgpack").exists()
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == list(range(20, 201, 20))
  results = train.evaluate(config, str(tmp_path))
  rows = results["methods"]
  ours = rows["base (meta-learned prior, adapted)"]
  baseline = rows["random init, not adapted"]
  assert ours["query_accuracy"] > baseline["query_accuracy"] + max(
      0.05, ours["ci95"]), train.format_results(results)
  assert json.load(open(tmp_path / "results.json"))["methods"] == rows
  # How far adaptation moved the architecture: not at all without steps.
  assert rows["meta-learned prior, not adapted"]["arch_shift"] == 0.0
  assert 0.0 < ours["arch_shift"] < 1.0
  assert "| arch shift |" in open(tmp_path / "results.md").read()
  # Meta-training time: the prior's for its rows, none for a random init.
  assert {name: row["meta_train_seconds"] for name, row in rows.items()} == {
      "base (meta-learned prior, adapted)": records[-1]["seconds"],
      "meta-learned prior, not adapted": records[-1]["seconds"],
      "random init, adapted (same budget)": 0.0,
      "random init, not adapted": 0.0}
  # Evaluating again (other episodes, say) keeps the earlier report.
  config.evaluate.episodes = 4
  train.evaluate(config, str(tmp_path))
  again = json.load(open(tmp_path / "results.json"))["methods"]
  assert again["base (meta-learned prior, adapted)"]["episodes"] == 4
  kept = sorted(tmp_path.glob("results.*.json"))
  assert len(kept) == 1 and json.load(open(kept[0]))["methods"] == rows
  assert kept[0].with_suffix(".md").read_text().count("| base (") == 1
  genotype = base.Genotype.from_dict(results["example_genotype"])
  assert genotype.num_nodes == config.supernet.num_nodes
  # The saved prior says how meta-training adapted: adapt(**settings) does so.
  _, metadata = base.load_prior(tmp_path / "prior.msgpack",
                                return_metadata=True)
  settings = base.saved_adaptation_settings(metadata)
  assert settings == {"config": train.build_experiment(config).adapt,
                      "steps": config.adapt.steps,
                      "temperature": results["temperature"]}
  newer = {"adapt": {**metadata["adapt"], "a_later_field": 1}}
  assert base.saved_adaptation_settings(newer)["config"] == settings["config"]
  assert base.saved_adaptation_settings({}) == {}


def test_resume_continues_from_the_saved_step(tmp_path):
  def config(num_steps):
    c = tiny_config(num_steps=num_steps, checkpoint_every=2)
    c.temperature.steps = 8  # the schedule must not depend on num_steps
    return c

  straight = train.meta_train(config(6), str(tmp_path / "straight"),
                              progress=False)
  interrupted = str(tmp_path / "interrupted")
  first = train.meta_train(config(4), interrupted, progress=False)
  assert int(first.step) == 4
  resumed = train.meta_train(config(6), interrupted, progress=False)
  assert int(resumed.step) == 6
  assert _same_trees(resumed.prior, straight.prior), "resume is bit-exact"
  steps = [json.loads(l)["step"] for l in open(f"{interrupted}/metrics.jsonl")]
  assert steps == [2, 4, 6]


def test_adapt_returns_posterior_genotype_and_metrics(tmp_path):
  config = tiny_config()
  experiment = train.build_experiment(config)
  prior = base.init_prior(experiment.spec, jax.random.key(0), 0.05)
  episode = experiment.test_family.sample(np.random.default_rng(0))
  result = base.adapt(prior, episode.support_x, episode.support_y,
                      episode.query_x, episode.query_y,
                      config=experiment.adapt)
  assert 0 <= result.support_accuracy <= 1 and 0 <= result.query_accuracy <= 1
  assert result.edge_entropy["normal"].shape == (experiment.spec.num_edges,)
  assert np.all(result.edge_entropy["normal"] <= np.log(4) + 1e-5)
  assert isinstance(result.genotype, base.Genotype)
  assert not _same_trees(result.posterior.arch_logits, prior.arch_logits)
  with pytest.raises(base.ConfigError, match="support images must be"):
    base.adapt(prior, episode.support_x[..., 0], episode.support_y)
  with pytest.raises(base.ConfigError, match="labels must lie in"):
    base.adapt(prior, episode.support_x, episode.support_y + 5)


def test_a_saved_adaptation_predicts_new_images_as_the_adaptation_did(
    tmp_path):
  """Single path, noise per task: predictions after save/load run the path
  the task trained (the adaptation's own samples), not fresh ones."""
  experiment = train.build_experiment(tiny_config())
  prior = base.init_prior(experiment.spec, jax.random.key(0), 0.05)
  episode = experiment.test_family.sample(np.random.default_rng(1))
  cfg = base.AdaptConfig(steps=2, single_path=True, genotype_rule="argmax")
  assert cfg.noise_per_task
  result = base.adapt(prior, episode.support_x, episode.support_y,
                      episode.query_x, episode.query_y, config=cfg,
                      temperature=0.7, seed=3)
  probs = result.predict_proba(episode.query_x)
  assert probs.shape == (len(episode.query_y), experiment.spec.num_classes)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(result.predict(episode.query_x),
                                result.query_predictions)
  path = tmp_path / "posterior.msgpack"
  result.save(path, metadata={"note": "task 1"})
  loaded = base.load_adaptation(path)
  np.testing.assert_array_equal(loaded.predict_proba(episode.query_x), probs)
  assert (loaded.config, loaded.temperature, loaded.seed, loaded.steps) == (
      cfg, 0.7, 3, 2)
  assert result.genotype == base.derive_genotype(
      result.posterior.arch_logits, experiment.spec.primitives,
      experiment.spec.num_nodes, rule="argmax")
  assert loaded.genotype == result.genotype  # derived again, by its rule
  assert loaded.query_accuracy == result.query_accuracy
  plain, metadata = base.load_prior(path, return_metadata=True)
  assert _same_trees(plain.to_dict(), result.posterior.to_dict())
  assert metadata["note"] == "task 1"
  # Another seed's samples run other paths: the seed is what keeps them.
  other = dataclasses.replace(loaded, seed=4)
  assert not np.allclose(other.predict_proba(episode.query_x), probs,
                         atol=1e-3)
  with pytest.raises(base.ConfigError, match="images must be"):
    loaded.predict(episode.query_x[..., 0])
  base.save_prior(tmp_path / "prior.msgpack", prior)
  with pytest.raises(base.CheckpointError, match="holds a prior"):
    base.load_adaptation(tmp_path / "prior.msgpack")
  base.save_prior(tmp_path / "bad.msgpack", prior,
                  metadata={"adaptation": {"config": {"stepz": 1}}})
  with pytest.raises(base.CheckpointError, match="malformed adaptation"):
    base.load_adaptation(tmp_path / "bad.msgpack")


def _launch(*args, cwd=REPO_ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), *args],
                        capture_output=True, text=True, cwd=cwd, env=env,
                        timeout=300)


def _assert_one_line_error(result, *fragments):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  for fragment in fragments:
    assert fragment in last, last


def test_adapt_mode_writes_a_loadable_posterior_and_keeps_earlier_ones(
    tmp_path, capsys):
  from base import cli
  config = tiny_config(num_steps=2)
  config.mode = "meta_train,adapt"
  cli.run(config, str(tmp_path))
  assert "adapted to a new 3-way task" in capsys.readouterr().out
  for name in cli.ADAPT_FILES:
    assert (tmp_path / name).stat().st_size > 0, name
  first = base.load_adaptation(tmp_path / "posterior.msgpack")
  saved = json.loads((tmp_path / "adapted_genotype.json").read_text())
  assert base.Genotype.from_dict(saved) == first.genotype
  first_bytes = (tmp_path / "posterior.msgpack").read_bytes()
  os.utime(tmp_path / "adapted_genotype.json", (0, 86400))  # 1970-01-02 UTC
  config.mode = "adapt"
  config.adapt.lr_arch = 50.0  # another adaptation of the same prior
  cli.run(config, str(tmp_path))
  assert "kept as *.19700102T000000.*" in capsys.readouterr().out
  for name in cli.ADAPT_FILES:
    stem, ext = os.path.splitext(name)
    assert (tmp_path / f"{stem}.19700102T000000{ext}").exists(), name
  assert (tmp_path / "posterior.19700102T000000.msgpack").read_bytes() == (
      first_bytes)
  second = base.load_adaptation(tmp_path / "posterior.msgpack")
  assert second.config.lr_arch == 50.0 and first.config.lr_arch != 50.0


def test_launch_reports_bad_input_in_one_line(tmp_path):
  quickstart = "--config=configs/quickstart.py"
  workdir = f"--workdir={tmp_path / 'run'}"
  _assert_one_line_error(
      _launch(quickstart, "--config.train.num_step=3", workdir),
      "unknown config key", "train.num_step")
  _assert_one_line_error(_launch("--config=configs/missing.py"),
                         "config file not found")
  _assert_one_line_error(
      _launch(quickstart, "--config.data.source=image_folder",
              f"--config.data.path={tmp_path / 'nowhere'}", workdir),
      "does not exist", "nowhere")
  flat = tmp_path / "flat"  # images but no class subfolders
  flat.mkdir()
  for i in range(3):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / f"{i}.png")
  _assert_one_line_error(
      _launch(quickstart, "--config.data.source=image_folder",
              f"--config.data.path={flat}", workdir), str(flat))
  corrupt = tmp_path / "prior.msgpack"
  corrupt.write_bytes(b"\x00" * 64)
  _assert_one_line_error(
      _launch(quickstart, "--config.mode=evaluate",
              f"--config.prior_path={corrupt}", workdir),
      "corrupt", str(corrupt))
  assert corrupt.read_bytes() == b"\x00" * 64  # nothing overwritten


@pytest.mark.skipif(not (REPO_ROOT.parent / "shared" / "data" / "omniglot").exists(),
                    reason="needs ../shared/data/omniglot")
def test_omniglot_config_runs_end_to_end(tmp_path):
  from configs import omniglot
  config = omniglot.get_config()
  shrunk = tiny_config()
  config.supernet = shrunk.supernet
  config.adapt = shrunk.adapt
  config.train.update(num_steps=2, meta_batch_size=1, log_every=1,
                      checkpoint_every=2)
  config.evaluate.update(episodes=2, baselines=False, omniglot_runs=True,
                         protocols=("20-way 1-shot", "5-way 5-shot"))
  config.maml.update(enabled=True, hidden=4, num_steps=2, meta_batch_size=1)
  experiment = train.build_experiment(config)
  assert experiment.train_family.image_shape == (28, 28, 1)
  # 200 background characters x 4 rotations for meta-training, 42 held out.
  assert experiment.train_family.data.num_classes == 800
  assert experiment.test_family.data.num_classes == 42
  train.meta_train(config, str(tmp_path), experiment=experiment,
                   progress=False)
  from base import cli
  from base.methods import maml
  maml_file = tmp_path / train.MAML_FILENAME
  # BASE stopped early (train.stop_at_step): the baseline waits for the end.
  cli.meta_train_maml_baseline(experiment, 1, str(tmp_path), 0)
  assert not maml_file.exists()
  assert train.meta_train_maml(experiment, str(tmp_path), seed=0,
                               progress=False)
  # Trained once with this config and seed: a resumed run keeps the file.
  assert maml.is_trained(str(tmp_path), experiment.maml, 0)
  assert not maml.is_trained(str(tmp_path), experiment.maml, 1)
  written = maml_file.stat().st_mtime_ns
  cli.meta_train_maml_baseline(experiment, 2, str(tmp_path), 0)
  assert maml_file.stat().st_mtime_ns == written
  results = train.evaluate(config, str(tmp_path), experiment=experiment)
  assert [(r["method"], r["protocol"]) for r in results["rows"]] == [
      ("base (meta-learned prior, adapted)", "20-way 1-shot"),
      (train.MAML_METHOD, "20-way 1-shot"),
      ("base (meta-learned prior, adapted)", "5-way 5-shot"),
      (train.MAML_METHOD, "5-way 5-shot")]
  assert results["rows"][1]["parameters"] > 0
  # Both meta-trainings' wall times, each from its own file.
  assert results["rows"][0]["meta_train_seconds"] > 0
  assert results["rows"][1]["meta_train_seconds"] == maml.load_maml(
      maml_file)[1]["seconds"] > 0
  assert results["omniglot_runs"][train.MAML_METHOD]["items"] == 400
  for row in results["rows"]:
    assert 0.0 <= row["query_accuracy"] <= 1.0 and row["episodes"] == 2
  # The 20-way prior adapts to 5-way episodes, its classifier's rate x 5/20.
  assert [r.get("classifier_rate_scale") for r in results["rows"]] == [
      1.0, None, 0.25, None]
  runs = results["omniglot_runs"]["base (meta-learned prior, adapted)"]
  assert runs["items"] == 400 and runs["runs"] == 20
  assert 0 <= runs["errors"] <= 400
  table = (tmp_path / "results.md").read_text()
  assert "5-way 5-shot" in table and "error rate" in table


def _tensorboard_scalars(directory):
  """Reads scalar summaries from TFRecord-framed TensorBoard event files."""
  import struct
  from tensorboardX.proto import event_pb2
  scalars = {}
  for name in os.listdir(directory):
    data = open(os.path.join(directory, name), "rb").read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_metrics_are_written_for_tensorboard_too(tmp_path):
  train.meta_train(tiny_config(num_steps=4, log_every=2), str(tmp_path),
                   progress=False)
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  jsonl = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [s for s, _ in scalars["meta_train/meta_loss"]] == [2, 4]
  np.testing.assert_allclose([v for _, v in scalars["meta_train/meta_loss"]],
                             [r["meta_loss"] for r in jsonl], rtol=1e-6)
