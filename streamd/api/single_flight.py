"""One computation at a time, its result shared by every caller while it is fresh.

/stats counts the whole collection and /ready asks Kafka and the store: under a burst of requests
each would otherwise run once per caller, and the callers queued behind a slow run would each start
another. Callers arriving while a computation runs wait for it and get its result (or its error);
the result is stamped when the computation *ends*, so one that took longer than `fresh_seconds` is
still fresh for the callers that waited for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, compute: Callable[[], T], fresh_seconds: float) -> None:
        self.compute = compute
        self.fresh_seconds = fresh_seconds
        self._lock = threading.Lock()
        self._latest: tuple[float, T] | None = None  # (monotonic time the computation ended, result)
        self._flight: Future[T] | None = None

    def get(self) -> T:
        with self._lock:
            if self._latest is not None and time.monotonic() - self._latest[0] <= self.fresh_seconds:
                return self._latest[1]
            flight, leading = self._flight, self._flight is None
            if leading:
                flight = self._flight = Future()
        assert flight is not None
        if not leading:
            return flight.result()
        try:
            result = self.compute()
        except BaseException as exc:
            with self._lock:
                self._flight = None
            flight.set_exception(exc)
            raise
        with self._lock:
            self._latest, self._flight = (time.monotonic(), result), None
        flight.set_result(result)
        return result
