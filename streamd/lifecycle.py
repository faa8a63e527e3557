"""How a process learns that it should stop: SIGTERM or SIGINT set a flag its main loop checks, and
the kernel signals it when the process that started it dies."""

from __future__ import annotations

import ctypes
import os
import signal
import threading

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
# Looked up at import, never after fork: dlopen in a forked child of a threaded process can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent(signum: int, parent: int) -> None:
    """Have the kernel send `signum` to this process when `parent` dies, even by SIGKILL; exit at once
    when it already has.

    PDEATHSIG fires when the *thread* that forked us exits, so the caller must fork from its main
    thread.  The getppid check closes the race where the parent died between fork() and prctl().
    """
    prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:
        os._exit(1)


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
