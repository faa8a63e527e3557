"""Messages a user wrote in a file: one JSON object per line (NDJSON), or one JSON array of objects.

Read for `streamd produce --file`. The whole file is read and checked before anything is done with
it, so a bad line stops the command with nothing sent, rather than half the file. Only the JSON is
checked here: whether a message is valid is the consumer's call (an invalid one is dead-lettered),
and sending invalid messages on purpose is a fair way to try the dead-letter topic.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

STDIN = "-"


class MessageFileError(Exception):
    """One sentence naming the file, the line (or array item) and what is wrong with it."""


def read_messages(path: str) -> list[dict[str, Any]]:
    """The messages of `path` (`-` reads standard input), in file order; raises MessageFileError."""
    name = "standard input" if path == STDIN else path
    try:
        raw = sys.stdin.buffer.read() if path == STDIN else Path(path).read_bytes()
    except OSError as exc:
        raise MessageFileError(f"cannot read {name} ({exc.strerror or exc}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MessageFileError(f"{name}, line {line}: not UTF-8 text (byte {exc.start + 1} of the file).") from None
    messages = _array(text, name) if text.lstrip().startswith("[") else _lines(text, name)
    if not messages:
        raise MessageFileError(f"{name} holds no messages: write one JSON object per line, or a JSON array of them.")
    return messages


def _lines(text: str, name: str) -> list[dict[str, Any]]:
    messages = []
    # Only "\n" ends a line: str.splitlines() would also split at U+0085 or U+2028, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are not messages
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MessageFileError(f"{name}, line {number}: not JSON ({_reason(exc)}, column {exc.colno}).") from None
        if not isinstance(value, dict):
            raise MessageFileError(
                f"{name}, line {number}: {_kind(value)}, not a JSON object; each line must be one message."
            )
        messages.append(value)
    return messages


def _array(text: str, name: str) -> list[dict[str, Any]]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MessageFileError(
            f"{name}, line {exc.lineno}: not a JSON array ({_reason(exc)}, column {exc.colno})."
        ) from None
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise MessageFileError(
                f"{name}, item {index + 1} of the array: {_kind(item)}, not a JSON object; "
                "each item must be one message."
            )
    return value


def _reason(exc: orjson.JSONDecodeError) -> str:
    return exc.msg.rstrip(".") if exc.msg else "malformed"


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool) or value is None:
        return f"JSON {orjson.dumps(value).decode()}"
    return "a JSON number"
