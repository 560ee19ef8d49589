"""Guard checks: what a sync would do, measured in the warehouse before anything is triggered.

dbt tests catch broken rows, not a definition change that passes every test yet rewrites ten
thousand contacts. Each destination may declare `guards:` in destinations.yaml (share or count of
rows that would be removed or changed); duplicate primary keys and nulls in the primary key or in
`required_columns` always block, because Hightouch would fail the run (`NON_UNIQUE_PRIMARY_KEY`)
or blank fields at the destination.

"Would be changed" is relative to the last synced snapshot. Hightouch keeps its own diff state and
offers no dry run, so the product keeps a copy in the warehouse: the table
`activation_state.<destination>_last_synced` (primary key + a hash of the mapped columns), which
`record_synced_snapshot` rewrites after each successful sync. Each guard is a blocking asset
check on the destination's mart, named `guard_<destination key>`: inside a run it stops the sync
step, and across runs the gate (`activation/core/gate.py`) honours its latest result.

The warehouse is the one dbt builds: the DuckDB file (`activation.lib.paths.warehouse_path`), or
PostgreSQL with `ACTIVATION_DBT_TARGET=postgres`, reached through `activation.lib.warehouse`:
connections are short-lived, and retried on DuckDB, which lets one process write only while no
other holds the file.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from activation.core.executors import launch_priority_tags
from activation.lib.destinations import Destination, load_destinations, mart_asset_key
from activation.lib.warehouse import Session, WarehouseError, warehouse_connection

GUARD_CHECK_PREFIX = "guard_"
STATE_SCHEMA = "activation_state"
MART_SCHEMA = "marts"
FINGERPRINT_METADATA = "data_fingerprint"  # check metadata: JSON {destination key: fingerprint}
_HASH_MODULUS = 2**60


def guard_check_name(destination: Destination) -> str:
    return f"{GUARD_CHECK_PREFIX}{destination.key}"


def snapshot_table(destination: Destination) -> str:
    # Keys are validated lower-case identifiers, so the name needs no quoting.
    return f"{STATE_SCHEMA}.{destination.key}_last_synced"


def _row_hash(destination: Destination) -> str:
    """SQL for a hash of the mapped columns, the same on both engines; the same expression
    writes and reads the snapshot. A `v` prefix keeps a null apart from any value."""
    parts = ", ".join(
        f"coalesce('v' || CAST(\"{c}\" AS VARCHAR), 'n')" for c in destination.mapped_columns
    )
    return f"md5(concat_ws('|', {parts}))"


@dataclass(frozen=True)
class Fingerprint:
    """What a check judged, as a destination sees the mart: its row count and an
    order-independent hash of the primary key and the mapped columns."""

    rows: int
    hash: str

    def as_json(self) -> dict[str, object]:
        return {"rows": self.rows, "hash": self.hash}


def _hex_to_int(hex_sql: str, digits: int) -> str:
    """SQL for the integer value of the first `digits` hex digits of `hex_sql`. DuckDB and
    PostgreSQL share no hex-to-integer cast, but both have `ascii` and `substr`:
    (ascii(c) - 48) % 39 maps '0'..'9' to 0..9 and 'a'..'f' to 10..15."""
    return " + ".join(
        f"CAST((ascii(substr({hex_sql}, {i}, 1)) - 48) % 39 AS BIGINT) * {16 ** (digits - i)}"
        for i in range(1, digits + 1)
    )


def fingerprint_sql(destination: Destination) -> str:
    """One pass over the mart: count and the sum, mod 2**60, of 60 bits of each row's md5 over
    the primary key and the mapped columns (a sum, so row order does not matter; the sum is
    taken as an exact decimal, which neither engine overflows)."""
    columns = (destination.primary_key, *destination.mapped_columns)
    parts = ", ".join(f"coalesce('v' || CAST(\"{c}\" AS VARCHAR), 'n')" for c in columns)
    return (
        "SELECT count(*), CAST(coalesce(sum(CAST(h AS DECIMAL(38, 0))), 0) "
        f"% {_HASH_MODULUS} AS VARCHAR) FROM (SELECT {_hex_to_int('d', 15)} AS h FROM "
        f"(SELECT md5(concat_ws('|', {parts})) AS d FROM {MART_SCHEMA}.{destination.mart}) rows_"
        ") hashes"
    )


def fingerprint(session: Session, destination: Destination) -> Fingerprint:
    rows, digest = session.one(fingerprint_sql(destination))
    # PostgreSQL may render the decimal with a fractional part of zeros.
    return Fingerprint(int(rows), str(digest).split(".")[0])


def mart_fingerprints(
    session: Session, mart: str, destinations: Iterable[Destination]
) -> dict[str, Fingerprint]:
    """The fingerprint of `mart` for every destination that reads it, by destination key."""
    return {d.key: fingerprint(session, d) for d in destinations if d.mart == mart}


def fingerprint_metadata(fingerprints: dict[str, Fingerprint]) -> dict[str, dg.MetadataValue]:
    """The check metadata the gate compares with the mart as it is when a sync starts."""
    return {
        FINGERPRINT_METADATA: dg.MetadataValue.json(
            {key: value.as_json() for key, value in sorted(fingerprints.items())}
        )
    }


def recorded_fingerprints(metadata: dict[str, object]) -> dict[str, Fingerprint] | None:
    """The fingerprints a check result recorded (None when it recorded none). `metadata` holds
    raw values (a JSON metadata value's `.value`)."""
    value = metadata.get(FINGERPRINT_METADATA)
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        return None
    return {
        key: Fingerprint(int(item["rows"]), str(item["hash"]))
        for key, item in value.items()
        if isinstance(item, dict) and "rows" in item and "hash" in item
    }


@dataclass(frozen=True)
class GuardCounts:
    """What a sync of the mart as it is now would do, and what is wrong with its rows."""

    rows: int
    snapshot_rows: int | None
    """Rows in the last synced snapshot; None before the first recorded sync."""
    added: int
    changed: int
    removed: int
    duplicate_keys: int
    null_keys: int
    null_required: dict[str, int] = field(default_factory=dict)

    @property
    def removed_ratio(self) -> float:
        return self.removed / self.snapshot_rows if self.snapshot_rows else 0.0

    @property
    def changed_ratio(self) -> float:
        return self.changed / self.snapshot_rows if self.snapshot_rows else 0.0


def _table_exists(session: Session, schema: str, table: str) -> bool:
    return bool(
        session.one(
            "SELECT count(*) FROM information_schema.tables "
            f"WHERE table_schema = '{schema}' AND table_name = '{table}'"
        )[0]
    )


def measure(session: Session, destination: Destination) -> GuardCounts:
    """Count in SQL what the sync would add, change and remove, and the rows it would choke on."""
    if not _table_exists(session, MART_SCHEMA, destination.mart):
        raise WarehouseError(f"mart {MART_SCHEMA}.{destination.mart} does not exist")
    key = f'"{destination.primary_key}"'
    mart = f"{MART_SCHEMA}.{destination.mart}"
    nulls = "".join(
        f', count(*) FILTER (WHERE "{c}" IS NULL)' for c in destination.guards.required_columns
    )
    row = session.one(
        f"SELECT count(*), count({key}) - count(DISTINCT {key}), "
        f"count(*) FILTER (WHERE {key} IS NULL){nulls} FROM {mart}"
    )
    rows, duplicate_keys, null_keys = (int(v) for v in row[:3])
    null_required = {
        column: int(v)
        for column, v in zip(destination.guards.required_columns, row[3:], strict=True)
    }
    if not _table_exists(session, STATE_SCHEMA, f"{destination.key}_last_synced"):
        return GuardCounts(
            rows, None, rows - null_keys, 0, 0, duplicate_keys, null_keys, null_required
        )
    snapshot = snapshot_table(destination)
    added, changed, removed, snapshot_rows = (
        int(v)
        for v in session.one(
            f"""
            WITH mart_now AS (
                SELECT DISTINCT CAST({key} AS VARCHAR) AS pk, {_row_hash(destination)} AS row_hash
                FROM {mart} WHERE {key} IS NOT NULL
            )
            SELECT
                (SELECT count(DISTINCT m.pk) FROM mart_now m
                 WHERE NOT EXISTS (SELECT 1 FROM {snapshot} s WHERE s.pk = m.pk)),
                (SELECT count(DISTINCT m.pk) FROM mart_now m JOIN {snapshot} s ON s.pk = m.pk
                 WHERE m.row_hash <> s.row_hash),
                (SELECT count(*) FROM {snapshot} s
                 WHERE NOT EXISTS (SELECT 1 FROM mart_now m WHERE m.pk = s.pk)),
                (SELECT count(*) FROM {snapshot})
            """
        )
    )
    return GuardCounts(
        rows, snapshot_rows, added, changed, removed, duplicate_keys, null_keys, null_required
    )


def violations(counts: GuardCounts, destination: Destination) -> list[str]:
    """Each limit of `destination.guards` the counts break, as a sentence (empty: the sync may
    go ahead)."""
    guards = destination.guards
    found: list[str] = []
    if counts.duplicate_keys:
        found.append(
            f"{counts.duplicate_keys} duplicate values of primary key {destination.primary_key} "
            "(Hightouch would fail the run with NON_UNIQUE_PRIMARY_KEY)"
        )
    if counts.null_keys:
        found.append(f"{counts.null_keys} rows without primary key {destination.primary_key}")
    for column, nulls in counts.null_required.items():
        if nulls:
            found.append(f"{nulls} rows with required column {column} null")
    limits = (
        (
            "removed",
            counts.removed,
            guards.max_removed_rows,
            counts.removed_ratio,
            guards.max_removed_ratio,
        ),
        (
            "changed",
            counts.changed,
            guards.max_changed_rows,
            counts.changed_ratio,
            guards.max_changed_ratio,
        ),
    )
    for what, count, max_rows, ratio, max_ratio in limits:
        if max_rows is not None and count > max_rows:
            found.append(f"{count} rows would be {what}, more than max_{what}_rows={max_rows}")
        if max_ratio is not None and ratio > max_ratio:
            found.append(
                f"{ratio:.1%} of the synced rows would be {what} ({count} of "
                f"{counts.snapshot_rows}), more than max_{what}_ratio={max_ratio}"
            )
    return found


def guard_metadata(counts: GuardCounts) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        f"would_be_{name}": dg.MetadataValue.int(getattr(counts, name))
        for name in ("added", "changed", "removed")
    }
    metadata["mart_rows"] = dg.MetadataValue.int(counts.rows)
    metadata["last_synced_rows"] = (
        dg.MetadataValue.int(counts.snapshot_rows)
        if counts.snapshot_rows is not None
        else dg.MetadataValue.text("no sync recorded yet")
    )
    metadata["removed_ratio"] = dg.MetadataValue.float(round(counts.removed_ratio, 6))
    metadata["changed_ratio"] = dg.MetadataValue.float(round(counts.changed_ratio, 6))
    metadata["duplicate_primary_keys"] = dg.MetadataValue.int(counts.duplicate_keys)
    metadata["null_primary_keys"] = dg.MetadataValue.int(counts.null_keys)
    if counts.null_required:
        metadata["null_required_columns"] = dg.MetadataValue.json(counts.null_required)
    return metadata


