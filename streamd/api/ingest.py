"""POST /messages: messages sent over HTTP, checked as the consumers would check them, produced to kafka.topic.

A request carries one message (a JSON object), a batch (a JSON array of objects), or NDJSON (one object
per line, `Content-Type: application/x-ndjson`). Each message is judged on its own by the consumers'
own pipeline (`Pipeline.batch`, on a Kafka message made of exactly the bytes that will be produced), so
what this endpoint accepts is what a consumer stores, and nothing it refuses ever reaches the topic.

The message is produced as the client sent it, plus an id (consumer.id_field) when it had none: the
stages are run only to check it, because the consumer runs them again, and a stage that is not
idempotent (`set: {n: "n + 1"}`) must not be applied twice. A message a filter stage would drop is
still accepted and produced (the consumer counts it as filtered); the answer names the filter.

Each API worker process holds one idempotent, acks=all producer (IngestProducer), shared by its
request threads, with a thread of its own serving delivery reports. A request answers once Kafka has
acknowledged each of its valid messages or ingest.ack_timeout has passed: a message is either
acknowledged (202) or reported not accepted (503 with Retry-After) — none is left unreported. A
message reported not accepted may still reach the topic late; sending it again is safe because it
carries its id and the store keeps one document per id.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import falcon
import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, Message, Producer

from streamd.api.errors import (
    BatchTooLong,
    BodyNotUsable,
    BodyTooLarge,
    IngestDisabled,
    IngestMisconfigured,
    MessagesNotAccepted,
    MessagesRejected,
    UnsupportedBody,
)
from streamd.api.params import reject_unknown
from streamd.config import Config, ConfigError
from streamd.dead_letter import FORWARDING_SETTINGS
from streamd.ids import message_key, new_id, offset_id
from streamd.kafka import make_client
from streamd.message_schema import Invalid
from streamd.pipeline import Pipeline, parse

log = logging.getLogger("streamd.api")

JSON = "application/json"
NDJSON = "application/x-ndjson"
POLL_INTERVAL = 0.1  # the longest the delivery-report thread sleeps, and so the delay in noticing a close
# librdkafka checks message timeouts about once a second (and the broker's answer may be on its way):
# a request waits this much past ingest.ack_timeout for the reports of messages librdkafka timed out.
REPORT_GRACE = 1.5


@dataclass(slots=True)
class Checked:
    """One message of a request after the check: ready to produce (`value`), or refused (`error`)."""

    index: int
    value: bytes | None = None
    key: bytes | None = None
    id: str | None = None  # known before producing unless consumer.id_field is empty
    filtered_by: str | None = None  # the filter stage the consumer will drop it at
    reason: str | None = None  # a refused message: the pipeline's fixed word (schema, too_large, stage…)
    error: str | None = None  # a refused message: one sentence


@dataclass(slots=True)
class Delivery:
    """What Kafka said of one produced message: nothing yet, an acknowledgement, or an error."""

    acked: bool = False
    error: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def reported(self) -> bool:
        return self.acked or self.error is not None


# --- reading the request ---------------------------------------------------------------------------


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The whole body, refused (413) beyond `limit` bytes before more than limit + 1 are read."""
    length = req.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(length, limit)
    body = req.bounded_stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(None, limit)
    return body


def media_type(req: falcon.Request) -> str:
    """The request's media type without parameters (`; charset=utf-8`), or 415 for one this endpoint cannot read."""
    kind = (req.content_type or "").partition(";")[0].strip().lower()
    if kind not in (JSON, NDJSON):
        raise UnsupportedBody(req.content_type)
    return kind


def split_messages(body: bytes, kind: str, max_batch: int) -> list[Any]:
    """The request's messages, in order: parsed values (JSON) or raw lines (NDJSON, each judged on its own).

    A body that holds no message is a 400, and so is JSON that does not parse: without it, no message
    of the request can be told from the next. One bad NDJSON line spoils that line alone.
    """
    if not body.strip():
        raise BodyNotUsable("Empty body", "the body holds no message; send a JSON object, an array or NDJSON.")
    items: list[Any]
    if kind == NDJSON:
        items = [line for line in body.split(b"\n") if line.strip()]
    else:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BodyNotUsable(
                "Body is not JSON",
                f"the body is not JSON ({exc}); send one JSON object, an array of objects, "
                f"or one object per line as {NDJSON}.",
            ) from None
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items:
            raise BodyNotUsable("Empty batch", "the body is an empty array; send at least one message.")
    if len(items) > max_batch:
        raise BatchTooLong(len(items), max_batch)
    return items


