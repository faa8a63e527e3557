"""The consumer child: Kafka in, MongoDB at rest, and an offset committed only once its message is safe.

Each batch goes fetch -> store -> dead-letter -> commit. "Safe" means stored, or acknowledged by the
dead-letter topic; a committed offset therefore never covers a message that is in neither place.
Writes are idempotent (the message id is the `_id`), which is what lets this module be simple about
failure: whenever in doubt it does not commit, and the replay that follows only produces duplicates
the store skips.

While the store or the dead-letter topic is unavailable the consumer keeps its batch, pauses its
partitions and keeps polling: it stays a member of the group (max.poll.interval.ms) and serves
rebalances without fetching more, and resumes by itself once the write goes through.

Every consumer process joins the same group with cooperative-sticky assignment. When partitions are
revoked, the offsets of finished batches are committed first (so the new owner starts after them), and
whatever of an unfinished batch belongs to them is dropped: the new owner consumes it from the last
commit, so no message is lost and none is written by two consumers.

A message that kills the consumer process itself (not an exception of a stage: those become dead
letters in streamd.pipeline) is handled by streamd.quarantine: each batch is recorded as in flight,
and after repeated deaths on one message alone, that message is dead-lettered with reason `crash`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bson.errors import InvalidDocument
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pymongo.errors import BulkWriteError, OperationFailure

from streamd import ids, offsets, store
from streamd.config import Config, ConfigError, ConsumerConfig
from streamd.dead_letter import DeadLetterQueue
from streamd.kafka import KafkaUnavailable, ensure_topic, make_client
from streamd.lifecycle import Shutdown
from streamd.metrics import series
from streamd.pipeline import MessageBatch, Pipeline, Rejection
from streamd.quarantine import Quarantine

log = logging.getLogger(__name__)

RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
HOLD_POLL = 0.2  # longest poll() while holding a batch, and so the delay in noticing a stop
DEAD_LETTER_WAIT = 1.0  # longest wait for dead-letter acknowledgements before pausing and polling again
# Telling replays from id conflicts may take at most this share of any such window of a consumer's time.
CONFLICT_CHECK_SHARE = 0.1
CONFLICT_CHECK_WINDOW = 10.0
COMMIT_RETRY = 1.0  # while idle, how often a refused commit is tried again

# Per-document write errors after which the same write can succeed later: the server was stepping
# down, shutting down or out of time. Any other per-document error is the document's own fault.
RETRYABLE_WRITE_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}  # MongoDB's error codes
)

Partition = tuple[str, int]


class StoreBusy(Exception):
    """The store answered but could not take some of the documents right now; the batch is written again."""


@dataclass
class ConsumerCounters:
    # Each count also feeds its Prometheus series (streamd.metrics.series), summed over every consumer.
    consumed: int = series.Tally(series.CONSUMED)
    stored: int = series.Tally(series.STORED)
    duplicates: int = series.Tally(series.DUPLICATES)
    id_conflicts: int = series.Tally(series.ID_CONFLICTS)  # duplicates that are another message, not a replay
    unchecked: int = series.Tally(series.DUPLICATES_UNCHECKED)  # duplicates not looked up (time budget)
    # by Rejection.reason, when the pipeline rejects
    rejected: Counter[str] = field(default_factory=series.LabelTally.of(series.REJECTED))
    # by reason, once the dead-letter topic acked
    dead_lettered: Counter[str] = field(default_factory=series.LabelTally.of(series.DEAD_LETTERED))
    dropped: int = 0  # messages of revoked partitions dropped from an unfinished batch (their new owner has them)

    def __str__(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dead_lettered.items()))
        return (
            f"consumed {self.consumed}, stored {self.stored}, duplicates {self.duplicates}"
            + (f" ({self.id_conflicts} id conflicts)" if self.id_conflicts else "")
            + ", "
            f"rejected {self.rejected.total()}, dead-lettered {self.dead_lettered.total()}"
            + (f" ({reasons})" if reasons else "")
        )


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


class BatchConsumer:
    """Consumes batches from the group, stores or dead-letters them, then commits them."""

    def __init__(
        self,
        settings: ConsumerConfig,
        pipeline: Pipeline,
        consumer: Consumer,
        message_store: store.MessageStore,
        dead_letters: DeadLetterQueue,
        shutdown: Shutdown,
        quarantine: Quarantine,
    ) -> None:
        self.batch_size = settings.batch_size
        self.batch_timeout = settings.batch_timeout_ms / 1000
        self.pipeline = pipeline
        self.consumer = consumer
        self.store = message_store
        self.dead_letters = dead_letters
        self.shutdown = shutdown
        self.quarantine = quarantine
        self.counters = ConsumerCounters()
        self.indexes_ready = False
        self.assigned: set[Partition] = set()
        # Finished (stored or dead-lettered) but not yet known to be committed: a commit refused during a
        # rebalance is tried again with the next batch, when idle, or on revoke.
        self.uncommitted: dict[Partition, int] = {}
        self.retry_commit = False  # a commit was refused since the last one was sent
        self.next_commit_retry = 0.0
        self.conflict_budget = TimeBudget(CONFLICT_CHECK_SHARE, CONFLICT_CHECK_WINDOW)
        self.in_flight: MessageBatch | None = None
        self.strays: list[Message] = []  # delivered while holding; they go first into the next batch
        self.paused = False
        self.store_down_since: float | None = None
        self.dead_letter_down_since: float | None = None
        self.kafka_failing: int | None = None  # code of the latest Kafka error, until messages flow again
        self.commit_failing: int | None = None

    @classmethod
    def open(cls, config: Config, shutdown: Shutdown) -> BatchConsumer:
        """Create the topics when missing, join the group and connect the store."""
        pipeline = Pipeline.from_config(config)  # first, so a bad consumer.schema fails before anything opens
        ensure_topic(config, config.kafka.topic)
        dead_letters = DeadLetterQueue.open(config)
        message_store = store.MessageStore(config.mongodb)
        batches: BatchConsumer | None = None

        def on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
            if batches is not None:
                batches.on_commit(error, partitions)

        consumer = make_client(
            Consumer,
            config.kafka,
            "consumer",
            {
                "group.id": config.consumer.group,
                "enable.auto.commit": False,
                "on_commit": on_commit,
                # librdkafka hands over an event instead of moving a partition by itself; streamd.offsets
                # decides where it restarts, and says so when the topic was recreated.
                "auto.offset.reset": "error",
                # Incremental rebalancing: a consumer joining or leaving moves only the partitions that
                # must move, instead of stopping the whole group.
                "partition.assignment.strategy": "cooperative-sticky",
            },
            defaults={
                # A consumer killed outright (SIGKILL, OOM) leaves its partitions idle until its session
                # times out: the supervisor restarts it within a second, but as a new member. librdkafka's
                # 45 s suits far-away cloud brokers; heartbeats come from librdkafka's own thread, so a busy
                # batch never delays them. kafka.client can set another value.
                "session.timeout.ms": 10_000,
            },
        )
        # Before joining the group, so that what a dead consumer had in flight is suspect before it is fetched
        # again; last, so that nothing failing after it leaves this consumer's record behind.
        quarantine = Quarantine.open(config.state_path)
        batches = cls(config.consumer, pipeline, consumer, message_store, dead_letters, shutdown, quarantine)
        consumer.subscribe(
            [config.kafka.topic], on_assign=batches.on_assign, on_revoke=batches.on_revoke, on_lost=batches.on_lost
        )
        return batches

    def run(self) -> None:
        """Fetch, store, dead-letter, commit: the order that makes a committed offset mean the message is safe."""
        self.prepare_store()
        while not self.shutdown.requested:
            delivered = False
            # One portion, the whole batch, unless a consumer died on some of these messages: then each of
            # those is a portion of its own (streamd.quarantine). Portions keep the offset order, so what
            # is delivered before a stop can be committed.
            for portion in self.quarantine.portions(self.receive()):
                batch = self.process(portion)
                if not batch:
                    continue
                if not self.deliver(batch):
                    return  # stopping with the batch unfinished: not committed, so it is consumed again
                self.quarantine.done()
                self.uncommitted.update(batch.next_offsets)
                delivered = True
            retry_due = self.uncommitted and self.retry_commit and time.monotonic() >= self.next_commit_retry
            if delivered or retry_due:
                self.commit_finished()

    def close(self, clean: bool = True) -> None:
        """Leave the group now (so its partitions move at once) and disconnect the store.

        Closing revokes every partition, and on_revoke commits what is finished. `clean` is False when
        leaving on an exception: the messages in flight then stay recorded, as after any other death.
        """
        self.consumer.close()
        self.dead_letters.close()
        self.store.close()
        self.quarantine.close(clean)

    def prepare_store(self) -> None:
        try:
            self.ensure_indexes()
        except store.UNAVAILABLE as exc:
            # Indexes serve the API's reads, not our writes: consume anyway and try again before each write.
            log.warning("store unavailable at start-up (%s: %s); consuming anyway", type(exc).__name__, exc)

    def ensure_indexes(self) -> None:
        if not self.indexes_ready:
            self.store.ensure_indexes()
            self.indexes_ready = True

    # --- fetch -----------------------------------------------------------------------------------

    def fetch(self) -> MessageBatch:
        return self.process(self.receive())

    def receive(self) -> list[Message]:
        messages = self.consumer.consume(self.batch_size, self.batch_timeout)
        if self.strays:
            messages, self.strays = self.strays + messages, []
        return messages

    def process(self, messages: list[Message]) -> MessageBatch:
        """The pipeline's stages over these messages, recorded as in flight first (streamd.quarantine)."""
        # consume() serves rebalances, and so does delivering an earlier portion: a message of a partition
        # revoked meanwhile belongs to the partition's new owner now.
        messages = [m for m in messages if m.error() is not None or (m.topic(), m.partition()) in self.assigned]
        restarted = {self.restart(m) for m in messages if offsets.is_reset(m)}
        messages = [m for m in messages if not offsets.is_reset(m)]
        condemned = self.quarantine.condemned(messages[0]) if len(messages) == 1 else None
        if condemned is not None:
            batch = MessageBatch(rejections=[condemned])
            batch.next_offsets[condemned.topic, condemned.partition] = condemned.offset + 1
            log.error("%s", condemned)
        else:
            self.quarantine.begin(messages)
            batch = self.pipeline.batch(messages)
        for key in restarted:
            # Fetched before the restart, from the log that is gone: their offsets mean nothing in the new one.
            batch.next_offsets.pop(key, None)
        for error in batch.errors:
            self.kafka_error(error)
        if batch and self.kafka_failing is not None:
            log.info("kafka: messages flow again")
            self.kafka_failing = None
        self.counters.consumed += len(batch)
        self.counters.rejected.update(rejection.reason for rejection in batch.rejections)
        return batch

    def kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        # librdkafka reconnects by itself; while a broker is away it reports the same error over and over.
        if error.code() != self.kafka_failing:
            self.kafka_failing = error.code()
            log.warning("kafka: %s (repeats are not logged)", error.str())

    # --- deliver: store, then dead-letter ---------------------------------------------------------

    def deliver(self, batch: MessageBatch) -> bool:
        """Store the batch and dead-letter its rejections, holding while either is unavailable.

        False when a stop request came first; the batch is then left uncommitted.
        """
        self.in_flight = batch
        try:
            if not self.retry(lambda: self.try_store(batch)):
                log.warning("stopping with %d messages unstored; they stay uncommitted for a replay", len(batch))
                return False
            if batch.rejections:
                self.dead_letters.submit(batch.rejections)
                if not self.retry(self.try_dead_letter):
                    log.warning("stopping before the dead-letter topic acknowledged; the batch stays uncommitted")
                    return False
            return True
        finally:
            self.in_flight = None
            self.resume()

    def retry(self, attempt: Callable[[], bool]) -> bool:
        """Run `attempt` until it succeeds, with exponential backoff and jitter; False when stopping first."""
        delay = RETRY_INITIAL
        while not attempt():
            # Jitter keeps the consumers of a group from hammering a recovering server in step.
            if not self.hold(random.uniform(delay / 2, delay)):
                return False
            delay = min(delay * 2, RETRY_MAX)
        return True

    def try_store(self, batch: MessageBatch) -> bool:
        """One attempt at writing the batch's documents. Logs the store going away and coming back, once each."""
        try:
            self.ensure_indexes()
            outcome = self.write(batch)
        # A command-level refusal (e.g. not authorized) is about the store, not about one document: the
        # batch waits for an operator to fix it rather than crash-looping this consumer.
        except (*store.UNAVAILABLE, StoreBusy, OperationFailure) as exc:
            if self.store_down_since is None:
                self.store_down_since = time.monotonic()
                log.warning(
                    "store unavailable (%s: %s); holding %d messages uncommitted, partitions paused, "
                    "retrying with backoff",
                    type(exc).__name__,
                    exc,
                    len(batch),
                )
            return False
        if self.store_down_since is not None:
            log.info("store is back after %.1fs; resuming", time.monotonic() - self.store_down_since)
            self.store_down_since = None
        self.counters.stored += outcome.inserted
        self.counters.duplicates += outcome.duplicates
        series.stored_batch(len(batch), batch.documents, outcome.duplicates)
        if outcome.duplicated:
            self.report_conflicts(outcome.duplicated)
        return True

    def report_conflicts(self, duplicated: tuple[dict, ...]) -> None:
        """A duplicate is a replay or the same message sent twice, or else two messages claiming one id: say so.

        A diagnosis, not part of the delivery: it may take at most CONFLICT_CHECK_SHARE of the consumer's
        time. On FerretDB the lookup scans the collection, and a replay after a crash brings whole batches
        of duplicates, handled one message at a time when suspect (streamd.quarantine); checking each would
        stall the consumer (and so the group's rebalance) for minutes. What the budget leaves out is counted
        as unchecked; `streamd verify` checks every message.
        """
        # A fallback id is the message's own Kafka coordinates: its duplicate can only be a replay.
        candidates = tuple(document for document in duplicated if not ids.is_fallback_id(document["_id"]))
        if not candidates:
            return
        if not self.conflict_budget.left():
            self.counters.unchecked += len(candidates)
            return
        try:
            with self.conflict_budget.spending():
                conflicts = self.store.conflicts(candidates)
        except (*store.UNAVAILABLE, OperationFailure) as exc:
            # The batch is stored; a diagnosis is not worth holding it for.
            log.warning(
                "could not check %d duplicate ids for conflicts (%s: %s)", len(candidates), type(exc).__name__, exc
            )
            return
        self.counters.id_conflicts += len(conflicts)
        for conflict in conflicts:
            log.warning("id conflict: %s; the newcomer is not stored", conflict)

    def write(self, batch: MessageBatch) -> store.WriteOutcome:
        """insert_batch, turning documents the store refuses for good into store-stage rejections."""
        try:
            with series.STORE_WRITE_SECONDS.time():
                return self.store.insert_batch(batch.documents)
        except BulkWriteError as exc:
            return self.refuse_documents(batch, exc.details)
        except InvalidDocument:
            # pymongo refused the whole batch before sending it (e.g. a document over 16 MB): find out which.
            return self.write_one_by_one(batch)

    def refuse_documents(self, batch: MessageBatch, details: dict) -> store.WriteOutcome:
        errors = details.get("writeErrors", [])
        if details.get("writeConcernErrors") or any(error["code"] in RETRYABLE_WRITE_CODES for error in errors):
            raise StoreBusy(errors[0]["errmsg"] if errors else "write concern not satisfied")
        duplicated = tuple(batch.documents[error["index"]] for error in errors if error["code"] == store.DUPLICATE_KEY)
        refused = {
            error["index"]: f"the store refused the document: {error.get('errmsg', '')} (code {error['code']})"
            for error in errors
            if error["code"] != store.DUPLICATE_KEY
        }
        self.log_refused(batch.refuse(refused))
        return store.WriteOutcome(details.get("nInserted", 0), len(duplicated), duplicated)

    def write_one_by_one(self, batch: MessageBatch) -> store.WriteOutcome:
        inserted = 0
        duplicated: list[dict] = []
        refused: dict[int, str] = {}
        for index, document in enumerate(batch.documents):
            try:
                outcome = self.store.insert_batch([document])
            except BulkWriteError as exc:
                [error] = exc.details["writeErrors"]
                if error["code"] in RETRYABLE_WRITE_CODES:
                    raise StoreBusy(error["errmsg"]) from None
                refused[index] = f"the store refused the document: {error.get('errmsg', '')} (code {error['code']})"
            except InvalidDocument as exc:
                refused[index] = f"the document cannot be stored: {exc}"
            else:
                inserted += outcome.inserted
                duplicated += outcome.duplicated
        self.log_refused(batch.refuse(refused))
        return store.WriteOutcome(inserted, len(duplicated), tuple(duplicated))

    def log_refused(self, rejections: list[Rejection]) -> None:
        self.counters.rejected.update(rejection.reason for rejection in rejections)
        for rejection in rejections:
            log.warning("%s", rejection)

    def try_dead_letter(self) -> bool:
        """One wait for the dead-letter topic's acknowledgements. Logs it going away and coming back, once each."""
        settled = self.dead_letters.settle(DEAD_LETTER_WAIT)
        acknowledged = self.dead_letters.take_acknowledged()
        if acknowledged:
            self.counters.dead_lettered.update(rejection.reason for rejection in acknowledged)
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
        if not settled and self.dead_letter_down_since is None:
            self.dead_letter_down_since = time.monotonic()
            log.warning(
                "dead-letter topic %s has not acknowledged yet; holding the batch uncommitted, partitions paused",
                self.dead_letters.topic,
            )
        elif settled and self.dead_letter_down_since is not None:
            log.info(
                "dead-letter topic acknowledged after %.1fs; resuming", time.monotonic() - self.dead_letter_down_since
            )
            self.dead_letter_down_since = None
        return settled

    # --- holding a batch --------------------------------------------------------------------------

    def hold(self, seconds: float) -> bool:
        """Wait with every assigned partition paused, still serving the group; False when a stop is requested."""
        if not self.paused:
            self.consumer.pause(self.consumer.assignment())
            self.paused = True
        deadline = time.monotonic() + seconds
        while not self.shutdown.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            # poll() keeps this member in the group and runs the rebalance callbacks; paused partitions
            # hand out nothing.
            message = self.consumer.poll(min(left, HOLD_POLL))
            if message is not None:
                self.stray(message)
        return False

    def stray(self, message: Message) -> None:
        """A message delivered while holding (its partition was not paused yet): keep it for the next batch."""
        error = message.error()
        if offsets.is_reset(message):
            self.restart(message)
            return
        if error is not None:
            self.kafka_error(error)
            return
        self.strays.append(message)
        self.consumer.pause([TopicPartition(message.topic(), message.partition())])

    def resume(self) -> None:
        if self.paused:
            self.consumer.resume(self.consumer.assignment())
            self.paused = False

    def restart(self, event: Message) -> Partition:
        """Move a partition librdkafka has no offset for to its earliest offset (see streamd.offsets)."""
        key = (event.topic(), event.partition())
        if key not in self.assigned:
            return key  # revoked within the same consume(): its new owner decides
        restart = offsets.restart_point(self.consumer, event)
        # librdkafka stopped fetching the partition: only a new assignment starts it again (seek is refused).
        self.consumer.incremental_unassign([TopicPartition(*key)])
        self.consumer.incremental_assign([restart.assignment])
        if self.paused:
            self.consumer.pause([restart.assignment])
        if not restart.out_of_range:
            return key  # a partition the group never committed: its earliest offset is the normal start
        log.error("%s", restart)
        series.OFFSET_RESETS.labels(*key).inc()
        self.quarantine.restarted(*key)
        if self.in_flight is not None:
            self.in_flight.next_offsets.pop(key, None)
        if restart.start is not None:
            # Committed now, so the group's offset (and /ready, lag) stop pointing beyond the log at once.
            self.uncommitted[key] = restart.start
            self.commit_finished()
        return key

    # --- commit ----------------------------------------------------------------------------------

    def commit_finished(self) -> None:
        """Ask for the offsets of finished batches to be committed; on_commit learns the outcome.

        Asynchronous, so a broker that is away does not stall the loop (a synchronous commit waits for
        the group coordinator for as long as the session timeout).
        """
        self.retry_commit = False
        if not self.uncommitted:
            return
        try:
            self.consumer.commit(offsets=self._offsets(self.uncommitted), asynchronous=True)
        except KafkaException as exc:
            self.commit_failed(exc.args[0])

    def commit_now(self, partitions: set[Partition]) -> None:
        """Commit the finished offsets of these partitions and wait for the answer (on revoke)."""
        offsets = self._offsets({key: o for key, o in self.uncommitted.items() if key in partitions})
        if not offsets:
            return
        try:
            self.on_commit(None, self.consumer.commit(offsets=offsets, asynchronous=False) or [])
        except KafkaException as exc:
            self.commit_failed(exc.args[0])

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The outcome of a commit (served inside consume() and poll()); what went through is forgotten."""
        if error is not None:
            self.commit_failed(error)
            return
        for partition in partitions:
            key = (partition.topic, partition.partition)
            if partition.error is not None:
                self.commit_failed(partition.error)
            else:
                if self.uncommitted.get(key) == partition.offset:
                    del self.uncommitted[key]  # a later batch's offset, if any, stays until its own answer
                self.quarantine.committed(partition.topic, partition.partition, partition.offset)
        if not self.uncommitted and self.commit_failing is not None:
            log.info("commits go through again")
            self.commit_failing = None

    def commit_failed(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        self.retry_commit = True
        self.next_commit_retry = time.monotonic() + COMMIT_RETRY
        # Typically a rebalance in progress: the offsets are kept and committed with the next batch, or
        # on revoke if the partition moves away (its new owner then starts after them).
        if error.code() != self.commit_failing:
            self.commit_failing = error.code()
            log.warning("commit refused (%s); keeping the offsets to commit again", error.str())

    @staticmethod
    def _offsets(offsets: dict[Partition, int]) -> list[TopicPartition]:
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]

    # --- rebalance callbacks (run inside consume() and poll()) -------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        log.info("assigned %s", _partition_list(partitions))
        if self.paused:
            # Holding a batch: new partitions wait too, or poll() would hand out their messages.
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        # Still the owner here: committing now lets the new owner start after what is finished.
        self.commit_now(revoked)
        self.forget(revoked)
        log.info("revoked %s", _partition_list(partitions))

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No longer a member, so a commit would be refused; the new owners replay from the last commit.
        self.forget({(p.topic, p.partition) for p in partitions})
        log.warning(
            "lost %s (session timed out); their new owners replay from the last commit", _partition_list(partitions)
        )

    def forget(self, partitions: set[Partition]) -> None:
        self.assigned -= partitions
        for key in partitions:
            self.uncommitted.pop(key, None)
        self.strays = [m for m in self.strays if (m.topic(), m.partition()) not in partitions]
        if self.in_flight is not None:
            dropped = self.in_flight.drop(partitions)
            if dropped:
                self.counters.dropped += dropped
                log.info("dropped %d unfinished messages of partitions that moved; their new owner has them", dropped)


# What a consumer child reads of the config: a reload that changes one of these restarts it.
SECTIONS = frozenset({"kafka", "mongodb", "consumer", "logging"})


def run(config: Config, shutdown: Shutdown) -> int:
    """The consumer child's main; returns its exit status."""
    try:
        batches = BatchConsumer.open(config, shutdown)
    except (KafkaUnavailable, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    log.info("consuming %s as group %s", config.kafka.topic, config.consumer.group)
    clean = False
    try:
        batches.run()
        clean = True
    finally:
        batches.close(clean)
        log.info("stopped: %s", batches.counters)
    return 0


def _partition_list(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
