"""Multi-host start-up: ``jax.distributed.initialize`` from launch flags.

One command runs on a laptop, a GPU cluster or a TPU pod slice: every host
runs ``launch.py`` with the same config and its own ``--process_id`` (or
``--multihost`` where JAX detects the cluster itself: TPU pods, SLURM, Open
MPI), and then ``jax.devices()`` lists the devices of all hosts. The
meta-batch's tasks are sharded over all of them (``base.sharding``); each
host samples and loads only its own tasks.
"""

from __future__ import annotations

import jax

from base.errors import ConfigError


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1, auto: bool = False) -> bool:
  """Joins a multi-process JAX run; returns whether one was started.

  Args:
    coordinator_address: ``host:port`` of process 0 (every process passes
      the same address).
    num_processes: processes in the run.
    process_id: this process, ``0 .. num_processes - 1``.
    auto: let JAX detect the cluster (TPU pod slices, SLURM, Open MPI).

  Must run before anything touches a JAX device. On CPU the collectives
  between processes go through gloo.
  """
  explicit = bool(coordinator_address) or num_processes > 1
  if not explicit and not auto:
    return False
  if explicit:
    if not coordinator_address or num_processes < 1 or not (
        0 <= process_id < num_processes):
      raise ConfigError(
          "a multi-process run needs --coordinator_address=HOST:PORT, "
          "--num_processes=N and --process_id in 0..N-1 (got "
          f"{coordinator_address!r}, {num_processes}, {process_id})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  return True
