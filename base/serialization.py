"""One self-describing file of arrays: JSON header, msgpack body, checksum.

Priors, posteriors and baseline weights are saved this way: a JSON header
(format name, version, whatever the reader needs to rebuild the model, user
metadata), the arrays of a nested dict flattened to ``"a/b/c"`` keys, and a
SHA-256 over both, so truncation and bit flips are detected on load. Writes
go to a temporary file renamed over the target, so a crash mid-write never
destroys an earlier file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from base.errors import CheckpointError, ConfigError


def flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {0: x}}`` -> ``{"a/0": x}`` (leaves kept as they are)."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten(value, path))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[Any, Any]:
  """The inverse of :func:`flatten`; digit keys become ints (NNX lists)."""
  tree: dict[Any, Any] = {}
  for path, value in flat.items():
    node = tree
    parts = [int(p) if p.isdigit() else p for p in path.split("/")]
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = jnp.asarray(value)
  return tree


def _checksum(arrays: Mapping[str, np.ndarray], header: str) -> str:
  digest = hashlib.sha256(header.encode())
  for path in sorted(arrays):
    digest.update(path.encode())
    digest.update(np.ascontiguousarray(arrays[path]).tobytes())
  return digest.hexdigest()


def write_arrays_file(path: str | os.PathLike, tree: Mapping[Any, Any],
                      header: Mapping[str, Any]) -> None:
  """Writes a nested dict of arrays and a JSON ``header``, atomically."""
  arrays = {key: np.asarray(jax.device_get(value))
            for key, value in flatten(tree).items()}
  try:
    header_text = json.dumps(dict(header), sort_keys=True)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"metadata must be JSON-serialisable: {e}") from None
  blob = serialization.msgpack_serialize({
      "header": header_text, "arrays": arrays,
      "sha256": _checksum(arrays, header_text)})
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_arrays_file(path: str | os.PathLike, *, kind: str, format_name: str,
                     version: int | tuple[int, ...]
                     ) -> tuple[dict[Any, Any], dict[str, Any]]:
  """Reads ``(nested dict of arrays, header)`` of a :func:`write_arrays_file`.

  Args:
    kind: what the file holds, for messages ("prior", "MAML weights").
    format_name, version: what the header must say (``version``: one, or
      the tuple of those the reader understands).

  Raises:
    CheckpointError: naming ``path``, when the file is missing, truncated,
      corrupt (checksum), of another format or of another version.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{kind} file not found: {path}")
  try:
    with open(path, "rb") as f:
      contents = serialization.msgpack_restore(f.read())
    header_text = contents["header"]
    header = json.loads(header_text)
    arrays = {key: np.asarray(value)
              for key, value in flatten(contents["arrays"]).items()}
    stored_sum = contents["sha256"]
  except Exception as e:  # msgpack, json, key and type errors alike
    raise CheckpointError(f"corrupt or unreadable {kind} file {path}: "
                          f"{type(e).__name__}") from None
  if not isinstance(header, dict) or header.get("format") != format_name:
    raise CheckpointError(f"{path} is not a {kind} file")
  versions = version if isinstance(version, tuple) else (version,)
  if header.get("version") not in versions:
    expected = " or ".join(map(str, versions))
    raise CheckpointError(f"{path} has {kind} format version "
                          f"{header.get('version')}, expected {expected}")
  if _checksum(arrays, header_text) != stored_sum:
    raise CheckpointError(f"corrupt {kind} file {path}: checksum mismatch")
  return unflatten(arrays), header
