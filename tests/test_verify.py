"""`streamd verify`: every message of the topic is found stored once or dead-lettered, and a loss is caught."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from streamd import cli, coordinates, verify
from streamd import config as config_module
from streamd.config import Config
from streamd.dead_letter import headers_for
from streamd.pipeline import Rejection
from streamd.stack import ferretdb_ids
from streamd.stages.spec import check_stages
from streamd.store import MessageStore
from streamd.verify import DeadLetterIndex, Reconciliation
from tests.probes import STACK_STATE_DIR, all_committed, consumer_running, end_offsets, free_port, wait_until

# --- without servers ------------------------------------------------------------------------------------


def test_the_dead_letter_index_finds_offsets_per_partition_and_counts_repeats():
    index = DeadLetterIndex()
    for partition, offset in [(0, 7), (0, 3), (1, 7), (0, 7)]:
        index.add(partition, offset, 1000 + offset)
    index.seal()
    assert index.has(0, 7, 1007) and index.has(0, 3, 1003) and index.has(1, 7, 1007)
    assert not index.has(1, 3, 1003) and not index.has(2, 7, 1007) and not index.has(0, 8, 1008)
    assert index.repeats == 1


def test_a_dead_letter_stands_only_for_the_message_with_its_timestamp_at_a_reused_offset():
    index = DeadLetterIndex()
    index.add(0, 5, 1_000)  # dead-lettered before the topic was recreated
    index.add(0, 6)  # a dead letter without the original's timestamp: the coordinates decide
    index.seal()
    assert index.has(0, 5, 1_000)
    assert not index.has(0, 5, 2_000), "a new message at a reused offset is not the old dead letter"
    assert index.has(0, 6, 2_000) and index.has(0, 5, None)


@pytest.mark.parametrize(
    ("counts", "ok"),
    [
        ({"stored": 5, "dead_lettered": 2, "repeated": 1}, True),
        ({"stored": 5, "missing": 1}, False),
        ({"stored": 5, "duplicated": 1}, False),
        ({"stored": 5, "pending": 1}, False),
        ({"stored": 5, "conflicts": 1}, False),
    ],
)
def test_only_a_topic_fully_stored_or_dead_lettered_once_passes(counts, ok):
    assert Reconciliation("t", **counts).ok is ok


# --- on the real broker and store -----------------------------------------------------------------------


def send(settings: Config, *messages: tuple[bytes | None, bytes | None]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.brokers, "enable.idempotence": True})
    for key, value in messages:
        producer.produce(settings.kafka.topic, value, key)
    assert producer.flush(10) == 0


def good(n: int) -> tuple[bytes, bytes]:
    message_id = f"v-{n:04d}"
    return message_id.encode(), orjson.dumps({"id": message_id, "text": f"message {n}"})


@pytest.fixture
def consumed(pipeline_config: Config, caplog) -> Iterator[Config]:
    """40 valid messages, 3 of them without id, and 2 poison ones, all consumed: stored or dead-lettered."""
    caplog.set_level(logging.INFO, logger="streamd")
    settings = replace(pipeline_config, consumer=replace(pipeline_config.consumer, batch_timeout_ms=50))
    send(settings, *(good(n) for n in range(37)), *((None, b'{"text": "anonymous"}'),) * 3)
    send(settings, (b"p-1", b"\xff not utf-8"), (b"p-2", b'{"id": "p-2"}'))
    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "everything consumed")
    yield settings
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.client.drop_database(settings.mongodb.database)


def run_cli(settings: Config, tmp_path: Path, *options: str) -> int:
    path = tmp_path / "verify.yaml"
    path.write_text(yaml.safe_dump(config_module.to_mapping(settings)))
    return cli.main(["verify", "-c", str(path), *options])


@pytest.mark.integration
def test_a_fully_consumed_topic_verifies_with_exit_zero(consumed: Config, tmp_path: Path, capsys):
    assert run_cli(consumed, tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    counts = {line[:17].strip(): int(line[17:27]) for line in out[:9]}
    assert counts == {
        "checked": 42,
        "stored": 40,
        "repeated ids": 0,
        "id conflicts": 0,
        "dead-lettered": 2,
        "not consumed yet": 0,
        "filtered": 0,
        "missing": 0,
        "duplicated": 0,
    }


@pytest.mark.integration
def test_a_document_deleted_by_hand_is_reported_missing_with_exit_one(consumed: Config, tmp_path: Path, capsys):
    with contextlib.closing(MessageStore(consumed.mongodb)) as store:
        gone = store.collection.find_one({"_id": "v-0013"})
        store.collection.delete_one({"_id": "v-0013"})

    assert run_cli(consumed, tmp_path) == 1

    out = capsys.readouterr().out
    report = verify.verify(consumed)
    assert (report.checked, report.stored, report.missing, report.dead_lettered) == (42, 39, 1, 2)
    where = coordinates.read(gone["kafka"])
    assert f"missing: {where} id v-0013" in out


@pytest.mark.integration
def test_messages_after_the_groups_commit_are_not_consumed_yet_and_until_leaves_them_out(consumed: Config):
    time.sleep(0.05)  # the cut falls strictly between the consumed messages' timestamps and the new ones
    cut = datetime.now(UTC)
    time.sleep(0.05)
    send(consumed, good(100), good(101))

    report = verify.verify(consumed)
    assert (report.checked, report.pending, report.missing) == (44, 2, 0)
    assert not report.ok, "unconsumed messages are not in the store"

    assert verify.verify(consumed, until=cut).ok
    since = verify.verify(consumed, since=cut)
    assert (since.checked, since.pending) == (2, 2)


@pytest.mark.integration
def test_the_same_id_sent_twice_and_stored_once_is_fine_but_reported(consumed: Config):
    send(consumed, good(5))
    with consumer_running(consumed):
        wait_until(lambda: all_committed(consumed), "the repeat consumed")
    report = verify.verify(consumed)
    assert (report.checked, report.stored, report.repeated, report.missing) == (43, 40, 1, 0)
    assert report.ok


@pytest.mark.integration
def test_a_message_both_stored_and_dead_lettered_is_a_duplicate(consumed: Config):
    with contextlib.closing(MessageStore(consumed.mongodb)) as store:
        where = coordinates.read(store.collection.find_one({"_id": "v-0007"})["kafka"])
    stored_one = Rejection("validate", "schema", "by hand", where.topic, where.partition, where.offset, None, b"")
    producer = Producer({"bootstrap.servers": consumed.kafka.brokers})
    for _ in range(2):
        producer.produce(consumed.kafka.dead_letter_topic, b"", headers=headers_for(stored_one, datetime.now(UTC)))
    assert producer.flush(10) == 0

    report = verify.verify(consumed)
    assert (report.stored, report.duplicated, report.repeated_dead_letters) == (40, 1, 1)
    assert report.problems == [f"duplicated: {where} id v-0007 is stored and dead-lettered"]
    assert not report.ok


@pytest.mark.integration
def test_long_topics_are_checked_in_bounded_windows_with_progress_on_stderr(consumed: Config, monkeypatch, capsys):
    monkeypatch.setattr(verify.topic, "WINDOW", 7)
    monkeypatch.setattr(verify.report, "PROGRESS_EVERY", 0)
    held: list[int] = []
    real_classify = verify._classify
    monkeypatch.setattr(
        verify, "_classify", lambda window, *rest: held.append(len(window)) or real_classify(window, *rest)
    )

    report = verify.verify(consumed, progress=sys.stderr)

    assert report.ok and report.checked == 42
    assert sum(held) == 42 and max(held) <= 7, "no more than WINDOW messages are held at a time"
    progress = capsys.readouterr().err
    assert f"verify: read 42/42 messages of {consumed.kafka.topic}" in progress


@pytest.mark.integration
@pytest.mark.parametrize("lookup", ["_look_up", "_scan", "_look_up_each"])
def test_index_lookups_and_a_collection_scan_find_the_same(consumed: Config, monkeypatch, lookup):
    """MongoDB is asked by `$in` on _id, FerretDB by one scan or one find per id; all must count alike."""
    with contextlib.closing(MessageStore(consumed.mongodb)) as store:
        store.collection.delete_one({"_id": "v-0002"})
    monkeypatch.setattr(verify, "LOOKUP_BATCH", 5)
    monkeypatch.setattr(verify, "_lookup_for", lambda config, message_store: getattr(verify, lookup))
    report = verify.verify(consumed)
    assert (report.checked, report.stored, report.dead_lettered, report.missing) == (42, 39, 2, 1)


@pytest.mark.integration
def test_an_unknown_topic_or_an_unreachable_store_is_one_sentence_and_exit_one(
    pipeline_config: Config, tmp_path: Path, capsys
):
    assert run_cli(pipeline_config, tmp_path) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"topic {pipeline_config.kafka.topic!r} does not exist at "
            f"{pipeline_config.kafka.brokers}; check kafka.topic."
        )
    )

    send(pipeline_config, good(1))
    away = replace(
        pipeline_config,
        mongodb=replace(pipeline_config.mongodb, uri=f"mongodb://app:s3cret@127.0.0.1:{free_port()}", timeout_ms=200),
    )
    assert run_cli(away, tmp_path) == 1
    error = capsys.readouterr().err
    assert "the store named by mongodb.uri did not answer within 200 ms (ServerSelectionTimeoutError); " in error
    assert "s3cret" not in error


def test_bad_since_is_a_usage_error_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify", "--since", "yesterday"])
    assert exit_.value.code == 2
    assert "argument --since: 'yesterday' is not an ISO 8601 date and time" in capsys.readouterr().err


def test_since_takes_iso_dates_with_or_without_offset():
    assert cli.iso_time("2024-06-01T12:00:00Z") == datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert cli.iso_time("2024-06-01T14:00:00+02:00") == datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert cli.iso_time("2024-06-01T12:00") - cli.iso_time("2024-06-01T11:00") == timedelta(hours=1)


@pytest.mark.integration
def test_a_slow_store_is_not_taken_for_kafka_stalling(consumed: Config, monkeypatch):
    """The stall timer times Kafka only: a store lookup longer than STALL_TIMEOUT between two reads is fine."""
    monkeypatch.setattr(verify.topic, "STALL_TIMEOUT", 2.0)
    monkeypatch.setattr(verify.topic, "WINDOW", 7)  # several windows, so reading resumes after a slow lookup
    real_lookup_for = verify._lookup_for

    def slow_lookup_for(config, message_store):
        lookup = real_lookup_for(config, message_store)

        def slow(*args):
            time.sleep(verify.topic.STALL_TIMEOUT + 1.5)
            return lookup(*args)

        return slow

    monkeypatch.setattr(verify, "_lookup_for", slow_lookup_for)
    report = verify.verify(consumed)
    assert report.ok and report.checked == 42


@pytest.mark.integration
def test_an_old_dead_letter_does_not_vouch_for_a_new_message_at_its_offset(consumed: Config):
    """After a topic is recreated its offsets start again: a dead letter of the old topic at offset n is not
    the new message at offset n, which must be found stored or reported."""
    with contextlib.closing(MessageStore(consumed.mongodb)) as store:
        stored_one = store.collection.find_one({"_id": "v-0007"})
        store.collection.delete_one({"_id": "v-0007"})  # as if the new message at this offset were lost
    where = coordinates.read(stored_one["kafka"])
    old = Rejection(
        "validate", "schema", "old topic", where.topic, where.partition, where.offset, None, b"", None, 1_000
    )
    producer = Producer({"bootstrap.servers": consumed.kafka.brokers})
    producer.produce(consumed.kafka.dead_letter_topic, b"", headers=headers_for(old, datetime.now(UTC)))
    assert producer.flush(10) == 0

    report = verify.verify(consumed)
    assert (report.stored, report.dead_lettered, report.missing) == (39, 2, 1)
    assert not report.ok


@pytest.mark.integration
def test_a_second_message_with_a_stored_id_and_other_content_is_a_conflict_not_a_repeat(consumed: Config):
    from prometheus_client import REGISTRY

    def conflicts() -> float:
        return REGISTRY.get_sample_value("streamd_consumer_id_conflicts_total") or 0.0

    before = conflicts()
    same_again = good(3)
    other_content = (b"v-0004", orjson.dumps({"id": "v-0004", "text": "someone else's message"}))
    send(consumed, same_again, other_content)
    with consumer_running(consumed):
        wait_until(lambda: all_committed(consumed), "both consumed")
    assert conflicts() - before == 1, "the conflict is counted, the repeat is not"

    report = verify.verify(consumed)
    assert (report.checked, report.stored, report.repeated, report.conflicts) == (44, 40, 1, 1)
    assert not report.ok
    assert any(line.startswith("id conflicts") and line.split()[2] == "1" for line in report.lines())
    assert [p for p in report.problems if "v-0004" in p and "conflict" in p]


@pytest.mark.integration
def test_messages_without_id_stored_under_the_old_fallback_form_still_verify(consumed: Config):
    """Documents stored before fallback ids were reserved keep their <topic>:<partition>:<offset> id."""
    with contextlib.closing(MessageStore(consumed.mongodb)) as store:
        for document in list(store.collection.find({"_id": {"$regex": "^~"}})):
            store.collection.delete_one({"_id": document["_id"]})
            store.collection.insert_one({**document, "_id": document["_id"][1:]})
    report = verify.verify(consumed)
    assert (report.stored, report.missing) == (40, 0) and report.ok


# --- routed collections and filter stages ---------------------------------------------------------------


def with_stages(settings: Config, *stages: dict) -> Config:
    return replace(settings, stages=check_stages(list(stages)))


ROUTE_HOT = {"name": "hot", "kind": "route", "where": "source == 'hot'", "collection": "alerts"}


def sent_at(settings: Config, *payloads: dict) -> list[tuple[dict, int, int]]:
    """Each payload with the partition and offset Kafka gave it."""
    placed: list[tuple[dict, int, int]] = []
    producer = Producer({"bootstrap.servers": settings.kafka.brokers, "enable.idempotence": True})
    for payload in payloads:
        producer.produce(
            settings.kafka.topic,
            orjson.dumps(payload),
            on_delivery=lambda error, message, payload=payload: placed.append(
                (payload, message.partition(), message.offset())
            ),
        )
    assert producer.flush(10) == 0
    return placed


def document_of(settings: Config, payload: dict, partition: int, offset: int) -> dict:
    """What the consumer stores for `payload` at these coordinates."""
    now = datetime.now(UTC)
    return {
        "_id": payload["id"],
        "content": payload["text"],
        "timestamp": now,
        "source": payload.get("source"),
        "ingested_at": now,
        "kafka": coordinates.stored(settings.kafka.topic, partition, offset),
    }


def commit_all(settings: Config) -> None:
    """The group's offsets at the end of the topic, as if its consumers had handled every message."""
    ends = [TopicPartition(settings.kafka.topic, p, end) for p, end in end_offsets(settings).items()]
    reader = Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": settings.consumer.group})
    try:
        reader.commit(offsets=ends, asynchronous=False)
    finally:
        reader.close()


