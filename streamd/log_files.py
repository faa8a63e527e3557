"""`streamd logs`: the last lines of the per-process log files, and following them across rotation.

Each process writes `<state_dir>/logs/<name>.log` and rotates it to `.log.1`, `.log.2`, … (logs.py).
A child's entries are its own file's plus those of the processes it forks (the API's Gunicorn
workers, `api-worker-N.log`).  Several files are interleaved by each entry's timestamp; an entry is
a line that starts with one plus the lines that follow it without (a traceback).
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import orjson

from streamd.logs import SUFFIX, file_name

FOLLOW_POLL_SECONDS = 0.25
TEXT_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


class NoLogFile(Exception):
    """No log file matches; the message says which ones there are."""


@dataclass(frozen=True)
class Entry:
    stamp: str  # "YYYY-MM-DD HH:MM:SS[.fff]": sorts in time order whatever the format
    text: str  # the line(s), each ending in a newline


def stamp_of(line: str) -> str | None:
    """The entry's time when `line` starts an entry (text or JSON format), else None."""
    if TEXT_STAMP.match(line):
        return line[:19]
    if line.startswith('{"time":'):
        try:
            return str(orjson.loads(line)["time"])[:23].replace("T", " ")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
    return None


def entries(lines: Iterable[str], stamp: str = "") -> Iterator[Entry]:
    """Group lines into entries; lines before the first stamp get `stamp` (the previous file's last)."""
    text: list[str] = []
    for line in lines:
        start = stamp_of(line)
        if start is not None and text:
            yield Entry(stamp, "".join(text))
            text = []
        if start is not None:
            stamp = start
        text.append(line if line.endswith("\n") else line + "\n")
    if text:
        yield Entry(stamp, "".join(text))


def sources(directory: Path, child: str | None) -> list[Path]:
    """The current file of every process shown: all of them, or `child`'s own and its workers'."""
    current = sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []
    if child is None:
        chosen = current
    else:
        own, workers = file_name(child), file_name(f"{child} worker ").removesuffix(SUFFIX)
        chosen = [path for path in current if path.name == own or path.name.startswith(workers)]
    if not chosen:
        names = ", ".join(path.name.removesuffix(SUFFIX) for path in current) or "none yet"
        what = f"for {child}" if child else "at all"
        raise NoLogFile(
            f"no log file {what} in {directory} (files there: {names}); logging.file_max_bytes or "
            "logging.file_count is 0, or the child has not logged yet."
        )
    return chosen


def last_entries(path: Path, count: int) -> list[Entry]:
    """The last `count` entries of `path` and, when it holds fewer, of its rotated files before it."""
    generations = [path, *itertools.takewhile(Path.exists, rotations(path))]
    found: deque[Entry] = deque(maxlen=count)
    for generation in reversed(generations):
        try:
            with open(generation, encoding="utf-8", errors="replace") as lines:
                found.extend(entries(lines, found[-1].stamp if found else ""))
        except FileNotFoundError:
            continue  # rotated away while we read
    return list(found)


def rotations(path: Path) -> Iterator[Path]:
    """`x.log.1`, `x.log.2`, …: newest first, as RotatingFileHandler names them."""
    return (path.with_name(f"{path.name}.{n}") for n in itertools.count(1))


def show(directory: Path, child: str | None, count: int, follow: bool, out: TextIO) -> None:
    """Print the last `count` entries, interleaved by time; with `follow`, then every new one until Ctrl-C."""
    paths = sources(directory, child)
    # Followers open their files (at the end) before the last entries are read: a line written in between
    # may then show twice, but none written before the first poll is skipped, even across a rotation.
    followers = {path: Follower(path, at_end=True) for path in paths} if follow else {}
    for follower in followers.values():
        follower.read_new()
    merged = list(heapq.merge(*(last_entries(path, count) for path in paths), key=lambda entry: entry.stamp))
    for entry in merged[-count:]:
        out.write(entry.text)
    out.flush()
    if follow:
        while True:
            time.sleep(FOLLOW_POLL_SECONDS)
            for path in sources(directory, child):
                followers.setdefault(path, Follower(path, at_end=False))  # a process started since
            fresh = [entry for follower in followers.values() for entry in follower.read_new()]
            for entry in sorted(fresh, key=lambda entry: entry.stamp):
                out.write(entry.text)
            out.flush()


@dataclass
class Follower:
    """Reads what is appended to one log path, and goes on in the new file when the writer rotates it."""

    path: Path
    at_end: bool
    handle: TextIO | None = None
    inode: int | None = None
    partial: str = ""
    stamp: str = ""

    def read_new(self) -> list[Entry]:
        if self.handle is None and not self._open():
            return []
        assert self.handle is not None
        lines = self._complete_lines(self.handle.read())
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None  # between the writer's rename and its reopen
        if current is not None and current.st_ino != self.inode:
            # Rotated: what the writer put in our file before renaming it is above; then come the files it
            # filled and rotated since (a fast writer rotates more than once between two polls), then the new one.
            # What it wrote between our read and the rename is still in our handle: read it before closing.
            lines += self._complete_lines(self.handle.read())
            self.handle.close()
            for newer in self._rotated_since():
                with open(newer, encoding="utf-8", errors="replace") as whole:
                    lines += self._complete_lines(whole.read())
            self.handle, self.at_end = None, False
            if self._open():
                lines += self._complete_lines(self.handle.read())
        elif current is not None and current.st_size < self.handle.tell():
            self.handle.seek(0)  # truncated in place
        found = list(entries(lines, self.stamp))
        if found:
            self.stamp = found[-1].stamp
        return found

    def _rotated_since(self) -> list[Path]:
        """The rotated files newer than the one we were reading, oldest first."""
        newer = []
        for path in rotations(self.path):
            try:
                if os.stat(path).st_ino == self.inode:
                    break
            except FileNotFoundError:
                break  # ours was rotated out of existence: every rotated file left is newer
            newer.append(path)
        return newer[::-1]

    def _open(self) -> bool:
        try:
            self.handle = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115 - kept open across polls
        except FileNotFoundError:
            return False
        self.inode = os.fstat(self.handle.fileno()).st_ino
        if self.at_end:
            self.handle.seek(0, os.SEEK_END)
        return True

    def _complete_lines(self, text: str) -> list[str]:
        """Only whole lines: a writer may be half-way through one."""
        text, self.partial = self.partial + text, ""
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            self.partial = lines.pop()
        return lines
