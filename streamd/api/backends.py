"""The store and Kafka clients one API process talks to, built on first use and kept for its lifetime.

The store is one client and one MessageStore per collection the API reads: mongodb.collection first,
then every collection a route stage names (config.stages), in config order; the client reads with
api.read_preference when set.
"""

from __future__ import annotations

import os
import threading

from confluent_kafka.admin import AdminClient

from streamd.api.ingest import IngestProducer
from streamd.config import Config
from streamd.kafka import client_settings
from streamd.stages.spec import routed_collections
from streamd.store import MessageStore


class Backends:
    """Per-process clients, shared by the request threads of one Gunicorn worker.

    pymongo's MongoClient and librdkafka both run background threads that do not survive fork(), so
    a client is only ever used by the process that built it; one inherited across a fork is
    abandoned (not closed: closing would touch the parent's sockets) and built again.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._stores: dict[str, MessageStore] | None = None
        self._kafka: AdminClient | None = None
        self._producer: IngestProducer | None = None
        # A route may name the main collection too; it is still read once, and first.
        self.collections = tuple(dict.fromkeys((config.mongodb.collection, *routed_collections(config.stages))))

    @property
    def store(self) -> MessageStore:
        """The main collection (mongodb.collection)."""
        return self.stores[self.collections[0]]

    @property
    def stores(self) -> dict[str, MessageStore]:
        """Collection name -> its MessageStore, for every name in `collections`, all sharing one client."""
        with self._lock:
            self._forget_if_forked()
            if self._stores is None:
                # The API only reads: its reads may go to secondaries while the consumers write to the primary.
                main = MessageStore(self.config.mongodb, read_preference=self.config.api.read_preference)
                self._stores = {main.name: main}
                for name in self.collections[1:]:
                    self._stores[name] = main.in_collection(name)
            return self._stores

    def store_of(self, collection: str | None) -> MessageStore:
        """The store of one of `collections` (as a validated query names it), or the main one for None."""
        return self.stores[collection or self.collections[0]]

    @property
    def kafka(self) -> AdminClient:
        with self._lock:
            self._forget_if_forked()
            if self._kafka is None:
                # Only the readiness check uses this client, and its answer already says when Kafka is
                # unreachable; librdkafka would add dozens of "Connect failed" lines per probe per worker.
                # Its remaining (critical) lines wait in a queue until the check polls the client.
                quiet = {"log_level": 2}
                self._kafka = AdminClient(client_settings(self.config.kafka, "api", quiet))
            return self._kafka

    @property
    def producer(self) -> IngestProducer:
        """POST /messages' producer; one that hit a fatal error (it can send nothing more) is replaced."""
        with self._lock:
            self._forget_if_forked()
            if self._producer is not None and self._producer.fatal is not None:
                self._producer.close(0)
                self._producer = None
            if self._producer is None:
                self._producer = IngestProducer(self.config)
            return self._producer

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                if self._stores is not None:
                    for message_store in self._stores.values():
                        message_store.close()  # only the main one owns the client
                if self._producer is not None:
                    # Every request has had its answer by now; what is left in the queue is what librdkafka
                    # would still deliver, within ingest.ack_timeout (message.timeout.ms) anyway.
                    self._producer.close(self.config.ingest.ack_timeout)
            self._stores = self._kafka = self._producer = None

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._stores, self._kafka, self._producer = os.getpid(), None, None, None
