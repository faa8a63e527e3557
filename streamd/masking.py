"""Every secret a process has read, masked in every log line it writes: passwords from the config, from *_file keys,
from kafka.client and mongodb.uri, and from the local stack's files.

Masking is by value, so it needs no knowledge of who wrote the line (streamd, librdkafka, pymongo, a local
server's relayed output) or where the secret sits in it: `remember_secret` is called wherever a secret is
read or handed to a client, and streamd.logs' formatters pass the message and the exception text of every
line through `masked_text`. (In the formatters, not in a filter: a filter would have to rewrite the record,
which every other handler of the process, a test's log capture say, shares.)  Reads no config: every child
imports it.
"""

from __future__ import annotations

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
