"""Security settings: what each client gets from the kafka and mongodb keys, from *_file secrets, from environment
variables, and from the local stack in tls mode; and the refusals a user can run into, none of which shows a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.config import ConfigError
from streamd.credentials import StackCredentials, credentials_dir, kafka_security, mongo_client, mongo_security
from streamd.kafka import client_settings
from streamd.stack import tls

PASSWORD = "correct-horse-battery"


def written(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_without_security_keys_clients_get_no_security_settings():
    settings = config_module.from_mapping({})
    assert kafka_security(settings.kafka) == {}
    assert mongo_security(settings.mongodb) == {}


def test_kafka_keys_become_librdkafka_properties(tmp_path):
    ca = written(tmp_path, "pem", "ca.pem")
    settings = config_module.from_mapping(
        {
            "kafka": {
                "security_protocol": "sasl_ssl",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "svc",
                "sasl_password": PASSWORD,
                "tls_ca_file": str(ca),
            }
        }
    )
    assert kafka_security(settings.kafka) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca),
    }


def test_keys_the_user_set_are_passed_on_even_when_kafka_client_or_the_uri_asks_for_the_protocol(tmp_path):
    ca = written(tmp_path, "pem", "ca.pem")
    settings = config_module.from_mapping(
        {
            "kafka": {"client": {"security.protocol": "SASL_SSL"}, "sasl_username": "svc", "sasl_password": PASSWORD},
            "mongodb": {"uri": "mongodb://db:27017/?tls=true", "tls_ca_file": str(ca)},
        }
    )
    properties = client_settings(settings.kafka, "consumer")
    assert (properties["security.protocol"], properties["sasl.username"], properties["sasl.password"]) == (
        "SASL_SSL",
        "svc",
        PASSWORD,
    )
    assert mongo_security(settings.mongodb) == {"tlsCAFile": str(ca)}


def test_kafka_client_overrides_the_security_keys_and_the_role_overrides_both():
    settings = config_module.from_mapping(
        {"kafka": {"security_protocol": "SSL", "client": {"security.protocol": "SASL_SSL", "acks": "1"}}}
    )
    properties = client_settings(settings.kafka, "producer", required={"acks": "all"})
    assert properties["security.protocol"] == "SASL_SSL"
    assert properties["acks"] == "all"


# --- the local stack in tls mode ------------------------------------------------------------------------------


@pytest.fixture
def tls_config(tmp_path):
    return config_module.from_mapping({"state_dir": str(tmp_path / "state"), "stack": {"security": "tls"}})


def test_in_tls_mode_clients_use_the_stacks_ca_user_and_passwords(tls_config):
    stack = tls.ensure(credentials_dir(tls_config.state_path))
    assert kafka_security(tls_config.kafka) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "streamd",
        "sasl.password": stack.kafka_password(),
        "ssl.ca.location": str(stack.ca_file),
    }
    assert mongo_security(tls_config.mongodb) == {
        "tls": True,
        "tlsCAFile": str(stack.ca_file),
        "username": "streamd",
        "password": stack.store_password(),
        "authSource": "admin",
    }


def test_in_tls_mode_a_key_the_user_set_wins_over_the_stacks_value_key_by_key(tmp_path):
    settings = config_module.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "stack": {"security": "tls"},
            "kafka": {"sasl_username": "alice", "sasl_password": PASSWORD},
            "mongodb": {"username": "bob", "password": PASSWORD},
        }
    )
    stack = tls.ensure(credentials_dir(settings.state_path))
    properties = kafka_security(settings.kafka)
    assert (properties["sasl.username"], properties["sasl.password"]) == ("alice", PASSWORD)
    assert properties["ssl.ca.location"] == str(stack.ca_file)
    options = mongo_security(settings.mongodb)
    assert (options["username"], options["password"], options["tlsCAFile"]) == ("bob", PASSWORD, str(stack.ca_file))


def test_in_tls_mode_before_the_stack_made_its_credentials_a_client_gets_a_sentence_saying_so(tls_config):
    with pytest.raises(ConfigError, match=r"stack.security is tls .* start the local stack once"):
        kafka_security(tls_config.kafka)
    with pytest.raises(ConfigError, match=r"stack.security is tls .* start the local stack once"):
        mongo_client(tls_config.mongodb)


def test_the_stack_credentials_are_made_once_and_owner_only(tmp_path):
    directory = tmp_path / "stack" / "tls"
    first = tls.ensure(directory)
    password = first.kafka_password()
    assert tls.ensure(directory).kafka_password() == password, "made once: the servers' users depend on it"
    assert first.kafka_password() != first.store_password()
    assert directory.stat().st_mode & 0o777 == 0o700
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in directory.iterdir())
    assert not list(directory.parent.glob("*.partial"))
    assert isinstance(first, StackCredentials)


def test_the_server_certificate_is_signed_by_the_ca_for_the_loopback_names(tmp_path):
    from cryptography import x509

    stack = tls.ensure(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(stack.ca_file.read_bytes())
    server = x509.load_pem_x509_certificate(stack.cert_file.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(address) for address in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
