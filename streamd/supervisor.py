"""The supervisor: one process that forks every child, restarts what dies and stops everything cleanly.

Shaped like gunicorn's arbiter.  Signal handlers only queue the signal and wake the main loop through
a self-pipe; the loop then runs, in order:

    dispatch_signals()   SIGHUP → handle_hup (reload), SIGTERM → handle_term, SIGINT → handle_int,
                         SIGQUIT → handle_quit, SIGCHLD → handle_chld
    reap_children()      waitpid every exited child and let its `Child` decide: EXITED, BACKOFF or FATAL
    manage_children()    spawn what is due, promote STARTING to RUNNING, escalate overdue stops

What happens when a child dies is therefore `reap_children` plus `Child.exited` in children.py.
Which children there are is plan.py's; how each one behaves, children.py's.

Over 300 lines on purpose: the loop, the handlers, reaping, spawning, reload and the control requests
(status, the operator's stop/start/restart) all act on one list of children and one self-pipe, and read
best as one class, as in gunicorn's arbiter.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence

from setproctitle import setproctitle

from streamd import config as config_module
from streamd import logs, metrics
from streamd.children import AfterStop, Child, ChildSpec, ChildState, RestartPolicy, Tier
from streamd.config import Config, ConfigError
from streamd.control import ControlServer
from streamd.lifecycle import PR_SET_CHILD_SUBREAPER, Shutdown, die_with_parent, prctl
from streamd.plan import Planner, plan_children
from streamd.readiness import ReadinessProbe
from streamd.sdnotify import Notifier

log = logging.getLogger("streamd.supervisor")


class Supervisor:
    SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD)

    def __init__(self, config: Config, services: Sequence[ChildSpec] = (), plan: Planner = plan_children) -> None:
        self.config = config
        self.services = list(services)
        self.plan = plan
        self.children: list[Child] = []
        self.signal_queue: list[int] = []
        self.wake_r, self.wake_w = -1, -1
        self.control = ControlServer(config)
        self.notifier = Notifier()
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.stopping = False
        self.interrupts = 0
        self.exit_code = 0
        self.announced_ready = False
        self.readiness: ReadinessProbe | None = None  # READY waits for Kafka and the store to answer
        self.reloads = 0  # reload requests handled, refused ones included
        self.reload_refused: str | None = None  # why the last reload kept the previous config

    # --- main loop -------------------------------------------------------------------------------

    def run(self) -> int:
        setproctitle("streamd: supervisor")
        # Orphaned grandchildren (a Gunicorn worker whose master was killed) are re-parented to us,
        # so we reap them instead of leaving that to init.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.init_signals()
        self.control.open()
        # Before planning imports any child's code: prometheus-client picks file-backed values at import.
        metrics.prepare(self.config)
        self.adopt(self.plan(self.config, self.services))
        self.readiness = ReadinessProbe(self.config)
        log.info("supervisor started (pid %d) with %d children", self.pid, len(self.children))
        try:
            while not self.finished():
                self.sleep()
                self.dispatch_signals()
                self.reap_children()
                self.manage_children()
                self.notifier.watchdog(time.monotonic())
        finally:
            self.readiness.stop()
            self.control.close()
        log.info("supervisor stopped")
        return self.exit_code

    def finished(self) -> bool:
        return self.stopping and not any(child.is_alive for child in self.children)

    def init_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in self.SIGNALS:
            signal.signal(signum, self.on_signal)

    def on_signal(self, signum: int, frame: object) -> None:
        if len(self.signal_queue) < 16:
            self.signal_queue.append(signum)
        self.wakeup()

    def wakeup(self) -> None:
        try:
            os.write(self.wake_w, b".")
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    def sleep(self) -> None:
        """Wait for a signal, a control request or the next deadline; whichever comes first."""
        busy = any(c.state in (ChildState.STARTING, ChildState.STOPPING) for c in self.children)
        timeout = 0.2 if busy or self.signal_queue else 1.0
        probe = [self.readiness] if self.readiness is not None and self.readiness.open else []
        try:
            readable, _, _ = select.select([self.wake_r, self.control.fileno(), *probe], [], [], timeout)
        except InterruptedError:
            return
        if probe and self.readiness in readable:
            self.readiness.read()
        if self.wake_r in readable:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        if self.control.fileno() in readable:
            self.control.serve_one(self.answer)

    def dispatch_signals(self) -> None:
        handlers = {
            signal.SIGHUP: self.handle_hup,
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGCHLD: self.handle_chld,
        }
        while self.signal_queue:
            handlers[self.signal_queue.pop(0)]()

    # --- signal handlers (run in the main loop, never in signal context) -------------------------

    def handle_chld(self) -> None:
        pass  # reap_children runs right after dispatch on every wake-up

    def handle_term(self) -> None:
        self.begin_stop("SIGTERM")

    def handle_int(self) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            self.handle_quit()
        else:
            self.begin_stop("SIGINT (press Ctrl-C again to stop at once)")

    def handle_quit(self) -> None:
        log.warning("stopping at once: killing every child")
        self.stopping, self.exit_code = True, 1
        for child in self.children:
            child.kill()

    def handle_hup(self) -> None:
        try:
            self.reload()
        except Exception as exc:
            # Last line of defence: a reload must never take the supervisor, and with it every
            # child (PR_SET_PDEATHSIG), down.  The traceback is for us; the pipeline keeps running.
            self.reload_refused = (
                f"the reload failed ({type(exc).__name__}: {exc}); the supervisor log has the details."
            )
            log.exception("reload failed part way; the children keep running, check `streamd status`")

    # --- reaping and managing --------------------------------------------------------------------

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            metrics.forget(pid)
            self.reaped(pid, status, time.monotonic())

    def reaped(self, pid: int, status: int, now: float) -> None:
        child = next((c for c in self.children if c.pid == pid), None)
        if child is None:
            return  # an adopted grandchild; reaping it is all we owe it
        child.exited(status, now)
        if child.retired:
            self.children.remove(child)

    def manage_children(self) -> None:
        now = time.monotonic()
        for child in self.children:
            child.deadline(now)
        if self.stopping:
            self.stop_next_tier(now)
            return
        for child in self.children:
            if child.due_to_prove(now):
                child.proven(now)
        # Pipeline children wait for local servers to answer once; after that a restarting server is
        # the client libraries' business (librdkafka and pymongo reconnect by themselves).
        services_up = all(c.ever_running for c in self.children if c.spec.tier is Tier.SERVICE)
        for child in self.children:
            if child.due_to_spawn(now) and (child.spec.tier is Tier.SERVICE or services_up):
                self.spawn(child)
        # Ready once every child has run, given up or been held by the operator, and Kafka and the store
        # answer: a FATAL child must not hold systemd's start job hostage until its timeout, and
        # `streamd status` says which one failed.
        settled = all(c.ever_running or c.held or c.state is ChildState.FATAL for c in self.children)
        if not self.announced_ready and settled and self.readiness is not None and self.readiness.ready:
            self.announced_ready = True
            running = sum(c.state is ChildState.RUNNING for c in self.children)
            self.notifier.ready(f"{running} of {len(self.children)} children running")
            log.info("%d of %d children are running", running, len(self.children))

    def begin_stop(self, reason: str) -> None:
        if self.stopping:
            return
        log.info("stopping on %s: children get %.0f s to finish", reason, self.config.supervisor.graceful_timeout)
        self.stopping = True
        self.notifier.stopping()

    def stop_next_tier(self, now: float) -> None:
        """Stop the pipeline first and the local servers last, so consumers can still commit."""
        for tier in sorted(Tier, reverse=True):
            members = [c for c in self.children if c.spec.tier is tier and c.is_alive]
            if members:
                for child in members:
                    # AfterStop.REST: a shutdown overrides any restart a reload had asked for.
                    child.stop_requested(now, self.config.supervisor.graceful_timeout, then=AfterStop.REST)
                return

    def spawn(self, child: Child) -> None:
        pid = os.fork()
        if pid:
            child.spawned(pid, time.monotonic())
            return
        code = 1
        try:
            self.become_child(child)
            result = child.spec.target(child.config, Shutdown().install())
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            log.exception("%s crashed", child.name)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def become_child(self, child: Child) -> None:
        """Everything a freshly forked child must do before it runs its own code."""
        # Own process group: Ctrl-C in a terminal reaches only the supervisor, which stops the
        # children in order (consumers before Kafka) instead of all at once.
        os.setpgid(0, 0)
        die_with_parent(signal.SIGKILL, self.pid)
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.control.sock is not None:
            # Close, never unlink: the socket file belongs to the supervisor.
            self.control.sock.close()
        if self.readiness is not None:
            self.readiness.forget()
        setproctitle(child.spec.title)
        logs.configure(child.config.logging, child.name, logs.log_dir(child.config))

    # --- reload ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read config.yaml and apply only the difference; a bad file changes nothing."""
        if self.stopping:
            log.info("reload ignored: the supervisor is stopping")
            return
        path = self.config.source
        self.reloads += 1
        try:
            new = config_module.load(path)
        except ConfigError as exc:
            self.reload_refused = str(exc)
            log.error("reload refused, still running the previous config: %s", exc)
            return
        except Exception as exc:
            # Not a sentence we wrote: a bug in the loader, or the machine (MemoryError).  Still no
            # reason to stop a running pipeline.
            self.reload_refused = f"{path}: could not be loaded ({type(exc).__name__}: {exc})."
            log.exception("reload refused, still running the previous config: loading %s failed", path)
            return
        # Planned before anything changes, so a failure here (handle_hup logs it) leaves the old config whole.
        desired = {spec.name: spec for spec in self.plan(new, self.services)}
        self.reload_refused = None
        self.notifier.reloading()
        changed = self.config.changed_sections(new)
        changed_keys = self.config.changed_settings(new)  # a child may declare a single key it reads
        if "stack" in changed or new.state_dir != self.config.state_dir:
            log.warning("changes to stack and state_dir take effect at the next `streamd start`")
        if "logging" in changed:
            logs.configure(new.logging, "supervisor", logs.log_dir(self.config))  # state_dir waits for a start
        log.info("reloading %s: changed sections: %s", path, ", ".join(sorted(changed)) or "none")
        self.config = new
        now = time.monotonic()
        for child in list(self.children):
            if desired.pop(child.name, None) is None:
                if not child.retiring:
                    log.info("removing %s", child.name)
                if child.unwanted(now, new.supervisor.graceful_timeout):
                    self.children.remove(child)
                continue
            restart = bool(child.spec.sections & changed_keys)
            if child.retiring:
                log.info("keeping %s after all: it starts again once it has stopped", child.name)
            elif restart and child.is_alive:
                log.info("restarting %s for its new config", child.name)
            child.wanted(new, restart, now)
        self.adopt(desired.values())
        self.notifier.ready("reloaded")

    def adopt(self, specs: Sequence[ChildSpec] | object) -> None:
        for spec in specs:  # type: ignore[attr-defined]
            self.children.append(Child(spec, RestartPolicy.from_config(self.config.supervisor), self.config))

    # --- control requests: status and the operator's verbs --------------------------------------

    def answer(self, request: str) -> dict:
        verb, *names = request.split() or ["status"]
        if verb in OPERATOR_VERBS:
            return self.operate(verb, names)
        return self.status()

    def operate(self, verb: str, names: list[str]) -> dict:
        """`streamd stop|start|restart [CHILD]`: an event of each named child (all without names)."""
        if self.stopping:
            return {"error": "the supervisor is stopping; start it again with `streamd start`."}
        # A child a reload is removing is no longer the operator's to command.
        known = {child.name: child for child in self.children if not child.retiring}
        unknown = [name for name in names if name not in known]
        if unknown:
            return {"error": f"no child named {', '.join(unknown)}", "names": list(known)}
        chosen = [known[name] for name in names] if names else list(known.values())
        now, grace = time.monotonic(), self.config.supervisor.graceful_timeout
        for child in chosen:
            log.info("%s: %s requested by the operator", child.name, verb)
            OPERATOR_VERBS[verb](child, now, grace)
        return {"children": [child.snapshot(now) for child in chosen]}

    # --- status ----------------------------------------------------------------------------------

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "pid": self.pid,
            "config": str(self.config.source) if self.config.source else None,
            "uptime": round(now - self.started, 1),
            "stopping": self.stopping,
            "reloads": self.reloads,
            "reload_refused": self.reload_refused,
            "waiting_for": self.readiness.waiting_for if self.readiness is not None else None,
            "children": [child.snapshot(now) for child in self.children],
        }


# The control socket's verbs, each one event of `Child` (children.py).
OPERATOR_VERBS: dict[str, Callable[[Child, float, float], None]] = {
    "stop": lambda child, now, grace: child.hold(now, grace),
    "start": lambda child, now, grace: child.release(),
    "restart": lambda child, now, grace: child.restart_requested(now, grace),
}
