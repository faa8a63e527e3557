"""The consumer on the real broker and store: stored exactly once, committed only after the write."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY
from pymongo.errors import BulkWriteError, DocumentTooLarge

from streamd import coordinates
from streamd.config import Config
from streamd.consumer import BatchConsumer, ConsumerCounters
from streamd.consumer.conflicts import ConflictCheck
from streamd.dead_letter import DeadLetterQueue
from streamd.lifecycle import Shutdown
from streamd.pipeline import Pipeline
from streamd.producer import produce_once
from streamd.store import MessageStore, StoreBusy, write_outcome
from tests.fault_stack import relay_to
from tests.probes import (
    all_committed,
    api_client,
    committed,
    consumer_running,
    end_offsets,
    free_port,
    logged,
    partitions,
    produce_raw,
    read_all,
    stored,
    stored_count,
    summaries,
    wait_until,
)


@pytest.fixture
def settings(pipeline_config: Config, caplog) -> Iterator[Config]:
    caplog.set_level(logging.INFO, logger="streamd")
    settings = replace(pipeline_config, consumer=replace(pipeline_config.consumer, batch_timeout_ms=50))
    yield settings
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.client.drop_database(settings.mongodb.database)


def test_produced_messages_are_stored_exactly_once_in_the_stored_shape(settings: Config, caplog):
    assert produce_once(settings, count=40, rate=None, source="test-suite").acked == 40
    produce_raw(settings, b'{"text": "no id, no timestamp"}', b"not json")

    with consumer_running(settings) as outcome:
        wait_until(lambda: all_committed(settings), "every offset committed")
    assert outcome == [0]

    documents = stored(settings)
    assert len(documents) == 41
    generated = [d for d in documents if d["source"] == "test-suite"]
    assert len(generated) == 40
    for document in generated:
        assert set(document) == {"_id", "content", "timestamp", "source", "ingested_at", "kafka"}
        sent_at = datetime.fromisoformat(document["content"].removeprefix("Message généré à "))
        assert document["timestamp"] == sent_at
        assert document["timestamp"].utcoffset() == timedelta(0)
        assert document["timestamp"] <= document["ingested_at"]
        assert coordinates.read(document["kafka"]).topic == settings.kafka.topic

    [anonymous] = [d for d in documents if d["content"] == "no id, no timestamp"]
    assert anonymous["_id"] == f"~{anonymous['kafka']}", "stored under its Kafka coordinates"
    assert anonymous["source"] is None
    assert abs(anonymous["timestamp"] - anonymous["ingested_at"]) < timedelta(seconds=30), "the Kafka timestamp"

    # Exactly once: every offset of the topic is either one stored document or the one rejection.
    where = sorted(coordinates.read(d["kafka"])[1:] for d in documents)
    everything = sorted((p, o) for p, end in end_offsets(settings).items() for o in range(end))
    [rejected] = sorted(set(everything) - set(where))
    assert len(where) == len(set(where)) == len(everything) - 1
    assert logged(caplog.messages, f"{settings.kafka.topic}[{rejected[0]}]@{rejected[1]}", "not_json")
    stopped = {"consumed": 42, "stored": 41, "duplicates": 0, "rejected": 1, "dead-lettered": 1, "not_json": 1}
    assert stopped in summaries(caplog.messages)


def test_a_message_cannot_claim_the_id_of_a_message_without_one(settings: Config, caplog):
    """The id an id-less message is stored under is reserved: a foreign message can neither pre-claim it
    (the old form is an ordinary id now) nor take the reserved form (it fails the schema)."""
    topic = settings.kafka.topic
    producer = Producer({"bootstrap.servers": settings.kafka.brokers})
    for value in (
        f'{{"id": "{topic}:0:1", "text": "the old fallback form, now an ordinary id"}}',
        '{"text": "no id of its own"}',
        f'{{"id": "~{topic}:0:1", "text": "claims the reserved form"}}',
    ):
        producer.produce(topic, value.encode(), partition=0)
    assert producer.flush(10) == 0

    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "every offset committed")

    by_id = {d["_id"]: d["content"] for d in stored(settings)}
    assert by_id == {
        f"{topic}:0:1": "the old fallback form, now an ordinary id",
        f"~{topic}:0:1": "no id of its own",
    }
    [letter] = read_all(settings.kafka.brokers, settings.kafka.dead_letter_topic)
    assert letter.value() == f'{{"id": "~{topic}:0:1", "text": "claims the reserved form"}}'.encode()


def test_a_replay_into_the_same_collection_stores_nothing_twice(settings: Config, caplog):
    produce_once(settings, count=30, rate=None, source=None)
    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "the first group to commit everything")
    assert stored_count(settings) == 30

    replay = replace(settings, consumer=replace(settings.consumer, group=settings.consumer.group + "-replay"))
    with consumer_running(replay):
        wait_until(lambda: all_committed(replay), "the second group to commit everything")

    assert stored_count(settings) == 30
    replayed = {"consumed": 30, "stored": 0, "duplicates": 30, "rejected": 0, "dead-lettered": 0}
    assert replayed in summaries(caplog.messages)


def test_nothing_is_committed_while_the_store_is_unreachable_and_the_batch_is_replayed_later(settings: Config, caplog):
    produce_once(settings, count=20, rate=None, source=None)
    unreachable = replace(
        settings, mongodb=replace(settings.mongodb, uri=f"mongodb://127.0.0.1:{free_port()}", timeout_ms=100)
    )

    with consumer_running(unreachable) as outcome:
        wait_until(lambda: logged(caplog.messages, "holding", "20", "uncommitted"), "the consumer to hold the batch")
        time.sleep(1)  # a few retries
        assert committed(settings) == {}
    assert outcome == [0]
    assert committed(settings) == {}, "stopping with an unwritten batch commits nothing"
    assert logged(caplog.messages, "store unavailable", "holding") == 1, "logged once, not once per retry"

    with consumer_running(settings):
        wait_until(lambda: all_committed(settings), "the replayed batch to be stored and committed")
    assert stored_count(settings) == 20


def test_a_stop_mid_stream_finishes_and_commits_the_batch_in_hand(settings: Config, caplog):
    produce_once(settings, count=5000, rate=None, source=None)
    small_batches = replace(settings, consumer=replace(settings.consumer, batch_size=25))

    with consumer_running(small_batches) as outcome:
        wait_until(lambda: stored_count(settings) >= 200, "the first batches to be stored")
    assert outcome == [0]

    count = stored_count(settings)
    assert count < 5000, "stopped mid-stream"
    assert sum(committed(settings).values()) == count, "everything stored is committed, nothing else"
    assert logged(caplog.messages, "revoked"), "closed: it left the group"


# --- dead letters -------------------------------------------------------------------------------------


def test_a_rejected_message_is_committed_only_once_the_dead_letter_topic_acknowledged_it(settings: Config, caplog):
    # All eleven in one batch, however loaded the machine: the batch waits up to 3 s to fill.
    settings = replace(settings, consumer=replace(settings.consumer, batch_timeout_ms=3000))
    produce_once(settings, count=10, rate=None, source=None)
    produce_raw(settings, b"not json")
    dlq = settings.kafka.dead_letter_topic
    batches = BatchConsumer.open(settings, Shutdown())
    with relay_to(int(settings.kafka.brokers.rpartition(":")[2])) as relay:
        # The dead-letter producer reaches the cluster only through the relay, which opens later.
        batches.sink.dead_letters = DeadLetterQueue(
            replace(settings, kafka=replace(settings.kafka, brokers=f"127.0.0.1:{relay.port}"))
        )
        with batches_running(batches):
            wait_until(lambda: logged(caplog.messages, "not acknowledged"), "the consumer to hold the batch")
            time.sleep(1)  # the scenario: time for a wrong early commit to show
            assert committed(settings) == {}, "nothing of a batch is committed before its dead letters are acked"
            assert stored_count(settings) == 10, "the documents are stored meanwhile"
            assert read_all(settings.kafka.brokers, dlq) == []

            relay.open()
            wait_until(lambda: all_committed(settings), "the batch committed once the dead letter is acknowledged")

    [letter] = read_all(settings.kafka.brokers, dlq)
    assert letter.value() == b"not json"
    assert logged(caplog.messages, "not acknowledged") == 1, "logged once per state change"
    assert logged(caplog.messages, "acknowledged after") == 1
    assert batches.counters.dead_lettered == {"not_json": 1}


class PickyStore(MessageStore):
    """The real store, refusing documents the way MongoDB refuses one that fails validation (code 121) or
    one over 16 MiB (pymongo's DocumentTooLarge, raised for the whole insert_many). FerretDB refuses
    neither, so the refusal is simulated; everything else is written for real."""

    def insert_many(self, documents: list[dict]) -> int:
        if any(document["content"] == "too large" for document in documents):
            raise DocumentTooLarge("BSON document too large (17000042 bytes)")
        refused = [index for index, document in enumerate(documents) if document["content"] == "refuse me"]
        if not refused:
            return super().insert_many(documents)
        kept = [d for index, d in enumerate(documents) if index not in refused]
        inserted = super().insert_many(kept) if kept else 0
        errors = [{"index": index, "code": 121, "errmsg": "Document failed validation"} for index in refused]
        raise BulkWriteError({"nInserted": inserted, "writeErrors": errors, "writeConcernErrors": []})


def test_documents_the_store_refuses_are_dead_lettered_at_the_store_stage_and_the_rest_stored(settings: Config, caplog):
    values = [b'{"id": "a", "text": "fine"}', b'{"id": "b", "text": "refuse me"}', b'{"id": "c", "text": "too large"}']
    producer = Producer({"bootstrap.servers": settings.kafka.brokers})
    for value in values:
        producer.produce(settings.kafka.topic, value, key=b"k", headers=[("origin", b"test")])
    assert producer.flush(10) == 0
    batches = BatchConsumer.open(settings, Shutdown())
    batches.sink.store = PickyStore(settings.mongodb)

    with batches_running(batches):
        wait_until(lambda: all_committed(settings), "everything committed, the refused documents dead-lettered")

    assert [d["_id"] for d in stored(settings)] == ["a"]
    letters = read_all(settings.kafka.brokers, settings.kafka.dead_letter_topic)
    assert sorted(letter.value() for letter in letters) == sorted(values[1:])
    for letter in letters:
        headers = dict(letter.headers())
        assert headers["streamd.error.stage"] == b"store" and headers["streamd.error.reason"] == b"store_rejected"
        assert headers["origin"] == b"test"
    details = sorted(dict(letter.headers())["streamd.error.detail"] for letter in letters)
    assert details == [
        b"the document cannot be stored: BSON document too large (17000042 bytes)",
        b"the store refused the document: Document failed validation (code 121)",
    ]
    assert batches.counters.dead_lettered == {"store_rejected": 2}


def test_write_errors_of_single_documents_become_store_rejections_and_transient_ones_a_retry(offline: Config):
    pipeline = Pipeline.from_config(offline)
    messages = [Message(topic="t", partition=0, offset=n, value=b'{"text": "%d"}' % n) for n in range(4)]
    batch = pipeline.batch(messages)
    details = {
        "nInserted": 2,
        "writeErrors": [
            {"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"},
            {"index": 3, "code": 121, "errmsg": "Document failed validation"},
        ],
    }

    outcome = write_outcome(batch.documents, details)
    batch.refuse(outcome.refused)

    assert (outcome.inserted, outcome.duplicates) == (2, 1)
    [refused] = batch.rejections
    assert (refused.stage, refused.reason, refused.offset) == ("store", "store_rejected", 3)
    assert "Document failed validation (code 121)" in refused.detail
    assert len(batch.documents) == 3

    stepping_down = {"nInserted": 0, "writeErrors": [{"index": 0, "code": 10107, "errmsg": "not primary"}]}
    with pytest.raises(StoreBusy, match="not primary"):
        write_outcome(pipeline.batch(messages).documents, stepping_down)


# --- holding and rebalancing ---------------------------------------------------------------------------


@contextlib.contextmanager
def batches_running(batches: BatchConsumer) -> Iterator[None]:
    shutdown = batches.shutdown
    child = threading.Thread(target=batches.run, name="held-consumer")
    child.start()
    try:
        yield
    finally:
        shutdown.request()
        child.join(timeout=15)
        batches.close()
        assert not child.is_alive()


def store_away(settings: Config) -> Config:
    """The store at a port nobody serves, and a batch timeout long enough to take in everything produced."""
    return replace(
        settings,
        mongodb=replace(settings.mongodb, uri=f"mongodb://127.0.0.1:{free_port()}", timeout_ms=100),
        consumer=replace(settings.consumer, batch_timeout_ms=1000),
    )


def test_a_held_batch_pauses_fetching_and_keeps_the_consumer_in_the_group(settings: Config, caplog):
    produce_once(settings, count=30, rate=None, source=None)
    batches = BatchConsumer.open(store_away(settings), Shutdown())
    with batches_running(batches):
        wait_until(lambda: logged(caplog.messages, "paused"), "the consumer to hold its batch")
        produce_once(settings, count=30, rate=None, source=None)
        time.sleep(1.5)  # the scenario: time for a paused partition to hand out the new messages, were it not paused
        assert batches.hold.paused
        assert batches.counters.consumed == 30 and batches.hold.strays == [], "paused partitions hand out nothing more"
        batches.sink.store = MessageStore(settings.mongodb)  # the store answers again
        wait_until(lambda: all_committed(settings), "everything stored and committed after the store came back")
    assert stored_count(settings) == 60
    assert logged(caplog.messages, "store unavailable", "holding") == 1
    assert logged(caplog.messages, "store is back") == 1


def test_a_partition_taken_away_from_a_held_batch_is_neither_lost_nor_written_twice(settings: Config, caplog):
    produce_once(settings, count=300, rate=None, source=None)
    held = BatchConsumer.open(store_away(settings), Shutdown())
    with batches_running(held):
        wait_until(lambda: logged(caplog.messages, "paused"), "the first consumer to hold all 300 messages")
        assert held.counters.consumed == 300
        helper = BatchConsumer.open(settings, Shutdown())
        with batches_running(helper):
            wait_until(lambda: held.counters.dropped > 0, "a rebalance to take a partition from the held batch")
            held.sink.store = MessageStore(settings.mongodb)
            wait_until(lambda: all_committed(settings), "both consumers to finish")

    assert stored_count(settings) == 300
    assert held.counters.stored + helper.counters.stored == 300
    assert held.counters.duplicates + helper.counters.duplicates == 0, "no message was written by both"
    assert logged(caplog.messages, "dropped")


def test_finished_batches_whose_commit_is_still_pending_are_committed_when_the_partitions_go(settings: Config):
    """A commit refused during a rebalance is kept; on revoke (here: leaving the group) it goes through."""
    produce_once(settings, count=20, rate=None, source=None)
    batches = BatchConsumer.open(
        replace(settings, consumer=replace(settings.consumer, batch_timeout_ms=1000)), Shutdown()
    )
    try:
        prepared = batches.fetch()
        while not prepared.batch:
            prepared = batches.fetch()
        batch = prepared.batch
        assert batches.deliver(prepared)  # finished and booked, its commit not sent yet
        assert committed(settings) == {}
    finally:
        batches.close()
    assert {partition: offset for (_, partition), offset in batch.next_offsets.items()} == committed(settings)


# --- a topic deleted and recreated under the same name -------------------------------------------------


def one_partition(settings: Config) -> Config:
    return replace(settings, kafka=replace(settings.kafka, partitions=1))


def recreate_topic(settings: Config) -> None:
    """Delete the topic, wait until it is gone, and create it again, empty, with one partition."""
    admin = AdminClient({"bootstrap.servers": settings.kafka.brokers})
    topic = settings.kafka.topic
    admin.delete_topics([topic])[topic].result()
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
            return
        except KafkaException as exc:  # still being deleted
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} could not be recreated: {exc}") from None
            time.sleep(0.2)


def produce_ids(settings: Config, prefix: str, count: int) -> None:
    produce_raw(settings, *(orjson.dumps({"id": f"{prefix}-{n}", "text": "x"}) for n in range(count)))


def consume_the_old_topic(settings: Config) -> None:
    """With the consumer running: 20 messages in the one-partition topic it creates, all consumed."""
    # Produced to before the consumer creates it, the broker would create the topic with 3 partitions.
    wait_until(lambda: partitions(settings), "the consumer to create its one-partition topic")
    produce_ids(settings, "old", 20)
    wait_until(lambda: all_committed(settings), "the old topic consumed")


def stored_ids(settings: Config) -> set[str]:
    return {d["_id"] for d in stored(settings)}


def offset_resets(topic: str) -> float:
    return REGISTRY.get_sample_value("streamd_consumer_offset_resets_total", {"topic": topic, "partition": "0"}) or 0


def test_a_topic_recreated_under_a_running_consumer_has_every_new_message_stored(settings: Config):
    settings = one_partition(settings)
    with consumer_running(settings):
        consume_the_old_topic(settings)
        recreate_topic(settings)
        produce_ids(settings, "new", 5)
        wait_until(lambda: {f"new-{n}" for n in range(5)} <= stored_ids(settings), "the new topic stored", 60)
        wait_until(lambda: committed(settings) == {0: 5}, "the new topic committed")


def test_a_committed_offset_beyond_a_recreated_topics_end_is_reported_then_restarted_from_the_start(
    settings: Config, caplog
):
    settings = one_partition(settings)
    topic = settings.kafka.topic
    with consumer_running(settings):
        consume_the_old_topic(settings)
    recreate_topic(settings)
    produce_ids(settings, "new", 5)
    # What a consumer holding a batch across the recreation does: commits the old topic's offset to the new one.
    with contextlib.closing(
        Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": settings.consumer.group})
    ) as late:
        late.commit(offsets=[TopicPartition(topic, 0, 20)], asynchronous=False)

    with api_client(settings) as client:
        [partition] = client.simulate_get("/stats").json["lag"]["partitions"]
        assert partition["beyond_end"] and partition["lag"] == 5, "all of the new log is still to be consumed"
        ready = client.simulate_get("/ready")
        assert ready.status_code == 503 and "beyond the log end" in ready.json["checks"]["offsets"]
        assert (
            f'streamd_consumer_offsets_beyond_end{{partition="0",topic="{topic}"}} 1.0'
            in client.simulate_get("/metrics").text
        )

    resets = offset_resets(topic)
    with consumer_running(settings):
        wait_until(lambda: {f"new-{n}" for n in range(5)} <= stored_ids(settings), "the new topic stored", 60)
        wait_until(lambda: committed(settings) == {0: 5}, "the new topic committed")
    assert offset_resets(topic) - resets == 1
    assert [r for r in caplog.records if r.levelname == "ERROR" and f"{topic}[0]" in r.getMessage()]

    with api_client(settings) as client:
        assert client.simulate_get("/ready").status_code == 200
        [partition] = client.simulate_get("/stats").json["lag"]["partitions"]
        assert not partition["beyond_end"] and partition["lag"] == 0


def test_telling_replays_from_conflicts_takes_at_most_its_share_of_the_consumers_time(offline: Config, monkeypatch):
    """On FerretDB each lookup scans the collection: a replay must not turn into minutes of lookups."""
    clock = [1000.0]
    monkeypatch.setattr("streamd.consumer.conflicts.time.monotonic", lambda: clock[0])

    class SlowStore:
        lookups = 0

        def conflicts(self, duplicated):
            SlowStore.lookups += 1
            clock[0] += 2.0  # a scan of a large collection
            return []

    check = ConflictCheck(ConsumerCounters())
    slow = SlowStore()
    unchecked = REGISTRY.get_sample_value("streamd_consumer_duplicates_unchecked_total") or 0.0
    replayed = ({"_id": "user-1", "kafka": {"topic": "t", "partition": 0, "offset": 1}},)
    fallback = ({"_id": "~t:0:2", "kafka": {"topic": "t", "partition": 0, "offset": 2}},)

    check.check(slow, fallback)  # its own coordinates: a replay by construction, never looked up
    assert SlowStore.lookups == 0
    check.check(slow, replayed)  # 2 s: the whole budget of a 10 s window
    check.check(slow, replayed)
    clock[0] += 5.0
    check.check(slow, replayed)
    assert SlowStore.lookups == 1
    assert (REGISTRY.get_sample_value("streamd_consumer_duplicates_unchecked_total") or 0.0) - unchecked == 2
    clock[0] += 10.0  # the scan has left the window
    check.check(slow, replayed)
    assert SlowStore.lookups == 2
