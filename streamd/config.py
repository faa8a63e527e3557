"""The one config schema: validates config.yaml, fills defaults, applies env overrides, documents every key.

Each section is a frozen dataclass whose fields carry their default and their documentation; nothing
else in streamd reads a raw YAML key.  Environment variables override keys: ``STREAMD_<SECTION>_<KEY>``
(upper case), e.g. ``STREAMD_CONSUMER_PROCESSES=3``, and ``STREAMD_STATE_DIR`` for the top-level key.
Their values are read as YAML scalars, so ``true``, ``3`` and ``0.5`` mean what they look like.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

SEARCH_PATHS = (Path("config.yaml"), Path("/etc/streamd/config.yaml"))
ENV_PREFIX = "STREAMD_"
# Keys that size the pipeline rather than configure a child: changing one adds or removes children.
SCALE_KEYS = {"consumer": "processes"}
# A streamd config is a few kilobytes; the bounds keep any file, even a hostile one, from taking the
# supervisor's stack or memory while it reloads (PyYAML's composer recurses once per nesting level,
# and merge keys can double a mapping per level).
MAX_FILE_BYTES = 256 << 10  # parsing this much takes the supervisor ~2 s at worst; 1 MiB took 7 s
MAX_NESTING = 50
MAX_MERGED_KEYS = 10_000


class ConfigError(Exception):
    """A user-fixable problem in config.yaml or the environment; the message is one sentence."""


def setting(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc, "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class KafkaConfig:
    brokers: str = setting("127.0.0.1:9092", "Bootstrap brokers, comma separated (librdkafka bootstrap.servers).")
    topic: str = setting("data-stream", "Topic the producer writes to and the consumers read.")
    partitions: int = setting(3, "Partitions of the topic when streamd creates it.", minimum=1, maximum=1000)
    replication_factor: int = setting(1, "Replication factor of topics streamd creates.", minimum=1, maximum=16)
    dead_letter_topic: str = setting(
        "data-stream.dlq",
        "Topic that receives messages the consumer cannot store, with the reason in headers.",
    )
    client: dict = setting({}, "Extra librdkafka properties for every client (e.g. security.protocol, sasl.*).")


@dataclass(frozen=True)
class MongoConfig:
    uri: str = setting("mongodb://127.0.0.1:27017", "MongoDB connection string.")
    database: str = setting("messageDB", "Database holding the messages.")
    collection: str = setting("messages", "Collection holding the messages.")
    timeout_ms: int = setting(
        5000, "How long an operation waits for a usable server before failing.", minimum=100, maximum=600_000
    )


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


@dataclass(frozen=True)
class StackConfig:
    local: Literal["auto", True, False] = setting(
        "auto",
        "auto: start a local Kafka and store when the configured ones do not answer; "
        "true: always run them; false: never (production).",
    )
    kafka_version: str = setting("3.9.2", "Apache Kafka version resolved from Maven Central.")
    kafka_heap: str = setting("512m", "JVM heap of the local Kafka broker (-Xmx).")
    kafka_controller_port: int = setting(9093, "KRaft controller port of the local broker.", minimum=1, maximum=65535)
    ferretdb_version: str = setting("v1.24.2", "FerretDB version built when no mongod is on PATH.")
    cache_dir: str | None = setting(
        None, "Where downloaded and built server artifacts are kept; empty means <state_dir>/cache."
    )


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    mongodb: MongoConfig = field(default_factory=MongoConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    state_dir: str = setting(".streamd", "Directory for the pid file, control socket, local server data and cache.")
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
            mine, theirs = getattr(self, name), getattr(other, name)
            for f in dataclasses.fields(mine):
                if f.name != SCALE_KEYS.get(name) and getattr(mine, f.name) != getattr(theirs, f.name):
                    changed.add(f"{name}.{f.name}")
        return changed


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if _is_section(f)]


def find_config_path(explicit: str | os.PathLike | None) -> Path | None:
    """-c wins; else ./config.yaml; else /etc/streamd/config.yaml; else None (built-in defaults)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file; pass an existing file with -c.")
        return path.absolute()
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate.absolute()
    return None


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
    return _build(Config, raw, label, prefix="", extra={"source": source})


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


def read_file(source: Path) -> Any:
    """The file as plain YAML data, unvalidated (None when it holds nothing); bad content is a ConfigError."""
    try:
        with open(source, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read ({exc.strerror}).") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: is larger than {MAX_FILE_BYTES >> 10} KiB; a streamd config is a few lines.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}: line {line} is not UTF-8 text; save the file as UTF-8.") from None
    try:
        return parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} is not valid YAML ({_one_line(exc.problem or exc)}).") from None
    except Exception as exc:
        # Everything here comes from the file's content (PyYAML raises ValueError for 2024-13-01,
        # KeyError for `!!bool maybe`, RecursionError past our bounds): the user's to fix, not a bug.
        raise ConfigError(f"{source}: is not valid YAML ({_one_line(f'{type(exc).__name__}: {exc}')}).") from None


