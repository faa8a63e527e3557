"""The consumer's loop: fetch -> quarantine portions -> pipeline -> sink -> book the offsets -> commit.

Under a backlog the loop overlaps two batches: a full batch is written in the writer thread while the
next one is prepared (streamd.consumer.writer). The rule does not change: a batch's offsets are booked
only after its write returned and its rejections were acknowledged, in the order the batches were
fetched. Nothing is being written while the loop calls into Kafka (consume, poll), so no rebalance
callback ever runs beside a write in flight: a write is started after the fetch and taken before any wait.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Future
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streamd import offsets, store
from streamd.config import Config, ConsumerConfig
from streamd.consumer.book import OffsetBook
from streamd.consumer.counts import ConsumerCounters
from streamd.consumer.hold import PartitionHold
from streamd.consumer.sink import Sink, Written
from streamd.consumer.writer import StoreWriter
from streamd.dead_letter import DeadLetterQueue
from streamd.kafka import ensure_topic, group_member
from streamd.lifecycle import Shutdown
from streamd.pipeline import MessageBatch, Pipeline
from streamd.quarantine import Flight, Quarantine
from streamd.stack.ferretdb_ids import index_id_lookups
from streamd.stages import routed_collections

log = logging.getLogger("streamd.consumer")


@dataclass
class Prepared:
    """A batch through the pipeline, and its entry in the quarantine's in-flight record (None for a condemned
    message, which is not handled)."""

    batch: MessageBatch
    flight: Flight | None


class BatchConsumer:
    """Consumes batches from the group, stores or dead-letters them, then commits them.

    The state the loop holds is here: the batches in hand (`in_hand`, between fetching and booking their
    offsets), among them a full batch prepared but not yet written (`waiting`). Everything else belongs to a
    part: the offset book, the partition hold, the sink.
    """

    def __init__(
        self,
        settings: ConsumerConfig,
        pipeline: Pipeline,
        consumer: Consumer,
        sink: Sink,
        shutdown: Shutdown,
        quarantine: Quarantine,
    ) -> None:
        self.batch_size = settings.batch_size
        self.batch_timeout = settings.batch_timeout_ms / 1000
        self.pipeline = pipeline
        self.consumer = consumer
        self.sink = sink
        self.counters = sink.counters
        self.shutdown = shutdown
        self.quarantine = quarantine
        self.book = OffsetBook(consumer, quarantine)
        self.hold = PartitionHold(consumer, self.book, quarantine, shutdown)
        self.in_hand: list[MessageBatch] = []
        self.waiting: Prepared | None = None  # full, so written while the next batch is prepared
        self.booked = False  # offsets were booked since the last commit

    @classmethod
    def open(cls, config: Config, shutdown: Shutdown) -> BatchConsumer:
        """Create the topics when missing, join the group and connect the store."""
        pipeline = Pipeline.from_config(config)  # first, so a bad consumer.schema fails before anything opens
        ensure_topic(config, config.kafka.topic)
        sink = Sink(
            store.MessageStore(config.mongodb),
            DeadLetterQueue.open(config),
            ConsumerCounters(),
            routed_collections(config.stages),
            functools.partial(index_id_lookups, config),
            StoreWriter(),
        )
        batches: BatchConsumer | None = None

        def on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
            if batches is not None:
                batches.book.on_commit(error, partitions)

        consumer = group_member(config.kafka, "consumer", config.consumer.group, on_commit)
        # Before joining the group, so that what a dead consumer had in flight is suspect before it is fetched
        # again; last, so that nothing failing after it leaves this consumer's record behind.
        quarantine = Quarantine.open(config.state_path)
        batches = cls(config.consumer, pipeline, consumer, sink, shutdown, quarantine)
        hold = batches.hold
        consumer.subscribe(
            [config.kafka.topic], on_assign=hold.on_assign, on_revoke=hold.on_revoke, on_lost=hold.on_lost
        )
        return batches

    def run(self) -> None:
        """Fetch, store, dead-letter, commit: the order that makes a committed offset mean the message is safe."""
        self.sink.prepare()
        while not self.shutdown.requested:
            messages = self.hold.receive(self.batch_size, self.batch_timeout)
            self.apply_changes()  # what moved during the fetch, to the batch waiting from the one before
            # One portion, the whole batch, unless a consumer died on some of these messages: then each of
            # those is a portion of its own (streamd.quarantine), handled alone, with nothing else in
            # flight. Portions keep the offset order, so what is delivered before a stop can be committed.
            portions = self.quarantine.portions(messages)
            alone = len(portions) > 1 or self.quarantine.suspects()
            writing, self.waiting = self.waiting, None
            if writing is not None and alone:
                if not self.deliver(writing):
                    return  # stopping with a batch unfinished: not committed, so it is consumed again
                writing = None
            started = self.sink.start(writing.batch) if writing is not None else None
            for portion in portions:
                prepared = self.process(portion)  # while the batch before is written
                if writing is not None:
                    if not self.deliver(writing, started):
                        return
                    writing = started = None
                if not prepared.batch:
                    continue
                # A full batch means more are waiting: it is written while the next one is prepared. One
                # cut by the timeout is written at once: waiting for the next would only add to its latency.
                if len(messages) >= self.batch_size and not alone:
                    self.waiting = prepared
                elif not self.deliver(prepared):
                    return
            if writing is not None and not self.deliver(writing, started):
                return
            if self.booked or self.book.retry_due():
                self.book.commit()
                self.booked = False
        if self.waiting is not None:
            self.deliver(self.waiting)  # a stop: finished if the store takes it now, else consumed again

    def close(self, clean: bool = True) -> None:
        """Leave the group now (so its partitions move at once) and disconnect the store.

        Closing revokes every partition, and on_revoke commits what is finished. `clean` is False when
        leaving on an exception: the messages in flight then stay recorded, as after any other death.
        """
        self.consumer.close()
        self.sink.close()
        self.quarantine.close(clean)

    def fetch(self) -> Prepared:
        return self.process(self.hold.receive(self.batch_size, self.batch_timeout))

    def process(self, messages: list[Message]) -> Prepared:
        """The pipeline's stages over these messages, recorded as in flight first (streamd.quarantine); the batch
        is in hand until deliver() books it."""
        # consume() serves rebalances, and so does delivering an earlier portion: a message of a partition
        # revoked meanwhile belongs to the partition's new owner now.
        messages = self.hold.owned(messages)
        restarted = {self.hold.restart(m) for m in messages if offsets.is_reset(m)}
        messages = [m for m in messages if not offsets.is_reset(m)]
        condemned = self.quarantine.condemned(messages[0]) if len(messages) == 1 else None
        flight = None
        if condemned is not None:
            batch = MessageBatch(rejections=[condemned])
            batch.next_offsets[condemned.topic, condemned.partition] = condemned.offset + 1
            log.error("%s", condemned)
        else:
            flight = self.quarantine.begin(messages)
            batch = self.pipeline.batch(messages)
        for key in restarted:
            # Fetched before the restart, from the log that is gone: their offsets mean nothing in the new one.
            batch.next_offsets.pop(key, None)
        for error in batch.errors:
            self.hold.kafka_error(error)
        if batch:
            self.hold.messages_flow()
        self.counters.add_consumed(len(batch))
        self.counters.add_rejected(batch.rejections)
        self.counters.add_filtered(batch.filtered)
        if batch:
            self.in_hand.append(batch)  # until delivered: what moves meanwhile is applied to it
        else:
            self.quarantine.done(flight)
        return Prepared(batch, flight)

    def deliver(self, prepared: Prepared, started: Future[Written] | None = None) -> bool:
        """The sink's delivery (its first write `started` already, when given), with what moved during its waits
        applied to every batch in hand; then, and only then, the batch's offsets are booked. False when
        stopping first."""
        batch = prepared.batch
        try:
            if not self.sink.deliver(batch, self.wait, started):
                return False
        finally:
            self.hold.resume()
        self.in_hand.remove(batch)
        self.quarantine.done(prepared.flight)
        self.book.finished(batch.next_offsets)  # only now: stored, and its rejections acknowledged
        self.booked = True
        return True

    def wait(self, seconds: float) -> bool:
        """Between two attempts of the sink: hold, serving the group, then apply to the batch what moved."""
        holding = self.hold.wait(seconds)
        self.apply_changes()
        return holding

    def apply_changes(self) -> None:
        """What moved or restarted since the last call, applied to the batches in hand: fetched before it, so
        they may hold messages of those partitions. None of them is being written (see the module's doc)."""
        moved, restarted = self.hold.take_changes()
        if not moved and not restarted:
            return
        dropped = 0
        for batch in self.in_hand:
            for key in restarted:
                batch.next_offsets.pop(key, None)  # fetched from the log that is gone
            dropped += batch.drop(moved)
        if dropped:
            self.counters.add_dropped(dropped)
            log.info("dropped %d unfinished messages of partitions that moved; their new owner has them", dropped)
