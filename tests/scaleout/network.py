"""A private network of hosts on one machine: a Linux network namespace per host, veth pairs on a bridge.

    root namespace (the test: load, probes, `streamd verify`)     198.18.77.1
            │ veth
    ┌───────┴──────────────── switch namespace: bridge br0 ───────────────────────┐
    │ veth            │ veth            │ veth            │ veth         │ veth   │
  store .10       kafka-1 .11      kafka-2 .12      kafka-3 .13      app-1 .21  app-2 .22 …

The addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarking: it is never
routed on the internet, and here it exists only on interfaces this module creates, so nothing can leave
the machine (no namespace has a default route). The bridge lives in a namespace of its own, so the
root namespace gains one interface and no bridge or forwarding rule.

Every name carries the test process's pid, so `sweep_stale` can delete what a killed run left behind,
and `Network.tear_down` deletes every namespace (the veths go with them) also after a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PREFIX = "streamd-scaleout"
SUBNET = "198.18.77"
PREFIX_LENGTH = 24
ROOT_ADDRESS = f"{SUBNET}.1"  # the test process's own address on the bridge


@dataclass(frozen=True)
class Host:
    """One simulated machine: a namespace and its address on the bridge."""

    name: str
    namespace: str
    address: str

    def exec_prefix(self) -> list[str]:
        """Prepended to an argv, runs the command inside this host's network (files and pids are shared)."""
        return ["ip", "netns", "exec", self.namespace]


def unavailable_reason() -> str | None:
    """Why this machine cannot build the network, or None when it can (root, iproute2, netns, TUN)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "building network namespaces, veth pairs and routes needs root (run with sudo)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing: the delay line that adds latency and loss needs TUN"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def ip(*args: str) -> None:
    """Run `ip args…`; a failure raises with iproute2's own message."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


def sweep_stale() -> list[str]:
    """Kill what still runs in the namespaces of runs whose process is gone (a server outlives a SIGKILLed
    test), then delete those namespaces, and so their veths; returns their names."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    removed = []
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(f"{PREFIX}-"):
            continue
        owner = name.removeprefix(f"{PREFIX}-").split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


class Network:
    """The bridge, the test process's veth onto it, and the hosts added with `add`."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}-{os.getpid()}"
        self.switch = f"{self.tag}-switch"
        self.root_link = f"sdso{os.getpid()}"  # interface names are at most 15 characters
        self.hosts: dict[str, Host] = {}

    def build(self) -> Network:
        sweep_stale()
        taken = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "to", f"{SUBNET}.0/{PREFIX_LENGTH}"], capture_output=True, text=True
        ).stdout.split()
        if taken:
            # Two runs at once would both route the subnet from the root namespace: neither would work.
            raise RuntimeError(
                f"{SUBNET}.0/{PREFIX_LENGTH} is already on interface {taken[1]}: another scale-out run "
                "is going on (or something else uses the range); wait for it or remove that address"
            )
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        ip("link", "add", self.root_link, "type", "veth", "peer", "name", "root", "netns", self.switch)
        self._plug("root")
        ip("addr", "add", f"{ROOT_ADDRESS}/{PREFIX_LENGTH}", "dev", self.root_link)
        ip("link", "set", self.root_link, "up")
        return self

    def add(self, name: str, number: int) -> Host:
        """A host named `name` at 198.18.77.<number>, its loopback up (servers also talk to themselves)."""
        host = Host(name, f"{self.tag}-{name}", f"{SUBNET}.{number}")
        ip("netns", "add", host.namespace)
        self.hosts[name] = host
        ip("link", "add", "eth0", "netns", host.namespace, "type", "veth", "peer", "name", name, "netns", self.switch)
        self._plug(name)
        ip("-n", host.namespace, "addr", "add", f"{host.address}/{PREFIX_LENGTH}", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def set_link(self, host: Host, up: bool) -> None:
        """Pull or plug the host's cable: its switch port goes down or up, as a cut link would."""
        ip("-n", self.switch, "link", "set", host.name, "up" if up else "down")

    def tear_down(self) -> None:
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], check=False)
        subprocess.run(["ip", "netns", "del", self.switch], check=False)
        # The root end of a veth goes with its peer, but asynchronously: make sure it is gone.
        subprocess.run(["ip", "link", "del", self.root_link], capture_output=True, check=False)
        self.hosts.clear()

    def _plug(self, port: str) -> None:
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")
