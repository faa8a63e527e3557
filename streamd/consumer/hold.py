"""The partition hold: which partitions this member owns, pausing them while a batch waits, and what moved.

Rebalance callbacks run inside consume() and poll(). They keep the assignment, the strays and the offset
book right (on revoke the finished offsets are committed before returning, so the new owner starts after
them), and record which partitions moved away or restarted; the loop applies that to the batch in hand
between its steps (take_changes()), so nothing mutates the batch under its feet.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamd import offsets
from streamd.consumer.book import OffsetBook, Partition
from streamd.lifecycle import Shutdown
from streamd.metrics import series
from streamd.outage import Outage
from streamd.quarantine import Quarantine

log = logging.getLogger("streamd.consumer")

HOLD_POLL = 0.2  # longest poll() while holding a batch, and so the delay in noticing a stop


class PartitionHold:
    """The consumer's side of its partitions: assignment, pause and resume, strays, restarts and Kafka errors."""

    def __init__(self, consumer: Consumer, book: OffsetBook, quarantine: Quarantine, shutdown: Shutdown) -> None:
        self.consumer = consumer
        self.book = book
        self.quarantine = quarantine
        self.shutdown = shutdown
        self.assigned: set[Partition] = set()
        self.paused = False
        self.strays: list[Message] = []  # delivered while holding; they go first into the next batch
        self.moved: set[Partition] = set()  # revoked or lost since the loop last took the changes
        self.restarted: set[Partition] = set()  # restarted at another offset since then
        self.kafka = Outage()  # by error code, until messages flow again

    def receive(self, count: int, timeout: float) -> list[Message]:
        messages = self.consumer.consume(count, timeout)
        if self.strays:
            messages, self.strays = self.strays + messages, []
        return messages

    def owned(self, messages: list[Message]) -> list[Message]:
        """Events, and the messages of partitions still assigned (a revoked one's belong to its new owner)."""
        return [m for m in messages if m.error() is not None or (m.topic(), m.partition()) in self.assigned]

    def take_changes(self) -> tuple[set[Partition], set[Partition]]:
        """(moved away, restarted) since the last call."""
        changes = self.moved, self.restarted
        self.moved, self.restarted = set(), set()
        return changes

    # --- holding ------------------------------------------------------------------------------------

    def wait(self, seconds: float) -> bool:
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
        self.restarted.add(key)  # the batch in hand holds offsets of the log that is gone
        if restart.start is not None:
            # Committed now, so the group's offset (and /ready, lag) stop pointing beyond the log at once.
            self.book.finished({key: restart.start})
            self.book.commit()
        return key

    # --- Kafka errors -------------------------------------------------------------------------------

    def kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        # librdkafka reconnects by itself; while a broker is away it reports the same error over and over.
        if self.kafka.failed(error.code()):
            log.warning("kafka: %s (repeats are not logged)", error.str())

    def messages_flow(self) -> None:
        if self.kafka.recovered() is not None:
            log.info("kafka: messages flow again")

    # --- rebalance callbacks (run inside consume() and poll()) -------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        log.info("assigned %s", _partition_list(partitions))
        consumer.incremental_assign(partitions)
        if self.paused:
            # Holding a batch: new partitions wait too, or poll() would hand out their messages.
            consumer.pause(partitions)
        else:
            # librdkafka keeps a partition's pause through a revoke or a loss: one that left this member while
            # it held a batch (resume() only reaches what is assigned) would come back paused, never read again.
            consumer.resume(partitions)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        # Still the owner here: committing now lets the new owner start after what is finished.
        self.book.commit_now(revoked)
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
        self.book.forget(partitions)
        self.strays = [m for m in self.strays if (m.topic(), m.partition()) not in partitions]
        self.moved |= partitions


def _partition_list(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
