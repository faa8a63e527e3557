"""The message store on the real MongoDB-wire server: idempotent batch writes and the API's indexes."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.errors import InvalidOperation

from streamd import config as config_module
from streamd import coordinates
from streamd.config import Config, ConfigError
from streamd.store import (
    DUPLICATE_KEY,
    RETRYABLE_WRITE_CODES,
    UNAVAILABLE,
    MessageStore,
    StoreBusy,
    StoreKind,
    WriteOutcome,
    connect,
    newest_filter,
    write_outcome,
)
from tests.probes import free_port


@pytest.fixture
def message_store(pipeline_config: Config):
    store = MessageStore(pipeline_config.mongodb)
    yield store
    store.client.drop_database(pipeline_config.mongodb.database)
    store.close()


def document(message_id: str, offset: int = 0) -> dict:
    return {
        "_id": message_id,
        "content": f"message {message_id}",
        "timestamp": datetime(2024, 6, 1, 12, 0, offset % 60, tzinfo=UTC),
        "source": "test",
        "ingested_at": datetime(2024, 6, 1, 12, 1, tzinfo=UTC),
        "kafka": coordinates.stored("t", 0, offset),
    }


def test_a_batch_is_stored_and_reads_back_in_the_stored_shape(message_store):
    batch = [document(f"m-{n}", n) for n in range(5)]
    assert message_store.insert_batch(batch) == WriteOutcome(inserted=5, duplicates=0)
    assert message_store.collection.find_one({"_id": "m-3"}) == document("m-3", 3)


def test_writing_the_same_batch_again_inserts_nothing_and_counts_duplicates(message_store):
    batch = [document(f"m-{n}", n) for n in range(10)]
    message_store.insert_batch(batch)

    assert message_store.insert_batch(batch) == WriteOutcome(inserted=0, duplicates=10)
    assert message_store.collection.count_documents({}) == 10


def test_a_batch_mixing_new_and_stored_messages_inserts_only_the_new_ones(message_store):
    message_store.insert_batch([document("m-1"), document("m-3")])

    outcome = message_store.insert_batch([document(f"m-{n}") for n in range(5)])

    assert outcome == WriteOutcome(inserted=3, duplicates=2)
    assert sorted(d["_id"] for d in message_store.collection.find()) == [f"m-{n}" for n in range(5)]


def test_the_same_message_twice_in_one_batch_is_stored_once(message_store):
    assert message_store.insert_batch([document("m-1"), document("m-1", 1)]) == WriteOutcome(1, 1)


def test_duplicates_that_are_replays_or_repeats_are_told_from_id_conflicts(message_store):
    message_store.insert_batch([document("replayed", 1), document("repeated", 2), document("claimed", 3)])
    outcome = message_store.insert_batch(
        [
            document("replayed", 1),  # the very coordinates: a replay
            document("repeated", 7),  # elsewhere, but the same content and source: sent twice
            {**document("claimed", 8), "content": "another message"},
            document("new", 9),
        ]
    )
    assert outcome == WriteOutcome(inserted=1, duplicates=3)
    [conflict] = message_store.conflicts(outcome.duplicated)
    assert (conflict.id, conflict.stored.offset, conflict.refused.offset) == ("claimed", 3, 8)
    assert "t[0]@8" in str(conflict) and "t[0]@3" in str(conflict)


def test_an_empty_batch_is_a_no_op(message_store):
    assert message_store.insert_batch([]) == WriteOutcome(0, 0)


def test_a_failure_other_than_a_duplicate_is_a_refusal_not_a_duplicate(message_store):
    outcome = message_store.insert_batch([document("m-1"), {"_id": "m-2", "$where": "not a field name"}])
    assert (outcome.inserted, outcome.duplicates) == (1, 0)
    assert list(outcome.refused) == [1] and outcome.refused[1].startswith("the store refused the document: ")


def test_a_document_bson_cannot_encode_is_refused_and_the_rest_of_the_batch_stored(message_store):
    # JSON allows integers up to 2**64 - 1 (orjson reads them), BSON only up to 2**63 - 1.
    huge = {**document("m-2", 2), "data": {"count": 2**64 - 1}}
    outcome = message_store.insert_batch([document("m-1", 1), huge, document("m-3", 3)])
    assert (outcome.inserted, list(outcome.refused)) == (2, [1])
    assert "cannot be stored" in outcome.refused[1]


def test_ensure_indexes_creates_the_indexes_the_api_queries_need_on_mongodb_and_can_run_again(pipeline_config):
    on_mongodb = MessageStore(pipeline_config.mongodb, kind=StoreKind(None))
    try:
        on_mongodb.ensure_indexes()
        on_mongodb.ensure_indexes()
        keys = [index["key"] for index in on_mongodb.collection.index_information().values()]
        assert [("timestamp", -1), ("_id", -1)] in keys
        assert [("source", 1), ("timestamp", -1), ("_id", -1)] in keys
    finally:
        on_mongodb.client.drop_database(pipeline_config.mongodb.database)
        on_mongodb.close()


def test_consumers_creating_the_collection_at_once_all_carry_on(pipeline_config):
    """Each consumer ensures the collection at start; whoever loses the race to create it is not an error."""
    stores = [MessageStore(pipeline_config.mongodb, kind=StoreKind("v1.24.2")) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            outcomes = list(pool.map(lambda each: each.ensure_indexes(), stores))
        assert outcomes == [None] * len(stores)
        assert stores[0].name in stores[0].collection.database.list_collection_names()
    finally:
        stores[0].client.drop_database(pipeline_config.mongodb.database)
        for each in stores:
            each.close()


def test_on_ferretdb_ensure_indexes_creates_the_collection_and_no_index_its_queries_cannot_use(pipeline_config):
    on_ferretdb = MessageStore(pipeline_config.mongodb, kind=StoreKind("v1.24.2"))
    try:
        on_ferretdb.ensure_indexes()
        on_ferretdb.ensure_indexes()
        assert on_ferretdb.name in on_ferretdb.collection.database.list_collection_names()
        assert list(on_ferretdb.collection.index_information()) == ["_id_"]
    finally:
        on_ferretdb.client.drop_database(pipeline_config.mongodb.database)
        on_ferretdb.close()


def test_the_store_kind_is_what_the_server_says_it_is(message_store):
    build = message_store.client.admin.command("buildInfo")
    assert message_store.kind() == StoreKind(build.get("ferretdbVersion"))
    assert message_store.in_collection("other").kind() is message_store.kind()


def test_ping_answers_when_the_store_is_up_and_raises_unavailable_when_it_is_not(message_store):
    message_store.ping()  # raises unless the server answered

    away = config_module.from_mapping({"mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200}})
    with contextlib.closing(MessageStore(away.mongodb)) as unreachable, pytest.raises(UNAVAILABLE):
        unreachable.ping()


def test_an_unreachable_store_fails_within_timeout_ms_with_an_unavailable_error():
    settings = config_module.from_mapping({"mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200}})
    store = MessageStore(settings.mongodb)
    started = time.monotonic()
    with pytest.raises(UNAVAILABLE):
        store.insert_batch([document("m-1")])
    assert time.monotonic() - started < 5
    store.close()


def test_a_malformed_uri_is_a_config_error_naming_the_key():
    settings = config_module.from_mapping({"mongodb": {"uri": "http://127.0.0.1:27017"}})
    with pytest.raises(ConfigError, match="^mongodb.uri: "):
        connect(settings.mongodb)


def test_close_leaves_a_shared_client_open_and_closes_its_own(pipeline_config: Config):
    client = connect(pipeline_config.mongodb)
    MessageStore(pipeline_config.mongodb, client=client).close()
    assert client.admin.command("ping")["ok"] == 1, "the shared client still answers"
    client.close()

    own = MessageStore(pipeline_config.mongodb)
    own.close()
    with pytest.raises(InvalidOperation):
        own.client.admin.command("ping")


# The codes a write error can carry: a duplicate, one the store refuses for good, and retryable ones.
ERROR_CODES = st.sampled_from([DUPLICATE_KEY, 121, 2, *sorted(RETRYABLE_WRITE_CODES)[:3]])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 20).flatmap(lambda n: st.tuples(st.just(n), st.dictionaries(st.integers(0, n - 1), ERROR_CODES))))
def test_every_failed_document_of_a_write_is_a_duplicate_or_a_refusal_unless_one_can_succeed_later(case):
    size, codes = case
    documents = [document(f"m-{n}", n) for n in range(size)]
    errors = [{"index": index, "code": code, "errmsg": f"error {code}"} for index, code in sorted(codes.items())]
    details = {"nInserted": size - len(errors), "writeErrors": errors}
    if any(code in RETRYABLE_WRITE_CODES for code in codes.values()):
        with pytest.raises(StoreBusy):
            write_outcome(documents, details)
        return
    outcome = write_outcome(documents, details)
    duplicated = {index for index, code in codes.items() if code == DUPLICATE_KEY}
    assert outcome.inserted == size - len(codes)
    assert outcome.duplicated == tuple(documents[index] for index in sorted(duplicated))
    assert outcome.duplicates == len(duplicated)
    assert set(outcome.refused) == set(codes) - duplicated
    assert all(reason.startswith("the store refused the document: ") for reason in outcome.refused.values())


def test_a_write_concern_error_is_a_retry_even_when_every_document_went_in():
    with pytest.raises(StoreBusy, match="write concern"):
        write_outcome([document("m-1")], {"nInserted": 1, "writeErrors": [], "writeConcernErrors": [{"code": 64}]})


@dataclass(frozen=True)
class Narrowed:
    """A Narrowing as the API's MessageQuery builds it, user-field filters included."""

    data: tuple = ()
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: None = None