# --- the check -------------------------------------------------------------------------------------


class MessageCheck:
    """The consumers' pipeline run on each message of a request, one Pipeline per request thread.

    A StageChain binds the message it evaluates into its evaluator, so two threads must not share one.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.topic = config.kafka.topic
        self.id_field = config.consumer.id_field
        self._local = threading.local()

    @property
    def pipeline(self) -> Pipeline:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = Pipeline.from_config(self.config)
        return pipeline

    def check(self, items: Sequence[Any]) -> list[Checked]:
        pipeline = self.pipeline
        stamp = int(time.time() * 1000)
        return [self._one(pipeline, index, item, stamp) for index, item in enumerate(items)]

    def _one(self, pipeline: Pipeline, index: int, item: Any, stamp: int) -> Checked:
        if isinstance(item, bytes):  # an NDJSON line: the consumer's own parse says what is wrong with it
            try:  # its size is judged below, on the bytes that will be produced
                item = parse(item, len(item))
            except Invalid as exc:
                return Checked(index, reason=exc.reason, error=exc.detail)
        if type(item) is dict and self.id_field is not None and self.id_field not in item:
            item = {self.id_field: new_id(), **item}
        value = orjson.dumps(item)
        key = message_key(item, self.id_field) if type(item) is dict else None
        # The message a consumer will read, but for where it lands: a stage reading kafka.partition or
        # kafka.offset sees 0 here (the partition is only known once Kafka has it).
        probe = Message(
            topic=self.topic, partition=0, offset=0, key=key, value=value, timestamp=(TIMESTAMP_CREATE_TIME, stamp)
        )
        batch = pipeline.batch([probe])
        if batch.rejections:
            rejection = batch.rejections[0]
            return Checked(index, reason=rejection.reason, error=rejection.detail)
        filtered_by = next(iter(batch.filtered), None)
        checked_id = key.decode() if key is not None and self.id_field is not None else None
        return Checked(index, value, key, checked_id, filtered_by)


# --- the producer ----------------------------------------------------------------------------------


class IngestProducer:
    """One worker process's producer for kafka.topic: idempotent, acks=all, with its delivery reports
    served by a thread of its own, so a request waits only for its own messages' reports."""

    def __init__(self, config: Config) -> None:
        self.topic = config.kafka.topic
        self.ack_timeout = config.ingest.ack_timeout
        # librdkafka fails a message it could not deliver within message.timeout.ms: with the request's own
        # deadline, an unreachable Kafka is a 503 after ack_timeout, and no message waits in the queue past
        # the request that answered for it.
        expiry = round(self.ack_timeout * 1000)
        settings = {**FORWARDING_SETTINGS, "message.timeout.ms": expiry, "error_cb": self._on_error}
        self.producer = make_client(Producer, config.kafka, "api-ingest", settings)
        self.fatal: str | None = None  # a fatal error: this producer can send nothing more
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, name="ingest-deliveries", daemon=True)
        self._poller.start()

    def send(self, messages: Sequence[Checked]) -> list[Delivery]:
        """Produce `messages` and wait for their delivery reports, up to ingest.ack_timeout (plus a grace for
        librdkafka's own timeout report); each Delivery says acknowledged, or why not."""
        awaited = AwaitedReports(len(messages))
        deadline = time.monotonic() + self.ack_timeout + REPORT_GRACE
        for index, checked in enumerate(messages):
            if self.fatal is not None:
                awaited.refuse_from(index, f"this API worker's Kafka producer failed ({self.fatal}); retry shortly")
                break
            try:
                self.producer.produce(self.topic, checked.value, checked.key, on_delivery=awaited.expect(index))
            except BufferError:
                awaited.withdraw(index)
                awaited.refuse_from(index, "this API worker's queue to Kafka is full (Kafka is slow or away)")
                break
            except KafkaException as exc:
                awaited.withdraw(index, f"Kafka refused it ({exc.args[0].str()})")
        late = f"Kafka did not acknowledge it within ingest.ack_timeout ({self.ack_timeout:g} s)"
        return awaited.wait(deadline, late)

    def close(self, timeout: float) -> int:
        """Stop serving reports and wait up to `timeout` s for the queued messages; how many are left unsent."""
        self._closing.set()
        self._poller.join(timeout=POLL_INTERVAL * 10)
        return self.producer.flush(timeout)

    def _serve_reports(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(POLL_INTERVAL)

    def _on_error(self, error: KafkaError) -> None:
        # Unreachable brokers are reported here too, but librdkafka retries those on its own; only a fatal
        # error (the idempotent producer fenced or out of sequence) ends this producer.
        if error.fatal():
            self.fatal = error.str()
            log.error("the ingest producer hit a fatal Kafka error and will be replaced: %s", error.str())


class AwaitedReports:
    """The delivery reports one request waits for; the report thread fills them in as they come."""

    def __init__(self, count: int) -> None:
        self.deliveries = [Delivery() for _ in range(count)]
        self._outstanding = 0
        self._changed = threading.Condition()

    def expect(self, index: int) -> Callable[[KafkaError | None, Message], None]:
        """The on_delivery callback of message `index`, counted as outstanding until it runs."""
        delivery = self.deliveries[index]
        with self._changed:
            self._outstanding += 1

        def delivered(error: KafkaError | None, message: Message) -> None:
            with self._changed:
                if error is None:
                    delivery.acked, delivery.partition, delivery.offset = True, message.partition(), message.offset()
                else:
                    delivery.error = f"Kafka did not acknowledge it ({error.str()})"
                self._outstanding -= 1
                self._changed.notify_all()

        return delivered

    def withdraw(self, index: int, error: str | None = None) -> None:
        """Message `index` was never queued (produce() raised): no report will come for it."""
        with self._changed:
            self._outstanding -= 1
            self.deliveries[index].error = error

    def refuse_from(self, start: int, error: str) -> None:
        with self._changed:
            for delivery in self.deliveries[start:]:
                delivery.error = error

    def wait(self, deadline: float, late: str) -> list[Delivery]:
        """Every report, or those in by `deadline` (monotonic) with `late` for the others."""
        with self._changed:
            self._changed.wait_for(lambda: self._outstanding == 0, timeout=max(0.0, deadline - time.monotonic()))
            # Copied under the lock, so that a report arriving later cannot change a request being answered.
            return [Delivery(d.acked, d.error if d.reported else late, d.partition, d.offset) for d in self.deliveries]


# --- the endpoint ----------------------------------------------------------------------------------


class Ingest:
    """POST /messages for one worker process; `producer` hands out the process's IngestProducer."""

    def __init__(self, config: Config, producer: Callable[[], IngestProducer]) -> None:
        self.config = config
        self.settings = config.ingest
        self.max_message_bytes = config.consumer.max_message_bytes
        self.id_field = config.consumer.id_field
        self.check = MessageCheck(config)
        self.producer = producer

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.settings.enabled:
            raise IngestDisabled()
        reject_unknown(req.params, ())
        kind = media_type(req)
        items = split_messages(read_body(req, self.settings.max_body_bytes), kind, self.settings.max_batch)
        try:
            checked = self.check.check(items)
            valid = [message for message in checked if message.error is None]
            rejected = [rejected_entry(message) for message in checked if message.error is not None]
            if not valid:
                raise MessagesRejected(rejected)
            producer = self.producer()
        except ConfigError as exc:
            # Read when first used: consumer.schema's file, kafka.client's properties.
            raise IngestMisconfigured(str(exc)) from None
        deliveries = producer.send(valid)
        accepted, not_accepted = [], []
        for message, delivery in zip(valid, deliveries, strict=True):
            if delivery.acked:
                accepted.append(self._accepted_entry(message, delivery))
            else:
                not_accepted.append({"index": message.index, "id": message.id, "error": delivery.error})
        if not_accepted:
            raise MessagesNotAccepted(accepted, rejected, not_accepted, retry_after(self.settings.ack_timeout))
        resp.status = falcon.HTTP_202
        resp.media = {"accepted": accepted, "rejected": rejected}

    def _accepted_entry(self, message: Checked, delivery: Delivery) -> dict[str, Any]:
        # Without consumer.id_field the consumer stores a message under where Kafka put it.
        stored_as = message.id or offset_id(self.config.kafka.topic, delivery.partition or 0, delivery.offset or 0)
        entry: dict[str, Any] = {"index": message.index, "id": stored_as}
        if message.filtered_by is not None:
            entry["filtered_by"] = message.filtered_by
        return entry


def rejected_entry(message: Checked) -> dict[str, Any]:
    return {"index": message.index, "reason": message.reason, "error": message.error}


def retry_after(ack_timeout: float) -> int:
    """Seconds a client should wait before sending the unaccepted messages again: one deadline's worth."""
    return max(1, math.ceil(ack_timeout))


__all__ = ["JSON", "NDJSON", "Checked", "Delivery", "Ingest", "IngestProducer", "MessageCheck"]
