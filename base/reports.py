"""Result reports (``NAME.json`` + ``NAME.md``) that never replace earlier ones.

``evaluate``, ``compare`` and ``transfer`` each write a JSON record and a
Markdown table into the workdir. Running one again in the same workdir (say,
other protocols of the same prior) must not lose what the earlier run
measured, so an existing pair is first renamed to ``NAME.<time>.json`` /
``NAME.<time>.md``, ``<time>`` being when the earlier JSON was written (UTC).
``keep_earlier`` does the same for any set of files (mode=adapt's posterior,
genotype and pictures).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable, Sequence


def keep_earlier(workdir: str, filenames: Sequence[str]) -> str | None:
  """Renames the existing ``filenames`` in ``workdir`` aside, as one set.

  ``stem.ext`` becomes ``stem.<time>.ext``, one ``<time>`` for the set: when
  the first of them that exists was written (UTC), with ``-2``, ``-3``...
  added when a set of that time was kept before. Returns that suffix, or None
  when none of the files existed.
  """
  existing = [name for name in filenames
              if os.path.exists(os.path.join(workdir, name))]
  if not existing:
    return None
  stamp = datetime.datetime.fromtimestamp(
      os.path.getmtime(os.path.join(workdir, existing[0])),
      datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")

  def kept_name(name: str, suffix: str) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem}.{suffix}{ext}"

  suffix, n = stamp, 1
  while any(os.path.exists(os.path.join(workdir, kept_name(name, suffix)))
            for name in filenames):
    n += 1
    suffix = f"{stamp}-{n}"
  for name in existing:
    os.replace(os.path.join(workdir, name),
               os.path.join(workdir, kept_name(name, suffix)))
  return suffix


def write_report(workdir: str, name: str, results: Any, markdown: str, *,
                 json_default: Callable[[Any], Any] | None = None) -> str | None:
  """Writes ``workdir/name.json`` and ``workdir/name.md``.

  An earlier pair of that name is kept under a time-stamped name (see the
  module docstring); returns the kept JSON's path, or None.
  """
  suffix = keep_earlier(workdir, (f"{name}.json", f"{name}.md"))
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(results, f, indent=2, default=json_default)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(markdown + "\n")
  kept = os.path.join(workdir, f"{name}.{suffix}.json")
  return kept if suffix and os.path.exists(kept) else None
