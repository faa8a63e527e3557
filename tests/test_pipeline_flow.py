"""The whole pipeline under one supervisor, on the real Kafka and store: what `streamd start` promises."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from streamd.config import Config

from .probes import STACK_STATE_DIR, free_port, stored_count, wait_until
from .supervisor_process import PIPELINE, api_url, descendants, get_json, process_gone, start_streamd


@pytest.fixture
def pipeline(pipeline_config: Config, tmp_path: Path):
    sup = start_streamd(
        tmp_path,
        pipeline_config,
        producer={"rate": 20.0},
        consumer={"processes": 2, "batch_timeout_ms": 50},
    )
    yield sup
    sup.kill()


def test_messages_flow_from_the_producer_through_kafka_and_the_store_to_the_api(pipeline):
    pipeline.wait_running(*PIPELINE, timeout=60)
    page = wait_until(
        lambda: (r := get_json(api_url(pipeline, "/messages?limit=5")))[0] == 200 and r[1]["count"] == 5 and r[1],
        timeout=60,
        what=f"five messages through the API; log:\n{pipeline.log_tail()}",
    )
    newest = page["data"][0]
    assert newest["content"].startswith("Message généré à ")
    assert newest["source"] == "system-generator"
    timestamps = [item["timestamp"] for item in page["data"]]
    assert timestamps == sorted(timestamps, reverse=True), "newest first"
    status, one = get_json(api_url(pipeline, f"/messages/{newest['id']}"))
    assert status == 200 and one["id"] == newest["id"]
    assert get_json(api_url(pipeline, "/ready"))[0] == 200


def test_a_consumer_killed_with_sigkill_is_restarted_and_the_flow_goes_on(pipeline):
    before = pipeline.wait_running(*PIPELINE, timeout=60)
    wait_until(lambda: stored_count(pipeline.config) > 0, timeout=60, what="first messages stored")
    os.kill(before["consumer-1"]["pid"], signal.SIGKILL)

    def restarted() -> dict | None:
        children = pipeline.children()
        consumer = children.get("consumer-1", {})
        return children if consumer.get("restarts") == 1 and consumer.get("state") == "RUNNING" else None

    after = wait_until(restarted, timeout=30, what="consumer-1 restarted")
    assert after["consumer-1"]["pid"] != before["consumer-1"]["pid"]
    count_after_restart = stored_count(pipeline.config)
    wait_until(lambda: stored_count(pipeline.config) >= count_after_restart + 20, timeout=60, what="flow resumed")


def test_sigterm_stops_the_whole_pipeline_with_exit_zero_and_no_process_left(pipeline):
    pipeline.wait_running(*PIPELINE, timeout=60)
    assert pipeline.process is not None
    everyone = descendants(pipeline.process.pid)
    assert len(everyone) > len(PIPELINE), "the API's Gunicorn workers are grandchildren"
    pipeline.signal(signal.SIGTERM)
    assert pipeline.wait_exit(timeout=60) == 0, pipeline.log_tail()
    wait_until(lambda: all(process_gone(pid) for pid in everyone), timeout=10, what="every process gone")
    assert "Traceback" not in pipeline.log()


def test_sigkill_of_the_supervisor_leaves_no_process_behind(pipeline):
    pipeline.wait_running(*PIPELINE, timeout=60)
    assert pipeline.process is not None
    everyone = descendants(pipeline.process.pid)
    pipeline.signal(signal.SIGKILL)
    pipeline.wait_exit()
    wait_until(lambda: all(process_gone(pid) for pid in everyone), timeout=15, what="every process gone")


def test_start_runs_a_local_stack_as_children_when_no_server_answers(pipeline_config, tmp_path):
    """The README's run command on a machine with no Kafka or MongoDB: streamd brings its own."""
    kafka_port, store_port = free_port(), free_port()
    sup = start_streamd(
        tmp_path,
        pipeline_config,
        kafka={"brokers": f"127.0.0.1:{kafka_port}"},
        mongodb={"uri": f"mongodb://127.0.0.1:{store_port}"},
        stack={"local": "auto", "kafka_controller_port": free_port(), "cache_dir": str(STACK_STATE_DIR / "cache")},
        producer={"rate": 20.0},
    )
    try:
        sup.wait_running("kafka", "store", *PIPELINE[:2], "api", timeout=180)
        wait_until(
            lambda: (r := get_json(api_url(sup, "/messages?limit=3")))[0] == 200 and r[1]["count"] == 3,
            timeout=90,
            what=f"messages through the API; log:\n{sup.log_tail()}",
        )
        assert sup.process is not None
        everyone = descendants(sup.process.pid)
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit(timeout=90) == 0, sup.log_tail()
        wait_until(lambda: all(process_gone(pid) for pid in everyone), timeout=15, what="servers gone too")
    finally:
        sup.kill()
