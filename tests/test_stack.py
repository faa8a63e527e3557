"""The local stack: real Kafka and store processes on private ports, and the refusals a user can run into."""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest
from confluent_kafka.admin import AdminClient

from streamd import config as config_module
from streamd import stack
from streamd.config import Config
from streamd.lifecycle import Shutdown
from streamd.stack import kafka_nodes, kafka_server, store_server, tls
from streamd.stack.endpoint import Endpoint
from streamd.stack.pidfile import pid_path
from streamd.stack.provisioning import MARKER
from streamd.stack.store_server import STORE

from .probes import STACK_STATE_DIR, free_port, wait_until

SHARED_CACHE = STACK_STATE_DIR / "cache"


def private_config(tmp_path: Path, **stack_settings: object) -> Config:
    """Ports nobody else uses and a state dir of this test's own; the artifact cache is shared."""
    return config_module.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}"},
            "stack": {"kafka_controller_port": free_port(), "cache_dir": str(SHARED_CACHE), **stack_settings},
            "supervisor": {"graceful_timeout": 20},
        },
        label="test stack",
    )


def answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def store_address(config: Config) -> str:
    return config.mongodb.uri.removeprefix("mongodb://")


def process_exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Something that is not Kafka or MongoDB holding a loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def path_with_only(tmp_path: Path, *tools: str) -> str:
    """A PATH directory offering just the named tools (plus nothing else streamd could find)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        target = next(Path(d, tool) for d in os.environ["PATH"].split(os.pathsep) if Path(d, tool).is_file())
        (bin_dir / tool).symlink_to(target)
    return str(bin_dir)


# --- server.properties and cluster ids ---------------------------------------------------------------


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def node_properties(settings: Config, node_id: int = 1) -> dict[str, str]:
    """The server.properties the product path writes for one node of the configured stack."""
    nodes = kafka_nodes.cluster_nodes(settings)
    node = nodes[node_id - 1]
    home = kafka_nodes.node_home(settings, node, nodes)
    return parse_properties(kafka_server.server_properties(settings, node, nodes, home))


def test_server_properties_bind_the_configured_broker_and_controller(tmp_path: Path) -> None:
    settings = config_module.from_mapping(
        {"state_dir": str(tmp_path), "kafka": {"brokers": "127.0.0.1:19092"}, "stack": {"kafka_controller_port": 19093}}
    )
    properties = node_properties(settings)

    assert properties["process.roles"] == "broker,controller"
    assert properties["node.id"] == "1"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert properties["controller.listener.names"] == "CONTROLLER"
    assert properties["log.dirs"] == str(tmp_path / "stack" / "kafka" / "data")
    for single_node in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert properties[single_node] == "1"
    assert properties["group.initial.rebalance.delay.ms"] == "0"
    assert properties["num.partitions"] == "3"


def test_localhost_broker_binds_ipv4_loopback_and_advertises_the_configured_name(tmp_path: Path) -> None:
    settings = config_module.from_mapping({"state_dir": str(tmp_path), "kafka": {"brokers": "localhost:9192"}})
    properties = node_properties(settings)

    assert properties["listeners"].startswith("PLAINTEXT://127.0.0.1:9192,")
    assert properties["advertised.listeners"] == "PLAINTEXT://localhost:9192"


def test_in_tls_mode_the_broker_port_takes_only_sasl_ssl_and_the_controller_stays_on_loopback(tmp_path: Path) -> None:
    settings = config_module.from_mapping(
        {
            "state_dir": str(tmp_path),
            "kafka": {"brokers": "127.0.0.1:19092"},
            "stack": {"kafka_controller_port": 19093, "security": "tls"},
        }
    )
    stack_tls = tls.ensure(tmp_path / "stack" / "tls")
    properties = node_properties(settings)

    assert properties["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092"
    assert properties["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert properties["inter.broker.listener.name"] == "SASL_SSL"
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["ssl.keystore.type"] == properties["ssl.truststore.type"] == "PEM"
    assert properties["ssl.truststore.location"] == str(stack_tls.ca_file)
    assert stack_tls.kafka_password() in properties["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]


def test_in_tls_mode_the_store_listens_with_tls_only_and_its_password_stays_out_of_argv(tmp_path: Path) -> None:
    settings = private_config(tmp_path, security="tls")
    if STORE.provision(settings) is None:
        pytest.skip("the local store is mongod")
    service = store_server.service(settings)
    password = tls.ensure(tmp_path / "state" / "stack" / "tls").store_password()

    assert "--listen-addr=" in service.argv, "no plaintext listener"
    assert any(argument.startswith("--listen-tls=127.0.0.1:") for argument in service.argv)
    assert "--test-enable-new-auth" in service.argv
    assert service.env == {"FERRETDB_SETUP_PASSWORD": password}
    assert not any(password in argument for argument in service.argv)


def test_the_store_is_built_at_any_address_for_the_harness_with_its_prefix(tmp_path: Path) -> None:
    settings = private_config(tmp_path)
    if STORE.provision(settings) is None:
        pytest.skip("the local store is mongod")
    address = Endpoint("198.18.77.21", 27017)
    service = store_server.store_service_at(settings, address, tmp_path / "store-1", ["ip", "netns", "exec", "s1"])

    assert service.argv[:4] == ["ip", "netns", "exec", "s1"]
    assert "--listen-addr=198.18.77.21:27017" in service.argv
    assert f"--state-dir={tmp_path / 'store-1'}" in service.argv
    assert service.endpoint == "198.18.77.21:27017" and (tmp_path / "store-1" / "data").is_dir()
    assert [argument for argument in store_server.service(settings).argv if "listen" in argument] == [
        f"--listen-addr={store_address(settings)}"
    ], "the product's store is the same builder at the configured address"


def test_a_kafka_storage_made_without_tls_is_not_silently_started_with_it(tmp_path: Path) -> None:
    settings = private_config(tmp_path, security="tls")
    data = kafka_server.data_dir(settings)
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("formatted while stack.security was none\n")

    with pytest.raises(stack.StackError, match=r"made without it, so it has no SCRAM user; set stack.security: none"):
        kafka_server.services(settings)


def test_cluster_ids_are_kafka_uuids_that_never_look_like_an_option() -> None:
    for _ in range(500):
        cluster_id = kafka_server.new_cluster_id()
        assert len(cluster_id) == 22 and "=" not in cluster_id
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


# --- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("kafka", "brokers", "10.1.2.3:9092"),
        ("kafka", "brokers", "127.0.0.1:9092,127.0.0.1:9094"),
        ("mongodb", "uri", "mongodb://db.example.com:27017"),
    ],
)
def test_a_local_server_is_only_started_on_one_loopback_address(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    settings = config_module.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "kafka": {"brokers": f"127.0.0.1:{free_port()}"},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}"},
            "stack": {"local": True, "cache_dir": str(tmp_path / "cache")},
        }
        | {section: {key: value}}
    )

    with pytest.raises(stack.StackError, match=rf"{section}\.{key}.*(loopback|single node).*stack\.local: false"):
        stack.ensure_running(settings)
    assert not (tmp_path / "cache").exists(), "nothing is downloaded for an address streamd will not serve"


def test_local_true_refuses_a_port_held_by_something_else(tmp_path: Path, listener: socket.socket) -> None:
    settings = config_module.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "kafka": {"brokers": f"127.0.0.1:{listener.getsockname()[1]}"},
            "stack": {"local": True, "cache_dir": str(SHARED_CACHE)},
        }
    )

    with pytest.raises(stack.StackError, match=r"kafka\.brokers .* already served by another process"):
        stack.services_to_run(settings)


def test_local_false_never_starts_anything(tmp_path: Path) -> None:
    settings = private_config(tmp_path, local=False)

    assert stack.services_to_run(settings) == []
    assert stack.ensure_running(settings) is False
    assert not answers(settings.kafka.brokers) and not answers(store_address(settings))
    assert not (tmp_path / "state").exists()
    assert [entry.answering for entry in stack.status(settings)] == [False, False]


def test_missing_mvn_names_the_tool_and_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = private_config(tmp_path, cache_dir=str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", path_with_only(tmp_path, "java"))

    with pytest.raises(stack.StackError) as raised:
        stack.provision(settings)

    message = str(raised.value)
    assert message.startswith("mvn is not on PATH")
    assert "kafka.brokers" in message and "mongodb.uri" in message and "stack.local: false" in message
    assert not list((tmp_path / "empty-cache").glob(f"*/{MARKER}"))


def test_missing_go_without_mongod_names_the_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    settings = config_module.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "kafka": {"brokers": f"127.0.0.1:{listener.getsockname()[1]}"},  # answers: only the store is needed
            "mongodb": {"uri": f"mongodb://127.0.0.1:{free_port()}"},
            "stack": {"cache_dir": str(tmp_path / "empty-cache")},
        }
    )
    monkeypatch.setenv("PATH", path_with_only(tmp_path))

    assert stack.needed(settings) == ["store"]
    with pytest.raises(stack.StackError, match=r"^go is not on PATH.*FerretDB.*stack\.local: false"):
        stack.ensure_running(settings)


# --- run_service, with a plain process standing in for the server's process handling -----------------


def python_service(tmp_path: Path, code: str, stop_timeout: float = 5.0) -> stack.Service:
    return stack.Service(
        name="store",
        argv=[sys.executable, "-c", code],
        env={"GREETING": "hello"},
        cwd=tmp_path,
        stop_timeout=stop_timeout,
    )


def run_in_thread(service: stack.Service, shutdown: Shutdown) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(stack.run_service(service, shutdown)))
    thread.start()
    return thread, result


def test_run_service_relays_output_into_logging_with_its_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = "import os; print(os.environ['GREETING']); print('WARN disk almost full (kafka.log.LogManager)')"
    with caplog.at_level(logging.INFO, logger="streamd.stack"):
        assert stack.run_service(python_service(tmp_path, code), Shutdown()) == 0

    relayed = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if "started" not in r.getMessage()]
    assert ("streamd.stack.store", logging.INFO, "hello") in relayed
    assert ("streamd.stack.store", logging.WARNING, "WARN disk almost full (kafka.log.LogManager)") in relayed


def test_run_service_returns_the_code_of_a_server_that_exits_by_itself(tmp_path: Path) -> None:
    assert stack.run_service(python_service(tmp_path, "raise SystemExit(7)"), Shutdown()) == 7
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert stack.run_service(python_service(tmp_path, killed), Shutdown()) == 128 + signal.SIGKILL


def test_run_service_kills_a_server_that_ignores_sigterm_after_its_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    shutdown = Shutdown()
    caplog.set_level(logging.INFO, logger="streamd.stack")
    thread, result = run_in_thread(python_service(tmp_path, code, stop_timeout=0.5), shutdown)
    wait_until(lambda: "up" in caplog.messages, "the server to ignore SIGTERM")
    started = time.monotonic()
    shutdown.request()
    thread.join(timeout=10)

    assert result == [128 + signal.SIGKILL]
    assert time.monotonic() - started < 5


KEEPER = """
import sys
from pathlib import Path
from streamd.lifecycle import Shutdown
from streamd.stack import Service, run_service

