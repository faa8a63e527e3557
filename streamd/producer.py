"""The producer child (a message generator for demos and load) and `streamd produce` (a one-off send of
generated messages, or of the user's own from a file).

Generated messages have the tutorial's shape: {"id", "text", "source", "timestamp"}, keyed by id.
The producer is idempotent with acks=all, so librdkafka's own retries can neither duplicate nor
reorder a message within its partition.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamd.config import Config, ConfigError
from streamd.ids import message_key, new_id
from streamd.kafka import KafkaUnavailable, ensure_topic, make_client
from streamd.lifecycle import Shutdown
from streamd.metrics import series
from streamd.outage import Outage

log = logging.getLogger(__name__)

Keyed = tuple[bytes | None, bytes]  # a Kafka message: key (None: any partition) and value

POLL_INTERVAL = 0.1  # longest wait between delivery-report polls, and so the delay in noticing a stop
POLL_RESOLUTION = 0.001  # the shortest wait librdkafka's poll() makes
MAX_BURST = 10_000  # most messages sent between two polls when catching up or unpaced
FLUSH_MARGIN = 1.0  # seconds of supervisor.graceful_timeout left over after flush() for exiting


@dataclass
class ProduceReport:
    """Read the numbers freely; count only through the methods, which also feed the Prometheus series."""

    sent: int = 0
    acked: int = 0
    failed: int = 0

    def add_sent(self) -> None:
        self.sent += 1
        series.PRODUCED.inc()

    def add_acked(self) -> None:
        self.acked += 1
        series.ACKNOWLEDGED.inc()

    def add_failed(self) -> None:
        self.failed += 1
        series.PRODUCE_FAILED.inc()

    def __str__(self) -> str:
        return f"sent {self.sent}, acked {self.acked}, failed {self.failed}"


def new_message(source: str) -> Keyed:
    """(key, value) of one generated message; the key is the id, so messages spread over the partitions."""
    message_id = new_id()
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    value = orjson.dumps({"id": message_id, "text": f"Message généré à {stamp}", "source": source, "timestamp": stamp})
    return message_id.encode(), value


def delivery_settings(config: Config) -> dict[str, object]:
    """What every streamd producer needs: acks from all in-sync replicas, and idempotence so that
    librdkafka's retries after a broker restart can neither lose nor duplicate a message."""
    return {"enable.idempotence": True, "acks": "all", "linger.ms": config.producer.linger_ms}


