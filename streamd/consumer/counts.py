"""What a consumer process counts: plain numbers for its last log line, each also added to its Prometheus series."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from streamd.metrics import series
from streamd.pipeline import Rejection
from streamd.store import WriteOutcome


@dataclass
class ConsumerCounters:
    """Read the numbers freely; count only through the methods, which feed the series (summed over every consumer)."""

    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    id_conflicts: int = 0  # duplicates that are another message, not a replay
    unchecked: int = 0  # duplicates not looked up (time budget)
    rejected: Counter[str] = field(default_factory=Counter)  # by Rejection.reason, when the pipeline rejects
    dead_lettered: Counter[str] = field(default_factory=Counter)  # by reason, once the dead-letter topic acked
    filtered: Counter[str] = field(default_factory=Counter)  # by filter stage name
    failed: Counter[str] = field(default_factory=Counter)  # by stage name, messages a stage failed on
    dropped: int = 0  # messages of revoked partitions dropped from an unfinished batch (their new owner has them)

    def add_consumed(self, messages: int) -> None:
        self.consumed += messages
        series.CONSUMED.inc(messages)

    def add_written(self, outcome: WriteOutcome) -> None:
        self.stored += outcome.inserted
        self.duplicates += outcome.duplicates
        series.STORED.inc(outcome.inserted)
        series.DUPLICATES.inc(outcome.duplicates)

    def add_id_conflicts(self, conflicts: int) -> None:
        self.id_conflicts += conflicts
        series.ID_CONFLICTS.inc(conflicts)

    def add_unchecked(self, duplicates: int) -> None:
        self.unchecked += duplicates
        series.DUPLICATES_UNCHECKED.inc(duplicates)

    def add_rejected(self, rejections: Iterable[Rejection]) -> None:
        rejections = list(rejections)
        self.rejected.update(series.count_by_label(series.REJECTED, (r.reason for r in rejections)))
        failed = [r.stage_name for r in rejections if r.stage_name is not None]
        if failed:
            self.failed.update(series.count_by_label(series.STAGE_FAILED, failed))

    def add_filtered(self, by_stage: Counter[str]) -> None:
        for stage, count in by_stage.items():
            series.STAGE_FILTERED.labels(stage).inc(count)
        self.filtered.update(by_stage)

    def add_dead_lettered(self, rejections: Iterable[Rejection]) -> None:
        self.dead_lettered.update(series.count_by_label(series.DEAD_LETTERED, (r.reason for r in rejections)))

    def add_dropped(self, messages: int) -> None:
        self.dropped += messages  # no series: the messages are counted where their new owner consumes them

    def __str__(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dead_lettered.items()))
        return (
            f"consumed {self.consumed}, stored {self.stored}, duplicates {self.duplicates}"
            + (f" ({self.id_conflicts} id conflicts)" if self.id_conflicts else "")
            + (f", filtered {self.filtered.total()}" if self.filtered else "")
            + ", "
            f"rejected {self.rejected.total()}, dead-lettered {self.dead_lettered.total()}"
            + (f" ({reasons})" if reasons else "")
        )
