"""The local Apache Kafka (a server kind, see kind.py): jars from Maven Central, one KRaft node or a cluster of
3 or 5 (kafka_nodes.py lays them out), bound to loopback.  Not to be confused with streamd/kafka.py, the client
side.  `node_service` builds one node at any address, for the product and for a multi-host test harness alike.

Kafka's release tarball is just its jars plus shell scripts; resolving the jars with Maven gets the
same thing from a checksummed repository the JDK toolchain already trusts, and running `java` directly
means no script sets a JMX port or reads KAFKA_* variables behind our back.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import subprocess
import uuid
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamd.config import Config, ConfigError, KafkaConfig
from streamd.credentials import USER, StackCredentials, credentials_dir, kafka_security
from streamd.stack import tls
from streamd.stack.endpoint import Endpoint, any_answers, kafka_endpoints
from streamd.stack.kafka_nodes import (
    SINGLE_NODE_NAME,
    KafkaNode,
    cluster_id_file,
    cluster_nodes,
    layout,
    node_home,
    node_name,
)
from streamd.stack.kind import Instance
from streamd.stack.pidfile import server_data, server_home
from streamd.stack.provisioning import (
    INSTEAD,
    is_complete,
    phase,
    pom,
    require_tool,
    resolve_jars,
)
from streamd.stack.service import Service, StackError

SCALA_VERSION = "2.13"
SLF4J_BINDING = ("org.slf4j", "slf4j-reload4j", "1.7.36")  # Kafka 3.x logs through log4j 1 (reload4j)
SCRAM_MECHANISM = "SCRAM-SHA-512"
CLUSTER_REPLICATION = 3  # copies of each partition on a local cluster of 3 or 5 nodes
CLUSTER_MIN_INSYNC = 2  # copies an acks=all write waits for: one node may be down


def artifacts_dir(config: Config) -> Path:
    return config.cache_path / f"kafka-{config.stack.kafka_version}"


def home_dir(config: Config) -> Path:
    """Everything of a single local node: its properties, cluster id, data, and (when detached) log and pid."""
    return server_home(config, SINGLE_NODE_NAME)


def data_dir(config: Config) -> Path:
    return server_data(config, SINGLE_NODE_NAME)


def server_properties(config: Config, node: KafkaNode, nodes: list[KafkaNode], home: Path) -> str:
    """One KRaft node, broker and controller in one process, of a static quorum of `nodes`."""
    bind = Endpoint(node.broker.bind_host, node.broker.port)
    # In tls mode the broker listener takes SASL_SSL only, and the brokers use it for their inter-broker
    # traffic too (the same SCRAM user): nothing on a broker port speaks plaintext. The controller listener
    # stays PLAINTEXT: it serves the KRaft quorum only, bound where the caller put it (127.0.0.1 on a laptop).
    listener = "SASL_SSL" if config.stack.security == "tls" else "PLAINTEXT"
    settings: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": ",".join(f"{voter.node_id}@{voter.controller}" for voter in nodes),
        "listeners": f"{listener}://{bind},CONTROLLER://{node.controller}",
        "advertised.listeners": f"{listener}://{node.broker}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": listener,
        **(_tls_settings(config) if listener == "SASL_SSL" else {}),
        "log.dirs": home / "data",
        **_replication_settings(len(nodes)),
        # A lone consumer should not wait the default 3 s for group members that will never come.
        "group.initial.rebalance.delay.ms": 0,
        "num.partitions": config.kafka.partitions,
    }
    header = "# Written by streamd on every start from config.yaml; edits here are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


def _replication_settings(node_count: int) -> dict[str, object]:
    """One node: replication factors of 1, there is nothing to copy to. Three or more: every partition on
    three nodes, and an acks=all write waits for two of them, so one node may fail without losing an
    acknowledged message or refusing writes (Kafka's own defaults would keep one copy)."""
    if node_count == 1:
        return {
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
        }
    return {
        "default.replication.factor": CLUSTER_REPLICATION,
        "min.insync.replicas": CLUSTER_MIN_INSYNC,
        "offsets.topic.replication.factor": CLUSTER_REPLICATION,
        "transaction.state.log.replication.factor": CLUSTER_REPLICATION,
        "transaction.state.log.min.isr": CLUSTER_MIN_INSYNC,
    }


def _tls_settings(config: Config) -> dict[str, object]:
    """SCRAM-SHA-512 over TLS with the stack's PEM files: Kafka reads PEM itself, so no keytool and no JKS."""
    credentials = StackCredentials(credentials_dir(config.state_path))
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{USER}" password="{credentials.kafka_password()}";'
    )
    return {
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        # The broker's own login on its listener, as the inter-broker client.
        f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": credentials.key_and_cert_file,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": credentials.ca_file,
    }


