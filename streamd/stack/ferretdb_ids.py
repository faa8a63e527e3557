"""The `_id` index FerretDB 1.24 on SQLite can use, created by streamd in the local store's own database files.

FerretDB v1.24.2 pushes a lone `{_id: <string or ObjectId>}` filter down to SQLite as
`_ferretdb_sjson->'$._id' = ?` (internal/backends/sqlite/metadata.IDColumn), but builds its unique `_id`
index on `_ferretdb_sjson->"_id"`: SQLite matches index expressions by their text, so every lookup scans
the table (about 75 ms at 50,000 documents, linear). An expression index on exactly FerretDB's expression
turns it into an index search (under a millisecond, flat). It is not unique: FerretDB's own index
already enforces that, and a second unique check would only cost writes.

This reaches under the server, so it is done only where that is known to be right: the store is FerretDB
of the pinned version (its query text is that version's), and it is the local store this state directory
started (so its data directory is ours). Anything else is left alone with one log line. SQLite lets a
second process change the schema of a live WAL database; FerretDB's connections re-prepare their
statements when they see the new schema. Creating the index is idempotent (IF NOT EXISTS), and dropping
the collection drops the table and the index with it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from streamd.config import Config
from streamd.stack.pidfile import owned_pid, server_data
from streamd.store import StoreKind

log = logging.getLogger("streamd.stack")

# The one FerretDB version whose query text the index below matches.
PINNED_VERSION = "1.24.2"
ID_EXPRESSION = "_ferretdb_sjson->'$._id'"
TABLE_OF = "SELECT table_name FROM _ferretdb_collections WHERE name = ?"  # FerretDB's metadata table
BUSY_TIMEOUT_MS = 10_000  # FerretDB holds the write lock for one batch at a time; wait that out


def database_file(config: Config) -> Path:
    """Where FerretDB's SQLite backend keeps mongodb.database: one file per database in the data directory."""
    return server_data(config, "store") / f"{config.mongodb.database}.sqlite"


def index_name(table: str) -> str:
    # FerretDB names its own indexes "<table>_<index name>", and MongoDB index names never hold "~".
    return f"{table}_~streamd_id_lookup"


def index_id_lookups(config: Config, kind: StoreKind, collections: Iterable[str]) -> list[str]:
    """Give each of `collections` (that exists) the `_id` index FerretDB's lookups use; returns the tables indexed.

    Does nothing on MongoDB (its `_id` index serves the lookups), and nothing but one log line unless the store
    is FerretDB PINNED_VERSION started from this state directory. Never raises: the index only saves time.
    """
    if kind.ferretdb_version is None:
        return []
    if kind.ferretdb_version.removeprefix("v") != PINNED_VERSION:
        log.info(
            "store is FerretDB %s, not %s: its _id lookups are left as they are (a table scan each)",
            kind.ferretdb_version,
            PINNED_VERSION,
        )
        return []
    path = database_file(config)
    if owned_pid(config, "store") is None or not path.is_file():
        log.info("store is a FerretDB streamd did not start from %s: its _id lookups are left as they are", path)
        return []
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as connection, connection:
            return create_indexes(connection, list(collections))
    except sqlite3.Error as exc:
        log.warning("could not index _id lookups in %s (%s); each stays a table scan", path, exc)
        return []


def searches_ids(config: Config, collection: str) -> bool:
    """Whether FerretDB's `_id` lookups on this collection of the local store are an index search (read only)."""
    path = database_file(config)
    if owned_pid(config, "store") is None or not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            return "USING INDEX" in lookup_plan(connection, collection)
    except sqlite3.Error:
        return False


def create_indexes(connection: sqlite3.Connection, collections: list[str]) -> list[str]:
    """The index on each existing collection's table, found in FerretDB's metadata table."""
    marks = ",".join("?" * len(collections))
    rows = connection.execute(f"SELECT table_name FROM _ferretdb_collections WHERE name IN ({marks})", collections)
    tables = [table for (table,) in rows.fetchall()]
    for table in tables:
        connection.execute(f'CREATE INDEX IF NOT EXISTS "{index_name(table)}" ON "{table}" ({ID_EXPRESSION})')
    return tables


def lookup_plan(connection: sqlite3.Connection, collection: str) -> str:
    """SQLite's plan for FerretDB's `_id` lookup on this collection, e.g. "SEARCH ... USING INDEX ..."."""
    row = connection.execute(TABLE_OF, (collection,)).fetchone()
    if row is None:
        return "no such collection"
    (table,) = row
    plan = connection.execute(
        f'EXPLAIN QUERY PLAN SELECT _ferretdb_sjson FROM "{table}" WHERE {ID_EXPRESSION} = ?', [""]
    )
    return " ".join(row[-1] for row in plan)
