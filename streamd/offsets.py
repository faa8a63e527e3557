"""Where a consumer (re)starts in a partition when it has no usable offset: the policy for recreated topics.

The consumer runs librdkafka with auto.offset.reset=error. librdkafka then never moves a partition by
itself: when the group has no committed offset, or the offset to fetch is outside the partition's log,
it hands over an _AUTO_OFFSET_RESET event and stops fetching that partition until told where to go.

What an offset outside the log means:

- beyond the log end: the topic was deleted and recreated under the same name (its offsets start again
  at 0 while the group's committed offsets are the old topic's), or the broker lost the log's tail.
  librdkafka with `earliest` would reset silently, and only if it happens to fetch while the new log is
  still shorter than the old offset; otherwise it skips the new topic's first messages, or sits idle
  behind a committed offset no message will reach.
- before the log start: retention deleted messages the group never consumed.

The policy is the same for both: restart from the earliest offset the partition still holds, and commit
it, so no message still in the topic is skipped (replayed ones are duplicates the store skips). Both are
logged at ERROR and counted (streamd_consumer_offset_resets_total): each means messages the pipeline
never saw. A partition the group simply never committed starts at its earliest offset, quietly.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

WATERMARK_TIMEOUT = 5.0


def is_reset(message: Message) -> bool:
    """An event (not a message) saying librdkafka has no offset to fetch this partition from."""
    error = message.error()
    return error is not None and error.code() == KafkaError._AUTO_OFFSET_RESET


@dataclass(frozen=True)
class Restart:
    """Where a partition restarts: at `start`, the earliest offset its log holds (None if Kafka did not say)."""

    topic: str
    partition: int
    position: int | None  # the offset that could not be fetched; None when the group never committed one
    start: int | None
    end: int | None

    @property
    def out_of_range(self) -> bool:
        return self.position is not None

    @property
    def assignment(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition, OFFSET_BEGINNING if self.start is None else self.start)

    def __str__(self) -> str:
        where = f"{self.topic}[{self.partition}]"
        if self.start is None or self.end is None:
            return f"{where}: offset {self.position} is outside the log; restarting from its earliest offset"
        if self.position is not None and self.position > self.end:
            why = (
                f"offset {self.position} is beyond the log end {self.end}: the topic was deleted and recreated "
                "(or the broker lost its tail)"
            )
        elif self.position is not None and self.position < self.start:
            why = f"offset {self.position} is before the log start {self.start}: retention deleted unconsumed messages"
        else:
            why = f"offset {self.position} could not be fetched (the log holds {self.start} to {self.end})"
        return f"{where}: {why}; restarting from the earliest offset {self.start} and committing it"


def restart_point(consumer: Consumer, event: Message) -> Restart:
    """Where the partition of this _AUTO_OFFSET_RESET event restarts."""
    topic, partition = event.topic(), event.partition()
    offset = event.offset()
    position = offset if offset is not None and offset >= 0 else None
    try:
        start, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=WATERMARK_TIMEOUT)
    except KafkaException:
        start = end = None  # the broker is away: restart at the logical beginning, commit nothing yet
    return Restart(topic, partition, position, start, end)
