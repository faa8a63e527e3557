"""The `stages:` list of config.yaml, checked when the config loads: structure, names, collections.

What a stage list looks like (each stage is a mapping with a `name` and a `kind`)::

    stages:
      - name: readings-only        # unique; names the stage in metrics, dead-letter headers and `stages try`
        kind: filter               # keep the messages for which `where` is true, drop (and count) the rest
        where: temperature is not None
      - name: fahrenheit
        kind: set                  # add or replace fields: name -> expression
        fields:
          temperature_f: round(temperature * 9 / 5 + 32, 1)
      - name: tidy
        kind: rename               # old name -> new name
        fields: {temp: temperature}
      - name: no-debug
        kind: drop                 # field names
        fields: [debug]
      - name: hot-to-alerts
        kind: route                # the first route whose `where` holds picks the collection
        where: temperature > 30
        collection: alerts

`where` is required by filter and route, and optional on set, rename and drop (the stage then applies
only to the messages for which it holds). The checked list stays plain data (a tuple of dicts), so the
config can be compared, printed and written back; streamd.stages compiles it into a chain.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = ("filter", "set", "rename", "drop", "route")
# What each kind takes besides `name` and `kind` (required first, then optional).
KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "filter": (("where",), ()),
    "set": (("fields",), ("where",)),
    "rename": (("fields",), ("where",)),
    "drop": (("fields",), ("where",)),
    "route": (("where", "collection"), ()),
}
MAX_STAGES = 100
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# A field a stage writes: no `$` start, no `.`, no NUL (MongoDB refuses them), and short.
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
# MongoDB collection names may hold more, but not `$`, NUL or a `system.` prefix; these are also safe in URLs.
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,119}")


class StageSpecError(ValueError):
    """One sentence: `stages[2].where: <what is wrong>`; the config loader prefixes the file."""


def check_stages(raw: Any, *, id_field: str | None = None) -> tuple[dict, ...]:
    """The stage list as written, checked; raises StageSpecError naming the first wrong key.

    Expressions are compiled by streamd.stages.compile_chain, which the config loader calls after this.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise StageSpecError(f"stages: expected a list of stages (each a mapping with name and kind), got {_kind(raw)}")
    if len(raw) > MAX_STAGES:
        raise StageSpecError(f"stages: {len(raw)} stages, more than {MAX_STAGES}")
    checked: list[dict] = []
    names: set[str] = set()
    for index, stage in enumerate(raw):
        at = f"stages[{index}]"
        if not isinstance(stage, dict):
            raise StageSpecError(f"{at}: expected a mapping with name and kind, got {_kind(stage)}")
        name = stage.get("name")
        if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
            raise StageSpecError(
                f"{at}.name: expected a name of letters, digits, '-' and '_' (at most 64), got {_shown(name)}"
            )
        if name in names:
            raise StageSpecError(f"{at}.name: {name!r} is the name of an earlier stage; names must be unique")
        names.add(name)
        kind = stage.get("kind")
        if kind not in KINDS:
            raise StageSpecError(f"{at}.kind: expected one of {', '.join(KINDS)}, got {_shown(kind)}")
        required, optional = KEYS[kind]
        allowed = {"name", "kind", *required, *optional}
        unknown = sorted(str(key) for key in stage if key not in allowed)
        if unknown:
            raise StageSpecError(
                f"{at}: unknown key {unknown[0]!r} for a {kind} stage; it takes {', '.join(sorted(allowed))}"
            )
        for key in required:
            if key not in stage:
                raise StageSpecError(f"{at}.{key}: a {kind} stage needs {key}")
        if "where" in stage:
            _expression(stage["where"], f"{at}.where")
        if kind == "set":
            _set_fields(stage["fields"], f"{at}.fields", id_field)
        elif kind == "rename":
            _rename_fields(stage["fields"], f"{at}.fields", id_field)
        elif kind == "drop":
            _drop_fields(stage["fields"], f"{at}.fields", id_field)
        elif kind == "route":
            collection = stage["collection"]
            if (
                not isinstance(collection, str)
                or not COLLECTION_NAME.fullmatch(collection)
                or collection.startswith("system.")
            ):
                raise StageSpecError(
                    f"{at}.collection: expected a collection name of letters, digits, '_', '-' and '.' "
                    f"(not starting with system.), got {_shown(collection)}"
                )
        checked.append(dict(stage))
    return tuple(checked)


def routed_collections(stages: tuple[dict, ...]) -> tuple[str, ...]:
    """The collections route stages name, in config order, each once."""
    return tuple(dict.fromkeys(stage["collection"] for stage in stages if stage["kind"] == "route"))


def _expression(value: Any, at: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise StageSpecError(f"{at}: expected an expression (a non-empty string), got {_shown(value)}")


def _field(name: Any, at: str, id_field: str | None) -> None:
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
        raise StageSpecError(
            f"{at}: expected a field name (a letter or '_', then letters, digits, '_' or '-'), got {_shown(name)}"
        )
    if id_field is not None and name == id_field:
        raise StageSpecError(
            f"{at}: {name!r} is the message id (consumer.id_field), taken before the stages; stages cannot change it"
        )


def _set_fields(fields: Any, at: str, id_field: str | None) -> None:
    if not isinstance(fields, dict) or not fields:
        raise StageSpecError(f"{at}: expected a mapping of field name -> expression, got {_shown(fields)}")
    for name, expression in fields.items():
        _field(name, f"{at}", id_field)
        _expression(expression, f"{at}.{name}")


def _rename_fields(fields: Any, at: str, id_field: str | None) -> None:
    if not isinstance(fields, dict) or not fields:
        raise StageSpecError(f"{at}: expected a mapping of old name -> new name, got {_shown(fields)}")
    for old, new in fields.items():
        _field(old, at, id_field)
        _field(new, f"{at}.{old}", id_field)


def _drop_fields(fields: Any, at: str, id_field: str | None) -> None:
    if not isinstance(fields, list) or not fields:
        raise StageSpecError(f"{at}: expected a list of field names, got {_shown(fields)}")
    for index, name in enumerate(fields):
        _field(name, f"{at}[{index}]", id_field)
        if name == "text":
            raise StageSpecError(f"{at}[{index}]: text is the message itself (stored as content); it cannot be dropped")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _shown(value)


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"
