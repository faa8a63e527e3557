"""GET /stats against the real store and Kafka: it must agree with what they say themselves."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from streamd import config as config_module
from streamd.api import stats as stats_module
from streamd.api.backends import Backends
from streamd.api.lag import GroupLag
from streamd.api.stats import StatsResource
from streamd.kafka import ensure_topic
from streamd.producer import produce_once
from streamd.store import MessageStore

from .probes import api_client, free_port, stored_document, wait_until
from .supervisor_process import api_url, get_json, start_streamd


def stored(message_id: str, ingested_ago: timedelta, source: str | None) -> dict:
    return stored_document(message_id, datetime.now(UTC) - ingested_ago, source)


def test_totals_sources_and_rates_agree_with_the_store(pipeline_config, store):
    ages = {"1m": 20, "5m": 150, "15m": 600, "older": 3600}  # seconds, well inside each window
    documents = (
        [stored(f"a-{n}", timedelta(seconds=ages["1m"]), "sensor-a") for n in range(4)]
        + [stored(f"b-{n}", timedelta(seconds=ages["5m"]), "sensor-b") for n in range(3)]
        + [stored(f"c-{n}", timedelta(seconds=ages["15m"]), None) for n in range(2)]
        + [stored("d-0", timedelta(seconds=ages["older"]), "sensor-a")]
    )
    store.insert_batch(documents)

    with api_client(pipeline_config) as client:
        response = client.simulate_get("/stats")

    assert response.status_code == 200
    stats = response.json
    assert stats["totals"]["messages"] == store.collection.count_documents({}) == 10
    by_source = {
        group["_id"]: group["n"]
        for group in store.collection.aggregate([{"$group": {"_id": "$source", "n": {"$sum": 1}}}])
    }
    assert {entry["source"]: entry["count"] for entry in stats["sources"]} == by_source
    assert [entry["source"] for entry in stats["sources"]] == ["sensor-a", "sensor-b", None], "most first"
    assert stats["rates"] == {"1m": round(4 / 60, 3), "5m": round(7 / 300, 3), "15m": round(9 / 900, 3)}
    assert stats["children"] == [] and stats["supervisor"] is None, "no supervisor runs for this API"
    assert stats["lag"] == {"total": 0, "partitions": [], "problems": []}, "the topic does not exist yet"
    assert stats["dead_letters"]["messages"] == 0
    assert stats["errors"] == {}


def test_totals_rates_and_sources_count_the_routed_collections_too(pipeline_config, store):
    routed = [{"name": "hot", "kind": "route", "where": "True", "collection": "alerts"}]
    settings = config_module.from_mapping({**config_module.to_mapping(pipeline_config), "stages": routed})
    store.insert_batch([stored(f"m-{n}", timedelta(seconds=20), "sensor-a") for n in range(3)])
    store.in_collection("alerts").insert_batch([stored(f"h-{n}", timedelta(seconds=20), "sensor-a") for n in range(2)])

    with api_client(settings) as client:
        stats = client.simulate_get("/stats").json

    assert stats["totals"] == {"messages": 5, "collections": {settings.mongodb.collection: 3, "alerts": 2}}
    assert stats["sources"] == [{"source": "sensor-a", "count": 5}]
    assert stats["rates"]["1m"] == round(5 / 60, 3)


def test_an_unreachable_store_or_kafka_is_named_and_the_rest_still_answers(pipeline_config):
    config = config_module.from_mapping(
        {
            "state_dir": pipeline_config.state_dir,
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200},
        }
    )
    with api_client(config) as client:
        response = client.simulate_get("/stats")
        assert client.simulate_get("/stats", params={"window": "1h"}).status_code == 400

    assert response.status_code == 200
    stats = response.json
    assert set(stats["errors"]) == {"store", "kafka"}
    assert stats["totals"] is None and stats["lag"] is None and stats["dead_letters"]["messages"] is None
    assert stats["children"] == []


def test_concurrent_callers_share_one_computation_even_when_it_outlasts_the_freshness(monkeypatch):
    # A computation slower than the freshness window: stamped when it starts, it would already be stale
    # when stored, and every caller queued behind it would count the collection again.
    monkeypatch.setattr(stats_module, "FRESH_SECONDS", 1.0)
    runs = []

    def slow_compute(self, now=None) -> dict:
        runs.append(time.monotonic())
        time.sleep(1.5)
        return {"run": len(runs)}

    monkeypatch.setattr(StatsResource, "compute", slow_compute)
    resource = StatsResource(backends=None, lag=None)
    answers: list[dict] = []
    callers = [threading.Thread(target=lambda: answers.append(resource.snapshot())) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=30)

    assert answers == [{"run": 1}] * 6, "every concurrent caller gets the one result"
    assert len(runs) == 1
    assert resource.snapshot() == {"run": 1}, "a result is fresh from when it was computed, not from when it began"


def test_lag_is_each_partition_end_offset_minus_the_group_commit(pipeline_config):
    topic, dead = pipeline_config.kafka.topic, pipeline_config.kafka.dead_letter_topic
    ensure_topic(pipeline_config, topic, partitions=2)
    ensure_topic(pipeline_config, dead, partitions=1)
    producer = Producer({"bootstrap.servers": pipeline_config.kafka.brokers})
    for partition, count in ((0, 10), (1, 6)):
        for _ in range(count):
            producer.produce(topic, b"{}", partition=partition)
    for _ in range(3):
        producer.produce(dead, b"{}")
    assert producer.flush(10) == 0
    group = {"bootstrap.servers": pipeline_config.kafka.brokers, "group.id": pipeline_config.consumer.group}
    with contextlib.closing(Consumer(group)) as committer:
        committer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)

    backends = Backends(pipeline_config)
    try:
        reading = GroupLag(pipeline_config, lambda: backends.kafka).read()
    finally:
        backends.close()

    assert [(p.partition, p.committed, p.end, p.lag) for p in reading.partitions] == [(0, 4, 10, 6), (1, None, 6, 6)]
    assert reading.total == 12
    assert reading.dead_letters == 3


def test_under_the_supervisor_stats_agree_with_the_store_and_list_every_child(pipeline_config, tmp_path: Path):
    sup = start_streamd(tmp_path, pipeline_config, producer={"enabled": False}, consumer={"processes": 2})
    children = ("consumer-1", "consumer-2", "analyzer", "api")
    try:
        sup.wait_running(*children, timeout=60)
        alpha, beta = f"alpha-{uuid.uuid4().hex[:6]}", f"beta-{uuid.uuid4().hex[:6]}"
        assert produce_once(pipeline_config, 30, source=alpha).acked == 30
        assert produce_once(pipeline_config, 20, source=beta).acked == 20

        def settled() -> dict | None:
            status, stats = get_json(api_url(sup, "/stats"))
            done = status == 200 and stats["totals"]["messages"] == 50 and stats["lag"]["total"] == 0
            done = done and stats["analytics"]["lag"] == 0
            return stats if done else None

        stats = wait_until(settled, timeout=60, what=f"50 messages stored and committed; log:\n{sup.log_tail()}")
        with contextlib.closing(MessageStore(pipeline_config.mongodb)) as store:
            assert stats["totals"]["messages"] == store.collection.count_documents({})
            store.client.drop_database(pipeline_config.mongodb.database)
        assert {entry["source"]: entry["count"] for entry in stats["sources"]} == {alpha: 30, beta: 20}
        assert [p["partition"] for p in stats["lag"]["partitions"]] == [0, 1, 2]
        assert stats["since_start"]["stored"] == 50 and stats["since_start"]["consumed"] == 50
        assert stats["analytics"]["group"] == pipeline_config.analytics.group
        assert stats["analytics"]["since_start"] == {"absorbed": 50, "late": 0}
        assert stats["supervisor"]["pid"] == sup.process.pid
        states = {child["name"]: child["state"] for child in stats["children"]}
        assert states == {name: "RUNNING" for name in children}
        assert stats["errors"] == {}
    finally:
        sup.kill()


def test_stages_are_listed_in_config_order_with_what_each_filtered_and_failed_on(offline):
    from collections import Counter
    from types import SimpleNamespace

    from streamd.consumer.counts import ConsumerCounters
    from streamd.pipeline import Rejection

    run = uuid.uuid4().hex[:8]
    keep, calc = f"keep-{run}", f"calc-{run}"
    config = config_module.from_mapping(
        {
            "state_dir": offline.state_dir,
            "stages": [
                {"name": keep, "kind": "filter", "where": "x is not None"},
                {"name": calc, "kind": "set", "fields": {"y": "x * 2"}},
            ],
        }
    )
    counters = ConsumerCounters()
    counters.add_filtered(Counter({keep: 3}))
    failure = Rejection("stage", "stage", "TypeError", "t", 0, 1, None, b"{}", stage_name=calc)
    counters.add_rejected([failure, failure])

    stages = StatsResource(SimpleNamespace(config=config), GroupLag.__new__(GroupLag)).stages()

    assert stages == [
        {"name": keep, "kind": "filter", "filtered": 3, "failed": 0},
        {"name": calc, "kind": "set", "filtered": 0, "failed": 2},
    ]
