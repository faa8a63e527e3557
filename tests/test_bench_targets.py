"""The issue's targets judged on plain figures: measured value, met / not met, and "not measured" when absent."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from streamd.bench import targets
from streamd.bench.report import render_targets


def latency(p99_stored: float, p99_visible: float, achieved: float, missing: int = 0) -> dict[str, Any]:
    def path(p99: float) -> dict[str, Any]:
        return {"p50": p99 / 2, "p95": p99, "p99": p99, "missing": missing}

    return {
        "achieved_msgs_per_s": achieved,
        "achieved_polled_msgs_per_s": achieved,
        "stored": path(p99_stored),
        "visible": path(p99_visible),
        "stored_while_polled": path(p99_stored),
    }


def drain(rate: float, cpu: float | None, rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"msgs_per_s": rate, "startup_s": 1.0, "cpu_us_per_msg": cpu, "rss_mb": rss, "usage_note": None}


# A run meeting every target, with the Kafka Connect peers measured.
MET: dict[str, Any] = {
    "messages": 1_000_000,
    "pipeline_by_processes": {
        "1": drain(20_000.0, 4.0, {"consumer-1": {"start": 50.0, "end": 54.0}}),
        "2": drain(19_500.0, 4.5, {"consumer-1": {"start": 50.0, "end": 60.0}, "consumer-2": {"start": 50, "end": 51}}),
    },
    "pipeline_vs_ceiling": 0.93,
    "latency_ms": {"1000": latency(40.0, 90.0, 1000.0), "5000": latency(95.0, 400.0, 4990.0)},
    "peers": {"ratios": {"connect-1": {"value": 1.25, "target": 1.2}, "connect-3": {"value": 1.01, "target": 1.0}}},
}


def verdicts(figures: dict[str, Any]) -> dict[str, targets.Verdict]:
    return {verdict.target: verdict for verdict in targets.evaluate(figures)}


def changed(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    figures = copy.deepcopy(MET)
    place = figures
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = value
    return figures


def test_a_run_meeting_every_target_is_met_everywhere_and_lists_each_target_once():
    judged = targets.evaluate(MET)
    assert len(judged) == len(targets.CHECKS) == 9
    assert len({verdict.target for verdict in judged}) == len(judged)
    assert [verdict.met for verdict in judged] == [True] * len(judged)
    assert all(verdict.measured for verdict in judged)


@pytest.mark.parametrize(
    ("path", "value", "target"),
    [
        (("peers", "ratios", "connect-1", "value"), 1.19, "drain rate vs the Kafka Connect MongoDB sink, 1 task"),
        (("peers", "ratios", "connect-3", "value"), 0.99, "drain rate vs the Kafka Connect MongoDB sink, 3 tasks"),
        (
            ("pipeline_by_processes", "2", "msgs_per_s"),
            18_900.0,
            "throughput does not fall when consumer processes are added",
        ),
        (("pipeline_vs_ceiling",), 0.89, "pipeline vs ceiling"),
        (("pipeline_by_processes", "2", "cpu_us_per_msg"), 5.1, "consumer CPU per message"),
        (("latency_ms", "1000", "stored", "p99"), 50.1, "p99 produce → stored at 1,000 msg/s"),
        (("latency_ms", "5000", "stored", "p99"), 100.1, "p99 produce → stored at 5,000 msg/s"),
        (("latency_ms", "1000", "visible", "p99"), 100.1, "p99 produce → visible at 1,000 msg/s"),
        (("latency_ms", "1000", "visible", "missing"), 3, "p99 produce → visible at 1,000 msg/s"),
        (
            ("pipeline_by_processes", "2", "rss_mb", "consumer-1", "end"),
            60.1,
            "consumer RSS flat over a drain of 1,000,000 messages",
        ),
    ],
)
def test_a_figure_just_past_its_threshold_fails_that_target_alone(path, value, target):
    judged = verdicts(changed(path, value))
    assert judged[target].met is False
    assert [name for name, verdict in judged.items() if verdict.met is not True] == [target]


def test_throughput_tolerates_five_percent_less_with_more_processes():
    judged = verdicts(changed(("pipeline_by_processes", "2", "msgs_per_s"), 19_000.0))
    assert judged["throughput does not fall when consumer processes are added"].met is True


def test_rss_flat_allows_ten_percent_and_five_megabytes():
    # 50 MB × 1.1 + 5 = 60 MB: the limit itself is still flat.
    judged = verdicts(changed(("pipeline_by_processes", "2", "rss_mb", "consumer-1", "end"), 60.0))
    assert judged["consumer RSS flat over a drain of 1,000,000 messages"].met is True


def test_rss_is_judged_over_a_million_messages_only():
    """A short drain's growth is the consumer warming up, not a leak."""
    judged = verdicts(changed(("messages",), 100_000))
    assert judged["consumer RSS flat over a drain of 1,000,000 messages"].met is None


def test_what_a_run_did_not_measure_is_neither_met_nor_failed():
    figures = copy.deepcopy(MET)
    del figures["peers"]
    del figures["latency_ms"]["5000"]
    figures["latency_ms"]["1000"]["achieved_msgs_per_s"] = 850.0  # the bench's producer fell behind
    figures["pipeline_by_processes"] = {
        "1": {
            **drain(20_000.0, None, {}),
            "usage_note": "no /proc on this system: consumer CPU and RSS are not measured",
        }
    }
    judged = verdicts(figures)
    assert {name for name, verdict in judged.items() if verdict.met is not None} == {
        "pipeline vs ceiling",
        "p99 produce → visible at 1,000 msg/s",  # its pass reached the offered rate
    }
    for verdict in judged.values():
        if verdict.met is None:
            assert verdict.measured.startswith("not measured (")
    assert "850 msg/s" in judged["p99 produce → stored at 1,000 msg/s"].measured
    assert "no /proc" in judged["consumer CPU per message"].measured


def test_a_latency_where_nothing_arrived_is_not_met():
    figures = changed(("latency_ms", "1000", "stored"), {"p50": None, "p95": None, "p99": None, "missing": 10_000})
    assert verdicts(figures)["p99 produce → stored at 1,000 msg/s"].met is False


def test_the_report_prints_every_target_with_its_status():
    figures = copy.deepcopy(MET)
    figures["pipeline_vs_ceiling"] = 0.5
    figures["targets"] = [verdict.figures() for verdict in targets.evaluate(figures)]
    section = targets_section(figures)
    assert len(section) == len(targets.CHECKS)
    assert sum("NOT MET" in line for line in section) == 1
    assert all("≥" in line or "≤" in line for line in section), "each line says its rule"


def targets_section(figures: dict[str, Any]) -> list[str]:
    return render_targets(figures["targets"]).splitlines()[1:]
