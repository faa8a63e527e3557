"""The `streamd` command as a user meets it: exit codes and one-sentence errors, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka.admin import AdminClient

from streamd import config as config_module

from .probes import free_port, read_all

REPO = Path(__file__).resolve().parent.parent


def streamd(
    *args: str, cwd: Path | None = None, timeout: float = 60, env: dict | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}, **(env or {})}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "streamd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        input=input,
    )


def test_start_with_an_invalid_config_exits_2_before_starting_anything(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nconsumer:\n  processes: -1\n")
    result = streamd("start", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"streamd: {config}: consumer.processes: expected a value from 0 to 64, got -1 (default 2)."
    ]
    assert not (tmp_path / "state").exists(), "nothing was started, not even the state directory"


@pytest.mark.parametrize(
    "content",
    [b"", b"# all commented out\n", b"consumer:\n  group: caf\xe9\n", b"[" * 5000, b"1: one\nkafka: {}\n"],
    ids=["empty", "only comments", "not UTF-8", "deep nesting", "keys of mixed types"],
)
def test_start_with_any_unusable_file_exits_2_with_one_sentence(tmp_path, content):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    # Should the file ever be accepted, this pipeline reaches nothing shared and the test fails fast.
    nowhere = {
        "STREAMD_STACK_LOCAL": "false",
        "STREAMD_KAFKA_BROKERS": f"127.0.0.1:{free_port()}",
        "STREAMD_MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}",
        "STREAMD_API_PORT": str(free_port()),
    }
    result = streamd("start", "-c", str(config), cwd=tmp_path, env=nowhere, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"streamd: {config}: ")
    assert not (tmp_path / ".streamd").exists(), "nothing was started"


def test_an_empty_file_tells_how_to_get_the_defaults(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("# nothing yet\n")
    result = streamd("config", "-c", str(config))
    assert result.returncode == 2
    assert "write {} in it or delete it" in result.stderr


def test_a_bad_environment_override_names_the_variable(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {**os.environ, "STREAMD_API_PORT": "http", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "streamd", "config", "-c", str(config)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "environment variable STREAMD_API_PORT: expected a whole number from 1 to 65535, got 'http'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_config_file_is_found_in_the_working_directory(tmp_path):
    (tmp_path / "config.yaml").write_text("api:\n  port: 3999\n")
    result = streamd("config", cwd=tmp_path)
    assert result.returncode == 0
    assert "port: 3999" in result.stdout


def test_config_keys_lists_every_key_with_its_environment_variable():
    result = streamd("config", "--keys")
    assert result.returncode == 0
    for key, _, _ in config_module.documented_keys():
        assert key in result.stdout
        assert config_module.env_name(key) in result.stdout


def test_produce_to_an_unreachable_broker_fails_with_a_sentence_not_a_traceback(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"kafka:\n  brokers: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'state'}\n")
    result = streamd("produce", "--count", "1", "-c", str(config), timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "kafka.brokers" in result.stderr


def write_config(config: config_module.Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_module.to_mapping(config)))
    return path


def test_produce_file_from_stdin_sends_the_users_own_fields(pipeline_config, tmp_path):
    config = write_config(pipeline_config, tmp_path / "config.yaml")
    readings = '{"id": "r-1", "text": "t", "temperature": 21.5, "sensor": "A"}\n{"text": "u", "sensor": "B"}\n'
    result = streamd("produce", "--file", "-", "-c", str(config), input=readings, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sent 2, acked 2, failed 0" in result.stdout
    payloads = [orjson.loads(m.value()) for m in read_all(pipeline_config.kafka.brokers, pipeline_config.kafka.topic)]
    assert sorted(payloads, key=lambda p: p["text"]) == [
        {"id": "r-1", "text": "t", "temperature": 21.5, "sensor": "A"},
        {"text": "u", "sensor": "B"},
    ]


def test_produce_file_with_a_bad_line_names_it_and_sends_nothing(pipeline_config, tmp_path):
    config = write_config(pipeline_config, tmp_path / "config.yaml")
    readings = tmp_path / "readings.ndjson"
    readings.write_text('{"text": "fine"}\n{"text": "fine too"}\n{"text": "broken",\n{"text": "after"}\n')
    result = streamd("produce", "--file", str(readings), "-c", str(config), timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [sentence] = result.stderr.strip().splitlines()
    assert str(readings) in sentence and "line 3" in sentence
    admin = AdminClient({"bootstrap.servers": pipeline_config.kafka.brokers})
    assert pipeline_config.kafka.topic not in admin.list_topics(timeout=10).topics, "not even the topic was created"


def test_produce_takes_either_a_count_or_a_file(tmp_path):
    readings = tmp_path / "readings.ndjson"
    readings.write_text('{"text": "t"}\n')
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert streamd("produce", "-c", str(config)).returncode == 2
    assert streamd("produce", "--count", "1", "--file", str(readings), "-c", str(config)).returncode == 2
    result = streamd("produce", "--file", str(readings), "--source", "s", "-c", str(config))
    assert result.returncode == 2 and "--source" in result.stderr


def test_reload_without_a_supervisor_says_so(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = streamd("reload", "-c", str(config))
    assert result.returncode == 1
    assert "no streamd supervisor is running for state directory" in result.stderr


def test_stop_without_a_supervisor_succeeds_and_says_so(tmp_path):
    # LSB and systemctl: stopping a stopped service is a success, so scripts can stop unconditionally.
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = streamd("stop", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout


def test_status_json_without_a_supervisor_is_a_json_object_saying_so(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = streamd("status", "--json", "-c", str(config))
    assert result.returncode == 3
    answer = orjson.loads(result.stdout)
    assert answer["running"] is False and str(tmp_path / "state") in answer["reason"]


def test_kafka_going_away_in_the_middle_of_verify_is_a_sentence_not_a_traceback(tmp_path, monkeypatch, capsys):
    from streamd import cli, verify
    from streamd.group_offsets import KafkaUnreadable

    def unreadable(*args, **kwargs):
        raise KafkaUnreadable("Kafka did not give the topics' offsets (Local: Timed out)")

    monkeypatch.setattr(verify, "verify", unreadable)
    (tmp_path / "config.yaml").write_text("stack:\n  local: false\n")
    assert cli.main(["verify", "-c", str(tmp_path / "config.yaml")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("streamd: Kafka did not give the topics' offsets") and "Traceback" not in error


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`streamd config --keys | head -1`: no traceback, and the shell's exit code for SIGPIPE."""
    command = subprocess.Popen(
        [sys.executable, "-m", "streamd", "config", "--keys"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    command.stdout.close()  # before the command has printed anything: every write of it fails
    error = command.stderr.read().decode()
    assert command.wait(timeout=60) == 141
    assert "Traceback" not in error and "Exception ignored" not in error, error
