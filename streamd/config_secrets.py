"""Secrets read when the config loads: the *_file keys, the paths beside them made absolute, and every secret the
config holds remembered for masking (streamd.masking).  Called by config.load alone, in the process that loads
the config (the supervisor, a command); children receive the result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from streamd.config_file import ConfigError
from streamd.credentials import CredentialsMissing, StackCredentials, credentials_dir
from streamd.masking import MASK, remember_secret
from streamd.redaction import masked_property

if TYPE_CHECKING:
    from streamd.config import Config


def with_secrets_read(config: Config, label: str) -> Config:
    """The config with its *_file secrets read and its paths made absolute; called once by config.load.

    A file that cannot be read, or whose first line is empty, is a ConfigError naming the key and the
    file; so is a secret given both ways (which would win is nobody's guess).
    """
    kafka, mongodb = config.kafka, config.mongodb
    stack = str(credentials_dir(config.state_path)) if config.stack.security == "tls" else None
    kafka_file = _absolute(config, kafka.sasl_password_file)
    kafka = dataclasses.replace(
        kafka,
        sasl_password_file=kafka_file,
        tls_ca_file=_absolute(config, kafka.tls_ca_file),
        password_read=_secret_from_file(kafka.sasl_password, kafka_file, "kafka.sasl_password", label),
        stack_credentials=stack,
    )
    mongodb_file = _absolute(config, mongodb.password_file)
    mongodb = dataclasses.replace(
        mongodb,
        password_file=mongodb_file,
        tls_ca_file=_absolute(config, mongodb.tls_ca_file),
        password_read=_secret_from_file(mongodb.password, mongodb_file, "mongodb.password", label),
        stack_credentials=stack,
    )
    config = dataclasses.replace(config, kafka=kafka, mongodb=mongodb)
    remember_config_secrets(config)
    if stack is not None:
        _remember_stack_secrets(StackCredentials(Path(stack)))
    return config


def _remember_stack_secrets(stack: StackCredentials) -> None:
    """Masked from the start in every process of a tls-mode stack, the servers' relays included."""
    for read in (stack.kafka_password, stack.store_password):
        try:
            read()  # _first_line remembers what it reads
        except CredentialsMissing:
            pass  # not made yet: whoever makes or reads them later remembers them then


def _absolute(config: Config, path: str | None) -> str | None:
    return None if path is None else str(config.resolve_path(path))


def _secret_from_file(given: str | None, path: str | None, key: str, label: str) -> str | None:
    """The first line of `path`, the file of secret `key` (given: the key's own value, which must be None)."""
    if path is None:
        return None
    if given is not None:
        raise ConfigError(
            f"{label}: {key} and {key}_file are both set (or {key} comes from its environment variable); "
            "keep one of them."
        )
    try:
        line = Path(path).read_text(encoding="utf-8").partition("\n")[0].strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"{label}: {key}_file: cannot read {path} ({reason}); fix the path or the file.") from None
    if not line:
        raise ConfigError(f"{label}: {key}_file: {path} has no password on its first line; write it there.")
    return line


def remember_config_secrets(config: Config) -> None:
    """Every secret the config itself holds: the keys marked secret (in any section) and what was read from
    their *_file keys, the uri's password, kafka.client's."""
    for top in dataclasses.fields(config):
        section = getattr(config, top.name)
        if not dataclasses.is_dataclass(section):
            continue
        for f in dataclasses.fields(section):
            if f.metadata.get("secret"):
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
