"""The sink: a batch's documents into the store, then its rejections into the dead-letter topic.

The first attempt at a batch's write can run in the writer thread (start, see streamd.consumer.writer)
while the loop prepares the next batch; its outcome is taken, and any further attempt made, by store_batch().
A batch whose documents a route stage sent to other collections is written with one insert per
collection. Either may be away; the sink then holds the batch and tries again with exponential backoff and jitter,
logging each outage once when it starts and once when it ends. What the store refuses for good (a
document it will never take) becomes a store-stage rejection, dead-lettered with the rest.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

from pymongo.errors import OperationFailure

from streamd import store
from streamd.consumer.conflicts import ConflictCheck
from streamd.consumer.counts import ConsumerCounters
from streamd.consumer.writer import StoreWriter
from streamd.dead_letter import DeadLetterQueue
from streamd.metrics import series
from streamd.outage import Outage
from streamd.pipeline import MessageBatch

log = logging.getLogger("streamd.consumer")

RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
DEAD_LETTER_WAIT = 1.0  # longest wait for dead-letter acknowledgements before pausing and polling again

Wait = Callable[[float], bool]  # hold for this many seconds between attempts; False when a stop is requested
Written = list[tuple[store.MessageStore, store.WriteOutcome]]  # the outcome of each collection's insert
# The store kind's own indexing of existing collections, beyond what the wire protocol can ask for (the local
# FerretDB's _id index, see streamd.stack.ferretdb_ids).
IndexTables = Callable[[store.StoreKind, list[str]], object]


class Sink:
    """Store, then dead-letter: a batch is delivered once both took what is theirs."""

    def __init__(
        self,
        message_store: store.MessageStore,
        dead_letters: DeadLetterQueue,
        counters: ConsumerCounters,
        routed: tuple[str, ...] = (),
        index_tables: IndexTables | None = None,
        writer: StoreWriter | None = None,
    ) -> None:
        self.store = message_store
        self.writer = writer or StoreWriter()
        self.routed = routed  # the collections route stages name, beside mongodb.collection
        self.index_tables = index_tables
        self.dead_letters = dead_letters
        self.counters = counters
        self.conflicts = ConflictCheck(counters)
        self.indexes_ready = False
        self.store_outage = Outage()
        self.dead_letter_outage = Outage()

    def prepare(self) -> None:
        if not self.store.writes_acknowledged():
            # Respected, not overridden (the uri is the operator's word), but commit-after-write means nothing then.
            log.warning(
                "mongodb.uri sets w=0: the store acknowledges no write, so offsets are committed for messages it may "
                "never have stored; remove w=0 (w=majority keeps every committed message through a failover)"
            )
        try:
            self.ensure_indexes()
        except store.UNAVAILABLE as exc:
            # Indexes serve the API's reads, not our writes: consume anyway and try again before each write.
            log.warning("store unavailable at start-up (%s: %s); consuming anyway", type(exc).__name__, exc)

    def ensure_indexes(self) -> None:
        if not self.indexes_ready:
            # The API reads the routed collections as it reads the main one, so they get the same indexes.
            for target in (None, *self.routed):
                self.collection(target).ensure_indexes()
            if self.index_tables is not None:
                # Here, because the collections exist now (ensure_indexes creates them) and before the first
                # write; every consumer asks, and asking again is harmless.
                self.index_tables(self.store.kind(), [self.store.name, *self.routed])
            self.indexes_ready = True

    def deliver(self, batch: MessageBatch, wait: Wait, started: Future[Written] | None = None) -> bool:
        """Store the batch and dead-letter its rejections, waiting between attempts while either is away.

        False when a stop request came first; the batch is then left uncommitted.
        """
        return self.store_batch(batch, wait, started) and self.dead_letter(batch, wait)

    def start(self, batch: MessageBatch) -> Future[Written]:
        """The first attempt at the batch's write, in the writer thread; store_batch() takes its outcome."""
        return self.writer.start(lambda: self.write_batch(batch))

    def store_batch(self, batch: MessageBatch, wait: Wait, started: Future[Written] | None = None) -> bool:
        """Write the batch's documents (the first attempt is `started`, when given), waiting between attempts
        while the store is away. False when a stop request came first."""
        first = [started] if started is not None else []
        if not retry(lambda: self.try_store(batch, first.pop() if first else None), wait):
            log.warning("stopping with %d messages unstored; they stay uncommitted for a replay", len(batch))
            return False
        return True

    def dead_letter(self, batch: MessageBatch, wait: Wait) -> bool:
        """Dead-letter the batch's rejections, waiting while the topic does not acknowledge them."""
        if batch.rejections:
            self.dead_letters.submit(batch.rejections)
            if not retry(self.try_dead_letter, wait):
                log.warning("stopping before the dead-letter topic acknowledged; the batch stays uncommitted")
                return False
        return True

    def write_batch(self, batch: MessageBatch) -> Written:
        """One write of the batch's documents (in the writer thread when start()ed)."""
        self.ensure_indexes()
        with series.STORE_WRITE_SECONDS.time():
            return self.write(batch)

    def try_store(self, batch: MessageBatch, started: Future[Written] | None = None) -> bool:
        """One attempt at writing the batch's documents: the outcome of `started`, or a write made now."""
        try:
            written = started.result() if started is not None else self.write_batch(batch)
        # A command-level refusal (e.g. not authorized) is about the store, not about one document: the
        # batch waits for an operator to fix it rather than crash-looping this consumer.
        except (*store.UNAVAILABLE, store.StoreBusy, OperationFailure) as exc:
            if self.store_outage.failed():
                log.warning(
                    "store unavailable (%s: %s); holding %d messages uncommitted, partitions paused, "
                    "retrying with backoff",
                    type(exc).__name__,
                    exc,
                    len(batch),
                )
            return False
        outcome = _combined([outcome for _, outcome in written])
        refused = batch.refuse(outcome.refused)
        self.counters.add_rejected(refused)
        for rejection in refused:
            log.warning("%s", rejection)
        if (recovery := self.store_outage.recovered()) is not None:
            log.info("store is back after %.1fs; resuming", recovery.seconds)
        self.counters.add_written(outcome)
        series.stored_batch(len(batch), batch.documents, outcome.duplicates)
        for target, part in written:
            if part.duplicated:
                self.conflicts.check(target, part.duplicated)
        return True

    def collection(self, target: str | None) -> store.MessageStore:
        """Where a target's documents go: the store's own collection for None, else a routed one on its client."""
        return self.store if target is None else self.store.in_collection(target)

    def write(self, batch: MessageBatch) -> Written:
        """One insert per target collection; each outcome's `refused` indexes are the batch's."""
        if not any(batch.targets):  # no document routed: the common case, one insert as ever
            return [(self.store, self.store.insert_batch(batch.documents))]
        written = []
        for target, indexes in batch.by_target().items():
            collection = self.collection(target)
            outcome = collection.insert_batch([batch.documents[index] for index in indexes])
            refused = {indexes[index]: why for index, why in outcome.refused.items()}
            written.append(
                (collection, store.WriteOutcome(outcome.inserted, outcome.duplicates, outcome.duplicated, refused))
            )
        return written

    def try_dead_letter(self) -> bool:
        """One wait for the dead-letter topic's acknowledgements."""
        settled = self.dead_letters.settle(DEAD_LETTER_WAIT)
        acknowledged = settled.acknowledged
        if acknowledged:
            self.counters.add_dead_lettered(acknowledged)
            reasons = Counter(rejection.reason for rejection in acknowledged)
            log.warning(
                "dead-lettered %d messages to %s (%s); first: %s",
                len(acknowledged),
                self.dead_letters.topic,
                ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())),
                acknowledged[0],
            )
            for rejection in acknowledged[1:]:
                log.debug("%s", rejection)
        if not settled.done:
            if self.dead_letter_outage.failed():
                log.warning(
                    "dead-letter topic %s has not acknowledged yet; holding the batch uncommitted, partitions paused",
                    self.dead_letters.topic,
                )
        elif (recovery := self.dead_letter_outage.recovered()) is not None:
            log.info("dead-letter topic acknowledged after %.1fs; resuming", recovery.seconds)
        return settled.done

    def close(self) -> None:
        self.writer.close()
        self.dead_letters.close()
        self.store.close()


def _combined(outcomes: list[store.WriteOutcome]) -> store.WriteOutcome:
    if len(outcomes) == 1:
        return outcomes[0]
    return store.WriteOutcome(
        sum(outcome.inserted for outcome in outcomes),
        sum(outcome.duplicates for outcome in outcomes),
        tuple(document for outcome in outcomes for document in outcome.duplicated),
        {index: why for outcome in outcomes for index, why in outcome.refused.items()},
    )


def retry(attempt: Callable[[], bool], wait: Wait) -> bool:
    """Run `attempt` until it succeeds, with exponential backoff and jitter; False when stopping first."""
    delay = RETRY_INITIAL
    while not attempt():
        # Jitter keeps the consumers of a group from hammering a recovering server in step.
        if not wait(random.uniform(delay / 2, delay)):
            return False
        delay = min(delay * 2, RETRY_MAX)
    return True
