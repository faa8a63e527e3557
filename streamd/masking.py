"""Every secret a process has read, masked in every log line it writes: passwords from the config, from *_file keys,
from kafka.client and mongodb.uri, and from the local stack's files.

Masking is by value, so it needs no knowledge of who wrote the line (streamd, librdkafka, pymongo, a local
server's relayed output) or where the secret sits in it: `remember_secret` is called wherever a secret is
read or handed to a client, and `SecretMask`, a filter logs.configure puts on every handler, replaces each
occurrence with **** in the message and in the exception text.  Reads no config: every child imports it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "****"
# Shorter values are not searched for in log lines: masking every "abc" would garble the lines and hide
# nothing a guess would not find.
SHORTEST_MASKED = 4

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def remember_secret(value: Any) -> Any:
    """Mask `value` in every log line this process writes from now on; returns it, for use in expressions."""
    global _pattern
    if isinstance(value, str) and len(value) >= SHORTEST_MASKED and value not in _secrets:
        with _secrets_lock:
            _secrets.add(value)
            # Longest first: a secret that contains another is masked whole.
            ordered = sorted(_secrets, key=len, reverse=True)
            _pattern = re.compile("|".join(map(re.escape, ordered)))
    return value


def masked_text(text: str) -> str:
    """`text` with every remembered secret replaced by ****."""
    pattern = _pattern
    return text if pattern is None else pattern.sub(MASK, text)


class SecretMask(logging.Filter):
    """Renders the record's message and exception text with every remembered secret masked.

    A filter on the handler rather than the formatter: it sees each record once before any handler
    formats it, and the formatted exception it leaves in exc_text is what every formatter prints.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True  # a malformed logging call: the handler reports it (handleError), not the caller's code
        record.msg = masked_text(message)
        record.args = None
        if record.exc_info:
            record.exc_text = masked_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = masked_text(record.exc_text)
        if record.stack_info:
            record.stack_info = masked_text(record.stack_info)
        return True
