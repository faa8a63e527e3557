"""Secrets hidden wherever streamd shows its config: `streamd config`, error sentences and log lines.

A config file holds credentials (the password in mongodb.uri, SASL and TLS passwords in kafka.client),
and what streamd prints ends up in terminals, journald and bug reports.  Everything that shows config
values goes through `shown_config` or `masked_uri`; the config itself is never altered.

Log lines are masked by value: every secret this process has read (from the config, a *_file key or the
local stack's files) is remembered by `remember_secret`, and `SecretMask`, a filter on every handler
logs.configure installs, replaces each occurrence with **** in the message and in exception text, whoever
wrote the line (streamd, librdkafka, pymongo, a server's relayed output).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from typing import Any
from urllib.parse import unquote

from streamd.config import Config, to_mapping

MASK = "****"
# librdkafka properties that hold a secret themselves: every *password* and *secret* (sasl.password,
# ssl.key.password, ssl.keystore.password, ssl.truststore.password, sasl.oauthbearer.client.secret),
# an inline private key, and the OAUTHBEARER config string, which carries the token's claims.
SECRET_WORDS = ("password", "secret")
SECRET_KEYS = {"ssl.key.pem", "sasl.oauthbearer.config"}
# Connection-string options that carry a password (tlsCertificateKeyFilePassword, …).
SECRET_OPTION = re.compile(r"([?&][^=&]*(?:password|secret)[^=&]*=)[^&]*", re.IGNORECASE)
# Shorter values are not searched for in log lines: masking every "abc" would garble the lines and hide
# nothing a guess would not find.
SHORTEST_MASKED = 4

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def shown_config(config: Config) -> dict[str, Any]:
    """The config as `to_mapping` gives it, with every secret replaced by ****."""
    shown = to_mapping(config)
    shown["mongodb"]["uri"] = masked_uri(config.mongodb.uri)
    shown["kafka"]["client"] = {key: masked_property(key, value) for key, value in config.kafka.client.items()}
    for name, section in shown.items():
        value = getattr(config, name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            if f.metadata.get("secret") and section.get(f.name) is not None:
                section[f.name] = MASK
    return shown


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


def remember_config_secrets(config: Config) -> None:
    """Every secret the config itself holds: the keys marked secret, the uri's password, kafka.client's."""
    for section in (config.kafka, config.mongodb):
        for f in dataclasses.fields(section):
            if f.metadata.get("secret") or f.name == "password_read":
                remember_secret(getattr(section, f.name))
    remember_secret(uri_password(config.mongodb.uri))
    for key, value in config.kafka.client.items():
        if masked_property(key, value) == MASK:
            remember_secret(str(value))


def uri_password(uri: str) -> str | None:
    _, separator, rest = uri.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not (separator and at and ":" in userinfo):
        return None
    return unquote(userinfo.partition(":")[2])


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


def masked_uri(uri: str) -> str:
    """mongodb://user:secret@host/?…  →  mongodb://user:****@host/?…; a URI without a password is unchanged."""
    scheme, separator, rest = uri.partition("://")
    if separator and "@" in rest:
        # The last @ ends the credentials: a password must percent-encode its own @, and if a careless
        # one did not, masking too much beats showing a part of it.
        userinfo, _, hosts = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        uri = f"{scheme}://{user}{colon and ':' + MASK}@{hosts}"
    return SECRET_OPTION.sub(lambda match: match.group(1) + MASK, uri)


def masked_property(key: str, value: Any) -> Any:
    """A kafka.client value as it may be shown: **** for a property that holds a secret."""
    name = key.lower()
    return MASK if name in SECRET_KEYS or any(word in name for word in SECRET_WORDS) else value
