"""`streamd bench`: every figure measured in one run, on scratch names only, and nothing left behind.

No threshold is asserted anywhere: the figures belong to the machine, the tests only check that they
are all there, of the right kind, and that the run cleaned up after itself.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pymongo
import pytest
import yaml
from confluent_kafka.admin import AdminClient

from streamd import config as config_module
from streamd.bench import BenchOptions, render
from streamd.bench.latency import percentiles
from streamd.bench.scratch import BenchError, Scratch
from streamd.bench.stage_cost import CHAIN, ROUTED_COLLECTION
from streamd.cli import build_parser
from streamd.config import Config
from tests.probes import STACK_STATE_DIR


def test_percentiles_are_nearest_rank_and_count_what_never_arrived():
    figures = percentiles([float(v) for v in range(1, 101)], expected=104)
    assert figures == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "missing": 4}
    assert percentiles([], expected=3) == {"p50": None, "p95": None, "p99": None, "missing": 3}


def test_a_scratch_config_keeps_the_addresses_and_none_of_the_users_names(tmp_path):
    user = config_module.from_mapping(
        {
            "kafka": {"brokers": "127.0.0.1:19092", "topic": "orders"},
            "mongodb": {"uri": "mongodb://127.0.0.1:27018", "database": "shop"},
            "consumer": {"group": "billing", "batch_size": 200},
            "api": {"host": "0.0.0.0"},
            "stack": {"local": "auto"},
        }
    )
    scratch = Scratch(user, partitions=2)
    try:
        made = scratch.config("pipeline-1", topic=scratch.topic("backlog"), collection="c", processes=1, api_port=5555)
    finally:
        shutil.rmtree(scratch.directory)
    assert made.kafka.brokers == "127.0.0.1:19092" and made.mongodb.uri == user.mongodb.uri
    assert made.consumer.batch_size == 200, "the pipeline's own settings are what is measured"
    assert made.kafka.topic.startswith(scratch.prefix) and made.kafka.dead_letter_topic.startswith(scratch.prefix)
    assert made.consumer.group.startswith(scratch.prefix) and made.consumer.group in scratch.groups
    assert made.mongodb.database == scratch.database != "shop"
    assert made.kafka.partitions >= 4, "a 4-consumer run needs a partition for each consumer"
    assert not made.producer.enabled and made.stack.local is False
    assert made.api.host == "127.0.0.1", "bench traffic stays on loopback"
    assert made.stages == () and not made.analytics.enabled, "nothing but the consumers touches the backlog"


def test_the_scratch_api_speaks_plain_http_whatever_the_users_serves():
    user = config_module.from_mapping({})
    https = dataclasses.replace(user.api, tls_cert_file="api.crt", tls_key_file="api.key", tls_ca_file="ca.crt")
    scratch = Scratch(dataclasses.replace(user, api=https), partitions=1)
    try:
        made = scratch.config("api", topic="t", collection="c", processes=0, api_port=5555)
    finally:
        shutil.rmtree(scratch.directory)
    # wrk and the health wait ask http://; and relative paths would no longer resolve beside the user's file.
    assert (made.api.tls_cert_file, made.api.tls_key_file, made.api.tls_ca_file) == (None, None, None)


def test_the_stage_chain_is_a_realistic_one_the_scratch_supervisor_loads(tmp_path):
    user = config_module.from_mapping({"stages": [{"name": "mine", "kind": "filter", "where": "False"}]})
    scratch = Scratch(user, partitions=1)
    try:
        made = scratch.config("stages-chain", topic="t", collection="c", processes=1, api_port=5555, stages=CHAIN)
    finally:
        shutil.rmtree(scratch.directory)
    # What SupervisedRun writes and `streamd start` reads back (compiling the expressions once stages run).
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_module.to_mapping(made), sort_keys=False))
    loaded = config_module.load(path, environ={})
    assert loaded.stages == CHAIN, "the bench measures its own chain, never the user's stages"
    assert [stage["kind"] for stage in CHAIN] == ["filter", "set", "rename", "route"]
    assert loaded.mongodb.collection != ROUTED_COLLECTION


def test_a_config_named_like_a_scratch_run_is_refused_rather_than_deleted(monkeypatch):
    monkeypatch.setattr("uuid.uuid4", lambda: type("U", (), {"hex": "deadbeef" * 4})())
    user = config_module.from_mapping({"kafka": {"topic": "streamd-bench-deadbeef-backlog"}})
    with pytest.raises(BenchError, match="rename them"):
        Scratch(user, partitions=1)


def test_bench_options_parse_from_the_command_line():
    args = build_parser().parse_args(["bench", "--quick", "--processes", "1,3", "--loads", "50", "--json", "x.json"])
    assert (args.quick, args.processes, args.loads, args.json) == (True, (1, 3), (50,), "x.json")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--processes", "two"])
    assert BenchOptions.quick_run().messages < BenchOptions().messages


@pytest.mark.integration
def test_quick_bench_writes_every_figure_and_removes_its_scratch_data(pipeline_config: Config, tmp_path: Path):
    # The state directory that runs the local store (resolved: it may be a symlink), as a user's config names it.
    settings = dataclasses.replace(pipeline_config, state_dir=str(STACK_STATE_DIR.resolve()))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_module.to_mapping(settings)))
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "streamd", "bench", "--quick", "-c", str(config_path), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=480,  # the quick run takes 1-2 minutes here; generous for a loaded machine
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())

    for key in ("store_ceiling_msgs_per_s", "kafka_consume_ceiling_msgs_per_s", "naive_msgs_per_s"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    by_processes = figures["pipeline_by_processes"]
    assert list(by_processes) == [str(n) for n in BenchOptions.quick_run().processes]
    for processes, run in by_processes.items():
        assert run["msgs_per_s"] > 0 and run["startup_s"] >= 0 and run["stored"] == figures["messages"]
        assert run["cpu_us_per_msg"] > 0 and run["usage_note"] is None
        assert set(run["rss_mb"]) == {f"consumer-{n}" for n in range(1, int(processes) + 1)}
        assert all(size["start"] > 0 and size["end"] > 0 for size in run["rss_mb"].values())
    assert figures["pipeline_msgs_per_s"] == max(run["msgs_per_s"] for run in by_processes.values())
    assert isinstance(figures["pipeline_vs_ceiling"], float) and figures["pipeline_vs_ceiling"] > 0
    peers = figures["peers"]
    if shutil.which("java") and shutil.which("mvn"):
        streamd = f"streamd-{settings.consumer.processes}"  # as configured
        assert set(peers["systems"]) == {streamd, "connect-1", "connect-3"}
        for system in peers["systems"].values():
            assert len(system["runs"]) == BenchOptions.quick_run().rounds and system["msgs_per_s"] > 0
            assert all(run["stored"] == figures["messages"] for run in system["runs"]), "every drain stores it all"
        assert peers["systems"]["connect-1"]["cpu_us_per_msg"] > 0
        assert {ratio["target"] for ratio in peers["ratios"].values()} == {1.2, 1.0}
    else:
        assert "is not on PATH" in peers["error"]
    stages = figures["stage_cost"]
    assert len(stages["chain"]) == 4 and stages["target"] == 0.85
    for run in (stages["without_stages"], stages["with_stages"]):
        assert run["msgs_per_s"] > 0 and run["stored"] == figures["messages"], "both drains store the whole backlog"
    assert stages["without_stages"]["routed"] == 0
    assert stages["ratio"] == pytest.approx(
        stages["with_stages"]["msgs_per_s"] / stages["without_stages"]["msgs_per_s"], abs=0.001
    )
    assert set(figures["latency_ms"]) == {"100", "1000"}
    for load in figures["latency_ms"].values():
        for path in ("stored", "visible", "stored_while_polled"):
            assert {"p50", "p95", "p99", "missing"} <= set(load[path])
        assert isinstance(load["stored"]["p99"], float) and load["stored"]["missing"] == 0
        assert load["achieved_msgs_per_s"] > 0 and load["achieved_polled_msgs_per_s"] > 0
    api = figures["api"]
    if shutil.which("wrk"):
        assert api["workers"] == pipeline_config.api.workers and api["worker_class"]
        assert set(api["endpoints"]) == {"GET /messages", "GET /messages/{id}"}
        for runs in api["endpoints"].values():
            for run in runs:
                assert run["rps"] > 0 and run["p50_ms"] <= run["p99_ms"]
        sizes = api["id_lookup_by_size"]
        assert list(sizes) == [str(BenchOptions().api_documents), str(figures["messages"])]
        assert all(run["errors"] == 0 and run["p50_ms"] <= run["p99_ms"] for run in sizes.values())
        assert api["id_index"] is True, "the bench's collection is indexed for _id lookups as the consumer's is"
    else:
        assert "apt-get install wrk" in api["error"]
    ingest = figures["ingest"]
    assert [run["concurrency"] for run in ingest["runs"]] == list(BenchOptions.quick_run().ingest_concurrency)
    for run in ingest["runs"]:
        assert run["batch"] == 100 and run["msgs_per_s"] > 0 and run["errors"] == 0
        assert run["accepted"] == run["requests"] * 100, "every message of every batch is acknowledged"
        assert run["p50_ms"] <= run["p99_ms"]
    assert ingest["in_topic"] == ingest["accepted"], "what the API acknowledged is what the topic holds"
    assert "POST /messages, batches of 100" in result.stdout
    assert any(name.startswith("consumer") for name in figures["rss_mb"]) and "api" in figures["rss_mb"]
    assert all(isinstance(size, float) and size > 0 for size in figures["rss_mb"].values())
    judged = {verdict["target"]: verdict for verdict in figures["targets"]}
    assert len(judged) == 9 and judged["pipeline vs ceiling"]["met"] is not None
    assert judged["p99 produce → stored at 5,000 msg/s"]["met"] is None, "the quick run offers no 5000 msg/s"
    assert "pipeline vs ceiling" in result.stdout and "targets" in result.stdout, "the table is printed too"
    assert render(figures) in result.stdout

    prefix = f"streamd-bench-{figures['run_id']}"
    admin = AdminClient({"bootstrap.servers": pipeline_config.kafka.brokers})
    topics = admin.list_topics(timeout=10).topics
    assert not [topic for topic in topics if topic.startswith(prefix)], "scratch topics are deleted"
    assert pipeline_config.kafka.topic not in topics, "the user's topic is never written to"
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    assert not [group.group_id for group in groups if group.group_id.startswith(prefix)], "scratch groups are deleted"
    with pymongo.MongoClient(pipeline_config.mongodb.uri, serverSelectionTimeoutMS=3000) as client:
        databases = client.list_database_names()
    assert f"streamd_bench_{figures['run_id']}" not in databases, "the scratch database is dropped"
    assert pipeline_config.mongodb.database not in databases, "the user's database is never written to"
