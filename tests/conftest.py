"""Shared fixtures: one real local stack per test session, and an isolated pipeline config per test."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.config import Config

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
