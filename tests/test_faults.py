"""The fault suite: whatever crashes while messages flow, every acknowledged message ends up stored once or
dead-lettered, and `streamd verify` says so.

Each scenario sends a known set of ids (every POISON_EVERY-th one is poison) while it breaks something,
waits until the group has committed everything, then runs the same check as `streamd verify`: nothing
missing, nothing duplicated, every poison message dead-lettered and every other one stored. Message
counts are modest so CI stays quick; `--fault-scale N` (or FAULT_SCALE=N) multiplies them for a soak.
Scenarios that kill Kafka or the store run a private stack on ports of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import KafkaException, Producer

from streamd import stack
from streamd.config import Config
from streamd.dead_letter import DeadLetter
from streamd.store import MessageStore
from streamd.verify import verify

from .fault_stack import KnownProducer, kill_server, poison_count, private_stack_config, restart_servers
from .probes import all_committed, committed, consumer_running, logged, read_all, stored_count, summaries, wait_until
from .supervisor_process import SupervisorProcess, start_streamd


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> float:
    return request.config.getoption("--fault-scale")


def count_for(base: int, scale: float) -> int:
    return max(500, int(base * scale))


def progress(settings: Config) -> int:
    """Messages the group has committed so far: how far the flow got. (Kafka answers this at once, where
    counting documents makes FerretDB read the whole collection.) 0 while the coordinator cannot answer yet."""
    try:
        return sum(committed(settings).values())
    except KafkaException:
        return 0


def start_supervisor(tmp_path: Path, settings: Config, **sections: dict) -> SupervisorProcess:
    """`streamd start` with the built-in generator off unless asked for, so only known ids flow."""
    return start_streamd(tmp_path, settings, **{"producer": {"enabled": False}, **sections})


def rewrite_config(sup: SupervisorProcess, **sections: dict) -> None:
    raw = yaml.safe_load(sup.config_path.read_text())
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    sup.config_path.write_text(yaml.safe_dump(raw))


def consumers(sup: SupervisorProcess) -> dict[str, dict]:
    return {name: child for name, child in sup.children().items() if name.startswith("consumer-")}


def assert_mid_stream(settings: Config, producer: KnownProducer) -> None:
    """The fault hit while messages were flowing: still being sent, or sent and not yet all committed."""
    assert producer.thread.is_alive() or progress(settings) < producer.count, "the fault came too late"


def assert_all_delivered(
    settings: Config, producer: KnownProducer, sup: SupervisorProcess | None = None, generated: int = 0
) -> None:
    """The end of every scenario: everything acknowledged is consumed, then verified message by message.

    `generated` counts the messages streamd's own producer child acknowledged, on top of the known ones.
    """
    producer.wait(timeout=180)
    log = (lambda: f"; log:\n{sup.log_tail(40)}") if sup else (lambda: "")
    wait_until(lambda: all_committed(settings), timeout=120, what=f"the group to commit every message{log()}")
    report = verify(settings)
    poison = poison_count(producer.count)
    valid = producer.count - poison + generated
    assert (report.missing, report.duplicated, report.pending) == (0, 0, 0), report.lines()
    assert report.checked == producer.count + generated, "the idempotent producers wrote each message once"
    assert report.repeated == 0
    assert (report.stored, report.dead_lettered) == (valid, poison)
    assert stored_count(settings) == valid


@pytest.fixture
def flow(pipeline_config: Config) -> Iterator[Config]:
    yield pipeline_config
    with contextlib.closing(MessageStore(pipeline_config.mongodb)) as store:
        store.client.drop_database(pipeline_config.mongodb.database)


# --- on the session's stack -----------------------------------------------------------------------------


def owns_partitions(sup: SupervisorProcess, name: str, since: int) -> bool:
    """The log, from offset `since` on, shows `name` assigned partitions (not "assigned nothing")."""
    return any(
        f"[{name}] assigned " in line and not line.endswith("assigned nothing")
        for line in sup.log()[since:].splitlines()
    )


def test_consumers_killed_with_sigkill_several_times_lose_and_duplicate_nothing(flow: Config, tmp_path, scale):
    at_least = count_for(20_000, scale)
    sup = start_supervisor(tmp_path, flow, consumer={"processes": 2})
    try:
        sup.wait_running("consumer-1", "consumer-2", timeout=60)
        # It flows until the kills are done and at least `at_least` messages are sent: each kill costs a
        # rebalance that waits for the dead member's session to time out, so how long they take varies.
        producer = KnownProducer(flow, uuid.uuid4().hex[:8], limit=3 * at_least, rate=at_least / 20).start()
        started = {"consumer-1": 0, "consumer-2": 0}  # log offset of each consumer's latest start
        for kill in range(1, 4):
            victim = f"consumer-{kill % 2 + 1}"
            # Kill a consumer that owns partitions and is storing: it dies with a batch in hand.
            wait_until(lambda v=victim: owns_partitions(sup, v, started[v]), timeout=30, what=f"{victim} assigned")
            before = progress(flow)
            wait_until(lambda b=before: progress(flow) > b + 200, timeout=30, what="messages flowing")
            child = consumers(sup)[victim]
            os.kill(child["pid"], signal.SIGKILL)
            started[victim] = len(sup.log())

            def restarted(name: str = victim, restarts: int = child["restarts"]) -> bool:
                now = consumers(sup)[name]
                return now["state"] == "RUNNING" and now["restarts"] > restarts

            wait_until(restarted, timeout=30, what=f"{victim} restarted after kill {kill}")
        wait_until(lambda: producer.count >= at_least, timeout=60, what=f"{at_least} messages sent")
        producer.stop()
        assert_all_delivered(flow, producer, sup)
        assert sum(child["restarts"] for child in consumers(sup).values()) == 3
    finally:
        sup.kill()


def test_scaling_consumers_1_to_3_to_1_by_reload_loses_and_duplicates_nothing(flow: Config, tmp_path, scale):
    count = count_for(6_000, scale)
    sup = start_supervisor(tmp_path, flow, consumer={"processes": 1})
    try:
        sup.wait_running("consumer-1", timeout=60)
        producer = KnownProducer(flow, uuid.uuid4().hex[:8], limit=count, rate=count / 12).start()
        wait_until(lambda: progress(flow) > 200, timeout=30, what="messages flowing")

        rewrite_config(sup, consumer={"processes": 3})
        sup.signal(signal.SIGHUP)
        sup.wait_running("consumer-1", "consumer-2", "consumer-3", timeout=30)
        before = progress(flow)
        wait_until(lambda: progress(flow) > before + 500, timeout=30, what="three consumers storing")

        rewrite_config(sup, consumer={"processes": 1})
        sup.signal(signal.SIGHUP)
        assert_mid_stream(flow, producer)
        wait_until(lambda: list(consumers(sup)) == ["consumer-1"], timeout=30, what="back to one consumer")

        assert_all_delivered(flow, producer, sup)
        assert consumers(sup)["consumer-1"]["restarts"] == 0, "a scale change leaves the other consumers alone"
        assert "Traceback" not in sup.log()
    finally:
        sup.kill()


def test_a_supervisor_stopped_with_sigterm_mid_stream_and_started_again_loses_nothing(flow: Config, tmp_path, scale):
    count = count_for(5_000, scale)
    first = start_supervisor(tmp_path, flow, consumer={"processes": 2})
    try:
        first.wait_running("consumer-1", "consumer-2", timeout=60)
        producer = KnownProducer(flow, uuid.uuid4().hex[:8], limit=count, rate=count / 10).start()
        wait_until(lambda: progress(flow) > 500, timeout=30, what="messages flowing")
        first.signal(signal.SIGTERM)
        assert_mid_stream(flow, producer)
        assert first.wait_exit(timeout=60) == 0, first.log_tail()
    finally:
        first.kill()
    again = start_supervisor(tmp_path, flow, consumer={"processes": 2})
    try:
        assert_all_delivered(flow, producer, again)
    finally:
        again.kill()


def test_a_poison_corpus_from_a_foreign_producer_is_dead_lettered_exactly_with_the_right_reasons(flow: Config):
    settings = replace(flow, consumer=replace(flow.consumer, max_message_bytes=4096, batch_timeout_ms=50))
    valid = {
        "plain": b'{"id": "ok-1", "text": "hello"}',
        "no id": b'{"text": "no id: stored under its coordinates"}',
        "all fields": b'{"id": "ok-2", "text": "hi", "source": "web", "timestamp": "2024-06-01T12:00:00Z"}',
        "just under the limit": orjson.dumps({"id": "ok-3", "text": "x" * 4000}),
    }
    poison = {
        b"\xff\xfe not utf-8": "not_utf8",
        b"plain text": "not_json",
        b'[{"text": "in an array"}]': "not_object",
        b'"a JSON string"': "not_object",
        b'{"id": "p-1"}': "schema",  # no text
        b'{"id": "p-2", "text": 42}': "schema",
        b'{"id": "p-3", "text": "hi", "timestamp": "yesterday"}': "schema",
        b'{"id": "not valid!", "text": "hi"}': "schema",
        # Valid dates that leave the calendar once converted to UTC (they crashed every consumer for good).
        b'{"id": "p-5", "text": "hi", "timestamp": "0001-01-01T00:00:00+01:00"}': "schema",
        b'{"id": "p-6", "text": "hi", "timestamp": "9999-12-31T23:59:59-01:00"}': "schema",
        orjson.dumps({"id": "p-4", "text": "x" * 5000}): "too_large",
        b"": "empty",
        None: "tombstone",
    }
    foreign = Producer({"bootstrap.servers": settings.kafka.brokers})  # raw bytes, not streamd's producer
    for n, value in enumerate([*valid.values(), *poison]):
        foreign.produce(settings.kafka.topic, value, key=b"key-%d" % n, headers=[("sender", b"foreign")])
    # No timestamp of its own, and a CreateTime in year 10000, which no date can hold (it too crashed them).
    far_future = b'{"id": "p-7", "text": "dated by Kafka"}'
    foreign.produce(
        settings.kafka.topic, far_future, key=b"key-far", headers=[("sender", b"foreign")], timestamp=253402300800000
    )
    poison[far_future] = "bad_timestamp"
    assert foreign.flush(10) == 0

    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), timeout=30, what="the corpus consumed")

    letters = read_all(settings.kafka.brokers, settings.kafka.dead_letter_topic)
    assert sorted((m.value() or b"", DeadLetter.read(m).reason) for m in letters) == sorted(
        (value or b"", reason) for value, reason in poison.items()
    ), "exactly the poison, each once, with its reason"
    for letter in letters:
        headers = dict(letter.headers())
        assert headers["sender"] == b"foreign" and headers["streamd.original.topic"] == settings.kafka.topic.encode()
        assert headers["streamd.error.stage"] in (b"parse", b"validate")
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        contents = sorted(d["content"] for d in store.collection.find())
    assert contents == sorted(orjson.loads(value)["text"] for value in valid.values())

    report = verify(settings)
    assert report.ok, report.lines()
    assert (report.stored, report.dead_lettered) == (len(valid), len(poison))


# --- on a private stack whose servers are killed -------------------------------------------------------


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    settings = private_stack_config(tmp_path_factory.mktemp("fault-stack") / "state")
    stack.ensure_running(settings)
    try:
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture
def private_flow(private_stack: Config, flow: Config, tmp_path: Path) -> Config:
    """This test's topic, database and group, on the private stack."""
    return replace(
        flow,
        kafka=replace(flow.kafka, brokers=private_stack.kafka.brokers),
        mongodb=replace(flow.mongodb, uri=private_stack.mongodb.uri),
        state_dir=str(tmp_path / "pipeline"),
    )


