"""Kafka as streamd uses it: librdkafka client settings from config.kafka, and topic creation."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamd.config import Config, ConfigError, KafkaConfig
from streamd.credentials import kafka_security

log = logging.getLogger(__name__)

TOPIC_TIMEOUT = 10.0
REPEAT_WINDOW = 60.0  # seconds during which librdkafka repeating a log line is not logged again
_TIMINGS = re.compile(r" \(after \d+ms in state \w+\)|\d+ms")  # what differs between two repeats

Client = TypeVar("Client")


class KafkaUnavailable(Exception):
    """The brokers did not answer, or refused a request streamd cannot work without; one sentence."""


class RepeatFilter(logging.Filter):
    """Lets each distinct librdkafka line through once per REPEAT_WINDOW.

    While a broker is down librdkafka reports every reconnect attempt, for every connection it keeps,
    several a second: the first line says it all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = _TIMINGS.sub("", record.getMessage())
        now = time.monotonic()
        if now - self.last_seen.get(key, -REPEAT_WINDOW) < REPEAT_WINDOW:
            return False
        if len(self.last_seen) > 1000:
            self.last_seen.clear()  # distinct lines are few; this only bounds a pathological case
        self.last_seen[key] = now
        return True


def librdkafka_logger(role: str) -> logging.Logger:
    logger = logging.getLogger(f"kafka.{role}")
    if not any(isinstance(existing, RepeatFilter) for existing in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger


def client_settings(
    settings: KafkaConfig,
    role: str,
    required: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """librdkafka properties for one client: the brokers, the role's defaults, the security keys, the user's
    extras, then what `role` needs.

    Precedence, lowest first: the role's defaults < the security keys (kafka.security_protocol, sasl_*,
    tls_ca_file, or the local stack's in tls mode: streamd.credentials.kafka_security) < kafka.client <
    the role's required properties.  The required ones are applied last on purpose: commit-after-write and
    the idempotent producer rest on them, so kafka.client can add or override security settings but cannot
    switch those off. The defaults are only streamd's choice, and kafka.client overrides them.
    """
    return {
        "bootstrap.servers": settings.brokers,
        "client.id": f"streamd-{role}",
        # librdkafka logs through Python logging (served from poll/consume), so its lines carry the child name.
        "logger": librdkafka_logger(role),
        **(defaults or {}),
        **kafka_security(settings),
        **settings.client,
        **(required or {}),
    }


def make_client(
    kind: Callable[[dict[str, Any]], Client],
    settings: KafkaConfig,
    role: str,
    required: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Client:
    """A Consumer, Producer or AdminClient; a property librdkafka does not accept is a ConfigError."""
    try:
        return kind(client_settings(settings, role, required, defaults))
    except KafkaException as exc:
        raise ConfigError(f"kafka.client: librdkafka refused the {role} settings ({exc.args[0].str()}).") from None


def group_member(settings: KafkaConfig, role: str, group: str, on_commit: Callable[..., None]) -> Consumer:
    """A Consumer of `group` that commits by hand, as every streamd consumer group does (consumers, analyzer)."""
    return make_client(
        Consumer,
        settings,
        role,
        {
            "group.id": group,
            "enable.auto.commit": False,
            "on_commit": on_commit,
            # librdkafka hands over an event instead of moving a partition by itself; streamd.offsets
            # decides where it restarts, and says so when the topic was recreated.
            "auto.offset.reset": "error",
            # Incremental rebalancing: a member joining or leaving moves only the partitions that must
            # move, instead of stopping the whole group.
            "partition.assignment.strategy": "cooperative-sticky",
        },
        defaults={
            # A member killed outright (SIGKILL, OOM) leaves its partitions idle until its session times
            # out: the supervisor restarts it within a second, but as a new member. librdkafka's 45 s suits
            # far-away cloud brokers; heartbeats come from librdkafka's own thread, so a busy batch never
            # delays them. kafka.client can set another value.
            "session.timeout.ms": 10_000,
            # A rebalance reaches the other members with their next heartbeat, and cooperative-sticky takes
            # two rounds: at librdkafka's 3 s a consumer joining a busy group waited up to 6 s for its
            # partitions while they sat idle. One heartbeat a second costs the broker next to nothing.
            "heartbeat.interval.ms": 1_000,
        },
    )


def ensure_topic(config: Config, name: str, partitions: int | None = None, timeout: float = TOPIC_TIMEOUT) -> bool:
    """Create topic `name` unless it exists, with kafka.replication_factor and kafka.topic_config; True when
    this call created it. Every topic streamd creates goes through here (a topic that exists is left as is).

    Raises KafkaUnavailable when the brokers do not answer within `timeout` seconds.
    """
    settings = config.kafka
    admin = make_client(AdminClient, settings, "admin")
    # Looking first means a cluster where streamd may read and write but not create topics still works
    # once an operator has created them, and it turns "no broker" into one clear error.
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.brokers} did not answer within {timeout:g}s ({exc.args[0].str()}); "
            f"start the broker or fix kafka.brokers in the config."
        ) from None
    existing = metadata.topics.get(name)
    if existing is not None and existing.error is None:
        return False

    wanted = partitions or settings.partitions
    topic = NewTopic(
        name,
        num_partitions=wanted,
        # -1: the brokers' default.replication.factor (Kafka >= 2.4), so a local cluster of three copies
        # each partition three times and a single node once, without a setting to keep in step.
        replication_factor=settings.replication_factor or -1,
        config=dict(settings.topic_config),
    )
    future = admin.create_topics([topic], request_timeout=timeout, operation_timeout=timeout)[name]
    try:
        future.result()  # request_timeout bounds this: librdkafka always resolves the future
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        # Another child (or another streamd) created it between our look and our request.
        if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise KafkaUnavailable(
            f"Kafka at {settings.brokers} did not create topic {name!r} ({error.str()}); "
            f"create it yourself or check kafka.partitions, kafka.replication_factor and kafka.topic_config."
        ) from None
    log.info("created topic %s with %d partitions", name, wanted)
    return True
