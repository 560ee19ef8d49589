"""Slack clicks on review messages, and which reviews are open: a small SQLite file the intake and
the waiting `sign_off` op share (`$ACTIVATION_DATA_DIR/slack_interactions.sqlite`).

How a Slack decision reaches `sign_off`, and why this way:

- the intake (internet-facing, no Dagster credentials) verifies Slack's signature, then records
  the click here, sealed with an attestation (activation/webhooks/slack.py), and answers Slack;
- `request_review` opens the review here when it posts buttons; the waiting `sign_off` op reads
  the pending clicks of its run family at each poll, checks each seal and every rule against the
  review request it recorded itself, records the decision (or the refusal) on
  `promotion/approvals`, marks the click settled and closes the review;
- the intake answers a click on a review that is closed or expired itself (ephemerally), from
  the `reviews` table, so a late click is told why nothing happened.

The signature digest is UNIQUE, so a replayed request is refused by one atomic INSERT. WAL mode
lets the op read while the intake writes. Nothing here is a secret except the response URLs,
which allow posting into the review channel for 30 minutes; the file is created 0600.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from activation.lib.paths import data_dir
from activation.webhooks.slack import Click
from activation.webhooks.store import connect_store

PENDING = "pending"
ACCEPTED = "accepted"
REFUSED = "refused"
VOID = "void"

SCHEMA = (
    """
    create table if not exists clicks (
        seq integer primary key autoincrement,
        request_digest text not null unique,
        promotion_run_id text not null,
        run_family text not null,
        received_at real not null,
        click text not null,
        attestation text not null,
        status text not null,
        outcome text not null default ''
    )
    """,
    """
    create table if not exists reviews (
        promotion_run_id text primary key,
        run_family text not null,
        opened_at real not null,
        expires_at real not null,
        closed_at real,
        outcome text not null default ''
    )
    """,
)


def store_path() -> Path:
    return data_dir() / "slack_interactions.sqlite"


class DuplicateClick(Exception):
    """This signed request was received before: a replay."""


@dataclass(frozen=True)
class StoredClick:
    seq: int
    click: Click
    attestation: str
    received_at: float
    status: str
    outcome: str


@dataclass(frozen=True)
class Review:
    promotion_run_id: str
    run_family: str
    expires_at: float
    closed_at: float | None
    outcome: str


def initialise(path: Path) -> None:
    with connect_store(path) as connection:
        connection.execute("pragma journal_mode=wal")
        for statement in SCHEMA:
            connection.execute(statement)
        connection.commit()


def open_review(path: Path, promotion_run_id: str, run_family: str, expires_at: float) -> None:
    """Called by `request_review` before it posts the buttons."""
    initialise(path)
    with connect_store(path) as connection:
        connection.execute(
            "insert or replace into reviews (promotion_run_id, run_family, opened_at, expires_at) "
            "values (?, ?, ?, ?)",
            (promotion_run_id, run_family, time.time(), expires_at),
        )
        connection.commit()


def close_review(path: Path, promotion_run_id: str, outcome: str) -> None:
    """Called by `sign_off` once the run is decided or expired; later clicks get `outcome`."""
    if not path.exists():
        return
    with connect_store(path) as connection:
        connection.execute(
            "update reviews set closed_at = ?, outcome = ? where promotion_run_id = ?",
            (time.time(), outcome, promotion_run_id),
        )
        connection.commit()


def review(path: Path, promotion_run_id: str) -> Review | None:
    with connect_store(path) as connection:
        row = connection.execute(
            "select promotion_run_id, run_family, expires_at, closed_at, outcome from reviews "
            "where promotion_run_id = ?",
            (promotion_run_id,),
        ).fetchone()
    return Review(*row) if row else None


def record_click(
    path: Path,
    digest: str,
    click: Click,
    attestation: str,
    *,
    status: str = PENDING,
    outcome: str = "",
) -> StoredClick:
    """Record a verified click; raises `DuplicateClick` if this signed request was seen before."""
    received_at = time.time()
    with connect_store(path) as connection:
        try:
            cursor = connection.execute(
                "insert into clicks (request_digest, promotion_run_id, run_family, received_at, "
                "click, attestation, status, outcome) values (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest,
                    click.binding.promotion_run_id,
                    click.binding.run_family,
                    received_at,
                    json.dumps(click.fields(), sort_keys=True),
                    attestation,
                    status,
                    outcome,
                ),
            )
            connection.commit()
        except sqlite3.IntegrityError as error:
            raise DuplicateClick(digest) from error
    return StoredClick(int(cursor.lastrowid or 0), click, attestation, received_at, status, outcome)


def _stored(row: tuple) -> StoredClick | None:
    seq, raw, attestation, received_at, status, outcome = row
    try:
        click = Click.from_fields(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        return None
    return StoredClick(seq, click, attestation, received_at, status, outcome)


def pending_clicks(path: Path, run_family: str) -> list[StoredClick]:
    """Unsettled clicks on the review messages of one run family, oldest first. A row that is
    not a click at all (written by hand) is settled void at once."""
    if not path.exists():
        return []
    with connect_store(path) as connection:
        rows = connection.execute(
            "select seq, click, attestation, received_at, status, outcome from clicks "
            "where run_family = ? and status = ? order by seq",
            (run_family, PENDING),
        ).fetchall()
    clicks = []
    for row in rows:
        stored = _stored(row)
        if stored is None:
            settle(path, int(row[0]), VOID, "not a click record")
        else:
            clicks.append(stored)
    return clicks


def settle(path: Path, seq: int, status: str, outcome: str) -> None:
    with connect_store(path) as connection:
        connection.execute(
            "update clicks set status = ?, outcome = ? where seq = ?", (status, outcome, seq)
        )
        connection.commit()


def all_clicks(path: Path) -> list[StoredClick]:
    """Every click recorded, oldest first (for inspection and tests)."""
    if not path.exists():
        return []
    with connect_store(path) as connection:
        rows = connection.execute(
            "select seq, click, attestation, received_at, status, outcome from clicks order by seq"
        ).fetchall()
    return [c for c in (_stored(row) for row in rows) if c is not None]
