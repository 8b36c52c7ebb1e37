"""Host-side input pipelining: produce the next meta-batches while the device works.

JAX dispatches compiled programs asynchronously, so a Python loop that
samples episodes and then calls the meta-step already overlaps the sampling of
step s+1 with the computation of step s, until something waits on the device.
:func:`prefetch` makes the overlap explicit and independent of that: a
background thread keeps up to ``size`` items ready (NumPy episode sampling
releases the GIL in its array copies), so the device never waits for the
host even when a step syncs (logging, checkpoints).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


def prefetch(items: Iterable[T], size: int = 2) -> Iterator[T]:
  """Yields ``items`` in order, computing up to ``size`` of them ahead.

  An exception raised while producing an item is re-raised by the consumer
  at that item's position. Stopping early (``close``/garbage collection of
  the generator) lets the producer thread finish on its own.
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}")
  buffer: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    try:
      for item in items:
        while not stop.is_set():
          try:
            buffer.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
    except BaseException as e:  # pylint: disable=broad-except
      buffer.put(_Failure(e))
      return
    buffer.put(_DONE)

  thread = threading.Thread(target=produce, daemon=True,
                            name="base-prefetch")
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is _DONE:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
