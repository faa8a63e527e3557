"""Telling a replay from an id conflict, within a time budget: a diagnosis, never part of the delivery."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from pymongo.errors import OperationFailure

from streamd import ids, store
from streamd.consumer.counts import ConsumerCounters

log = logging.getLogger("streamd.consumer")

# Telling replays from id conflicts may take at most this share of any such window of a consumer's time.
CONFLICT_CHECK_SHARE = 0.1
CONFLICT_CHECK_WINDOW = 10.0


class TimeBudget:
    """At most `share` of any `window` seconds spent on something optional (one spending may overrun it)."""

    def __init__(self, share: float, window: float) -> None:
        self.allowance = share * window
        self.window = window
        self.spent: deque[tuple[float, float]] = deque()  # (ended at, seconds)

    def left(self) -> bool:
        horizon = time.monotonic() - self.window
        while self.spent and self.spent[0][0] < horizon:
            self.spent.popleft()
        return sum(seconds for _, seconds in self.spent) < self.allowance

    @contextmanager
    def spending(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            ended = time.monotonic()
            self.spent.append((ended, ended - started))


class ConflictCheck:
    """A duplicate is a replay or the same message sent twice, or else two messages claiming one id: say so.

    It may take at most CONFLICT_CHECK_SHARE of the consumer's time. On FerretDB the lookup scans the
    collection, and a replay after a crash brings whole batches of duplicates, handled one message at a
    time when suspect (streamd.quarantine); checking each would stall the consumer (and so the group's
    rebalance) for minutes. What the budget leaves out is counted as unchecked; `streamd verify` checks
    every message.
    """

    def __init__(self, counters: ConsumerCounters) -> None:
        self.counters = counters
        self.budget = TimeBudget(CONFLICT_CHECK_SHARE, CONFLICT_CHECK_WINDOW)

    def check(self, message_store: store.MessageStore, duplicated: tuple[dict, ...]) -> None:
        # A fallback id is the message's own Kafka coordinates: its duplicate can only be a replay.
        candidates = tuple(document for document in duplicated if not ids.is_fallback_id(document["_id"]))
        if not candidates:
            return
        if not self.budget.left():
            self.counters.add_unchecked(len(candidates))
            return
        try:
            with self.budget.spending():
                conflicts = message_store.conflicts(candidates)
        except (*store.UNAVAILABLE, OperationFailure) as exc:
            # The batch is stored; a diagnosis is not worth holding it for.
            log.warning(
                "could not check %d duplicate ids for conflicts (%s: %s)", len(candidates), type(exc).__name__, exc
            )
            return
        self.counters.add_id_conflicts(len(conflicts))
        for conflict in conflicts:
            log.warning("id conflict: %s; the newcomer is not stored", conflict)
