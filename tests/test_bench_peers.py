"""The bench's peers phase: Kafka Connect's MongoDB sink provisioned, draining a real backlog, and reported.

Like test_bench.py, no rate is asserted: only that Connect stores every message, that its figures
are there and of the right kind, and that nothing of it outlives the drain.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.bench import ceilings, connect, free_port, peers, with_topic
from streamd.bench.report import Progress, peer_rows
from streamd.bench.scratch import BenchError, Scratch
from streamd.cli import build_parser
from streamd.config import Config
from streamd.kafka import ensure_topic
from tests.probes import STACK_STATE_DIR

MESSAGES = 3_000

needs_jdk = pytest.mark.skipif(
    not (shutil.which("java") and shutil.which("mvn")), reason="Kafka Connect needs java and mvn on PATH"
)


def with_shared_cache(config: Config) -> Config:
    """The stack's cache, where Connect's jars are resolved once for every test session and bench run."""
    cache = STACK_STATE_DIR.resolve() / "cache"
    return dataclasses.replace(config, stack=dataclasses.replace(config.stack, cache_dir=str(cache)))


def java_processes_under(directory: Path) -> list[int]:
    """Live processes whose command line names `directory` (Connect's properties are written there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(directory).encode() in cmdline:
            found.append(int(proc.name))
    return found


@needs_jdk
def test_connect_and_the_mongodb_sink_resolve_from_maven_central_into_the_cache():
    java, libs = connect.provision(with_shared_cache(config_module.from_mapping({}, label="test")))
    jars = {path.name for path in libs.iterdir()}
    assert Path(java).name == "java"
    assert any(name.startswith("connect-runtime-") for name in jars)
    assert any(name.startswith("connect-json-") for name in jars)
    assert f"mongo-kafka-connect-{connect.SINK_VERSION}.jar" in jars
    assert any(name.startswith("mongodb-driver-sync-") for name in jars), "the connector's driver comes along"


@needs_jdk
@pytest.mark.integration
def test_connect_drains_a_backlog_into_the_store_and_leaves_nothing_behind(pipeline_config: Config):
    scratch = Scratch(with_shared_cache(pipeline_config), partitions=1)
    try:
        topic = scratch.topic("backlog")
        ensure_topic(with_topic(scratch.base, topic), topic, partitions=1)
        ends = ceilings.prefill(scratch.base, topic, ceilings.generate_values(MESSAGES, "peers"))
        jars = connect.provision(scratch.base)

        result = connect.drain(scratch, jars, topic, MESSAGES, 1, "peers-connect1-1", port := free_port())

        assert sum(ends.values()) == MESSAGES
        assert result.stored == MESSAGES and result.tasks == 1
        assert result.msgs_per_s > 0 and result.startup_s > 0 and result.cpu_us_per_msg > 0
        with scratch.store() as client:
            collection = client[scratch.database][scratch.collection("peers-connect1-1")]
            assert collection.count_documents({}) == MESSAGES
            document = collection.find_one({}, {"_id": 0})
        assert set(document) == {"id", "text", "source", "timestamp"}, "each JSON value is stored as it is"
        assert any(group.startswith(scratch.prefix) for group in scratch.groups), "its group is a scratch one"
        assert java_processes_under(scratch.directory) == [], f"Connect (REST port {port}) is stopped"
    finally:
        problems = scratch.cleanup()
    assert problems == [], "Connect's topic, group and collection are scratch names the bench removes"


@needs_jdk
@pytest.mark.integration
def test_a_connect_that_stores_nothing_fails_the_run_with_its_log_and_is_stopped(
    pipeline_config: Config, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(connect, "START_TIMEOUT", 8.0)
    scratch = Scratch(with_shared_cache(pipeline_config), partitions=1)
    try:
        topic = scratch.topic("empty")
        ensure_topic(with_topic(scratch.base, topic), topic, partitions=1)
        with pytest.raises(BenchError) as raised:
            connect.drain(scratch, connect.provision(scratch.base), topic, 10, 1, "peers-connect1-1", free_port())
        assert "stored 0 of 10" in str(raised.value) and "its log ends" in str(raised.value)
        assert java_processes_under(scratch.directory) == [], "Connect is stopped after a failed drain too"
    finally:
        scratch.cleanup()


def test_without_java_the_peer_rows_are_skipped_with_one_sentence(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    config = config_module.from_mapping({"state_dir": str(tmp_path / "state")}, label="test")
    scratch = Scratch(config, partitions=1)
    try:
        figures = peers.measure(scratch, "t", {0: 10}, 1, lambda: 1, Progress(io.StringIO()))
    finally:
        shutil.rmtree(scratch.directory)
    sentence = figures["error"]
    assert sentence.startswith("java is not on PATH") and sentence.endswith(".") and ". " not in sentence
    assert peer_rows(figures) == [("Kafka Connect peers", figures["error"])]


def test_the_report_shows_each_system_and_streamds_ratio_to_each_connect_setup():
    def system(rate: float, cpu: float | None) -> dict:
        return {"msgs_per_s": rate, "startup_s": 2.0, "cpu_us_per_msg": cpu, "runs": []}

    figures = {
        "rounds": 3,
        "messages": 100_000,
        "connect": "MongoDB Kafka sink connector 1.13.0 on Kafka Connect 3.9.2",
        "systems": {
            "streamd-2": system(18_000, None),
            "connect-1": system(28_800, 20.0),
            "connect-3": system(33_900, 23.0),
        },
        "ratios": {"connect-1": {"value": 0.625, "target": 1.2}, "connect-3": {"value": 0.531, "target": 1.0}},
    }
    rows = dict(peer_rows(figures))
    assert "18,000 msg/s" in rows["peers: streamd, 2 consumer processes"]
    assert "CPU" not in rows["peers: streamd, 2 consumer processes"], "no CPU figure where none was measured"
    one_task = rows["peers: Kafka Connect, 1 task"]
    assert "28,800 msg/s" in one_task and "20.0 µs/msg" in one_task
    assert "33,900 msg/s" in rows["peers: Kafka Connect, 3 tasks"]
    assert rows["peers: streamd / Kafka Connect, 1 task"].startswith("0.62  (target ≥ 1.20")
    assert rows["peers: streamd / Kafka Connect, 3 tasks"].startswith("0.53  (target ≥ 1.00")


def test_the_median_of_the_rounds_is_reported_and_cpu_only_when_every_round_has_it():
    figures = ((10.0, 5.0), (30.0, 7.0), (20.0, 6.0))
    runs = [{"msgs_per_s": rate, "startup_s": 1.0, "cpu_us_per_msg": cpu} for rate, cpu in figures]
    assert peers.summary(runs)["msgs_per_s"] == 20.0 and peers.summary(runs)["cpu_us_per_msg"] == 6.0
    assert peers.summary([{"msgs_per_s": 1.0, "startup_s": 1.0}])["cpu_us_per_msg"] is None


def test_rounds_is_a_bench_option():
    assert build_parser().parse_args(["bench", "--rounds", "2"]).rounds == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--rounds", "0"])
