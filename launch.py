"""Runs a BASE experiment: ``python launch.py --config=configs/NAME.py``.

Flags:
  --config           an ml_collections config file; override any field with
                     ``--config.section.field=value``.
  --workdir          where checkpoints, metrics, the prior and results go.
  --coordinator_address, --num_processes, --process_id
                     multi-host runs (passed to ``jax.distributed.initialize``);
                     every host runs the same command with its own process id.
  --multihost        multi-host run on a cluster JAX detects by itself (TPU pod
                     slices, SLURM, Open MPI).

Modes (``--config.mode``): ``meta_train``, ``evaluate``, ``adapt``,
``transfer``, ``compare`` (every method of ``config.compare``, one table) and
``all`` (meta-train, then evaluate, then adapt to one new task and print its
genotype). ``--config.method`` picks the method (``base``, ``maml``,
``metanas``, ``warm_start``, ``atnas``, ``metad2a``). Problems with the input
stop the run with a one-line message.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (see configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for checkpoints, metrics, prior.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0,
                                      "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1,
                                   "This process's id in a multi-host run.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Join a multi-host run that JAX detects by itself.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
  # Imported here so that --help and flag errors are instant.
  from base import cli, distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value, auto=_MULTIHOST.value)
  cli.run(_CONFIG.value, _WORKDIR.value)


def _run() -> None:
  try:
    from base import config_utils
    config_utils.check_override_flags(sys.argv)
    app.run(main)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    from base.errors import BaseUserError
    if isinstance(e, BaseUserError):
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    raise


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  _run()
