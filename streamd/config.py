"""The one config schema: validates config.yaml, fills defaults, applies env overrides, documents every key.

Each section is a frozen dataclass whose fields carry their default and their documentation; nothing
else in streamd reads a raw YAML key.  Environment variables override keys: ``STREAMD_<SECTION>_<KEY>``
(upper case), e.g. ``STREAMD_CONSUMER_PROCESSES=3``, and ``STREAMD_STATE_DIR`` for the top-level key.
Their values are read as YAML scalars, so ``true``, ``3`` and ``0.5`` mean what they look like.

`load` is the entry point; finding and reading the file within its bounds is config_file.py's job, and
turning its data into typed, bounded fields config_values.py's.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamd.config_file import ConfigError, clipped, find_config_path, parse_yaml, read_file
from streamd.config_values import build, check_one, default_of, field_type

ENV_PREFIX = "STREAMD_"
# Keys that size the pipeline rather than configure a child: changing one adds or removes children.
SCALE_KEYS = {"consumer": "processes"}
# Top-level keys that are lists rather than sections, but that children read as a whole (see section_names).
LIST_SECTIONS = {"stages"}


def setting(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Callable[[Any], Any] | None = None,
    secret: bool = False,
) -> Any:
    """A config key: its default, its documentation, and its bounds or its `check`.

    `check` takes the value as written (after the type check) and returns it, normalised, or raises
    ValueError with what is wrong; the loader names the file and the key.  A `secret` key is never shown:
    not by `streamd config`, not in an error sentence, and its environment variable is taken as plain
    text (a YAML reading would turn a password like `0123` into a number).
    """
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"doc": doc, "check": check})
    metadata = {"doc": doc, "minimum": minimum, "maximum": maximum, "check": check, "secret": secret}
    return field(default=default, repr=not secret, metadata=metadata)  # repr: a config printed while debugging


def derived(doc: str, *, secret: bool = False) -> Any:
    """Not a config key: a value filled in by load() from the keys (a secret read from a *_file key, the
    local stack's credentials directory), never written in config.yaml and never printed."""
    return field(default=None, repr=False, metadata={"doc": doc, "internal": True, "secret": secret})


@dataclass(frozen=True)
class KafkaConfig:
    brokers: str = setting("127.0.0.1:9092", "Bootstrap brokers, comma separated (librdkafka bootstrap.servers).")
    topic: str = setting("data-stream", "Topic the producer writes to and the consumers read.")
    partitions: int = setting(3, "Partitions of the topic when streamd creates it.", minimum=1, maximum=1000)
    replication_factor: int | None = setting(
        None,
        "Replication factor of topics streamd creates; empty: the brokers' default.replication.factor "
        "(3 on a local stack of 3 or 5 nodes, 1 on one).",
        minimum=1,
        maximum=16,
    )
    topic_config: dict = setting(
        {},
        "Topic-level configs of the topics streamd creates (the topic and the dead-letter topic), "
        'e.g. {"min.insync.replicas": "2"}.',
        check=lambda configs: _topic_config(configs),
    )
    dead_letter_topic: str = setting(
        "data-stream.dlq",
        "Topic that receives messages the consumer cannot store, with the reason in headers.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = setting(
        None,
        "How clients talk to the brokers (librdkafka security.protocol); empty: PLAINTEXT, or SASL_SSL when "
        "stack.security is tls.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = setting(
        None, "SASL mechanism (librdkafka sasl.mechanism); empty: SCRAM-SHA-512 when stack.security is tls."
    )
    sasl_username: str | None = setting(None, "SASL user name; empty: the local stack's user when it runs tls.")
    sasl_password: str | None = setting(
        None, "SASL password; better given by sasl_password_file or STREAMD_KAFKA_SASL_PASSWORD.", secret=True
    )
    sasl_password_file: str | None = setting(
        None, "File whose first line is the SASL password (read when the config loads)."
    )
    tls_ca_file: str | None = setting(
        None,
        "PEM file of the CA that signed the brokers' certificates (librdkafka ssl.ca.location); empty: the "
        "system's CAs, or the local stack's CA when stack.security is tls.",
    )
    client: dict = setting(
        {},
        "Extra librdkafka properties for every client; they override the security keys above (see docs/tls.md).",
    )
    password_read: str | None = derived("The first line of kafka.sasl_password_file.", secret=True)
    stack_credentials: str | None = derived("The local stack's TLS directory when stack.security is tls.")


@dataclass(frozen=True)
class MongoConfig:
    uri: str = setting(
        "mongodb://127.0.0.1:27017",
        "MongoDB connection string; keep the password out of it (mongodb.password_file).",
    )
    username: str | None = setting(None, "User to authenticate as; empty: the uri's, or the local stack's user.")
    password: str | None = setting(
        None, "Password of mongodb.username; better given by password_file or STREAMD_MONGODB_PASSWORD.", secret=True
    )
    password_file: str | None = setting(None, "File whose first line is the password (read when the config loads).")
    tls: bool = setting(False, "Connect with TLS (true whenever stack.security is tls); the uri's tls=true works too.")
    tls_ca_file: str | None = setting(
        None, "PEM file of the CA that signed the server's certificate; empty: the system's CAs or the stack's CA."
    )
    database: str = setting("messageDB", "Database holding the messages.")
    collection: str = setting("messages", "Collection holding the messages.")
    timeout_ms: int = setting(
        5000, "How long an operation waits for a usable server before failing.", minimum=100, maximum=600_000
    )
    retention: str | None = setting(
        None,
        "Delete stored messages this long after they were stored (by ingested_at), e.g. 7d or 12h; "
        "empty keeps them forever.",
        check=lambda text: _retention(text),
    )
    password_read: str | None = derived("The first line of mongodb.password_file.", secret=True)
    stack_credentials: str | None = derived("The local stack's TLS directory when stack.security is tls.")


@dataclass(frozen=True)
class ProducerConfig:
    enabled: bool = setting(True, "Run the built-in message generator as a child.")
    interval: float = setting(1.0, "Seconds between generated messages (used when rate is 0).", minimum=0.001)
    rate: float = setting(0.0, "Messages per second for load; 0 means one every `interval`.", minimum=0)
    source: str = setting("system-generator", "The `source` field of generated messages.")
    linger_ms: int = setting(5, "librdkafka linger.ms: how long to wait to fill a batch.", minimum=0, maximum=5000)


@dataclass(frozen=True)
class ConsumerConfig:
    processes: int = setting(2, "Consumer processes in the group.", minimum=0, maximum=64)
    group: str = setting("message-processing-group", "Kafka consumer group id.")
    batch_size: int = setting(500, "Most messages written to the store in one insert_many.", minimum=1, maximum=100_000)
    # 10 ms by `streamd bench`: under a backlog batches fill at once whatever the wait, while at 100-1000 msg/s
    # the wait is most of the produce -> stored latency (p50 71 ms at 100, 19 ms at 10). Shorter waits give
    # one store round trip per handful of messages, and the store falls behind at 1000 msg/s.
    batch_timeout_ms: int = setting(
        10, "Longest wait to fill a batch before writing what arrived.", minimum=1, maximum=60_000
    )
    max_message_bytes: int = setting(
        1_048_576, "Larger message values go to the dead-letter topic.", minimum=1, maximum=100_000_000
    )
    schema: str | None = setting(
        None, "Path to a JSON Schema file for message payloads; empty uses the built-in schema."
    )
    id_field: str | None = setting(
        "id",
        "Payload field holding the message id (stored as _id, so a replay is skipped); "
        "empty: every message is stored under its Kafka coordinates.",
        check=lambda name: _field_name(name),
    )


# MongoDB's read preference modes, spelled as in a connection string's readPreference option.
ReadPreference = Literal["primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"]


@dataclass(frozen=True)
class ApiConfig:
    host: str = setting("127.0.0.1", "Address the API binds to.")
    port: int = setting(3000, "Port the API listens on.", minimum=1, maximum=65535)
    workers: int = setting(2, "Gunicorn worker processes.", minimum=1, maximum=64)
    threads: int = setting(4, "Threads per Gunicorn worker (gthread worker class).", minimum=1, maximum=256)
    timeout: int = setting(30, "Seconds before Gunicorn replaces a silent worker.", minimum=1, maximum=3600)
    stream_seconds: float = setting(
        30.0,
        "How long one GET /stream (the dashboard's live feed) lasts; the browser then reconnects where it left off.",
        minimum=1,
        maximum=3600,
    )
    streams_per_worker: int = setting(
        2,
        "Most live feeds one worker serves at once; each holds a thread, and one thread always stays free.",
        minimum=0,
        maximum=255,
    )
    tls_cert_file: str | None = setting(
        None,
        "PEM certificate (chain) the API serves HTTPS with, together with api.tls_key_file; empty: plain HTTP.",
    )
    tls_key_file: str | None = setting(None, "PEM private key of api.tls_cert_file.")
    tls_ca_file: str | None = setting(
        None, "PEM CA certificates: when set, every client must present a certificate they signed (mutual TLS)."
    )
    read_preference: ReadPreference | None = setting(
        None,
        "MongoDB read preference of the API's reads only (e.g. secondaryPreferred on a replica set, whose reads may "
        "lag the primary's); empty: mongodb.uri's, which is primary unless it says otherwise.",
    )


# The scopes an API key can hold (streamd/api_keys.py); `admin` holds every other one.
SCOPES = ("read", "ingest", "metrics", "admin")


@dataclass(frozen=True)
class AuthConfig:
    required: Literal["auto", True, False] = setting(
        "auto",
        "Whether API requests need a key: auto requires one unless api.host is a loopback address; "
        "true or false decide outright (see docs/security.md).",
    )
    keys_file: str | None = setting(
        None,
        "File of API keys, stored hashed and managed by `streamd keys`; empty means <state_dir>/api-keys.json.",
    )
    public_scopes: tuple[str, ...] = setting(
        (),
        "Scopes every request has without a key, e.g. [read] or [metrics]; admin is never public.",
        check=lambda scopes: _public_scopes(scopes),
    )
    rate_limit: float = setting(
        50.0,
        "Requests per second one API key may make, shared by every API worker (a token bucket); 0: no limit.",
        minimum=0,
        maximum=1_000_000,
    )
    rate_burst: int = setting(
        100, "Requests one API key may make at once before rate_limit applies.", minimum=1, maximum=1_000_000
    )
    metrics_port: int = setting(
        0,
        "Port on api.host serving only /metrics (and /health), which the API port then no longer serves; "
        "0: /metrics is on api.port.",
        minimum=0,
        maximum=65535,
    )


@dataclass(frozen=True)
class IngestConfig:
    enabled: bool = setting(
        True, "Accept messages by POST /messages, validated as the consumers would, into kafka.topic."
    )
    max_body_bytes: int = setting(
        10_485_760, "Largest POST /messages body; a larger one is answered 413.", minimum=1, maximum=1_000_000_000
    )
    max_batch: int = setting(
        1000, "Most messages in one POST /messages; more is answered 400.", minimum=1, maximum=100_000
    )
    ack_timeout: float = setting(
        5.0,
        "Seconds a POST /messages waits for Kafka to acknowledge its messages; those still unacknowledged "
        "are answered 503 with Retry-After, to be sent again.",
        minimum=0.1,
        maximum=300,
    )


@dataclass(frozen=True)
class AnalyticsConfig:
    enabled: bool = setting(True, "Run the analyzer: live tumbling-window aggregates in its own consumer group.")
    group: str = setting("message-analytics-group", "Kafka consumer group of the analyzer.")
    collection: str = setting("aggregates", "Collection holding one document per window and group.")
    windows: tuple[str, ...] = setting(
        ("1m", "1h"),
        "Tumbling window lengths, in event time: a number and s, m, h or d (e.g. 30s, 1m, 1h).",
        check=lambda windows: _windows(windows),
    )
    group_by: tuple[str, ...] = setting(
        ("source",),
        "Fields whose values split each window into groups (empty: one group per window).",
        check=lambda names: tuple(_field_name(name) for name in names),
    )
    fields: tuple[str, ...] = setting(
        (),
        "Numeric fields whose count, min, max, sum and mean are kept per window and group.",
        check=lambda names: tuple(_field_name(name) for name in names),
    )
    allowed_lateness: float = setting(
        60.0,
        "Seconds after a window's end (in its partition's event time) during which a late message still "
        "updates it; later ones are counted as late.",
        minimum=0,
        maximum=30 * 86_400,
    )


@dataclass(frozen=True)
class SupervisorConfig:
    graceful_timeout: float = setting(
        30.0, "Seconds children get to stop after SIGTERM before SIGKILL.", minimum=0.1, maximum=3600
    )
    backoff_initial: float = setting(1.0, "First restart delay after a child dies.", minimum=0, maximum=3600)
    backoff_max: float = setting(30.0, "Longest restart delay (the delay doubles per crash).", minimum=0, maximum=3600)
    crash_limit: int = setting(
        5,
        "Exits within crash_window that mark a child FATAL (it is no longer restarted).",
        minimum=1,
        maximum=1000,
    )
    crash_window: float = setting(60.0, "Seconds over which crash_limit is counted.", minimum=1, maximum=86_400)
    start_seconds: float = setting(1.0, "A child that stays up this long counts as RUNNING.", minimum=0, maximum=3600)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "Lowest level logged.")
    format: Literal["text", "json"] = setting("text", "text for terminals, json for log shippers.")
    file_max_bytes: int = setting(
        10_000_000,
        "Size at which a child's file in <state_dir>/logs is rotated; 0: no log files (stdout/journald only).",
        minimum=0,
        maximum=10**12,
    )
    file_count: int = setting(
        5,
        "Files kept per child in <state_dir>/logs, the current one included: 0 (no log files), or 2 or more.",
        check=lambda count: _file_count(count),
    )


