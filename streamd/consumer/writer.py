"""The store writer: the thread a batch's insert runs in.

In a thread of its own, so that the loop fetches and prepares the next batch while this one is written
(pymongo releases the GIL while it waits for the server). The loop still books a batch's offsets only
after its write returned: the thread moves the waiting, not the rule that a committed offset is stored.

Consumer processes do not take turns on a store that takes one write at a time (FerretDB 1.x on SQLite):
measured, an flock around each insert changed neither the drain rate of two consumers (26,000-30,000
msg/s either way) nor helped the latency tail (p99 at 1000 msg/s 35-53 ms with it, 30-32 ms without).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class StoreWriter:
    """One writer thread: a write started here is taken (its outcome or exception) from the future."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")

    def start(self, write: Callable[[], T]) -> Future[T]:
        return self.thread.submit(write)

    def close(self) -> None:
        self.thread.shutdown(wait=True)
