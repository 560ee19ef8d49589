"""Deterministic source rows, landed as Parquet the way an Airbyte Postgres connection lands them.

Rows are produced by DuckDB SQL over `range()`, so a million customers take seconds, not minutes.
Every value comes from an integer hash of the row number (never `random()` or `now()`), so the
same inputs always land the same rows: tests can predict counts and a re-landing with a scenario
differs from the baseline in exactly the rows the scenario names.

Each stream is written to a temporary file in the same folder, then `os.replace`d over
`{stream}.parquet`: dbt may be reading the previous version while the next one is written, and a
rename within one folder is atomic, so a reader sees either the old file or the new one.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from activation.lib.warehouse import fetch_int

STREAMS: tuple[str, ...] = ("accounts", "customers", "subscriptions", "events")

# Identifiers are zero-padded to a fixed width (so they sort like their number); the widths bound
# how many customers one landing can hold (bad rows add up to four new customer ids).
MAX_ROWS = 9_999_990

INDUSTRIES = ("software", "retail", "healthcare", "finance", "manufacturing", "education")
COUNTRIES = ("US", "GB", "DE", "FR", "CA", "AU", "NL", "SE")
LIFECYCLE_STAGES = ("lead", "marketing_qualified", "sales_qualified", "customer", "churned")
PLANS = ("free", "starter", "pro", "enterprise")
SUBSCRIPTION_STATUSES = ("trialing", "active", "past_due", "canceled")
EVENT_TYPES = ("page_view", "login", "purchase", "feature_used")
FIRST_NAMES = (
    "Ada", "Alan", "Alice", "Amir", "Anna", "Ben", "Carla", "Chen", "Clara", "Dana",
    "David", "Elena", "Emma", "Eric", "Farah", "Felix", "Grace", "Hana", "Hugo", "Ines",
    "Ivan", "Jade", "James", "Julia", "Kai", "Karin", "Leo", "Lina", "Liam", "Maya",
    "Marco", "Nadia", "Noah", "Olga", "Omar", "Paula", "Priya", "Quinn", "Rosa", "Sam",
    "Sara", "Tariq", "Tessa", "Uma", "Victor", "Wen", "Yara", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Anders", "Baker", "Berg", "Brown", "Castro", "Chen", "Dubois", "Evans", "Fischer",
    "Garcia", "Hansen", "Ito", "Jensen", "Kim", "Klein", "Lambert", "Larsen", "Lopez",
    "Martin", "Meyer", "Moreau", "Nakamura", "Nguyen", "Novak", "Olsen", "Patel", "Perez",
    "Quinn", "Rossi", "Schmidt", "Silva", "Smith", "Suzuki", "Taylor", "Urban", "Visser",
    "Wagner", "Walsh", "Weber", "Wilson", "Young", "Zhang",
)  # fmt: skip
COMPANY_WORDS = (
    "Acme", "Apex", "Birch", "Blue", "Cedar", "Cobalt", "Delta", "Ember", "Falcon", "Granite",
    "Harbor", "Iris", "Juniper", "Kestrel", "Lumen", "Maple", "Nimbus", "Orbit", "Pine",
    "Quartz", "River", "Summit", "Tidal", "Vertex",
)  # fmt: skip
COMPANY_SUFFIXES = ("Labs", "Systems", "Group", "Works", "Health", "Retail", "Capital", "Co")

# Raw columns per stream with their DuckDB types, in landing order. The Parquet files and the
# Airbyte catalog (`stream_json_schemas`) are both derived from this, so they cannot disagree.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "accounts": (
        ("account_id", "VARCHAR"),
        ("name", "VARCHAR"),
        ("domain", "VARCHAR"),
        ("industry", "VARCHAR"),
        ("employee_count", "INTEGER"),
        ("created_at", "TIMESTAMP"),
        ("updated_at", "TIMESTAMP"),
    ),
    "customers": (
        ("customer_id", "VARCHAR"),
        ("account_id", "VARCHAR"),
        ("email", "VARCHAR"),
        ("first_name", "VARCHAR"),
        ("last_name", "VARCHAR"),
        ("country", "VARCHAR"),
        ("lifecycle_stage", "VARCHAR"),
        ("marketing_opt_in", "BOOLEAN"),
        ("created_at", "TIMESTAMP"),
        ("updated_at", "TIMESTAMP"),
    ),
    "subscriptions": (
        ("subscription_id", "VARCHAR"),
        ("customer_id", "VARCHAR"),
        ("plan", "VARCHAR"),
        ("status", "VARCHAR"),
        ("mrr_cents", "INTEGER"),
        ("started_at", "TIMESTAMP"),
        ("canceled_at", "TIMESTAMP"),
    ),
    "events": (
        ("event_id", "VARCHAR"),
        ("customer_id", "VARCHAR"),
        ("event_type", "VARCHAR"),
        ("occurred_at", "TIMESTAMP"),
    ),
}
AIRBYTE_META_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_airbyte_raw_id", "VARCHAR"),
    ("_airbyte_extracted_at", "TIMESTAMP"),
    ("_airbyte_meta", "VARCHAR"),
)

# The bad rows of `Scenario(bad_rows=True)`, appended to customers.
DUPLICATE_ID_ROWS = 3
NULL_EMAIL_ROWS = 2
MALFORMED_EMAILS = ("not-an-email", "bob@@example")

_JSON_TYPES: dict[str, dict[str, object]] = {
    "VARCHAR": {"type": ["null", "string"]},
    "INTEGER": {"type": ["null", "integer"]},
    "BOOLEAN": {"type": ["null", "boolean"]},
    "TIMESTAMP": {
        "type": ["null", "string"],
        "format": "date-time",
        "airbyte_type": "timestamp_without_timezone",
    },
}

# A 32-bit integer hash (xorshift-multiply), in plain arithmetic so that the rows do not depend on
# DuckDB's internal hash function, which may change between versions. Products stay below 2^63.
_MACROS = """
CREATE MACRO fold(x) AS xor(x, x >> 16);
CREATE MACRO mix(i, salt) AS
    fold((fold((CAST(i AS BIGINT) * 2654435761 + CAST(salt AS BIGINT) * 1013904223)
        % 4294967296) * 73244475) % 4294967296);
