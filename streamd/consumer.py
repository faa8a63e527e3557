"""The consumer child: Kafka in, MongoDB at rest, and an offset committed only once its batch is stored.

Every consumer process joins the same group, so Kafka spreads the partitions over them. Writes are
idempotent (the message id is the `_id`), which is what lets this module be simple about failure:
whenever in doubt it does not commit, and the replay that follows only produces duplicates the store
skips. A store outage longer than max.poll.interval.ms (librdkafka default 5 min) makes librdkafka leave
the group; the partitions then move to another consumer, our late commit fails harmlessly, and the next
consume() joins again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamd import store
from streamd.config import Config, ConfigError, ConsumerConfig
from streamd.kafka import KafkaUnavailable, ensure_topic, make_client
from streamd.lifecycle import Shutdown
from streamd.pipeline import MessageBatch, Pipeline, Rejection

log = logging.getLogger(__name__)

RETRY_INITIAL = 0.5
RETRY_MAX = 30.0


@dataclass
class ConsumerCounters:
    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by Rejection.reason

    def __str__(self) -> str:
        return (
            f"consumed {self.consumed}, stored {self.stored}, duplicates {self.duplicates}, "
            f"rejected {self.rejected.total()}"
        )


def log_rejections(rejections: list[Rejection]) -> None:
    """Today's dead-letter step: every rejected message is named in the log, none is dropped silently."""
    for rejection in rejections:
        log.warning("%s", rejection)


class BatchConsumer:
    """Consumes batches from the group, stores them, then commits them."""

    def __init__(
        self,
        settings: ConsumerConfig,
        pipeline: Pipeline,
        consumer: Consumer,
        message_store: store.MessageStore,
        shutdown: Shutdown,
    ) -> None:
        self.batch_size = settings.batch_size
        self.batch_timeout = settings.batch_timeout_ms / 1000
        self.pipeline = pipeline
        self.consumer = consumer
        self.store = message_store
        self.shutdown = shutdown
        # Receives each batch's rejections before its offsets are committed; the dead-letter topic
        # replaces it with a step that returns only once the broker has acknowledged them.
        self.dead_letter: Callable[[list[Rejection]], None] = log_rejections
        self.counters = ConsumerCounters()
        self.indexes_ready = False
        self.store_down_since: float | None = None

    @classmethod
    def open(cls, config: Config, shutdown: Shutdown) -> BatchConsumer:
        """Create the topic when missing, join the group and connect the store."""
        pipeline = Pipeline.from_config(config)  # first, so a bad consumer.schema fails before anything opens
        ensure_topic(config, config.kafka.topic)
        message_store = store.MessageStore(config.mongodb)
        consumer = make_client(
            Consumer,
            config.kafka,
            "consumer",
            {
                "group.id": config.consumer.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # Incremental rebalancing: a consumer joining or leaving moves only the partitions that
                # must move, instead of stopping the whole group.
                "partition.assignment.strategy": "cooperative-sticky",
            },
        )
        consumer.subscribe([config.kafka.topic], on_assign=_on_assign, on_revoke=_on_revoke, on_lost=_on_lost)
        return cls(config.consumer, pipeline, consumer, message_store, shutdown)

    def run(self) -> None:
        """Fetch, store, commit: the order that makes a committed offset mean the message is stored."""
        self.prepare_store()
        while not self.shutdown.requested:
            batch = self.fetch()
            if not batch:
                continue
            if not self.write(batch):
                return  # stopping while the store is away: no commit, so a replay redelivers the batch
            self.dead_letter(batch.rejections)
            self.commit(batch)

    def close(self) -> None:
        """Leave the group now (so its partitions move at once) and disconnect the store."""
        self.consumer.close()
        self.store.close()

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

    def fetch(self) -> MessageBatch:
        batch = self.pipeline.batch(self.consumer.consume(self.batch_size, self.batch_timeout))
        for error in batch.errors:
            self.kafka_error(error)
        self.counters.consumed += len(batch)
        self.counters.rejected.update(rejection.reason for rejection in batch.rejections)
        return batch

    def write(self, batch: MessageBatch) -> bool:
        """Store the batch, retrying while the store is unavailable; False when shutdown came first."""
        delay = RETRY_INITIAL
        while (outcome := self.try_write(batch)) is None:
            # Jitter keeps the consumers of a group from hammering a recovering store in step.
            if self.shutdown.wait(random.uniform(delay / 2, delay)):
                log.warning("stopping with %d messages unstored; they stay uncommitted for a replay", len(batch))
                return False
            delay = min(delay * 2, RETRY_MAX)
        self.counters.stored += outcome.inserted
        self.counters.duplicates += outcome.duplicates
        return True

    def try_write(self, batch: MessageBatch) -> store.WriteOutcome | None:
        """One attempt; None when the store is unavailable. Logs the store going away and coming back, once each."""
        try:
            self.ensure_indexes()
            outcome = self.store.insert_batch(batch.documents)
        except store.UNAVAILABLE as exc:
            if self.store_down_since is None:
                self.store_down_since = time.monotonic()
                log.warning(
                    "store unavailable (%s: %s); holding %d messages uncommitted, retrying with backoff",
                    type(exc).__name__,
                    exc,
                    len(batch),
                )
            return None
        if self.store_down_since is not None:
            log.info("store is back after %.1fs", time.monotonic() - self.store_down_since)
            self.store_down_since = None
        return outcome

    def commit(self, batch: MessageBatch) -> None:
        offsets = [
            TopicPartition(topic, partition, offset) for (topic, partition), offset in batch.next_offsets.items()
        ]
        try:
            committed = self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.commit_failed(exc.args[0])
            return
        for partition in committed or ():
            if partition.error is not None:
                self.commit_failed(partition.error)

    def commit_failed(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        # Typically a rebalance moved the partition away: its new owner replays from the last commit,
        # and the store skips what we already wrote.
        log.warning("commit failed (%s); the stored batch will be replayed as duplicates", error.str())

    def kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("kafka: %s", error.str())


def run(config: Config, shutdown: Shutdown) -> int:
    """The consumer child's main; returns its exit status."""
    try:
        batches = BatchConsumer.open(config, shutdown)
    except (KafkaUnavailable, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    log.info("consuming %s as group %s", config.kafka.topic, config.consumer.group)
    try:
        batches.run()
    finally:
        batches.close()
        log.info("stopped: %s", batches.counters)
    return 0


def _on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    log.info("assigned %s", _partition_list(partitions))


def _on_revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    # Nothing to commit here: revocation is served inside consume(), and by then the previous batch
    # has been stored and committed.
    log.info("revoked %s", _partition_list(partitions))


def _on_lost(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    log.warning(
        "lost %s (session timed out); their new owners replay from the last commit", _partition_list(partitions)
    )


def _partition_list(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
