"""Crash quarantine: the last line of defence against a message that kills the consumer process itself.

The pipeline turns every exception of a stage into a rejection, but a process can still die on a
message: a native crash, os._exit, an exception outside the pipeline, a kill by the kernel or an operator.
Consumed again, the same message would kill every consumer in turn until the supervisor gives up on
them (FATAL) and every partition stops. The rule that prevents it:

1. Before handling a batch, a consumer writes the batch's offset ranges (topic, partition, first..last)
   to its in-flight record, `<state_dir>/consumers/<pid>-<token>.inflight`, and clears it once the
   batch is stored or dead-lettered. It holds an flock on that file for its whole life and removes it
   on a clean stop, so a record nobody holds means its consumer died with those messages in flight.
2. A consumer starting (typically the one the supervisor restarts) moves every record nobody holds
   into the shared suspects record, `<state_dir>/consumers/suspects.json` (written under the flock of
   `suspects.lock`, replaced atomically, so readers need no lock).
3. A consumer whose messages fall in a suspect range handles each of those alone, as the only message
   in flight. A death with a single message in flight counts against that message; after
   QUARANTINE_DEATHS such deaths the message is quarantined: dead-lettered with reason `crash` (stage
   `consume`) without being handled again, and committed with the rest.
4. Suspects are forgotten once their offsets are committed.

A consumer killed in the middle of an ordinary batch (kill -9, OOM) therefore quarantines nothing: its
batch is handled once more one message at a time, and only a message that kills that careful handling
twice is given up on. In normal running the cost is one small write and one truncate per batch, plus
one stat() of the suspects record.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import orjson
from confluent_kafka import Message

from streamd.config import ConfigError
from streamd.pipeline import Rejection

log = logging.getLogger(__name__)

QUARANTINE_DEATHS = 2  # deaths with the message alone in flight after which it is dead-lettered as `crash`

Partition = tuple[str, int]
Span = tuple[str, int, int, int]  # topic, partition, first offset, last offset (inclusive)
Where = tuple[str, int, int]  # topic, partition, offset


class Flight(tuple[Span, ...]):
    """The spans of one batch in flight; told apart by identity, as two batches can hold the same spans."""


class Quarantine:
    """One consumer's in-flight record, and its view of the suspects every consumer of the state dir shares."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.suspects_path = directory / "suspects.json"
        self.lock_path = directory / "suspects.lock"
        # Locked before it gets its final name, so that no other consumer can take it for a dead one's.
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        draft = directory / f".{name}.tmp"
        self.record = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fcntl.flock(self.record, fcntl.LOCK_EX)
        self.path = directory / f"{name}.inflight"
        os.rename(draft, self.path)
        # The spans of each batch begun and not done; the record holds them all.
        self.flights: list[Flight] = []
        self.recorded = b""
        self.ranges: dict[Partition, list[tuple[int, int]]] = {}
        self.deaths: dict[Where, int] = {}
        self._loaded: tuple[int, int, int] | None = None  # (inode, mtime, size) of the suspects record read

    @classmethod
    def open(cls, state_path: Path, group: str = "consumers") -> Quarantine:
        """This consumer's record, after taking over the records of consumers that died.

        `group` names the directory of the state dir shared by the members of one consumer group (the
        analyzer's suspects are not the consumers'). A state dir the consumer cannot write is the
        operator's to fix: a ConfigError sentence, not a traceback.
        """
        directory = state_path / group
        try:
            quarantine = cls(directory)
        except OSError as exc:
            raise ConfigError(
                f"state_dir: {directory} cannot hold the in-flight records of the {group} ({exc.strerror}); "
                "point state_dir at a directory streamd can write."
            ) from None
        quarantine.adopt_dead_records()
        return quarantine

    # --- in flight --------------------------------------------------------------------------------

    def begin(self, messages: Sequence[Message]) -> Flight:
        """Record these messages as in flight, beside the batches still in flight (the one being written while
        this one is prepared); one write, since a death must find them. done() takes what this returns."""
        spans: dict[Partition, list[int]] = {}
        for message in messages:
            if message.error() is not None:
                continue
            key, offset = (message.topic(), message.partition()), message.offset()
            span = spans.get(key)
            if span is None:
                spans[key] = [offset, offset]
            elif offset > span[1]:
                span[1] = offset
            elif offset < span[0]:
                span[0] = offset
        flight = Flight((topic, partition, first, last) for (topic, partition), (first, last) in spans.items())
        self.flights.append(flight)
        self._record()
        return flight

    def done(self, flight: Flight | None) -> None:
        """The batch begin() returned this for is stored or dead-lettered, or holds nothing to handle (None: a
        condemned message, never begun)."""
        if flight is not None:
            self.flights = [other for other in self.flights if other is not flight]
            self._record()

    def _record(self) -> None:
        data = "".join(f"{t}\t{p}\t{first}\t{last}\n" for flight in self.flights for t, p, first, last in flight)
        # Write, then cut what a longer previous record left: a death in between leaves extra lines,
        # which only makes more messages suspect, never fewer.
        encoded = data.encode()
        if encoded != self.recorded:
            os.pwrite(self.record, encoded, 0)
            os.ftruncate(self.record, len(encoded))
            self.recorded = encoded

    def close(self, clean: bool = True) -> None:
        """Remove the record on a clean stop; after a crash keep it, for the next consumer to adopt."""
        if clean:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.record)  # releases the lock: a record left behind is now a dead consumer's

    # --- suspects ----------------------------------------------------------------------------------

    def portions(self, messages: list[Message]) -> list[list[Message]]:
        """The messages to handle as one batch each, in order: all of them, unless some are suspect;
        then every suspect message is a portion of its own, between the runs of the others."""
        self.refresh()
        if not self.suspects():
            return [messages] if messages else []
        portions: list[list[Message]] = []
        ordinary: list[Message] = []
        for message in messages:
            if message.error() is None and self.is_suspect(message.topic(), message.partition(), message.offset()):
                if ordinary:
                    portions.append(ordinary)
                    ordinary = []
                portions.append([message])
            else:
                ordinary.append(message)
        if ordinary:
            portions.append(ordinary)
        return portions

    def suspects(self) -> bool:
        """Whether any message is suspect (as of the last portions() or refresh())."""
        return bool(self.ranges or self.deaths)

    def is_suspect(self, topic: str, partition: int, offset: int) -> bool:
        return (topic, partition, offset) in self.deaths or any(
            first <= offset <= last for first, last in self.ranges.get((topic, partition), ())
        )

    def condemned(self, message: Message) -> Rejection | None:
        """The `crash` dead letter of a message consumers died on too often, or None for one to handle."""
        deaths = self.deaths.get((message.topic(), message.partition(), message.offset()), 0)
        if deaths < QUARANTINE_DEATHS:
            return None
        return Rejection.of(
            message,
            "consume",
            "crash",
            f"a consumer process died {deaths} times while handling this message alone; quarantined, not handled again",
        )

    def committed(self, topic: str, partition: int, offset: int) -> None:
        """Offsets below `offset` of this partition are committed: forget them as suspects."""
        self._forget((topic, partition), offset)

    def restarted(self, topic: str, partition: int) -> None:
        """The partition's log was replaced (topic recreated): its old offsets name other messages now."""
        self._forget((topic, partition), None)

    def _forget(self, key: Partition, below: int | None) -> None:
        def gone(offset: int) -> bool:
            return below is None or offset < below

        if not any(gone(last) for _, last in self.ranges.get(key, ())) and not any(
            where[:2] == key and gone(where[2]) for where in self.deaths
        ):
            return
        with self._locked():
            ranges, deaths = self._read()
            ranges = [span for span in ranges if not (span[:2] == key and gone(span[3]))]
            deaths = {where: n for where, n in deaths.items() if not (where[:2] == key and gone(where[2]))}
            self._write(ranges, deaths)

    def refresh(self) -> None:
        """Read the suspects record again if another consumer changed it (one stat() when it did not)."""
        try:
            status = os.stat(self.suspects_path)
            seen = (status.st_ino, status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._loaded:
            return
        ranges, deaths = self._read()
        self._remember(ranges, deaths)
        self._loaded = seen

    def adopt_dead_records(self) -> None:
        """Move the in-flight records of consumers that died into the suspects record."""
        with self._locked():
            ranges, deaths = self._read()
            adopted = 0
            for path in sorted(self.directory.glob("*.inflight")):
                if path == self.path:
                    continue
                spans = _take_if_dead(path)
                if spans is None:
                    continue
                adopted += 1
                for span in spans:
                    if span not in ranges:
                        ranges.append(span)
                # A death counts against a message only when it was the one message in flight.
                if len(spans) == 1 and spans[0][2] == spans[0][3]:
                    where = spans[0][:3]
                    deaths[where] = deaths.get(where, 0) + 1
                    verdict = "dead-lettered as crash" if deaths[where] >= QUARANTINE_DEATHS else "handled alone again"
                    log.warning(
                        "a consumer died with only %s[%d]@%d in flight (%d such deaths); it will be %s",
                        *where,
                        deaths[where],
                        verdict,
                    )
                elif spans:
                    log.warning(
                        "a consumer died with %s in flight; those messages are handled one at a time next",
                        ", ".join(f"{t}[{p}]@{a}..{b}" for t, p, a, b in spans),
                    )
            if adopted:
                self._write(ranges, deaths)
            else:
                self._remember(ranges, deaths)

    # --- the suspects record -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _read(self) -> tuple[list[Span], dict[Where, int]]:
        try:
            raw = orjson.loads(self.suspects_path.read_bytes())
            ranges = [(str(t), int(p), int(a), int(b)) for t, p, a, b in raw["ranges"]]
            deaths = {(str(t), int(p), int(o)): int(n) for t, p, o, n in raw["deaths"]}
        except FileNotFoundError:
            return [], {}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # Losing the suspects only costs the careful handling of a few messages; never a stop.
            log.warning("%s is unreadable (%s); starting without suspects", self.suspects_path, exc)
            return [], {}
        return ranges, deaths

    def _write(self, ranges: list[Span], deaths: dict[Where, int]) -> None:
        """Replace the record atomically (the caller holds the lock)."""
        if not ranges and not deaths:
            with contextlib.suppress(FileNotFoundError):
                self.suspects_path.unlink()
        else:
            draft = self.suspects_path.with_suffix(".tmp")
            draft.write_bytes(orjson.dumps({"ranges": ranges, "deaths": [[*where, n] for where, n in deaths.items()]}))
            os.replace(draft, self.suspects_path)
        self._remember(ranges, deaths)
        self._loaded = None  # read it again next time: the stat of our own write is not known here

    def _remember(self, ranges: Iterable[Span], deaths: dict[Where, int]) -> None:
        self.ranges = {}
        for topic, partition, first, last in ranges:
            self.ranges.setdefault((topic, partition), []).append((first, last))
        self.deaths = dict(deaths)


def _take_if_dead(path: Path) -> list[Span] | None:
    """The spans of a record whose consumer is gone (nobody holds its lock), removing it; else None."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its consumer is alive
        text = os.read(descriptor, 1 << 20).decode(errors="replace")
        path.unlink()
    finally:
        os.close(descriptor)
    spans = []
    for line in text.splitlines():
        try:
            topic, partition, first, last = line.split("\t")
            spans.append((topic, int(partition), int(first), int(last)))
        except ValueError:
            continue  # the tail of a longer previous record, cut short by the death
    return spans
