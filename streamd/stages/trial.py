"""`streamd stages try`: the configured stages run on sample messages, explained step by step.

The verdict for each message comes from the consumer's own pipeline (`Pipeline.batch` on that message
alone), so what is printed is what a consumer would do: stored (in which collection, as which
document), dropped by a filter, or dead-lettered (and why). The per-stage explanation comes from
running the chain once more with a trace. Nothing is written anywhere, and reading the topic
(`--from-topic N`) assigns partitions directly: no consumer group is joined, no offset committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message, TopicPartition

from streamd.config import Config
from streamd.kafka import KafkaUnavailable, make_client
from streamd.pipeline import Pipeline
from streamd.producer import new_message
from streamd.stages.chain import Trace, kafka_context

GENERATED = 5
READ_TIMEOUT = 10.0


class SamplesUnreadable(Exception):
    """The sample messages could not be read (file or topic); one sentence."""


def from_file(path: str, topic: str) -> list[Message]:
    """One JSON message per line (NDJSON), or a JSON array of messages; a line that is not JSON stays as it is
    (the pipeline then shows how it is dead-lettered)."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise SamplesUnreadable(f"cannot read {path} ({exc.strerror}).") from None
    values: list[bytes]
    if text.lstrip().startswith(b"["):
        try:
            values = [orjson.dumps(item) for item in orjson.loads(text)]
        except orjson.JSONDecodeError as exc:
            raise SamplesUnreadable(f"{path} starts like a JSON array but is not one ({exc}).") from None
    else:
        values = [line for line in text.splitlines() if line.strip()]
    return [_sample(topic, offset, value) for offset, value in enumerate(values)]


def generated(topic: str, source: str, count: int = GENERATED) -> list[Message]:
    """Messages as the producer makes them."""
    return [_sample(topic, offset, new_message(source)[1]) for offset in range(count)]


def from_topic(config: Config, count: int) -> list[Message]:
    """The last `count` messages of kafka.topic (the newest by Kafka timestamp over every partition)."""
    consumer = make_client(
        Consumer, config.kafka, "stages-try", {"group.id": "streamd-stages-try", "enable.auto.commit": False}
    )
    try:
        topic = config.kafka.topic
        try:
            metadata = consumer.list_topics(topic, timeout=READ_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - librdkafka reports an unreachable broker many ways
            raise KafkaUnavailable(f"cannot read topic {topic} ({exc}); is Kafka running?") from None
        partitions = sorted((metadata.topics.get(topic) and metadata.topics[topic].partitions) or {})
        ends: dict[int, int] = {}
        starts = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=READ_TIMEOUT)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, max(low, high - count)))
        if not starts:
            return []
        consumer.assign(starts)
        read: list[Message] = []
        waiting = dict(ends)
        deadline = datetime.now(UTC).timestamp() + READ_TIMEOUT
        while waiting and datetime.now(UTC).timestamp() < deadline:
            for message in consumer.consume(500, 1.0):
                if message.error() is not None:
                    continue
                read.append(message)
                if message.offset() + 1 >= waiting.get(message.partition(), 0):
                    waiting.pop(message.partition(), None)
        if waiting:
            raise SamplesUnreadable(f"topic {topic} did not hand over its last messages within {READ_TIMEOUT:.0f}s.")
        read.sort(key=lambda message: (message.timestamp()[1], message.partition(), message.offset()))
        return read[-count:]
    finally:
        consumer.close()


def explain(pipeline: Pipeline, message: Message) -> dict[str, Any]:
    """What the consumer would do with this message, with each stage's part in it."""
    batch = pipeline.batch([message])
    steps: Trace = []
    if not (batch.rejections and batch.rejections[0].stage in ("parse", "validate")):
        pipeline.chain.apply(orjson.loads(message.value()), lambda: kafka_context(message), steps)
    explained: dict[str, Any] = {"message": _shown_value(message.value()), "steps": steps}
    if batch.documents:
        explained["stored"] = {"collection": batch.targets[0], "document": batch.documents[0]}
    elif batch.filtered:
        explained["filtered"] = {"stage": next(iter(batch.filtered))}
    elif batch.rejections:
        rejection = batch.rejections[0]
        explained["dead_letter"] = {
            "stage": rejection.stage,
            "reason": rejection.reason,
            "detail": rejection.detail,
            "stage_name": rejection.stage_name,
        }
    return explained


def run(config: Config, messages: list[Message], out: TextIO, as_json: bool = False) -> None:
    pipeline = Pipeline.from_config(config)
    explained = [explain(pipeline, message) for message in messages]
    if as_json:
        out.write(orjson.dumps(explained, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
        return
    if not config.stages:
        out.write("no stages are configured: every valid message is stored as it is\n")
    if not messages:
        out.write("no messages to try (the file or the topic is empty)\n")
    for number, entry in enumerate(explained, 1):
        out.write("\n".join(_lines(number, entry, config.mongodb.collection)) + "\n\n")


def _lines(number: int, entry: dict[str, Any], main_collection: str) -> Iterator[str]:
    yield f"message {number}: {entry['message']}"
    for step in entry["steps"]:
        yield f"  {step['stage']} ({step['kind']}): {_did(step)}"
    if "stored" in entry:
        stored = entry["stored"]
        document = orjson.dumps(stored["document"], default=str).decode()
        yield f"  => stored in {stored['collection'] or main_collection}: {document}"
    elif "filtered" in entry:
        yield f"  => dropped by {entry['filtered']['stage']}: committed, neither stored nor dead-lettered"
    else:
        letter = entry["dead_letter"]
        yield f"  => dead-lettered at {letter['stage']} ({letter['reason']}): {letter['detail']}"


def _did(step: dict[str, Any]) -> str:
    action = step["action"]
    if action == "set":
        return "set " + ", ".join(f"{name} = {_shown(value)}" for name, value in step["fields"].items())
    if action == "renamed":
        moved = ", ".join(f"{old} -> {new}" for old, new in step["fields"].items())
        return f"renamed {moved}" if moved else "renamed nothing (no such field)"
    if action == "dropped fields":
        return f"dropped {', '.join(step['fields'])}" if step["fields"] else "dropped nothing (no such field)"
    if action == "routed":
        return f"routed to {step['collection']}"
    if action == "failed":
        return f"failed: {step['error']}"
    if action == "skipped":
        return f"skipped ({step.get('reason', 'where is not true')})"
    return action  # kept, dropped


def _shown(value: Any) -> str:
    return orjson.dumps(value, default=str).decode() if not isinstance(value, datetime) else value.isoformat()


def _shown_value(value: bytes | None) -> str:
    text = "" if value is None else value.decode("utf-8", errors="replace")
    return text if len(text) <= 200 else text[:199] + "…"


def _sample(topic: str, offset: int, value: bytes) -> Message:
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    return Message(
        topic=topic, partition=0, offset=offset, key=None, value=value, timestamp=(TIMESTAMP_CREATE_TIME, stamp)
    )
