"""Log once when something goes down, once when it comes back: the rule for every retried dependency.

A dependency that is away (the store, a broker, the dead-letter topic) fails the same way on every
retry; a line per retry would bury everything else in the log. An `Outage` tells its owner when a
failure is news (the first one, or one with a different cause) and, once things work again, how long
it lasted and how many failures it took. The owner writes the lines: their wording is its own.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Recovery:
    seconds: float  # since the first failure of the outage
    failures: int  # failures reported during the outage


class Outage:
    """Whether something is down, since when, and why (the cause of its latest failure)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.cause: Hashable = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, cause: Hashable = None) -> bool:
        """Record a failure; True when it is news: the first of an outage, or one with another cause."""
        news = self.since is None or cause != self.cause
        if self.since is None:
            self.since = time.monotonic()
        self.cause = cause
        self.failures += 1
        return news

    def recovered(self) -> Recovery | None:
        """Record a success; the outage it ends, or None when nothing was down."""
        if self.since is None:
            return None
        recovery = Recovery(time.monotonic() - self.since, self.failures)
        self.since, self.cause, self.failures = None, None, 0
        return recovery
