"""Prometheus metrics across every child: what is counted (`series`) and how /metrics adds it up (`exposition`).

streamd runs as many processes (consumers, the producer, Gunicorn workers), so a counter in one process's
memory would be lost when it dies and invisible to the API worker that answers the scrape. prometheus-client's
multiprocess mode keeps each process's values in small memory-mapped files in one directory instead, and
the scraping worker sums them. The supervisor owns that directory: it empties it and names it in
PROMETHEUS_MULTIPROC_DIR before it forks anything, because prometheus-client chooses between in-memory
and file-backed values once, when it is first imported.

This module stays importable without importing prometheus-client, so the supervisor can prepare the
directory before anything else has had the chance to import it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from streamd.config import Config

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIRECTORY = "metrics"


def directory(config: Config) -> Path:
    return config.state_path / DIRECTORY


def prepare(config: Config) -> Path:
    """Start this supervisor's metrics afresh and point every process forked from here at them.

    Files left by an earlier run would be added to this run's counters, and a crashed run's live
    gauges would never be cleared, so the directory is emptied rather than reused.
    """
    path = directory(config)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def multiprocess_directory() -> Path | None:
    """The directory this process writes its values to, or None when they stay in memory (tests, tools)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def forget(pid: int) -> None:
    """A process is gone: drop its live gauges. Its counters stay, so totals never go backwards."""
    path = multiprocess_directory()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(path))
