"""What a bench run shows: progress lines on stderr while it runs, then one table of every figure and the targets."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from streamd.bench import targets


class Progress:
    """Timestamped progress lines, so a long phase is never a silent terminal."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.started:6.1f} s] {text}\n")
        self.out.flush()


LATENCY_ROWS = (("stored", "stored"), ("visible", "visible"), ("stored_while_polled", "stored, API polled"))


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} msg/s"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def render(figures: dict[str, Any]) -> str:
    """The table `streamd bench` prints: one row per figure, grouped as the issue lists them."""
    rows: list[tuple[str, str]] = []
    machine = figures["machine"]
    rows.append(("machine", f"{machine['cpus']} CPUs, store {machine['store']}, Kafka {machine['kafka']}"))
    rows.append(("backlog", f"{figures['messages']:,} messages, {figures['partitions']} partitions"))
    by_writers = figures.get("store_ceiling_by_writers") or {}
    detail = "  (" + ", ".join(f"{n} writer{'s' if n != '1' else ''} {rate(v)}" for n, v in by_writers.items()) + ")"
    rows.append(("store ceiling (insert_many, best)", rate(figures["store_ceiling_msgs_per_s"]) + detail))
    rows.append(("Kafka consume ceiling", rate(figures["kafka_consume_ceiling_msgs_per_s"])))
    rows.append(("naive (insert_one per message)", rate(figures["naive_msgs_per_s"])))
    for processes, run in figures["pipeline_by_processes"].items():
        plural = "es" if processes != "1" else ""
        rows.append(
            (
                f"pipeline, {processes} consumer process{plural}",
                f"{rate(run['msgs_per_s'])}  (start-up {run['startup_s']:.1f} s"
                + (
                    ""
                    if run.get("settled", True)
                    else "; mostly stored before every consumer held partitions: rebalances included"
                )
                + ")",
            )
        )
    for processes, run in figures["pipeline_by_processes"].items():
        rows.extend(usage_rows(processes, run))
    rows.append(("pipeline (best)", rate(figures["pipeline_msgs_per_s"])))
    rows.append(("pipeline vs ceiling", f"{figures['pipeline_vs_ceiling']:.2f}"))
    rows.extend(peer_rows(figures["peers"]))
    stages = figures["stage_cost"]
    for key, label in (("without_stages", "no stages"), ("with_stages", f"{len(stages['chain'])} stages")):
        run = stages[key]
        routed = f", {run['routed']:,} routed" if run["routed"] else ""
        rows.append((f"drain, {stages['processes']} consumer process, {label}", f"{rate(run['msgs_per_s'])}{routed}"))
    rows.append(
        (
            f"stage cost ({len(stages['chain'])} stages vs none)",
            f"{stages['ratio']:.2f}  (target ≥ {stages['target']:.2f}; {', '.join(stages['chain'])})",
        )
    )
    for load, result in figures["latency_ms"].items():
        achieved = (result.get("achieved_msgs_per_s"), result.get("achieved_polled_msgs_per_s"))
        if None not in achieved:
            produced = f"{rate(achieved[0])} (API not polled), {rate(achieved[1])} (polled)"
            rows.append((f"latency at {load} msg/s, rate the bench produced", produced))
        for path, label in LATENCY_ROWS:
            p = result[path]
            missing = f", {p['missing']} missing" if p["missing"] else ""
            requests = p.get("request_ms")
            # What a message waits for once stored: the poll in progress to end and the next one to list it.
            took = f"  (each GET /messages p50 {ms(requests['p50'])}, p99 {ms(requests['p99'])})" if requests else ""
            rows.append(
                (
                    f"latency at {load} msg/s, produce → {label}",
                    f"p50 {ms(p['p50'])}  p95 {ms(p['p95'])}  p99 {ms(p['p99'])}{missing}{took}",
                )
            )
    api = figures["api"]
    if "error" in api:
        rows.append(("API", api["error"]))
    else:
        rows.append(
            (
                "API server",
                f"{api['workers']} {api['worker_class']} workers × {api['threads']} threads, "
                f"{api['documents']:,} stored messages, {api['tool']}",
            )
        )
        for endpoint, runs in api["endpoints"].items():
            for run in runs:
                errors = f", {run['errors']} errors" if run["errors"] else ""
                rows.append(
                    (
                        f"{endpoint}, {run['concurrency']} connection{'s' if run['concurrency'] != 1 else ''}",
                        f"{run['rps']:,.0f} req/s  p50 {ms(run['p50_ms'])}  p99 {ms(run['p99_ms'])}{errors}",
                    )
                )
        sizes = api["id_lookup_by_size"]
        index = "an index search" if api["id_index"] else "a scan: the local FerretDB's _id index is missing"
        rows.append(
            (
                f"GET /messages/{{id}} by stored messages, {api['id_lookup_concurrency']} connections",
                "  ".join(f"{int(n):,}: p50 {ms(r['p50_ms'])} p99 {ms(r['p99_ms'])}" for n, r in sizes.items())
                + f"  ({index})",
            )
        )
    rows.extend(ingest_rows(figures.get("ingest")))
    memory = ", ".join(f"{name} {size:.0f}" for name, size in figures["rss_mb"].items())
    rows.append(("RSS (MB)", memory or "-"))
    rows.append(("duration", f"{figures['duration_s']:.0f} s"))
    return table(rows) + "\n\n" + render_targets(figures.get("targets", []))


