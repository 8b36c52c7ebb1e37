r"""Omniglot 20-way 1-shot (5-shot with an override), the BASE paper's setting.

Meta-trains on the union of Omniglot's background_small1 and background_small2
(242 distinct characters; read from ../shared/data/omniglot or any path given
in data.path), holding out 42 characters for meta-test tasks, with the usual
90-degree rotations of meta-training characters as extra classes. Images are
28x28 with strokes as 1.0.

  python launch.py --config=configs/omniglot.py --workdir=runs/omniglot
  python launch.py --config=configs/omniglot.py --workdir=runs/omniglot5 \
      --config.data.num_shots=5
  python launch.py --config=configs/omniglot.py --workdir=runs/omniglot \
      --config.mode=evaluate

The full budget is meant for a GPU; on 2 CPU cores compiling the meta-step
alone takes several minutes (override supernet.* and train.* to shrink it).
"""

import ml_collections

from base import ops
from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.data.update(dict(
      source="omniglot", path="", image_size=28,
      rotations=(0, 90, 180, 270), num_test_classes=42,
      num_ways=20, num_shots=1, num_queries=5, seed=0))
  config.supernet.update(dict(
      channels=16, num_cells=3, num_nodes=3, stem_multiplier=2,
      primitives=ops.DARTS_PRIMITIVES, reduction_cells=(1, 2)))
  config.adapt.update(dict(steps=5, lr_weights=1.0, lr_arch=2.0))
  config.train.update(dict(num_steps=5000, meta_batch_size=8, log_every=50,
                           checkpoint_every=500))
  config.maml.update(dict(enabled=True, hidden=64, inner_steps=5,
                          inner_lr=0.4, meta_batch_size=8, num_steps=5000))
  config.evaluate.update(dict(
      episodes=600, omniglot_runs=True,
      protocols=("20-way 1-shot", "20-way 5-shot", "5-way 1-shot",
                 "5-way 5-shot")))
  return config