def test_user_field_filters_are_equalities_on_data_and_never_operators():
    selector = newest_filter(Narrowed(data=(("sensor", ("A",)), ("temperature", ("21.5", 21.5)))))

    assert selector == {"data.sensor": "A", "data.temperature": {"$in": ["21.5", 21.5]}}


def test_reads_of_any_collection_return_the_user_fields(message_store):
    other = message_store.in_collection("routed")
    other.insert_batch([{**document("with-data"), "timestamp": datetime.now(UTC), "data": {"sensor": "A"}}])
    other.insert_batch([{**document("other"), "timestamp": datetime.now(UTC), "data": {"sensor": "B"}}])

    [found] = other.newest(Narrowed(data=(("sensor", ("A",)),)), 10, 5000)

    assert found["_id"] == "with-data" and found["data"] == {"sensor": "A"}
    assert other.by_id("other", 5000)["data"] == {"sensor": "B"}
    assert message_store.by_id("with-data", 5000) is None, "each MessageStore reads its own collection"


def test_a_store_tells_when_its_uri_asks_for_unacknowledged_writes():
    def store_at(uri: str) -> MessageStore:
        return MessageStore(config_module.from_mapping({"mongodb": {"uri": uri}}).mongodb)

    for uri, acknowledged in [
        ("mongodb://127.0.0.1:1", True),
        ("mongodb://127.0.0.1:1/?w=majority", True),
        ("mongodb://127.0.0.1:1/?w=0", False),
    ]:
        message_store = store_at(uri)
        try:
            assert message_store.writes_acknowledged() is acknowledged, uri
        finally:
            message_store.close()
