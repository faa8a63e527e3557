"""The consumers' CPU per message and RSS over a drain: read from /proc, absent with a note when it cannot be."""

from __future__ import annotations

import os
import time

from streamd.bench import ceilings, pipeline_runs, usage, with_topic
from streamd.bench.report import usage_rows
from streamd.bench.scratch import Scratch
from streamd.config import Config
from streamd.kafka import ensure_topic
from tests.probes import free_port


def busy(seconds: float) -> None:
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


def test_a_sample_reads_this_process_cpu_time_and_resident_size():
    before = usage.sample(os.getpid())
    busy(0.05)
    after = usage.sample(os.getpid())
    assert before is not None and after is not None
    assert after.cpu_s - before.cpu_s >= 0.03, "utime + stime advance with the CPU this process burns"
    assert after.rss_mb > 1 and after.pid == os.getpid()


def test_a_process_that_has_gone_gives_no_sample():
    assert usage.sample(2**22 + 1) is None  # above Linux's largest pid


def test_cpu_per_message_adds_up_every_consumer_between_the_two_samples():
    start = {"consumer-1": usage.Sample(10, 1.0, 50.0), "consumer-2": usage.Sample(11, 2.0, 52.0)}
    end = {"consumer-1": usage.Sample(10, 1.3, 55.0), "consumer-2": usage.Sample(11, 2.2, 52.5)}
    used = usage.between(start, end, messages=100_000)
    assert used.cpu_us_per_msg == 5.0  # (0.3 + 0.2) s over 100,000 messages
    assert used.rss_mb == {"consumer-1": {"start": 50.0, "end": 55.0}, "consumer-2": {"start": 52.0, "end": 52.5}}
    assert used.note is None


def test_a_consumer_restarted_during_the_drain_leaves_the_figures_out_with_its_name():
    start = {"consumer-1": usage.Sample(10, 1.0, 50.0), "consumer-2": usage.Sample(11, 2.0, 52.0)}
    end = {"consumer-1": usage.Sample(10, 1.3, 55.0), "consumer-2": usage.Sample(99, 0.1, 40.0)}
    used = usage.between(start, end, messages=100_000)
    assert used.cpu_us_per_msg is None and used.rss_mb == {}
    assert "consumer-2" in used.note and "consumer-1" not in used.note


def test_without_proc_the_figures_are_absent_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setattr(usage, "PROC", tmp_path / "no-proc")
    assert usage.sample(os.getpid()) is None
    used = usage.between(usage.sample_all({"consumer-1": os.getpid()}), {}, messages=1_000)
    assert used == usage.Usage(None, {}, usage.NO_PROC)


def test_a_real_drain_reports_cpu_per_message_and_the_rss_of_each_consumer(pipeline_config: Config):
    scratch = Scratch(pipeline_config, partitions=2)
    try:
        topic = scratch.topic("usage")
        messages = ceilings.generate_values(10_000, "bench")
        ensure_topic(with_topic(scratch.base, topic), topic, partitions=scratch.partitions)
        ends = ceilings.prefill(scratch.base, topic, messages)
        result, _ = pipeline_runs.drain(scratch, topic, ends, 1, free_port())
    finally:
        scratch.cleanup()
    assert result.stored == len(messages)
    assert result.usage_note is None
    assert result.cpu_us_per_msg is not None and result.cpu_us_per_msg > 0
    assert set(result.rss_mb) == {"consumer-1"}, "the supervisor, the retention child and the API are not consumers"
    for size in result.rss_mb.values():
        assert size["start"] > 0 and size["end"] > 0
    assert {"cpu_us_per_msg", "rss_mb"} <= set(result.figures())


def test_the_report_shows_each_consumers_rss_and_says_why_cpu_is_missing():
    measured = {"cpu_us_per_msg": 4.25, "rss_mb": {"consumer-1": {"start": 50.0, "end": 51.5}}, "usage_note": None}
    rows = dict(usage_rows("1", measured))
    assert rows["consumer CPU per message, 1 consumer process"].startswith("4.25 µs")
    assert rows["consumer RSS start → end, 1 consumer process"] == "consumer-1 50.0 → 51.5 MB"
    absent = {"cpu_us_per_msg": None, "rss_mb": {}, "usage_note": usage.NO_PROC}
    assert all(usage.NO_PROC in value for value in dict(usage_rows("2", absent)).values())
