"""The store and Kafka clients one API process talks to, built on first use and kept for its lifetime."""

from __future__ import annotations

import os
import threading

from confluent_kafka.admin import AdminClient

from streamd.config import Config
from streamd.kafka import client_settings
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
        self._store: MessageStore | None = None
        self._kafka: AdminClient | None = None

    @property
    def store(self) -> MessageStore:
        with self._lock:
            self._forget_if_forked()
            if self._store is None:
                self._store = MessageStore(self.config.mongodb)
            return self._store

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

    def close(self) -> None:
        with self._lock:
            if self._store is not None and self._pid == os.getpid():
                self._store.close()
            self._store = self._kafka = None

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._store, self._kafka = os.getpid(), None, None
