"""The dead-letter topic: every message the consumer will not store, kept with why, where from and when.

A dead letter is the original message, with its key, value and headers unchanged, plus these headers
(UTF-8 text), appended after the original ones:

    streamd.error.reason        a fixed word: tombstone, empty, too_large, not_utf8, not_json, not_object,
                                schema, field_name, bad_timestamp, stage, store_rejected, internal, crash
    streamd.error.stage         parse, validate, stage, store, internal or consume
    streamd.error.detail        one sentence for people
    streamd.error.time          when it was dead-lettered, ISO 8601 UTC
    streamd.original.topic      where the message was consumed from
    streamd.original.partition
    streamd.original.offset
    streamd.original.timestamp  its Kafka timestamp in milliseconds (absent when it had none)
    streamd.stage               only for reason stage: the name of the user's stage that failed on it
    streamd.error.value_dropped only when the value itself was too large for the dead-letter topic: its size
                                in bytes; the dead letter then carries an empty value and everything else

`streamd redrive` (streamd.redrive) sends a dead letter back to its topic with every header it carries,
plus `streamd.redriven` (the dead letter's own coordinates, `topic:partition:offset`): a redriven message
that fails again is dead-lettered with its whole history, and the last set of streamd headers is the
newest. A redriven message without an id keeps the fallback id of the message it first was (redriven_id).

Delivery is at least once: the consumer commits a rejected message's offset only after this topic has
acknowledged it, so a crash in between dead-letters it a second time. Readers (and `streamd verify`)
identify a dead letter by its original coordinates, which makes a repeat harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamd.config import Config
from streamd.ids import offset_id
from streamd.kafka import ensure_topic, make_client
from streamd.outage import Outage

if TYPE_CHECKING:  # the pipeline asks redriven_id() of this module: only the type is needed here
    from streamd.pipeline import Rejection

log = logging.getLogger(__name__)

REASON = "streamd.error.reason"
STAGE = "streamd.error.stage"
DETAIL = "streamd.error.detail"
TIME = "streamd.error.time"
VALUE_DROPPED = "streamd.error.value_dropped"
ORIGINAL_TOPIC = "streamd.original.topic"
ORIGINAL_PARTITION = "streamd.original.partition"
ORIGINAL_OFFSET = "streamd.original.offset"
ORIGINAL_TIMESTAMP = "streamd.original.timestamp"
STAGE_NAME = "streamd.stage"
REDRIVEN = "streamd.redriven"

# librdkafka refuses, before sending, any message over its own message.max.bytes (1 MB by default),
# which is below the broker's default limit: a too_large message could never be dead-lettered. The
# broker's limit is the one that matters, so the client's is set to the most librdkafka allows.
CLIENT_MESSAGE_MAX_BYTES = 1_000_000_000
# What a producer that writes consumed messages on needs (the dead-letter queue, `streamd redrive`), and POST
# /messages, whose messages a consumer will read: idempotent acks=all, so librdkafka's retries neither lose nor
# duplicate one, and room for the largest a consumer can hold.
FORWARDING_SETTINGS: dict[str, object] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.max.bytes": CLIENT_MESSAGE_MAX_BYTES,
}


def headers_for(rejection: Rejection, now: datetime, value_dropped: int | None = None) -> list[tuple[str, bytes]]:
    """The original headers followed by streamd's: why, at which stage, where from and when."""
    added = [
        (REASON, rejection.reason),
        (STAGE, rejection.stage),
        (DETAIL, rejection.detail),
        (TIME, now.isoformat(timespec="milliseconds")),
        (ORIGINAL_TOPIC, rejection.topic),
        (ORIGINAL_PARTITION, str(rejection.partition)),
        (ORIGINAL_OFFSET, str(rejection.offset)),
    ]
    if rejection.timestamp_ms is not None:
        added.append((ORIGINAL_TIMESTAMP, str(rejection.timestamp_ms)))
    if rejection.stage_name is not None:
        added.append((STAGE_NAME, rejection.stage_name))
    if value_dropped is not None:
        added.append((VALUE_DROPPED, str(value_dropped)))
    return [*(rejection.headers or ()), *((name, text.encode()) for name, text in added)]


Headers = list[tuple[str, bytes | None]] | None


