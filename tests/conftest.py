"""Shared fixtures: one real local stack per test session, and an isolated pipeline config per test."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import falcon.testing
import pytest

from streamd import config as config_module
from streamd.api import create_app
from streamd.api.backends import Backends
from streamd.config import Config
from streamd.store import MessageStore

REPO = Path(__file__).resolve().parent.parent
# The test session shares the developer's cache, so provisioning happens once per machine, not per run.
STACK_STATE_DIR = REPO / ".streamd"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-scale",
        type=float,
        default=float(os.environ.get("FAULT_SCALE", "1")),
        help="multiply the message counts of tests/test_faults.py (default 1, or $FAULT_SCALE); e.g. 5 for a soak",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def local_stack() -> Config:
    """The real Kafka and store on their default loopback ports, started (and provisioned) if needed."""
    from streamd import stack

    settings = config_module.from_mapping({"state_dir": str(STACK_STATE_DIR)}, label="test stack")
    started = stack.ensure_running(settings)
    yield settings
    if started:
        stack.down(settings)


@pytest.fixture
def pipeline_config(local_stack: Config, tmp_path: Path) -> Config:
    """A config whose topic, database and API port belong to this test alone."""
    run = uuid.uuid4().hex[:8]
    return config_module.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "kafka": {"topic": f"test-{run}", "dead_letter_topic": f"test-{run}.dlq"},
            "mongodb": {"database": f"test_{run}", "timeout_ms": 3000},
            "consumer": {"group": f"group-{run}", "processes": 1},
            "api": {"port": free_port(), "workers": 1},
            "supervisor": {"graceful_timeout": 10, "backoff_initial": 0.2, "start_seconds": 0.5},
            "stack": {"local": False, "cache_dir": str(STACK_STATE_DIR / "cache")},
        },
        label="test config",
    )


@pytest.fixture
def store(pipeline_config: Config) -> Iterator[MessageStore]:
    """This test's message collection, indexed as the consumer would, dropped afterwards."""
    messages = MessageStore(pipeline_config.mongodb)
    messages.ensure_indexes()
    yield messages
    messages.client.drop_database(pipeline_config.mongodb.database)
    messages.close()


@contextmanager
def api_client(config: Config, streams=None) -> Iterator[falcon.testing.TestClient]:
    """The API app in-process, its Kafka and store clients closed afterwards."""
    backends = Backends(config)
    try:
        yield falcon.testing.TestClient(create_app(config, backends, streams))
    finally:
        backends.close()


def stored_document(message_id: str, moment: datetime, source: str | None, offset: int = 0) -> dict:
    """A message as the consumer stores it."""
    return {
        "_id": message_id,
        "content": f"content of {message_id}",
        "timestamp": moment,
        "source": source,
        "ingested_at": moment,
        "kafka": {"topic": "data-stream", "partition": 0, "offset": offset},
    }
