"""The stage chain: the `stages:` list compiled once, then applied to each valid payload in config order.

`StageChain.apply` never raises for a message: it returns an Outcome that says the message is kept (and
for which collection), dropped by a filter, or failed at a stage (why, in one sentence). A stage fails
when an expression raises, when a `where` gives something other than true, false or null, when it
would make a built-in field invalid (text a string; source a string or null; timestamp an ISO 8601
string or a datetime) or when it sets a value the store cannot hold. The payload is changed in place:
the pipeline parsed it for this message alone, and took its id before the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from streamd.message_schema import kafka_time, parse_timestamp, refused_field, shortened
from streamd.stages.compiled import Expression, compile_tree
from streamd.stages.expressions import Evaluator, ExpressionError, compile_expression
from streamd.stages.spec import StageSpecError, check_stages

MAX_INT = 2**63 - 1  # BSON's largest integer
BUILTINS = frozenset({"text", "source", "timestamp"})
Trace = list[dict[str, Any]]


class StageFailed(Exception):
    """One message could not go through one stage; the chain turns it into an Outcome."""


@dataclass(frozen=True, slots=True)
class Step:
    """One compiled stage."""

    name: str
    kind: str
    where: Expression | None
    fields: tuple = ()  # set: (name, expression); rename: (old, new); drop: names
    collection: str | None = None
    touches: frozenset[str] = frozenset()  # the fields it may write or remove
    builtins: frozenset[str] = frozenset()  # those of them that must stay valid: text, source, timestamp


@dataclass(slots=True)
class Outcome:
    """What the chain did with one message."""

    payload: dict
    collection: str | None = None  # kept: the routed collection, None for mongodb.collection
    dropped_by: str | None = None  # the filter stage that dropped it
    failed_at: str | None = None  # the stage it failed at
    error: str | None = None  # why, one sentence

    @property
    def kept(self) -> bool:
        return self.dropped_by is None and self.failed_at is None


class StageChain:
    """The config's stages, compiled; an empty chain is false, and the pipeline then skips it entirely."""

    def __init__(self, steps: tuple[Step, ...], evaluator: Evaluator | None = None) -> None:
        self.steps = steps
        self.evaluator = evaluator or Evaluator()  # the one the steps' expressions were compiled against
        # A stage that writes the timestamp makes the pipeline read it again, after the chain.
        self.touches_timestamp = any("timestamp" in step.touches for step in steps)

    @classmethod
    def compile(cls, stages: tuple[dict, ...] | list[dict], id_field: str | None = "id") -> StageChain:
        """Raises StageSpecError naming `stages[i].where` (or `stages[i].fields.<name>`) and what is wrong."""
        checked = check_stages(list(stages), id_field=id_field)
        evaluator = Evaluator()

        def expression(text: str, at: str) -> Expression:
            try:
                return compile_tree(compile_expression(text, evaluator), evaluator)
            except ExpressionError as exc:
                raise StageSpecError(f"{at}: {exc}") from None

        steps = []
        for index, stage in enumerate(checked):
            at = f"stages[{index}]"
            where = expression(stage["where"], f"{at}.where") if "where" in stage else None
            kind, fields = stage["kind"], stage.get("fields")
            if kind == "set":
                compiled = tuple((name, expression(text, f"{at}.fields.{name}")) for name, text in fields.items())
                touches = frozenset(fields)
            elif kind == "rename":
                compiled = tuple(fields.items())
                touches = frozenset(fields) | frozenset(fields.values())
            elif kind == "drop":
                compiled = tuple(fields)
                touches = frozenset(fields)
            else:
                compiled, touches = (), frozenset()
            builtins = touches & BUILTINS
            steps.append(Step(stage["name"], kind, where, compiled, stage.get("collection"), touches, builtins))
        return cls(tuple(steps), evaluator)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def apply(self, payload: dict, context: Callable[[], dict] = dict, trace: Trace | None = None) -> Outcome:
        """Run every stage on `payload` (changed in place); `context` builds the `kafka` name when read.

        With a `trace`, each stage appends what it did (for `streamd stages try`).
        """
        outcome = Outcome(payload)
        self.evaluator.bind(payload, context)
        for step in self.steps:
            if step.kind == "route" and outcome.collection is not None:
                _note(trace, step, "skipped", reason="already routed")
                continue
            try:
                if step.where is not None and not _holds(step.where(), "where"):
                    if step.kind == "filter":
                        outcome.dropped_by = step.name
                        _note(trace, step, "dropped")
                        return outcome
                    _note(trace, step, "skipped")
                    continue
                kind = step.kind
                if kind == "filter":
                    _note(trace, step, "kept")
                elif kind == "route":
                    outcome.collection = step.collection
                    _note(trace, step, "routed", collection=step.collection)
                elif kind == "set":
                    values = {name: value() for name, value in step.fields}
                    for name, value in values.items():
                        _check_storable(value, name)
                    payload.update(values)
                    _note(trace, step, "set", fields=values)
                elif kind == "rename":
                    moved = {old: new for old, new in step.fields if old in payload}
                    for old, new in moved.items():
                        payload[new] = payload.pop(old)
                    _note(trace, step, "renamed", fields=moved)
                else:
                    gone = [name for name in step.fields if payload.pop(name, _MISSING) is not _MISSING]
                    _note(trace, step, "dropped fields", fields=gone)
                if step.builtins:
                    _check_builtins(payload, step.builtins)
            except Exception as exc:  # noqa: BLE001 - a message must never stop the chain: it fails this stage
                outcome.failed_at = step.name
                outcome.error = shortened(_reason(exc))
                _note(trace, step, "failed", error=outcome.error)
                return outcome
        return outcome


