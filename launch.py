"""Runs a BASE experiment: ``python launch.py --config=configs/NAME.py``.

Flags:
  --config           an ml_collections config file; override any field with
                     ``--config.section.field=value``.
  --workdir          where checkpoints, metrics, the prior and results go.
  --coordinator_address, --num_processes, --process_id
                     multi-host runs (passed to ``jax.distributed.initialize``).

Modes (``--config.mode``): ``meta_train``, ``evaluate``, ``adapt`` and
``all`` (meta-train, then evaluate, then adapt to one new task and print its
genotype). Problems with the input stop the run with a one-line message.
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
  # Imported here so that --help and flag errors are instant.
  from base import cli
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
