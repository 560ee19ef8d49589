"""The source generator: deterministic rows, right shapes, exact scenario effects, atomic files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from activation.sandbox.generator import (
    AIRBYTE_META_COLUMNS,
    COLUMNS,
    COUNTRIES,
    EVENT_TYPES,
    FIRST_NAMES,
    INDUSTRIES,
    LIFECYCLE_STAGES,
    PLANS,
    STREAMS,
    SUBSCRIPTION_STATUSES,
    Scenario,
    land_streams,
    stream_json_schemas,
)

EXTRACTED_AT = datetime(2026, 2, 3, 4, 5, 6)
ROWS = 1000
EMAIL_PATTERN = r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$"
SOURCE_COLUMNS = {"accounts", "customers", "subscriptions", "events"}


def query(raw_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` with one view per stream over the landed Parquet files."""
    with duckdb.connect(":memory:") as connection:
        for stream in STREAMS:
            connection.execute(
                f"CREATE VIEW {stream} AS SELECT * FROM read_parquet('{raw_dir / stream}.parquet')"
            )
        return connection.execute(sql).fetchall()


def scalar(raw_dir: Path, sql: str) -> Any:
    return query(raw_dir, sql)[0][0]


def without_raw_id(raw_dir: Path, stream: str) -> list[tuple[Any, ...]]:
    columns = ", ".join(name for name, _ in COLUMNS[stream])
    return query(raw_dir, f"SELECT {columns} FROM {stream} ORDER BY ALL")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw_dir = tmp_path_factory.mktemp("baseline")
    land_streams(raw_dir, ROWS, Scenario(), EXTRACTED_AT)
    return raw_dir


def test_counts_returned_match_the_files_and_scale_with_rows(tmp_path: Path) -> None:
    written = land_streams(tmp_path, ROWS, Scenario(), EXTRACTED_AT)
    assert set(written) == set(STREAMS)
    for stream in STREAMS:
        assert scalar(tmp_path, f"SELECT count(*) FROM {stream}") == written[stream]
    assert written["accounts"] == ROWS // 10
    assert written["customers"] == ROWS
    assert 0.9 * ROWS <= written["subscriptions"] <= 1.3 * ROWS
    assert 1.5 * ROWS <= written["events"] <= 2.5 * ROWS


def test_a_single_customer_still_gets_an_account(tmp_path: Path) -> None:
    written = land_streams(tmp_path, 1, Scenario(), EXTRACTED_AT)
    assert written["accounts"] == 1
    assert written["customers"] == 1
    assert query(tmp_path, "SELECT customer_id, account_id FROM customers") == [
        ("C0000001", "A000001")
    ]


def test_rows_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows must be between"):
        land_streams(tmp_path, 0, Scenario(), EXTRACTED_AT)
    with pytest.raises(ValueError, match="changed_rows"):
        land_streams(tmp_path, 10, Scenario(changed_rows=-1), EXTRACTED_AT)


def test_same_inputs_land_the_same_rows(baseline: Path, tmp_path: Path) -> None:
    land_streams(tmp_path, ROWS, Scenario(), EXTRACTED_AT)
    for stream in STREAMS:
        ordered = f"SELECT * FROM {stream} ORDER BY _airbyte_raw_id"
        assert query(tmp_path, ordered) == query(baseline, ordered), stream


def test_a_later_extraction_changes_only_the_airbyte_columns(
    baseline: Path, tmp_path: Path
) -> None:
    later = EXTRACTED_AT + timedelta(hours=1)
    land_streams(tmp_path, ROWS, Scenario(), later)
    for stream in STREAMS:
        assert without_raw_id(tmp_path, stream) == without_raw_id(baseline, stream), stream
        assert scalar(tmp_path, f"SELECT DISTINCT _airbyte_extracted_at FROM {stream}") == later
    old_ids = {row[0] for row in query(baseline, "SELECT _airbyte_raw_id FROM customers")}
    new_ids = {row[0] for row in query(tmp_path, "SELECT _airbyte_raw_id FROM customers")}
    assert not old_ids & new_ids


