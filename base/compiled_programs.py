"""Keeps a long-lived process clear of the kernel's limit on memory mappings.

Every program XLA:CPU compiles is loaded into its own memory mappings (code,
read-only data and data sections; about 15 for a small program, about 5600
for the quickstart's meta-training programs together), and they stay mapped
as long as JAX's caches keep the compiled program, which is as long as the
jitted function lives (the library's module-level ones: the whole process).
Linux caps the mappings of one process at ``vm.max_map_count`` (65530 by
default); at the cap LLVM's next allocation fails and the process aborts
("LLVM ERROR: Unable to allocate section memory!", preceded by "Cannot
allocate memory" errors). One process that compiles many differently shaped
programs, such as a test-suite worker or an evaluation over many protocols
and methods, can reach it.

:func:`release_if_near_limit` empties JAX's caches (``jax.clear_caches``:
compiled programs are unmapped once nothing else holds them) when the
process holds more than a fraction of the allowed mappings. Programs needed
again are compiled again (or read from the on-disk compilation cache, see
``base.cli.enable_compilation_cache``), which is far cheaper than an abort.
Where ``/proc`` does not say (not Linux), nothing is done.
"""

from __future__ import annotations

import gc

import jax

MAPS_FILE = "/proc/self/maps"
LIMIT_FILE = "/proc/sys/vm/max_map_count"

#: Above this fraction of ``vm.max_map_count`` compiled programs are released.
DEFAULT_FRACTION = 0.5


def memory_map_usage(maps_file: str = MAPS_FILE,
                     limit_file: str = LIMIT_FILE) -> tuple[int, int] | None:
  """``(mappings this process holds, the kernel's limit)``, or None if unknown."""
  try:
    with open(limit_file, "rb") as f:
      limit = int(f.read().strip())
    with open(maps_file, "rb") as f:
      count = f.read().count(b"\n")
  except (OSError, ValueError):
    return None
  return count, limit


def release_if_near_limit(fraction: float = DEFAULT_FRACTION, *,
                          maps_file: str = MAPS_FILE,
                          limit_file: str = LIMIT_FILE) -> bool:
  """Clears JAX's caches if this process holds > ``fraction`` of its mappings.

  Cheap enough to call between units of work (it reads ``/proc/self/maps``:
  about a millisecond per thousand mappings). Returns whether it cleared.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction {fraction} is not in (0, 1]")
  usage = memory_map_usage(maps_file, limit_file)
  if usage is None or usage[0] <= fraction * usage[1]:
    return False
  jax.clear_caches()
  gc.collect()
  return True
