"""`streamd bench`: the pipeline's throughput, latency and API speed, next to what the store and Kafka allow.

Every figure comes from one run on this machine against the configured Kafka and store (started
locally when `stack.local` allows), in this order:

    backlog              N generated messages produced to a scratch topic
    ceilings             insert_many of the same documents (the first 100,000); librdkafka reading the
                         backlog; the naive loop
    pipeline runs        `streamd start` with 1, 2, 4… consumers draining the backlog (pipeline_runs)
                         (also the consumers' CPU per message and RSS from the first commit to the last: usage)
    peers                rounds of streamd (as configured) and Kafka Connect's MongoDB sink (1 and 3 tasks)
                         draining the same backlog, interleaved (peers)
    stage cost           the same drain with a 4-stage chain and with none, back to back (stage_cost)
    latency              offered loads through one running pipeline (latency)
    API load             wrk against the Gunicorn API over a collection of known size (api_load), then
                         GET /messages/{id} at api_documents and again with the whole backlog stored
    ingest               POST /messages in batches of 100 through the API alone, into a scratch topic
                         (ingest_load)

Then every target of issue #12 is checked against those figures (targets).
Everything is written under scratch names (scratch) and removed at the end, also after a failure.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pymongo.errors

from streamd.bench import api_load, ceilings, ingest_load, latency, peers, pipeline_runs, stage_cost, targets
from streamd.bench.report import Progress, render
from streamd.bench.scratch import BenchError, Scratch
from streamd.bench.supervised import SupervisedRun, keep_largest
from streamd.config import Config
from streamd.kafka import ensure_topic
from streamd.redaction import masked_uri

__all__ = ["BenchError", "BenchOptions", "render", "run"]

HEALTH_TIMEOUT = 30.0
LOOKUP_CONCURRENCY = 4  # GET /messages/{id} at two collection sizes: a latency comparison, not a saturation
LOOKUP_PATHS = 10_000  # ids asked at each size, drawn from every stored one
INSERT_CHUNK = 10_000  # the backlog's documents are made and stored this many at a time, never all at once


@dataclass(frozen=True)
class BenchOptions:
    messages: int = 100_000  # the backlog every throughput figure drains
    naive_messages: int = 5_000  # the naive loop is ~15 times slower: a smaller sample suffices
    processes: tuple[int, ...] = (1, 2, 4)
    loads: tuple[float, ...] = (100.0, 1000.0, 5000.0)
    load_seconds: float = 10.0
    api_documents: int = 1_000
    api_concurrency: tuple[int, ...] = (1, 4, 16)
    api_seconds: float = 5.0
    ingest_concurrency: tuple[int, ...] = (1, 4)  # connections posting batches of 100 to POST /messages
    rounds: int = 3  # of the peers phase; the medians are reported
    quick: bool = False

    @classmethod
    def quick_run(cls) -> BenchOptions:
        """About a minute: fewer messages, fewer points, one peer round, the same figures."""
        return cls(
            messages=60_000,  # enough to time 2 consumers after their group settles
            naive_messages=1_000,
            processes=(1, 2),
            load_seconds=3.0,
            api_concurrency=(4,),
            api_seconds=2.0,
            ingest_concurrency=(4,),
            rounds=1,
            loads=(100.0, 1000.0),  # the 5000 msg/s target shows as not measured
            quick=True,
        )


def run(config: Config, options: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything; the figures as plain JSON-ready data. Raises BenchError when a phase fails."""
    from streamd import stack

    progress = progress or Progress()
    started = time.monotonic()
    stack_started = False
    if config.stack.local is not False:
        try:
            stack_started = stack.ensure_running(config)
        except stack.StackError as exc:
            raise BenchError(str(exc)) from None
    scratch = Scratch(config, max(options.processes))
    progress(f"run {scratch.run_id}: scratch topics {scratch.prefix}-*, database {scratch.database}")
    try:
        figures = measure(scratch, options, progress)
    except pymongo.errors.PyMongoError as exc:
        raise BenchError(f"the store at {masked_uri(config.mongodb.uri)} failed during the run ({exc}).") from None
    finally:
        problems = scratch.cleanup()
        for problem in problems:
            progress(f"clean-up: {problem}")
        if stack_started:
            stack.down(config)
    progress("scratch topics, groups and database removed" if not problems else "clean-up incomplete (see above)")
    figures["targets"] = [verdict.figures() for verdict in targets.evaluate(figures)]
    figures["duration_s"] = round(time.monotonic() - started, 1)
    return figures


