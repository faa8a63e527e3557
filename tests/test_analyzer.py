"""The analyzer child against the real Kafka and store: its windows are exact, even when it is killed with SIGKILL.

50,000 messages with event times spread over ten minutes (some of them late beyond the allowed lateness,
some not even JSON) go through a real supervisor whose analyzer is killed -9 four times while it absorbs
them. Once it has caught up, every window document must equal the counts recomputed from the topic with
the same lateness rule, written independently here: none missing, none doubled, none extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from streamd import config as config_module
from streamd.analyzer import run as run_analyzer
from streamd.config import Config
from streamd.store import MessageStore

from .probes import (
    STAGES,
    all_committed,
    committed,
    consumer_running,
    free_port,
    logged,
    partitions,
    read_all,
    wait_until,
)
from .supervisor_process import api_url, get_json, start_streamd

MESSAGES = 50_000
CHUNKS = 5  # produced one after the other; the analyzer is killed while it absorbs each of the first four
LATENESS = 30
WINDOWS = {"1m": 60, "5m": 300}
SOURCES = ("sensor-a", "sensor-b", "sensor-c")


def absorbed(settings: Config) -> int | None:
    """Messages the group has committed over all partitions, or None while the group coordinator cannot
    answer (it moves, e.g. right after the broker started): a wait on it simply goes on."""
    try:
        return sum(committed(settings).values())
    except KafkaException:
        return None


@pytest.fixture
def analytics_config(pipeline_config: Config) -> Config:
    yield pipeline_config
    with contextlib.closing(MessageStore(pipeline_config.mongodb)) as store:
        store.client.drop_database(pipeline_config.mongodb.database)


def as_analyzer_group(settings: Config) -> Config:
    """The same config with the analyzer's group as the consumers', for the probes that read a group."""
    consumer = dataclasses.replace(settings.consumer, group=settings.analytics.group)
    return dataclasses.replace(settings, consumer=consumer)


def payload(index: int, base: datetime) -> bytes:
    if index % 1000 == 999:
        return b"not json: the pipeline rejects it, so no window counts it"
    moment = base + timedelta(milliseconds=index * 12 + index * 7919 % 5000)  # ten minutes, a little shuffled
    if index % 97 == 0:
        moment -= timedelta(minutes=3)  # beyond the allowed lateness once its partition has moved on
    return orjson.dumps(
        {
            "id": f"m-{index}",
            "text": f"reading {index}",
            "source": SOURCES[index % len(SOURCES)],
            "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "v": index % 7,
        }
    )


def produce(settings: Config, first: int, last: int, base: datetime) -> None:
    send(settings, ((f"m-{index}", payload(index, base)) for index in range(first, last)))


def send(settings: Config, messages: Iterable[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.brokers, "linger.ms": 20})
    for count, (key, value) in enumerate(messages):
        producer.produce(settings.kafka.topic, value, key=key.encode())
        if count % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def recomputed(settings: Config) -> Counter:
    """(window, start, source) -> [on time, late] recomputed from the topic: per partition in offset order,
    the stream time is the highest event time so far, and a message is late when its window ended at
    least LATENESS seconds before it."""
    counts: Counter = Counter()
    by_partition: dict[int, list] = {}
    for message in read_all(settings.kafka.brokers, settings.kafka.topic):
        by_partition.setdefault(message.partition(), []).append(message)
    for messages in by_partition.values():
        stream_time = None
        for message in sorted(messages, key=lambda m: m.offset()):
            try:
                fields = orjson.loads(message.value())
            except orjson.JSONDecodeError:
                continue
            event = datetime.fromisoformat(fields["timestamp"]).timestamp()
            stream_time = event if stream_time is None else max(stream_time, event)
            for window, length in WINDOWS.items():
                start = event // length * length
                late = start + length + LATENESS <= stream_time
                counts[window, start, fields["source"], "late" if late else "count"] += 1
    return counts


def stored_windows(settings: Config) -> Counter:
    counts: Counter = Counter()
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        for window in store.in_collection(settings.analytics.collection).collection.find():
            key = (window["window"], window["start"].timestamp(), window["group"]["source"])
            # Every document is counted in full: a second document for the same window would double it.
            counts[(*key, "count")] += window["count"]
            counts[(*key, "late")] += window["late"]
    return +counts


def test_windows_equal_the_counts_recomputed_from_the_topic_after_four_kill_9s(analytics_config: Config, tmp_path):
    settings = analytics_config
    sup = start_streamd(
        tmp_path,
        settings,
        producer={"enabled": False},
        consumer={"processes": 0, "batch_size": 200},
        analytics={
            "windows": list(WINDOWS),
            "fields": ["v"],
            "allowed_lateness": LATENESS,
        },
        supervisor={"crash_limit": 20, "crash_window": 600},  # 20 exits must fit the window (config refuses less)
    )
    progress_of = as_analyzer_group(sup.config)
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=15)
    chunk = MESSAGES // CHUNKS
    try:
        sup.wait_running("analyzer", "api", timeout=60)
        kills = 0
        for number in range(CHUNKS):
            before = wait_until(lambda: absorbed(progress_of), "the analyzer's commits") if number else 0
            produce(settings, number * chunk, (number + 1) * chunk, base)
            if number == CHUNKS - 1:
                break
            # Killed while it absorbs this chunk: windows written, offsets not yet committed, or half of both.
            wait_until(
                lambda b=before: (absorbed(progress_of) or 0) >= b + chunk // 10,
                what=f"the analyzer absorbing chunk {number}",
                timeout=60,
            )
            analyzer = sup.children()["analyzer"]
            os.kill(analyzer["pid"], signal.SIGKILL)
            kills += 1

            def restarted(restarts: int = analyzer["restarts"]) -> bool:
                now = sup.children()["analyzer"]
                return now["state"] == "RUNNING" and now["restarts"] > restarts

            wait_until(restarted, what=f"the analyzer restarted after kill {kills}", timeout=60)
        wait_until(lambda: all_committed(progress_of), what="the analyzer caught up", timeout=120)

        expected = recomputed(settings)
        assert sum(expected[k] for k in expected if k[0] == "1m") == MESSAGES - MESSAGES // 1000
        assert sum(expected[k] for k in expected if k[-1] == "late") > 100, "the test produces late messages"
        got = stored_windows(settings)
        missing = {k: v for k, v in expected.items() if got[k] < v}
        doubled = {k: got[k] for k in got if got[k] > expected[k]}
        assert not missing and not doubled, f"missing {list(missing.items())[:5]}, doubled {list(doubled.items())[:5]}"
        assert kills == CHUNKS - 1

        # The API serves the same numbers, newest window first.
        status, body = get_json(api_url(sup, "/aggregates?window=1m&source=sensor-b&limit=1000"))
        assert status == 200, body
        served = {datetime.fromisoformat(a["start"]).timestamp(): a["count"] for a in body["aggregates"]}
        # A window of late messages only exists too, with a count of 0.
        windows_b = {k[1] for k in expected if k[0] == "1m" and k[2] == "sensor-b"}
        assert served == {start: expected["1m", start, "sensor-b", "count"] for start in windows_b}
        starts = [a["start"] for a in body["aggregates"]]
        assert starts == sorted(starts, reverse=True)
    finally:
        sup.kill()


def test_the_stream_time_is_committed_beside_the_offset(analytics_config: Config, tmp_path: Path):
    settings = analytics_config
    sup = start_streamd(
        tmp_path,
        settings,
        producer={"enabled": False},
        consumer={"processes": 0},
        analytics={"windows": ["1m"]},
    )
    try:
        sup.wait_running("analyzer", timeout=60)
        base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        produce(settings, 0, 30, base)
        progress_of = as_analyzer_group(sup.config)
        wait_until(lambda: all_committed(progress_of), what="the analyzer caught up", timeout=60)
    finally:
        sup.kill()
    reader = Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": settings.analytics.group})
    try:
        found = reader.committed(partitions(settings), timeout=10)
    finally:
        reader.close()
    latest = max(
        datetime.fromisoformat(orjson.loads(payload(i, base))["timestamp"]) for i in range(30) if i % 1000 != 999
    )
    times = [orjson.loads(tp.metadata)["stream_time_us"] for tp in found if tp.offset > 0]
    assert times and max(times) == int(latest.timestamp()) * 1_000_000 + latest.microsecond


def test_while_the_store_is_away_the_analyzer_holds_its_batch_commits_nothing_and_stops_cleanly(
    analytics_config: Config, caplog
):
    settings = analytics_config
    produce(settings, 0, 300, datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    unreachable = dataclasses.replace(settings.mongodb, uri=f"mongodb://127.0.0.1:{free_port()}", timeout_ms=200)
    progress_of = as_analyzer_group(settings)
    with consumer_running(dataclasses.replace(settings, mongodb=unreachable), run_analyzer) as outcome:
        wait_until(lambda: logged(caplog.messages, "store unavailable", "window updates"), what="the analyzer holding")
        assert committed(progress_of) == {}, "nothing is committed while its windows are unwritten"
    assert outcome == [0]
    assert committed(progress_of) == {}

    with consumer_running(settings, run_analyzer):
        wait_until(lambda: all_committed(progress_of), what="the analyzer caught up", timeout=60)
    windows = stored_windows(settings)
    assert sum(v for k, v in windows.items() if k[0] == "1m") == 300, "each message once, on time or late"


def test_with_stages_each_minute_counts_exactly_what_the_consumers_stored_in_every_collection(
    analytics_config: Config, tmp_path: Path
):
    # STAGES filter out source "noise", compute f from temperature, rename, drop, and route f > 86 to alerts.
    settings = dataclasses.replace(analytics_config, stages=config_module.from_mapping({"stages": STAGES}).stages)
    sup = start_streamd(
        tmp_path, settings, producer={"enabled": False}, consumer={"processes": 1}, analytics={"fields": ["f"]}
    )
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    try:
        sup.wait_running("consumer-1", "analyzer", timeout=60)

        def reading(index: int) -> tuple[str, bytes]:
            moment = base + timedelta(milliseconds=200 * index)  # three minutes, in order: nothing is late
            temperature = "warm" if index % 50 == 49 else index % 45  # "warm" fails the set stage: dead-lettered
            source = ("A", "B", "noise")[index % 3]
            fields = {"id": f"r-{index}", "text": "t", "source": source, "temperature": temperature, "debug": 1}
            fields["timestamp"] = moment.isoformat()
            return f"r-{index}", orjson.dumps(fields)

        send(settings, (reading(index) for index in range(900)))
        wait_until(lambda: all_committed(sup.config), what="the consumers caught up", timeout=60)
        wait_until(lambda: all_committed(as_analyzer_group(sup.config)), what="the analyzer caught up", timeout=60)
    finally:
        sup.kill()

    expected: Counter = Counter()
    sums: Counter = Counter()
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        routed = list(store.in_collection("alerts").collection.find())
        assert routed, "some messages were routed"
        for document in [*store.collection.find(), *routed]:
            start = document["timestamp"].replace(second=0, microsecond=0)
            expected[start, document["source"]] += 1
            sums[start, document["source"]] += document["data"]["f"]
        windows = list(store.in_collection(settings.analytics.collection).collection.find({"window": "1m"}))
    got = {(w["start"], w["group"]["source"]): w["count"] for w in windows}
    assert got == dict(expected) and "noise" not in {source for _, source in got}
    assert all(w["late"] == 0 for w in windows)
    for w in windows:
        assert w["fields"]["f"]["sum"] == pytest.approx(sums[w["start"], w["group"]["source"]])
