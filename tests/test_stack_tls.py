"""The local stack in tls mode, against the real servers: `streamd start` with `stack: {security: tls}` runs Kafka
with SASL_SSL/SCRAM-SHA-512 only and the store with TLS and a user only, the whole pipeline works over them,
and what lacks TLS or the right password is refused.  Nothing of it may show a password."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pymongo.errors import OperationFailure, PyMongoError

from streamd import config as config_module
from streamd import stack
from streamd.config import Config
from streamd.credentials import StackCredentials, credentials_dir, mongo_client
from streamd.kafka import make_client

from .probes import REPO, STACK_STATE_DIR, free_port, wait_until
from .supervisor_process import SupervisorProcess, api_url, get_json, start_streamd

pytestmark = pytest.mark.integration

SOURCE = "tls-test"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisorProcess]:
    """`streamd start` on a fresh state dir and free ports: the supervisor starts the tls-mode stack itself."""
    directory = tmp_path_factory.mktemp("tls")
    run = uuid.uuid4().hex[:8]
    settings = config_module.from_mapping(
        {
            "state_dir": str(directory / "state"),
            "kafka": {
                "brokers": f"127.0.0.1:{free_port()}",
                "topic": f"tls-{run}",
                "dead_letter_topic": f"tls-{run}.d",
            },
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}", "database": f"tls_{run}", "timeout_ms": 3000},
            "producer": {"enabled": True, "interval": 0.05, "source": SOURCE},
            "consumer": {"processes": 1},
            "analytics": {"enabled": False},
            "api": {"port": free_port(), "workers": 1},
            "supervisor": {"graceful_timeout": 15, "backoff_initial": 0.2, "start_seconds": 0.5},
            "stack": {
                "security": "tls",
                "kafka_controller_port": free_port(),
                "cache_dir": str(STACK_STATE_DIR / "cache"),  # provisioned once for every test: never again
            },
        },
        label="tls test config",
    )
    sup = start_streamd(directory, settings)
    try:
        sup.wait_ready(timeout=90)
        yield sup
    finally:
        if sup.process is not None and sup.process.poll() is None:
            sup.signal(signal.SIGTERM)
            try:
                sup.wait_exit(timeout=40)
            except subprocess.TimeoutExpired:
                sup.kill()
        stack.down(settings)  # nothing should be left, but a failed start must not leave servers behind


def credentials(config: Config) -> StackCredentials:
    return StackCredentials(credentials_dir(config.state_path))


def secrets(config: Config) -> list[str]:
    return [credentials(config).kafka_password(), credentials(config).store_password()]


def kafka_refuses(config: Config, properties: dict) -> bool:
    admin = AdminClient({"bootstrap.servers": config.kafka.brokers, "log_level": 0, **properties})
    try:
        admin.list_topics(timeout=4)
    except KafkaException:
        return True
    return False


def test_the_whole_pipeline_stores_and_serves_messages_over_tls_and_scram(secured: SupervisorProcess) -> None:
    def served() -> list[dict]:
        status, body = get_json(api_url(secured, f"/messages?source={SOURCE}&limit=5"))
        return body["data"] if status == 200 else []

    items = wait_until(served, f"messages through Kafka and the store over TLS; log:\n{secured.log_tail()}", 60)
    assert all(item["source"] == SOURCE for item in items)


def test_the_broker_refuses_plaintext_and_a_wrong_scram_password(secured: SupervisorProcess) -> None:
    config = secured.config
    ca = str(credentials(config).ca_file)
    scram = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": ca}

    assert kafka_refuses(config, {})
    assert kafka_refuses(config, {**scram, "sasl.username": "streamd", "sasl.password": "not-the-password"})
    assert not kafka_refuses(config, {**scram, "sasl.username": "streamd", "sasl.password": secrets(config)[0]})


def test_the_store_refuses_a_client_without_tls_or_without_the_password(secured: SupervisorProcess) -> None:
    config = secured.config
    ca = str(credentials(config).ca_file)
    database, collection = config.mongodb.database, config.mongodb.collection

    with pymongo.MongoClient(config.mongodb.uri, serverSelectionTimeoutMS=2000) as plain, pytest.raises(PyMongoError):
        plain.admin.command("ping")
    secure = {"tls": True, "tlsCAFile": ca, "serverSelectionTimeoutMS": 5000}
    with pymongo.MongoClient(config.mongodb.uri, **secure) as anonymous, pytest.raises(OperationFailure):
        anonymous[database][collection].find_one()
    wrong = {"username": "streamd", "password": "not-the-password", "authSource": "admin"}
    with pymongo.MongoClient(config.mongodb.uri, **secure, **wrong) as client, pytest.raises(OperationFailure):
        client[database][collection].find_one()

    right = {**wrong, "password": secrets(config)[1]}
    with pymongo.MongoClient(config.mongodb.uri, **secure, **right) as client:
        assert client[database][collection].find_one({"source": SOURCE}) is not None


def test_no_password_is_shown_by_streamd_config_or_the_log(secured: SupervisorProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamd", "config", "-c", str(secured.config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "security: tls" in result.stdout
    log = secured.log()
    for secret in secrets(secured.config):
        assert secret not in result.stdout
        assert secret not in log


def test_the_stack_files_are_readable_by_their_owner_only(secured: SupervisorProcess) -> None:
    directory = credentials(secured.config).directory
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir()} == {
        name: 0o600
        for name in (
            "ca.pem",
            "server.pem",
            "server.key",
            "server-key-and-cert.pem",
            "kafka.password",
            "store.password",
        )
    }
    properties = Path(secured.config.state_path, "stack", "kafka", "server.properties")
    assert properties.stat().st_mode & 0o777 == 0o600, "it holds the broker's SCRAM password"


def test_switching_a_stack_between_none_and_tls_never_leaves_it_unusable(tmp_path: Path) -> None:
    ports = {"kafka": free_port(), "store": free_port(), "controller": free_port()}

    def mode(security: str) -> Config:
        return config_module.from_mapping(
            {
                "state_dir": str(tmp_path / "state"),
                "kafka": {"brokers": f"127.0.0.1:{ports['kafka']}"},
                "mongodb": {"uri": f"mongodb://127.0.0.1:{ports['store']}", "timeout_ms": 5000},
                "stack": {
                    "security": security,
                    "kafka_controller_port": ports["controller"],
                    "cache_dir": str(STACK_STATE_DIR / "cache"),
                },
            },
            label=f"{security} stack",
        )

    def kafka_serves(config: Config) -> bool:
        return bool(make_client(AdminClient, config.kafka, "test").list_topics(timeout=10).brokers)

    def kept(config: Config) -> dict | None:
        with mongo_client(config.mongodb, serverSelectionTimeoutMS=5000) as client:
            return client.switch.kept.find_one({"_id": "before"})

    plain, secure = mode("none"), mode("tls")
    try:
        assert stack.ensure_running(plain)
        with mongo_client(plain.mongodb) as client:
            client.switch.kept.insert_one({"_id": "before"})
        stack.down(plain)

        with pytest.raises(stack.StackError, match="has no SCRAM user; set stack.security: none again, or delete"):
            stack.ensure_running(secure)
        assert not any(entry.answering for entry in stack.status(secure)), "nothing half-started"
        shutil.rmtree(tmp_path / "state" / "stack" / "kafka")  # what the sentence says to do

        assert stack.ensure_running(secure)
        assert kafka_serves(secure) and kept(secure) is not None, "the store keeps its data and gains its user"
        assert kafka_refuses(secure, {})
        stack.down(secure)

        assert stack.ensure_running(plain)
        assert kafka_serves(plain) and kept(plain) is not None, "back to none: no TLS, no password"
    finally:
        stack.down(plain)