def measure(scratch: Scratch, options: BenchOptions, progress: Progress) -> dict[str, Any]:
    base = scratch.base
    batch_size = base.consumer.batch_size
    backlog = scratch.topic("backlog")
    ensure_topic(with_topic(base, backlog), backlog, partitions=scratch.partitions)

    progress(f"generating and producing {options.messages:,} messages to {backlog}")
    messages = ceilings.generate_values(options.messages, "bench")
    ends = ceilings.prefill(base, backlog, messages)
    documents = ceilings.documents_of(messages[: ceilings.CEILING_SAMPLE], backlog)

    with scratch.store() as client:
        database = client[scratch.database]
        store_info = client.server_info()
        store_by_writers: dict[str, float] = {}
        for writers in sorted(set(options.processes)):
            collection = database[f"store_ceiling_{writers}"]
            store_by_writers[str(writers)] = ceilings.store_ceiling(collection, documents, batch_size, writers)
            collection.drop()  # the next writer count starts from a store of the same size
            progress(
                f"store ceiling, {writers} writer(s): {store_by_writers[str(writers)]:,.0f} msg/s "
                f"(insert_many of {len(documents):,}, {batch_size} per call)"
            )
        store = max(store_by_writers.values())
        kafka = ceilings.kafka_consume_ceiling(base, backlog, scratch.group("ceiling"), options.messages)
        progress(f"Kafka consume ceiling: {kafka:,.0f} msg/s")
        naive_count = min(options.naive_messages, options.messages)
        naive = ceilings.naive(base, backlog, scratch.group("naive"), database["naive"], naive_count)
        progress(f"naive loop: {naive:,.0f} msg/s (insert_one per message, {naive_count:,} messages)")

    by_processes: dict[str, dict] = {}
    rss: dict[str, float] = {}
    for processes in options.processes:
        progress(f"pipeline with {processes} consumer process(es): draining {options.messages:,} messages")
        result, sizes = pipeline_runs.drain(scratch, backlog, ends, processes, free_port())
        by_processes[str(processes)] = result.figures()
        keep_largest(rss, sizes)
        cpu = result.cpu_us_per_msg
        used = f"{cpu:.2f} µs a message" if cpu is not None else f"not measured ({result.usage_note})"
        progress(f"  {result.msgs_per_s:,.0f} msg/s after a {result.startup_s:.1f} s start-up, consumer CPU {used}")
    best = max(run["msgs_per_s"] for run in by_processes.values())
    ceiling = min(store, kafka)

    peer_figures = peers.measure(scratch, backlog, ends, options.rounds, free_port, progress)
    if "ratios" in peer_figures:
        ratios = ", ".join(f"{key} {ratio['value']:.2f}" for key, ratio in peer_figures["ratios"].items())
        progress(f"peers: streamd's median rate over Connect's: {ratios}")

    stages, sizes = stage_cost.measure(scratch, backlog, ends, free_port, progress)
    keep_largest(rss, sizes)
    progress(f"stage cost: {stages['ratio']:.2f} times the rate without stages (target ≥ {stages['target']})")

    latency_figures = measure_latency(scratch, options, progress, rss)
    del documents  # the API phase makes its own from the messages, a chunk at a time
    api_figures = measure_api(scratch, options, messages, backlog, progress, rss)
    ingest_figures = measure_ingest(scratch, options, progress, rss)

    return {
        "run_id": scratch.run_id,
        "quick": options.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "store": describe_store(store_info),
            "kafka": base.kafka.brokers,
        },
        "messages": options.messages,
        "partitions": scratch.partitions,
        "batch_size": batch_size,
        "store_ceiling_msgs_per_s": round(store, 1),  # the best writer count's
        "store_ceiling_by_writers": {writers: round(value, 1) for writers, value in store_by_writers.items()},
        "kafka_consume_ceiling_msgs_per_s": round(kafka, 1),
        "naive_msgs_per_s": round(naive, 1),
        "pipeline_by_processes": by_processes,
        "pipeline_msgs_per_s": round(best, 1),
        "pipeline_vs_ceiling": round(best / ceiling, 3),
        "peers": peer_figures,
        "stage_cost": stages,
        "latency_ms": latency_figures,
        "api": api_figures,
        "ingest": ingest_figures,
        "rss_mb": rss,
    }


