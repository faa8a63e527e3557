"""Where a bench run writes: topics, consumer groups, a database and state dirs of its own, removed afterwards.

Every name carries the run's id, so a run can only ever write to (and delete) what it created: the
user's topic, dead-letter topic, group and database are read from the config for their addresses
only. The supervisors a run starts get configs built here, never the user's file.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from pathlib import Path

import pymongo
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from streamd.config import Config
from streamd.credentials import mongo_client
from streamd.kafka import make_client
from streamd.stack import ferretdb_ids
from streamd.store import StoreKind

CLEANUP_TIMEOUT = 15.0
# Enough partitions for the largest consumer count measured, so no consumer of a 4-process run idles.
MIN_PARTITIONS = 4


class BenchError(Exception):
    """The benchmark could not measure something; one sentence, plus a log tail when a supervisor failed."""


class Scratch:
    """The names, configs and clean-up of one bench run."""

    def __init__(self, base: Config, partitions: int) -> None:
        self.base = base
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"streamd-bench-{self.run_id}"
        self.database = f"streamd_bench_{self.run_id}"
        self.partitions = max(MIN_PARTITIONS, base.kafka.partitions, partitions)
        protected = {base.kafka.topic, base.kafka.dead_letter_topic, base.consumer.group, base.mongodb.database}
        if any(name.startswith(self.prefix) or name == self.database for name in protected):
            # Only possible if the user named their own data after a bench run; refuse rather than delete it.
            raise BenchError(f"the config's own names start with {self.prefix!r}; rename them before benchmarking.")
        self.groups: set[str] = set()
        self.directory = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))

    def topic(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @staticmethod
    def collection(name: str) -> str:
        """The collection a run named `name` writes (a name may hold `-`, a collection name should not)."""
        return name.replace("-", "_")

    def group(self, name: str) -> str:
        group = f"{self.prefix}-{name}"
        self.groups.add(group)
        return group

    def config(
        self,
        name: str,
        *,
        topic: str,
        collection: str,
        processes: int,
        api_port: int,
        stages: tuple[dict, ...] = (),
    ) -> Config:
        """A complete pipeline config for one scratch supervisor: the user's settings, scratch names.

        The producer is off (the bench produces), the built-in schema applies (the bench's messages are
        the generator's), the user's stages are replaced by `stages` (none unless a phase measures them:
        the user's could filter or route the bench's messages away), the analyzer is off (it would read
        the same backlog and compete with the consumers being timed), the API binds loopback over plain HTTP
        (what wrk and the health wait speak; the figures leave TLS out), and the supervisor starts no servers
        of its own.
        """
        base = self.base
        return dataclasses.replace(
            base,
            kafka=dataclasses.replace(
                base.kafka, topic=topic, dead_letter_topic=f"{topic}.dlq", partitions=self.partitions
            ),
            mongodb=dataclasses.replace(base.mongodb, database=self.database, collection=collection),
            producer=dataclasses.replace(base.producer, enabled=False),
            consumer=dataclasses.replace(base.consumer, processes=processes, group=self.group(name), schema=None),
            stages=stages,
            analytics=dataclasses.replace(base.analytics, enabled=False),
            api=dataclasses.replace(
                base.api, host="127.0.0.1", port=api_port, tls_cert_file=None, tls_key_file=None, tls_ca_file=None
            ),
            stack=dataclasses.replace(base.stack, local=False),
            state_dir=str(self.directory / name),
            source=None,
        )

    def store(self) -> pymongo.MongoClient:
        return mongo_client(self.base.mongodb, serverSelectionTimeoutMS=self.base.mongodb.timeout_ms, tz_aware=True)

    def index_id_lookups(self, collection: str) -> bool:
        """What the consumer's index step adds on the local FerretDB, for a collection filled without a consumer;
        whether `_id` lookups in it are an index search now (always so on MongoDB)."""
        with self.store() as client:
            kind = StoreKind.of(client)
        if not kind.is_ferretdb:
            return True
        # The user's config, not a scratch one: it names the state directory whose stack runs the store.
        config = dataclasses.replace(self.base, mongodb=dataclasses.replace(self.base.mongodb, database=self.database))
        return bool(ferretdb_ids.index_id_lookups(config, kind, [collection]))

    def cleanup(self) -> list[str]:
        """Delete this run's topics, groups, database and directory; what could not be removed, in sentences."""
        problems: list[str] = []
        admin = make_client(AdminClient, self.base.kafka, "bench")
        try:
            topics = [t for t in admin.list_topics(timeout=CLEANUP_TIMEOUT).topics if t.startswith(self.prefix)]
        except KafkaException as exc:
            topics = []
            problems.append(f"could not list topics to delete ({exc.args[0].str()})")
        if topics:
            futures = admin.delete_topics(topics, operation_timeout=CLEANUP_TIMEOUT, request_timeout=CLEANUP_TIMEOUT)
            for topic, future in futures.items():
                try:
                    future.result()
                except KafkaException as exc:
                    problems.append(f"topic {topic} was not deleted ({exc.args[0].str()})")
        if self.groups:
            futures = admin.delete_consumer_groups(sorted(self.groups), request_timeout=CLEANUP_TIMEOUT)
            for group, future in futures.items():
                try:
                    future.result()
                except KafkaException as exc:
                    # A group that never committed anything does not exist on the broker: nothing to delete.
                    if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                        problems.append(f"consumer group {group} was not deleted ({exc.args[0].str()})")
        try:
            with self.store() as client:
                client.drop_database(self.database)
        except pymongo.errors.PyMongoError as exc:
            problems.append(f"database {self.database} was not dropped ({exc})")
        shutil.rmtree(self.directory, ignore_errors=True)
        return problems
