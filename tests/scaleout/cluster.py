"""The servers of the simulated network: a 3-node KRaft cluster and a store, each on a host of its own.

They are built by the local stack's own builders (the same properties, storage format and readiness
checks as `stack.kafka_nodes: 3` on a laptop), bound to the hosts' addresses instead of loopback, and run
inside the hosts' namespaces. Each server leads its own session, so a SIGKILL of its group is a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streamd import config as config_module
from streamd.config import Config
from streamd.stack import Service, wait_ready
from streamd.stack.endpoint import Endpoint
from streamd.stack.kafka_nodes import KafkaNode
from streamd.stack.kafka_server import new_cluster_id, node_service
from streamd.stack.store_server import store_service_at

from ..probes import STACK_STATE_DIR
from .network import Host, Network

KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
STORE_PORT = 27017
READY_SECONDS = 180  # three JVMs starting at once on two loaded cores
STOP_SECONDS = 30


@dataclass
class Server:
    host: Host
    service: Service
    log: Path
    process: subprocess.Popen | None = None

    def launch(self) -> None:
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(
                self.service.argv,
                cwd=self.service.cwd,
                env=self.service.environment(),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL to the whole group, as a power cut would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()


class Cluster:
    """kafka-1..3 at 198.18.77.11-13 and the store at .10; `config` points a streamd at them."""

    def __init__(self, network: Network, state_dir: Path, heap: str = "320m") -> None:
        self.store_host = network.add("store", 10)
        self.kafka_hosts = [network.add(f"kafka-{n}", 10 + n) for n in (1, 2, 3)]
        brokers = ",".join(f"{host.address}:{KAFKA_PORT}" for host in self.kafka_hosts)
        self.config: Config = config_module.from_mapping(
            {
                "state_dir": str(state_dir),
                "kafka": {"brokers": brokers},
                "mongodb": {"uri": f"mongodb://{self.store_host.address}:{STORE_PORT}"},
                "stack": {"local": False, "kafka_heap": heap, "cache_dir": str(STACK_STATE_DIR / "cache")},
            },
            label="scale-out cluster",
        )
        nodes = [
            KafkaNode(n, Endpoint(host.address, KAFKA_PORT), Endpoint(host.address, CONTROLLER_PORT))
            for n, host in enumerate(self.kafka_hosts, start=1)
        ]
        cluster_id = new_cluster_id()
        homes = state_dir / "servers"
        self.brokers: dict[int, Server] = {}
        for node, host in zip(nodes, self.kafka_hosts, strict=True):
            home = homes / host.name
            home.mkdir(parents=True, exist_ok=True)
            service = node_service(self.config, node, nodes, home, cluster_id, argv_prefix=host.exec_prefix())
            self.brokers[node.node_id] = Server(host, service, home / "server.log")
        store_home = homes / "store"
        store_home.mkdir(parents=True, exist_ok=True)
        store_endpoint = Endpoint(self.store_host.address, STORE_PORT)
        store = store_service_at(self.config, store_endpoint, store_home, argv_prefix=self.store_host.exec_prefix())
        self.store = Server(self.store_host, store, store_home / "server.log")
        # One client for every question of the tests: polled questions must not open connections each time.
        self.admin = AdminClient({"bootstrap.servers": brokers, "log_level": 0})

    def servers(self) -> list[Server]:
        return [self.store, *self.brokers.values()]

    def start(self) -> None:
        """Every server at once (a KRaft quorum needs a majority up before any node serves), then wait."""
        for server in self.servers():
            server.launch()
        self._wait_ready(self.servers())

    def restart(self, node_id: int) -> None:
        broker = self.brokers[node_id]
        broker.launch()
        self._wait_ready([broker])

    def leader_of(self, topic: str, partition: int = 0) -> int:
        return self.admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader

    def live_brokers(self) -> int:
        return len(self.admin.list_topics(timeout=10).brokers)

    def stop(self) -> None:
        for server in self.servers():
            server.stop()

    @staticmethod
    def _wait_ready(servers: list[Server]) -> None:
        started = time.monotonic()
        processes = {server.service.name: server.process for server in servers}
        try:
            wait_ready([server.service for server in servers], READY_SECONDS, processes)
        except Exception as exc:
            tails = "\n".join(f"--- {s.log}\n" + "\n".join(s.log.read_text().splitlines()[-15:]) for s in servers)
            raise AssertionError(f"{exc} ({time.monotonic() - started:.0f} s)\n{tails}") from None
