"""Issue #12's targets, each checked against one run's figures: what was measured, and whether it is met.

Plain functions over the JSON-ready figures `streamd bench` writes, so a saved --json file gives the same
verdicts as the run did. A target whose figure this run did not measure (a load it did not offer, the Kafka
Connect peers it did not run, a system without /proc) says "not measured": it neither passes nor fails.
The thresholds and tolerances are here and nowhere else; docs/performance.md lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from streamd.bench import peers

PROCESSES_TOLERANCE = 0.95  # "does not fall": the best run with more processes ≥ the 1-process run × this
PIPELINE_VS_CEILING = 0.9
CPU_US_PER_MSG = 5.0
# p99 latency limits (ms) by offered load (msg/s) and path
P99_MS = (("stored", 1000, 50.0), ("stored", 5000, 100.0), ("visible", 1000, 100.0))
# A latency is only worth the rate it was taken at: below this share of the offered load it is not measured.
ACHIEVED_SHARE = 0.9
RSS_GROWTH = 1.1  # flat: end ≤ start × RSS_GROWTH + RSS_SLACK_MB, for every consumer
RSS_SLACK_MB = 5.0
# The drain RSS is judged over: a shorter one shows the consumer's warm-up (its caches and buffers filling), not a leak.
RSS_MESSAGES = 1_000_000


@dataclass(frozen=True)
class Verdict:
    target: str  # what is aimed at
    rule: str  # the comparison, with its tolerance
    measured: str | None  # the figure in words; None when this run did not measure it
    met: bool | None  # None when not measured

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(figures: dict[str, Any]) -> list[Verdict]:
    """Every target of the issue, in its order, against `figures` (a run's, or a saved --json file's)."""
    return [check(figures) for check in CHECKS]


def not_measured(target: str, rule: str, why: str) -> Verdict:
    return Verdict(target, rule, f"not measured ({why})", None)


def connect_1_task(figures: dict[str, Any]) -> Verdict:
    return _versus_connect(figures, 1)


def connect_3_tasks(figures: dict[str, Any]) -> Verdict:
    return _versus_connect(figures, 3)


def _versus_connect(figures: dict[str, Any], tasks: int) -> Verdict:
    """streamd's median drain rate over Connect's with `tasks` tasks, against the target the peers phase set."""
    least = peers.TARGETS[tasks]
    target = f"drain rate vs the Kafka Connect MongoDB sink, {tasks} task{'s' if tasks != 1 else ''}"
    rule = f"≥ {least:.1f}×"
    ratio = ((figures.get("peers") or {}).get("ratios") or {}).get(peers.connect_key(tasks))
    if ratio is None:
        return not_measured(target, rule, (figures.get("peers") or {}).get("error") or "no Kafka Connect run")
    return Verdict(target, rule, f"{ratio['value']:.2f}×", ratio["value"] >= least)


def processes_scale(figures: dict[str, Any]) -> Verdict:
    target = "throughput does not fall when consumer processes are added"
    rule = f"best of >1 processes ≥ 1 process × {PROCESSES_TOLERANCE}"
    runs = figures.get("pipeline_by_processes", {})
    more = {int(n): run["msgs_per_s"] for n, run in runs.items() if int(n) > 1}
    if "1" not in runs or not more:
        return not_measured(target, rule, "needs a 1-process run and one with more")
    one = runs["1"]["msgs_per_s"]
    best = max(more, key=lambda n: more[n])
    ratio = more[best] / max(one, 1e-9)
    measured = f"{ratio:.2f} ({best} processes {more[best]:,.0f} msg/s, 1 process {one:,.0f} msg/s)"
    return Verdict(target, rule, measured, ratio >= PROCESSES_TOLERANCE)


def pipeline_vs_ceiling(figures: dict[str, Any]) -> Verdict:
    ratio = figures["pipeline_vs_ceiling"]
    return Verdict("pipeline vs ceiling", f"≥ {PIPELINE_VS_CEILING}", f"{ratio:.2f}", ratio >= PIPELINE_VS_CEILING)


def cpu_per_message(figures: dict[str, Any]) -> Verdict:
    target, rule = "consumer CPU per message", f"≤ {CPU_US_PER_MSG:g} µs in every pipeline run"
    runs = figures.get("pipeline_by_processes", {})
    measured = {n: run["cpu_us_per_msg"] for n, run in runs.items() if run.get("cpu_us_per_msg") is not None}
    if not measured:
        notes = {run.get("usage_note") for run in runs.values()} - {None}
        return not_measured(target, rule, "; ".join(sorted(notes)) or "no pipeline run")
    worst = max(measured, key=lambda n: measured[n])
    words = ", ".join(f"{value:g} µs ({n} proc.)" for n, value in measured.items())
    return Verdict(target, rule, words, measured[worst] <= CPU_US_PER_MSG)


def p99_check(path: str, load: int, limit_ms: float) -> Callable[[dict[str, Any]], Verdict]:
    def check(figures: dict[str, Any]) -> Verdict:
        target, rule = f"p99 produce → {path} at {load:,} msg/s", f"≤ {limit_ms:g} ms, nothing missing"
        result = figures.get("latency_ms", {}).get(f"{load:g}")
        if result is None:
            return not_measured(target, rule, "load not offered")
        achieved = result.get("achieved_polled_msgs_per_s" if path == "visible" else "achieved_msgs_per_s")
        if achieved is not None and achieved < load * ACHIEVED_SHARE:
            return not_measured(target, rule, f"the bench's producer reached only {achieved:,.0f} msg/s")
        p = result[path]
        if p["p99"] is None:
            return Verdict(target, rule, f"none of the messages arrived ({p['missing']:,} missing)", False)
        missing = f", {p['missing']:,} missing" if p["missing"] else ""
        return Verdict(target, rule, f"{p['p99']:,.1f} ms{missing}", p["p99"] <= limit_ms and not p["missing"])

    return check


def rss_flat(figures: dict[str, Any]) -> Verdict:
    target = f"consumer RSS flat over a drain of {RSS_MESSAGES:,} messages"
    rule = f"end ≤ start × {RSS_GROWTH} + {RSS_SLACK_MB:g} MB, every consumer"
    if figures.get("messages", 0) < RSS_MESSAGES:
        why = f"this drain held {figures.get('messages', 0):,}: run --messages {RSS_MESSAGES}"
        return not_measured(target, rule, why)
    sizes = [
        (name, processes, size)
        for processes, run in figures.get("pipeline_by_processes", {}).items()
        for name, size in (run.get("rss_mb") or {}).items()
    ]
    if not sizes:
        return not_measured(target, rule, "no consumer was sampled")

    def excess(size: dict[str, float]) -> float:
        return size["end"] - (size["start"] * RSS_GROWTH + RSS_SLACK_MB)

    name, processes, worst = max(sizes, key=lambda entry: excess(entry[2]))
    measured = f"closest to the limit: {name} of {processes} proc., {worst['start']:.1f} → {worst['end']:.1f} MB"
    return Verdict(target, rule, measured, excess(worst) <= 0)


CHECKS: tuple[Callable[[dict[str, Any]], Verdict], ...] = (
    connect_1_task,
    connect_3_tasks,
    processes_scale,
    pipeline_vs_ceiling,
    cpu_per_message,
    *(p99_check(path, load, limit) for path, load, limit in P99_MS),
    rss_flat,
)