def test_the_store_killed_and_restarted_mid_stream_pauses_the_consumers_without_a_crash(
    private_stack: Config, private_flow: Config, tmp_path, scale
):
    count = count_for(5_000, scale)
    sup = start_supervisor(tmp_path, private_flow, consumer={"processes": 2})
    try:
        sup.wait_running("consumer-1", "consumer-2", timeout=60)
        producer = KnownProducer(private_flow, uuid.uuid4().hex[:8], limit=count, rate=count / 12).start()
        wait_until(lambda: progress(private_flow) > 500, timeout=30, what="messages flowing")
        kill_server(private_stack, "store")
        assert_mid_stream(private_flow, producer)
        time.sleep(4)  # longer than mongodb.timeout_ms: the writes fail, the consumers hold and pause
        restart_servers(private_stack)

        assert_all_delivered(private_flow, producer, sup)
        restarts = {name: child["restarts"] for name, child in consumers(sup).items()}
        assert restarts == {"consumer-1": 0, "consumer-2": 0}, "no consumer crashed"
        assert sup.children()["analyzer"]["restarts"] == 0, "the analyzer held its batch too"
        lines = sup.messages("consumer-1") + sup.messages("consumer-2")
        assert 1 <= logged(lines, "store unavailable", "holding") <= 2, "once per consumer, not per retry"
        assert logged(lines, "store is back")
    finally:
        sup.kill()