def test_an_aware_extraction_time_is_stored_as_utc(tmp_path: Path) -> None:
    aware = datetime(2026, 2, 3, 6, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    land_streams(tmp_path, 10, Scenario(), aware)
    stored = scalar(tmp_path, "SELECT DISTINCT _airbyte_extracted_at FROM accounts")
    assert stored == aware.astimezone(UTC).replace(tzinfo=None) == EXTRACTED_AT


def test_columns_types_and_catalog_agree(baseline: Path) -> None:
    schemas = stream_json_schemas()
    assert set(schemas) == SOURCE_COLUMNS
    json_types = {"VARCHAR": "string", "INTEGER": "integer", "BOOLEAN": "boolean"}
    for stream in STREAMS:
        described = query(baseline, f"DESCRIBE {stream}")
        landed = [(row[0], row[1]) for row in described]
        assert landed == [*AIRBYTE_META_COLUMNS, *COLUMNS[stream]]
        properties = schemas[stream]["properties"]
        assert schemas[stream]["type"] == "object"
        assert list(properties) == [name for name, _ in COLUMNS[stream]]
        for name, sql_type in COLUMNS[stream]:
            expected = json_types.get(sql_type, "string")
            assert properties[name]["type"] == ["null", expected], (stream, name)
            if sql_type == "TIMESTAMP":
                assert properties[name]["format"] == "date-time"


def test_keys_are_unique_and_references_hold(baseline: Path) -> None:
    for stream, key in [
        ("accounts", "account_id"),
        ("customers", "customer_id"),
        ("subscriptions", "subscription_id"),
        ("events", "event_id"),
    ]:
        total, distinct, nulls = query(
            baseline,
            f"SELECT count(*), count(DISTINCT {key}), count(*) - count({key}) FROM {stream}",
        )[0]
        assert (distinct, nulls) == (total, 0), stream
        raw_ids = f"SELECT count(DISTINCT _airbyte_raw_id) = count(*) FROM {stream}"
        assert scalar(baseline, raw_ids), stream
    orphans = {
        "customers": "SELECT count(*) FROM customers WHERE account_id NOT IN "
        "(SELECT account_id FROM accounts)",
        "subscriptions": "SELECT count(*) FROM subscriptions WHERE customer_id NOT IN "
        "(SELECT customer_id FROM customers)",
        "events": "SELECT count(*) FROM events WHERE customer_id NOT IN "
        "(SELECT customer_id FROM customers)",
    }
    for stream, sql in orphans.items():
        assert scalar(baseline, sql) == 0, stream
    assert query(baseline, "SELECT min(customer_id), max(customer_id) FROM customers") == [
        ("C0000001", "C0001000")
    ]


def test_values_are_valid(baseline: Path) -> None:
    def distinct(stream: str, column: str) -> set[Any]:
        return {row[0] for row in query(baseline, f"SELECT DISTINCT {column} FROM {stream}")}

    assert distinct("accounts", "industry") == set(INDUSTRIES)
    assert distinct("customers", "country") == set(COUNTRIES)
    assert distinct("customers", "lifecycle_stage") == set(LIFECYCLE_STAGES)
    assert distinct("customers", "first_name") <= set(FIRST_NAMES)
    assert distinct("customers", "marketing_opt_in") == {True, False}
    assert distinct("subscriptions", "plan") == set(PLANS)
    assert distinct("subscriptions", "status") == set(SUBSCRIPTION_STATUSES)
    assert distinct("events", "event_type") == set(EVENT_TYPES)
    emails = query(
        baseline,
        "SELECT count(*), count(DISTINCT email), "
        f"count(*) FILTER (WHERE regexp_full_match(email, '{EMAIL_PATTERN}')), "
        "count(*) FILTER (WHERE email = lower(email)) FROM customers",
    )[0]
    assert emails == (ROWS, ROWS, ROWS, ROWS)
    assert scalar(baseline, "SELECT count(*) FROM accounts WHERE employee_count < 1") == 0
    canceled_mismatch = (
        "SELECT count(*) FROM subscriptions "
        "WHERE (status = 'canceled') <> (canceled_at IS NOT NULL) OR canceled_at < started_at"
    )
    assert scalar(baseline, canceled_mismatch) == 0
    assert scalar(baseline, "SELECT count(*) FROM subscriptions WHERE mrr_cents < 0") == 0
    # Some customers have no subscription and some no events, so the marts' defaults are exercised.
    assert (
        scalar(
            baseline,
            "SELECT count(*) FROM customers WHERE customer_id NOT IN "
            "(SELECT customer_id FROM subscriptions)",
        )
        > 0
    )
    assert (
        scalar(
            baseline,
            "SELECT count(*) FROM customers WHERE customer_id NOT IN "
            "(SELECT customer_id FROM events)",
        )
        > 0
    )
    # Timestamps come from a fixed epoch, never from the clock.
    assert scalar(baseline, "SELECT max(updated_at) FROM customers") < datetime(2026, 1, 1)


def test_changed_rows_change_exactly_the_first_n_first_names(
    baseline: Path, tmp_path: Path
) -> None:
    land_streams(tmp_path, ROWS, Scenario(changed_rows=7), EXTRACTED_AT)
    columns = [name for name, _ in COLUMNS["customers"] if name != "customer_id"]
    differs = " OR ".join(f"b.{column} IS DISTINCT FROM n.{column}" for column in columns)
    rows = query(
        tmp_path,
        "SELECT b.customer_id, b.first_name, n.first_name, b.updated_at, n.updated_at, "
        f"[{', '.join(f'b.{column} IS DISTINCT FROM n.{column}' for column in columns)}] "
        f"FROM read_parquet('{baseline}/customers.parquet') b "
        "FULL JOIN customers n USING (customer_id) "
        f"WHERE {differs} ORDER BY b.customer_id",
    )
    assert [row[0] for row in rows] == [f"C{n:07d}" for n in range(1, 8)]
    for _, old_name, new_name, old_updated, new_updated, changed in rows:
        assert new_name != old_name
        assert new_name in FIRST_NAMES and new_name.isalpha()
        assert new_updated > old_updated
        assert {column for column, flag in zip(columns, changed, strict=True) if flag} == {
            "first_name",
            "updated_at",
        }
    for stream in ("accounts", "subscriptions", "events"):
        assert without_raw_id(tmp_path, stream) == without_raw_id(baseline, stream), stream


def test_changed_rows_beyond_the_customer_count_change_every_customer(tmp_path: Path) -> None:
    land_streams(tmp_path / "base", 5, Scenario(), EXTRACTED_AT)
    land_streams(tmp_path / "all", 5, Scenario(changed_rows=50), EXTRACTED_AT)
    before = dict(query(tmp_path / "base", "SELECT customer_id, first_name FROM customers"))
    after = dict(query(tmp_path / "all", "SELECT customer_id, first_name FROM customers"))
    assert before.keys() == after.keys()
    assert all(before[key] != after[key] for key in before)


def test_bad_rows_add_duplicates_null_and_malformed_emails(baseline: Path, tmp_path: Path) -> None:
    written = land_streams(tmp_path, ROWS, Scenario(bad_rows=True), EXTRACTED_AT)
    assert written["customers"] == ROWS + 7
    duplicated = query(
        tmp_path,
        "SELECT customer_id, count(DISTINCT email) FROM customers "
        "GROUP BY customer_id HAVING count(*) > 1 ORDER BY customer_id",
    )
    assert len(duplicated) == 3
    assert all(emails == 2 for _, emails in duplicated)
    baseline_ids = {row[0] for row in query(baseline, "SELECT customer_id FROM customers")}
    assert {customer_id for customer_id, _ in duplicated} <= baseline_ids
    assert scalar(tmp_path, "SELECT count(*) FROM customers WHERE email IS NULL") == 2
    malformed = query(
        tmp_path,
        "SELECT email FROM customers WHERE email IS NOT NULL "
        f"AND NOT regexp_full_match(email, '{EMAIL_PATTERN}') ORDER BY email",
    )
    assert malformed == [("bob@@example",), ("not-an-email",)]
    orphans = (
        "SELECT count(*) FROM customers WHERE account_id NOT IN (SELECT account_id FROM accounts)"
    )
    assert scalar(tmp_path, orphans) == 0
    # The baseline rows are all still there, unchanged, and the other streams are untouched.
    columns = ", ".join(name for name, _ in COLUMNS["customers"])
    missing = query(
        tmp_path,
        f"SELECT count(*) FROM (SELECT {columns} FROM read_parquet('{baseline}/customers.parquet') "
        f"EXCEPT SELECT {columns} FROM customers)",
    )
    assert missing == [(0,)]
    for stream in ("accounts", "subscriptions", "events"):
        assert without_raw_id(tmp_path, stream) == without_raw_id(baseline, stream), stream


def test_a_new_landing_replaces_the_files_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    land_streams(tmp_path, 50, Scenario(), EXTRACTED_AT)
    land_streams(tmp_path, 20, Scenario(), EXTRACTED_AT)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"{stream}.parquet" for stream in STREAMS
    )
    assert scalar(tmp_path, "SELECT count(*) FROM customers") == 20


def test_a_failed_replacement_removes_its_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "customers.parquet").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        land_streams(tmp_path, 10, Scenario(), EXTRACTED_AT)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "accounts.parquet",
        "customers.parquet",
    ]