def record_synced_snapshot(destination: Destination, path: Path | None = None) -> int:
    """Remember the mart as just synced (key + hash of mapped columns); returns its row count.

    Call it after a sync of `destination` succeeded, so the next guard measures the changes
    since. It snapshots the mart as it is at call time: call it before anything rebuilds the mart.
    The table is replaced in one transaction, so a reader sees the old or the new snapshot.
    """
    snapshot = snapshot_table(destination)
    key = f'"{destination.primary_key}"'
    with warehouse_connection(path, read_only=False) as session:
        session.run(f"CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")
        session.run(f"DROP TABLE IF EXISTS {snapshot}")
        session.run(
            f"CREATE TABLE {snapshot} AS SELECT DISTINCT CAST({key} AS VARCHAR) AS pk, "
            f"{_row_hash(destination)} AS row_hash FROM {MART_SCHEMA}.{destination.mart} "
            f"WHERE {key} IS NOT NULL"
        )
        return int(session.one(f"SELECT count(*) FROM {snapshot}")[0])


def build_guard_check(
    destination: Destination, waiting_behind: int = 0
) -> dg.AssetChecksDefinition:
    """The guard of `destination`'s mart; `waiting_behind`: the longest line of syncs waiting on
    the syncs it gates (`syncs_waiting_behind`), which launches its step before the run's other
    checks."""
    limits = destination.guards.model_dump(exclude_defaults=True)

    @dg.asset_check(
        asset=mart_asset_key(destination.mart),
        name=guard_check_name(destination),
        blocking=True,
        description=f"Before syncing {destination.key}: no duplicate or null primary keys, no "
        "nulls in required columns, and removed / changed rows since the last sync within "
        f"{limits or 'no declared limits'}.",
        op_tags=launch_priority_tags(waiting_behind),
    )
    def _guard(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        with warehouse_connection(read_only=True) as session:
            counts = measure(session, destination)
            judged = mart_fingerprints(session, destination.mart, load_destinations())
        found = violations(counts, destination)
        for problem in found:
            context.log.error(f"Guard {destination.key}: {problem}")
        return dg.AssetCheckResult(
            passed=not found,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(found) if found else None,
            metadata={**guard_metadata(counts), **fingerprint_metadata(judged)},
        )

    return _guard
