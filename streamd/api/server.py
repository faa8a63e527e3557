"""The api child: a Gunicorn master in this process, forking gthread workers that each serve create_app().

The workers are gthread's with two changes (streamd.api.worker): health probes have threads of their
own, and errors Gunicorn's parser answers are JSON.

Gunicorn is driven through its application API, never its command line: the settings come from
config.api, and nothing here reads sys.argv or GUNICORN_CMD_ARGS (only gunicorn.app.base.Application
does; BaseApplication does not).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import ssl
import sys
from typing import Any

import falcon
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config as GunicornConfig
from gunicorn.workers.base import Worker
from setproctitle import setproctitle

from streamd import logs, metrics
from streamd.api.app import create_app
from streamd.api.auth import Authorization, Buckets, keys_required
from streamd.api.backends import Backends
from streamd.api.stream import LiveStreams
from streamd.api.worker import ApiWorker
from streamd.api_keys import KeysFileError, keys_path, read_keys
from streamd.config import Config
from streamd.lifecycle import Shutdown, die_with_parent

PROC_NAME = "streamd: api"
RATE_LIMIT_LOCK = "api-rate-limit.lock"

log = logging.getLogger("streamd.api")


class ApiLogger(glogging.Logger):
    """Gunicorn's own lines ("Booting worker…") through streamd's log format, tagged with the process."""

    def setup(self, cfg: GunicornConfig) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True


class ApiArbiter(Arbiter):
    def handle_usr2(self) -> None:
        # Gunicorn's binary upgrade re-executes sys.argv, which here is the whole `streamd` command:
        # it would start a second supervisor. Restarts of the API are the supervisor's job.
        self.log.warning("ignoring SIGUSR2: the streamd supervisor, not Gunicorn, restarts the API")


class ApiServer(BaseApplication):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.backends: Backends | None = None
        self.streams: LiveStreams | None = None
        # Made here, in the master, so that every worker forked from it counts each key's requests in one place.
        self.buckets = Buckets(config.state_path / RATE_LIMIT_LOCK)
        super().__init__(prog=PROC_NAME)

    def load_config(self) -> None:
        for key, value in self.settings().items():
            self.cfg.set(key, value)

    def settings(self) -> dict[str, Any]:
        api = self.config.api
        binds = [bind_address(api.host, api.port)]
        if self.config.auth.metrics_port:
            # A second listener of the same workers: auth.Authorization tells them apart by SERVER_PORT.
            binds.append(bind_address(api.host, self.config.auth.metrics_port))
        return {
            "bind": binds,
            "workers": api.workers,
            # A dotted path, as Gunicorn's own setting is: the benchmark report prints and stores it.
            "worker_class": f"{ApiWorker.__module__}.{ApiWorker.__qualname__}",
            "threads": api.threads,
            "timeout": api.timeout,
            "graceful_timeout": worker_grace(self.config.supervisor.graceful_timeout),
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self.config.logging.level.lower(),
            "logger_class": ApiLogger,
            "proc_name": PROC_NAME,
            # Gunicorn 25+ opens a control socket at a per-user path shared by every Gunicorn on the
            # machine, and it can reload or scale this server behind the supervisor's back.
            "control_socket_disable": True,
            "when_ready": self.when_ready,
            "pre_fork": self.pre_fork,
            "post_fork": self.post_fork,
            "post_worker_init": self.post_worker_init,
            "worker_exit": self.worker_exit,
            "child_exit": self.child_exit,
            **https_settings(self.config),
        }

    def load(self) -> falcon.App:
        # Runs in each worker after the fork (preload_app is off), so every worker has its own clients.
        self.backends = Backends(self.config)
        self.streams = LiveStreams(self.config.api)
        authorization = Authorization(self.config, buckets=self.buckets)
        return create_app(self.config, self.backends, self.streams, authorization)

    def run(self) -> None:
        ApiArbiter(self).run()

    # --- hooks ----------------------------------------------------------------------------------

    def when_ready(self, server: Arbiter) -> None:
        logs.configure(self.config.logging, "api", logs.log_dir(self.config))
        setproctitle(PROC_NAME)
        log_access_rule(self.config)

    def pre_fork(self, server: Arbiter, worker: Worker) -> None:
        # The arbiter renames itself "gunicorn: master [...]" right after when_ready and on reload;
        # every spawn comes after either, so this is where the master's name sticks.
        setproctitle(PROC_NAME)
        taken = {getattr(other, "slot", None) for other in server.WORKERS.values()}
        # The lowest free number, so a replacement worker takes over its predecessor's name.
        worker.slot = next(n for n in range(1, len(taken) + 2) if n not in taken)

    def post_fork(self, server: Arbiter, worker: Worker) -> None:
        # The kernel sends SIGTERM (a graceful stop) when the master dies, even by SIGKILL; the
        # master is a single-threaded process, so "the thread that forked us" is the master itself.
        try:
            die_with_parent(signal.SIGTERM, server.pid)
        except OSError as exc:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", exc.errno)
        name = f"api worker {worker.slot}"
        setproctitle(f"streamd: {name}")
        logs.configure(self.config.logging, name, logs.log_dir(self.config))

    def post_worker_init(self, worker: Worker) -> None:
        # A graceful stop waits for open responses: live feeds end within a poll once the worker stops.
        if self.streams is not None:
            self.streams.serving = lambda: worker.alive

    def child_exit(self, server: Arbiter, worker: Worker) -> None:
        # Runs in the master, which reaps its workers: their open-stream gauge must not outlive them.
        metrics.forget(worker.pid)

    def worker_exit(self, server: Arbiter, worker: Worker) -> None:
        if self.backends is not None:
            self.backends.close()


def log_access_rule(config: Config) -> None:
    """Say once, at start, whether the API asks for keys and why: the answer depends on api.host."""
    if not keys_required(config):
        log.info("the API needs no key (auth.required %s, api.host %s)", config.auth.required, config.api.host)
        return
    path = keys_path(config)
    try:
        count = len(read_keys(path))
    except KeysFileError as exc:
        log.error("the API needs a key, and none can be read: %s", exc)
        return
    if count == 0:
        log.warning(
            "the API needs a key (auth.required %s, api.host %s) and %s holds none: every request but /health "
            "is refused; issue one with `streamd keys add NAME --scope read`",
            config.auth.required,
            config.api.host,
            path,
        )
    else:
        log.info("the API needs a key: %d in %s", count, path)


def https_settings(config: Config) -> dict[str, Any]:
    """Gunicorn's TLS settings from api.tls_*; none for plain HTTP (config_rules.api_tls checked the files)."""
    api = config.api
    if not api.tls_cert_file:
        return {}
    settings = {
        "certfile": str(config.resolve_path(api.tls_cert_file)),
        "keyfile": str(config.resolve_path(api.tls_key_file or "")),
    }
    if api.tls_ca_file:
        settings |= {"ca_certs": str(config.resolve_path(api.tls_ca_file)), "cert_reqs": ssl.CERT_REQUIRED}
    return settings


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_grace(supervisor_grace: float) -> int:
    """Gunicorn's graceful timeout: whole seconds, and short of the supervisor's SIGKILL deadline.

    The supervisor's clock starts at the same SIGTERM; finishing a second earlier leaves the master
    time to reap its workers and exit 0 instead of being killed with them still running.
    """
    return max(1, math.ceil(supervisor_grace) - 1)


