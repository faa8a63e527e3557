"""The API over HTTPS: api.tls_cert_file and api.tls_key_file (and api.tls_ca_file for client certificates).

The certificates are made for each test by a throwaway CA (trustme); the server is the real Gunicorn master
and worker, serving on loopback.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from streamd import config as config_module
from streamd.config import Config, ConfigError
from streamd.store import MessageStore

from .probes import wait_until
from .test_api import kill_server, start_server, stored


@dataclass
class Certificates:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "api.crt", tmp_path / "api.key", tmp_path / "ca.crt"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Certificates(ca, cert, key, ca_file)


def with_api(config: Config, **api: object) -> Config:
    mapping = config_module.to_mapping(config)
    mapping["api"] |= api
    return config_module.from_mapping(mapping, label="test config")


# --- the keys --------------------------------------------------------------------------------------------


def test_a_certificate_without_its_key_names_both_keys(offline, certificates):
    with pytest.raises(ConfigError, match=r"api\.tls_cert_file is set but api\.tls_key_file is not"):
        with_api(offline, tls_cert_file=str(certificates.cert))
    with pytest.raises(ConfigError, match=r"api\.tls_key_file is set but api\.tls_cert_file is not"):
        with_api(offline, tls_key_file=str(certificates.key))


def test_a_missing_file_is_named_with_its_key_and_path(offline, certificates, tmp_path):
    missing = tmp_path / "nowhere.key"
    with pytest.raises(ConfigError, match=rf"api\.tls_key_file: {missing} cannot be read"):
        with_api(offline, tls_cert_file=str(certificates.cert), tls_key_file=str(missing))


def test_a_key_of_another_certificate_is_refused(offline, certificates, tmp_path):
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    with pytest.raises(ConfigError, match=r"do not load as a PEM certificate and its private key"):
        with_api(offline, tls_cert_file=str(certificates.cert), tls_key_file=str(other))


def test_client_certificates_need_https(offline, certificates):
    with pytest.raises(ConfigError, match=r"api\.tls_ca_file .* set api\.tls_cert_file and api\.tls_key_file"):
        with_api(offline, tls_ca_file=str(certificates.ca_file))


def test_relative_paths_are_read_beside_the_config_file(certificates, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("api:\n  tls_cert_file: api.crt\n  tls_key_file: api.key\n")
    config = config_module.load(path, environ={})
    assert config.resolve_path(config.api.tls_cert_file) == certificates.cert


# --- the server ------------------------------------------------------------------------------------------


def https_get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, dict]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def answers_https(port: int, context: ssl.SSLContext) -> bool:
    try:
        return https_get(port, "/health", context)[0] == 200
    except OSError:
        return False


@pytest.fixture
def https_server(
    pipeline_config: Config, store: MessageStore, certificates: Certificates, tmp_path: Path
) -> Iterator[tuple[Config, subprocess.Popen]]:
    config = with_api(pipeline_config, tls_cert_file=str(certificates.cert), tls_key_file=str(certificates.key))
    store.insert_batch([stored("m-1", datetime(2024, 5, 1, tzinfo=UTC))])
    process = start_server(config, tmp_path, workers=1)
    try:
        context = certificates.client_context()
        wait_until(lambda: answers_https(config.api.port, context) or process.poll() is not None, "HTTPS", 30)
        assert process.poll() is None, (tmp_path / "api.log").read_text()
        yield config, process
    finally:
        kill_server(process)


@pytest.mark.integration
def test_health_and_messages_answer_over_https_with_the_ca(https_server, certificates):
    config, _ = https_server
    context = certificates.client_context()
    assert https_get(config.api.port, "/health", context) == (200, {"status": "ok"})
    status, body = https_get(config.api.port, "/messages", context)
    assert status == 200 and [message["id"] for message in body["data"]] == ["m-1"]


@pytest.mark.integration
def test_two_requests_share_one_tls_connection(https_server, certificates):
    config, _ = https_server
    connection = http.client.HTTPSConnection(
        "127.0.0.1", config.api.port, timeout=10, context=certificates.client_context()
    )
    try:
        connection.request("GET", "/health")
        first = connection.getresponse()
        assert first.status == 200 and first.read() == b'{"status":"ok"}'
        sock = connection.sock
        connection.request("GET", "/messages?limit=1")  # http.client would reconnect if the server had closed
        second = connection.getresponse()
        assert second.status == 200 and json.loads(second.read())["count"] == 1
        assert connection.sock is sock, "HTTP/1.1 keep-alive: the second request used the first one's connection"
    finally:
        connection.close()


@pytest.mark.integration
def test_the_https_port_does_not_answer_in_clear_text(https_server):
    config, _ = https_server
    with socket.create_connection(("127.0.0.1", config.api.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert b'"status":"ok"' not in answer


@pytest.mark.integration
def test_tls_clients_that_never_hang_up_do_not_hold_the_probes(https_server, certificates):
    config, _ = https_server
    context = certificates.client_context()
    held = []
    started = time.monotonic()
    try:
        for _ in range(10):
            sock = context.wrap_socket(
                socket.create_connection(("127.0.0.1", config.api.port), timeout=10), server_hostname="127.0.0.1"
            )
            sock.sendall(b"GET /messages HTTP/1.0\r\n\r\n")
            held.append(sock)
        for sock in held:
            answer = b""
            while chunk := sock.recv(65536):  # the server ends each answer; these clients keep their socket
                answer += chunk
            assert answer.split(b"\r\n", 1)[0].endswith(b" 200 OK"), answer[:80]
        health = https_get(config.api.port, "/health", context)
        elapsed = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()

    assert health == (200, {"status": "ok"})
    # Lingering on the loop that hands out every request would cost up to 2 s per client: 20 s for these 10.
    assert elapsed < 10, f"10 answers and /health took {elapsed:.1f} s for TLS clients that keep their sockets open"


@pytest.mark.integration
def test_with_a_ca_file_only_clients_with_a_certificate_it_signed_are_served(
    pipeline_config, store, certificates, tmp_path
):
    config = with_api(
        pipeline_config,
        tls_cert_file=str(certificates.cert),
        tls_key_file=str(certificates.key),
        tls_ca_file=str(certificates.ca_file),
    )
    anonymous = certificates.client_context()
    known = certificates.client_context()
    certificates.ca.issue_cert("client@example.org").configure_cert(known)
    process = start_server(config, tmp_path, workers=1)
    try:
        wait_until(lambda: answers_https(config.api.port, known) or process.poll() is not None, "HTTPS", 30)
        assert process.poll() is None, (tmp_path / "api.log").read_text()
        assert https_get(config.api.port, "/health", known) == (200, {"status": "ok"})
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(config.api.port, "/health", anonymous)
    finally:
        kill_server(process)
