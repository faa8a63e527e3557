"""The local Apache Kafka broker (a server kind, see kind.py): jars from Maven Central, a single KRaft node
bound to the configured loopback port.  Not to be confused with streamd/kafka.py, the client side.

Kafka's release tarball is just its jars plus shell scripts; resolving the jars with Maven gets the
same thing from a checksummed repository the JDK toolchain already trusts, and running `java` directly
means no script sets a JMX port or reads KAFKA_* variables behind our back.
"""

from __future__ import annotations

import base64
import functools
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamd.config import Config, ConfigError, KafkaConfig
from streamd.credentials import USER, StackCredentials, credentials_dir, kafka_security
from streamd.stack import tls
from streamd.stack.endpoint import Endpoint, any_answers, kafka_endpoints
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
NODE_ID = 1
SCRAM_MECHANISM = "SCRAM-SHA-512"


def artifacts_dir(config: Config) -> Path:
    return config.cache_path / f"kafka-{config.stack.kafka_version}"


def home_dir(config: Config) -> Path:
    """Everything of one local broker: its properties, cluster id, data, and (when detached) log and pid."""
    return server_home(config, "kafka")


def data_dir(config: Config) -> Path:
    return server_data(config, "kafka")


def broker_endpoint(config: Config) -> Endpoint:
    """The one loopback address a local broker may bind; StackError for anything else."""
    brokers = config.kafka.brokers
    try:
        endpoints = kafka_endpoints(brokers)
    except ValueError as exc:
        raise StackError(f"kafka.brokers {brokers!r} is not a list of host:port ({exc}).") from None
    if len(endpoints) != 1:
        raise StackError(
            f"kafka.brokers lists {len(endpoints)} brokers but a local Kafka is a single node; "
            f"set it to one loopback host:port such as 127.0.0.1:9092, or set stack.local: false."
        )
    broker = endpoints[0]
    if not broker.is_loopback:
        raise StackError(
            f"kafka.brokers is {brokers}, which is not a loopback address, so streamd will not start a "
            f"local Kafka for it; start that broker, set kafka.brokers to 127.0.0.1:<port>, "
            f"or set stack.local: false."
        )
    if broker.port == config.stack.kafka_controller_port:
        raise StackError(
            f"stack.kafka_controller_port {broker.port} is also the port of kafka.brokers; "
            f"give the local KRaft controller a port of its own."
        )
    return broker


def controller_endpoint(config: Config) -> Endpoint:
    return Endpoint("127.0.0.1", config.stack.kafka_controller_port)


def server_properties(config: Config) -> str:
    """A single-node KRaft broker+controller; replication factors of 1 because there is only one node."""
    broker = broker_endpoint(config)
    bind = Endpoint(broker.bind_host, broker.port)
    controller = controller_endpoint(config)
    # In tls mode the one broker listener takes SASL_SSL only, and the broker uses it for its own
    # inter-broker traffic too: nothing on the broker port speaks plaintext. The controller listener stays
    # PLAINTEXT, bound to 127.0.0.1 only: it serves the KRaft quorum, which on a single node is this process.
    listener = "SASL_SSL" if config.stack.security == "tls" else "PLAINTEXT"
    settings: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.voters": f"{NODE_ID}@{controller}",
        "listeners": f"{listener}://{bind},CONTROLLER://{controller}",
        "advertised.listeners": f"{listener}://{broker}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": listener,
        **(_tls_settings(config) if listener == "SASL_SSL" else {}),
        "log.dirs": data_dir(config),
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        # A lone consumer should not wait the default 3 s for group members that will never come.
        "group.initial.rebalance.delay.ms": 0,
        "num.partitions": config.kafka.partitions,
    }
    header = "# Written by streamd on every start from config.yaml; edits here are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


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


