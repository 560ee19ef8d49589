"""The dbt project, built for real: generated Parquet -> `dbt build` -> DuckDB marts.

Three builds share one data folder, in the order a deployment meets them: a clean landing, a
landing with legitimate changes, then a landing with bad rows, which must fail the staging tests
and leave the marts as the previous build left them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from activation.lib.destinations import parse_destinations
from activation.lib.paths import DBT_PROJECT_DIR, DEFAULT_DESTINATIONS_FILE
from activation.sandbox.generator import Scenario, land_streams

ROWS = 500
CHANGED_ROWS = 6
EXTRACTED_AT = datetime(2026, 3, 1, 9, 0, 0)
MARTS = (
    "mart_salesforce_accounts",
    "mart_salesforce_contacts",
    "mart_hubspot_contacts",
    "mart_iterable_users",
    "mart_braze_users",
)
MART_COLUMNS = {
    "mart_salesforce_accounts": [
        ("account_id", "VARCHAR"),
        ("account_name", "VARCHAR"),
        ("domain", "VARCHAR"),
        ("industry", "VARCHAR"),
        ("employee_count", "INTEGER"),
        ("active_customer_count", "INTEGER"),
        ("total_mrr_usd", "DECIMAL(12,2)"),
    ],
    "mart_salesforce_contacts": [
        ("contact_id", "VARCHAR"),
        ("account_id", "VARCHAR"),
        ("email", "VARCHAR"),
        ("first_name", "VARCHAR"),
        ("last_name", "VARCHAR"),
        ("lifecycle_stage", "VARCHAR"),
    ],
    "mart_hubspot_contacts": [
        ("contact_id", "VARCHAR"),
        ("email", "VARCHAR"),
        ("first_name", "VARCHAR"),
        ("last_name", "VARCHAR"),
        ("lifecycle_stage", "VARCHAR"),
        ("country", "VARCHAR"),
    ],
    "mart_iterable_users": [
        ("user_id", "VARCHAR"),
        ("email", "VARCHAR"),
        ("plan", "VARCHAR"),
        ("subscription_status", "VARCHAR"),
        ("mrr_usd", "DECIMAL(12,2)"),
        ("signup_date", "DATE"),
    ],
    "mart_braze_users": [
        ("external_id", "VARCHAR"),
        ("email", "VARCHAR"),
        ("first_name", "VARCHAR"),
        ("country", "VARCHAR"),
        ("login_count", "INTEGER"),
        ("last_event_at", "TIMESTAMP"),
    ],
}
EXPECTED_BAD_ROW_FAILURES = {
    "unique_stg_customers_customer_id",
    "not_null_stg_customers_email",
    "valid_email_stg_customers_email",
}


@dataclass(frozen=True)
class Build:
    returncode: int
    output: str
    results: dict[str, str]
    """run_results.json: node name -> status (pass, fail, success, skipped, error)."""
    marts: dict[str, list[tuple[Any, ...]]]
    """Every mart's rows, sorted, as the warehouse held them right after this build."""


def dbt_executable() -> str:
    beside_python = Path(sys.executable).with_name("dbt")
    return str(beside_python) if beside_python.exists() else shutil.which("dbt") or "dbt"


