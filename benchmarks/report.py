"""What every benchmark script does with its report: write it as JSON."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, report: dict[str, Any], indent: int = 2) -> None:
  """Writes ``report`` to ``path`` (folders made as needed); "" skips."""
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(report, f, indent=indent)