def test_the_broker_killed_and_restarted_mid_stream_loses_and_duplicates_nothing(
    private_stack: Config, private_flow: Config, tmp_path, scale
):
    count = count_for(5_000, scale)
    # streamd's own generator runs too: it must ride out the restart like the consumers.
    sup = start_supervisor(tmp_path, private_flow, consumer={"processes": 2}, producer={"enabled": True, "rate": 100})
    try:
        sup.wait_running("producer", "consumer-1", "consumer-2", timeout=60)
        producer = KnownProducer(private_flow, uuid.uuid4().hex[:8], limit=count, rate=count / 15).start()
        wait_until(lambda: progress(private_flow) > 500, timeout=30, what="messages flowing")
        kill_server(private_stack, "kafka")
        assert_mid_stream(private_flow, producer)
        time.sleep(3)  # the scenario: the broker stays down for 3 s while everyone keeps trying
        restart_servers(private_stack)
        producer.wait(timeout=180)
        restarts = {name: child["restarts"] for name, child in sup.children().items() if name != "api"}
        expected = {"producer": 0, "consumer-1": 0, "consumer-2": 0, "analyzer": 0}
        assert restarts == expected, "they reconnected by themselves"

        rewrite_config(sup, producer={"enabled": False})  # stop the generator: it flushes and reports
        sup.signal(signal.SIGHUP)
        [summary] = wait_until(lambda: summaries(sup.messages("producer")), timeout=60, what="the generator's report")
        acked = summary["acked"]
        assert acked == summary["sent"] > 0 and summary["failed"] == 0, summary
        assert_all_delivered(private_flow, producer, sup, generated=acked)
    finally:
        sup.kill()
