"""base.compiled_programs: releasing compiled programs near the mapping cap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from base import compiled_programs


def _fake_proc(tmp_path, mappings: int, limit: int):
  maps, limit_file = tmp_path / "maps", tmp_path / "max_map_count"
  maps.write_text("".join(f"mapping {i}\n" for i in range(mappings)))
  limit_file.write_text(f"{limit}\n")
  return dict(maps_file=str(maps), limit_file=str(limit_file))


def _compiled_square():
  square = jax.jit(lambda x: x * x)
  square(jnp.ones(3)).block_until_ready()
  assert square._cache_size() == 1
  return square


def test_caches_are_cleared_only_above_the_fraction(tmp_path):
  square = _compiled_square()
  below = _fake_proc(tmp_path, mappings=50, limit=100)
  assert compiled_programs.memory_map_usage(**below) == (50, 100)
  assert not compiled_programs.release_if_near_limit(0.5, **below)
  assert square._cache_size() == 1
  above = _fake_proc(tmp_path, mappings=51, limit=100)
  assert compiled_programs.release_if_near_limit(0.5, **above)
  assert square._cache_size() == 0
  # The function still works: it compiles again.
  assert float(square(jnp.full(3, 2.0))[0]) == 4.0


def test_unknown_usage_does_nothing_and_bad_fractions_are_refused(tmp_path):
  square = _compiled_square()
  missing = dict(maps_file=str(tmp_path / "nope"),
                 limit_file=str(tmp_path / "nope"))
  assert compiled_programs.memory_map_usage(**missing) is None
  assert not compiled_programs.release_if_near_limit(1e-9, **missing)
  (tmp_path / "limit").write_text("not a number")
  garbled = dict(missing, limit_file=str(tmp_path / "limit"))
  assert compiled_programs.memory_map_usage(**garbled) is None
  assert square._cache_size() == 1
  for fraction in (0.0, 1.5):
    with pytest.raises(ValueError, match="fraction"):
      compiled_programs.release_if_near_limit(fraction)


@pytest.mark.skipif(compiled_programs.memory_map_usage() is None,
                    reason="no /proc/self/maps here")
def test_releasing_unmaps_the_compiled_programs():
  # Live jitted functions keep their programs mapped; clearing unmaps them.
  functions = []
  for i in range(30):
    f = jax.jit(lambda x, i=i: jnp.sin(x) * i + jnp.cos(x[::-1]))
    f(jnp.ones(64 + i)).block_until_ready()
    functions.append(f)
  held, _ = compiled_programs.memory_map_usage()
  assert compiled_programs.release_if_near_limit(1e-9)
  after, _ = compiled_programs.memory_map_usage()
  assert after < held - 100, (held, after)
  assert all(f._cache_size() == 0 for f in functions)