def new_cluster_id() -> str:
    """Kafka's own format (base64url of a UUID, unpadded); like Kafka's Uuid.randomUuid it avoids a leading
    "-", which the storage tool's argument parser would take for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def provision(config: Config) -> Path:
    """Resolve Kafka's runtime jars into the cache once; return the libs directory."""
    version = config.stack.kafka_version
    directory = artifacts_dir(config)
    if is_complete(directory):
        return directory / "libs"
    require_tool("java", "run a local Kafka", "a JDK 17 (e.g. openjdk-17-jdk-headless)")
    mvn = require_tool("mvn", "download a local Kafka from Maven Central", "Maven (e.g. the maven package)")
    dependencies = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", version), SLF4J_BINDING]
    advice = f"check the network and stack.kafka_version, {INSTEAD}"
    pom_text = pom("kafka-runtime", version, dependencies)
    return resolve_jars(mvn, config.cache_path, directory, pom_text, f"Kafka {version}", advice)


def services(config: Config) -> list[Service]:
    """Every node the config asks for, ready to exec, all formatted with one cluster id (product path)."""
    nodes = cluster_nodes(config)
    cluster_id = _cluster_id(config, nodes)
    return [node_service(config, node, nodes, node_home(config, node, nodes), cluster_id) for node in nodes]


def _cluster_id(config: Config, nodes: list[KafkaNode]) -> str:
    id_file = cluster_id_file(config, nodes)
    if not id_file.is_file():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(new_cluster_id() + "\n", encoding="utf-8")
    return id_file.read_text(encoding="utf-8").strip()


