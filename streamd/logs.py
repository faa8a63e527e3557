"""Logging for the supervisor and its children: every line names the process it came from.

Children inherit the supervisor's stdout/stderr, so their lines reach the terminal or journald
directly; the child name in each line is what tells them apart.  Each process of the supervisor's also
writes its lines to its own file, `<state_dir>/logs/<name>.log`, for `streamd logs`: one file per
process because RotatingFileHandler renames files without telling other writers, so two processes
rotating one file would lose lines.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

import orjson

from streamd.config import Config, LoggingConfig
from streamd.masking import masked_text

LOG_DIR = "logs"
SUFFIX = ".log"


class TextFormatter(logging.Formatter):
    def __init__(self, child: str) -> None:
        super().__init__()
        self.child = child

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {record.levelname:<7} [{self.child}] {masked_text(record.getMessage())}"
        if record.exc_info:
            line += "\n" + masked_text(self.formatException(record.exc_info))
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
            "message": masked_text(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = masked_text(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def log_dir(config: Config) -> Path:
    return config.state_path / LOG_DIR


def file_name(child: str) -> str:
    """`api worker 2` writes `api-worker-2.log`."""
    return child.replace(" ", "-") + SUFFIX


def configure(settings: LoggingConfig, child: str, directory: Path | None = None) -> None:
    """(Re)configure the root logger for this process; called once per process, after fork.

    With `directory`, the lines also go to this process's own rotating file in it (unless
    `file_max_bytes` or `file_count` is 0); one-shot commands pass none and only print.
    """
    formatter = JsonFormatter(child) if settings.format == "json" else TextFormatter(child)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if directory is not None and settings.file_max_bytes and settings.file_count:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handlers.append(
                RotatingFileHandler(
                    directory / file_name(child),
                    maxBytes=settings.file_max_bytes,
                    backupCount=settings.file_count - 1,
                    encoding="utf-8",
                )
            )
        except OSError as exc:
            # A full or read-only disk must not stop the pipeline: stdout/journald still has every line.
            print(
                f"streamd: cannot write log files in {directory} ({exc.strerror}); logging to stderr only.",
                file=sys.stderr,
            )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.level)
    # pymongo and librdkafka's Python wrapper are chatty at DEBUG; their warnings still come through.
    for noisy in ("pymongo", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(settings.level)))
