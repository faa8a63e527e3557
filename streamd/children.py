"""What the supervisor knows about each child: its spec, its state, and when it may restart.

The states are supervisord's, and every change of state goes through one named method of `Child`:

    STOPPED --spawned--> STARTING --proven--> RUNNING
    STARTING/RUNNING --stop_requested(then)--> STOPPING --exited--> EXITED, or STOPPED when then=RESPAWN
    STARTING/RUNNING --exited (unasked, failed)--> BACKOFF --spawned--> STARTING
                                               \\-> FATAL   (crash_limit failures within crash_window)
    RUNNING --exited (unasked, clean)--> BACKOFF   (not a failure: no crash counted)

A child is "proven" once it has stayed up `start_seconds`, or, for a local server, once its
endpoint answers.  EXITED and FATAL are final until a reload or restart asks for the child again.

The operator's verbs (`streamd stop|start|restart CHILD`) are events of the same machine:

    any --held (operator stop)--> STOPPING --exited--> STOPPED, held: never spawned, a reload keeps it so
    STOPPED held / BACKOFF / EXITED / FATAL --released (operator start)--> STOPPED --spawned--> STARTING
    STARTING/RUNNING --restart_requested--> STOPPING (then=RESPAWN); any other state: as released

Whoever asks a child to stop also says what follows its exit (`AfterStop`); a later request
replaces an earlier one, so a child removed by one reload and asked for by the next comes back,
and rapid reloads converge on the last config.  A clean exit nobody asked for (exit code 0, or
SIGTERM/SIGINT from someone else) restarts after `backoff_initial` without counting as a crash;
before the child is proven it counts as a failure, so a child that cannot start still ends FATAL.

A little over 300 lines on purpose: the diagram, the restart policy and every transition are one
answer to "what happens to a child when…", and are tested together without processes.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from streamd.config import Config, SupervisorConfig
from streamd.lifecycle import Shutdown

log = logging.getLogger("streamd.supervisor")

ChildTarget = Callable[[Config, Shutdown], int]


class ChildState(enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class AfterStop(enum.Enum):
    """What a STOPPING child becomes once it has exited; the latest stop request decides."""

    REST = "rest"  # EXITED: the supervisor is stopping, or nobody asked for the child again
    RESPAWN = "respawn"  # STOPPED, then spawned again with the config of the last reload
    RETIRE = "retire"  # EXITED and dropped from the supervisor's list (a reload removed it)
    HOLD = "hold"  # STOPPED and held there: the operator stopped it (`streamd stop CHILD`)


class Tier(enum.IntEnum):
    """Start order; stop order is the reverse.  Consumers must commit while Kafka still runs."""

    SERVICE = 0
    PIPELINE = 1


@dataclass(frozen=True)
class ChildSpec:
    name: str  # "consumer-2": log tag and status name
    title: str  # "streamd: consumer 2": the process title
    target: ChildTarget  # runs in the forked child; its return value is the exit code
    sections: frozenset[str]  # config sections (or "section.key") whose change restarts this child
    tier: Tier = Tier.PIPELINE
    ready: Callable[[], bool] | None = None  # for servers: RUNNING once this answers


@dataclass
class RestartPolicy:
    """Exponential backoff between restarts, and the crash-loop rule that ends them."""

    initial: float
    maximum: float
    crash_limit: int
    crash_window: float
    recent_exits: deque[float] = field(default_factory=deque)

    @classmethod
    def from_config(cls, settings: SupervisorConfig) -> RestartPolicy:
        return cls(settings.backoff_initial, settings.backoff_max, settings.crash_limit, settings.crash_window)

    def retune(self, settings: SupervisorConfig) -> None:
        self.initial, self.maximum = settings.backoff_initial, settings.backoff_max
        self.crash_limit, self.crash_window = settings.crash_limit, settings.crash_window

    def record_exit(self, now: float) -> None:
        self.recent_exits.append(now)
        while self.recent_exits and now - self.recent_exits[0] > self.crash_window:
            self.recent_exits.popleft()

    def is_crash_loop(self) -> bool:
        return len(self.recent_exits) >= self.crash_limit

    def delay(self) -> float:
        """initial, 2×initial, 4×initial, … capped at maximum; counted over the crash window."""
        exponent = max(len(self.recent_exits) - 1, 0)
        return min(self.initial * (2**exponent), self.maximum)

    def forgive(self) -> None:
        self.recent_exits.clear()


@dataclass
class Child:
    spec: ChildSpec
    policy: RestartPolicy
    config: Config
    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: str | None = None
    retry_at: float = 0.0  # BACKOFF: when to spawn again
    kill_at: float | None = None  # STOPPING: when SIGKILL follows SIGTERM
    after_stop: AfterStop = AfterStop.REST
    ever_running: bool = False
    held: bool = False  # stopped by the operator: not spawned again until `streamd start CHILD`

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_alive(self) -> bool:
        return self.pid is not None

    @property
    def retiring(self) -> bool:
        """Stopping because a reload removed it; a later reload may still ask for it again."""
        return self.state is ChildState.STOPPING and self.after_stop is AfterStop.RETIRE

    @property
    def retired(self) -> bool:
        """Removed by a reload and exited: the supervisor drops it from its list."""
        return self.state is ChildState.EXITED and self.after_stop is AfterStop.RETIRE

    # --- transitions -----------------------------------------------------------------------------

    def spawned(self, pid: int, now: float) -> None:
        assert self.state in (ChildState.STOPPED, ChildState.BACKOFF), self.state
        if self.state is ChildState.BACKOFF:
            self.restarts += 1
        self.pid, self.started_at, self.state = pid, now, ChildState.STARTING
        log.info("%s started (pid %d)", self.name, pid)

    def proven(self, now: float) -> None:
        assert self.state is ChildState.STARTING
        self.state = ChildState.RUNNING
        self.ever_running = True
        log.info("%s is running (pid %s)", self.name, self.pid)

    def stop_requested(self, now: float, grace: float, then: AfterStop = AfterStop.REST) -> None:
        """Send SIGTERM (once); `deadline` escalates to SIGKILL after `grace` seconds; `then` follows the exit."""
        if self.pid is None:
            if self.state in (ChildState.BACKOFF, ChildState.FATAL):
                self.state = ChildState.EXITED
            return
        self.after_stop = then
        if self.state is not ChildState.STOPPING:
            self.state = ChildState.STOPPING
            self.kill_at = now + grace
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Stop at once (a second Ctrl-C): no grace, the exit is still an expected one."""
        if self.pid is not None:
            self.state, self.kill_at, self.after_stop = ChildState.STOPPING, None, AfterStop.REST
            self._signal(signal.SIGKILL)

    def wanted(self, config: Config, restart: bool, now: float) -> None:
        """A reload asks for this child, with `config`; `restart` when a section it reads changed."""
        self.config = config
        self.policy.retune(config.supervisor)
        if self.held:
            return  # the operator's stop outlasts reloads; `start CHILD` runs it with this config
        if self.state is ChildState.STOPPING or (self.is_alive and restart):
            # Stopping for a restart, or for a removal this reload takes back: either way it comes back.
            self.stop_requested(now, config.supervisor.graceful_timeout, then=AfterStop.RESPAWN)
        else:
            self.rearm()

    def hold(self, now: float, grace: float) -> None:
        """The operator stops this child and keeps it stopped, whatever its state."""
        self.held = True
        if self.is_alive:
            self.stop_requested(now, grace, then=AfterStop.HOLD)
        else:
            self.state, self.after_stop = ChildState.STOPPED, AfterStop.REST

    def release(self) -> None:
        """The operator asks for this child: spawned at once if it is not running, however it ended."""
        self.held = False
        if self.state is ChildState.STOPPING:
            self.after_stop = AfterStop.RESPAWN
        elif not self.is_alive:
            self.policy.forgive()  # the operator saying "try again", as a reload does after FATAL
            self.state = ChildState.STOPPED

    def restart_requested(self, now: float, grace: float) -> None:
        """The operator restarts this child: a graceful stop, then a spawn with the current config."""
        if self.is_alive:
            self.held = False
            self.stop_requested(now, grace, then=AfterStop.RESPAWN)
        else:
            self.release()

    def unwanted(self, now: float, grace: float) -> bool:
        """A reload removed this child; True when it can leave the list at once (no process to stop)."""
        if not self.is_alive:
            return True
        self.stop_requested(now, grace, then=AfterStop.RETIRE)
        return False

    def deadline(self, now: float) -> None:
        if self.state is ChildState.STOPPING and self.kill_at is not None and now >= self.kill_at:
            log.warning("%s did not stop within the graceful timeout; sending SIGKILL", self.name)
            self._signal(signal.SIGKILL)
            self.kill_at = None

    def exited(self, status: int, now: float) -> None:
        """The child was reaped.  Whether it restarts depends on whether we asked it to stop."""
        self.last_exit = describe_wait_status(status)
        self.pid, self.kill_at = None, None
        if self.state is ChildState.STOPPING:
            self.state = ChildState.EXITED
            if self.after_stop is AfterStop.RESPAWN:
                self.state, self.after_stop = ChildState.STOPPED, AfterStop.REST
                log.info("%s stopped (%s); starting it again with its new config", self.name, self.last_exit)
            elif self.after_stop is AfterStop.HOLD:
                self.state, self.after_stop = ChildState.STOPPED, AfterStop.REST
                log.info("%s stopped (%s); held until `streamd start %s`", self.name, self.last_exit, self.name)
            else:
                log.info("%s stopped (%s)", self.name, self.last_exit)
            return
        if self.state is ChildState.RUNNING and is_clean_exit(status):
            # Someone else's SIGTERM, or the child deciding it is done: not a failure, so no crash is
            # counted, but the pipeline still needs it.
            self.state, self.retry_at = ChildState.BACKOFF, now + self.policy.initial
            log.warning(
                "%s exited (%s) without being asked to; restarting in %.1f s",
                self.name,
                self.last_exit,
                self.policy.initial,
            )
            return
        self.policy.record_exit(now)
        if self.policy.is_crash_loop():
            self.state = ChildState.FATAL
            log.error(
                "%s is FATAL: it exited %d times within %.0f s (last: %s); it will not be restarted "
                "until `streamd reload` or a restart; the other children keep running",
                self.name,
                len(self.policy.recent_exits),
                self.policy.crash_window,
                self.last_exit,
            )
            return
        delay = self.policy.delay()
        self.state, self.retry_at = ChildState.BACKOFF, now + delay
        log.warning("%s exited unexpectedly (%s); restarting in %.1f s", self.name, self.last_exit, delay)

    def rearm(self) -> None:
        """Ask for the child again: after a restart-for-reload (EXITED), or a reload after FATAL."""
        if self.state is ChildState.FATAL:
            self.policy.forgive()  # a reload is the operator saying "try again"
            self.state = ChildState.STOPPED
        elif self.state is ChildState.EXITED:
            self.state = ChildState.STOPPED

    # --- helpers -----------------------------------------------------------------------------------

    def due_to_spawn(self, now: float) -> bool:
        if self.held:
            return False
        return self.state is ChildState.STOPPED or (self.state is ChildState.BACKOFF and now >= self.retry_at)

    def due_to_prove(self, now: float) -> bool:
        if self.state is not ChildState.STARTING or self.started_at is None:
            return False
        if self.spec.ready is not None:
            return self.spec.ready()
        return now - self.started_at >= self.config.supervisor.start_seconds

    def _signal(self, signum: int) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass  # already gone; the reaper will see it

    def snapshot(self, now: float) -> dict:
        return {
            "name": self.name,
            "state": self.state.value,
            "pid": self.pid,
            "uptime": round(now - self.started_at, 1) if self.pid and self.started_at else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "stopped_by": "operator" if self.held else None,
        }


CLEAN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def is_clean_exit(status: int) -> bool:
    """Exit code 0, or stopped by SIGTERM/SIGINT (directly, or as a shell's or the JVM's 128+N)."""
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) in CLEAN_SIGNALS
    code = os.waitstatus_to_exitcode(status)
    return code == 0 or code in {128 + signum for signum in CLEAN_SIGNALS}


def describe_wait_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
