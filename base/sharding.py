"""Meta-batches sharded over devices and hosts (``jax.make_mesh``, ``jax.shard_map``).

The tasks of a meta-batch are independent until their meta-gradients are
averaged, so they split over a one-axis device mesh ``("tasks",)``: every
device adapts its share of tasks (vmapped), the per-device gradient sums are
``psum``-ed over the axis, and the Optax update runs replicated. The same
code runs on one device (a mesh of one), on all local GPUs, and across hosts
after ``jax.distributed.initialize`` (``base.distributed``), where each host
samples and loads only the tasks that land on its own devices
(:func:`local_task_ids`, :func:`global_task_batch`).

The per-task PRNG keys are ``jax.random.split(key, num_tasks)``, exactly as
in ``base.meta.meta_step``, so the sharded step computes the same mean
gradient as the single-device one (tested with simulated CPU devices and with
two processes on localhost).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from base.adaptation import AdaptConfig
from base.errors import ConfigError

TASK_AXIS = "tasks"


@functools.lru_cache(maxsize=4)
def task_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``num_devices`` (default: all devices of all hosts)."""
  count = jax.device_count() if num_devices is None else num_devices
  if not 1 <= count <= jax.device_count():
    raise ConfigError(f"asked for {count} devices; {jax.device_count()} "
                      f"available")
  return jax.make_mesh((count,), (TASK_AXIS,),
                       devices=jax.devices()[:count])


def check_divisible(num_tasks: int, mesh: jax.sharding.Mesh) -> None:
  devices = mesh.shape[TASK_AXIS]
  if num_tasks % devices:
    raise ConfigError(f"train.meta_batch_size={num_tasks} must be a multiple "
                      f"of the {devices} devices the tasks are sharded over")


def local_task_ids(num_tasks: int, mesh: jax.sharding.Mesh) -> list[int]:
  """Indices of the meta-batch's tasks that live on this host's devices."""
  check_divisible(num_tasks, mesh)
  sharding = NamedSharding(mesh, P(TASK_AXIS))
  ids: set[int] = set()
  for index in sharding.addressable_devices_indices_map((num_tasks,)).values():
    ids.update(range(num_tasks)[index[0]])
  return sorted(ids)


def global_task_batch(local: Any, num_tasks: int,
                      mesh: jax.sharding.Mesh) -> Any:
  """A pytree of global arrays sharded on the task axis from this host's part.

  ``local`` holds the tasks :func:`local_task_ids` lists, stacked in that
  order (on one host: the whole meta-batch).
  """
  sharding = NamedSharding(mesh, P(TASK_AXIS))

  def to_global(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        sharding, x, (num_tasks,) + x.shape[1:])

  return jax.tree.map(to_global, local)


def task_keys(key: jax.Array, num_tasks: int,
              mesh: jax.sharding.Mesh) -> jax.Array:
  """The per-task keys (raw uint32 data), sharded like the tasks."""
  data = np.asarray(jax.random.key_data(jax.random.split(key, num_tasks)))
  ids = local_task_ids(num_tasks, mesh)
  return global_task_batch(data[ids], num_tasks, mesh)


@functools.partial(jax.jit, static_argnames=("cfg", "opt_cfg", "mesh"),
                   donate_argnames=("state",))
def sharded_meta_step(state: Any, episodes: Any, key_data: jax.Array,
                      temperature: jax.Array, *, cfg: AdaptConfig,
                      opt_cfg: Any, mesh: jax.sharding.Mesh
                      ) -> tuple[Any, dict[str, jax.Array]]:
  """``base.meta.meta_step`` with the tasks split over ``mesh``'s devices.

  Args:
    state: the replicated ``MetaState`` (donated).
    episodes: an ``Episode`` of global arrays sharded on the task axis.
    key_data: per-task keys as raw key data (:func:`task_keys`).
  """
  from base.meta import apply_meta_gradient, task_meta_loss
  num_tasks = key_data.shape[0]

  def device_part(prior, episodes, key_data, temperature):
    keys = jax.random.wrap_key_data(key_data)
    # Each device adapts its own tasks from the (replicated) prior: cast it
    # to a per-device value, or every gradient taken from it inside (the
    # inner steps' too) would be summed over devices.
    prior = jax.lax.pcast(prior, TASK_AXIS, to="varying")

    def summed_loss(prior):
      losses, metrics = jax.vmap(task_meta_loss,
                                 in_axes=(None, 0, 0, None, None))(
                                     prior, episodes, keys, temperature, cfg)
      return jnp.sum(losses), jax.tree.map(lambda m: jnp.sum(m, 0), metrics)

    (_, metrics), grads = jax.value_and_grad(summed_loss, has_aux=True)(prior)
    return jax.lax.psum((grads, metrics), TASK_AXIS)

  grads, metrics = jax.shard_map(
      device_part, mesh=mesh,
      in_specs=(P(), P(TASK_AXIS), P(TASK_AXIS), P()),
      out_specs=(P(), P()))(state.prior, episodes, key_data, temperature)
  grads, metrics = jax.tree.map(lambda v: v / num_tasks, (grads, metrics))
  state, metrics["grad_norm"] = apply_meta_gradient(state, grads, opt_cfg)
  return state, metrics


def sample_task_batch(family: Any, seed: int, step: int,
                      task_ids: Sequence[int]) -> Any:
  """Episodes of the given tasks of meta-step ``step``, stacked.

  Task ``t`` of step ``s`` is ``family.sample(default_rng([seed, s, t]))``,
  so any host can sample any subset of a meta-batch without the rest, and
  one host sampling all tasks gets the same episodes.
  """
  episodes = [family.sample(np.random.default_rng([seed, step, t]))
              for t in task_ids]
  return jax.tree.map(lambda *xs: np.stack(xs), *episodes)