CREATE MACRO seconds(i, salt, span) AS to_seconds(mix(i, salt) % span);
CREATE MACRO customer_created(n) AS TIMESTAMP '2023-01-01 00:00:00' + seconds(n, 24, 900 * 86400);
CREATE MACRO customer_id(n) AS 'C' || lpad(CAST(n AS VARCHAR), 7, '0');
CREATE MACRO account_id(n) AS 'A' || lpad(CAST(n AS VARCHAR), 6, '0');
"""


@dataclass(frozen=True)
class Scenario:
    """What the next landing holds besides the baseline rows (customers only)."""

    bad_rows: bool = False
    """Append bad customer rows: duplicate ids, NULL emails, malformed emails."""
    changed_rows: int = 0
    """The first N customers (by customer_id) carry a legitimate change of first_name."""


def account_count(rows: int) -> int:
    return max(1, rows // 10)


def land_streams(
    raw_dir: Path, rows: int, scenario: Scenario, extracted_at: datetime
) -> dict[str, int]:
    """Write raw_dir/{stream}.parquet for every stream; return rows written per stream."""
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"rows must be between 1 and {MAX_ROWS}, got {rows}")
    if scenario.changed_rows < 0:
        raise ValueError(f"changed_rows must not be negative, got {scenario.changed_rows}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    extracted = _timestamp_literal(extracted_at)
    queries = {
        "accounts": _accounts_sql(rows),
        "customers": _customers_sql(rows, scenario),
        "subscriptions": _subscriptions_sql(rows),
        "events": _events_sql(rows),
    }
    written: dict[str, int] = {}
    with duckdb.connect(":memory:") as connection:
        connection.execute("SET enable_progress_bar = false")
        connection.execute(_MACROS)
        for stream in STREAMS:
            select = _landing_select(stream, queries[stream], extracted)
            written[stream] = _write_atomically(connection, select, raw_dir / f"{stream}.parquet")
    return written


def stream_json_schemas() -> dict[str, dict]:
    """JSON schema per stream (Airbyte catalog style: {"type": "object", "properties": ...}).

    Only source columns: the `_airbyte_*` columns are added by the destination, not the source.
    """
    return {
        stream: {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {name: dict(_JSON_TYPES[sql_type]) for name, sql_type in columns},
        }
        for stream, columns in COLUMNS.items()
    }


def _timestamp_literal(value: datetime) -> str:
    """A TIMESTAMP literal in UTC wall time (Airbyte stamps extraction in UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


def _pick(values: tuple[str, ...], index_expression: str) -> str:
    """SQL choosing one of `values` by a non-negative integer expression."""
    literal = "[" + ", ".join(f"'{value}'" for value in values) + "]"
    return f"({literal})[1 + ({index_expression}) % {len(values)}]"


def _landing_select(stream: str, query: str, extracted: str) -> str:
    """Cast to the declared types and add the Airbyte meta columns, in row order.

    `_row` is each row's position in its stream: the raw id is a hash of it and of the extraction
    time, unique per row and per landing, as Airbyte's record ids are.
    """
    casts = ", ".join(f"CAST({name} AS {sql_type}) AS {name}" for name, sql_type in COLUMNS[stream])
    # An MD5 digest read as a UUID: Airbyte's raw ids are UUIDs.
    raw_id = f"CAST(CAST(md5('{stream}:' || _row || ':' || {extracted}) AS UUID) AS VARCHAR)"
    return (
        f"SELECT {raw_id} AS _airbyte_raw_id, {extracted} AS _airbyte_extracted_at, "
        f"'{{}}' AS _airbyte_meta, {casts} FROM ({query}) ORDER BY _row"
    )


def _write_atomically(connection: duckdb.DuckDBPyConnection, select: str, target: Path) -> int:
    temporary = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.parquet.tmp")
    quoted = str(temporary).replace("'", "''")
    try:
        count = fetch_int(connection, f"COPY ({select}) TO '{quoted}' (FORMAT parquet)")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return count


def _accounts_sql(rows: int) -> str:
    word = _pick(COMPANY_WORDS, "mix(n, 11)")
    suffix = _pick(COMPANY_SUFFIXES, "mix(n, 12)")
    return f"""
        SELECT n AS _row, account_id(n) AS account_id,
            {word} || ' ' || {suffix} AS name,
            lower({word}) || '-' || lower({suffix}) || '-' || n || '.example.com' AS domain,
            {_pick(INDUSTRIES, "mix(n, 13)")} AS industry,
            1 + mix(n, 14) % 5000 AS employee_count,
            TIMESTAMP '2020-01-01 00:00:00' + seconds(n, 15, 1000 * 86400) AS created_at,
            TIMESTAMP '2020-01-01 00:00:00' + seconds(n, 15, 1000 * 86400)
                + seconds(n, 16, 365 * 86400) AS updated_at
        FROM (SELECT range + 1 AS n FROM range({account_count(rows)}))
    """


def _customers_sql(rows: int, scenario: Scenario) -> str:
    changed = min(scenario.changed_rows, rows)
    first_count = len(FIRST_NAMES)
    # A changed customer takes the next first name of the list: still a valid name, and different.
    first_name = (
        f"CASE WHEN n <= {changed} THEN {_pick(FIRST_NAMES, 'first_index + 1')} "
        f"ELSE {_pick(FIRST_NAMES, 'first_index')} END"
    )
    # The email keeps the original name, so the change touches first_name (and updated_at) only.
    baseline = f"""
        SELECT n AS _row, customer_id(n) AS customer_id,
            account_id(1 + mix(n, 23) % {account_count(rows)}) AS account_id,
            lower({_pick(FIRST_NAMES, "first_index")} || '.' || {_pick(LAST_NAMES, "last_index")}
                || '.' || n || '@example.com') AS email,
            {first_name} AS first_name,
            {_pick(LAST_NAMES, "last_index")} AS last_name,
            {_pick(COUNTRIES, "mix(n, 25)")} AS country,
            {_pick(LIFECYCLE_STAGES, "mix(n, 26)")} AS lifecycle_stage,
            mix(n, 27) % 10 < 6 AS marketing_opt_in,
            customer_created(n) AS created_at,
            customer_created(n) + seconds(n, 28, 90 * 86400)
                + CASE WHEN n <= {changed} THEN INTERVAL 1 DAY ELSE INTERVAL 0 DAY END
                AS updated_at
        FROM (
            SELECT n, mix(n, 21) % {first_count} AS first_index,
                mix(n, 22) % {len(LAST_NAMES)} AS last_index
            FROM (SELECT range + 1 AS n FROM range({rows}))
        )
    """
    if not scenario.bad_rows:
        return baseline
    return baseline + " UNION ALL " + _bad_customers_sql(rows)


def _bad_customers_sql(rows: int) -> str:
    """Rows a broken upstream change might land: each must fail a staging test.

    Duplicates reuse existing customer ids spread over the range; the others get new ids. All
    reference the first account, which always exists.
    """
    bad: list[tuple[str, str]] = []  # (customer id expression, email expression)
    spacing = max(1, rows // DUPLICATE_ID_ROWS)
    for j in range(DUPLICATE_ID_ROWS):
        existing = (j * spacing) % rows + 1
        bad.append((f"customer_id({existing})", f"'duplicate.{j + 1}@example.com'"))
    new_emails = ["NULL"] * NULL_EMAIL_ROWS + [f"'{email}'" for email in MALFORMED_EMAILS]
    bad.extend((f"customer_id({rows + k + 1})", email) for k, email in enumerate(new_emails))
    selects = [
        f"""SELECT {rows + position + 1} AS _row, {customer}, account_id(1), {email},
            'Mallory', 'Broken', 'US', 'lead', false,
            TIMESTAMP '2025-06-30 00:00:00', TIMESTAMP '2025-06-30 00:00:00'"""
        for position, (customer, email) in enumerate(bad)
    ]
    return " UNION ALL ".join(selects)


def _subscriptions_sql(rows: int) -> str:
    # 10% of customers have no subscription, 70% one, 20% two (an earlier, canceled one first).
    plan = _pick(PLANS, "mix(n * 2 + seq, 32)")
    latest_status = (
        "CASE WHEN mix(n, 33) % 20 < 3 THEN 'trialing' WHEN mix(n, 33) % 20 < 16 THEN 'active' "
        "WHEN mix(n, 33) % 20 < 18 THEN 'past_due' ELSE 'canceled' END"
    )
    started = "customer_created(n) + seconds(n * 2 + seq, 34, 30 * 86400) + seq * INTERVAL 120 DAY"
    return f"""
        SELECT _row, subscription_id, customer_id, plan, status,
            CASE plan WHEN 'free' THEN 0 WHEN 'starter' THEN 2900 WHEN 'pro' THEN 9900
                ELSE 49900 + (mix(n, 35) % 50) * 1000 END AS mrr_cents,
            started_at,
            CASE WHEN status = 'canceled'
                THEN started_at + seconds(n * 2 + seq, 36, 89 * 86400) + INTERVAL 1 DAY
            END AS canceled_at
        FROM (
            SELECT n * 2 + seq AS _row, n, seq,
                'S' || lpad(CAST(n AS VARCHAR), 7, '0') || '-' || (seq + 1) AS subscription_id,
                customer_id(n) AS customer_id,
                {plan} AS plan,
                CASE WHEN seq + 1 < subscription_count THEN 'canceled' ELSE {latest_status} END
                    AS status,
                {started} AS started_at
            FROM (
                SELECT n, CASE WHEN mix(n, 31) % 10 = 0 THEN 0
                    WHEN mix(n, 31) % 10 >= 8 THEN 2 ELSE 1 END AS subscription_count
                FROM (SELECT range + 1 AS n FROM range({rows}))
            ), range(2) AS slots(seq)
            WHERE seq < subscription_count
        )
    """


def _events_sql(rows: int) -> str:
    # Zero to four events per customer (two on average); a fifth of customers have none.
    return f"""
        SELECT n * 4 + seq AS _row,
            'E' || lpad(CAST(n AS VARCHAR), 7, '0') || '-' || (seq + 1) AS event_id,
            customer_id(n) AS customer_id,
            {_pick(EVENT_TYPES, "mix(n * 4 + seq, 42)")} AS event_type,
            customer_created(n) + seconds(n * 4 + seq, 43, 365 * 86400) AS occurred_at
        FROM (SELECT range + 1 AS n FROM range({rows})), range(4) AS slots(seq)
        WHERE seq < mix(n, 41) % 5
    """
