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
                    "prior_path")


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