def parse_yaml(text: str) -> Any:
    """yaml.safe_load with bounds on nesting and merge keys; raises yaml.YAMLError past them."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Count what the merge would add before PyYAML builds it: sources are flattened first (each
        # checked by this same bound), and flattening is idempotent, so this costs one pass.
        merged = len(node.value)
        merges = False
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merges = True
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if isinstance(source, yaml.MappingNode):
                        self.flatten_mapping(source)
                        merged += len(source.value)
        if merges and merged > MAX_MERGED_KEYS:
            raise yaml.constructor.ConstructorError(
                None, None, f"merge keys (<<) expand to more than {MAX_MERGED_KEYS} keys", node.start_mark
            )
        super().flatten_mapping(node)


def from_mapping(raw: Mapping[str, Any], label: str = "<config>") -> Config:
    """Build a Config from an in-memory mapping (tests, tools); same validation as load()."""
    return _build(Config, dict(raw), label, prefix="", extra={})


def to_mapping(config: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data (for writing a config file or printing the effective config)."""
    return {key: value for key, value in dataclasses.asdict(config).items() if key != "source"}


def documented_keys() -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default, meaning) for every key, in schema order: the source of the README table."""
    for top in dataclasses.fields(Config):
        if top.metadata.get("internal"):
            continue
        if _is_section(top):
            for f in dataclasses.fields(_field_type(Config, top.name)):
                yield f"{top.name}.{f.name}", _default_of(f), f.metadata["doc"]
        else:
            yield top.name, _default_of(top), top.metadata["doc"]


def env_name(dotted_key: str) -> str:
    return ENV_PREFIX + dotted_key.replace(".", "_").upper()


# --- validation -------------------------------------------------------------------------------------


def _is_section(f: dataclasses.Field) -> bool:
    return dataclasses.is_dataclass(_field_type(Config, f.name))


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _with_env_overrides(raw: dict, environ: Mapping[str, str]) -> dict:
    known = {env_name(key): key for key, _, _ in documented_keys()}
    merged = {name: (dict(value) if isinstance(value, dict) else value) for name, value in raw.items()}
    for variable, text in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        if variable not in known:
            shown = _clipped(variable if variable.isprintable() else repr(variable))
            raise ConfigError(
                f"environment variable {shown} names no config key; "
                f"the rule is STREAMD_<SECTION>_<KEY>, e.g. STREAMD_CONSUMER_PROCESSES."
            )
        try:
            value = parse_yaml(text) if text.strip() else None
        except Exception:
            value = text  # not YAML (e.g. `a: b: c`): the text itself, which validation then judges
        section, _, key = known[variable].rpartition(".")
        if section:
            target = merged.setdefault(section, {})
            if not isinstance(target, dict):
                continue  # the file's own error for this section is reported by _build
            target[key] = value
        else:
            merged[key] = value
    return merged


def _build(cls: type, raw: dict, label: str, prefix: str, extra: dict) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    # Sorted by repr: YAML keys may be numbers, booleans or null mixed with names, which do not compare.
    unknown = sorted((key for key in raw if key not in names), key=repr)
    if unknown:
        first = unknown[0]
        key = _clipped(repr(prefix + first) if isinstance(first, str) else prefix + repr(first))
        raise ConfigError(f"{label}: unknown key {key}; known keys here are {', '.join(sorted(names))}.")
    values = dict(extra)
    for name, f in names.items():
        if name not in raw:
            continue
        key = prefix + name
        expected = _field_type(cls, name)
        if dataclasses.is_dataclass(expected):
            section = raw[name]
            if section is None:
                section = {}
            if not isinstance(section, dict):
                raise ConfigError(f"{label}: {key} must be a mapping of keys, got {_shown(section)}.")
            values[name] = _build(expected, section, label, prefix=key + ".", extra={})
        else:
            values[name] = _coerce(raw[name], expected, f, f"{label}: {key}")
    return cls(**values)


def _coerce(value: Any, expected: Any, f: dataclasses.Field, where: str) -> Any:
    default = _default_of(f)
    hint = f" (default {default!r})" if default not in (None, {}) else ""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(expected) if t is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(value, options[0], f, where)
    if origin is Literal:
        choices = typing.get_args(expected)
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower():
                return choice
        shown = " | ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
        raise ConfigError(f"{where}: expected one of {shown}, got {_shown(value)}{hint}.")
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_shown(value)}{hint}.")
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number{_bounds(f)}, got {_shown(value)}{hint}.")
        return _checked_range(value, f, where, hint)
    if expected is float:
        # .nan passes every bound check and .inf or 1e400 never elapse: only finite numbers are durations.
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise ConfigError(f"{where}: expected a finite number{_bounds(f)}, got {_shown(value)}{hint}.")
        return _checked_range(float(value), f, where, hint)
    if expected is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: expected a non-empty string, got {_shown(value)}{hint}.")
        if "\0" in value:
            raise ConfigError(f"{where}: expected a string without NUL characters, got {_shown(value)}.")
        return value
    if expected is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str | int | float | bool) for v in value.values()):
            raise ConfigError(f"{where}: expected a mapping of property names to scalar values, got {_shown(value)}.")
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"config schema has an unsupported type {expected!r} at {where}")  # our bug, not the user's


def _checked_range(value: float, f: dataclasses.Field, where: str, hint: str) -> Any:
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}: expected a value{_bounds(f)}, got {value!r}{hint}.")
    return value


def _bounds(f: dataclasses.Field) -> str:
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    return ""


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _clipped(repr(value))


def _one_line(problem: object) -> str:
    return _clipped(" ".join(str(problem).split()))


def _clipped(text: str, limit: int = 80) -> str:
    """Keep a sentence one sentence when the file holds a megabyte-long value."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
