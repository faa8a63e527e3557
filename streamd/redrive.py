"""`streamd redrive`: dead letters back into kafka.topic, once each, after their cause was fixed.

Every dead letter of kafka.topic in kafka.dead_letter_topic (those dead-lettered within --since/--until,
by the dead-letter topic's Kafka timestamp, and of reason --reason) is produced again to kafka.topic with
its key, value and every header it carries, plus `streamd.redriven` naming the dead letter's coordinates
(see streamd.dead_letter), through an idempotent acks=all producer.

Once is kept by a ledger: the collection LEDGER of mongodb.database holds one small document per message
redriven, keyed by the original message's coordinates and Kafka timestamp, written once Kafka has
acknowledged the copy. A later run skips what the ledger holds, and so does a repeat of the same dead
letter (the dead-letter topic is written at least once). Should a run die between Kafka's acknowledgement
and the ledger write, the next one sends that message again; the store still keeps one: a message with an
id is stored under it, and one without keeps the fallback id of the message it first was.

Dead letters whose value was too large for the dead-letter topic (streamd.error.value_dropped) carry no
value and cannot be redriven: they are counted apart and left alone.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from pymongo.errors import BulkWriteError

from streamd import group_offsets, store
from streamd.config import Config
from streamd.dead_letter import FORWARDING_SETTINGS, REDRIVEN, VALUE_DROPPED, DeadLetter
from streamd.group_offsets import partitions_of
from streamd.kafka import ensure_topic, make_client
from streamd.verify.report import Progress, VerifyError
from streamd.verify.topic import KAFKA_TIMEOUT, offset_range, read_partition, topic_partitions

LEDGER = "streamd_redrives"
FLUSH_TIMEOUT = 30.0  # seconds Kafka gets to acknowledge what one run sent


class RedriveError(VerifyError):
    """The redrive could not be made (a server does not answer); one sentence."""


@dataclass
class RedriveReport:
    """What one run selected, and where each selected dead letter went."""

    topic: str
    dry_run: bool = False
    selected: int = 0  # dead letters of kafka.topic passing --reason, --since and --until
    sent: int = 0  # produced again and acknowledged (with --dry-run: would be sent)
    skipped: int = 0  # already redriven, by an earlier run or as a repeat in this one
    value_dropped: int = 0  # no value to send: it was too large for the dead-letter topic
    failed: int = 0  # not acknowledged by Kafka in time: run again
    reasons: dict[str, Counter] = field(default_factory=dict)  # reason -> {"selected", "sent", "skipped", ...}

    def count(self, reason: str, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.reasons.setdefault(reason, Counter())[outcome] += 1

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def lines(self) -> list[str]:
        verb = "would send" if self.dry_run else "sent"
        out = [
            f"selected {self.selected} dead letters of {self.topic}: {verb} {self.sent}, "
            f"skipped {self.skipped} already redriven, failed {self.failed}"
            + (f", {self.value_dropped} without a value (left alone)" if self.value_dropped else "")
        ]
        for reason, counts in sorted(self.reasons.items()):
            out.append(
                f"  {reason:<16}{counts['selected']:>8} selected  {counts['sent']:>8} {verb}  "
                f"{counts['skipped']:>8} skipped"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "dry_run": self.dry_run,
            "selected": self.selected,
            "sent": self.sent,
            "skipped": self.skipped,
            "value_dropped": self.value_dropped,
            "failed": self.failed,
            "reasons": {reason: dict(counts) for reason, counts in self.reasons.items()},
            "ok": self.ok,
        }


def ledger_key(letter: DeadLetter) -> str:
    """The original message's coordinates and Kafka timestamp: a recreated topic reuses offsets, not timestamps."""
    stamp = "" if letter.timestamp_ms is None else letter.timestamp_ms
    return f"{letter.topic}:{letter.partition}:{letter.offset}@{stamp}"


