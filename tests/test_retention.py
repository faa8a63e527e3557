"""mongodb.retention: stored messages older than the retention go, by a TTL index or in bounded chunks."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from streamd import config as config_module
from streamd import retention
from streamd.config import Config, retention_seconds
from streamd.lifecycle import Shutdown
from streamd.store import INDEXES, MessageStore
from tests.probes import stored_document, wait_until

# --- without servers ------------------------------------------------------------------------------------


def test_retention_reads_like_a_window_length_and_empty_keeps_forever():
    assert retention_seconds(config_module.from_mapping({"mongodb": {"retention": "7d"}}).mongodb) == 7 * 86_400
    assert retention_seconds(config_module.from_mapping({}).mongodb) is None
    for bad in ("7 days", "0s", "5000d"):
        with pytest.raises(config_module.ConfigError, match="mongodb.retention"):
            config_module.from_mapping({"mongodb": {"retention": bad}})


def test_the_ttl_index_is_the_ingested_at_index_with_an_expiry():
    plain = next(index.document for index in INDEXES if "ingested_at" in index.document["key"])
    ttl = retention.ttl_index(3600).document
    assert ttl["key"] == plain["key"] and ttl["expireAfterSeconds"] == 3600


def test_the_child_looks_often_for_short_retentions_and_at_most_once_a_minute():
    assert retention.period(2) == 1.0
    assert retention.period(300) == 30.0
    assert retention.period(7 * 86_400) == 60.0


# --- on the real store ------------------------------------------------------------------------------------


def documents(prefix: str, count: int, moment: datetime) -> list[dict]:
    return [stored_document(f"{prefix}-{n}", moment, "test", n) for n in range(count)]


@pytest.mark.integration
def test_the_ttl_index_replaces_the_plain_one_and_follows_a_new_retention(store: MessageStore):
    if store.is_ferretdb():
        pytest.skip("the local store is FerretDB 1.x: it keeps the retention by chunked deletes, not a TTL index")
    retention.ensure_ttl(store.collection, 3600)
    retention.ensure_ttl(store.collection, 60)
    expiries = [i.get("expireAfterSeconds") for i in store.collection.list_indexes() if "ingested_at" in i["key"]]
    assert expiries == [60]


class CountedDeletes:
    """A collection that remembers how many documents each delete_many took."""

    def __init__(self, collection) -> None:
        self.collection, self.deletes = collection, []

    def find(self, *args, **kwargs):
        return self.collection.find(*args, **kwargs)

    def delete_many(self, selector):
        result = self.collection.delete_many(selector)
        self.deletes.append(result.deleted_count)
        return result


@pytest.mark.integration
def test_expired_messages_are_deleted_in_bounded_chunks_and_fresh_ones_kept(store: MessageStore, monkeypatch):
    monkeypatch.setattr(retention, "CHUNK", 700)
    now = datetime.now(UTC)
    old = now - timedelta(hours=2)
    # Consumer batches share one ingested_at: 50 documents per moment.
    for batch in range(32):
        store.insert_batch(documents(f"old{batch}", 50, old + timedelta(seconds=batch)))
    store.insert_batch(documents("new", 30, now))
    counted = CountedDeletes(store.collection)
    assert retention.delete_expired(counted, now - timedelta(hours=1)) == 1600
    assert len(counted.deletes) >= 3 and max(counted.deletes) <= 700, counted.deletes
    assert sorted(d["_id"] for d in store.collection.find({}, {"_id": 1})) == sorted(f"new-{n}" for n in range(30))
    assert retention.delete_expired(store.collection, now - timedelta(hours=1)) == 0


@pytest.mark.integration
def test_a_short_retention_keeps_the_collection_bounded_under_a_steady_load(pipeline_config: Config, store):
    if not store.is_ferretdb():
        pytest.skip("on MongoDB the TTL monitor deletes about once a minute: too slow to watch in a test")
    settings = replace(pipeline_config, mongodb=replace(pipeline_config.mongodb, retention="2s"))
    rate, seconds = 1000, 12  # the load  # messages per second, for this long
    shutdown, sizes = Shutdown(), []
    child = threading.Thread(target=retention.run, args=(settings, shutdown), name="retention")
    child.start()
    try:
        started = time.monotonic()
        for tick in range(seconds * 10):
            store.insert_batch(documents(f"t{tick}", rate // 10, datetime.now(UTC)))
            if tick % 10 == 9:
                sizes.append(store.collection.count_documents({}))
            time.sleep(max(0.0, started + (tick + 1) / 10 - time.monotonic()))
        # Once the load stops, everything older than the retention goes.
        wait_until(
            lambda: (
                store.collection.count_documents({"ingested_at": {"$lt": datetime.now(UTC) - timedelta(seconds=3)}})
                == 0
            ),
            "expired messages deleted",
        )
    finally:
        shutdown.request()
        child.join(timeout=30)
    assert not child.is_alive()
    inserted = rate * seconds
    # Bounded: the collection never held more than a fraction of what went in (2 s of 12 s, plus the lag of a
    # loaded machine), and it stopped growing once the retention was reached.
    assert max(sizes) < inserted / 2, sizes
    assert max(sizes[len(sizes) // 2 :]) < 2 * max(sizes[: len(sizes) // 2]), sizes
