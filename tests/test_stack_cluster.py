"""The local Kafka as a cluster of KRaft nodes: how the config lays the nodes out, what each node is told, and a
real 3-node cluster that keeps every acknowledged message while one node is killed."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from streamd import config as config_module
from streamd import stack
from streamd.config import Config
from streamd.kafka import ensure_topic
from streamd.plan import service_children
from streamd.stack import kafka_nodes, kafka_server
from streamd.stack.endpoint import Endpoint
from streamd.stack.kafka_nodes import KafkaNode
from streamd.stack.pidfile import owned_pid, write_pid

from .probes import STACK_STATE_DIR, free_port, read_all, wait_until

SHARED_CACHE = STACK_STATE_DIR / "cache"


def cluster_config(state_dir: Path, brokers: str, controller_port: int = 19093) -> Config:
    return config_module.from_mapping(
        {
            "state_dir": str(state_dir),
            "kafka": {"brokers": brokers},
            "stack": {"kafka_nodes": 3, "kafka_controller_port": controller_port},
        },
        label="cluster test",
    )


THREE = "127.0.0.1:19092,127.0.0.1:19192,127.0.0.1:19292"


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def properties_of(settings: Config, node_id: int) -> dict[str, str]:
    nodes = kafka_nodes.cluster_nodes(settings)
    node = nodes[node_id - 1]
    home = kafka_nodes.node_home(settings, node, nodes)
    return parse_properties(kafka_server.server_properties(settings, node, nodes, home))


# --- the layout the config asks for -----------------------------------------------------------------------


def test_node_i_serves_the_ith_broker_and_the_ith_controller_port(tmp_path: Path) -> None:
    nodes = kafka_nodes.cluster_nodes(cluster_config(tmp_path, THREE))

    assert nodes == [
        KafkaNode(1, Endpoint("127.0.0.1", 19092), Endpoint("127.0.0.1", 19093)),
        KafkaNode(2, Endpoint("127.0.0.1", 19192), Endpoint("127.0.0.1", 19094)),
        KafkaNode(3, Endpoint("127.0.0.1", 19292), Endpoint("127.0.0.1", 19095)),
    ]
    assert [kafka_nodes.node_name(node, nodes) for node in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert kafka_nodes.node_home(cluster_config(tmp_path, THREE), nodes[1], nodes) == tmp_path / "stack" / "kafka-2"


def test_a_single_node_keeps_the_name_and_home_it_always_had(tmp_path: Path) -> None:
    settings = config_module.from_mapping({"state_dir": str(tmp_path)})
    nodes = kafka_nodes.cluster_nodes(settings)

    assert [kafka_nodes.node_name(node, nodes) for node in nodes] == ["kafka"]
    assert kafka_nodes.node_home(settings, nodes[0], nodes) == kafka_server.home_dir(settings)


@pytest.mark.parametrize(
    ("brokers", "controller_port", "refusal"),
    [
        ("127.0.0.1:19092,127.0.0.1:19192", 19093, r"kafka_nodes is 3 but kafka\.brokers lists 2 brokers.*"
         r"127\.0\.0\.1:9092,127\.0\.0\.1:9192,127\.0\.0\.1:9292"),
        ("127.0.0.1:19092,10.1.2.3:19192,127.0.0.1:19292", 19093, r"not a loopback address.*stack\.local: false"),
        ("127.0.0.1:19092,127.0.0.1:19092,127.0.0.1:19292", 19093, r"names a port twice"),
        ("127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19292", 19093, r"port 19094 of kafka\.brokers is also a KRaft "
         r"controller port \(stack\.kafka_controller_port gives the controllers 19093 to 19095\)"),
        (THREE, 65534, r"leaves no room for 3 controller ports"),
    ],
    ids=["count", "not-loopback", "same-broker-port", "broker-on-a-controller-port", "past-65535"],
)  # fmt: skip
def test_a_cluster_layout_the_stack_cannot_run_is_refused_in_one_sentence(
    tmp_path: Path, brokers: str, controller_port: int, refusal: str
) -> None:
    with pytest.raises(stack.StackError, match=refusal):
        kafka_nodes.cluster_nodes(cluster_config(tmp_path, brokers, controller_port))


# --- what each node is told --------------------------------------------------------------------------------


def test_every_node_knows_the_whole_quorum_and_keeps_three_copies(tmp_path: Path) -> None:
    settings = cluster_config(tmp_path, THREE)
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19094,3@127.0.0.1:19095"

    for node_id, port in ((1, 19092), (2, 19192), (3, 19292)):
        properties = properties_of(settings, node_id)
        assert properties["node.id"] == str(node_id)
        assert properties["controller.quorum.voters"] == voters
        assert properties["listeners"] == f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{19092 + node_id}"
        assert properties["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
        assert properties["log.dirs"] == str(tmp_path / "stack" / f"kafka-{node_id}" / "data")
        assert properties["default.replication.factor"] == "3"
        assert properties["min.insync.replicas"] == "2"
        assert properties["offsets.topic.replication.factor"] == "3"
        assert properties["transaction.state.log.replication.factor"] == "3"
        assert properties["transaction.state.log.min.isr"] == "2"


def test_a_single_node_is_told_exactly_what_it_was_before_clusters(tmp_path: Path) -> None:
    settings = config_module.from_mapping(
        {"state_dir": str(tmp_path), "kafka": {"brokers": "127.0.0.1:19092"}, "stack": {"kafka_controller_port": 19093}}
    )
    text = kafka_server.server_properties(settings, *single(settings))

    assert text.splitlines()[1:] == [
        "process.roles=broker,controller",
        "node.id=1",
        "controller.quorum.voters=1@127.0.0.1:19093",
        "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
        "advertised.listeners=PLAINTEXT://127.0.0.1:19092",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={tmp_path / 'stack' / 'kafka' / 'data'}",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.partitions=3",
    ]


def single(settings: Config) -> tuple[KafkaNode, list[KafkaNode], Path]:
    nodes = kafka_nodes.cluster_nodes(settings)
    return nodes[0], nodes, kafka_nodes.node_home(settings, nodes[0], nodes)


@pytest.mark.integration  # provisions Kafka's jars (cached) and runs its storage tool
def test_a_node_at_any_address_is_built_for_the_harness_with_its_prefix(tmp_path: Path) -> None:
    settings = config_module.from_mapping(
        {"state_dir": str(tmp_path / "state"), "stack": {"cache_dir": str(SHARED_CACHE), "kafka_heap": "256m"}}
    )
    nodes = [
        KafkaNode(index, Endpoint(f"198.18.77.1{index}", 9092), Endpoint(f"198.18.77.1{index}", 9093))
        for index in (1, 2, 3)
    ]
    home = tmp_path / "node-2"
    service = kafka_server.node_service(
        settings, nodes[1], nodes, home, kafka_server.new_cluster_id(), ["ip", "netns", "exec", "n2"]
    )

    assert service.name == "kafka-2" and service.endpoint == "198.18.77.12:9092"
    assert service.argv[:4] == ["ip", "netns", "exec", "n2"] and "-Xmx256m" in service.argv
    properties = parse_properties((home / "server.properties").read_text())
    assert properties["listeners"] == "PLAINTEXT://198.18.77.12:9092,CONTROLLER://198.18.77.12:9093"
    assert properties["controller.quorum.voters"] == "1@198.18.77.11:9093,2@198.18.77.12:9093,3@198.18.77.13:9093"
    assert (home / "data" / "meta.properties").is_file(), "formatted without the prefix"


# --- a real cluster ------------------------------------------------------------------------------------------


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free loopback ports (the controllers of a cluster)."""
    for _ in range(100):
        first = free_port()
        if first + count <= 65535 and all(port_is_free(first + offset) for offset in range(count)):
            return first
    raise AssertionError(f"found no {count} free ports in a row")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def cluster(local_stack: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    """A private 3-node cluster of this module's own, detached; the store is the session's."""
    brokers = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    settings = config_module.from_mapping(
        {
            "state_dir": str(tmp_path_factory.mktemp("cluster") / "state"),
            "kafka": {"brokers": brokers},
            "mongodb": {"uri": local_stack.mongodb.uri},
            "stack": {
                "kafka_nodes": 3,
                "kafka_controller_port": free_ports_in_a_row(3),
                "kafka_heap": "256m",
                "cache_dir": str(SHARED_CACHE),
            },
            "supervisor": {"graceful_timeout": 20},
        },
        label="cluster test",
    )
    try:
        assert stack.ensure_running(settings) is True
        yield settings
    finally:
        stack.down(settings)


def broker_ids(settings: Config) -> set[int]:
    return set(AdminClient({"bootstrap.servers": settings.kafka.brokers}).list_topics(timeout=10).brokers)


def with_topic(settings: Config, name: str, **kafka: object) -> Config:
    return config_module.from_mapping(
        config_module.to_mapping(settings) | {"kafka": {"brokers": settings.kafka.brokers, "topic": name, **kafka}}
    )


@pytest.mark.integration
def test_every_node_is_a_broker_of_one_cluster(cluster: Config) -> None:
    assert broker_ids(cluster) == {1, 2, 3}


@pytest.mark.integration
def test_stack_status_has_a_row_per_node(cluster: Config) -> None:
    out = io.StringIO()
    assert stack.print_status(cluster, out) == 0
    rows = {line.split()[0]: line for line in out.getvalue().splitlines()[1:]}

    assert list(rows) == ["kafka-1", "kafka-2", "kafka-3", "store"]
    for name, broker in zip(("kafka-1", "kafka-2", "kafka-3"), cluster.kafka.brokers.split(","), strict=True):
        assert broker in rows[name] and "answering" in rows[name]
        assert str(owned_pid(cluster, name)) in rows[name]
    assert "not started by streamd" in rows["store"], "the session's store is used, not started again"


@pytest.mark.integration
def test_the_supervisor_gets_a_child_per_node_each_ready_on_its_own(cluster: Config) -> None:
    children = service_children(kafka_server.services(cluster))

    assert [child.name for child in children] == ["kafka-1", "kafka-2", "kafka-3"]
    assert all(child.ready() for child in children)


@pytest.mark.integration
def test_topics_streamd_creates_get_three_copies_and_two_in_sync(cluster: Config) -> None:
    settings = with_topic(cluster, "replicated", topic_config={"retention.ms": 3_600_000})
    assert ensure_topic(settings, "replicated") is True

    admin = AdminClient({"bootstrap.servers": cluster.kafka.brokers})

    def replica_counts() -> set[int]:
        """Copies per partition, once the node asked knows the new topic's partitions (empty before)."""
        topic = admin.list_topics("replicated", timeout=10).topics["replicated"]
        return {len(partition.replicas) for partition in topic.partitions.values()}

    assert wait_until(replica_counts, "every node to know the new topic's partitions") == {3}
    configs = wait_until(lambda: topic_configs(admin, "replicated"), "every node to know the new topic")
    assert configs["min.insync.replicas"].value == "2"
    assert configs["retention.ms"].value == "3600000", "kafka.topic_config is applied"


def topic_configs(admin: AdminClient, topic: str) -> dict | None:
    """The topic's effective configs, or None while the node asked has not caught up with its creation."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        return admin.describe_configs([resource])[resource].result(timeout=10)
    except KafkaException:
        return None


@pytest.mark.integration
def test_a_killed_leader_loses_no_acknowledged_message_and_rejoins_when_restarted(cluster: Config) -> None:
    settings = with_topic(cluster, "survivor", partitions=1)
    ensure_topic(settings, "survivor")
    producer = Producer({"bootstrap.servers": cluster.kafka.brokers, "enable.idempotence": True, "acks": "all"})
    failures: list[KafkaError] = []

    def produce(values: range) -> None:
        for value in values:
            producer.produce("survivor", str(value).encode(), on_delivery=lambda error, _: failures.append(error))
        assert producer.flush(60) == 0

    produce(range(100))
    leader = AdminClient({"bootstrap.servers": cluster.kafka.brokers}).list_topics("survivor", timeout=10)
    victim = f"kafka-{leader.topics['survivor'].partitions[0].leader}"
    pid = owned_pid(cluster, victim)
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: owned_pid(cluster, victim) is None, f"{victim} to die")

    produce(range(100, 200))
    assert [error for error in failures if error is not None] == []
    assert sorted(int(m.value()) for m in read_all(cluster.kafka.brokers, "survivor")) == list(range(200))

    restart(cluster, victim)
    wait_until(lambda: broker_ids(cluster) == {1, 2, 3}, f"{victim} to rejoin", timeout=60)


def restart(settings: Config, name: str) -> None:
    """Start one node again, detached, as `stack up` would (its pid file lets `stack down` stop it)."""
    service = next(service for service in kafka_server.services(settings) if service.name == name)
    with open(service.cwd / "server.log", "ab") as log:
        process = subprocess.Popen(
            service.argv, cwd=service.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    write_pid(settings, name, process.pid)


@pytest.mark.integration
def test_stack_down_stops_every_node_whatever_the_config_says_now(cluster: Config) -> None:
    one_node = config_module.from_mapping(
        config_module.to_mapping(cluster)
        | {"kafka": {"brokers": cluster.kafka.brokers.split(",")[0]}, "stack": {"kafka_nodes": 1}}
    )
    pids = [owned_pid(cluster, f"kafka-{node_id}") for node_id in (1, 2, 3)]
    assert all(pids)

    stack.down(one_node)

    assert [owned_pid(cluster, f"kafka-{node_id}") for node_id in (1, 2, 3)] == [None, None, None]
    assert not any(node.broker.answers() for node in kafka_nodes.cluster_nodes(cluster))
