"""Result reports (``NAME.json`` + ``NAME.md``) that never replace earlier ones.

``evaluate``, ``compare`` and ``transfer`` each write a JSON record and a
Markdown table into the workdir. Running one again in the same workdir (say,
other protocols of the same prior) must not lose what the earlier run
measured, so an existing pair is first renamed to ``NAME.<time>.json`` /
``NAME.<time>.md``, ``<time>`` being when the earlier JSON was written (UTC).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable


def _keep_earlier(workdir: str, name: str) -> str | None:
  """Renames an existing ``name.json`` (and its ``.md``) aside; returns the
  new JSON path, or None when there was none."""
  old_json = os.path.join(workdir, f"{name}.json")
  if not os.path.exists(old_json):
    return None
  stamp = datetime.datetime.fromtimestamp(
      os.path.getmtime(old_json), datetime.timezone.utc).strftime(
          "%Y%m%dT%H%M%S")
  suffix, n = stamp, 1
  while os.path.exists(os.path.join(workdir, f"{name}.{suffix}.json")):
    n += 1
    suffix = f"{stamp}-{n}"
  kept = os.path.join(workdir, f"{name}.{suffix}.json")
  os.replace(old_json, kept)
  old_md = os.path.join(workdir, f"{name}.md")
  if os.path.exists(old_md):
    os.replace(old_md, os.path.join(workdir, f"{name}.{suffix}.md"))
  return kept


def write_report(workdir: str, name: str, results: Any, markdown: str, *,
                 json_default: Callable[[Any], Any] | None = None) -> str | None:
  """Writes ``workdir/name.json`` and ``workdir/name.md``.

  An earlier pair of that name is kept under a time-stamped name (see the
  module docstring); returns the kept JSON's path, or None.
  """
  kept = _keep_earlier(workdir, name)
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(results, f, indent=2, default=json_default)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(markdown + "\n")
  return kept
