"""The analyzer's loop: consume -> pipeline -> window contributions -> conditional window writes -> commit.

The order is what makes it exactly once in effect: an offset is committed only after every window
document its messages touch has absorbed them, and a window document absorbs a message at most once
(streamd.analyzer.aggregates). Each commit carries the partition's stream time in its metadata; a member
that gets the partition (this one after a restart, or another) reads it back before its first batch, so
lateness is decided on a replay exactly as on the first run.

Kafka-side parts are the consumer's own: the offset book (with the metadata), the partition hold
(pause while the store is away, rebalance callbacks) and the crash quarantine (in the analyzer's own
directory of the state dir). A message the quarantine gives up on is left out of the windows (the
consumers dead-letter it themselves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamd import offsets, store
from streamd.analyzer.aggregates import Aggregates
from streamd.analyzer.windows import Contribution, WindowSpec, by_window, contributions
from streamd.config import Config
from streamd.consumer.book import OffsetBook, Partition
from streamd.consumer.hold import PartitionHold
from streamd.consumer.sink import retry
from streamd.kafka import ensure_topic, group_member
from streamd.lifecycle import Shutdown
from streamd.metrics import series
from streamd.outage import Outage
from streamd.pipeline import MessageBatch, Pipeline
from streamd.quarantine import Quarantine

log = logging.getLogger("streamd.analyzer")

COMMITTED_TIMEOUT = 10.0  # reading a partition's committed stream time from the group coordinator


@dataclass
class AnalyzerCounters:
    consumed: int = 0
    absorbed: int = 0  # messages taken into their windows, on time in every window length
    late: int = 0  # messages past the allowed lateness in at least one window length
    writes: int = 0  # window document updates

    def add(self, consumed: int, found: list[Contribution], writes: int) -> None:
        messages = {(c.partition, c.offset) for c in found}
        late = len({(c.partition, c.offset) for c in found if c.late})
        self.consumed += consumed
        self.absorbed += len(messages) - late
        self.late += late
        self.writes += writes
        series.ANALYZER_ABSORBED.inc(len(messages) - late)
        series.ANALYZER_LATE.inc(late)

    def __str__(self) -> str:
        return f"consumed {self.consumed}, absorbed {self.absorbed}, late {self.late}, window writes {self.writes}"


@dataclass
class InHand:
    """A batch between its fetch and its commit: its contributions, what its windows still owe, the writes done."""

    batch: MessageBatch
    times: dict[int, int] | None = None  # partition -> stream time after the batch; None until computed
    found: list[Contribution] = field(default_factory=list)
    pending: dict[str, list[Contribution]] = field(default_factory=dict)  # window id -> not yet written
    writes: int = 0


def encode_stream_time(micros: int) -> str:
    return orjson.dumps({"stream_time_us": micros}).decode()


def decode_stream_time(metadata: str | None) -> int | None:
    """The stream time committed beside an offset; None when there is none (or it is not ours)."""
    try:
        value = orjson.loads(metadata or "null")
    except orjson.JSONDecodeError:
        return None
    found = value.get("stream_time_us") if isinstance(value, dict) else None
    return found if type(found) is int else None


class Analyzer:
    """Consumes the topic in the analytics group and keeps the window documents exactly once in effect."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        consumer: Consumer,
        aggregates: Aggregates,
        shutdown: Shutdown,
        quarantine: Quarantine,
    ) -> None:
        self.batch_size = config.consumer.batch_size
        self.batch_timeout = config.consumer.batch_timeout_ms / 1000
        self.pipeline = pipeline
        self.spec = WindowSpec.from_config(config.analytics)
        self.consumer = consumer
        self.aggregates = aggregates
        self.shutdown = shutdown
        self.quarantine = quarantine
        self.book = OffsetBook(consumer, quarantine)
        self.hold = PartitionHold(consumer, self.book, quarantine, shutdown)
        # Partition -> stream time (µs, None before its first message), once read back from the group.
        self.stream_times: dict[Partition, int | None] = {}
        self.store_outage = Outage()
        self.counters = AnalyzerCounters()

    @classmethod
    def open(cls, config: Config, shutdown: Shutdown) -> Analyzer:
        pipeline = Pipeline.from_config(config)  # first, so a bad consumer.schema fails before anything opens
        ensure_topic(config, config.kafka.topic)
        # Its own client, closed with the analyzer (a store made by in_collection would not close it).
        aggregates = Aggregates(store.MessageStore(config.mongodb, collection=config.analytics.collection))
        analyzer: Analyzer | None = None

        def on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
            if analyzer is not None:
                analyzer.book.on_commit(error, partitions)

        consumer = group_member(config.kafka, "analyzer", config.analytics.group, on_commit)
        quarantine = Quarantine.open(config.state_path, "analyzer")
        analyzer = cls(config, pipeline, consumer, aggregates, shutdown, quarantine)
        hold = analyzer.hold
        consumer.subscribe(
            [config.kafka.topic], on_assign=hold.on_assign, on_revoke=hold.on_revoke, on_lost=hold.on_lost
        )
        return analyzer

    def run(self) -> None:
        try:
            self.aggregates.ensure_indexes(self.spec.group_by)
        except store.UNAVAILABLE as exc:
            log.warning("store unavailable at start-up (%s); analyzing anyway", type(exc).__name__)
        while not self.shutdown.requested:
            delivered = False
            for portion in self.quarantine.portions(self.hold.receive(self.batch_size, self.batch_timeout)):
                outcome = self.absorb(portion)
                if outcome is None:
                    continue
                if not outcome:
                    return  # stopping with windows unwritten: not committed, so consumed again
                delivered = True
            if delivered or self.book.retry_due():
                self.book.commit()

    def close(self, clean: bool = True) -> None:
        self.consumer.close()
        self.aggregates.store.close()
        self.quarantine.close(clean)

    def absorb(self, messages: list[Message]) -> bool | None:
        """One portion into its windows, then booked for commit: True; False when stopping first; None if empty."""
        self.forget(*self.hold.take_changes())
        messages = self.hold.owned(messages)
        for event in [m for m in messages if offsets.is_reset(m)]:
            self.forget({self.hold.restart(event)}, set())
        messages = [m for m in messages if not offsets.is_reset(m)]
        condemned = self.quarantine.condemned(messages[0]) if len(messages) == 1 else None
        flight = None
        if condemned is not None:
            log.error("%s; left out of the windows", condemned)
            batch = MessageBatch()
            batch.next_offsets[condemned.topic, condemned.partition] = condemned.offset + 1
        else:
            flight = self.quarantine.begin(messages)
            batch = self.pipeline.batch(messages)
        for error in batch.errors:
            self.hold.kafka_error(error)
        if not batch.next_offsets:
            self.quarantine.done(flight)
            return None
        self.hold.messages_flow()
        try:
            delivered = self.deliver(batch)
        finally:
            self.hold.resume()
        if delivered:
            self.quarantine.done(flight)
        return delivered

    def deliver(self, batch: MessageBatch) -> bool:
        """Stream times, contributions, window writes, waiting while the store or the coordinator is away;
        then the offsets are booked with the stream times. False when a stop request came first."""
        hand = InHand(batch)
        if not retry(lambda: self.attempt(hand), self.hold.wait):
            log.warning("stopping with window updates unwritten; their messages stay uncommitted for a replay")
            return False
        if hand.times is None or not batch.next_offsets:
            return True  # every partition moved away before anything was written
        metadata = {}
        for key in batch.next_offsets:
            stream_time = hand.times.get(key[1])
            self.stream_times[key] = stream_time
            if stream_time is not None:
                metadata[key] = encode_stream_time(stream_time)
        self.book.finished(batch.next_offsets, metadata)
        self.counters.add(len(batch), hand.found, hand.writes)
        return True

    def attempt(self, hand: InHand) -> bool:
        """One try at writing what the batch in hand still owes its windows."""
        batch = hand.batch
        self.drop_moved(batch)
        if not batch.next_offsets:
            return True  # every partition moved: nothing of this batch is ours to write
        if hand.times is None:
            if not self.read_stream_times(set(batch.next_offsets)):
                return False
            hand.times = {p: t for (_, p), t in self.stream_times.items() if t is not None}
            hand.found = contributions(batch.documents, self.spec, hand.times)
            hand.pending = by_window(hand.found)
        try:
            hand.writes += self.aggregates.absorb(hand.pending)
        except store.UNAVAILABLE as exc:
            if self.store_outage.failed():
                log.warning(
                    "store unavailable (%s); holding %d window updates, partitions paused, retrying with backoff",
                    type(exc).__name__,
                    len(hand.pending),
                )
            return False
        if (recovery := self.store_outage.recovered()) is not None:
            log.info("store is back after %.1fs; resuming", recovery.seconds)
        return True

    def drop_moved(self, batch: MessageBatch) -> None:
        moved, restarted = self.hold.take_changes()
        self.forget(moved, restarted)
        gone = moved | restarted
        if gone & set(batch.next_offsets):
            # Their new owner (or the restarted log) replays them; windows written meanwhile absorbed them.
            batch.drop(gone)

    def forget(self, moved: set[Partition], restarted: set[Partition]) -> None:
        for key in moved | restarted:
            self.stream_times.pop(key, None)

    def read_stream_times(self, partitions: set[Partition]) -> bool:
        """Read back the stream time committed with each of these partitions not known yet; False if Kafka
        did not answer (the batch is held and this is tried again)."""
        unknown = [TopicPartition(*key) for key in partitions if key not in self.stream_times]
        if not unknown:
            return True
        try:
            committed = self.consumer.committed(unknown, timeout=COMMITTED_TIMEOUT)
        except KafkaException as exc:
            log.warning("could not read the committed stream times (%s); retrying", exc.args[0].str())
            return False
        for tp in committed:
            self.stream_times[tp.topic, tp.partition] = decode_stream_time(tp.metadata) if tp.offset >= 0 else None
        return True