def kafka_context(message: Message) -> dict:
    """The `kafka` name of an expression: where the message is, its key as text, its Kafka timestamp."""
    key = message.key()
    kind, stamp = message.timestamp()
    try:
        moment = None if kind == TIMESTAMP_NOT_AVAILABLE else kafka_time(kind, stamp)
    except ValueError:
        moment = None
    return {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "key": None if key is None else key.decode("utf-8", errors="replace"),
        "timestamp": moment,
    }


_MISSING = object()


def _holds(value: Any, what: str) -> bool:
    if value is True:
        return True
    if value is False or value is None:
        return False
    raise StageFailed(f"{what} gave {shortened(repr(value))}, not true or false")


def _note(trace: Trace | None, step: Step, action: str, **detail: Any) -> None:
    if trace is not None:
        trace.append({"stage": step.name, "kind": step.kind, "action": action, **detail})


def _reason(exc: Exception) -> str:
    if isinstance(exc, StageFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _check_builtins(payload: dict, touched: frozenset[str]) -> None:
    if "text" in touched and type(payload.get("text")) is not str:
        raise StageFailed("text must stay a string (it is stored as content)")
    if "source" in touched and payload.get("source") is not None and type(payload["source"]) is not str:
        raise StageFailed("source must stay a string or null")
    if "timestamp" in touched:
        stamp = payload.get("timestamp")
        if isinstance(stamp, str):
            try:
                parse_timestamp(stamp)
            except ValueError as exc:
                raise StageFailed(f"timestamp must stay an ISO 8601 date and time ({exc})") from None
        elif stamp is not None and not isinstance(stamp, datetime):
            raise StageFailed(f"timestamp must stay an ISO 8601 string or a datetime, not {type(stamp).__name__}")


def _check_storable(value: Any, at: str) -> None:
    if isinstance(value, str):
        _check_text(value, at)
        return
    if value is None or isinstance(value, bool | float | datetime):
        return
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise StageFailed(f"{at} is an integer too large to store (over 64 bits)")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_storable(item, f"{at}[{index}]")
        return
    if isinstance(value, dict):
        bad = refused_field(value, at)
        if bad is not None:
            raise StageFailed(f"{bad} is a field name the store refuses")
        for key, item in value.items():
            _check_text(key, f"{at} (a key)")
            _check_storable(item, f"{at}.{key}")
        return
    raise StageFailed(f"{at} is a {type(value).__name__}, which cannot be stored")


def _check_text(text: str, at: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise StageFailed(f"{at} holds a lone surrogate, which is not UTF-8 and cannot be stored") from None


__all__ = ["Outcome", "StageChain", "StageFailed", "Step", "Trace", "kafka_context"]
