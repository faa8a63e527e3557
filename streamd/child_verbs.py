"""supervisorctl's verbs for one child: `streamd stop|start|restart CHILD`, and `restart` for all.

The supervisor applies the verb at once (an event of each child's state machine, children.py) and
answers; this side then polls `status` until each child has got there — STOPPED for `stop`, RUNNING
in a new process for `start` and `restart` — so the command returns when the work is done, as
supervisorctl's does, and says so when a child fails to come back instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from streamd import control
from streamd.config import Config

POLL_SECONDS = 0.2
MARGIN_SECONDS = 60.0  # on top of graceful_timeout + start_seconds: a local Kafka takes a while to answer


class UnknownChild(Exception):
    """The named child is not one the supervisor runs; the message lists those it does."""


class VerbFailed(Exception):
    """The supervisor refused the verb, or a child did not get where the verb sends it."""


def run(config: Config, verb: str, names: list[str], out: TextIO) -> None:
    """Ask the supervisor to `verb` the named children (all without names) and wait until they have."""
    answer = control.request(config, " ".join([verb, *names]))
    if "names" in answer:
        raise UnknownChild(f"{answer['error']}; the children are: {', '.join(answer['names'])}.")
    if "error" in answer:
        raise VerbFailed(answer["error"])
    before = {child["name"]: child["pid"] for child in answer["children"]}
    arrived = stopped if verb == "stop" else respawned(before, restart=verb == "restart")
    timeout = config.supervisor.graceful_timeout + config.supervisor.start_seconds + MARGIN_SECONDS
    deadline = time.monotonic() + timeout
    waiting = set(before)
    while waiting:
        children = {child["name"]: child for child in control.request_status(config)["children"]}
        for name in sorted(waiting):
            child = children.get(name)
            if child is None:
                raise VerbFailed(f"{name} was removed by a reload while it was being {verb}ed.")
            if arrived(child):
                out.write(f"{name}: {describe(child)}\n")
                waiting.discard(name)
            elif child["state"] == "FATAL":
                raise VerbFailed(f"{name} is FATAL (last exit: {child['last_exit']}); its log says why.")
        if waiting and time.monotonic() > deadline:
            late = ", ".join(f"{name} is {children[name]['state']}" for name in sorted(waiting))
            raise VerbFailed(f"still waiting after {timeout:.0f} s: {late}; see `streamd status` and `streamd logs`.")
        if waiting:
            time.sleep(POLL_SECONDS)


def stopped(child: dict) -> bool:
    return child["state"] == "STOPPED" and child["pid"] is None


def respawned(before: dict[str, int | None], restart: bool) -> Callable[[dict], bool]:
    """RUNNING, and for a restart in another process than the one it had when asked."""

    def arrived(child: dict) -> bool:
        if child["state"] != "RUNNING":
            return False
        return not restart or before[child["name"]] is None or child["pid"] != before[child["name"]]

    return arrived


def describe(child: dict) -> str:
    if child["state"] == "RUNNING":
        return f"RUNNING (pid {child['pid']})"
    if child.get("stopped_by"):
        return f"{child['state']} (by {child['stopped_by']})"
    return child["state"]
