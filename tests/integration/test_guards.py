"""Guard checks: would-be added / changed / removed rows against the last synced snapshot.

Counting is tested on a real DuckDB file; the thresholds end to end on the sandbox: a change under
the limit syncs, one over the limit blocks the sync (in the run and in a later hand launch) with
the counts in the check's metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from activation.core.guards import (
    Fingerprint,
    GuardCounts,
    fingerprint,
    measure,
    record_synced_snapshot,
    violations,
)
from activation.lib.destinations import (
    Destination,
    Guards,
    load_destinations,
    mart_asset_key,
    parse_destinations,
)
from activation.lib.paths import DEFAULT_DESTINATIONS_FILE
from activation.lib.warehouse import WarehouseError, warehouse_connection
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import run_chain
from tests.support.gate_support import chain_sandbox, held_back, launch, sync_key

CONTACTS = "salesforce_contacts"
GUARD = "guard_salesforce_contacts"


def _contacts(guards: dict | None = None) -> Destination:
    destination = next(
        d for d in parse_destinations(DEFAULT_DESTINATIONS_FILE) if d.key == CONTACTS
    )
    if guards is None:
        return destination
    return destination.model_copy(update={"guards": Guards(**guards)})


# -- counting in a real DuckDB file ---------------------------------------------------------------


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE SCHEMA marts")
        connection.execute(
            "CREATE TABLE marts.mart_salesforce_contacts AS SELECT 'C' || lpad(range::VARCHAR, "
            "4, '0') AS contact_id, 'A1' AS account_id, 'c' || range || '@example.com' AS email, "
            "'Ada' AS first_name, 'Lovelace' AS last_name, 'lead' AS lifecycle_stage "
            "FROM range(100)"
        )
    return path


def _measure(path: Path, destination: Destination) -> GuardCounts:
    with warehouse_connection(path, read_only=True) as connection:
        return measure(connection, destination)


def test_before_any_sync_every_row_is_added(warehouse: Path) -> None:
    counts = _measure(warehouse, _contacts())
    assert (counts.added, counts.changed, counts.removed, counts.snapshot_rows) == (100, 0, 0, None)


def test_counts_against_the_last_synced_snapshot(warehouse: Path) -> None:
    destination = _contacts()
    assert record_synced_snapshot(destination, warehouse) == 100
    with duckdb.connect(str(warehouse)) as connection:
        mart = "marts.mart_salesforce_contacts"
        connection.execute(f"UPDATE {mart} SET first_name = 'Grace' WHERE contact_id < 'C0003'")
        connection.execute(f"UPDATE {mart} SET lifecycle_stage = NULL WHERE contact_id = 'C0010'")
        connection.execute(f"DELETE FROM {mart} WHERE contact_id IN ('C0050', 'C0051')")
        connection.execute(f"INSERT INTO {mart} VALUES ('C9999', 'A1', 'n@x.io', 'N', 'N', 'lead')")
    counts = _measure(warehouse, destination)
    assert (counts.added, counts.changed, counts.removed) == (1, 4, 2)
    assert counts.snapshot_rows == 100 and counts.rows == 99
    assert counts.changed_ratio == pytest.approx(0.04)


def test_duplicate_and_null_keys_and_required_nulls_always_block(warehouse: Path) -> None:
    destination = _contacts({"required_columns": ["email"]})
    with duckdb.connect(str(warehouse)) as connection:
        mart = "marts.mart_salesforce_contacts"
        connection.execute(f"UPDATE {mart} SET contact_id = 'C0000' WHERE contact_id = 'C0001'")
        connection.execute(f"UPDATE {mart} SET contact_id = NULL WHERE contact_id = 'C0002'")
        connection.execute(f"UPDATE {mart} SET email = NULL WHERE contact_id IN ('C0003', 'C0004')")
    counts = _measure(warehouse, destination)
    assert (counts.duplicate_keys, counts.null_keys, counts.null_required) == (1, 1, {"email": 2})
    found = violations(counts, destination)
    assert any("NON_UNIQUE_PRIMARY_KEY" in f for f in found)
    assert any("without primary key" in f for f in found)
    assert any("required column email null" in f for f in found)


@pytest.mark.parametrize(
    ("guards", "blocked"),
    [
        ({"max_changed_rows": 4}, False),
        ({"max_changed_rows": 3}, True),
        ({"max_changed_ratio": 0.04}, False),
        ({"max_changed_ratio": 0.039}, True),
        ({"max_removed_rows": 2}, False),
        ({"max_removed_rows": 1}, True),
        ({"max_removed_ratio": 0.02}, False),
        ({"max_removed_ratio": 0.01}, True),
        ({}, False),
    ],
    ids=lambda v: str(v),
)
def test_thresholds_under_and_over(guards: dict, blocked: bool) -> None:
    destination = _contacts(guards)
    counts = GuardCounts(
        rows=99, snapshot_rows=100, added=1, changed=4, removed=2, duplicate_keys=0, null_keys=0
    )
    assert bool(violations(counts, destination)) is blocked


def _fingerprint(path: Path, destination: Destination | None = None) -> Fingerprint:
    with warehouse_connection(path, read_only=True) as session:
        return fingerprint(session, destination or _contacts())


def test_fingerprint_ignores_row_order(warehouse: Path) -> None:
    before = _fingerprint(warehouse)
    with duckdb.connect(str(warehouse)) as connection:
        mart = "marts.mart_salesforce_contacts"
        connection.execute(f"CREATE TABLE marts.shuffled AS SELECT * FROM {mart} ORDER BY random()")
        connection.execute(f"DROP TABLE {mart}")
        connection.execute(
            f"CREATE TABLE {mart} AS SELECT * FROM marts.shuffled ORDER BY email DESC"
        )
    after = _fingerprint(warehouse)
    assert before == after
    assert before.rows == 100 and 0 < int(before.hash) < 2**60


@pytest.mark.parametrize(
    ("statement", "changes"),
    [
        ("UPDATE {mart} SET last_name = 'Byron' WHERE contact_id = 'C0042'", True),
        ("UPDATE {mart} SET email = NULL WHERE contact_id = 'C0042'", True),
        ("UPDATE {mart} SET contact_id = 'C9999' WHERE contact_id = 'C0042'", True),
        ("DELETE FROM {mart} WHERE contact_id = 'C0042'", True),
        ("UPDATE {mart} SET internal_note = 'vip' WHERE contact_id = 'C0042'", False),
    ],
    ids=["mapped-column", "mapped-to-null", "primary-key", "row-removed", "unmapped-column"],
)
def test_fingerprint_follows_the_mapped_columns_only(
    warehouse: Path, statement: str, changes: bool
) -> None:
    mart = "marts.mart_salesforce_contacts"
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(f"ALTER TABLE {mart} ADD COLUMN internal_note VARCHAR")
    before = _fingerprint(warehouse)
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(statement.format(mart=mart))
    assert (_fingerprint(warehouse) != before) is changes


def test_fingerprint_of_an_empty_mart(warehouse: Path) -> None:
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("DELETE FROM marts.mart_salesforce_contacts")
    assert _fingerprint(warehouse) == Fingerprint(0, "0")


def test_missing_warehouse_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "warehouse.duckdb"
    with (
        pytest.raises(WarehouseError, match="warehouse.duckdb: warehouse not found"),
        warehouse_connection(missing, read_only=True),
    ):
        pass


# -- end to end on the sandbox --------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())
    for entry in raw["destinations"]:
        if entry["key"] == CONTACTS:
            entry["guards"] = {"max_changed_rows": 5, "required_columns": ["email"]}
    path = tmp_path_factory.mktemp("declaration") / "destinations.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def sandbox(
    tmp_path_factory: pytest.TempPathFactory, guarded_file: Path
) -> Iterator[SandboxProcess]:
    with chain_sandbox(tmp_path_factory.mktemp("guards") / "data", guarded_file) as box:
        yield box


def _synced(sandbox: SandboxProcess) -> None:
    # What the sync step does after a successful sync (see activation/core/sync_path.py); calling it
    # again here keeps this test independent of that wiring and snapshots the same mart.
    destination = next(d for d in load_destinations() if d.key == CONTACTS)
    record_synced_snapshot(destination, sandbox.data_dir / "warehouse.duckdb")


def _guard_evaluation(instance: dg.DagsterInstance, run_id: str) -> dg.AssetCheckEvaluation:
    for entry in instance.all_logs(run_id):
        evaluation = entry.asset_check_evaluation
        if evaluation is not None and evaluation.check_name == GUARD:
            return evaluation
    raise AssertionError(f"{GUARD} was not evaluated in run {run_id}")


def test_change_under_the_limit_syncs_over_the_limit_blocks(
    sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    first = run_chain(instance, console_log_level="WARNING")
    assert first.success, first.failed_steps
    _synced(sandbox)

    sandbox.set_scenario(changed_rows=2)
    under = run_chain(instance, console_log_level="WARNING")
    assert under.success, (under.failed_steps, under.failed_checks)
    assert under.syncs[CONTACTS]["planned_changed"] == 2
    evaluation = _guard_evaluation(
        instance, instance.get_run_records(limit=1)[0].dagster_run.run_id
    )
    assert evaluation.passed
    assert evaluation.metadata["would_be_changed"].value == 2
    assert evaluation.metadata["would_be_removed"].value == 0
    _synced(sandbox)

    triggers_before = sandbox.trigger_counts()
    sandbox.set_scenario(changed_rows=10)  # rows 3..10 change now: 8 > max_changed_rows=5
    try:
        over = run_chain(instance, console_log_level="WARNING")
    finally:
        sandbox.set_scenario()
    over_run = instance.get_run_records(limit=1)[0].dagster_run.run_id
    assert not over.success
    assert f"marts/mart_salesforce_contacts:{GUARD}" in over.failed_checks
    assert CONTACTS not in over.syncs
    assert "salesforce_accounts" in over.syncs  # other marts are not held back
    evaluation = _guard_evaluation(instance, over_run)
    assert not evaluation.passed
    counts = {
        name: evaluation.metadata[f"would_be_{name}"].value
        for name in ("added", "changed", "removed")
    }
    assert counts == {"added": 0, "changed": 8, "removed": 0}
    assert "8 rows would be changed, more than max_changed_rows=5" in (evaluation.description or "")
    assert sandbox.trigger_counts()["102"] == triggers_before["102"]

    # A later hand launch of the sync alone is refused by the gate, naming the guard.
    refused = launch(instance, sync_key(CONTACTS))
    [failure] = held_back(refused)
    assert f"check marts/mart_salesforce_contacts:{GUARD} failed: 8 rows would be changed" in (
        failure.description
    )
    assert f"in run {over_run}" in failure.description
    assert sandbox.trigger_counts()["102"] == triggers_before["102"]


def test_guard_check_targets_the_mart(sandbox: SandboxProcess) -> None:
    from activation.definitions import build_definitions

    repository = build_definitions().get_repository_def()
    key = dg.AssetCheckKey(mart_asset_key("mart_salesforce_contacts"), GUARD)
    [spec] = repository.asset_checks_defs_by_key[key].check_specs
    assert spec.blocking


def test_same_counts_on_postgres(
    postgres_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With ACTIVATION_DBT_TARGET=postgres the guards read the PostgreSQL warehouse dbt builds."""
    database = postgres_server.create_database("activation_guards")
    for name, value in postgres_server.warehouse_environment(database).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ACTIVATION_DBT_TARGET", "postgres")
    connection = postgres_server.connect(database)
    mart = "marts.mart_salesforce_contacts"
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("CREATE SCHEMA marts")
            cursor.execute(
                f"CREATE TABLE {mart} AS SELECT 'C' || lpad(n::text, 4, '0') AS contact_id, "
                "'A1' AS account_id, 'c' || n || '@example.com' AS email, 'Ada' AS first_name, "
                "'Lovelace' AS last_name, 'lead' AS lifecycle_stage "
                "FROM generate_series(0, 99) AS n"
            )
        destination = _contacts({"max_changed_rows": 3, "required_columns": ["email"]})
        assert record_synced_snapshot(destination) == 100
        with connection, connection.cursor() as cursor:
            cursor.execute(f"UPDATE {mart} SET first_name = 'Grace' WHERE contact_id < 'C0003'")
            cursor.execute(f"UPDATE {mart} SET lifecycle_stage = NULL WHERE contact_id = 'C0010'")
            cursor.execute(f"DELETE FROM {mart} WHERE contact_id IN ('C0050', 'C0051')")
            cursor.execute(f"UPDATE {mart} SET email = NULL WHERE contact_id = 'C0020'")
        with warehouse_connection(read_only=True) as session:
            counts = measure(session, destination)
            on_postgres = fingerprint(session, destination)
    finally:
        connection.close()
    assert (counts.added, counts.changed, counts.removed) == (0, 5, 2)
    # The same rows give the same fingerprint on DuckDB: the SQL is one on both engines.
    same_rows = tmp_path / "same.duckdb"
    with duckdb.connect(str(same_rows)) as duck:
        duck.execute("CREATE SCHEMA marts")
        duck.execute(
            f"CREATE TABLE {mart} AS SELECT 'C' || lpad(range::VARCHAR, 4, '0') AS contact_id, "
            "'A1' AS account_id, 'c' || range || '@example.com' AS email, 'Ada' AS first_name, "
            "'Lovelace' AS last_name, 'lead' AS lifecycle_stage FROM range(100)"
        )
        duck.execute(f"UPDATE {mart} SET first_name = 'Grace' WHERE contact_id < 'C0003'")
        duck.execute(f"UPDATE {mart} SET lifecycle_stage = NULL WHERE contact_id = 'C0010'")
        duck.execute(f"DELETE FROM {mart} WHERE contact_id IN ('C0050', 'C0051')")
        duck.execute(f"UPDATE {mart} SET email = NULL WHERE contact_id = 'C0020'")
    assert on_postgres == _fingerprint(same_rows, destination)
    assert on_postgres.rows == 98
    assert counts.null_required == {"email": 1}
    found = violations(counts, destination)
    assert any("5 rows would be changed, more than max_changed_rows=3" in f for f in found)