def run_dbt_build(data_dir: Path) -> Build:
    """`dbt build` exactly as the Makefile and dagster-dbt run it, with output kept in tmp."""
    command = [
        dbt_executable(),
        "build",
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target-path",
        str(data_dir / "dbt_target"),
        "--log-path",
        str(data_dir / "dbt_logs"),
    ]
    env = {**os.environ, "ACTIVATION_DATA_DIR": str(data_dir), "DO_NOT_TRACK": "1"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    run_results = json.loads((data_dir / "dbt_target" / "run_results.json").read_text())
    results = {r["unique_id"].split(".")[2]: r["status"] for r in run_results["results"]}
    return Build(
        completed.returncode, completed.stdout + completed.stderr, results, read_marts(data_dir)
    )


def warehouse(data_dir: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)


def read_marts(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    with warehouse(data_dir) as connection:
        present = {
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'marts'"
            ).fetchall()
        }
        return {
            mart: connection.execute(f"SELECT * FROM marts.{mart} ORDER BY ALL").fetchall()
            for mart in MARTS
            if mart in present
        }


def raw_scalar(data_dir: Path, sql: str) -> Any:
    """Answer from the landed Parquet files, independently of dbt."""
    with duckdb.connect(":memory:") as connection:
        for stream in ("accounts", "customers", "subscriptions", "events"):
            path = data_dir / "raw" / f"{stream}.parquet"
            connection.execute(f"CREATE VIEW {stream} AS SELECT * FROM read_parquet('{path}')")
        return connection.execute(sql).fetchone()[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dbt_data")


@pytest.fixture(scope="module")
def clean_build(data_dir: Path) -> Build:
    land_streams(data_dir / "raw", ROWS, Scenario(), EXTRACTED_AT)
    return run_dbt_build(data_dir)


@pytest.fixture(scope="module")
def changed_build(clean_build: Build, data_dir: Path) -> Build:
    land_streams(data_dir / "raw", ROWS, Scenario(changed_rows=CHANGED_ROWS), EXTRACTED_AT)
    return run_dbt_build(data_dir)


@pytest.fixture(scope="module")
def bad_build(changed_build: Build, data_dir: Path) -> Build:
    land_streams(data_dir / "raw", ROWS, Scenario(bad_rows=True), EXTRACTED_AT)
    return run_dbt_build(data_dir)


def test_clean_landing_builds_and_passes_every_test(clean_build: Build) -> None:
    assert clean_build.returncode == 0, clean_build.output
    assert set(clean_build.results.values()) == {"success", "pass"}
    # The gate that the bad-rows build trips exists, and passes on clean data.
    assert {clean_build.results[name] for name in EXPECTED_BAD_ROW_FAILURES} == {"pass"}
    assert {clean_build.results[mart] for mart in MARTS} == {"success"}


def test_tables_land_in_the_staging_and_marts_schemas(clean_build: Build, data_dir: Path) -> None:
    with warehouse(data_dir) as connection:
        tables = connection.execute(
            "SELECT table_schema, table_name, table_type FROM information_schema.tables "
            # dbt_test__audit holds each test's stored failing rows (store_failures).
            "WHERE table_schema <> 'dbt_test__audit' ORDER BY ALL"
        ).fetchall()
    staging = ("stg_accounts", "stg_customers", "stg_events", "stg_subscriptions")
    assert tables == sorted(
        [("marts", mart, "BASE TABLE") for mart in MARTS]
        + [("staging", model, "VIEW") for model in staging]
    )


def test_mart_columns_and_types_are_the_contract(clean_build: Build, data_dir: Path) -> None:
    with warehouse(data_dir) as connection:
        for mart, expected in MART_COLUMNS.items():
            columns = connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'marts' AND table_name = ? ORDER BY ordinal_position",
                [mart],
            ).fetchall()
            assert columns == expected, mart


def test_every_declared_destination_finds_its_columns(clean_build: Build) -> None:
    for destination in parse_destinations(DEFAULT_DESTINATIONS_FILE):
        columns = {name for name, _ in MART_COLUMNS[destination.mart]}
        assert destination.primary_key in columns, destination.key
        assert set(destination.mapped_columns) <= columns, destination.key


def test_mart_row_counts_match_the_generated_data(clean_build: Build, data_dir: Path) -> None:
    counts = {mart: len(rows) for mart, rows in clean_build.marts.items()}
    opted_in = raw_scalar(data_dir, "SELECT count(*) FROM customers WHERE marketing_opt_in")
    assert 0 < opted_in < ROWS
    assert counts == {
        "mart_salesforce_accounts": ROWS // 10,
        "mart_salesforce_contacts": ROWS,
        "mart_hubspot_contacts": opted_in,
        "mart_iterable_users": ROWS,
        "mart_braze_users": ROWS,
    }


def test_mart_values_match_the_generated_data(clean_build: Build, data_dir: Path) -> None:
    marts = clean_build.marts
    # Account totals, recomputed from the raw subscriptions.
    expected_mrr = raw_scalar(
        data_dir, "SELECT sum(mrr_cents) FROM subscriptions WHERE status = 'active'"
    )
    assert sum(row[6] for row in marts["mart_salesforce_accounts"]) * 100 == expected_mrr
    expected_active = raw_scalar(
        data_dir,
        "SELECT count(DISTINCT customer_id) FROM subscriptions "
        "WHERE status IN ('active', 'trialing')",
    )
    assert sum(row[5] for row in marts["mart_salesforce_accounts"]) == expected_active
    # Iterable: customers without a subscription default to an active free plan at 0 USD.
    without = raw_scalar(
        data_dir,
        "SELECT count(*) FROM customers "
        "WHERE customer_id NOT IN (SELECT customer_id FROM subscriptions)",
    )
    defaults = [row for row in marts["mart_iterable_users"] if row[2:5] == ("free", "active", 0)]
    assert without > 0
    assert len(defaults) >= without
    # A customer with an earlier canceled subscription shows the later one.
    two_subscriptions = raw_scalar(
        data_dir,
        "SELECT min(customer_id) FROM subscriptions WHERE subscription_id LIKE '%-2'",
    )
    latest = raw_scalar(
        data_dir,
        f"SELECT status FROM subscriptions WHERE subscription_id = 'S{two_subscriptions[1:]}-2'",
    )
    iterable = {row[0]: row for row in marts["mart_iterable_users"]}
    assert iterable[two_subscriptions][3] == latest
    # Braze: logins counted, and no events means no last_event_at.
    assert sum(row[4] for row in marts["mart_braze_users"]) == raw_scalar(
        data_dir, "SELECT count(*) FROM events WHERE event_type = 'login'"
    )
    silent = raw_scalar(
        data_dir,
        "SELECT count(*) FROM customers WHERE customer_id NOT IN (SELECT customer_id FROM events)",
    )
    assert silent > 0
    assert sum(1 for row in marts["mart_braze_users"] if row[5] is None) == silent


def test_a_legitimate_change_shows_as_one_changed_row_per_mart(
    clean_build: Build, changed_build: Build, data_dir: Path
) -> None:
    assert changed_build.returncode == 0, changed_build.output
    changed_ids = {f"C{n:07d}" for n in range(1, CHANGED_ROWS + 1)}
    opted_in_changed = raw_scalar(
        data_dir,
        "SELECT count(*) FROM customers WHERE marketing_opt_in AND customer_id <= "
        f"'C{CHANGED_ROWS:07d}'",
    )
    expected_changes = {
        "mart_salesforce_accounts": 0,
        "mart_salesforce_contacts": CHANGED_ROWS,
        "mart_hubspot_contacts": opted_in_changed,
        "mart_iterable_users": 0,
        "mart_braze_users": CHANGED_ROWS,
    }
    for mart, expected in expected_changes.items():
        before = {row[0]: row for row in clean_build.marts[mart]}
        after = {row[0]: row for row in changed_build.marts[mart]}
        assert before.keys() == after.keys(), mart
        changed = {key for key in before if before[key] != after[key]}
        assert len(changed) == expected, mart
        assert changed <= changed_ids, mart


def test_bad_rows_fail_the_staging_gate_and_skip_the_marts(bad_build: Build) -> None:
    assert bad_build.returncode != 0
    failed = {name for name, status in bad_build.results.items() if status in ("fail", "error")}
    assert failed == EXPECTED_BAD_ROW_FAILURES, bad_build.output
    for mart in MARTS:
        assert bad_build.results[mart] == "skipped", mart


def test_bad_rows_leave_the_marts_as_the_last_good_build_left_them(
    changed_build: Build, bad_build: Build
) -> None:
    assert bad_build.marts == changed_build.marts