def redrive(
    config: Config,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
    progress: TextIO | None = None,
) -> RedriveReport:
    """Produce the selected dead letters of kafka.topic back to it, each once. Raises KafkaUnavailable or
    RedriveError when it cannot be made."""
    report = RedriveReport(config.kafka.topic, dry_run)
    show = Progress(progress)
    name = config.kafka.dead_letter_topic
    reader = make_client(
        Consumer,
        config.kafka,
        "redrive",
        {"group.id": f"streamd-redrive-{uuid.uuid4().hex}", "enable.auto.commit": False, "enable.partition.eof": True},
    )
    admin = make_client(AdminClient, config.kafka, "redrive")
    ledger = store.connect(config.mongodb)[config.mongodb.database][LEDGER]
    try:
        done = {document["_id"] for document in ledger.find({}, {"_id": 1})}
        partitions = topic_partitions(reader, config, name) or []
        marks = group_offsets.watermarks(admin, partitions_of(name, partitions), KAFKA_TIMEOUT)
        sender = None if dry_run else _Sender(config)
        for partition in partitions:
            start, end = offset_range(reader, name, partition, marks[(name, partition)], since, until)
            for chunk in read_partition(reader, name, partition, start, end, show, "dead letters"):
                for message in chunk:
                    letter = DeadLetter.read(message)
                    if letter is None or letter.topic != config.kafka.topic:
                        continue
                    if reason is not None and letter.reason != reason:
                        continue
                    report.count(letter.reason, "selected")
                    key = ledger_key(letter)
                    if key in done:
                        report.count(letter.reason, "skipped")
                    elif any(header == VALUE_DROPPED for header, _ in message.headers() or ()):
                        report.count(letter.reason, "value_dropped")
                    else:
                        done.add(key)
                        if sender is None:
                            report.count(letter.reason, "sent")
                        else:
                            sender.send(message, letter, key)
                if sender is not None:
                    _record(ledger, sender.acknowledged(0), report)
        if sender is not None:
            _record(ledger, sender.acknowledged(FLUSH_TIMEOUT), report)
            for letter in sender.unacknowledged():
                report.count(letter.reason, "failed")
        return report
    except store.UNAVAILABLE as exc:
        raise RedriveError(
            f"the store named by mongodb.uri did not answer within {config.mongodb.timeout_ms} ms "
            f"({type(exc).__name__}); the redrive ledger is kept there: start it or fix mongodb.uri."
        ) from None
    finally:
        reader.close()
        ledger.database.client.close()


def _record(ledger: Any, acknowledged: list[tuple[str, DeadLetter]], report: RedriveReport) -> None:
    """The ledger entries of what Kafka acknowledged, then the counts (an entry already there is fine)."""
    if not acknowledged:
        return
    entries = [{"_id": key, "reason": letter.reason, "at": datetime.now(UTC)} for key, letter in acknowledged]
    try:
        ledger.insert_many(entries, ordered=False)
    except BulkWriteError as exc:
        if any(error["code"] != store.DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
            raise
    for _, letter in acknowledged:
        report.count(letter.reason, "sent")


class _Sender:
    """An idempotent acks=all producer for kafka.topic that remembers which copies Kafka acknowledged."""

    def __init__(self, config: Config) -> None:
        ensure_topic(config, config.kafka.topic)
        self.topic = config.kafka.topic
        self.producer = make_client(Producer, config.kafka, "redrive", FORWARDING_SETTINGS)
        self.pending: dict[str, DeadLetter] = {}
        self.done: list[tuple[str, DeadLetter]] = []

    def send(self, message: Message, letter: DeadLetter, key: str) -> None:
        where = f"{message.topic()}:{message.partition()}:{message.offset()}"
        headers = [*(message.headers() or ()), (REDRIVEN, where.encode())]

        def delivered(error: KafkaError | None, _: Message) -> None:
            # A failed copy stays pending and is counted as failed: the next run sends it again.
            if error is None:
                self.done.append((key, self.pending.pop(key)))

        self.pending[key] = letter
        while True:
            try:
                self.producer.produce(
                    self.topic, message.value(), message.key(), headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                self.producer.poll(0.1)  # librdkafka's queue is full: delivery reports make room

    def acknowledged(self, timeout: float) -> list[tuple[str, DeadLetter]]:
        """What Kafka acknowledged since the last call, after waiting up to `timeout` s for everything."""
        if timeout:
            self.producer.flush(timeout)
        else:
            self.producer.poll(0)
        done, self.done = self.done, []
        return done

    def unacknowledged(self) -> list[DeadLetter]:
        return list(self.pending.values())
