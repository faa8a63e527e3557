"""Rules across keys: values that each pass their own bounds (config_values.py) but cannot work together.

config.py's `_checked_across` turns each problem into a ConfigError naming the file; each sentence names
both keys, so a start (exit 2) or a reload (the old config runs on) says which pair to change.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamd.config import Config


def conflicts(config: Config) -> Iterator[str]:
    """Values that each pass their own bounds but cannot work together; each names both keys."""
    supervisor = config.supervisor
    if supervisor.backoff_initial > supervisor.backoff_max:
        yield (
            f"supervisor.backoff_initial ({supervisor.backoff_initial:g}) is longer than supervisor.backoff_max "
            f"({supervisor.backoff_max:g}), the longest restart delay; lower the first or raise the second"
        )
    # A child that dies at once is restarted after initial, 2×initial, … seconds; when crash_limit exits
    # cannot fit in crash_window, the crash loop is never stopped and the child restarts forever.
    needed = sum(
        min(supervisor.backoff_initial * 2**n, supervisor.backoff_max) for n in range(supervisor.crash_limit - 1)
    )
    if needed > supervisor.crash_window:
        yield (
            f"supervisor.crash_limit ({supervisor.crash_limit}) exits take at least {needed:g} s of restart delays, "
            f"longer than supervisor.crash_window ({supervisor.crash_window:g} s), so a crash loop would never be "
            "stopped; raise crash_window or lower crash_limit"
        )
    kafka = config.kafka
    if kafka.dead_letter_topic == kafka.topic:
        yield (
            f"kafka.dead_letter_topic is kafka.topic ({kafka.topic!r}): the consumers would read their own dead "
            "letters back; name another topic"
        )
    analytics = config.analytics
    if analytics.enabled and analytics.group == config.consumer.group:
        yield (
            f"analytics.group is consumer.group ({analytics.group!r}): the analyzer and the consumers would split "
            "the partitions and each see part of the stream; name another group"
        )
    if analytics.enabled and analytics.collection == config.mongodb.collection:
        yield (
            f"analytics.collection is mongodb.collection ({analytics.collection!r}): window aggregates would be "
            "written among the messages; name another collection"
        )
    if config.auth.metrics_port == config.api.port:
        yield (
            f"auth.metrics_port is api.port ({config.api.port}): /metrics gets a port of its own only on another "
            "one; choose a free port, or 0 to keep /metrics on api.port"
        )
    yield from api_tls(config)


def api_tls(config: Config) -> Iterator[str]:
    """The API's HTTPS files: a certificate and its key together, each readable, loading as a pair.

    Judged when the config is loaded, so a start exits 2 and a reload keeps the old config, instead of
    the api child failing in a restart loop with Gunicorn's traceback.
    """
    api = config.api
    if bool(api.tls_cert_file) != bool(api.tls_key_file):
        given, missing = ("tls_cert_file", "tls_key_file") if api.tls_cert_file else ("tls_key_file", "tls_cert_file")
        yield f"api.{given} is set but api.{missing} is not; HTTPS needs both (or neither, for plain HTTP)"
        return
    if api.tls_ca_file and not api.tls_cert_file:
        yield (
            "api.tls_ca_file asks clients for certificates, which needs HTTPS; "
            "set api.tls_cert_file and api.tls_key_file"
        )
        return
    unreadable = False
    for key in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        value = getattr(api, key)
        if not value:
            continue
        path = config.resolve_path(value)
        try:
            path.open("rb").close()
        except OSError as exc:
            unreadable = True
            yield f"api.{key}: {path} cannot be read ({exc.strerror}); give the path of a readable PEM file"
    if unreadable or not api.tls_cert_file:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = config.resolve_path(api.tls_cert_file), config.resolve_path(api.tls_key_file)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        yield (
            f"api.tls_cert_file ({cert}) and api.tls_key_file ({key}) do not load as a PEM certificate and its "
            f"private key ({exc.reason or exc}); check that the key belongs to the certificate"
        )
    if api.tls_ca_file:
        try:
            context.load_verify_locations(config.resolve_path(api.tls_ca_file))
        except ssl.SSLError as exc:
            ca = config.resolve_path(api.tls_ca_file)
            yield f"api.tls_ca_file ({ca}) holds no PEM CA certificate ({exc.reason or exc})"