def ingest_rows(ingest: dict[str, Any] | None) -> list[tuple[str, str]]:
    """POST /messages: messages per second through batches, request latency, and whether the topic holds them."""
    if not ingest:
        return []  # a --json file from before the ingest phase
    rows = []
    for run in ingest["runs"]:
        plural = "s" if run["concurrency"] != 1 else ""
        errors = f", {run['errors']} errors" if run["errors"] else ""
        rows.append(
            (
                f"POST /messages, batches of {run['batch']}, {run['concurrency']} connection{plural}",
                f"{rate(run['msgs_per_s'])}  ({run['rps']:,.0f} req/s, p50 {ms(run['p50_ms'])}  "
                f"p99 {ms(run['p99_ms'])}{errors})",
            )
        )
    check = "all in the topic" if ingest["in_topic"] == ingest["accepted"] else f"{ingest['in_topic']:,} in the topic"
    rows.append(("POST /messages, accepted", f"{ingest['accepted']:,} messages ({check})"))
    return rows


def usage_rows(processes: str, run: dict[str, Any]) -> list[tuple[str, str]]:
    """A pipeline run's consumer CPU per message and each consumer's RSS at its first and last commit."""
    count = f"{processes} consumer process{'es' if processes != '1' else ''}"
    cpu, sizes = run.get("cpu_us_per_msg"), run.get("rss_mb") or {}
    missing = f"- ({run.get('usage_note') or 'not measured'})"
    target = f"(target ≤ {targets.CPU_US_PER_MSG:g} µs)"
    rss = ", ".join(f"{name} {size['start']:.1f} → {size['end']:.1f} MB" for name, size in sizes.items())
    return [
        (f"consumer CPU per message, {count}", missing if cpu is None else f"{cpu:,.2f} µs  {target}"),
        (f"consumer RSS start → end, {count}", rss or missing),
    ]


def render_targets(verdicts: list[dict[str, Any]]) -> str:
    """The issue's targets: each one's rule, what this run measured, and met / NOT MET / not measured."""
    rows = [("targets (issue #12)", "")]
    for verdict in verdicts:
        status = {True: "met: ", False: "NOT MET: ", None: ""}[verdict["met"]]
        rows.append((f"  {verdict['target']}", f"{status}{verdict['measured']}  [{verdict['rule']}]"))
    return table(rows)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def peer_rows(peers: dict[str, Any]) -> list[tuple[str, str]]:
    """streamd next to Kafka Connect: each system's medians over the rounds, then streamd's ratios."""
    if "error" in peers:
        return [("Kafka Connect peers", peers["error"])]
    rows = []
    for key, system in peers["systems"].items():
        cpu = system["cpu_us_per_msg"]
        cpu_text = f"  CPU {cpu:.1f} µs/msg" if cpu is not None else ""
        rows.append(
            (
                f"peers: {peer_label(key)}",
                f"{rate(system['msgs_per_s'])}{cpu_text}  (median of {peers['rounds']}; "
                f"start-up {system['startup_s']:.1f} s)",
            )
        )
    for key, ratio in peers["ratios"].items():
        rows.append(
            (
                f"peers: streamd / {peer_label(key)}",
                f"{ratio['value']:.2f}  (target ≥ {ratio['target']:.2f}; {peers['connect']})",
            )
        )
    return rows


def peer_label(key: str) -> str:
    """ "streamd-2" and "connect-3" as a reader says them."""
    if key.startswith("streamd-"):
        processes = key.removeprefix("streamd-")
        return f"streamd, {processes} consumer process{'es' if processes != '1' else ''}"
    tasks = key.removeprefix("connect-")
    return f"Kafka Connect, {tasks} task{'s' if tasks != '1' else ''}"