@pytest.fixture
def routed_topic(pipeline_config: Config) -> Iterator[tuple[Config, list[tuple[dict, int, int]]]]:
    """Six messages, two of them hot: stored as a routing consumer would, the hot ones in `alerts`; all committed."""
    settings = with_stages(pipeline_config, ROUTE_HOT)
    payloads = [{"id": f"r-{n}", "text": f"reading {n}", "source": "hot" if n % 3 == 0 else "cool"} for n in range(6)]
    placed = sent_at(settings, *payloads)
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        alerts = store.in_collection("alerts")
        for payload, partition, offset in placed:
            target = alerts if payload["source"] == "hot" else store
            target.insert_batch([document_of(settings, payload, partition, offset)])
        commit_all(settings)
        yield settings, placed
        store.client.drop_database(settings.mongodb.database)


@pytest.mark.integration
@pytest.mark.parametrize("lookup", ["_look_up", "_scan", "_look_up_each"])
def test_messages_routed_to_another_collection_are_found_there(routed_topic, monkeypatch, lookup):
    settings, _ = routed_topic
    monkeypatch.setattr(verify, "_lookup_for", lambda config, message_store: getattr(verify, lookup))

    report = verify.verify(settings)
    assert (report.checked, report.stored, report.missing, report.duplicated) == (6, 6, 0, 0)
    assert report.ok

    unrouted = verify.verify(replace(settings, stages=()))
    assert (unrouted.stored, unrouted.missing) == (4, 2), "without the route, alerts is not looked at"


