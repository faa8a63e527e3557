"""Secrets never shown: what `streamd config` and error sentences print of a config holding credentials."""

from __future__ import annotations

import string

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd import config as config_module
from streamd.masking import MASK
from streamd.redaction import masked_property, masked_uri, shown_config

from .test_cli import streamd

SECRET_CLIENT = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "PLAIN",
    "sasl.username": "svc-streamd",
    "sasl.password": "kafka-hunter2",
    "ssl.key.password": "key-hunter2",
    "ssl.keystore.password": "store-hunter2",
    "sasl.oauthbearer.client.secret": "oauth-hunter2",
}


def test_the_password_in_a_mongodb_uri_is_masked_and_the_rest_kept():
    assert masked_uri("mongodb://alice:s3cret@db1:27017,db2:27017/app?authSource=admin") == (
        f"mongodb://alice:{MASK}@db1:27017,db2:27017/app?authSource=admin"
    )
    assert (
        masked_uri("mongodb+srv://alice:s3cret@cluster.example.net/")
        == f"mongodb+srv://alice:{MASK}@cluster.example.net/"
    )
    assert masked_uri("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"
    assert masked_uri("mongodb://alice@db:27017/?authMechanism=MONGODB-X509") == (
        "mongodb://alice@db:27017/?authMechanism=MONGODB-X509"
    )
    assert "k3y" not in masked_uri("mongodb://db/?tls=true&tlsCertificateKeyFilePassword=k3y")


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=string.ascii_letters + string.digits + "%!$&'()*+,;=:/?#[]@", min_size=6, max_size=30).filter(
        lambda password: password not in "mongodb://alice:@db.example:27017/app"
    )
)
def test_no_password_survives_masking_even_one_left_unescaped(password):
    uri = f"mongodb://alice:{password}@db.example:27017/app"
    assert password not in masked_uri(uri)


def test_kafka_client_properties_holding_secrets_are_masked_and_the_others_kept():
    shown = {key: masked_property(key, value) for key, value in SECRET_CLIENT.items()}
    assert shown["security.protocol"] == "SASL_SSL" and shown["sasl.username"] == "svc-streamd"
    for key in ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"):
        assert shown[key] == MASK, key


def test_shown_config_masks_every_secret_and_leaves_the_config_itself_alone():
    config = config_module.from_mapping(
        {"mongodb": {"uri": "mongodb://alice:mongo-hunter2@db:27017"}, "kafka": {"client": SECRET_CLIENT}}
    )
    text = yaml.safe_dump(shown_config(config))
    assert "hunter2" not in text
    assert shown_config(config)["mongodb"]["uri"] == f"mongodb://alice:{MASK}@db:27017"
    assert config.mongodb.uri == "mongodb://alice:mongo-hunter2@db:27017"
    assert config.kafka.client["sasl.password"] == "kafka-hunter2"


def test_streamd_config_prints_no_secret(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {"mongodb": {"uri": "mongodb://alice:mongo-hunter2@db:27017"}, "kafka": {"client": SECRET_CLIENT}}
        )
    )
    result = streamd("config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    printed = yaml.safe_load(result.stdout)
    assert printed["mongodb"]["uri"] == f"mongodb://alice:{MASK}@db:27017"
    assert printed["kafka"]["client"]["sasl.password"] == MASK
    assert printed["kafka"]["client"]["sasl.username"] == "svc-streamd"


def test_shown_config_masks_the_security_keys_and_keeps_their_files(tmp_path):
    (tmp_path / "secret").write_text("file-hunter2\n")
    config = config_module.from_mapping(
        {"kafka": {"sasl_password": "key-hunter2"}, "mongodb": {"password_file": str(tmp_path / "secret")}}
    )
    shown = shown_config(config)
    assert shown["kafka"]["sasl_password"] == MASK
    assert shown["mongodb"]["password"] is None and shown["mongodb"]["password_file"] == str(tmp_path / "secret")
    assert "hunter2" not in yaml.safe_dump(shown)
