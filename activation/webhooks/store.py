"""Accepted webhook events, recorded durably in a small SQLite file in the data dir.

Why SQLite and not Dagster runless observations: the intake then needs no access to the Dagster
instance (no DAGSTER_HOME, no storage credentials in an internet-facing process, no call to the
webserver's unauthenticated report endpoints), and the event id's UNIQUE constraint makes
"record once, refuse a replay" one atomic INSERT rather than a read-then-write race. WAL mode
lets the sensor read while the intake writes. The intake and the Dagster daemon find the file
through the same `ACTIVATION_DATA_DIR`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from activation.lib.paths import data_dir

SCHEMA = """
create table if not exists events (
    seq integer primary key autoincrement,
    event_id text not null unique,
    source text not null,
    received_at real not null,
    payload text not null
)
"""

# Which run served each event: written by `webhook_event_sensor` when it requests the run (the
# run key; Dagster puts it on the run as the `dagster/run_key` tag). A re-evaluated tick writes
# the key it requests again, so the row always names the run key last requested for the event.
SERVED_SCHEMA = """
create table if not exists served (
    seq integer primary key,
    run_key text not null,
    served_at real not null
)
"""


def events_db_path() -> Path:
    return data_dir() / "webhooks.sqlite"


@dataclass(frozen=True)
class Event:
    seq: int
    event_id: str
    source: str
    received_at: float
    payload: dict


class DuplicateEvent(Exception):
    """The event id was recorded before: a replay or a re-delivery."""


@contextmanager
def connect_store(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to one of the intake's SQLite stores, created readable by this user only."""
    # Read-write even for the sensor's reads: a read-only reader of a WAL file fails when the
    # shared-memory file is absent (after the intake's last connection closed).
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
    connection = sqlite3.connect(path, timeout=10)
    try:
        yield connection
    finally:
        connection.close()


def initialise(path: Path) -> None:
    """Create the file and table (the intake does it at start, so a bad path fails at once)."""
    with connect_store(path) as connection:
        connection.execute("pragma journal_mode=wal")
        connection.execute(SCHEMA)
        connection.execute(SERVED_SCHEMA)
        connection.commit()


def record(path: Path, event_id: str, source: str, payload: dict) -> Event:
    """Record an accepted event; raises `DuplicateEvent` if its id was recorded before."""
    received_at = time.time()
    with connect_store(path) as connection:
        try:
            cursor = connection.execute(
                "insert into events (event_id, source, received_at, payload) values (?, ?, ?, ?)",
                (event_id, source, received_at, json.dumps(payload, sort_keys=True)),
            )
            connection.commit()
        except sqlite3.IntegrityError as error:
            raise DuplicateEvent(event_id) from error
    return Event(int(cursor.lastrowid or 0), event_id, source, received_at, payload)


def events_after(path: Path, seq: int, limit: int = 100) -> list[Event]:
    """Events recorded after `seq`, oldest first; none when the intake has not run yet."""
    if not path.exists():
        return []
    with connect_store(path) as connection:
        rows = connection.execute(
            "select seq, event_id, source, received_at, payload from events "
            "where seq > ? order by seq limit ?",
            (seq, limit),
        ).fetchall()
    return [Event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


def mark_served(path: Path, seqs: list[int], run_key: str) -> None:
    """Record that the run with `run_key` serves the events numbered `seqs`."""
    served_at = time.time()
    with connect_store(path) as connection:
        connection.execute(SERVED_SCHEMA)
        connection.executemany(
            "insert or replace into served (seq, run_key, served_at) values (?, ?, ?)",
            [(seq, run_key, served_at) for seq in seqs],
        )
        connection.commit()


def served_by(path: Path, event_id: str) -> str | None:
    """The run key of the run requested for this event; None while it waits (or is unknown)."""
    if not path.exists():
        return None
    with connect_store(path) as connection:
        connection.execute(SERVED_SCHEMA)
        row = connection.execute(
            "select served.run_key from events join served on served.seq = events.seq "
            "where events.event_id = ?",
            (event_id,),
        ).fetchone()
    return str(row[0]) if row else None
