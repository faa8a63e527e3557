"""Logging for the supervisor and its children: every line names the process it came from.

Children inherit the supervisor's stdout/stderr, so their lines reach the terminal or journald
directly; the child name in each line is what tells them apart.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

from streamd.config import LoggingConfig


class TextFormatter(logging.Formatter):
    def __init__(self, child: str) -> None:
        super().__init__()
        self.child = child

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {record.levelname:<7} [{self.child}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, child: str) -> None:
        super().__init__()
        self.child = child

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "child": self.child,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(settings: LoggingConfig, child: str) -> None:
    """(Re)configure the root logger for this process; called once per process, after fork."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(child) if settings.format == "json" else TextFormatter(child))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # pymongo and librdkafka's Python wrapper are chatty at DEBUG; their warnings still come through.
    for noisy in ("pymongo", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(settings.level)))
