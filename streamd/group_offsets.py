"""Where a consumer group stands, read from outside it: its committed offsets and the partitions' watermarks.

Three readers ask: the API's lag (/stats, /metrics, /ready), `streamd verify` (which messages the group
has consumed) and the bench's commit watch (when a message became stored). All of them ask through an
AdminClient: it never joins the group it reads, and it asks about every partition in one request, where
a Consumer asks for watermarks one partition at a time.

A failed question raises KafkaUnreadable, whose message names the question; each reader decides what an
unreadable answer means for it (a null in /stats, a stale count in the bench).
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

Key = tuple[str, int]  # (topic, partition)


class KafkaUnreadable(Exception):
    """The brokers did not answer in time; the message says which question failed."""


def partitions_of(topic: str, numbers: Iterable[int]) -> list[TopicPartition]:
    return [TopicPartition(topic, number) for number in sorted(numbers)]


def committed(admin: AdminClient, group: str, partitions: list[TopicPartition], timeout: float) -> dict[Key, int]:
    """The group's committed offset per partition; partitions it never committed to are left out."""
    if not partitions:
        return {}
    request = [ConsumerGroupTopicPartitions(group, partitions)]
    try:
        answer = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group].result()
    except KafkaException as exc:
        raise KafkaUnreadable(f"Kafka did not say where group {group} is ({exc.args[0].str()})") from None
    # A negative offset (OFFSET_INVALID) means nothing was committed for that partition.
    return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions if tp.offset >= 0}


def watermarks(admin: AdminClient, partitions: list[TopicPartition], timeout: float) -> dict[Key, tuple[int, int]]:
    """(low, high) per partition: its earliest offset still held and its log end offset."""
    high = _offsets(admin, partitions, OffsetSpec.latest(), timeout)
    low = _offsets(admin, partitions, OffsetSpec.earliest(), timeout)
    return {key: (low[key], high[key]) for key in high}


def _offsets(admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec, timeout: float) -> dict[Key, int]:
    if not partitions:
        return {}
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
    try:
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
    except KafkaException as exc:
        raise KafkaUnreadable(f"Kafka did not give the topics' offsets ({exc.args[0].str()})") from None
