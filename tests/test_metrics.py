"""Prometheus metrics: what each child counts, how /metrics adds every process up, and what a scrape shows.

The unit tests run in this process, whose prometheus-client keeps values in memory (no multiprocess
directory is set here); the multiprocess tests run their writers as separate processes, as the
supervisor's children are. The last test scrapes a real pipeline under the supervisor.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import falcon.testing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from streamd import config as config_module
from streamd import metrics
from streamd.api import create_app
from streamd.api.backends import Backends
from streamd.config import Config
from streamd.consumer import ConsumerCounters
from streamd.metrics import exposition, series
from streamd.pipeline import Rejection
from streamd.producer import ProduceReport
from streamd.store import WriteOutcome

from .probes import REPO, free_port, wait_until
from .supervisor_process import PIPELINE, api_url, start_streamd

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def value(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# --- what the children count ----------------------------------------------------------------------


def test_the_producer_report_counts_into_prometheus_as_it_counts_for_its_log():
    before = [value(f"streamd_producer_messages_{kind}_total") for kind in ("sent", "acknowledged", "failed")]
    report = ProduceReport()
    for _ in range(3):
        report.add_sent()
    for _ in range(2):
        report.add_acked()
    report.add_failed()
    after = [value(f"streamd_producer_messages_{kind}_total") for kind in ("sent", "acknowledged", "failed")]
    assert (report.sent, report.acked, report.failed) == (3, 2, 1)
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 2, 1]
    assert str(report) == "sent 3, acked 2, failed 1"


def test_consumer_counters_count_by_reason_and_a_copy_counts_nothing_again():
    def rejected(reason: str) -> float:
        return value("streamd_consumer_messages_rejected_total", {"reason": reason})

    def rejection(reason: str) -> Rejection:
        return Rejection("validate", reason, "", "t", 0, 0, None, b"")

    before = (rejected("schema"), rejected("not_json"), value("streamd_consumer_messages_stored_total"))
    counters = ConsumerCounters()
    counters.add_written(WriteOutcome(inserted=5, duplicates=0))
    counters.add_rejected([rejection("schema"), rejection("schema"), rejection("not_json")])
    counters.add_rejected([rejection("schema")])
    copy.deepcopy(counters)
    assert counters.rejected == {"schema": 3, "not_json": 1}
    assert rejected("schema") - before[0] == 3
    assert rejected("not_json") - before[1] == 1
    assert value("streamd_consumer_messages_stored_total") - before[2] == 5


def test_counting_by_label_increments_each_labels_series_by_its_count():
    registry = CollectorRegistry()
    counter = Counter("by_label", "test", ["reason"], registry=registry)
    counts = series.count_by_label(counter, ["schema", "not_json", "schema"])
    assert counts == {"schema": 2, "not_json": 1}
    assert registry.get_sample_value("by_label_total", {"reason": "schema"}) == 2
    assert registry.get_sample_value("by_label_total", {"reason": "not_json"}) == 1


def test_a_stored_batch_records_its_size_and_each_message_latency_unless_it_held_duplicates():
    def latency_count() -> float:
        return value("streamd_end_to_end_latency_seconds_count")

    def latency_le(bound: str) -> float:
        return value("streamd_end_to_end_latency_seconds_bucket", {"le": bound})

    batches, count, within_a_second = (
        value("streamd_consumer_batch_size_messages_count"),
        latency_count(),
        latency_le("1.0"),
    )
    documents = [{"timestamp": NOW - timedelta(seconds=0.5)}, {"timestamp": NOW + timedelta(seconds=3)}]
    series.stored_batch(2, documents, duplicates=0, now=NOW)
    assert value("streamd_consumer_batch_size_messages_count") - batches == 1
    assert latency_count() - count == 2
    assert latency_le("1.0") - within_a_second == 2, "a timestamp from the future counts as immediate"

    series.stored_batch(2, documents, duplicates=1, now=NOW)
    assert value("streamd_consumer_batch_size_messages_count") - batches == 2
    assert latency_count() - count == 2, "a replayed batch's age is not the pipeline's latency"


@given(st.lists(st.floats(min_value=0, max_value=10_000, allow_nan=False), max_size=50))
@settings(max_examples=200, deadline=None)
def test_observing_a_batch_at_once_gives_the_histogram_observing_each_value_gives(values):
    """observe_all reaches into prometheus-client's value objects: this fails first if an upgrade changes them."""
    registry = CollectorRegistry()
    bounds = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
    one_by_one = Histogram("one_by_one", "test", buckets=bounds, registry=registry)
    at_once = Histogram("at_once", "test", buckets=bounds, registry=registry)
    for observed in values:
        one_by_one.observe(observed)
    series.observe_all(at_once, values)

    def samples(name: str) -> tuple[list[tuple[str, dict]], list[float]]:
        [family] = [f for f in registry.collect() if f.name == name]
        kept = [sample for sample in family.samples if not sample.name.endswith("_created")]
        return [(sample.name.removeprefix(name), sample.labels) for sample in kept], [s.value for s in kept]

    (series_at_once, values_at_once), (series_each, values_each) = samples("at_once"), samples("one_by_one")
    assert series_at_once == series_each
    assert values_at_once == pytest.approx(values_each)


# --- the multiprocess directory -------------------------------------------------------------------


WRITER = textwrap.dedent(
    """
    import sys, time
    from streamd.metrics import series
    series.STORED.inc(int(sys.argv[1]))
    series.OPEN_STREAMS.inc()
    print("ready", flush=True)
    sys.stdin.read()  # stay alive (and so keep the live gauge) until the test closes stdin
    """
)


@pytest.fixture
def multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(path))
    return path


