"""The figures of each scenario, as the issue asks for them, written where a person finds them after a run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..probes import STACK_STATE_DIR

REPORT_DIR = STACK_STATE_DIR / "scaleout"
COLUMNS = (
    ("scenario", "scenario"),
    ("sent", "sent"),
    ("stored", "stored"),
    ("duplicated", "duplicated"),
    ("dead_lettered", "dead-lettered"),
    ("redelivered", "redelivered (store refused)"),
    ("producer_stall", "producer stall s"),
    ("consumer_stall", "longest stall s"),
    ("catch_up", "catch-up s"),
)


@dataclass(frozen=True)
class Figures:
    scenario: str
    sent: int
    stored: int
    duplicated: int
    dead_lettered: int
    redelivered: int  # deliveries the store refused as already stored: at-least-once, absorbed by the _id
    producer_stall: float  # longest gap between two acknowledgements of the load producer
    consumer_stall: float  # longest time the group committed nothing while messages waited
    catch_up: float | None  # from the end of the fault until the backlog of that moment was committed


def markdown(rows: list[Figures]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        values = asdict(row)
        cells = [_cell(values[key]) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[Figures], directory: Path = REPORT_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "figures.json").write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    path = directory / "figures.md"
    path.write_text(markdown(rows))
    return path


def write_samples(scenario: str, samples: list, started: float, directory: Path = REPORT_DIR) -> Path:
    """What the watch saw, second by second, for whoever wants to see where a stall was."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{scenario}.samples.json"
    rows = [{**asdict(sample), "at": round(sample.at - started, 2)} for sample in samples]
    path.write_text(json.dumps(rows) + "\n")
    return path


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