def redriven_id(headers: Headers) -> str | None:
    """The fallback id of the message a redriven one first was, or None when it was never redriven.

    A message without an id is stored under its Kafka coordinates; redriven, it has new ones. Its first
    streamd.original.* headers are those of the message that first failed, so every copy of it, however
    often redriven, is stored under one id and a second copy is a duplicate, not a second document.
    """
    if not headers or not any(name == REDRIVEN for name, _ in headers):
        return None
    first: dict[str, bytes] = {}
    for name, value in headers:
        if name.startswith("streamd.original.") and value is not None:
            first.setdefault(name, value)
    try:
        return offset_id(first[ORIGINAL_TOPIC].decode(), int(first[ORIGINAL_PARTITION]), int(first[ORIGINAL_OFFSET]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter as read back: where the original was, and why it is here."""

    topic: str
    partition: int
    offset: int
    reason: str
    stage: str
    detail: str
    timestamp_ms: int | None = None  # the original's Kafka timestamp: tells it from a later message at its offset
    stage_name: str | None = None  # the user's stage that failed on it (reason stage)

    @classmethod
    def read(cls, message: Message) -> DeadLetter | None:
        """None for a message that carries no streamd coordinates (someone else wrote to the topic)."""
        # The last occurrence wins: a dead letter fed back in and dead-lettered again keeps both sets.
        found = {name: value for name, value in message.headers() or () if name.startswith("streamd.")}
        try:
            return cls(
                found[ORIGINAL_TOPIC].decode(),
                int(found[ORIGINAL_PARTITION]),
                int(found[ORIGINAL_OFFSET]),
                found.get(REASON, b"").decode(errors="replace"),
                found.get(STAGE, b"").decode(errors="replace"),
                found.get(DETAIL, b"").decode(errors="replace"),
                int(found[ORIGINAL_TIMESTAMP]) if ORIGINAL_TIMESTAMP in found else None,
                found[STAGE_NAME].decode(errors="replace") if STAGE_NAME in found else None,
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class Settled:
    """What one wait for delivery reports brought."""

    done: bool  # everything submitted is acknowledged
    acknowledged: list[Rejection]  # acknowledged during this wait (each rejection is reported once)


class DeadLetterQueue:
    """An idempotent producer for kafka.dead_letter_topic that knows which dead letters are acknowledged.

    submit() hands rejections to librdkafka; settle() waits for their delivery reports, submits again
    whatever failed and reports what was acknowledged. Messages still queued keep being retried by
    librdkafka itself (until message.timeout.ms), so waiting again never sends a dead letter twice.
    """

    def __init__(self, config: Config) -> None:
        self.topic = config.kafka.dead_letter_topic
        self.producer = make_client(Producer, config.kafka, "dead-letter", FORWARDING_SETTINGS)
        self.unsettled = 0  # submitted, no delivery report yet
        self.failed: list[tuple[Rejection, KafkaError]] = []
        self.acknowledged: list[Rejection] = []
        self.failing = Outage()  # delivery failures, by error code, until an acknowledgement

    @classmethod
    def open(cls, config: Config) -> DeadLetterQueue:
        """Create the topic when missing (raises KafkaUnavailable when the brokers do not answer)."""
        ensure_topic(config, config.kafka.dead_letter_topic)
        return cls(config)

    def submit(self, rejections: Iterable[Rejection]) -> None:
        for rejection in rejections:
            self._produce(rejection)

    def settle(self, timeout: float) -> Settled:
        """Wait up to `timeout` seconds for every delivery report; done once everything submitted is acknowledged."""
        if self.unsettled:
            self.producer.flush(timeout)
        retry, self.failed = self.failed, []
        for rejection, error in retry:
            self._produce(rejection, drop_value=error.code() == KafkaError.MSG_SIZE_TOO_LARGE)
        acknowledged, self.acknowledged = self.acknowledged, []
        return Settled(self.unsettled == 0 and not retry, acknowledged)

    def close(self, timeout: float = 5.0) -> int:
        """Give queued dead letters `timeout` seconds; how many were still undelivered.

        An undelivered dead letter's offset was never committed, so the message is consumed again.
        """
        return self.producer.flush(timeout) if self.unsettled else 0

    def _produce(self, rejection: Rejection, drop_value: bool = False) -> None:
        value = rejection.value
        dropped = None
        if drop_value and value:
            value, dropped = b"", len(value)
        headers = headers_for(rejection, datetime.now(UTC), dropped)

        def delivered(error: KafkaError | None, message: Message) -> None:
            self._delivered(rejection, error)

        while True:
            try:
                self.producer.produce(self.topic, value, rejection.key, headers=headers, on_delivery=delivered)
                break
            except BufferError:
                self.producer.poll(0.1)  # librdkafka's queue is full: delivery reports make room
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() == KafkaError.MSG_SIZE_TOO_LARGE and not drop_value:
                    self._produce(rejection, drop_value=True)
                    return
                raise
        self.unsettled += 1

    def _delivered(self, rejection: Rejection, error: KafkaError | None) -> None:
        self.unsettled -= 1
        if error is None:
            self.acknowledged.append(rejection)
            self.failing.recovered()
            return
        if error.fatal():
            raise KafkaException(error)  # this producer instance is finished; the consumer restarts
        self.failed.append((rejection, error))
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            log.warning("%s is too large for %s; dead-lettering it without its value", rejection, self.topic)
        elif self.failing.failed(error.code()):
            log.warning(
                "dead-letter delivery to %s failed: %s; retrying (repeats are not logged)", self.topic, error.str()
            )
