"""The local stack: Kafka (one node, or a cluster of 3 or 5) and a MongoDB-wire store for development, tests
and single-host installs.

When the configured endpoints answer, streamd uses them; otherwise (per `stack.local`) it provisions
Apache Kafka from Maven Central and mongod or FerretDB, and runs them bound to loopback, either as
supervised children (`services_to_run` + `run_service`) or detached (`ensure_running` / `down`).
All data lives under `config.state_path`, all downloaded or built artifacts under `config.cache_path`.

Each kind of server implements `kind.ServerKind`: `kafka_server.KAFKA` and `store_server.STORE` (the
clients of the same servers are streamd/kafka.py and streamd/store.py); `plan.KINDS` lists them.
"""

from streamd.stack.detached import ServiceStatus, down, ensure_running, print_status, status
from streamd.stack.plan import needed, provision, services_to_run
from streamd.stack.service import Service, StackError, run_service, wait_ready

__all__ = [
    "Service",
    "ServiceStatus",
    "StackError",
    "down",
    "ensure_running",
    "needed",
    "print_status",
    "provision",
    "run_service",
    "services_to_run",
    "status",
    "wait_ready",
]
