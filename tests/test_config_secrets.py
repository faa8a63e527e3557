"""Secrets in the config: read from *_file keys when it loads, from environment variables as plain text, and
refused in one sentence naming the key and the file, never quoting the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.config import ConfigError
from streamd.credentials import kafka_security, mongo_security

PASSWORD = "correct-horse-battery"


def written(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_password_file_is_read_when_the_config_loads_relative_to_the_config_file(tmp_path):
    written(tmp_path, f"  {PASSWORD}  \nsecond line ignored\n", "kafka.secret")
    written(tmp_path, PASSWORD + "\n", "mongo.secret")
    path = written(
        tmp_path,
        "kafka: {security_protocol: SASL_PLAINTEXT, sasl_username: svc, sasl_password_file: kafka.secret}\n"
        "mongodb: {username: app, password_file: mongo.secret}\n",
    )
    settings = config_module.load(path, environ={})
    assert kafka_security(settings.kafka)["sasl.password"] == PASSWORD
    assert mongo_security(settings.mongodb) == {"username": "app", "password": PASSWORD}
    assert settings.kafka.sasl_password_file == str(tmp_path / "kafka.secret")
    assert PASSWORD not in repr(settings), "a config printed while debugging shows no secret"


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, r"mongodb.password_file: cannot read .*nope.*No such file"), ("\n", "has no password on its first line")],
)
def test_an_unreadable_or_empty_password_file_is_one_sentence_naming_the_key_and_file(tmp_path, content, expected):
    if content is not None:
        written(tmp_path, content, "nope")
    path = written(tmp_path, "mongodb: {username: app, password_file: nope}\n")
    with pytest.raises(ConfigError, match=expected) as caught:
        config_module.load(path, environ={})
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_a_secret_given_both_as_a_key_and_as_a_file_is_refused(tmp_path):
    written(tmp_path, PASSWORD, "kafka.secret")
    path = written(tmp_path, "kafka: {sasl_password_file: kafka.secret}\n")
    with pytest.raises(ConfigError, match="kafka.sasl_password and kafka.sasl_password_file are both set") as caught:
        config_module.load(path, environ={"STREAMD_KAFKA_SASL_PASSWORD": "from-env"})
    assert "from-env" not in str(caught.value) and PASSWORD not in str(caught.value)


def test_a_password_from_the_environment_is_plain_text_whatever_yaml_would_make_of_it():
    for text in ("0123", "yes", "a: b", "[x"):
        settings = config_module.load(None, environ={"STREAMD_MONGODB_PASSWORD": text})
        assert settings.mongodb.password == text


def test_a_secret_of_the_wrong_type_is_refused_without_showing_it(tmp_path):
    path = written(tmp_path, "kafka: {sasl_password: 98765432}\n")
    with pytest.raises(ConfigError, match="kafka.sasl_password: expected the secret as text") as caught:
        config_module.load(path, environ={})
    assert "98765432" not in str(caught.value)


def test_a_config_survives_the_round_trip_through_to_mapping_with_its_password_file(tmp_path):
    written(tmp_path, PASSWORD, "mongo.secret")
    settings = config_module.load(written(tmp_path, "mongodb: {password_file: mongo.secret}\n"), environ={})
    again = config_module.from_mapping(config_module.to_mapping(settings))
    assert again.mongodb == settings.mongodb
    assert PASSWORD not in str(config_module.to_mapping(settings))
