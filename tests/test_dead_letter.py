"""The dead-letter topic: the original message plus the headers that say why, where from and when."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, NewTopic

from streamd.config import Config
from streamd.dead_letter import DeadLetter, DeadLetterQueue, headers_for
from streamd.pipeline import Rejection

from .probes import read_all

NOW = datetime(2024, 6, 1, 12, 0, 30, 250_000, tzinfo=UTC)


def rejection(value: bytes | None = b"not json", **changes) -> Rejection:
    fields = {
        "stage": "parse",
        "reason": "not_json",
        "detail": "the value is not JSON",
        "topic": "orders",
        "partition": 2,
        "offset": 41,
        "key": b"order-1",
        "value": value,
        "headers": [("trace", b"abc")],
        "timestamp_ms": 1717243200000,
        **changes,
    }
    return Rejection(**fields)


def test_dead_letter_headers_follow_the_original_ones_and_name_reason_stage_origin_and_time():
    assert headers_for(rejection(), NOW) == [
        ("trace", b"abc"),
        ("streamd.error.reason", b"not_json"),
        ("streamd.error.stage", b"parse"),
        ("streamd.error.detail", b"the value is not JSON"),
        ("streamd.error.time", b"2024-06-01T12:00:30.250+00:00"),
        ("streamd.original.topic", b"orders"),
        ("streamd.original.partition", b"2"),
        ("streamd.original.offset", b"41"),
        ("streamd.original.timestamp", b"1717243200000"),
    ]


def test_a_message_without_headers_or_timestamp_gets_only_streamds_headers():
    names = [name for name, _ in headers_for(rejection(headers=None, timestamp_ms=None), NOW)]
    assert names[0] == "streamd.error.reason"
    assert "streamd.original.timestamp" not in names


def test_a_dead_letter_reads_back_its_origin_and_reason():
    message = Message(topic="orders.dlq", partition=0, offset=0, value=b"x", headers=headers_for(rejection(), NOW))
    assert DeadLetter.read(message) == DeadLetter(
        "orders", 2, 41, "not_json", "parse", "the value is not JSON", 1717243200000
    )


@pytest.mark.parametrize(
    "headers",
    [None, [("trace", b"abc")], [("streamd.original.topic", b"orders"), ("streamd.original.partition", b"x")]],
)
def test_a_message_without_streamd_coordinates_is_not_a_dead_letter(headers):
    assert DeadLetter.read(Message(topic="orders.dlq", partition=0, offset=0, value=b"x", headers=headers)) is None


# --- on the real broker ---------------------------------------------------------------------------------


def read_dead_letters(settings: Config) -> list[Message]:
    return read_all(settings.kafka.brokers, settings.kafka.dead_letter_topic)


def settle(queue: DeadLetterQueue, timeout: float = 20) -> list[Rejection]:
    """Every rejection acknowledged until all are, in the order of the reports."""
    deadline = time.monotonic() + timeout
    acknowledged: list[Rejection] = []
    while True:
        settled = queue.settle(1.0)
        acknowledged += settled.acknowledged
        if settled.done:
            return acknowledged
        assert time.monotonic() < deadline, "the dead-letter topic did not acknowledge in time"


@pytest.mark.integration
def test_dead_letters_keep_the_original_key_value_and_headers_and_are_acknowledged(pipeline_config: Config):
    queue = DeadLetterQueue.open(pipeline_config)
    tombstone = rejection(value=None, reason="tombstone", offset=42, headers=None)
    queue.submit([rejection(), tombstone])
    acknowledged = settle(queue)

    assert acknowledged == [rejection(), tombstone]
    assert queue.settle(0.1).acknowledged == [], "each acknowledgement is handed out once"
    letters = sorted(read_dead_letters(pipeline_config), key=lambda m: dict(m.headers())["streamd.original.offset"])
    assert [(m.key(), m.value()) for m in letters] == [(b"order-1", b"not json"), (b"order-1", None)]
    first = dict(letters[0].headers())
    assert first["trace"] == b"abc"
    assert first["streamd.error.reason"] == b"not_json" and first["streamd.original.offset"] == b"41"
    stamped = datetime.fromisoformat(first["streamd.error.time"].decode())
    assert abs((datetime.now(UTC) - stamped).total_seconds()) < 60
    assert [DeadLetter.read(m).reason for m in letters] == ["not_json", "tombstone"]


@pytest.mark.integration
def test_a_value_too_large_for_the_dead_letter_topic_is_dropped_and_its_size_kept(pipeline_config: Config):
    """A message can fit its own topic and not the dead-letter topic; it must not block the consumer."""
    dlq = pipeline_config.kafka.dead_letter_topic
    admin = AdminClient({"bootstrap.servers": pipeline_config.kafka.brokers})
    admin.create_topics([NewTopic(dlq, 1, 1, config={"max.message.bytes": "20000"})])[dlq].result()
    queue = DeadLetterQueue.open(pipeline_config)
    huge = rejection(value=b"x" * 50_000, reason="too_large")
    queue.submit([huge])
    acknowledged = settle(queue)

    [letter] = read_dead_letters(pipeline_config)
    headers = dict(letter.headers())
    assert letter.value() == b""
    assert headers["streamd.error.value_dropped"] == b"50000"
    assert headers["streamd.error.reason"] == b"too_large" and headers["trace"] == b"abc"
    assert acknowledged == [huge]
