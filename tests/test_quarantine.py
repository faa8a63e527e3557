"""Crash quarantine: a message the consumer process dies on is dead-lettered as `crash`, not a crash loop."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Message, Producer

from streamd import config as config_module
from streamd import verify
from streamd.config import Config, ConfigError
from streamd.dead_letter import DeadLetter
from streamd.producer import produce_once
from streamd.quarantine import QUARANTINE_DEATHS, Quarantine
from streamd.verify import Reconciliation
from tests.probes import all_committed, read_all, wait_until
from tests.supervisor_process import SupervisorProcess

DEADLY = Path(__file__).with_name("deadly_supervisor.py")

TOPIC = "orders"


def messages(partition: int, *offsets: int) -> list[Message]:
    return [Message(topic=TOPIC, partition=partition, offset=o, value=b'{"text": "x"}') for o in offsets]


def offsets(portions: list[list[Message]]) -> list[list[tuple[int, int]]]:
    return [[(m.partition(), m.offset()) for m in portion] for portion in portions]


def die_with_in_flight(state: Path, batch: list[Message]) -> None:
    """A consumer process that records `batch` as in flight and dies (os._exit) before finishing it."""
    pid = os.fork()
    if pid == 0:
        try:
            Quarantine.open(state).begin(batch)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)


def test_a_consumer_that_dies_mid_batch_makes_that_batch_handled_one_message_at_a_time(tmp_path: Path):
    die_with_in_flight(tmp_path, messages(0, 10, 11, 12) + messages(1, 5))
    restarted = Quarantine.open(tmp_path)
    fetched = messages(0, 8, 9, 10, 11, 12, 13) + messages(1, 4, 5, 6) + messages(2, 0)

    portions = restarted.portions(fetched)

    assert offsets(portions) == [
        [(0, 8), (0, 9)],
        [(0, 10)],
        [(0, 11)],
        [(0, 12)],
        [(0, 13), (1, 4)],
        [(1, 5)],
        [(1, 6), (2, 0)],
    ]
    assert all(restarted.condemned(m) is None for m in fetched), "one death in a batch quarantines nothing"


def test_only_repeated_deaths_on_one_message_alone_quarantine_it(tmp_path: Path):
    [deadly] = messages(0, 7)
    for _ in range(QUARANTINE_DEATHS):
        assert Quarantine.open(tmp_path).condemned(deadly) is None
        die_with_in_flight(tmp_path, [deadly])

    survivor = Quarantine.open(tmp_path)
    rejection = survivor.condemned(deadly)

    assert rejection is not None
    assert (rejection.reason, rejection.stage, rejection.offset) == ("crash", "consume", 7)
    assert f"died {QUARANTINE_DEATHS} times" in rejection.detail
    assert survivor.condemned(messages(0, 8)[0]) is None


def test_a_death_with_several_messages_in_flight_counts_against_none_of_them(tmp_path: Path):
    batch = messages(0, 4) + messages(1, 9)  # one message of each partition: not one message alone
    for _ in range(QUARANTINE_DEATHS + 1):
        die_with_in_flight(tmp_path, batch)
    survivor = Quarantine.open(tmp_path)
    assert all(survivor.condemned(m) is None for m in batch)
    assert offsets(survivor.portions(batch)) == [[(0, 4)], [(1, 9)]]


def test_a_living_consumers_record_is_left_alone_and_a_clean_stop_leaves_nothing(tmp_path: Path):
    alive = Quarantine.open(tmp_path)
    flight = alive.begin(messages(0, 1, 2))
    other = Quarantine.open(tmp_path)
    assert offsets(other.portions(messages(0, 1, 2))) == [[(0, 1), (0, 2)]]
    alive.done(flight)
    alive.close()
    other.close()
    assert [p.name for p in (tmp_path / "consumers").iterdir()] == ["suspects.lock"]


def test_suspects_are_forgotten_once_committed_by_any_consumer(tmp_path: Path):
    die_with_in_flight(tmp_path, messages(0, 3))
    die_with_in_flight(tmp_path, messages(0, 3))
    first, second = Quarantine.open(tmp_path), Quarantine.open(tmp_path)
    assert second.condemned(messages(0, 3)[0]) is not None

    first.committed(TOPIC, 0, 3)  # offset 3 itself is not committed yet
    second.refresh()
    assert second.condemned(messages(0, 3)[0]) is not None
    first.committed(TOPIC, 0, 4)
    second.refresh()
    assert second.condemned(messages(0, 3)[0]) is None
    assert len(second.portions(messages(0, 3, 4))) == 1
    assert not (tmp_path / "consumers" / "suspects.json").exists()


def test_an_ordinary_batch_is_one_portion_recorded_as_one_line_per_partition(tmp_path: Path):
    """What keeps the record cheap at ~20k messages/s: one small write per batch, never one per message."""
    quarantine = Quarantine.open(tmp_path)
    batch = messages(0, *range(500)) + messages(1, *range(500))
    [portion] = quarantine.portions(batch)
    flight = quarantine.begin(portion)
    assert quarantine.path.read_text().splitlines() == [f"{TOPIC}\t0\t0\t499", f"{TOPIC}\t1\t0\t499"]
    quarantine.done(flight)
    assert quarantine.path.read_text() == ""


def test_while_one_batch_is_written_and_the_next_prepared_the_record_holds_both(tmp_path: Path):
    """The consumer overlaps a batch's write with the next batch's preparation: a death then finds both."""
    quarantine = Quarantine.open(tmp_path)
    written = quarantine.begin(messages(0, *range(0, 500)))
    prepared = quarantine.begin(messages(0, *range(500, 1000)))
    assert quarantine.path.read_text().splitlines() == [f"{TOPIC}\t0\t0\t499", f"{TOPIC}\t0\t500\t999"]

    quarantine.done(written)
    assert quarantine.path.read_text().splitlines() == [f"{TOPIC}\t0\t500\t999"]
    quarantine.done(prepared)
    assert quarantine.path.read_text() == ""


def test_a_recreated_topic_forgets_every_suspect_of_its_partitions(tmp_path: Path):
    die_with_in_flight(tmp_path, messages(0, 3))
    die_with_in_flight(tmp_path, messages(0, 3))
    die_with_in_flight(tmp_path, messages(1, 7))
    quarantine = Quarantine.open(tmp_path)
    assert quarantine.condemned(messages(0, 3)[0]) is not None

    quarantine.restarted(TOPIC, 0)  # offset 3 of the new log is another message
    assert quarantine.condemned(messages(0, 3)[0]) is None
    assert len(quarantine.portions(messages(0, 3, 4))) == 1
    assert quarantine.is_suspect(TOPIC, 1, 7)


# --- for real: a supervised pipeline with a message that kills its consumer ---------------------------


@contextmanager
def supervised(tmp_path: Path, settings: Config, mode: str) -> Iterator[SupervisorProcess]:
    """Two consumers under the real supervisor (tests/deadly_supervisor.py), dying on b"deadly" as `mode` says;
    stopped with SIGTERM at the end (killed if that takes over 30 s)."""
    raw = config_module.to_mapping(settings)
    raw["consumer"] = {**raw["consumer"], "processes": 2, "batch_timeout_ms": 200}
    # The broker's smallest session timeout: a dead consumer's partitions move after 6 s, not 10.
    raw["kafka"] = {**raw["kafka"], "client": {"session.timeout.ms": 6000}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    environment = {"DEADLY_MODE": mode, "DEADLY_MARK": str(tmp_path / "hanging-consumer.pid")}
    command = [sys.executable, str(DEADLY), str(path)]
    sup = SupervisorProcess(path, command, tmp_path / "supervisor.log", env=environment).start()
    try:
        yield sup
    finally:
        sup.signal(signal.SIGTERM)
        try:
            sup.wait_exit(30)
        finally:
            sup.kill()


def produce_around_one_deadly(settings: Config) -> None:
    assert produce_once(settings, count=150, rate=None, source="test").acked == 150
    producer = Producer({"bootstrap.servers": settings.kafka.brokers})
    producer.produce(settings.kafka.topic, b'{"text": "deadly", "id": "the-deadly-one"}')
    assert producer.flush(10) == 0
    assert produce_once(settings, count=150, rate=None, source="test").acked == 150


def dead_letters(settings: Config) -> list[DeadLetter]:
    return [DeadLetter.read(message) for message in read_all(settings.kafka.brokers, settings.kafka.dead_letter_topic)]


def states(sup: SupervisorProcess) -> set[str]:
    return {child["state"] for child in sup.children().values()}


def finished(sup: SupervisorProcess, settings: Config) -> bool:
    """Every offset committed, or a consumer FATAL (the test then fails at once instead of timing out)."""
    return "FATAL" in states(sup) or all_committed(settings)


def reconciled(settings: Config) -> Reconciliation:
    report = verify.verify(settings)
    assert (report.missing, report.duplicated, report.pending) == (0, 0, 0), "\n".join(report.lines())
    return report


@pytest.mark.integration
def test_a_message_that_kills_every_consumer_is_quarantined_and_the_pipeline_goes_on(tmp_path, pipeline_config, store):
    produce_around_one_deadly(pipeline_config)
    with supervised(tmp_path, pipeline_config, "exit") as sup:
        sup.wait_running("consumer-1", "consumer-2", timeout=30)
        wait_until(lambda: finished(sup, pipeline_config), timeout=180, what="every offset committed, or a FATAL")
        assert "FATAL" not in states(sup), sup.log_tail()
        assert all_committed(pipeline_config)

    [quarantined] = dead_letters(pipeline_config)
    assert (quarantined.reason, quarantined.stage) == ("crash", "consume")
    assert "died 2 times" in quarantined.detail
    assert store.collection.count_documents({}) == 300
    assert store.collection.count_documents({"_id": "the-deadly-one"}) == 0
    report = reconciled(pipeline_config)
    assert (report.stored, report.dead_lettered) == (300, 1)


@pytest.mark.integration
def test_one_kill_in_the_middle_of_a_batch_quarantines_nothing(tmp_path, pipeline_config, store):
    produce_around_one_deadly(pipeline_config)
    mark = tmp_path / "hanging-consumer.pid"
    with supervised(tmp_path, pipeline_config, "hang-once") as sup:
        wait_until(mark.exists, timeout=60, what="a consumer to hang in the middle of a batch")
        os.kill(int(mark.read_text()), signal.SIGKILL)
        wait_until(lambda: finished(sup, pipeline_config), timeout=180, what="every offset committed, or a FATAL")
        assert "FATAL" not in states(sup), sup.log_tail()

    assert dead_letters(pipeline_config) == []
    assert store.collection.count_documents({}) == 301
    report = reconciled(pipeline_config)
    assert (report.stored, report.dead_lettered) == (301, 0)


def test_a_state_dir_that_cannot_be_written_is_a_config_error_sentence(tmp_path: Path):
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state directory should be")
    with pytest.raises(ConfigError, match=r"state_dir: .*consumers cannot hold the in-flight records"):
        Quarantine.open(blocked)
