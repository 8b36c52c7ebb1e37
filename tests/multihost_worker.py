"""One process of the two-process meta-step check (tests/test_scale.py).

Usage: python tests/multihost_worker.py ADDRESS NUM_PROCESSES PROCESS_ID OUT

Every process samples only its own tasks of the meta-batch, the sharded
meta-step averages the meta-gradient over both processes' devices, and
process 0 writes the updated prior's arrays to OUT (an .npz file).
"""

from __future__ import annotations

import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]


def main(address: str, num_processes: int, process_id: int, out: str) -> None:
  from base import distributed
  distributed.initialize(address, num_processes, process_id)
  import jax
  import numpy as np
  from base import meta, serialization, sharding
  from multihost_common import TASKS, make_problem

  prior, family, cfg, opt = make_problem()
  mesh = sharding.task_mesh()
  ids = sharding.local_task_ids(TASKS, mesh)
  episodes = sharding.sample_task_batch(family, 0, 0, ids)
  state = meta.init_meta_state(prior, opt)
  state, metrics = meta.meta_step(state, episodes, jax.random.key(7),
                                  np.float32(1.0), cfg=cfg, opt_cfg=opt)
  flat = serialization.flatten(jax.device_get(
      jax.tree.map(lambda a: a.addressable_data(0), state.prior.to_dict())))
  if process_id == 0:
    np.savez(out, tasks=np.asarray(ids),
             loss=np.asarray(metrics["meta_loss"].addressable_data(0)),
             **{k.replace("/", "."): v for k, v in flat.items()})


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
