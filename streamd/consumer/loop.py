"""The consumer's loop: fetch -> quarantine portions -> pipeline -> sink -> book the offsets -> commit."""

from __future__ import annotations

import functools
import logging

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streamd import offsets, store
from streamd.config import Config, ConsumerConfig
from streamd.consumer.book import OffsetBook
from streamd.consumer.counts import ConsumerCounters
from streamd.consumer.hold import PartitionHold
from streamd.consumer.sink import Sink
from streamd.dead_letter import DeadLetterQueue
from streamd.kafka import ensure_topic, group_member
from streamd.lifecycle import Shutdown
from streamd.pipeline import MessageBatch, Pipeline
from streamd.quarantine import Quarantine
from streamd.stack.ferretdb_ids import index_id_lookups
from streamd.stages import routed_collections

log = logging.getLogger("streamd.consumer")


class BatchConsumer:
    """Consumes batches from the group, stores or dead-letters them, then commits them.

    The state the loop holds is here: the batch in hand (`in_hand`, between fetching and booking its
    offsets). Everything else belongs to a part: the offset book, the partition hold, the sink.
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
        self.in_hand: MessageBatch | None = None

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
            delivered = False
            # One portion, the whole batch, unless a consumer died on some of these messages: then each of
            # those is a portion of its own (streamd.quarantine). Portions keep the offset order, so what
            # is delivered before a stop can be committed.
            for portion in self.quarantine.portions(self.hold.receive(self.batch_size, self.batch_timeout)):
                batch = self.process(portion)
                if not batch:
                    continue
                if not self.deliver(batch):
                    return  # stopping with the batch unfinished: not committed, so it is consumed again
                self.quarantine.done()
                self.book.finished(batch.next_offsets)  # only now: stored, and its rejections acknowledged
                delivered = True
            if delivered or self.book.retry_due():
                self.book.commit()

    def close(self, clean: bool = True) -> None:
        """Leave the group now (so its partitions move at once) and disconnect the store.

        Closing revokes every partition, and on_revoke commits what is finished. `clean` is False when
        leaving on an exception: the messages in flight then stay recorded, as after any other death.
        """
        self.consumer.close()
        self.sink.close()
        self.quarantine.close(clean)

    def fetch(self) -> MessageBatch:
        return self.process(self.hold.receive(self.batch_size, self.batch_timeout))

    def process(self, messages: list[Message]) -> MessageBatch:
        """The pipeline's stages over these messages, recorded as in flight first (streamd.quarantine)."""
        # consume() serves rebalances, and so does delivering an earlier portion: a message of a partition
        # revoked meanwhile belongs to the partition's new owner now.
        messages = self.hold.owned(messages)
        restarted = {self.hold.restart(m) for m in messages if offsets.is_reset(m)}
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
            self.hold.kafka_error(error)
        if batch:
            self.hold.messages_flow()
        self.counters.add_consumed(len(batch))
        self.counters.add_rejected(batch.rejections)
        self.counters.add_filtered(batch.filtered)
        return batch

    def deliver(self, batch: MessageBatch) -> bool:
        """The sink's delivery, with what moved during its waits applied; False when stopping first."""
        self.hold.take_changes()  # older than this batch, which holds only partitions assigned when fetched
        self.in_hand = batch
        try:
            return self.sink.deliver(batch, self.wait)
        finally:
            self.in_hand = None
            self.hold.resume()

    def wait(self, seconds: float) -> bool:
        """Between two attempts of the sink: hold, serving the group, then apply to the batch what moved."""
        holding = self.hold.wait(seconds)
        self.apply_changes()
        return holding

    def apply_changes(self) -> None:
        moved, restarted = self.hold.take_changes()
        if self.in_hand is None:
            return
        for key in restarted:
            self.in_hand.next_offsets.pop(key, None)  # fetched from the log that is gone
        dropped = self.in_hand.drop(moved)
        if dropped:
            self.counters.add_dropped(dropped)
            log.info("dropped %d unfinished messages of partitions that moved; their new owner has them", dropped)
