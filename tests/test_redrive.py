"""`streamd redrive`: dead letters go back to the topic once their cause is fixed, and are stored exactly once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Message, Producer

from streamd import cli, redrive, verify
from streamd import config as config_module
from streamd.config import Config
from streamd.dead_letter import REDRIVEN, DeadLetter, headers_for, redriven_id
from streamd.pipeline import Rejection
from streamd.store import MessageStore
from tests.probes import all_committed, consumer_running, read_all, wait_until

# --- without servers ------------------------------------------------------------------------------------


def test_a_redriven_message_keeps_the_fallback_id_of_the_message_it_first_was():
    first = Rejection("validate", "schema", "no level", "orders", 1, 7, None, b"{}", [("trace", b"t")], 1_000)
    now = datetime(2024, 6, 1, tzinfo=UTC)
    once = [*headers_for(first, now), (REDRIVEN, b"orders.dlq:0:3")]
    # It failed again at its new coordinates and was redriven a second time: the first origin still names it.
    again = Rejection("validate", "schema", "no level", "orders", 2, 90, None, b"{}", once, 2_000)
    twice = [*headers_for(again, now), (REDRIVEN, b"orders.dlq:1:4")]
    assert redriven_id(once) == redriven_id(twice) == "~orders:1:7"
    assert DeadLetter.read(Message(topic="orders.dlq", headers=twice)).offset == 90  # the newest failure
    assert redriven_id(headers_for(first, now)) is None  # dead-lettered, never redriven
    assert redriven_id(None) is None


def test_the_report_counts_per_reason_and_fails_only_on_unacknowledged_copies():
    report = redrive.RedriveReport("orders")
    for outcome in ("selected", "sent", "selected", "skipped"):
        report.count("schema", outcome)
    report.count("stage", "selected")
    report.count("stage", "failed")
    assert report.as_dict()["reasons"] == {
        "schema": {"selected": 2, "sent": 1, "skipped": 1},
        "stage": {"selected": 1, "failed": 1},
    }
    assert (report.selected, report.sent, report.skipped, report.failed, report.ok) == (3, 1, 1, 1, False)


# --- on the real broker and store -------------------------------------------------------------------------

STRICT = {"type": "object", "required": ["level"], "properties": {"level": {"type": "string"}}}


def payloads() -> list[tuple[bytes | None, bytes]]:
    """Ten messages with an id and four without; every third one and those without id lack `level`."""
    with_id = [
        (
            f"r-{n}".encode(),
            orjson.dumps({"id": f"r-{n}", "text": f"reading {n}", **({} if n % 3 == 0 else {"level": "info"})}),
        )
        for n in range(10)
    ]
    anonymous = [(None, orjson.dumps({"text": f"anonymous {n}"})) for n in range(4)]
    return with_id + anonymous


LACKING_LEVEL = 4 + 4  # r-0, r-3, r-6, r-9 and the four without id


@pytest.fixture
def strict(pipeline_config: Config, tmp_path: Path) -> Iterator[Config]:
    schema = tmp_path / "strict.schema.json"
    schema.write_bytes(orjson.dumps(STRICT))
    settings = replace(
        pipeline_config, consumer=replace(pipeline_config.consumer, batch_timeout_ms=50, schema=str(schema))
    )
    producer = Producer({"bootstrap.servers": settings.kafka.brokers})
    for key, value in payloads():
        producer.produce(settings.kafka.topic, value, key)
    assert producer.flush(10) == 0
    consume(settings)
    yield settings
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.client.drop_database(settings.mongodb.database)


def consume(settings: Config) -> None:
    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "everything consumed")


def fixed(settings: Config) -> Config:
    return replace(settings, consumer=replace(settings.consumer, schema=None))


def stored_ids(settings: Config) -> list[str]:
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        return [document["_id"] for document in store.collection.find({}, {"_id": 1})]


def run_cli(settings: Config, tmp_path: Path, *options: str) -> int:
    path = tmp_path / "redrive.yaml"
    path.write_text(yaml.safe_dump(config_module.to_mapping(settings)))
    return cli.main(["redrive", "-c", str(path), *options])


@pytest.mark.integration
def test_redriving_twice_after_the_schema_is_fixed_stores_each_dead_letter_exactly_once(
    strict: Config, tmp_path, capsys
):
    assert len(stored_ids(strict)) == 14 - LACKING_LEVEL
    settings = fixed(strict)

    assert run_cli(settings, tmp_path, "--dry-run", "--json") == 0
    dry = orjson.loads(capsys.readouterr().out)
    assert (dry["selected"], dry["sent"], dry["skipped"], dry["reasons"]) == (
        LACKING_LEVEL,
        LACKING_LEVEL,
        0,
        {"schema": {"selected": LACKING_LEVEL, "sent": LACKING_LEVEL}},
    )
    assert len(read_all(settings.kafka.brokers, settings.kafka.topic)) == 14  # a dry run sends nothing

    first = redrive.redrive(settings)
    assert (first.selected, first.sent, first.skipped, first.failed) == (LACKING_LEVEL, LACKING_LEVEL, 0, 0)
    consume(settings)
    second = redrive.redrive(settings)
    assert (second.selected, second.sent, second.skipped) == (LACKING_LEVEL, 0, LACKING_LEVEL)
    consume(settings)

    ids = stored_ids(settings)
    assert len(ids) == len(set(ids)) == 14
    assert {f"r-{n}" for n in range(10)} <= set(ids)
    assert sorted(i for i in ids if i.startswith("~")) == sorted(
        f"~{settings.kafka.topic}:{p}:{o}" for p, o in anonymous(settings)
    )
    copies = [m for m in read_all(settings.kafka.brokers, settings.kafka.topic) if REDRIVEN in dict(m.headers() or ())]
    assert len(copies) == LACKING_LEVEL  # produced once, not once per run
    report = verify.verify(settings)
    assert report.ok and (report.stored, report.dead_lettered, report.duplicated) == (14, LACKING_LEVEL, 0), (
        report.lines()
    )


def anonymous(settings: Config) -> list[tuple[int, int]]:
    """Where the messages without an id were first written."""
    return [
        (m.partition(), m.offset())
        for m in read_all(settings.kafka.brokers, settings.kafka.topic)
        if m.key() is None and REDRIVEN not in dict(m.headers() or ())
    ]


@pytest.mark.integration
def test_a_redrive_before_the_fix_dead_letters_again_with_history_and_a_lost_ledger_still_stores_once(strict: Config):
    again = redrive.redrive(strict, reason="schema")
    assert again.sent == LACKING_LEVEL
    consume(strict)  # the schema is still strict: each copy fails again
    letters = [DeadLetter.read(m) for m in read_all(strict.kafka.brokers, strict.kafka.dead_letter_topic)]
    redriven = [
        m for m in read_all(strict.kafka.brokers, strict.kafka.dead_letter_topic) if REDRIVEN in dict(m.headers() or ())
    ]
    assert len(letters) == 2 * LACKING_LEVEL and len(redriven) == LACKING_LEVEL
    assert all(len([n for n, _ in m.headers() if n == "streamd.original.offset"]) == 2 for m in redriven)

    settings = fixed(strict)
    assert redrive.redrive(settings, reason="not_json").selected == 0
    fixed_run = redrive.redrive(settings)
    # The first dead letters were redriven already; the second ones are new and go.
    assert (fixed_run.selected, fixed_run.sent, fixed_run.skipped) == (2 * LACKING_LEVEL, LACKING_LEVEL, LACKING_LEVEL)
    consume(settings)
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.client[settings.mongodb.database][redrive.LEDGER].drop()  # as if a run died before its ledger write
    assert redrive.redrive(settings).sent == 2 * LACKING_LEVEL
    consume(settings)
    ids = stored_ids(settings)
    assert len(ids) == len(set(ids)) == 14
    report = verify.verify(settings)
    assert report.ok and report.duplicated == 0, report.lines()
