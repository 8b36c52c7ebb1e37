"""Malformed input, tried on purpose, through the public entry points.

Every case must stop with a one-line message naming the problem (no bare
traceback) and leave earlier output in the workdir untouched.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import base
from base.genotype import Genotype
from tests.conftest import REPO_ROOT, tiny_spec

QUICKSTART = "--config=configs/quickstart.py"


def _image_folders(root):
  """Folders in bad layouts: flat, empty, with a corrupt image."""
  flat = root / "flat"
  flat.mkdir()
  for i in range(3):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / f"{i}.png")
  (root / "empty").mkdir()
  corrupt = root / "corrupt"
  for name in ("a", "b"):
    (corrupt / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((8, 8), 9 * i, np.uint8)).save(
          corrupt / name / f"{i}.png")
  (corrupt / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  return flat, root / "empty", corrupt / "b" / "2.png"


def _priors(root):
  """A corrupt prior file, and a valid prior for another search space."""
  corrupt = root / "corrupt.msgpack"
  corrupt.write_bytes(os.urandom(256))
  other = root / "other_space.msgpack"
  base.save_prior(other, base.init_prior(tiny_spec(num_classes=3),
                                         jax.random.key(0)))
  return corrupt, other


CASES = {
    "unknown nested key": (["--config.adapt.stepz=3"], ["adapt.stepz"]),
    "unknown top-level key": (["--config.optimizer=adam"], ["optimizer"]),
    "unknown mode": (["--config.mode=train"], ["mode", "train"]),
    "unknown method": (["--config.method=darts2"], ["method", "darts2"]),
    "unknown data source": (["--config.data.source=mnist_zip"],
                            ["mnist_zip"]),
    "unknown temperature schedule": (
        ["--config.temperature.schedule=cosine"], ["cosine"]),
    "missing data path": (["--config.data.source=image_folder",
                           "--config.data.path={root}/nowhere"], ["nowhere"]),
    "folder without classes": (["--config.data.source=image_folder",
                                "--config.data.path={root}/flat"], ["flat"]),
    "empty folder": (["--config.data.source=image_folder",
                      "--config.data.path={root}/empty"], ["empty"]),
    "corrupt image file": (["--config.data.source=image_folder",
                            "--config.data.path={root}/corrupt"], ["2.png"]),
    "more shots than images": (["--config.data.num_shots=400"],
                               ["images", "need"]),
    "fewer classes than ways": (["--config.data.num_ways=30"],
                                ["30-way"]),
    "corrupt prior file": (["--config.mode=evaluate",
                            "--config.prior_path={root}/corrupt.msgpack"],
                           ["corrupt", "corrupt.msgpack"]),
    "prior of another search space": (
        ["--config.mode=evaluate",
         "--config.prior_path={root}/other_space.msgpack"], ["3-way"]),
    "missing prior": (["--config.mode=adapt",
                       "--config.prior_path={root}/none.msgpack"],
                      ["not found"]),
    "negative steps": (["--config.train.num_steps=-5"], ["num_steps"]),
    "not a number": (["--config.train.num_steps=abc"], ["num_steps"]),
    "unwritable workdir": (["--workdir={root}/flat/0.png/run"],
                           ["not writable"]),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  _image_folders(root)
  _priors(root)
  return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_launch_rejects_bad_input_in_one_line(case, root):
  flags, fragments = CASES[case]
  workdir = root / f"workdir-{case.replace(' ', '-')}"
  workdir.mkdir()
  earlier = {"results.json": '{"earlier": true}', "metrics.jsonl": "{}\n"}
  for name, text in earlier.items():
    (workdir / name).write_text(text)
  args = [f.format(root=root) for f in flags]
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={workdir}")
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / "launch.py"), QUICKSTART, *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  message = [l for l in result.stderr.splitlines()
             if l.startswith(("error:", "FATAL"))]
  assert len(message) == 1, result.stderr
  for fragment in fragments:
    assert fragment in message[0], message[0]
  for name, text in earlier.items():
    assert (workdir / name).read_text() == text, f"{name} was overwritten"


def test_library_entry_points_reject_bad_input():
  prior = base.init_prior(tiny_spec(num_classes=3), jax.random.key(0))
  x = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1, 2])
  cases = [
      (lambda: base.adapt(prior, (x * 255).astype(np.uint8), y),
       "must be floats"),
      (lambda: base.adapt(prior, np.repeat(x, 3, -1), y), "channels|1\\]"),
      (lambda: base.adapt(prior, x, y.astype(np.float32)), "integers"),
      (lambda: base.adapt(prior, x, y[:4]), "labels must be 6"),
      (lambda: base.adapt(prior, x, y, query_y=y), "without query_x"),
      (lambda: Genotype.from_json('{"normal": [["warp", 0], ["skip_connect", 1]],'
                                  ' "normal_concat": [2], "reduce": [],'
                                  ' "reduce_concat": [2]}'), "warp"),
      (lambda: base.SupernetSpec(num_classes=3, primitives=("none", "lstm")),
       "lstm"),
      (lambda: base.AdaptConfig(weight_posterior="laplace"), "laplace"),
      (lambda: base.temperature_schedule("cosine", 1.0, 0.5, 10), "cosine"),
  ]
  for call, match in cases:
    with pytest.raises(base.BaseUserError, match=match):
      call()
