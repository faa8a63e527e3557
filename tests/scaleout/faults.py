"""The faults of the scenarios, each with a standard tool: signals for processes, `ip` for links and routes,
and a delay line for latency and loss (this kernel has no netem: see delay_line.py).

Every fault is a context manager or a pair of calls whose undoing is also run after a failure, and every
process started here stops by itself after a bounded time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from streamd.control import descendants

from ..probes import REPO
from .network import Host, ip

IMPAIRED_TABLE = "77"  # a routing table of the host's own, used only for its locally sent packets
RULE_PRIORITY = "77"
DEVICE = "impair0"


@dataclass
class Passage:
    """What went through a delay line, known once it stopped: proof that the fault was there."""

    forwarded: int = 0
    dropped: int = 0

    @property
    def loss(self) -> float:
        return self.dropped / max(1, self.forwarded + self.dropped)


@contextmanager
def impaired(
    host: Host,
    towards: Iterable[Host],
    delay_ms: float = 0,
    jitter_ms: float = 0,
    loss: float = 0,
    seconds: float = 120,
) -> Iterator[Passage]:
    """What `host` sends to `towards` is delayed by delay_ms ± jitter_ms and a fraction `loss` of it is
    dropped, for established connections too (routing is per packet), until the block ends.

    The host's own packets for those addresses are routed into the delay line's TUN device by a rule that
    matches only locally sent traffic (`iif lo`); what the delay line writes back arrives on the TUN device,
    so the rule does not match it again and the main table forwards it out of eth0.
    """
    targets = [target.address for target in towards]
    passage = Passage()
    line = subprocess.Popen(
        [
            *host.exec_prefix(),
            sys.executable,
            "-m",
            "tests.scaleout.delay_line",
            f"--device={DEVICE}",
            f"--delay-ms={delay_ms}",
            f"--jitter-ms={jitter_ms}",
            f"--loss={loss}",
            f"--seconds={seconds}",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert line.stdout is not None and line.stdout.readline().strip() == "ready", "the delay line did not start"
        # Forwarding its own packets back out needs forwarding on, and a source address that is the host's
        # own accepted on the TUN side (rp_filter and accept_local), which no default allows.
        ip(
            "netns",
            "exec",
            host.namespace,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            f"net.ipv4.conf.{DEVICE}.rp_filter=0",
            f"net.ipv4.conf.{DEVICE}.accept_local=1",
        )
        ip("-n", host.namespace, "link", "set", DEVICE, "up")
        for address in targets:
            route = [f"{address}/32", "dev", DEVICE, "src", host.address, "table", IMPAIRED_TABLE]
            ip("-n", host.namespace, "route", "add", *route)
            rule = ["iif", "lo", "to", f"{address}/32", "lookup", IMPAIRED_TABLE, "priority", RULE_PRIORITY]
            ip("-n", host.namespace, "rule", "add", *rule)
        yield passage
    finally:
        for address in targets:
            subprocess.run(
                ["ip", "-n", host.namespace, "rule", "del", "to", f"{address}/32", "lookup", IMPAIRED_TABLE],
                capture_output=True,
                check=False,
            )
        line.terminate()  # the device, and every route through it, goes with the process
        counts = line.communicate(timeout=10)[0].split()  # "forwarded N dropped M"
        if len(counts) == 4:
            passage.forwarded, passage.dropped = int(counts[1]), int(counts[3])


def cut_off(host: Host, towards: Iterable[Host], seconds: float = 120):
    """A silent partition: everything `host` sends to `towards` vanishes, nothing is refused."""
    return impaired(host, towards, loss=1.0, seconds=seconds)


def process_tree(pid: int) -> list[int]:
    return [pid, *sorted(descendants(pid))]


def pause(pids: Iterable[int]) -> None:
    """SIGSTOP, as a VM pause freezes a whole machine: every process at once, none notices."""
    _signal_all(pids, signal.SIGSTOP)


def resume(pids: Iterable[int]) -> None:
    _signal_all(pids, signal.SIGCONT)


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
