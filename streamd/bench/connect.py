"""The peer `streamd bench` compares with: the MongoDB Kafka sink connector on Kafka Connect, run as a JVM.

Connect's runtime (at the Kafka version the stack runs) and the connector are resolved from Maven
Central into the stack's cache once, the way the local Kafka's jars are. Each drain runs Connect in
standalone mode (one worker process; tasks.max 3 gives it three sink tasks, each with its own
consumer) with its REST listener on a free loopback port, and its offsets, properties and log in
the bench run's scratch directory. The connector stores each message's JSON value as a document
with its default id strategy (a new ObjectId) and plain inserts, like the issue's measurement.

A drain is timed the way streamd's is: from the first document stored once every task's consumer holds
partitions, to the last. Connect commits offsets on its own schedule, so progress is the target
collection's count, read with `collStats` (exact and cheap on FerretDB, where count_documents scans).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streamd.bench import usage
from streamd.bench.scratch import BenchError, Scratch
from streamd.bench.supervised import GroupMembers, log_tail, stop_process
from streamd.config import Config
from streamd.lifecycle import die_with_parent
from streamd.stack.kafka_server import SLF4J_BINDING
from streamd.stack.provisioning import is_complete, pom, resolve_jars
from streamd.stack.service import StackError
from streamd.store import MessageStore

SINK_VERSION = "1.13.0"  # the newest 1.x on Maven Central, the "1.13"
HEAP = "512m"
COUNT_POLL = 0.05
START_TIMEOUT = 120.0  # JVM start, plugin scan and group join, up to the first stored document
MIN_RATE = 200.0  # below this a drain counts as stalled, as for streamd's drains
STOP_TIMEOUT = 20.0

# Warnings and errors only, plus Connect's own started/stopped lines: the log tail is for failures.
LOG4J = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d %p %m (%c)%n
log4j.logger.org.apache.kafka.connect.runtime.Connect=INFO
"""


class ConnectUnavailable(Exception):
    """Kafka Connect cannot run here (no java or mvn, or the jars did not resolve); one sentence."""


def describe(config: Config) -> str:
    return f"MongoDB Kafka sink connector {SINK_VERSION} on Kafka Connect {config.stack.kafka_version}"


def provision(config: Config) -> tuple[str, Path]:
    """The java to run and the directory of Connect's jars, resolved into the stack's cache once."""
    version = config.stack.kafka_version
    java = shutil.which("java")
    if java is None:
        raise ConnectUnavailable(
            "java is not on PATH, so the Kafka Connect peer rows are skipped; install a JDK 17 to measure them."
        )
    directory = config.cache_path / f"connect-{version}-mongo-sink-{SINK_VERSION}"
    if is_complete(directory):
        return java, directory / "libs"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConnectUnavailable(
            "mvn is not on PATH, so Kafka Connect cannot be downloaded and its peer rows are skipped; install Maven."
        )
    dependencies = [
        ("org.apache.kafka", "connect-runtime", version),
        ("org.apache.kafka", "connect-json", version),
        ("org.mongodb.kafka", "mongo-kafka-connect", SINK_VERSION),
        SLF4J_BINDING,  # Connect logs through log4j 1 (reload4j), like the broker
    ]
    pom_text = pom("connect-runtime", version, dependencies)
    advice = "the Kafka Connect peer rows are skipped; check the network and stack.kafka_version"
    try:
        return java, resolve_jars(mvn, config.cache_path, directory, pom_text, f"Kafka Connect {version}", advice)
    except StackError as exc:
        raise ConnectUnavailable(str(exc)) from None


@dataclass(frozen=True)
class ConnectDrain:
    tasks: int
    msgs_per_s: float  # documents stored after the start of timing, over the time since it
    startup_s: float  # JVM launch to the start of timing (a document stored, every task holding partitions)
    cpu_us_per_msg: float  # the JVM's user+system CPU from the first document to the last, per message
    stored: int

    def figures(self) -> dict:
        return {
            "tasks": self.tasks,
            "msgs_per_s": round(self.msgs_per_s, 1),
            "startup_s": round(self.startup_s, 3),
            "cpu_us_per_msg": round(self.cpu_us_per_msg, 2),
            "stored": self.stored,
        }