class Sender:
    """A librdkafka producer for config.kafka.topic that counts what it sent and what the broker acknowledged.

    While a broker is away librdkafka keeps every message queued and retries it (idempotence keeps the
    retries from duplicating or reordering); a message is reported failed only once message.timeout.ms
    has passed without an acknowledgement.
    """

    def __init__(self, config: Config, shutdown: Shutdown | None = None) -> None:
        self.topic = config.kafka.topic
        self.report = ProduceReport()
        self.shutdown = shutdown or Shutdown()
        self.failing = Outage()  # failed deliveries, by error code, until an ack
        self.producer = make_client(
            Producer,
            config.kafka,
            "producer",
            {**delivery_settings(config), "on_delivery": self._delivered},
        )

    def send(self, key: bytes | None, value: bytes) -> bool:
        """Queue one message; False when a stop was requested while waiting for room in the queue."""
        while True:
            try:
                self.producer.produce(self.topic, value, key)
                break
            except BufferError:
                # librdkafka's queue is full (queue.buffering.max.messages): deliveries make room, which
                # can take until message.timeout.ms while the broker is away, so a stop must cut in.
                if self.shutdown.requested:
                    return False
                self.producer.poll(POLL_INTERVAL)
        self.report.add_sent()
        return True

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` seconds, serving delivery reports (and librdkafka's log lines)."""
        self.producer.poll(timeout)

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every delivery report (or `timeout` seconds); how many messages are still undelivered."""
        return self.producer.flush() if timeout is None else self.producer.flush(timeout)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.report.add_acked()
            if (recovery := self.failing.recovered()) is not None:
                log.info("deliveries to %s acknowledged again after %d failed", message.topic(), recovery.failures)
            return
        self.report.add_failed()
        # While the broker is away every message fails the same way: log the change, count the rest.
        if self.failing.failed(error.code()):
            key = message.key().decode(errors="replace") if message.key() else "(no key)"
            log.warning(
                "delivery of %s to %s failed: %s; this message is not in Kafka (repeats are counted, not logged)",
                key,
                message.topic(),
                error.str(),
            )


def generate(sender: Sender, source: str, rate: float | None, count: int | None, shutdown: Shutdown) -> None:
    """Send `count` generated messages (endlessly when None), `rate` per second (as fast as possible
    when None), until done or asked to stop."""
    send_paced(sender, (new_message(source) for _ in itertools.count()), rate, count, shutdown)


def send_paced(
    sender: Sender, messages: Iterator[Keyed], rate: float | None, count: int | None, shutdown: Shutdown
) -> None:
    """Send `count` of `messages` (all of them when None), `rate` per second (as fast as possible when
    None), until done or asked to stop.

    Message n is due at start + n/rate on the monotonic clock, and every loop sends all that are due,
    so high rates go out in batches and a late loop catches up instead of slowing the average down.
    """
    limit = math.inf if count is None else count
    start = time.monotonic()
    sent = 0
    while sent < limit and not shutdown.requested:
        due = int((time.monotonic() - start) * rate) + 1 if rate else limit
        burst = min(due, limit, sent + MAX_BURST) - sent
        batch = list(itertools.islice(messages, burst))
        for key, value in batch:
            if not sender.send(key, value):
                return
        sent += len(batch)
        if len(batch) < burst:  # the messages ran out before `count`
            break
        if rate:
            # librdkafka's poll() counts whole milliseconds: asked for less, it returns at once, and the loop
            # spun through every last millisecond before a message was due (a whole core at 1000 msg/s).
            wait = start + sent / rate - time.monotonic()
            sender.poll(min(max(wait, POLL_RESOLUTION), POLL_INTERVAL))
        else:
            sender.poll(0)


# What the producer child reads of the config: a reload that changes one of these restarts it. (consumer.id_field
# is read by `streamd produce --file` alone, in this module; restarting the generator for it costs nothing.)
SECTIONS = frozenset({"kafka", "producer", "logging", "supervisor.graceful_timeout", "consumer.id_field"})


def run(config: Config, shutdown: Shutdown) -> int:
    """The producer child's main: generate until stopped, then flush within the graceful timeout."""
    try:
        ensure_topic(config, config.kafka.topic)
        sender = Sender(config, shutdown)
    except (KafkaUnavailable, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    rate = config.producer.rate or 1 / config.producer.interval
    log.info("producing to %s at %g messages/s", config.kafka.topic, rate)
    status = 0
    try:
        generate(sender, config.producer.source, rate, None, shutdown)
    except KafkaException as exc:
        # A fatal error (e.g. the idempotent producer fenced): this producer instance cannot go on.
        log.error("stopping on a fatal Kafka error: %s", exc.args[0].str())
        status = 1
    grace = config.supervisor.graceful_timeout
    unflushed = sender.flush(max(grace - FLUSH_MARGIN, grace / 2))
    log.info("stopped: %s", sender.report)
    if unflushed:
        log.error("%d messages were still undelivered when the graceful timeout ran out", unflushed)
        status = 1
    return status


def produce_once(
    config: Config, count: int, rate: float | None = None, source: str | None = None, shutdown: Shutdown | None = None
) -> ProduceReport:
    """`streamd produce --count`: send `count` generated messages and wait for every delivery report.

    Raises KafkaUnavailable when the brokers do not answer, ConfigError for a bad kafka.client.
    """
    messages = (new_message(source or config.producer.source) for _ in itertools.count())
    return _send_once(config, messages, count, rate, shutdown)


def produce_messages(
    config: Config, messages: Sequence[dict[str, Any]], rate: float | None = None, shutdown: Shutdown | None = None
) -> ProduceReport:
    """`streamd produce --file`: send the user's messages as they are (as compact JSON), each keyed by
    its id (consumer.id_field) when it has one, so messages with the same id share a partition.

    Raises KafkaUnavailable when the brokers do not answer, ConfigError for a bad kafka.client.
    """
    id_field = config.consumer.id_field
    keyed = ((message_key(message, id_field), orjson.dumps(message)) for message in messages)
    return _send_once(config, keyed, len(messages), rate, shutdown)


def _send_once(
    config: Config, messages: Iterator[Keyed], count: int, rate: float | None, shutdown: Shutdown | None
) -> ProduceReport:
    shutdown = shutdown or Shutdown()
    ensure_topic(config, config.kafka.topic)
    sender = Sender(config, shutdown)
    send_paced(sender, messages, rate, count, shutdown)
    # No timeout: librdkafka reports every message within message.timeout.ms, delivered or failed.
    sender.flush()
    return sender.report