pid_file = sys.argv[1]
server = f"import os, time; open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(60)"
run_service(Service("store", [sys.executable, "-c", server], {}, Path(pid_file).parent), Shutdown().install())
"""


def test_a_server_dies_with_the_child_that_runs_it(tmp_path: Path) -> None:
    """If the supervisor SIGKILLs the child, PR_SET_PDEATHSIG must take the server down too."""
    pid_file = tmp_path / "server.pid"
    child = subprocess.Popen([sys.executable, "-c", KEEPER, str(pid_file)])
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", seconds=10)
        server_pid = int(pid_file.read_text())
        assert process_exists(server_pid)
        child.kill()
        child.wait()
        assert wait_for(lambda: not process_exists(server_pid), seconds=5), "the server outlived its keeper"
    finally:
        child.kill()
        child.wait()


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- real servers ----------------------------------------------------------------------------------------


def kafka_brokers(config: Config) -> dict:
    return AdminClient({"bootstrap.servers": config.kafka.brokers}).list_topics(timeout=10).brokers


def store_ping(config: Config) -> dict:
    with pymongo.MongoClient(config.mongodb.uri, serverSelectionTimeoutMS=5000) as client:
        return client.admin.command("ping")


@pytest.mark.integration
def test_a_fresh_stack_comes_up_answers_and_goes_away(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    settings = private_config(tmp_path)
    try:
        assert stack.ensure_running(settings) is True
        assert kafka_brokers(settings)
        assert store_ping(settings)["ok"] == 1.0
        pids = {entry.name: entry.pid for entry in stack.status(settings)}
        assert all(process_exists(pid) for pid in pids.values())
        assert [entry.answering for entry in stack.status(settings)] == [True, True]

        assert stack.ensure_running(settings) is False, "endpoints that answer are used, not restarted"
    finally:
        stack.down(settings)

    assert not any(process_exists(pid) for pid in pids.values())
    assert not answers(settings.kafka.brokers) and not answers(store_address(settings))
    assert not pid_path(settings, "kafka").exists() and not pid_path(settings, "store").exists()

    capfd.readouterr()
    started = time.monotonic()
    try:
        assert stack.ensure_running(settings) is True
        elapsed = time.monotonic() - started
        assert kafka_brokers(settings)
    finally:
        stack.down(settings)
    progress = capfd.readouterr().err
    assert "mvn" not in progress and "go build" not in progress and "formatting" not in progress, progress
    assert elapsed < 30, "a second start reuses the cache and the formatted storage"


@pytest.mark.integration
def test_a_server_that_fails_to_start_is_reported_with_its_log_and_nothing_is_left_running(tmp_path: Path) -> None:
    settings = private_config(tmp_path, kafka_heap="lots")

    with pytest.raises(stack.StackError, match=r"(?s)the local kafka exited with code 1 .*Last lines of .*server\.log"):
        stack.ensure_running(settings)

    assert not answers(settings.kafka.brokers) and not answers(store_address(settings))
    assert not pid_path(settings, "kafka").exists() and not pid_path(settings, "store").exists()


@pytest.mark.integration
def test_supervised_servers_stop_cleanly_when_asked(tmp_path: Path) -> None:
    settings = private_config(tmp_path)
    services = stack.services_to_run(settings)
    assert [service.name for service in services] == ["kafka", "store"]
    shutdown = Shutdown()
    runs = [run_in_thread(service, shutdown) for service in services]
    try:
        stack.wait_ready(services, timeout=60)
        assert kafka_brokers(settings)
        assert store_ping(settings)["ok"] == 1.0
    finally:
        shutdown.request()
        for thread, _ in runs:
            thread.join(timeout=30)

    assert [result for _, result in runs] == [[0], [0]]
    assert not answers(settings.kafka.brokers) and not answers(store_address(settings))


@pytest.mark.integration
def test_the_session_stack_is_reused_rather_than_started_again(local_stack: Config) -> None:
    assert stack.ensure_running(local_stack) is False
    assert [entry.answering for entry in stack.status(local_stack)] == [True, True]
    assert kafka_brokers(local_stack)
    assert store_ping(local_stack)["ok"] == 1.0


def test_status_and_messages_name_the_store_by_host_never_by_its_uri_with_the_password():
    settings = config_module.from_mapping({"mongodb": {"uri": "mongodb://app:s3cret@127.0.0.1:27999/db"}})
    assert STORE.address(settings) == "127.0.0.1:27999"
