"""config.yaml validation, defaults and environment overrides: what a user typing a config would see."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamd import config as config_module
from streamd.config import ConfigError
from streamd.config_file import parse_yaml
from tests.hostile_files import merge_bomb

REPO = Path(__file__).resolve().parent.parent


def load_text(tmp_path: Path, text: str, environ: dict | None = None):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return config_module.load(path, environ=environ or {})


EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_config_loads_as_a_user_would_start_it(path: Path):
    settings = config_module.load(path, environ={})
    assert settings.source == path
    # Each runs the same pipeline as ./config.yaml: its state directory is the repository's own.
    shipped = config_module.load(REPO / "config.yaml", environ={})
    assert settings.state_path.resolve() == shipped.state_path.resolve()


def test_the_worked_example_in_the_docs_is_the_shipped_example():
    readme = (REPO / "docs" / "stages.md").read_text()
    section = readme.split("## Processing the stream: a worked example", 1)[1].split("\n## ", 1)[0]
    blocks = [yaml.safe_load(block.split("\n```", 1)[0]) for block in section.split("```yaml\n")[1:]]
    shown = next(block for block in blocks if "stages" in block)
    example = config_module.load(REPO / "docs" / "examples" / "stages.yaml", environ={})
    assert tuple(shown["stages"]) == example.stages
    assert [stage["kind"] for stage in example.stages] == ["filter", "set", "drop", "route"]
    assert example.analytics.enabled and tuple(shown["analytics"]["fields"]) == example.analytics.fields


def test_the_shipped_config_is_valid_and_follows_the_tutorial_defaults():
    settings = config_module.load(REPO / "config.yaml", environ={})
    assert settings.kafka.topic == "data-stream"
    assert settings.kafka.brokers == "127.0.0.1:9092"
    assert settings.consumer.group == "message-processing-group"
    assert (settings.mongodb.uri, settings.mongodb.database, settings.mongodb.collection) == (
        "mongodb://127.0.0.1:27017",
        "messageDB",
        "messages",
    )
    assert settings.api.port == 3000
    assert settings.stack.local == "auto"


def test_an_empty_mapping_means_all_defaults(tmp_path):
    assert config_module.from_mapping({}) == load_text(tmp_path, "{}\n")


@pytest.mark.parametrize("text", ["", "\n\n", "# everything commented out\n#kafka:\n#  topic: x\n", "~\n"])
def test_an_empty_file_is_an_error_not_a_silent_switch_to_default_endpoints(tmp_path, text):
    with pytest.raises(ConfigError, match=r"holds no settings.*write \{\} in it or delete it"):
        load_text(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("api:\n  port: 8080\nconsumer:\n  processes: 1\napi:\n  host: 0.0.0.0\n", "'api'", (1, 5)),
        ("kafka:\n  client:\n    sasl.username: a\n    acks: all\n    sasl.username: b\n", "'sasl.username'", (3, 5)),
        ("stages:\n  - set: {a: '1', a: '2'}\n", "'a'", (2, 2)),
        ("api: {port: 1, port: 2}\n", "'port'", (1, 1)),
        ("".join(f"k{n}: 1\n" for n in range(5_000)) + "k0: 2\n", "'k0'", (1, 5001)),
    ],
    ids=["a section twice", "a nested key", "inside a list", "flow mapping", "among many keys"],
)
def test_a_key_written_twice_is_refused_naming_the_key_and_both_lines(tmp_path, text, key, lines):
    with pytest.raises(ConfigError) as refused:
        load_text(tmp_path, text)
    message = str(refused.value)
    assert message.startswith(str(tmp_path / "config.yaml")) and message.endswith(".") and "\n" not in message
    assert f"key {key}" in message and f"lines {lines[0]} and {lines[1]}" in message


def test_a_key_beside_a_merge_key_overrides_the_merged_one_as_yaml_says():
    text = "base: &base {port: 1, host: h}\napi:\n  <<: *base\n  port: 8080\n"
    assert parse_yaml(text)["api"] == {"port": 8080, "host": "h"}


# Each of these raised something other than ConfigError (or hung) before the loader was bounded.
HOSTILE_FILES = {
    "undecodable bytes": b"kafka:\n  topic: caf\xe9\n",
    "only a byte-order mark of another encoding": b"\xff\xfe",
    "keys of mixed types": b"kafka: {}\n1: one\n~: nothing\ntrue: yes\n",
    "mixed keys inside a section": b"consumer:\n  2: two\n  batch: x\n",
    "deep nesting": b"[" * 5000,
    "deep nesting of mappings": b"a: " + b"{b: " * 3000,
    "merge-key bomb": merge_bomb(40).encode(),
    "self-merging mapping": b"&a {<<: *a}\n",
    "impossible date": b"state_dir: 2024-13-45\n",
    "bad explicit tag": b"producer:\n  enabled: !!bool maybe\n",
    "NUL in a string": b'kafka:\n  topic: "data\\0stream"\n',
    "not-a-number duration": b"supervisor:\n  graceful_timeout: .nan\n",
    "infinite duration": b"producer:\n  interval: .inf\n",
    "number too large for a float": b"supervisor:\n  backoff_max: " + b"9" * 400 + b"\n",
    "over the size bound": b"# " + b"x" * (1 << 20) + b"\n",
}


@pytest.mark.parametrize("content", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_any_hostile_content_is_one_config_error_sentence_naming_the_file(tmp_path, content):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        config_module.load(path, environ={})
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert message.startswith(str(path)) and message.endswith(".")
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("consumer:\n  batch_size: 0\n", "consumer.batch_size: expected a value from 1 to 100000, got 0"),
        ("consumer:\n  processes: two\n", "consumer.processes: expected a whole number from 0 to 64, got 'two'"),
        ("api:\n  port: 70000\n", "api.port: expected a value from 1 to 65535, got 70000"),
        ("producer:\n  enabled: yes please\n", "producer.enabled: expected true or false, got 'yes please'"),
        ("logging:\n  format: xml\n", "logging.format: expected one of text | json, got 'xml'"),
        ("stack:\n  local: sometimes\n", "stack.local: expected one of auto | true | false, got 'sometimes'"),
        (
            "api:\n  read_preference: secondaries\n",
            "api.read_preference: expected one of primary | primaryPreferred | secondary | secondaryPreferred | "
            "nearest, got 'secondaries'",
        ),
        ("kafka:\n  topik: x\n", "unknown key 'kafka.topik'"),
        ("kafak:\n  topic: x\n", "unknown key 'kafak'"),
        ("kafka: [a, b]\n", "kafka must be a mapping of keys, got a list"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("kafka:\n  topic: [unclosed\n", "is not valid YAML"),
        ("mongodb:\n  uri: ''\n", "mongodb.uri: expected a non-empty string"),
        ("stack:\n  kafka_nodes: 2\n", "stack.kafka_nodes: expected 1, 3 or 5 nodes, got 2: a KRaft quorum of an even"),
        ("stack:\n  kafka_nodes: 7\n", "stack.kafka_nodes: expected 1, 3 or 5 nodes, got 7"),
        ("kafka:\n  replication_factor: 0\n", "kafka.replication_factor: expected a value from 1 to 16, got 0"),
        ("kafka:\n  topic_config: {cleanup.policy: [compact]}\n", "kafka.topic_config: expected a mapping of"),
        ("kafka:\n  topic_config: {preallocate: true}\n", "kafka.topic_config: preallocate: expected a string or"),
        ("".join(f"k{n}: {n}\n" for n in range(20_000)), "unknown key 'k0'"),  # many keys, but no merge
    ],
)
def test_a_bad_value_names_the_file_the_key_and_what_was_expected(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_text(tmp_path, text)
    assert str(tmp_path / "config.yaml") in str(error.value)
    assert message in str(error.value)


def test_the_api_read_preference_is_the_uris_unless_set_and_takes_any_capitalisation(tmp_path):
    assert load_text(tmp_path, "{}\n").api.read_preference is None
    settings = load_text(tmp_path, "api:\n  read_preference: SecondaryPreferred\n")
    assert settings.api.read_preference == "secondaryPreferred", "spelled as pymongo and the uri spell it"


def test_topic_configs_reach_kafka_as_strings_and_replication_defaults_to_the_brokers(tmp_path):
    settings = load_text(tmp_path, "kafka:\n  topic_config: {min.insync.replicas: 2, cleanup.policy: delete}\n")

    assert settings.kafka.topic_config == {"min.insync.replicas": "2", "cleanup.policy": "delete"}
    assert settings.kafka.replication_factor is None
    assert settings.stack.kafka_nodes == 1


def test_environment_variables_override_the_file(tmp_path):
    settings = load_text(
        tmp_path,
        "consumer:\n  processes: 1\n",
        environ={"STREAMD_CONSUMER_PROCESSES": "4", "STREAMD_STACK_LOCAL": "false", "STREAMD_STATE_DIR": "/srv/x"},
    )
    assert settings.consumer.processes == 4
    assert settings.stack.local is False
    assert settings.state_path == Path("/srv/x")


def test_a_bad_environment_value_names_the_variable_not_the_file(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_text(tmp_path, "api:\n  port: 8080\n", environ={"STREAMD_API_PORT": "lots"})
    assert str(refused.value).startswith("environment variable STREAMD_API_PORT: expected a whole number")
    assert "config.yaml" not in str(refused.value)
    with pytest.raises(ConfigError, match="^environment variable STREAMD_ANALYTICS_WINDOWS: .*length of time"):
        load_text(tmp_path, "{}\n", environ={"STREAMD_ANALYTICS_WINDOWS": "[1x]"})


def test_an_unknown_streamd_variable_is_an_error_not_a_silent_typo(tmp_path):
    with pytest.raises(ConfigError, match="STREAMD_CONSUMER_PROCESS names no config key"):
        load_text(tmp_path, "{}\n", environ={"STREAMD_CONSUMER_PROCESS": "3"})


def test_relative_paths_are_relative_to_the_config_file_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    settings = load_text(tmp_path, "state_dir: run\n")
    assert settings.state_path == tmp_path / "run"
    assert settings.cache_path == tmp_path / "run" / "cache"


def test_scaling_consumers_alone_is_not_a_change_that_restarts_them():
    before = config_module.from_mapping({"consumer": {"processes": 2}})
    assert before.changed_sections(config_module.from_mapping({"consumer": {"processes": 3}})) == set()
    bigger_batches = config_module.from_mapping({"consumer": {"processes": 3, "batch_size": 10}})
    assert before.changed_sections(bigger_batches) == {"consumer"}


def test_every_key_is_documented_with_its_default():
    keys = {key: (default, meaning) for key, default, meaning in config_module.documented_keys()}
    assert keys["consumer.group"][0] == "message-processing-group"
    assert all(meaning.strip() for _, meaning in keys.values())
    assert "source" not in keys, "internal fields are not config keys"


def readme_default(default: object) -> str:
    if default is None:
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return "[" + ", ".join(map(str, default)) + "]"
    return "{}" if default == {} else str(default)


def test_the_docs_document_every_config_key_with_its_current_default():
    reference = (REPO / "docs" / "configuration.md").read_text()
    rows = {
        cells[1].strip("` "): cells[2].strip("` ")
        for line in reference.splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 3
    }
    missing = [key for key, _, _ in config_module.documented_keys() if key not in rows]
    assert not missing, f"docs/configuration.md lacks these config keys: {missing}"
    stale = {
        key: (rows[key], readme_default(default))
        for key, default, _ in config_module.documented_keys()
        if rows[key] != readme_default(default)
    }
    assert not stale, f"docs/configuration.md shows stale defaults (shown, actual): {stale}"


def test_missing_explicit_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config_module.load(tmp_path / "nope.yaml")


# --- fuzzing: whatever the file or the environment holds, load() returns a Config or raises ConfigError ------

SECTION_KEYS = {key.partition(".")[0]: [] for key, _, _ in config_module.documented_keys()}
for dotted, _, _ in config_module.documented_keys():
    if "." in dotted:
        SECTION_KEYS[dotted.partition(".")[0]].append(dotted.partition(".")[2])
NAMES = sorted(set(SECTION_KEYS) | {k for keys in SECTION_KEYS.values() for k in keys})

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["auto", "json", "INFO", "127.0.0.1:9092", "", "~", "yes"])
)
keys = st.sampled_from(NAMES) | st.text(max_size=8) | st.integers() | st.booleans() | st.none()
structures = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=30
)
configs = st.dictionaries(
    st.sampled_from(NAMES) | keys,
    structures | st.dictionaries(st.sampled_from(NAMES) | keys, structures, max_size=6),
    max_size=6,
)
yamlish = st.lists(
    st.sampled_from([*":-[]{}&*!|>'\"#%@`,?<= \n\t\\", "0", "1.5e3", ".nan", "~", "<<", "!!str", *NAMES]), max_size=60
).map("".join)
environments = st.dictionaries(
    st.sampled_from([config_module.env_name(key) for key, _, _ in config_module.documented_keys()])
    | st.text(max_size=10).map(lambda name: "STREAMD_" + name.upper()),
    st.text(alphabet=st.characters(blacklist_characters="\0"), max_size=30) | yamlish,
    max_size=3,
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


def loads_or_refuses(path: Path, content: bytes, environ: dict[str, str]) -> None:
    path.write_bytes(content)
    started = time.monotonic()
    try:
        settings_ = config_module.load(path, environ=environ)
    except ConfigError as exc:
        assert str(exc).endswith(".") and "\n" not in str(exc)
    else:
        assert isinstance(settings_, config_module.Config)
    assert time.monotonic() - started < 5


@FUZZ
@given(content=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(fuzz_file, content):
    loads_or_refuses(fuzz_file, content, {})


@FUZZ
@given(text=yamlish, environ=environments)
def test_fuzz_yamlish_text_and_environment(fuzz_file, text, environ):
    loads_or_refuses(fuzz_file, text.encode(), environ)


@FUZZ
@given(data=configs, environ=environments)
def test_fuzz_arbitrary_structures_dumped_as_yaml(fuzz_file, data, environ):
    loads_or_refuses(fuzz_file, yaml.safe_dump(data, allow_unicode=True).encode(), environ)


def test_an_invalid_file_still_tells_where_its_supervisor_runs(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("state_dir: run\nconsumer:\n  processes: many\n")
    assert config_module.locate_only(path, environ={}).state_path == tmp_path / "run"
    assert config_module.locate_only(path, environ={"STREAMD_STATE_DIR": "/srv/x"}).state_path == Path("/srv/x")
    path.write_bytes(b"\xff")
    assert config_module.locate_only(path, environ={}).state_path == tmp_path / ".streamd"