def node_service(
    config: Config,
    node: KafkaNode,
    nodes: list[KafkaNode],
    home: Path,
    cluster_id: str,
    argv_prefix: Sequence[str] = (),
) -> Service:
    """One node, ready to exec: jars provisioned, properties written under `home`, storage formatted with
    `cluster_id` (once: a formatted storage keeps its id). The addresses are the caller's choice, unchecked;
    `argv_prefix` goes before the server's argv (e.g. `ip netns exec <ns>`), not before the storage tool's.
    The Service's check asks this node alone, at its own broker address."""
    java = require_tool("java", "run a local Kafka", "a JDK 17 (e.g. openjdk-17-jdk-headless)")
    libs = provision(config)
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    if config.stack.security == "tls":
        tls.ensure(credentials_dir(config.state_path))
        _refuse_storage_without_scram(home)
    properties = home / "server.properties"
    # Owner-only: in tls mode it holds the broker's SCRAM password.
    tls.write_private_text(properties, server_properties(config, node, nodes, home))
    log4j = home / "log4j.properties"
    log4j.write_bytes(resources.files("streamd.stack").joinpath("log4j.properties").read_bytes())
    jvm = [java, "-Djava.awt.headless=true", f"-Dlog4j.configuration={log4j.as_uri()}", "-cp", f"{libs}/*"]
    _format_storage(config, jvm, properties, home, cluster_id)
    heap = config.stack.kafka_heap
    argv = [jvm[0], f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", *jvm[1:], "kafka.Kafka", str(properties)]
    own_address = dataclasses.replace(config.kafka, brokers=str(node.broker))
    return Service(
        name=node_name(node, nodes),
        argv=[*argv_prefix, *argv],
        env={},
        cwd=home,
        endpoint=str(node.broker),
        data_dir=data,
        stop_timeout=config.supervisor.graceful_timeout * 0.8,
        check=functools.partial(answers, own_address, node_id=node.node_id),
    )


def _refuse_storage_without_scram(home: Path) -> None:
    """SCRAM users of a KRaft cluster are created when its storage is formatted (see _format_storage); a
    storage formatted while stack.security was none has none, and its broker would refuse every client."""
    data = home / "data"
    if (data / "meta.properties").is_file() and not _scram_marker(home).is_file():
        raise StackError(
            f"stack.security is tls but the local Kafka storage in {data} was made without it, so it "
            f"has no SCRAM user; set stack.security: none again, or delete {home} (its messages are "
            "lost) to have it made anew with TLS."
        )


def _scram_marker(home: Path) -> Path:
    return home / "scram-user-added"


def _format_storage(config: Config, jvm: list[str], properties: Path, home: Path, cluster_id: str) -> None:
    """KRaft refuses to start on an unformatted log dir: format it once. Every node of a cluster must be
    formatted with the same cluster id, or the quorum refuses the odd one out."""
    data = home / "data"
    if (data / "meta.properties").is_file():
        return
    with phase(f"kafka: formatting storage in {data} (cluster id {cluster_id})"):
        argv = [
            *jvm,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            cluster_id,
            "-c",
            str(properties),
        ]
        secure = config.stack.security == "tls"
        if secure:
            # KRaft keeps SCRAM credentials in its metadata log; the storage tool writes the first one there
            # (Kafka >= 3.5), before the broker needs it for its own inter-broker login; every node gets the
            # same bootstrap record. The password is on this short-lived command line: token_urlsafe
            # characters need no quoting in its [name=…] syntax.
            password = StackCredentials(credentials_dir(config.state_path)).kafka_password()
            argv += ["--add-scram", f"{SCRAM_MECHANISM}=[name={USER},password={password}]"]
        result = subprocess.run(argv, cwd=home, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = (result.stdout + result.stderr).strip().splitlines() or ["no output"]
            raise StackError(f"formatting the local Kafka storage in {data} failed: {lines[-1].strip()}.")
        if secure:
            _scram_marker(home).write_text(f"{USER}\n", encoding="utf-8")
        else:
            _scram_marker(home).unlink(missing_ok=True)  # a storage made anew without it (data deleted)


def answers(settings: KafkaConfig, timeout: float = 3.0, node_id: int | None = None) -> bool:
    """True when a broker returns cluster metadata with at least one live broker in it (with node `node_id`
    among them, when given: registered with the quorum), to a client with streamd's own security settings
    (so a broker that refuses them does not count as serving)."""
    brokers = settings.brokers
    if not any_answers(kafka_endpoints, brokers):
        return False  # nothing listens: skip librdkafka's retries and its connection-refused noise
    try:
        security = kafka_security(settings)
    except ConfigError:
        return False  # tls mode, and the stack's credentials are not made yet: nothing of ours serves
    # log_level 0: a probe that fails is an answer here, not an error worth printing.
    admin = AdminClient({"log_level": 0, **security, **settings.client, "bootstrap.servers": brokers})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers) if node_id is None else node_id in metadata.brokers


class KafkaServer:
    """The local Kafka, one node or a cluster, as a `ServerKind`."""

    name = "kafka"
    endpoint_key = "kafka.brokers"
    provision = staticmethod(provision)
    services = staticmethod(services)

    def address(self, config: Config) -> str:
        return config.kafka.brokers

    def check_endpoints(self, config: Config) -> None:
        cluster_nodes(config)

    def accepts_connections(self, config: Config) -> bool:
        return any_answers(kafka_endpoints, config.kafka.brokers)

    def answers(self, config: Config) -> bool:
        return answers(config.kafka)

    def instances(self, config: Config) -> list[Instance]:
        whole = Instance(SINGLE_NODE_NAME, config.kafka.brokers, data_dir(config), lambda: answers(config.kafka))
        if config.stack.kafka_nodes == 1:
            return [whole]
        try:
            nodes = layout(config)
        except StackError:
            return [whole]  # a layout the stack would refuse: show the brokers as one, as for a remote cluster
        return [
            Instance(
                node_name(node, nodes),
                str(node.broker),
                node_home(config, node, nodes) / "data",
                functools.partial(answers, dataclasses.replace(config.kafka, brokers=str(node.broker))),
            )
            for node in nodes
        ]

    def preflight(self, config: Config) -> None:
        first = config.stack.kafka_controller_port
        for node in cluster_nodes(config):
            if node.controller.answers():
                which = "stack.kafka_controller_port" if node.node_id == 1 else f"{first} + {node.node_id - 1}"
                raise StackError(
                    f"KRaft controller port {node.controller.port} ({which}) is already in use on 127.0.0.1; "
                    "choose a stack.kafka_controller_port whose ports are free for the local KRaft controllers."
                )


KAFKA = KafkaServer()
