"""The nodes of the local Kafka: how many, where each serves, and what each is called.

`stack.kafka_nodes` KRaft nodes, each a broker and a controller. Node i (1-based) serves clients at the
i-th entry of `kafka.brokers` and its controller at 127.0.0.1:(stack.kafka_controller_port + i - 1). One
node is called "kafka", as it always was, so existing state dirs keep their storage; nodes of a cluster
are "kafka-1", "kafka-2", …: the name of the supervised child, and of the pid file, log and home directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from streamd.config import Config
from streamd.stack.endpoint import Endpoint, kafka_endpoints
from streamd.stack.pidfile import server_home, stack_dir
from streamd.stack.service import StackError

SINGLE_NODE_NAME = "kafka"
_NODE_NAME = re.compile(r"kafka(-[1-9][0-9]*)?")
EXAMPLE_PORTS = (9092, 9192, 9292, 9392, 9492)


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    broker: Endpoint  # the address clients use; the node binds and advertises it
    controller: Endpoint  # its KRaft controller listener


def node_name(node: KafkaNode, nodes: list[KafkaNode]) -> str:
    return SINGLE_NODE_NAME if len(nodes) == 1 else f"{SINGLE_NODE_NAME}-{node.node_id}"


def is_node_name(name: str) -> bool:
    """A name `node_name` gives, whatever the count: how `stack down` finds nodes an earlier config started."""
    return _NODE_NAME.fullmatch(name) is not None


def node_home(config: Config, node: KafkaNode, nodes: list[KafkaNode]) -> Path:
    """Everything of one node: its properties, data, and (when detached) log and pid."""
    return server_home(config, node_name(node, nodes))


def cluster_id_file(config: Config, nodes: list[KafkaNode]) -> Path:
    """One id for all nodes of a cluster, kept beside their homes; a single node keeps its own, as before."""
    if len(nodes) == 1:
        return server_home(config, SINGLE_NODE_NAME) / "cluster.id"
    return stack_dir(config) / f"kafka-{len(nodes)}-nodes.cluster.id"


def layout(config: Config) -> list[KafkaNode]:
    """The nodes as the config lays them out, without judging the addresses (status shows any layout)."""
    brokers = config.kafka.brokers
    try:
        endpoints = kafka_endpoints(brokers)
    except ValueError as exc:
        raise StackError(f"kafka.brokers {brokers!r} is not a list of host:port ({exc}).") from None
    count = config.stack.kafka_nodes
    if len(endpoints) != count:
        if count == 1:
            raise StackError(
                f"kafka.brokers lists {len(endpoints)} brokers but the local Kafka is a single node; set it to "
                "one loopback host:port such as 127.0.0.1:9092, set stack.kafka_nodes to 3 or 5 for a local "
                "cluster, or set stack.local: false."
            )
        example = ",".join(f"127.0.0.1:{port}" for port in EXAMPLE_PORTS[:count])
        raise StackError(
            f"stack.kafka_nodes is {count} but kafka.brokers lists {len(endpoints)} brokers; list one loopback "
            f"host:port per node, such as {example}, or set stack.local: false."
        )
    first = config.stack.kafka_controller_port
    return [
        KafkaNode(index, broker, Endpoint("127.0.0.1", first + index - 1))
        for index, broker in enumerate(endpoints, start=1)
    ]


def cluster_nodes(config: Config) -> list[KafkaNode]:
    """The nodes the config asks for, with the loopback policy checked (product path); StackError otherwise."""
    nodes = layout(config)
    brokers = config.kafka.brokers
    for node in nodes:
        if not node.broker.is_loopback:
            raise StackError(
                f"kafka.brokers is {brokers}, which is not a loopback address, so streamd will not start a "
                f"local Kafka for it; start that broker, set kafka.brokers to 127.0.0.1:<port>, "
                f"or set stack.local: false."
            )
    last = nodes[-1].controller.port
    if last > 65535:
        raise StackError(
            f"stack.kafka_controller_port {config.stack.kafka_controller_port} leaves no room for "
            f"{len(nodes)} controller ports (the last would be {last}); choose a lower port."
        )
    _refuse_shared_ports(config, nodes)
    return nodes


def _refuse_shared_ports(config: Config, nodes: list[KafkaNode]) -> None:
    """Every listener of every node needs a port of its own: all of them are on the loopback interface."""
    brokers = [node.broker.port for node in nodes]
    if len(set(brokers)) != len(brokers):
        raise StackError(f"kafka.brokers {config.kafka.brokers} names a port twice; give each node a port of its own.")
    controllers = {node.controller.port for node in nodes}
    shared = sorted(controllers.intersection(brokers))
    if shared:
        first = config.stack.kafka_controller_port
        span = f"{first}" if len(nodes) == 1 else f"{first} to {first + len(nodes) - 1}"
        raise StackError(
            f"port {shared[0]} of kafka.brokers is also a KRaft controller port (stack.kafka_controller_port "
            f"gives the controllers {span}); give the controllers ports of their own."
        )
