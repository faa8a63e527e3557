"""systemd's readiness protocol (sd_notify): a datagram of KEY=VALUE lines to $NOTIFY_SOCKET.

Outside systemd the variable is unset and every call is a no-op, so the supervisor calls it freely.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace, spelled with a NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        watchdog_pid = env.get("WATCHDOG_PID")
        if watchdog_pid and int(watchdog_pid) != os.getpid():
            watchdog_usec = 0  # the watchdog is meant for another process
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto("\n".join(lines).encode(), self.address)
            except OSError:
                pass  # systemd went away; nothing useful to do about it here

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        # Type=notify-reload (systemd 253+) also wants the monotonic timestamp; older systemd ignores it.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval and now - self._last_ping >= self.watchdog_interval:
            self.send("WATCHDOG=1")
            self._last_ping = now

    def next_watchdog_in(self, now: float) -> float | None:
        if not self.watchdog_interval:
            return None
        return max(0.0, self._last_ping + self.watchdog_interval - now)
