"""Turning an ``ml_collections`` experiment config into typed objects.

Configs are plain ``ConfigDict`` trees (see ``configs/``); the library takes
frozen dataclasses. These helpers convert one into the other and reject
unknown or missing fields with a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from base.errors import ConfigError

T = TypeVar("T")

#: Sections and top-level fields every experiment config has.
TOP_LEVEL_FIELDS = ("mode", "seed", "method", "data", "supernet", "prior",
                    "adapt", "meta", "temperature", "train", "evaluate",
                    "prior_path", "transfer", "maml", "metanas", "warm_start",
                    "atnas", "metad2a", "compare")


def as_dict(section: Any) -> dict[str, Any]:
  """A ConfigDict, mapping or None as a plain dict."""
  if section is None:
    return {}
  if hasattr(section, "to_dict"):
    return section.to_dict()
  if isinstance(section, Mapping):
    return dict(section)
  raise ConfigError(f"expected a config section, got {type(section).__name__}")


def dataclass_from_config(cls: type[T], section: Any, name: str,
                          **overrides: Any) -> T:
  """``cls(**section, **overrides)``, with unknown keys named in the error."""
  values = as_dict(section)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ConfigError(f"unknown config key(s) {', '.join(f'{name}.{k}' for k in unknown)}"
                      f"; allowed: {', '.join(sorted(fields))}")
  values.update(overrides)
  for key, value in values.items():
    if isinstance(value, list):
      values[key] = tuple(value)
  try:
    return cls(**values)
  except TypeError as e:
    raise ConfigError(f"config section {name!r}: {e}") from None


def check_top_level(config: Any) -> None:
  """Rejects unknown top-level keys of an experiment config."""
  unknown = sorted(set(as_dict(config)) - set(TOP_LEVEL_FIELDS))
  if unknown:
    raise ConfigError(f"unknown config key(s) {unknown}; allowed top-level "
                      f"keys: {', '.join(TOP_LEVEL_FIELDS)}")


def load_config_file(path: str) -> Any:
  """Imports a config file and returns its ``get_config()``."""
  import importlib.util
  import os
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location("base_user_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a user file: report, don't trace
    raise ConfigError(f"config file {path} failed to load: "
                      f"{type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config()")
  return module.get_config()


def check_override_flags(argv: list[str], flag: str = "config") -> None:
  """Checks ``--config=FILE`` and every ``--config.a.b=v`` key before parsing.

  ml_collections reports an unknown override key with a long traceback; this
  names it in one line instead, with the keys that do exist at that level.
  """
  path, overrides = None, []
  args = iter(argv[1:])
  for arg in args:
    if arg.startswith(f"--{flag}="):
      path = arg.split("=", 1)[1]
    elif arg == f"--{flag}":
      path = next(args, None)
    elif arg.startswith(f"--{flag}."):
      overrides.append(arg[len(flag) + 3:].split("=", 1)[0])
  if path is None:
    return
  config = load_config_file(path.split(":", 1)[0])
  for key in overrides:
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
      fields = as_dict(node) if hasattr(node, "to_dict") or isinstance(
          node, Mapping) else {}
      if part not in fields:
        where = ".".join(parts[:depth]) or "the config"
        raise ConfigError(
            f"unknown config key {key!r} (from --{flag}.{key}); keys in "
            f"{where}: {', '.join(sorted(fields)) or 'none'}")
      node = node[part]


# ----------------------------------------------------------------------------
# Field validators for config dataclasses: one-line errors naming the field.


def check_int(name: str, value: Any, minimum: int) -> int:
  """``value`` as an int; ConfigError naming ``name`` unless int >= minimum."""
  import numpy as np
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _is_real(value: Any) -> bool:
  import math
  import numpy as np
  return (not isinstance(value, bool)
          and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value))


def check_positive(name: str, value: Any) -> float:
  """``value`` as a float; ConfigError naming ``name`` unless finite > 0."""
  if not _is_real(value) or value <= 0:
    raise ConfigError(f"{name} must be a positive number, got {value!r}")
  return float(value)


def check_nonnegative(name: str, value: Any) -> float:
  """``value`` as a float; ConfigError naming ``name`` unless finite >= 0."""
  if not _is_real(value) or value < 0:
    raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
  return float(value)


def check_fraction(name: str, value: Any) -> float:
  """``value`` as a float; ConfigError naming ``name`` unless in [0, 1]."""
  if not _is_real(value) or not 0.0 <= value <= 1.0:
    raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
  return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
  """``value``; ConfigError naming ``name`` unless one of ``choices``."""
  if value not in choices:
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, "
                      f"got {value!r}")
  return value


def check_bool(name: str, value: Any) -> bool:
  """``value``; ConfigError naming ``name`` unless true or false."""
  import numpy as np
  if not isinstance(value, (bool, np.bool_)):
    raise ConfigError(f"{name} must be true or false, got {value!r}")
  return bool(value)
