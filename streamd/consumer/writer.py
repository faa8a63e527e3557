"""The store writer: where and when a batch's insert runs.

In a thread of its own, so that the loop fetches and prepares the next batch while this one is written
(pymongo releases the GIL while it waits for the server). The loop still books a batch's offsets only
after its write returned: the thread moves the waiting, not the rule that a committed offset is stored.

On a store that takes one write at a time, the consumers of one state directory also take turns, by an
flock: FerretDB 1.x on SQLite has one writer per database, and a second writer that finds it busy sleeps
in SQLite's busy handler (1, 2, 5 ... 100 ms) instead of being woken when it is free. Measured with the
bench's drain of 60,000 messages: 18,090 msg/s with one consumer process, 8,555 with two before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class StoreWriter:
    """One writer thread, and the turns the consumers of a state directory take on a single-writer store."""

    def __init__(self, turns_path: Path | None) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.turns_path = turns_path  # None: no other consumer to take turns with (a consumer built in a test)
        self.turns: int | None = None  # the lock file, open once the store turned out to take one writer

    def start(self, write: Callable[[], T]) -> Future[T]:
        """Run `write` in the writer thread; its result (or exception) comes with the future."""
        return self.thread.submit(write)

    def single_writer(self) -> None:
        """The store takes one write at a time: from now on every write waits for its turn."""
        if self.turns is None and self.turns_path is not None:
            self.turns_path.parent.mkdir(parents=True, exist_ok=True)
            self.turns = os.open(self.turns_path, os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the store for one write (a no-op on a store that takes concurrent writes)."""
        if self.turns is None:
            yield
            return
        fcntl.flock(self.turns, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            yield
        finally:
            fcntl.flock(self.turns, fcntl.LOCK_UN)

    def close(self) -> None:
        self.thread.shutdown(wait=True)
        if self.turns is not None:
            os.close(self.turns)
            self.turns = None
