"""The producer on the real broker: what it sends, how fast, and that a stop loses nothing."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import Message

from streamd import config as config_module
from streamd.config import Config
from streamd.lifecycle import Shutdown
from streamd.producer import Sender, produce_messages, produce_once, run, send_paced
from tests.probes import free_port, logged, read_all, summaries, wait_until


def read_topic(settings: Config) -> list[Message]:
    return read_all(settings.kafka.brokers, settings.kafka.topic)


def test_produce_once_sends_count_messages_in_the_tutorial_shape(pipeline_config: Config):
    started = datetime.now(UTC)
    report = produce_once(pipeline_config, count=60, rate=None, source="test-suite")
    assert (report.sent, report.acked, report.failed) == (60, 60, 0)

    messages = read_topic(pipeline_config)
    assert len(messages) == 60
    payloads = [orjson.loads(m.value()) for m in messages]
    for message, payload in zip(messages, payloads, strict=True):
        assert set(payload) == {"id", "text", "source", "timestamp"}
        assert uuid.UUID(payload["id"]).version == 7
        assert message.key() == payload["id"].encode()
        assert payload["source"] == "test-suite"
        assert payload["text"] == f"Message généré à {payload['timestamp']}"
        sent_at = datetime.fromisoformat(payload["timestamp"])
        assert sent_at.utcoffset() == timedelta(0)
        assert started - timedelta(seconds=1) <= sent_at <= datetime.now(UTC)
    assert len({payload["id"] for payload in payloads}) == 60
    assert len({message.partition() for message in messages}) > 1, "keys by id spread over the partitions"


def test_produce_messages_sends_each_as_is_keyed_by_its_id_when_it_has_one(pipeline_config: Config):
    readings = [
        {"id": "r-1", "text": "hot", "temperature": 31.5, "sensor": "a", "tags": ["x"], "at": {"site": "north"}},
        {"text": "no id", "temperature": -4},
        {"id": 7, "text": "a numeric id"},
        {"id": {"not": "a key"}, "text": "an id no key can hold"},
    ]
    report = produce_messages(pipeline_config, readings)
    assert (report.sent, report.acked, report.failed) == (4, 4, 0)

    sent = {orjson.dumps(orjson.loads(message.value())): message.key() for message in read_topic(pipeline_config)}
    assert sent == {
        orjson.dumps(readings[0]): b"r-1",
        orjson.dumps(readings[1]): None,
        orjson.dumps(readings[2]): b"7",
        orjson.dumps(readings[3]): None,
    }, "every field arrives as written; the key is the id when it is a string or a whole number"


def test_produce_messages_keys_by_the_configured_id_field(pipeline_config: Config):
    settings = replace(pipeline_config, consumer=replace(pipeline_config.consumer, id_field="order_id"))
    produce_messages(settings, [{"id": "not-the-key", "order_id": "o-42", "text": "t"}])
    [message] = read_topic(settings)
    assert message.key() == b"o-42"


def test_produce_once_defaults_to_the_configured_source(pipeline_config: Config):
    produce_once(pipeline_config, count=1, rate=None, source=None)
    [message] = read_topic(pipeline_config)
    assert orjson.loads(message.value())["source"] == pipeline_config.producer.source


def test_produce_once_paces_messages_at_rate(pipeline_config: Config):
    started = time.monotonic()
    report = produce_once(pipeline_config, count=21, rate=40.0, source=None)
    elapsed = time.monotonic() - started
    assert report.acked == 21
    # Only the lower bound is the pace; the upper one is far off, for a loaded machine.
    assert 0.5 <= elapsed < 10, "21 messages at 40/s: the last one is due 0.5 s after the first"


class MillisecondPoller:
    """A Sender whose poll() waits in whole milliseconds, as librdkafka's does: less than one returns at once."""

    def __init__(self) -> None:
        self.sent = 0
        self.polls = 0

    def send(self, key: bytes | None, value: bytes) -> bool:
        self.sent += 1
        return True

    def poll(self, timeout: float) -> None:
        self.polls += 1
        time.sleep(int(timeout * 1000) / 1000)


