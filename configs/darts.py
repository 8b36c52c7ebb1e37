r"""The quickstart on digits with all eight DARTS operations and three nodes.

Slower to compile than the quickstart (each op adds XLA compile time on CPU).

  python launch.py --config=configs/darts.py --workdir=runs/darts
"""

import ml_collections

from base import ops
from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.supernet.update(dict(primitives=ops.DARTS_PRIMITIVES, num_nodes=3,
                              num_cells=3, reduction_cells=(1, 2)))
  return config
