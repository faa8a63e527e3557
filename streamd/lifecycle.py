"""How a child learns that it should stop: SIGTERM or SIGINT set a flag its main loop checks."""

from __future__ import annotations

import signal
import threading


class Shutdown:
    """A stop request. Handlers only set an event, so a batch in progress always finishes."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> Shutdown:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        self._event.set()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on a stop request; True when stopping."""
        return self._event.wait(seconds)
