"""What `streamd verify` tells people: the reconciliation table, progress lines, and the error that stops it."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import orjson

EXAMPLES = 10
PROGRESS_EVERY = 2.0  # seconds between progress lines on long topics


class VerifyError(Exception):
    """The check could not be made (a server does not answer, the topic does not exist); one sentence."""


@dataclass
class Reconciliation:
    topic: str
    checked: int = 0
    stored: int = 0
    repeated: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    pending: int = 0
    missing: int = 0
    filtered: int = 0  # dropped by a filter stage: neither stored nor dead-lettered, as configured
    duplicated: int = 0
    repeated_dead_letters: int = 0  # dead letters of the same coordinates beyond the first
    problems: list[str] = field(default_factory=list)  # the first EXAMPLES missing or duplicated, for people

    @property
    def ok(self) -> bool:
        """Every message checked is stored, dead-lettered or filtered out, and none of them twice."""
        return self.missing == 0 and self.duplicated == 0 and self.pending == 0 and self.conflicts == 0

    def note(self, problem: str) -> None:
        if len(self.problems) < EXAMPLES:
            self.problems.append(problem)

    def lines(self) -> list[str]:
        rows = [
            ("checked", self.checked, f"messages of {self.topic}"),
            ("stored", self.stored, ""),
            ("repeated ids", self.repeated, "the same message at another offset, stored once (fine)"),
            ("id conflicts", self.conflicts, "another message stored under its id" if self.conflicts else ""),
            ("dead-lettered", self.dead_lettered, ""),
            ("not consumed yet", self.pending, "after the group's committed offset" if self.pending else ""),
            ("filtered", self.filtered, "dropped by a filter stage (fine)" if self.filtered else ""),
            ("missing", self.missing, ""),
            ("duplicated", self.duplicated, "stored twice, or stored and dead-lettered" if self.duplicated else ""),
        ]
        out = [f"{name:<17}{count:>10}  {remark}".rstrip() for name, count, remark in rows]
        if self.repeated_dead_letters:
            out.append(f"({self.repeated_dead_letters} dead letters are repeats of the same message: at least once)")
        out += self.problems
        if self.pending:
            out.append(
                "Messages not consumed yet are not in the store: run again once the consumers have caught up, "
                "or leave the newest out with --until."
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        """The report for machines (`streamd verify --json`): every count, `ok`, and the problems noted."""
        return {**asdict(self), "ok": self.ok}


class Progress:
    """A line on stderr every PROGRESS_EVERY seconds, so a long check is visibly alive."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.last = time.monotonic()

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.out is not None and (force or now - self.last >= PROGRESS_EVERY):
            self.last = now
            print(f"verify: {text}", file=self.out, flush=True)


def print_report(report: Reconciliation, out: TextIO | None = None, as_json: bool = False) -> None:
    if as_json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode(), file=out or sys.stdout)
        return
    for line in report.lines():
        print(line, file=out or sys.stdout)
