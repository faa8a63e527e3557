"""The `_id` index the local FerretDB can use: created in its SQLite files for the collections streamd writes,
verified by SQLite's own query plan, and never attempted where it would be wrong."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.config import Config
from streamd.consumer.counts import ConsumerCounters
from streamd.consumer.sink import Sink
from streamd.stack import ferretdb_ids
from streamd.store import MessageStore, StoreKind

from .probes import STACK_STATE_DIR


@pytest.fixture
def local_store(local_stack: Config, pipeline_config: Config) -> Iterator[tuple[Config, MessageStore]]:
    """This test's database on the local store, with a config that names the state directory which started it."""
    # Resolved: the shared state directory may be a symlink, and a server is known as ours by the real path.
    config = dataclasses.replace(pipeline_config, state_dir=str(STACK_STATE_DIR.resolve()))
    messages = MessageStore(config.mongodb)
    if not messages.is_ferretdb():
        messages.close()
        pytest.skip("the local store is mongod, whose _id index serves lookups already")
    yield config, messages
    messages.client.drop_database(config.mongodb.database)
    messages.close()


def lookup_plan(config: Config, collection: str) -> str:
    with contextlib.closing(sqlite3.connect(ferretdb_ids.database_file(config))) as connection:
        return ferretdb_ids.lookup_plan(connection, collection)


def test_the_consumers_index_step_turns_every_id_lookup_of_its_collections_into_an_index_search(local_store):
    config, messages = local_store
    messages.collection.database.create_collection("messages")
    assert lookup_plan(config, "messages").startswith("SCAN")  # what FerretDB does on its own

    sink = Sink(
        messages,
        None,  # type: ignore[arg-type]  # no batch is delivered: only the index step runs
        ConsumerCounters(),
        routed=("alerts",),
        index_tables=functools.partial(ferretdb_ids.index_id_lookups, config),
    )
    sink.prepare()

    for collection in ("messages", "alerts"):
        assert "USING INDEX" in lookup_plan(config, collection) and "SEARCH" in lookup_plan(config, collection)
    # Another consumer (or a restart) asks again: nothing changes, nothing fails.
    assert len(ferretdb_ids.index_id_lookups(config, messages.kind(), ["messages", "alerts"])) == 2
    messages.insert_batch([{"_id": "m-1", "content": "x"}])
    assert messages.by_id("m-1", max_time_ms=5000) == {"_id": "m-1", "content": "x"}


def test_another_ferretdb_version_is_left_alone(local_store):
    config, messages = local_store
    messages.ensure_indexes()
    assert ferretdb_ids.index_id_lookups(config, StoreKind("v1.23.0"), ["messages"]) == []
    assert lookup_plan(config, "messages").startswith("SCAN")


def test_a_store_this_state_directory_did_not_start_is_left_alone(local_store, tmp_path: Path):
    config, messages = local_store
    messages.ensure_indexes()
    elsewhere = dataclasses.replace(config, state_dir=str(tmp_path))
    assert ferretdb_ids.index_id_lookups(elsewhere, messages.kind(), ["messages"]) == []
    assert lookup_plan(config, "messages").startswith("SCAN")


def test_mongodb_is_left_alone(tmp_path: Path):
    config = config_module.from_mapping({"state_dir": str(tmp_path)}, label="test config")
    assert ferretdb_ids.index_id_lookups(config, StoreKind(None), ["messages"]) == []