def writer(count: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(count)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def scraped(scrape: CollectorRegistry, name: str) -> float | None:
    return scrape.get_sample_value(name)


def test_a_scrape_adds_up_every_process_and_keeps_the_counts_of_dead_ones(multiprocess_dir):
    first, second = writer(5), writer(7)
    scrape = exposition.registry()
    try:
        assert scraped(scrape, "streamd_consumer_messages_stored_total") == 12
        assert scraped(scrape, "streamd_http_streams_open") == 2
        first.stdin.close()
        first.wait(10)
        metrics.forget(first.pid)
        assert scraped(scrape, "streamd_consumer_messages_stored_total") == 12, "a dead process's count stays"
        assert scraped(scrape, "streamd_http_streams_open") == 1, "a dead process's live gauge goes"
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_prepare_starts_from_an_empty_directory_and_names_it_for_every_child(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")  # so the test's end restores whatever was there
    settings = config_module.from_mapping({"state_dir": str(tmp_path / "state")})
    stale = metrics.directory(settings) / "counter_99999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's counts")

    path = metrics.prepare(settings)

    assert path == tmp_path / "state" / "metrics"
    assert path.is_dir() and not any(path.iterdir())
    assert os.environ[metrics.MULTIPROC_ENV] == str(path)


# --- GET /metrics ----------------------------------------------------------------------------------


@pytest.fixture
def offline_api() -> Iterator[falcon.testing.TestClient]:
    """An API on its own (no supervisor), whose Kafka and store are closed loopback ports."""
    config = config_module.from_mapping(
        {
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200},
        }
    )
    backends = Backends(config)
    try:
        yield falcon.testing.TestClient(create_app(config, backends))
    finally:
        backends.close()


def test_requests_are_counted_by_route_template_and_status(offline_api):
    def requests(route: str, status: str) -> float:
        return value("streamd_http_requests_total", {"route": route, "method": "GET", "status": status})

    before = (requests("/health", "200"), requests("/messages/{message_id}", "400"), requests("unmatched", "404"))
    offline_api.simulate_get("/health")
    offline_api.simulate_get("/health")
    offline_api.simulate_get("/messages/not a valid id")
    offline_api.simulate_get("/no/such/page")
    assert requests("/health", "200") - before[0] == 2
    assert requests("/messages/{message_id}", "400") - before[1] == 1, "the template, not one series per id"
    assert requests("unmatched", "404") - before[2] == 1
    assert value("streamd_http_request_duration_seconds_count", {"route": "/health", "method": "GET"}) >= 2


def test_a_scrape_without_kafka_or_a_supervisor_still_answers_with_everything_else(offline_api):
    response = offline_api.simulate_get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"streamd_consumer_messages_stored", "streamd_http_requests"} <= names
    assert not names & {"streamd_consumer_lag_messages", "streamd_child_state"}
    assert offline_api.simulate_get("/metrics", params={"format": "json"}).status_code == 400


# --- a real pipeline -------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


MOVING = (
    "streamd_producer_messages_sent_total",
    "streamd_producer_messages_acknowledged_total",
    "streamd_consumer_messages_consumed_total",
    "streamd_consumer_messages_stored_total",
    "streamd_consumer_batch_size_messages_count",
    "streamd_store_write_duration_seconds_count",
    "streamd_end_to_end_latency_seconds_count",
)
PRESENT = (
    "streamd_producer_messages_failed_total",
    "streamd_consumer_messages_duplicate_total",
    "streamd_consumer_lag_messages",
    "streamd_dead_letter_topic_messages",
    "streamd_child_restarts_total",
    "streamd_child_state",
    "streamd_http_requests_total",
    "streamd_http_request_duration_seconds_bucket",
)


@pytest.mark.integration
def test_metrics_cover_every_child_and_move_while_messages_flow(pipeline_config: Config, tmp_path: Path):
    leftover = metrics.directory(pipeline_config) / "counter_1.db"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"")
    sup = start_streamd(
        tmp_path, pipeline_config, producer={"rate": 20.0}, consumer={"processes": 2}, api={"workers": 2}
    )
    try:
        sup.wait_running(*PIPELINE, timeout=60)
        assert not leftover.exists(), "the supervisor starts from an empty metrics directory"
        url = api_url(sup, "/metrics")
        first = wait_until(
            lambda: (s := scrape(url)) and total(s, "streamd_consumer_messages_stored_total") > 0 and s,
            timeout=60,
            what=f"messages stored; log:\n{sup.log_tail()}",
        )
        second = wait_until(
            lambda: (s := scrape(url)) and all(total(s, name) > total(first, name) for name in MOVING) and s,
            timeout=60,
            what=f"every one of {MOVING} to move while messages flow",
        )
        names = {name for name, _ in second}
        assert not [name for name in PRESENT if name not in names]
        partitions = {dict(ls)["partition"] for n, ls in second if n == "streamd_consumer_lag_messages"}
        assert partitions == {"0", "1", "2"}
        for child in PIPELINE:
            assert total(second, "streamd_child_state", child=child, state="RUNNING") == 1
        assert total(second, "streamd_http_requests_total", route="/metrics", status="200") >= 1

        consumer = sup.children()["consumer-1"]
        os.kill(consumer["pid"], signal.SIGKILL)
        wait_until(
            lambda: total(scrape(url), "streamd_child_restarts_total", child="consumer-1") == 1,
            timeout=30,
            what="consumer-1's restart in /metrics",
        )
        after = scrape(url)
        assert total(after, "streamd_consumer_messages_stored_total") >= total(
            second, "streamd_consumer_messages_stored_total"
        ), "a dead consumer's counts stay in the totals"
    finally:
        sup.kill()
