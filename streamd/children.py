"""What the supervisor knows about each child: its spec, its state, and when it may restart.

The states are supervisord's, and every change of state goes through one named method of `Child`:

    STOPPED --spawned--> STARTING --proven--> RUNNING
    STARTING/RUNNING --stop_requested--> STOPPING --exited--> EXITED
    STARTING/RUNNING --exited (unasked)--> BACKOFF --spawned--> STARTING
                                       \\-> FATAL   (crash_limit exits within crash_window)

A child is "proven" once it has stayed up `start_seconds`, or, for a local server, once its
endpoint answers.  EXITED and FATAL are final until a reload or restart asks for the child again.
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


class Tier(enum.IntEnum):
    """Start order; stop order is the reverse.  Consumers must commit while Kafka still runs."""

    SERVICE = 0
    PIPELINE = 1


@dataclass(frozen=True)
class ChildSpec:
    name: str  # "consumer-2": log tag and status name
    title: str  # "streamd: consumer 2": the process title
    target: ChildTarget  # runs in the forked child; its return value is the exit code
    sections: frozenset[str]  # config sections whose change restarts this child
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
    respawn_after_stop: bool = False  # a reload asked for a restart with new config
    retire_after_stop: bool = False  # a reload removed this child (scale down)
    ever_running: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_alive(self) -> bool:
        return self.pid is not None

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

    def stop_requested(self, now: float, grace: float) -> None:
        """Send SIGTERM; `deadline` will escalate to SIGKILL after `grace` seconds."""
        if self.pid is None:
            if self.state in (ChildState.BACKOFF, ChildState.FATAL):
                self.state = ChildState.EXITED
            return
        if self.state is not ChildState.STOPPING:
            self.state = ChildState.STOPPING
            self.kill_at = now + grace
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Stop at once (a second Ctrl-C): no grace, the exit is still an expected one."""
        if self.pid is not None:
            self.state, self.kill_at = ChildState.STOPPING, None
            self._signal(signal.SIGKILL)

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
            log.info("%s stopped (%s)", self.name, self.last_exit)
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
        }


def describe_wait_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