@dataclass(frozen=True)
class StackConfig:
    local: Literal["auto", True, False] = setting(
        "auto",
        "auto: start a local Kafka and store when the configured ones do not answer; "
        "true: always run them; false: never (production).",
    )
    kafka_version: str = setting("3.9.2", "Apache Kafka version resolved from Maven Central.")
    kafka_nodes: int = setting(
        1,
        "KRaft nodes (each a broker and a controller) of the local Kafka: 1, 3 or 5; with more than one, "
        "kafka.brokers lists each node's loopback host:port (see docs/operations.md).",
        check=lambda count: _kafka_nodes(count),
    )
    kafka_heap: str = setting("512m", "JVM heap of each local Kafka node (-Xmx).")
    kafka_controller_port: int = setting(
        9093,
        "KRaft controller port of the local Kafka; node i of several uses this port + i - 1.",
        minimum=1,
        maximum=65535,
    )
    ferretdb_version: str = setting("v1.24.2", "FerretDB version built when no mongod is on PATH.")
    cache_dir: str | None = setting(
        None, "Where downloaded and built server artifacts are kept; empty means <state_dir>/cache."
    )
    security: Literal["none", "tls"] = setting(
        "none",
        "tls: the local Kafka takes only SASL_SSL with SCRAM-SHA-512 and the local store only TLS with a user, "
        "all generated under <state_dir>/stack/tls, and streamd's clients use them (see docs/tls.md).",
    )


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    mongodb: MongoConfig = field(default_factory=MongoConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    stages: tuple[dict, ...] = setting(
        (),
        "Processing stages every consumer applies after validation, in order: filter, set, rename, drop, route "
        "(see docs/stages.md).",
        check=lambda raw: _stages(raw),
    )
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    state_dir: str = setting(
        ".streamd",
        "Directory for the pid file, control socket, the consumers' in-flight records, local server data and cache.",
    )
    # Where the values came from, for messages and for resolving relative paths; not a config key.
    source: Path | None = field(default=None, compare=False, metadata={"internal": True})

    @property
    def state_path(self) -> Path:
        return self.resolve_path(self.state_dir)

    @property
    def cache_path(self) -> Path:
        return self.resolve_path(self.stack.cache_dir) if self.stack.cache_dir else self.state_path / "cache"

    def resolve_path(self, value: str) -> Path:
        """Relative paths in config.yaml are relative to the file, not to wherever streamd was started."""
        path = Path(value).expanduser()
        if path.is_absolute() or self.source is None:
            return path.absolute()
        return (self.source.parent / path).absolute()

    def changed_sections(self, other: Config) -> set[str]:
        """Sections whose children need a restart; a scale key alone only adds or removes children."""
        changed = set()
        for name in section_names():
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in SCALE_KEYS:
                key = SCALE_KEYS[name]
                theirs = dataclasses.replace(theirs, **{key: getattr(mine, key)})
            if mine != theirs:
                changed.add(name)
        return changed

    def changed_settings(self, other: Config) -> set[str]:
        """The changed sections plus every changed key in them as "section.key" (scale keys left out).

        A child that reads a single key of another section (the API's consumer.group) declares just
        that key, so tuning the rest of the section does not restart it.
        """
        changed = self.changed_sections(other)
        for name in list(changed):
            if name in LIST_SECTIONS:
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            for f in dataclasses.fields(mine):
                if f.name != SCALE_KEYS.get(name) and getattr(mine, f.name) != getattr(theirs, f.name):
                    changed.add(f"{name}.{f.name}")
        return changed


def section_names() -> list[str]:
    """Every part of the config a child can declare it reads: the sections, and the stage list."""
    return [f.name for f in dataclasses.fields(Config) if _is_section(f) or f.name in LIST_SECTIONS]


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and complete the config; a ConfigError names the file, the key and what was expected."""
    source = find_config_path(path)
    raw: Any = {}
    if source is not None:
        raw = read_file(source)
        if raw is None:
            raise ConfigError(
                f"{source}: holds no settings (it is empty or only comments); write {{}} in it "
                "or delete it to run with the built-in defaults."
            )
    label = str(source) if source else "built-in defaults"
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: the top level must be a mapping of sections (kafka:, consumer:, ...).")
    raw = _with_env_overrides(raw, os.environ if environ is None else environ)
    return _checked_across(build(Config, raw, label, prefix="", extra={"source": source}), label)


def locate_only(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults plus a best guess at state_dir, to reach a running supervisor while its file is invalid.

    state_dir comes from where load() would take it, as far as it can be read: STREAMD_STATE_DIR, else
    the file's own `state_dir`, else the default.  Nothing else in the result means anything.
    """
    source = find_config_path(path)
    variable = (os.environ if environ is None else environ).get(env_name("state_dir"), "")
    state_dir = variable.strip() if "\0" not in variable else ""
    if not state_dir and source is not None:
        try:
            raw = read_file(source)
        except ConfigError:
            raw = None
        value = raw.get("state_dir") if isinstance(raw, dict) else None
        if isinstance(value, str) and value.strip() and "\0" not in value:
            state_dir = value
    return Config(state_dir=state_dir, source=source) if state_dir else Config(source=source)


def from_mapping(raw: Mapping[str, Any], label: str = "<config>") -> Config:
    """Build a Config from an in-memory mapping (tests, tools); same validation as load()."""
    return _checked_across(build(Config, dict(raw), label, prefix="", extra={}), label)


def to_mapping(config: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data (for writing a config file or printing the effective config).

    Derived values are left out: loading the mapping derives them again (a password from its file).
    """
    mapping = {}
    for top in dataclasses.fields(Config):
        if top.metadata.get("internal"):
            continue
        value = getattr(config, top.name)
        if dataclasses.is_dataclass(value):
            mapping[top.name] = {
                f.name: _plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not f.metadata.get("internal")
            }
        else:
            mapping[top.name] = _plain(value)
    return mapping


def _plain(value: Any) -> Any:
    return copy.deepcopy(value)  # the caller may change the mapping; the frozen config must not change with it


def documented_keys() -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default, meaning) for every key, in schema order: docs/configuration.md tabulates them."""
    for top in dataclasses.fields(Config):
        if top.metadata.get("internal"):
            continue
        if _is_section(top):
            for f in dataclasses.fields(field_type(Config, top.name)):
                if not f.metadata.get("internal"):
                    yield f"{top.name}.{f.name}", default_of(f), f.metadata["doc"]
        else:
            yield top.name, default_of(top), top.metadata["doc"]


def env_name(dotted_key: str) -> str:
    return ENV_PREFIX + dotted_key.replace(".", "_").upper()


# --- validation -------------------------------------------------------------------------------------


def _checked_across(config: Config, label: str) -> Config:
    """Rules that tie keys of different sections together; each refusal names the key to change."""
    from streamd.config_rules import conflicts
    from streamd.config_secrets import with_secrets_read
    from streamd.stages import StageChain, StageSpecError

    config = with_secrets_read(config, label)
    try:
        # Compiled here so that a bad expression stops a start (exit 2) or a reload (the old config runs on).
        StageChain.compile(config.stages, config.consumer.id_field)
    except StageSpecError as exc:
        raise ConfigError(f"{label}: {exc}.") from None
    for problem in conflicts(config):
        raise ConfigError(f"{label}: {problem}.")
    return config


def _stages(raw: Any) -> tuple[dict, ...]:
    from streamd.stages import StageSpecError, check_stages

    try:
        return check_stages(raw)
    except StageSpecError as exc:
        raise ValueError(str(exc)) from None


FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
WINDOW = re.compile(r"([1-9][0-9]{0,5})([smhd])")
WINDOW_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _field_name(name: str) -> str:
    if not FIELD_NAME.fullmatch(name):
        raise ValueError(f"expected a field name (a letter or '_', then letters, digits, '_' or '-'), got {name!r}")
    return name


def window_seconds(window: str) -> int:
    """A length of time written like `30s`, `1m`, `1h` or `1d` (windows, retention), in seconds."""
    match = WINDOW.fullmatch(window)
    if match is None:
        raise ValueError(f"expected a length of time like 30s, 1m, 1h or 1d, got {window!r}")
    return int(match.group(1)) * WINDOW_SECONDS[match.group(2)]


RETENTION_LIMIT = 3650 * 86_400  # ten years: longer is "forever", which is an empty retention


def _retention(text: str) -> str:
    if not 1 <= window_seconds(text) <= RETENTION_LIMIT:
        raise ValueError(f"{text} is outside 1s to 3650d; leave it empty to keep messages forever")
    return text


def retention_seconds(settings: MongoConfig) -> int | None:
    """mongodb.retention in seconds, or None: keep messages forever."""
    return None if settings.retention is None else window_seconds(settings.retention)


def _windows(windows: tuple[str, ...]) -> tuple[str, ...]:
    if not windows:
        raise ValueError("expected at least one window length, e.g. [1m, 1h]")
    for window in windows:
        seconds = window_seconds(window)
        if not 1 <= seconds <= 7 * 86_400:
            raise ValueError(f"{window} is outside 1s to 7d")
    if len(set(windows)) != len(windows):
        raise ValueError("each window length may be listed once")
    return windows


def _topic_config(configs: dict) -> dict[str, str]:
    # Kafka takes every topic config as a string; a YAML true would arrive as "True", which Kafka refuses.
    for name, value in configs.items():
        if isinstance(value, bool):
            raise ValueError(f'{name}: expected a string or a number, got {value!r}; quote it, e.g. "true"')
    return {name: str(value) for name, value in configs.items()}


# A quorum of 2k nodes survives k - 1 failures, like one of 2k - 1: an even count only adds a node to lose.
KAFKA_NODE_COUNTS = (1, 3, 5)


def _kafka_nodes(count: int) -> int:
    if count not in KAFKA_NODE_COUNTS:
        raise ValueError(
            f"expected 1, 3 or 5 nodes, got {count}: a KRaft quorum of an even count tolerates no more failures "
            "than the odd count below it"
        )
    return count


def _public_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    for scope in scopes:
        if scope == "admin":
            raise ValueError("admin cannot be public: it manages everything; list read, ingest or metrics")
        if scope not in SCOPES:
            raise ValueError(f"expected scopes among {', '.join(SCOPES[:-1])}, got {scope!r}")
    return scopes


def _file_count(count: int) -> int:
    # Python's RotatingFileHandler never rotates without a backup file: one file would grow without bound.
    if count == 1 or not 0 <= count <= 1000:
        raise ValueError(f"expected 0 (no log files) or a count from 2 to 1000, got {count}")
    return count


def _is_secret(section: str, key: str) -> bool:
    owner = field_type(Config, section) if section else Config
    return any(f.name == key and f.metadata.get("secret") for f in dataclasses.fields(owner))


def _is_section(f: dataclasses.Field) -> bool:
    return dataclasses.is_dataclass(field_type(Config, f.name))


def _with_env_overrides(raw: dict, environ: Mapping[str, str]) -> dict:
    known = {env_name(key): key for key, _, _ in documented_keys()}
    merged = {name: (dict(value) if isinstance(value, dict) else value) for name, value in raw.items()}
    for variable, text in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        if variable not in known:
            shown = clipped(variable if variable.isprintable() else repr(variable))
            raise ConfigError(
                f"environment variable {shown} names no config key; "
                f"the rule is STREAMD_<SECTION>_<KEY>, e.g. STREAMD_CONSUMER_PROCESSES."
            )
        section, _, key = known[variable].rpartition(".")
        try:
            value = parse_yaml(text) if text.strip() else None
        except Exception:
            value = text  # not YAML (e.g. `a: b: c`): the text itself, which validation then judges
        if _is_secret(section, key):
            value = text.strip() or None  # a password is text, whatever YAML would make of it
        # Judged here, on its own, so that a bad value names the variable rather than the file.
        check_one(field_type(Config, section) if section else Config, key, value, f"environment variable {variable}")
        if section:
            target = merged.setdefault(section, {})
            if not isinstance(target, dict):
                continue  # the file's own error for this section is reported by _build
            target[key] = value
        else:
            merged[key] = value
    return merged
