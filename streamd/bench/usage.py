"""What the consumer processes of a drain used: their own CPU time per message, and their resident memory.

Read from /proc at two instants (the drain's first commit and its last), so start-up, imports and the
group join are left out as they are from the rate. A process's CPU time in /proc/<pid>/stat (utime +
stime) covers all its threads, librdkafka's included, which is the cost a message really has.
Only the consumer children are sampled: the supervisor and the API do no per-message work.

Where /proc does not exist (not Linux), or a consumer was restarted between the two samples (its
counters began again), the figures are absent with a note saying why, never a crash or a wrong number.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
NO_PROC = "no /proc on this system: consumer CPU and RSS are not measured"
# utime and stime: fields 14 and 15 of /proc/<pid>/stat, counted after the ")" that ends the command name
# (which may itself hold spaces or parentheses), where field 3 is the first.
UTIME_AFTER_NAME = 11


@dataclass(frozen=True)
class Sample:
    """One process at one instant."""

    pid: int
    cpu_s: float  # user + system CPU time since the process started, every thread
    rss_mb: float


@dataclass(frozen=True)
class Usage:
    """The consumers' use between two samples: CPU per message drained, and each one's RSS at both ends."""

    cpu_us_per_msg: float | None
    rss_mb: dict[str, dict[str, float]]  # consumer name → {"start": MB, "end": MB}
    note: str | None = None


def sample(pid: int) -> Sample | None:
    """The process's CPU time and resident size now; None when it has gone or there is no /proc."""
    try:
        fields = (PROC / str(pid) / "stat").read_bytes().rpartition(b")")[2].split()
        utime, stime = int(fields[UTIME_AFTER_NAME]), int(fields[UTIME_AFTER_NAME + 1])
        rss = resident_mb(pid)
    except (OSError, IndexError, ValueError):
        return None
    if rss is None:
        return None
    return Sample(pid, (utime + stime) / os.sysconf("SC_CLK_TCK"), rss)


def resident_mb(pid: int) -> float | None:
    """VmRSS of the process in MB (one decimal), or None when it has gone or there is no /proc."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def sample_all(pids: Mapping[str, int]) -> dict[str, Sample | None]:
    """Each named process sampled now (None for one that could not be read)."""
    return {name: sample(pid) for name, pid in pids.items()}


def between(start: Mapping[str, Sample | None], end: Mapping[str, Sample | None], messages: int) -> Usage:
    """What the processes sampled at `start` used until `end`, while `messages` were drained."""
    if not PROC.is_dir():
        return Usage(None, {}, NO_PROC)
    if not start:
        return Usage(None, {}, "no consumer was sampled at the first commit")
    pairs: dict[str, tuple[Sample, Sample]] = {}
    lost: list[str] = []
    for name, first in start.items():
        last = end.get(name)
        if first is None or last is None or last.pid != first.pid:
            lost.append(name)
        else:
            pairs[name] = (first, last)
    if lost:
        return Usage(None, {}, f"{', '.join(sorted(lost))} could not be followed from the first commit to the last")
    rss = {name: {"start": first.rss_mb, "end": last.rss_mb} for name, (first, last) in pairs.items()}
    if messages <= 0:
        return Usage(None, rss, "no message was drained between the first commit and the last")
    cpu_s = sum(last.cpu_s - first.cpu_s for first, last in pairs.values())
    return Usage(round(cpu_s / messages * 1e6, 2), rss)
