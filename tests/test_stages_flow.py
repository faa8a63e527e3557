"""Stages through a real consumer, Kafka and store: filtered, transformed, routed, dead-lettered, reloaded."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import yaml

from streamd import config as config_module
from streamd import coordinates
from streamd.config import Config
from streamd.dead_letter import DeadLetter
from streamd.store import MessageStore

from .probes import STAGES, all_committed, consumer_running, end_offsets, produce_raw, read_all, wait_until
from .supervisor_process import SupervisorProcess


@pytest.fixture
def settings(pipeline_config: Config, caplog) -> Iterator[Config]:
    caplog.set_level(logging.INFO, logger="streamd")
    consumer = replace(pipeline_config.consumer, batch_timeout_ms=50)
    settings = replace(pipeline_config, consumer=consumer, stages=config_module.from_mapping({"stages": STAGES}).stages)
    yield settings
    with contextlib.closing(MessageStore(settings.mongodb)) as store:
        store.client.drop_database(settings.mongodb.database)


def documents(settings: Config, collection: str | None = None) -> dict[str, dict]:
    with contextlib.closing(MessageStore(settings.mongodb, collection=collection)) as store:
        return {document["_id"]: document for document in store.collection.find()}


def test_each_stage_kind_applies_through_a_real_consumer(settings: Config):
    produce_raw(
        settings,
        *map(
            orjson.dumps,
            [
                {"id": "hot-1", "text": "t", "source": "lab", "temperature": 35, "sensor": "S1", "debug": True},
                {"id": "cool-1", "text": "t", "source": "lab", "temperature": 20, "sensor": "S2"},
                {"id": "plain-1", "text": "t", "source": "lab"},
                {"id": "noise-1", "text": "t", "source": "noise", "temperature": 99},
                {"id": "bad-1", "text": "t", "source": "lab", "temperature": "warm"},
                {"id": "odd-1", "text": "t", "source": "lab", "a": {"$b": 1}},
            ],
        ),
    )
    with consumer_running(settings) as outcome:
        wait_until(lambda: all_committed(settings), "every offset committed, the filtered one included")
    assert outcome == [0]

    main, alerts = documents(settings), documents(settings, "alerts")
    assert set(alerts) == {"hot-1"}, "routed by the first route that holds"
    assert alerts["hot-1"]["data"] == {"temperature": 35, "f": 95.0, "sensor_id": "S1"}, "set, rename and drop"
    assert set(main) == {"cool-1", "plain-1"}, "neither the filtered nor the failed message is stored"
    assert main["cool-1"]["data"] == {"temperature": 20, "f": 68.0, "sensor_id": "S2"}
    assert "data" not in main["plain-1"]

    letters = [
        (DeadLetter.read(letter), letter)
        for letter in read_all(settings.kafka.brokers, settings.kafka.dead_letter_topic)
    ]
    by_reason = {letter.reason: (letter, raw) for letter, raw in letters if letter is not None}
    assert set(by_reason) == {"stage", "field_name"}, "the filtered message is not dead-lettered"
    failed, raw = by_reason["stage"]
    assert failed.stage == "stage" and failed.stage_name == "fahrenheit"
    assert ("streamd.stage", b"fahrenheit") in raw.headers()
    assert orjson.loads(raw.value())["id"] == "bad-1"
    assert "data.a.$b" in by_reason["field_name"][0].detail

    with contextlib.closing(MessageStore(settings.mongodb, collection="alerts")) as store:
        indexed = {tuple(index["key"]) for index in store.collection.list_indexes()}
        used = {tuple(index.document["key"]) for index in store.kind().indexes()}
    assert indexed == {("_id",), *used}, "routed collections get the indexes the store uses, as the main one"


def write_config(path: Path, settings: Config, version: str, producing: bool = True) -> None:
    raw = config_module.to_mapping(settings)
    raw["stages"] = [{"name": "mark", "kind": "set", "fields": {"version": repr(version)}}]
    raw["producer"] = {**raw["producer"], "rate": 100.0, "enabled": producing}
    raw["consumer"] = {**raw["consumer"], "processes": 2}
    path.write_text(yaml.safe_dump(raw))


def test_a_reload_with_changed_stages_applies_to_the_next_batch_losing_and_repeating_nothing(
    settings: Config, tmp_path: Path
):
    path = tmp_path / "config.yaml"
    write_config(path, settings, "v1")
    command = [sys.executable, "-m", "streamd", "start", "-c", str(path)]
    supervisor = SupervisorProcess(path, command, tmp_path / "streamd.log").start()
    try:
        supervisor.wait_running("producer", "consumer-1", "consumer-2", timeout=60)
        wait_until(lambda: len(documents(settings)) >= 100, "stored with the first chain", timeout=60)
        write_config(path, settings, "v2")
        supervisor.signal(signal.SIGHUP)
        wait_until(
            lambda: sum(d["data"]["version"] == "v2" for d in documents(settings).values()) >= 100,
            f"stored with the reloaded chain; log:\n{supervisor.log_tail()}",
            timeout=90,
        )
        # The generator stops first (a reload that changes only its section), so that what it sent last
        # is consumed before the end: a message still in the topic at SIGTERM is neither lost nor stored.
        write_config(path, settings, "v2", producing=False)
        supervisor.signal(signal.SIGHUP)
        wait_until(lambda: all_committed(settings), f"everything consumed; log:\n{supervisor.log_tail()}", timeout=90)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait_exit(timeout=60) == 0, supervisor.log_tail()
    finally:
        supervisor.kill()

    stored = list(documents(settings).values())
    where = [coordinates.read(d["kafka"])[1:] for d in stored]
    everything = {(p, o) for p, end in end_offsets(settings).items() for o in range(end)}
    assert len(where) == len(set(where)), "nothing processed twice"
    assert set(where) == everything, "nothing lost: every produced message is stored"
    # Per partition, every message after the first one the new chain processed has the new chain's mark.
    for partition in {p for p, _ in where}:
        versions = [
            d["data"]["version"]
            for d in sorted(stored, key=lambda d: coordinates.read(d["kafka"]).offset)
            if coordinates.read(d["kafka"]).partition == partition
        ]
        first_new = versions.index("v2") if "v2" in versions else len(versions)
        assert set(versions[first_new:]) <= {"v2"}, f"partition {partition} went back to the old chain"
    assert {d["data"]["version"] for d in stored} == {"v1", "v2"}
