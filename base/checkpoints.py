"""Meta-training checkpoints in the workdir, with Orbax, for resuming.

A checkpoint holds the whole :class:`~base.meta.MetaState` (step, prior,
optimizer state). Orbax writes each step into a temporary folder and renames
it when complete, so an interrupted write never replaces the last good
checkpoint. Episodes and random keys are derived from (seed, step), so a run
resumed from step s continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from base.errors import CheckpointError


class MetaCheckpointer:
  """Saves and restores meta-training state under ``workdir/subdir``.

  ``subdir`` keeps the checkpoints of different trainings in one workdir
  apart (BASE's ``checkpoints``, the MAML baseline's ``maml_checkpoints``).
  """

  def __init__(self, workdir: str, max_to_keep: int = 2,
               subdir: str = "checkpoints"):
    self.directory = os.path.join(os.path.abspath(workdir), subdir)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, template: Any, step: int | None = None) -> Any:
    """Restores into the structure (and dtypes) of ``template``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      return self._manager.restore(step,
                                   args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for bad/mismatched data
      raise CheckpointError(
          f"cannot restore checkpoint {step} from {self.directory} "
          f"(corrupt, or made with another config): "
          f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None

  def close(self) -> None:
    self._manager.close()