def test_paced_sending_waits_between_messages_instead_of_spinning():
    """At 2000 msg/s a message is due every half millisecond, shorter than librdkafka's shortest wait."""
    sender = MillisecondPoller()
    messages = ((None, b"{}") for _ in iter(int, 1))
    send_paced(sender, messages, 2000.0, 1000, Shutdown())  # type: ignore[arg-type]
    assert sender.sent == 1000
    assert sender.polls <= 1000, "at most one wait per message, however short the interval"


@pytest.mark.parametrize(("producer", "per_second"), [({"rate": 50.0}, 50), ({"interval": 0.1}, 10)])
def test_the_generator_keeps_its_pace_and_flushes_everything_on_shutdown(
    pipeline_config: Config, caplog, producer: dict, per_second: float
):
    # A linger far longer than the run: without the final flush every message would still be queued.
    settings = replace(pipeline_config, producer=replace(pipeline_config.producer, linger_ms=30_000, **producer))
    shutdown = Shutdown()
    outcome: list[int] = []
    caplog.set_level(logging.INFO, logger="streamd.producer")
    child = threading.Thread(target=lambda: outcome.append(run(settings, shutdown)))
    child.start()
    wait_until(lambda: logged(caplog.messages, "producing to"), "the generator to start, its topic created")
    time.sleep(1.5)  # the scenario: generate for 1.5 s
    shutdown.request()
    stop_requested = time.monotonic()
    child.join(timeout=30)

    assert outcome == [0]
    assert time.monotonic() - stop_requested < 10, "a stop is noticed quickly and the flush ignores linger.ms"
    [summary] = summaries(caplog.messages)
    sent = summary["sent"]
    assert (summary["acked"], summary["failed"]) == (sent, 0)
    messages = read_topic(settings)
    assert len(messages) == sent
    # The pace, read from the send times: message n goes out at n / rate, late ones in a catching-up burst.
    moments = sorted(datetime.fromisoformat(orjson.loads(m.value())["timestamp"]) for m in messages)
    span = (moments[-1] - moments[0]).total_seconds()
    assert span >= 1.0, "it generated until the stop"
    assert 0.8 * per_second <= (sent - 1) / span <= 1.2 * per_second


def test_failed_deliveries_are_counted_and_logged_once_per_error(caplog):
    settings = config_module.from_mapping(
        {"kafka": {"brokers": f"127.0.0.1:{free_port()}", "client": {"message.timeout.ms": 300}}}
    )
    sender = Sender(settings)
    for n in range(3):
        sender.send(b"k%d" % n, b"{}")
    assert sender.flush(timeout=10) == 0
    assert (sender.report.sent, sender.report.acked, sender.report.failed) == (3, 0, 3)
    failures = [r for r in caplog.records if r.name == "streamd.producer" and "delivery" in r.getMessage()]
    assert len(failures) == 1
    assert "timed out" in failures[0].getMessage()
    assert "k0" in failures[0].getMessage(), "names the first message that failed"


def test_a_stop_cuts_in_while_the_queue_is_full_and_no_broker_answers():
    settings = config_module.from_mapping(
        {"kafka": {"brokers": f"127.0.0.1:{free_port()}", "client": {"queue.buffering.max.messages": 1}}}
    )
    shutdown = Shutdown()
    sender = Sender(settings, shutdown)
    assert sender.send(b"k0", b"{}") is True
    threading.Timer(0.5, shutdown.request).start()
    started = time.monotonic()
    assert sender.send(b"k1", b"{}") is False, "the queue never frees up: the stop request ends the wait"
    assert 0.4 < time.monotonic() - started < 10, "the send waits until the stop request (0.5 s), no longer"
    assert sender.report.sent == 1
