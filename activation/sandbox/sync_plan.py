"""What a Hightouch run sends, worked out in SQL inside the sandbox store.

Hightouch diffs each run's query results against what the sync last sent (its "diff file") on the
primary key, looking only at mapped columns: new keys are added, keys whose mapped values moved
are changed, keys that left the results are removed. Here each sync owns four store tables:

- `current`: the mart as this run read it (key as VARCHAR, then the mapped columns);
- `snapshot`: what the destination holds according to the previous runs;
- `plan`: this run's rows with their `operation` (added / changed / removed);
- `failed`: keys the destination rejected in this run.

Rejected rows keep their previous snapshot state, so the next run plans them again, as Hightouch
retries failed rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import duckdb

from activation.lib.destinations import Destination
from activation.lib.warehouse import fetch_int
from activation.sandbox.warehouse import quote

OPERATIONS = ("added", "changed", "removed")


class RunFailedError(RuntimeError):
    """The run cannot go on; the message becomes the run's `error`."""


@dataclass(frozen=True)
class SyncTables:
    current: str
    snapshot: str
    plan: str
    failed: str

    @classmethod
    def of(cls, destination: Destination) -> SyncTables:
        # Destination keys are validated lower-case identifiers, so these names need no quoting.
        prefix = f"hightouch_{destination.key}"
        return cls(*(f"{prefix}_{name}" for name in ("current", "snapshot", "plan", "failed")))


def check_primary_key(cursor: duckdb.DuckDBPyConnection, destination: Destination) -> None:
    """Fail the run, as Hightouch does, when the key is missing or not unique."""
    tables = SyncTables.of(destination)
    key = quote(destination.primary_key)
    duplicates = cursor.execute(
        f"SELECT {key} FROM {tables.current} WHERE {key} IS NOT NULL "
        f"GROUP BY {key} HAVING count(*) > 1 ORDER BY {key} LIMIT 5"
    ).fetchall()
    if duplicates:
        examples = ", ".join(str(row[0]) for row in duplicates)
        raise RunFailedError(
            f"NON_UNIQUE_PRIMARY_KEY: primary key {destination.primary_key} of "
            f"{destination.mart} has duplicate values (for example {examples})"
        )
    missing = fetch_int(cursor, f"SELECT count(*) FROM {tables.current} WHERE {key} IS NULL")
    if missing:
        raise RunFailedError(
            f"NULL_PRIMARY_KEY: {missing} rows of {destination.mart} have no "
            f"{destination.primary_key}"
        )


def plan(
    cursor: duckdb.DuckDBPyConnection, destination: Destination, *, full_resync: bool
) -> dict[str, int]:
    """Fill the plan table; returns rows per operation.

    A full resync diffs against nothing: every row is added and none is removed.
    """
    tables = SyncTables.of(destination)
    _ensure_snapshot(cursor, tables)
    key = quote(destination.primary_key)
    moved = " OR ".join(
        f"c.{quote(column)} IS DISTINCT FROM b.{quote(column)}"
        for column in destination.mapped_columns
    )
    cursor.execute(
        f"""
        CREATE OR REPLACE TABLE {tables.plan} AS
        WITH baseline AS (
            SELECT * FROM {tables.snapshot} WHERE NOT $full_resync
        )
        SELECT CASE WHEN b.{key} IS NULL THEN 'added' ELSE 'changed' END AS operation, c.*
        FROM {tables.current} AS c
        LEFT JOIN baseline AS b ON c.{key} = b.{key}
        WHERE b.{key} IS NULL OR {moved}
        UNION ALL
        SELECT 'removed' AS operation, b.*
        FROM baseline AS b
        WHERE NOT EXISTS (SELECT 1 FROM {tables.current} AS c WHERE c.{key} = b.{key})
        """,
        {"full_resync": full_resync},
    )
    counts = dict(
        cursor.execute(
            f"SELECT operation, count(*) FROM {tables.plan} GROUP BY operation"
        ).fetchall()
    )
    return {operation: counts.get(operation, 0) for operation in OPERATIONS}


def planned_records(
    cursor: duckdb.DuckDBPyConnection, destination: Destination, operation: str
) -> list[dict[str, Any]]:
    """The plan's rows for one operation as API records: `{"id": key, "fields": {...}}`."""
    tables = SyncTables.of(destination)
    columns = destination.mapped_columns
    rows = cursor.execute(
        f"SELECT {quote(destination.primary_key)}, {', '.join(map(quote, columns))} "
        f"FROM {tables.plan} WHERE operation = ? ORDER BY 1",
        [operation],
    ).fetchall()
    return [
        {"id": row[0], "fields": dict(zip(columns, map(json_value, row[1:]), strict=True))}
        for row in rows
    ]


def update_snapshot(
    cursor: duckdb.DuckDBPyConnection,
    destination: Destination,
    failed_ids: Sequence[str],
    *,
    full_resync: bool,
) -> None:
    """Delivered rows take their new state (removed ones leave); rejected rows keep the old one.

    A full resync runs as if it were the sync's first run, so it starts from an empty snapshot.
    """
    tables = SyncTables.of(destination)
    key = quote(destination.primary_key)
    delivered = (
        f"{key} IN (SELECT {key} FROM {tables.plan}) "
        f"AND {key} NOT IN (SELECT id FROM {tables.failed})"
    )
    cursor.begin()
    try:
        cursor.execute(
            f"CREATE OR REPLACE TABLE {tables.failed} AS SELECT unnest(?::VARCHAR[]) AS id",
            [list(failed_ids)],
        )
        cursor.execute(
            f"DELETE FROM {tables.snapshot} WHERE $full_resync", {"full_resync": full_resync}
        )
        cursor.execute(f"DELETE FROM {tables.snapshot} WHERE {delivered}")
        cursor.execute(
            f"INSERT INTO {tables.snapshot} "
            f"SELECT * EXCLUDE (operation) FROM {tables.plan} "
            f"WHERE operation <> 'removed' AND {delivered}"
        )
        cursor.commit()
    except BaseException:
        cursor.rollback()
        raise


def rebaseline(cursor: duckdb.DuckDBPyConnection, destination: Destination) -> None:
    """resetCDC: take the current results as what the destination holds, sending nothing."""
    tables = SyncTables.of(destination)
    cursor.execute(f"CREATE OR REPLACE TABLE {tables.snapshot} AS SELECT * FROM {tables.current}")


def drop_tables(cursor: duckdb.DuckDBPyConnection, destination: Destination) -> None:
    tables = SyncTables.of(destination)
    for table in (tables.current, tables.snapshot, tables.plan, tables.failed):
        cursor.execute(f"DROP TABLE IF EXISTS {table}")


def json_value(value: Any) -> Any:
    """A warehouse value as the JSON a destination API receives (ISO dates, numbers)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def _ensure_snapshot(cursor: duckdb.DuckDBPyConnection, tables: SyncTables) -> None:
    """Create the snapshot on the first run; start over if the mapped columns changed since."""
    current = _columns(cursor, tables.current)
    if _columns(cursor, tables.snapshot) != current:
        cursor.execute(
            f"CREATE OR REPLACE TABLE {tables.snapshot} AS SELECT * FROM {tables.current} LIMIT 0"
        )


def _columns(cursor: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    try:
        return [row[0] for row in cursor.execute(f"DESCRIBE {table}").fetchall()]
    except duckdb.CatalogException:
        return []
