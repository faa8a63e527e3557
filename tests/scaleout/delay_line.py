"""A delay line: what `tc qdisc add … netem delay D J loss L` does, for kernels built without sch_netem.

The kernel of the machines this project is tested on has no netem (CONFIG_NET_SCH_NETEM is not set,
nor are the prio qdisc and tc actions), so `faults.impaired` routes a host's packets for chosen
destinations into a TUN device instead, and this program holds each packet for D ± J ms (uniform), drops
a fraction L of them, and writes the rest back into the TUN device, from which the kernel forwards
them out of the host's real interface (see faults.py for the routes and the rule that prevent a loop).
With L = 1 it is a silent partition: nothing sent reaches the other side, nothing is refused.

Run inside the host's namespace; it creates the device, prints "ready", and stops on SIGTERM or by itself
after --seconds (the device goes with it, and with it the routes: traffic flows directly again), printing
how many packets it forwarded and dropped.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READS_PER_WAKEUP = 256


def open_tun(name: str) -> int:
    descriptor = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(descriptor, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return descriptor


def run(device: int, delay: float, jitter: float, loss: float, seconds: float) -> tuple[int, int]:
    """Delay and drop packets until `seconds` have passed or SIGTERM came; returns (forwarded, dropped)."""
    deadline = time.monotonic() + seconds
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    held: list[tuple[float, int, bytes]] = []  # (release time, arrival number, packet)
    arrivals = forwarded = dropped = 0
    while (now := time.monotonic()) < deadline and not stopping:
        wait = min(deadline - now, held[0][0] - now if held else 1.0)
        readable, _, _ = select.select([device], [], [], max(wait, 0.0))
        if readable:
            for _ in range(READS_PER_WAKEUP):
                try:
                    packet = os.read(device, 65536)
                except BlockingIOError:
                    break
                if random.random() < loss:
                    dropped += 1
                    continue
                arrivals += 1
                release = time.monotonic() + max(0.0, random.uniform(delay - jitter, delay + jitter))
                heapq.heappush(held, (release, arrivals, packet))
        now = time.monotonic()
        while held and held[0][0] <= now:
            os.write(device, heapq.heappop(held)[2])
            forwarded += 1
    return forwarded, dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", required=True, help="name of the TUN device to create")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="fraction of packets dropped, 0 to 1")
    parser.add_argument("--seconds", type=float, required=True, help="stop by itself after this long")
    args = parser.parse_args(argv)
    if not 0.0 <= args.loss <= 1.0 or args.jitter_ms > args.delay_ms or args.seconds <= 0:
        parser.error("--loss must be within 0..1, --jitter-ms at most --delay-ms, --seconds positive")
    device = open_tun(args.device)
    print("ready", flush=True)
    forwarded, dropped = run(device, args.delay_ms / 1000, args.jitter_ms / 1000, args.loss, args.seconds)
    print(f"forwarded {forwarded} dropped {dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