def drain(
    scratch: Scratch, jars: tuple[str, Path], topic: str, total: int, tasks: int, name: str, rest_port: int
) -> ConnectDrain:
    """Run Connect with `tasks` sink tasks until the `total` messages of `topic` are stored; `name` names the
    connector, its group and (with _ for -) its collection."""
    collection = scratch.collection(name)
    worker = ConnectWorker(scratch, jars, topic, collection, tasks, name, rest_port)
    members = GroupMembers(scratch.base.kafka, scratch.group(name), tasks)
    with scratch.store() as client, worker:
        stored = MessageStore(dataclasses.replace(scratch.base.mongodb, database=scratch.database), client, collection)
        deadline = START_TIMEOUT + total / MIN_RATE
        # Timed like streamd's drain: from the first document stored once every task's consumer holds partitions
        # (Connect's sink consumers rebalance eagerly as the tasks join), their start-up shown apart.
        first: tuple[float, int, float] | None = None  # time, count, CPU seconds
        earliest: tuple[float, int, float] | None = None
        while (done := stored.stats_count()) < total:
            now = time.perf_counter()
            if earliest is None and done:
                earliest = (now, done, worker.cpu_seconds())
            if first is None and done and members.settled():
                first = (now, done, worker.cpu_seconds())
            if now - worker.launched > (deadline if first else START_TIMEOUT):
                raise BenchError(
                    f"Kafka Connect with {tasks} task(s) stored {done} of {total} messages in "
                    f"{now - worker.launched:.0f} s; its log ends:\n{worker.log_tail()}"
                )
            worker.check()
            time.sleep(COUNT_POLL)
        finished, cpu = time.perf_counter(), worker.cpu_seconds()
    if first is None:  # stored before every task held partitions: timed from the first document
        first = earliest or (worker.launched, 0, 0.0)
    counted = max(total - first[1], 1)
    return ConnectDrain(
        tasks=tasks,
        msgs_per_s=counted / max(finished - first[0], 1e-9),
        startup_s=first[0] - worker.launched,
        cpu_us_per_msg=(cpu - first[2]) / counted * 1e6,
        stored=done,
    )


class ConnectWorker:
    """One standalone Connect worker with the MongoDB sink on `topic`, its files under the scratch directory."""

    def __init__(
        self, scratch: Scratch, jars: tuple[str, Path], topic: str, collection: str, tasks: int, name: str, port: int
    ) -> None:
        self.java, self.libs = jars
        self.directory = scratch.directory / name
        base = scratch.base
        self.worker = {
            "bootstrap.servers": base.kafka.brokers,
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "false",  # plain JSON values become documents, field for field
            "offset.storage.file.filename": str(self.directory / "connect.offsets"),
            "listeners": f"http://127.0.0.1:{port}",
            "consumer.auto.offset.reset": "earliest",
            # Lets the connector name its consumer group, so that it carries the scratch prefix.
            "connector.client.config.override.policy": "All",
            "plugin.discovery": "only_scan",  # the jars are on the classpath: no plugin.path to scan
        }
        self.connector = {
            "name": name,
            "connector.class": "com.mongodb.kafka.connect.MongoSinkConnector",
            "tasks.max": str(tasks),
            "topics": topic,
            "connection.uri": base.mongodb.uri,
            "database": scratch.database,
            "collection": collection,
            "writemodel.strategy": "com.mongodb.kafka.connect.sink.writemodel.strategy.InsertOneDefaultStrategy",
            "consumer.override.group.id": scratch.group(name),
        }
        self.process: subprocess.Popen | None = None
        self.launched = 0.0

    def __enter__(self) -> ConnectWorker:
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for filename, settings in (("worker.properties", self.worker), ("sink.properties", self.connector)):
            path = self.directory / filename
            path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()), encoding="utf-8")
            paths.append(str(path))
        log4j = self.directory / "log4j.properties"
        log4j.write_text(LOG4J, encoding="utf-8")
        argv = [self.java, f"-Xmx{HEAP}", f"-Dlog4j.configuration={log4j.as_uri()}", "-cp", f"{self.libs}/*"]
        argv += ["org.apache.kafka.connect.cli.ConnectStandalone", *paths]
        bench = os.getpid()
        self.launched = time.perf_counter()
        with open(self.directory / "connect.log", "wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the bench's Ctrl-C must not reach it: the bench stops it itself
                preexec_fn=lambda: die_with_parent(signal.SIGTERM, bench),  # and a killed bench takes it along
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop_process(self.process, STOP_TIMEOUT)

    def check(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"Kafka Connect exited with status {code}; its log ends:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """The JVM's user+system CPU time so far (0 where /proc cannot tell)."""
        assert self.process is not None
        now = usage.sample(self.process.pid)
        return now.cpu_s if now is not None else 0.0

    def log_tail(self) -> str:
        return log_tail(self.directory / "connect.log")