def measure_latency(scratch: Scratch, options: BenchOptions, progress: Progress, rss: dict[str, float]) -> dict:
    base = scratch.base
    topic = scratch.topic("latency")
    config = scratch.config(
        "latency", topic=topic, collection="latency", processes=max(1, base.consumer.processes), api_port=free_port()
    )
    ensure_topic(config, topic, partitions=scratch.partitions)
    partitions = range(scratch.partitions)
    figures: dict[str, dict] = {}
    progress(f"latency: starting a pipeline with {config.consumer.processes} consumer process(es)")
    with SupervisedRun(config) as supervised:
        latency.warm_up(supervised, config, partitions)
        for load in options.loads:
            progress(f"latency at {load:g} msg/s for {options.load_seconds:g} s")
            result = latency.offered_load(supervised, config, partitions, load, options.load_seconds)
            figures[f"{load:g}"] = result
            stored, visible = result["stored"], result["visible"]
            progress(f"  produce → stored p99 {stored['p99']} ms, produce → visible p99 {visible['p99']} ms")
        keep_largest(rss, supervised.rss_mb())
    return figures


def measure_api(
    scratch: Scratch,
    options: BenchOptions,
    messages: list[tuple[bytes, bytes]],
    topic: str,
    progress: Progress,
    rss: dict[str, float],
) -> dict:
    """The endpoints over api_documents stored messages; then GET /messages/{id} at that size and with the whole
    backlog (`messages`, produced to `topic`) stored, side by side (the target: flat)."""
    from streamd.api.server import ApiServer

    wrk = api_load.wrk_path()
    if wrk is None:
        progress(api_load.MISSING)
        return {"error": api_load.MISSING}
    config = scratch.config("api", topic=scratch.topic("api"), collection="api", processes=0, api_port=free_port())
    documents = ceilings.documents_of(messages[: options.api_documents], topic)
    with scratch.store() as client:
        collection = client[scratch.database]["api"]
        ceilings.prepare(collection)
        collection.insert_many(documents, ordered=False)
    id_index = scratch.index_id_lookups("api")
    endpoints = {
        "GET /messages": ["/messages"],
        "GET /messages/{id}": [f"/messages/{document['_id']}" for document in documents],
    }
    results: dict[str, list[dict]] = {}
    progress(f"API load: {len(documents):,} stored messages, {config.api.workers} workers")
    with SupervisedRun(config) as supervised:
        supervised.wait_running()
        wait_healthy(supervised, config.api.port)
        for endpoint, paths in endpoints.items():
            results[endpoint] = []
            for concurrency in options.api_concurrency:
                figures = api_load.load(
                    wrk, config.api.port, paths, concurrency, options.api_seconds, config.state_path / "wrk"
                )
                results[endpoint].append(figures)
                progress(
                    f"  {endpoint} × {concurrency}: {figures['rps']:,.0f} req/s, "
                    f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms"
                )
        by_size: dict[str, dict] = {}
        stored = len(documents)
        for size in sorted({len(documents), len(messages)}):
            with scratch.store() as client:
                collection = client[scratch.database]["api"]
                for start in range(stored, size, INSERT_CHUNK):
                    chunk = messages[start : min(start + INSERT_CHUNK, size)]
                    collection.insert_many(ceilings.documents_of(chunk, topic, start), ordered=False)
            stored = max(stored, size)
            ids = [key.decode() for key, _ in messages[:size]]  # a generated message's key is its id
            paths = [f"/messages/{i}" for i in random.Random(size).sample(ids, min(LOOKUP_PATHS, size))]
            figures = api_load.load(
                wrk, config.api.port, paths, LOOKUP_CONCURRENCY, options.api_seconds, config.state_path / "wrk"
            )
            by_size[str(size)] = figures
            progress(f"  GET /messages/{{id}}, {size:,} stored: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
        keep_largest(rss, supervised.rss_mb())
    settings = ApiServer(config).settings()
    return {
        "tool": api_load.wrk_version(wrk),
        "workers": settings["workers"],
        "worker_class": settings["worker_class"],
        "threads": settings["threads"],
        "documents": len(documents),
        "endpoints": results,
        "id_lookup_by_size": by_size,
        "id_lookup_concurrency": LOOKUP_CONCURRENCY,
        "id_index": id_index,
    }


def measure_ingest(scratch: Scratch, options: BenchOptions, progress: Progress, rss: dict[str, float]) -> dict:
    """POST /messages in batches of 100 at each of options.ingest_concurrency, through the API alone (no
    consumer: what is timed is HTTP -> checked -> acknowledged by Kafka), into a scratch topic."""
    topic = scratch.topic("ingest")
    config = scratch.config("ingest", topic=topic, collection="ingest", processes=0, api_port=free_port())
    ensure_topic(config, topic, partitions=scratch.partitions)
    runs = []
    progress(f"ingest: POST /messages in batches of {ingest_load.BATCH}, {config.api.workers} API workers")
    with SupervisedRun(config) as supervised:
        supervised.wait_running()
        wait_healthy(supervised, config.api.port)
        # Each worker builds its producer (the idempotent producer's id comes from the broker first) and each
        # request thread its pipeline on first use: a second of untimed batches keeps that out of the p99.
        warm_up = ingest_load.load(config.api.port, max(options.ingest_concurrency), ingest_load.WARM_UP_SECONDS)
        for concurrency in options.ingest_concurrency:
            figures = ingest_load.load(config.api.port, concurrency, options.api_seconds)
            runs.append(figures)
            progress(
                f"  {concurrency} connection(s): {figures['msgs_per_s']:,.0f} msg/s ({figures['rps']:,.0f} req/s), "
                f"request p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, {figures['errors']} errors"
            )
        keep_largest(rss, supervised.rss_mb())
    accepted = warm_up["accepted"] + sum(figures["accepted"] for figures in runs)
    return {
        "batch": ingest_load.BATCH,
        "runs": runs,
        "msgs_per_s": max(figures["msgs_per_s"] for figures in runs),
        "accepted": accepted,  # the warm-up's included, as the topic holds them too
        "in_topic": ingest_load.messages_in_topic(config, topic, scratch.partitions),
    }


def wait_healthy(supervised: SupervisedRun, port: int) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while time.monotonic() < deadline:
        supervised.check()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise BenchError(f"the scratch API on port {port} did not answer within {HEALTH_TIMEOUT:.0f} s.")


def with_topic(config: Config, topic: str) -> Config:
    return dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, topic=topic))


def describe_store(info: dict) -> str:
    if "ferretdbVersion" in info:
        return f"FerretDB {info['ferretdbVersion']}"
    return f"MongoDB {info.get('version', '?')}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