@pytest.mark.integration
def test_an_id_stored_in_two_collections_is_a_duplicate(routed_topic):
    settings, placed = routed_topic
    payload, partition, offset = next(entry for entry in placed if entry[0]["source"] == "hot")
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.insert_batch([document_of(settings, payload, partition, offset)])  # also in the main collection

    report = verify.verify(settings)

    assert (report.stored, report.duplicated, report.missing) == (6, 1, 0)
    assert not report.ok
    assert any(payload["id"] in problem and "alerts" in problem for problem in report.problems)


@pytest.mark.integration
def test_the_json_report_has_every_count(routed_topic, tmp_path: Path, capsys):
    settings, _ = routed_topic

    assert run_cli(settings, tmp_path, "--json") == 0

    answer = orjson.loads(capsys.readouterr().out)
    assert answer["ok"] is True
    assert {key: answer[key] for key in ("checked", "stored", "filtered", "missing", "duplicated")} == {
        "checked": 6,
        "stored": 6,
        "filtered": 0,
        "missing": 0,
        "duplicated": 0,
    }


@pytest.mark.integration
def test_messages_a_filter_stage_drops_are_filtered_not_missing(pipeline_config: Config, tmp_path: Path, capsys):
    """Needs the stage chain (streamd.stages): a filter stage's drops are in MessageBatch.filtered."""
    settings = with_stages(pipeline_config, {"name": "no-noise", "kind": "filter", "where": "source != 'noise'"})
    payloads = [{"id": f"f-{n}", "text": f"reading {n}", "source": "noise" if n < 3 else "kept"} for n in range(7)]
    placed = sent_at(settings, *payloads)
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        kept = [document_of(settings, *entry) for entry in placed if entry[0]["source"] == "kept"]
        store.insert_batch(kept[1:])  # one kept message is lost: it must still be reported missing
        commit_all(settings)
        try:
            report = verify.verify(settings)
            assert (report.checked, report.stored, report.filtered, report.missing) == (7, 3, 3, 1)
            assert len(report.problems) == 1 and kept[0]["_id"] in report.problems[0]

            store.insert_batch(kept[:1])
            assert run_cli(settings, tmp_path) == 0
            out = capsys.readouterr().out.splitlines()
            assert any(line.split()[:2] == ["filtered", "3"] for line in out)
        finally:
            store.client.drop_database(settings.mongodb.database)