def service(config: Config) -> Service:
    """The local broker, ready to exec: jars provisioned, properties written, storage formatted."""
    broker = broker_endpoint(config)
    java = require_tool("java", "run a local Kafka", "a JDK 17 (e.g. openjdk-17-jdk-headless)")
    libs = provision(config)
    home = home_dir(config)
    data_dir(config).mkdir(parents=True, exist_ok=True)
    if config.stack.security == "tls":
        tls.ensure(credentials_dir(config.state_path))
        _refuse_storage_without_scram(config)
    properties = home / "server.properties"
    # Owner-only: in tls mode it holds the broker's SCRAM password.
    tls.write_private_text(properties, server_properties(config))
    log4j = home / "log4j.properties"
    log4j.write_bytes(resources.files("streamd.stack").joinpath("log4j.properties").read_bytes())
    jvm = [java, "-Djava.awt.headless=true", f"-Dlog4j.configuration={log4j.as_uri()}", "-cp", f"{libs}/*"]
    _format_storage(config, jvm, properties)
    heap = config.stack.kafka_heap
    return Service(
        name="kafka",
        argv=[jvm[0], f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", *jvm[1:], "kafka.Kafka", str(properties)],
        env={},
        cwd=home,
        endpoint=str(broker),
        data_dir=data_dir(config),
        stop_timeout=config.supervisor.graceful_timeout * 0.8,
        check=functools.partial(answers, config.kafka),
    )


def _refuse_storage_without_scram(config: Config) -> None:
    """SCRAM users of a KRaft cluster are created when its storage is formatted (see _format_storage); a
    storage formatted while stack.security was none has none, and its broker would refuse every client."""
    if (data_dir(config) / "meta.properties").is_file() and not _scram_marker(config).is_file():
        raise StackError(
            f"stack.security is tls but the local Kafka storage in {data_dir(config)} was made without it, so it "
            f"has no SCRAM user; set stack.security: none again, or delete {home_dir(config)} (its messages are "
            "lost) to have it made anew with TLS."
        )


def _scram_marker(config: Config) -> Path:
    return home_dir(config) / "scram-user-added"


def _format_storage(config: Config, jvm: list[str], properties: Path) -> None:
    """KRaft refuses to start on an unformatted log dir: format it once, keeping the cluster id beside it."""
    data = data_dir(config)
    if (data / "meta.properties").is_file():
        return
    id_file = home_dir(config) / "cluster.id"
    if not id_file.is_file():
        id_file.write_text(new_cluster_id() + "\n", encoding="utf-8")
    cluster_id = id_file.read_text(encoding="utf-8").strip()
    with phase(f"kafka: formatting storage (cluster id {cluster_id})"):
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
            # (Kafka >= 3.5), before the broker needs it for its own inter-broker login. The password is on
            # this short-lived command line: token_urlsafe characters need no quoting in its [name=…] syntax.
            password = StackCredentials(credentials_dir(config.state_path)).kafka_password()
            argv += ["--add-scram", f"{SCRAM_MECHANISM}=[name={USER},password={password}]"]
        result = subprocess.run(argv, cwd=home_dir(config), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = (result.stdout + result.stderr).strip().splitlines() or ["no output"]
            raise StackError(f"formatting the local Kafka storage in {data} failed: {lines[-1].strip()}.")
        if secure:
            _scram_marker(config).write_text(f"{USER}\n", encoding="utf-8")
        else:
            _scram_marker(config).unlink(missing_ok=True)  # a storage made anew without it (data deleted)


def answers(settings: KafkaConfig, timeout: float = 3.0) -> bool:
    """True when a broker returns cluster metadata with at least one live broker in it, to a client with
    streamd's own security settings (so a broker that refuses them does not count as serving)."""
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
    return bool(metadata.brokers)


class KafkaServer:
    """The local Kafka broker as a `ServerKind`."""

    name = "kafka"
    endpoint_key = "kafka.brokers"
    check_endpoint = staticmethod(broker_endpoint)
    data_dir = staticmethod(data_dir)
    provision = staticmethod(provision)
    service = staticmethod(service)

    def address(self, config: Config) -> str:
        return config.kafka.brokers

    def accepts_connections(self, config: Config) -> bool:
        return any_answers(kafka_endpoints, config.kafka.brokers)

    def answers(self, config: Config) -> bool:
        return answers(config.kafka)

    def preflight(self, config: Config) -> None:
        if controller_endpoint(config).answers():
            raise StackError(
                f"stack.kafka_controller_port {config.stack.kafka_controller_port} is already in use on "
                f"127.0.0.1; choose a free port for the local KRaft controller."
            )


KAFKA = KafkaServer()
