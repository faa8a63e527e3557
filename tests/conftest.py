"""Shared fixtures: one real local stack per test session, and an isolated pipeline config per test.

A test that requests the stack (directly, or through `pipeline_config` or `store`) is marked `integration`
here, so `pytest -m "not integration"` runs everything else without starting or reaching any server.
Shared functions live in probes.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import pytest

from streamd import config as config_module
from streamd.config import Config
from streamd.store import MessageStore

from .probes import STACK_STATE_DIR, api_client, free_port


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-scale",
        type=float,
        default=float(os.environ.get("FAULT_SCALE", "1")),
        help="multiply the message counts of tests/test_faults.py (default 1, or $FAULT_SCALE); e.g. 5 for a soak",
    )
    parser.addoption(
        "--scale",
        type=float,
        default=float(os.environ.get("SCALEOUT_SCALE", "1")),
        help="multiply the 100,000 messages of each tests/scaleout scenario (default 1, or $SCALEOUT_SCALE)",
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "local_stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


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
            "analytics": {"group": f"analytics-{run}"},
            "api": {"port": free_port(), "workers": 1},
            "supervisor": {"graceful_timeout": 10, "backoff_initial": 0.2, "start_seconds": 0.5},
            "stack": {"local": False, "cache_dir": str(STACK_STATE_DIR / "cache")},
        },
        label="test config",
    )


@pytest.fixture
def offline(tmp_path: Path) -> Config:
    """A config for parts tested without servers: its state is this test's own and nothing is ever contacted."""
    return config_module.from_mapping({"state_dir": str(tmp_path / "state")}, label="offline test config")


@pytest.fixture
def offline_client() -> Iterator[falcon.testing.TestClient]:
    """An API whose store and Kafka are closed loopback ports: a request that must be refused is refused
    before either is asked (one that slipped through validation would answer 503)."""
    config = config_module.from_mapping(
        {
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "timeout_ms": 200},
        }
    )
    with api_client(config) as test_client:
        yield test_client


@pytest.fixture
def store(pipeline_config: Config) -> Iterator[MessageStore]:
    """This test's message collection, indexed as the consumer would, dropped afterwards."""
    messages = MessageStore(pipeline_config.mongodb)
    messages.ensure_indexes()
    yield messages
    messages.client.drop_database(pipeline_config.mongodb.database)
    messages.close()