@pytest.mark.integration
def test_messages_stored_under_a_configured_id_field_verify(pipeline_config: Config):
    settings = replace(
        pipeline_config, consumer=replace(pipeline_config.consumer, batch_timeout_ms=50, id_field="order_id")
    )
    orders = [orjson.dumps({"order_id": f"o-{n}", "id": "not-the-id", "text": f"order {n}"}) for n in range(12)]
    send(settings, *((None, value) for value in orders))
    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "everything consumed")
    try:
        with contextlib.closing(MessageStore(settings.mongodb)) as store:
            assert store.collection.find_one({"_id": "o-3"})["data"] == {"id": "not-the-id"}
        report = verify.verify(settings)
        assert (report.checked, report.stored, report.missing, report.duplicated) == (12, 12, 0, 0)
    finally:
        with contextlib.closing(MessageStore(settings.mongodb)) as store:
            store.client.drop_database(settings.mongodb.database)


@pytest.mark.integration
def test_on_the_local_ferretdb_a_few_ids_are_looked_up_one_by_one_once_indexed_and_else_scanned(
    local_stack: Config, pipeline_config: Config, monkeypatch
):
    # The state directory that started the local store (resolved: it may be a symlink, see test_ferretdb_ids).
    settings = replace(pipeline_config, state_dir=str(STACK_STATE_DIR.resolve()))
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        if not store.is_ferretdb():
            pytest.skip("the local store is mongod")
        try:
            store.ensure_indexes()
            store.insert_batch(
                [{"_id": f"s-{n}", "kafka": {"topic": "t", "partition": 0, "offset": n}} for n in range(100)]
            )
            wanted = {"s-3", "s-50", "absent"}
            scans: list[str] = []
            monkeypatch.setattr(verify, "_scan", lambda message_store, ids: scans.append(message_store.name) or {})

            assert verify._on_ferretdb(settings, store, wanted) == {}  # not indexed yet: scanned
            assert scans == [store.name]

            ferretdb_ids.index_id_lookups(settings, store.kind(), [store.name])
            assert verify._on_ferretdb(settings, store, wanted) == {"s-3": ("t", 0, 3), "s-50": ("t", 0, 50)}
            assert scans == [store.name], "a few ids beside an indexed collection are not a scan"
            verify._on_ferretdb(settings, store, {f"s-{n}" for n in range(20)})
            assert scans == [store.name] * 2, "ids many beside the collection are cheaper in one scan"
        finally:
            store.client.drop_database(settings.mongodb.database)
