"""The offset book: offsets of finished batches until Kafka confirms their commit.

"Finished" means stored or acknowledged by the dead-letter topic. A commit refused during a rebalance
keeps its offsets, to be sent again with the next batch, when idle, or on revoke.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamd.outage import Outage
from streamd.quarantine import Quarantine

log = logging.getLogger("streamd.consumer")

COMMIT_RETRY = 1.0  # while idle, how often a refused commit is tried again

Partition = tuple[str, int]


class OffsetBook:
    """Finished offsets not yet known to be committed, and the commits that carry them."""

    def __init__(self, consumer: Consumer, quarantine: Quarantine) -> None:
        self.consumer = consumer
        self.quarantine = quarantine
        self.uncommitted: dict[Partition, int] = {}
        # Committed beside the offset, for a reader that resumes from it (the analyzer's stream time).
        self.metadata: dict[Partition, str] = {}
        self.retry = False  # a commit was refused since the last one was sent
        self.next_retry = 0.0
        self.refusals = Outage()

    def finished(self, next_offsets: dict[Partition, int], metadata: dict[Partition, str] | None = None) -> None:
        self.uncommitted.update(next_offsets)
        if metadata:
            self.metadata.update(metadata)

    def retry_due(self) -> bool:
        return bool(self.uncommitted) and self.retry and time.monotonic() >= self.next_retry

    def commit(self) -> None:
        """Ask for the finished offsets to be committed; on_commit learns the outcome.

        Asynchronous, so a broker that is away does not stall the loop (a synchronous commit waits for
        the group coordinator for as long as the session timeout).
        """
        self.retry = False
        if not self.uncommitted:
            return
        try:
            self.consumer.commit(offsets=self._topic_partitions(self.uncommitted), asynchronous=True)
        except KafkaException as exc:
            self.refused(exc.args[0])

    def commit_now(self, partitions: set[Partition]) -> None:
        """Commit the finished offsets of these partitions and wait for the answer (on revoke)."""
        offsets = self._topic_partitions({key: o for key, o in self.uncommitted.items() if key in partitions})
        if not offsets:
            return
        try:
            self.on_commit(None, self.consumer.commit(offsets=offsets, asynchronous=False) or [])
        except KafkaException as exc:
            self.refused(exc.args[0])

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The outcome of a commit (served inside consume() and poll()); what went through is forgotten."""
        if error is not None:
            self.refused(error)
            return
        for partition in partitions:
            key = (partition.topic, partition.partition)
            if partition.error is not None:
                self.refused(partition.error)
            else:
                if self.uncommitted.get(key) == partition.offset:
                    del self.uncommitted[key]  # a later batch's offset, if any, stays until its own answer
                self.quarantine.committed(partition.topic, partition.partition, partition.offset)
        if not self.uncommitted and self.refusals.recovered() is not None:
            log.info("commits go through again")

    def refused(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        self.retry = True
        self.next_retry = time.monotonic() + COMMIT_RETRY
        # Typically a rebalance in progress: the offsets are kept and committed with the next batch, or
        # on revoke if the partition moves away (its new owner then starts after them).
        if self.refusals.failed(error.code()):
            log.warning("commit refused (%s); keeping the offsets to commit again", error.str())

    def forget(self, partitions: set[Partition]) -> None:
        """These partitions moved away: their new owner commits from here on."""
        for key in partitions:
            self.uncommitted.pop(key, None)
            self.metadata.pop(key, None)

    def _topic_partitions(self, offsets: dict[Partition, int]) -> list[TopicPartition]:
        partitions = []
        for (topic, partition), offset in offsets.items():
            metadata = self.metadata.get((topic, partition))
            # TopicPartition refuses metadata=None: without any, the argument is left out.
            extra = {} if metadata is None else {"metadata": metadata}
            partitions.append(TopicPartition(topic, partition, offset, **extra))
        return partitions