# What the api child reads of the config: a reload that changes one of these restarts it.  It reads
# the consumers' group for lag, the graceful timeout to size Gunicorn's, the stages for the collections
# route stages write (the names `?collection=` takes), and the analytics section for /aggregates and the
# analyzer's lag; auth for who may call it (the keys file itself is re-read by the workers, without a
# restart). POST /messages (ingest) checks messages with the consumers' own pipeline (their id field,
# size limit and schema, and the stages).
SECTIONS = frozenset(
    {
        "kafka",
        "mongodb",
        "api",
        "auth",
        "ingest",
        "logging",
        "stages",
        "analytics",
        "consumer.group",
        "consumer.id_field",
        "consumer.max_message_bytes",
        "consumer.schema",
        "supervisor.graceful_timeout",
    }
)


def run(config: Config, shutdown: Shutdown) -> int:
    """Serve the API until SIGTERM (graceful: in-flight requests finish), then return 0.

    `shutdown` is unused: Gunicorn installs its own signal handlers in this process (SIGTERM graceful,
    SIGINT/SIGQUIT fast), and the argument only keeps the signature every child target has.
    """
    del shutdown
    master = os.getpid()
    logs.configure(config.logging, "api", logs.log_dir(config))
    try:
        ApiServer(config).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if os.getpid() != master:
            # A worker ends here. It must not unwind into our caller's frames or atexit hooks:
            # those belong to the process that forked the master.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    return 0
