"""PostgreSQL as the warehouse and as Dagster's storage, against a real PostgreSQL 15 server.

0. The sandbox's PostgreSQL warehouse on its own: missing settings are named, and a mart copied
   into the sandbox store keeps its types, its NULLs and its empty strings.
1. The whole chain with `ACTIVATION_DBT_TARGET=postgres`: the Airbyte stand-in loads raw tables
   into PostgreSQL, dbt builds the marts there, the Hightouch stand-in reads them and delivers to
   the CRM stand-ins; a bad-data landing fails the blocking tests and nothing is triggered. The
   marts equal, row for row, what dbt builds on DuckDB from the same landing.
2. The instance of deploy/dagster.yaml (dagster-postgres storage, queued runs, pools, run
   monitoring, run retries): runs, event logs, sensor cursors and pool limits written by one
   process are read back by another.

The dbt target is chosen when `activation.core.dbt_project` is imported, as in a deployment, so the
code location runs in a child process with the PostgreSQL environment (this file's `__main__`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from activation.lib.destinations import load_destinations
from activation.lib.paths import DBT_PROJECT_DIR, PROJECT_ROOT
from activation.lib.warehouse import POSTGRES_VARIABLES
from activation.sandbox.context import SandboxStore
from activation.sandbox.launcher import SandboxProcess
from activation.sandbox.warehouse import (
    MartUnavailableError,
    WarehouseSettingError,
    open_warehouse,
)
from activation.tooling.demo import run_chain, sandbox_environment
from tests.support import postgres_server as postgres_server_module
from tests.support.child_process import CHILD_TIMEOUT_SECONDS, last_json, run_python
from tests.support.postgres_server import (
    PostgresServer,
    PostgresUnavailableError,
    find_server_binaries,
)

TOKEN = "pg-chain-token-8c41d0e7"
ROWS = 300
DAGSTER_YAML = PROJECT_ROOT / "deploy" / "dagster.yaml"


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m tests.integration.test_postgres ARGS` (or another module) from the root."""
    return run_python(*args, env={**os.environ, **(env or {})})


# -- the sandbox's PostgreSQL warehouse ---------------------------------------------------------


def test_missing_server_binaries_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_server_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres_server_module.glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresUnavailableError, match="apt-get install postgresql"):
        find_server_binaries()


def test_postgres_target_without_its_variables_names_each_missing_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in POSTGRES_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACTIVATION_PG_HOST", "db.example.com")
    with pytest.raises(WarehouseSettingError) as raised:
        open_warehouse("postgres", tmp_path / "warehouse.duckdb")
    message = str(raised.value)
    assert "ACTIVATION_PG_USER, ACTIVATION_PG_PASSWORD, ACTIVATION_PG_DATABASE" in message
    assert "ACTIVATION_PG_HOST" not in message
    with pytest.raises(WarehouseSettingError, match="ACTIVATION_DBT_TARGET='snowflake'"):
        open_warehouse("snowflake", tmp_path / "warehouse.duckdb")


def test_mart_copy_keeps_types_nulls_and_empty_strings(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database = postgres_server.create_database("activation_copy")
    for name, value in postgres_server.warehouse_environment(database).items():
        monkeypatch.setenv(name, value)
    connection = postgres_server.connect(database)
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "CREATE SCHEMA marts; CREATE TABLE marts.mart_people (person_id integer, "
            "name text, note varchar(20), amount numeric(12,2), born date, seen_at timestamp, "
            "active boolean, visits bigint); INSERT INTO marts.mart_people VALUES "
            "(7, 'Ada, \"the\" first', '', 12.50, '1990-02-03', '2025-01-01 10:11:12', true, 3),"
            "(8, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        )
    connection.close()
    warehouse = open_warehouse("postgres", tmp_path / "unused.duckdb")
    store = SandboxStore(tmp_path / "store.duckdb")
    try:
        columns = ("name", "note", "amount", "born", "seen_at", "active", "visits")
        copied = warehouse.copy_mart(
            store, "mart_people", key="person_id", columns=columns, into="current"
        )
        with store.cursor() as cursor:
            rows = cursor.execute("SELECT * FROM current ORDER BY person_id").fetchall()
            types = [row[1] for row in cursor.execute("DESCRIBE current").fetchall()]
        with pytest.raises(MartUnavailableError, match="no column email"):
            warehouse.copy_mart(store, "mart_people", key="person_id", columns=["email"], into="x")
        with pytest.raises(MartUnavailableError, match="marts.mart_nobody is not in"):
            warehouse.copy_mart(store, "mart_nobody", key="id", columns=["a"], into="x")
    finally:
        store.close()
    assert copied == 2
    assert types == [
        "VARCHAR", "VARCHAR", "VARCHAR", "DECIMAL(12,2)", "DATE", "TIMESTAMP", "BOOLEAN", "BIGINT",
    ]  # fmt: skip
    assert rows == [
        (
            "7", 'Ada, "the" first', "", Decimal("12.50"), date(1990, 2, 3),
            datetime(2025, 1, 1, 10, 11, 12), True, 3,
        ),
        ("8", None, None, None, None, None, None, None),
    ]  # fmt: skip


# -- 1. the chain on a PostgreSQL warehouse --------------------------------------------------------


@pytest.fixture(scope="module")
def pg_warehouse(postgres_server: PostgresServer) -> dict[str, str]:
    """A fresh warehouse database and the environment that selects it."""
    database = postgres_server.create_database("activation_warehouse")
    return {**postgres_server.warehouse_environment(database), "ACTIVATION_DBT_TARGET": "postgres"}


@pytest.fixture(scope="module")
def pg_sandbox(
    pg_warehouse: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxProcess]:
    folder = tmp_path_factory.mktemp("pg_chain") / "data"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**pg_warehouse, "HIGHTOUCH_API_TOKEN": TOKEN}.items():
            patch.setenv(name, value)
        with sandbox_environment(folder, "--phase-seconds", "0.05", "--rows", str(ROWS)) as box:
            # The manifest is prepared for the postgres target, as an image build would.
            _child("-m", "activation.tooling.cli", "prepare")
            _child("-m", "activation.tooling.cli", "refresh")
            yield box


def _chain() -> dict[str, Any]:
    """One `activate` run in a child process; the sandbox fixture's environment selects it all."""
    return last_json(_child("-m", "tests.integration.test_postgres", "chain"))


def _query(server: PostgresServer, database: str, statement: str) -> list[tuple]:
    connection = server.connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def good_run(pg_sandbox: SandboxProcess, tmp_path_factory: pytest.TempPathFactory) -> dict:
    result = _chain()
    # Keep this landing's raw files: the DuckDB comparison builds from exactly these.
    landing = tmp_path_factory.mktemp("landing")
    shutil.copytree(pg_sandbox.data_dir / "raw", landing / "raw")
    result["landing"] = str(landing)
    return result


def test_good_run_delivers_every_mart_read_from_postgres(
    good_run: dict, pg_sandbox: SandboxProcess, postgres_server: PostgresServer, pg_warehouse: dict
) -> None:
    database = pg_warehouse["ACTIVATION_PG_DATABASE"]
    assert good_run["success"], good_run["failed_steps"]
    assert good_run["failed_checks"] == []
    assert good_run["passed_checks"] > 20
    # Raw data was landed as real tables, and no DuckDB warehouse was ever created.
    assert _query(postgres_server, database, "select count(*) from raw.customers") == [(ROWS,)]
    assert not (pg_sandbox.data_dir / "warehouse.duckdb").exists()
    for destination in load_destinations():
        [(rows,)] = _query(
            postgres_server, database, f"select count(*) from marts.{destination.mart}"
        )
        metadata = good_run["syncs"][destination.key]
        assert rows > 0
        assert metadata["planned_added"] == metadata["successful_added"] == rows
        records = pg_sandbox.records(destination.destination_type, destination.object)
        assert len(records) == rows
    assert pg_sandbox.trigger_counts() == {d.sync_id: 1 for d in load_destinations()}


def test_delivered_values_are_the_postgres_mart_values(
    good_run: dict, pg_sandbox: SandboxProcess, postgres_server: PostgresServer, pg_warehouse: dict
) -> None:
    contacts = next(d for d in load_destinations() if d.key == "salesforce_contacts")
    [(contact_id, email, first_name)] = _query(
        postgres_server,
        pg_warehouse["ACTIVATION_PG_DATABASE"],
        "select contact_id, email, first_name from marts.mart_salesforce_contacts "
        "order by contact_id limit 1",
    )
    record = pg_sandbox.records(contacts.destination_type, contacts.object)[contact_id]
    assert (record["email"], record["first_name"]) == (email, first_name)


def test_postgres_marts_equal_the_duckdb_marts_of_the_same_landing(
    good_run: dict,
    postgres_server: PostgresServer,
    pg_warehouse: dict,
    tmp_path: Path,
) -> None:
    """The models are portable: both adapters build identical marts from identical raw rows."""
    landing = Path(good_run["landing"])
    env = {
        "ACTIVATION_DATA_DIR": str(landing),
        "ACTIVATION_DBT_TARGET": "duckdb",
        "DO_NOT_TRACK": "1",
    }
    dbt = Path(sys.executable).parent / "dbt"
    subprocess.run(
        [
            str(dbt),
            "run",
            "--quiet",
            "--target",
            "duckdb",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(tmp_path / "target"),
            "--log-path",
            str(tmp_path / "logs"),
        ],  # fmt: skip
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=CHILD_TIMEOUT_SECONDS,
    )
    database = pg_warehouse["ACTIVATION_PG_DATABASE"]
    with duckdb.connect(str(landing / "warehouse.duckdb"), read_only=True) as duck:
        for destination in load_destinations():
            order = f"order by {destination.primary_key}"
            from_duckdb = duck.execute(f"select * from marts.{destination.mart} {order}").fetchall()
            from_postgres = _query(
                postgres_server, database, f"select * from marts.{destination.mart} {order}"
            )
            assert from_postgres == from_duckdb, destination.mart


def test_bad_rows_land_in_postgres_fail_the_blocking_checks_and_trigger_nothing(
    good_run: dict, pg_sandbox: SandboxProcess, postgres_server: PostgresServer, pg_warehouse: dict
) -> None:
    database = pg_warehouse["ACTIVATION_PG_DATABASE"]
    destinations = load_destinations()
    before = {d.key: pg_sandbox.records(d.destination_type, d.object) for d in destinations}
    marts_before = {
        d.mart: _query(postgres_server, database, f"select count(*) from marts.{d.mart}")
        for d in destinations
    }
    triggers_before = pg_sandbox.trigger_counts()

    pg_sandbox.set_scenario(bad_rows=True)
    try:
        bad = _chain()
    finally:
        pg_sandbox.set_scenario()

    assert not bad["success"]
    assert bad["syncs"] == {}
    assert any(
        check.startswith("staging/stg_customers:unique_stg_customers_customer_id")
        for check in bad["failed_checks"]
    ), bad["failed_checks"]
    assert any("valid_email" in check for check in bad["failed_checks"]), bad["failed_checks"]
    # The bad rows did reach the raw table; the marts kept the last good build.
    [(raw_rows,)] = _query(postgres_server, database, "select count(*) from raw.customers")
    assert raw_rows > ROWS
    for mart, count in marts_before.items():
        assert _query(postgres_server, database, f"select count(*) from marts.{mart}") == count
    assert pg_sandbox.trigger_counts() == triggers_before
    after = {d.key: pg_sandbox.records(d.destination_type, d.object) for d in destinations}
    assert after == before


def test_no_secret_reaches_the_event_log(good_run: dict, pg_warehouse: dict) -> None:
    assert good_run["event_log_entries"] > 0
    assert good_run["secrets_in_event_log"] == 0
    assert pg_warehouse["ACTIVATION_PG_PASSWORD"] not in json.dumps(good_run)


# -- 2. Dagster's own storage in PostgreSQL --------------------------------------------------------

STORAGE_DEFS = textwrap.dedent(
    """
    import dagster as dg

    @dg.asset(pool="hightouch_salesforce_accounts", tags={"destination": "salesforce"})
    def salesforce_accounts_sync() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    sync_salesforce = dg.define_asset_job("sync_salesforce", selection=[salesforce_accounts_sync])

    @dg.sensor(job=sync_salesforce, minimum_interval_seconds=30)
    def heartbeat(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason("nothing new")

    defs = dg.Definitions(
        assets=[salesforce_accounts_sync], jobs=[sync_salesforce], sensors=[heartbeat]
    )
    """
)


@pytest.fixture
def postgres_home(postgres_server: PostgresServer, tmp_path: Path) -> dict[str, str]:
    """A Dagster home holding deploy/dagster.yaml, and the environment it reads."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    database = postgres_server.create_database("dagster_storage")
    return {"DAGSTER_HOME": str(home), **postgres_server.dagster_environment(database)}


def test_deploy_template_builds_the_production_instance(
    postgres_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in postgres_home.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.from_config(postgres_home["DAGSTER_HOME"])
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 10
        assert queue.tag_concurrency_limits == [
            {"key": "destination", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        # A queued run (a signal's sync) waits at most a second for the daemon.
        assert instance.run_coordinator.dequeue_interval_seconds == 1  # type: ignore[attr-defined]
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds == 7200
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
    finally:
        instance.dispose()


FORKSERVER_PROBE = """
import json, sys
import activation.tooling.forkserver_preload  # noqa: F401  (what the forkserver imports)
print(json.dumps({"postgres_storage": "dagster_postgres.run_storage.run_storage" in sys.modules}))
sys.stdout.flush()
sys.stdin.read()  # alive, as a forkserver is, until the test has looked at the server
"""


def test_the_forkserver_warm_up_leaves_no_postgres_connection_open(
    postgres_home: dict[str, str], postgres_server: PostgresServer
) -> None:
    """The forkserver opens the instance once so step processes skip importing its storage
    (activation/tooling/forkserver_preload.py). Every step process is forked from it: a
    connection it kept would be shared by all of them."""
    probe = subprocess.Popen(
        [sys.executable, "-c", FORKSERVER_PROBE],
        env={**os.environ, **postgres_home, "DO_NOT_TRACK": "1"},
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert probe.stdout is not None
        imported = json.loads(probe.stdout.readline())
        database = postgres_home["DAGSTER_PG_DB"]
        connection = postgres_server.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid()",
                    (database,),
                )
                others = cursor.fetchone()[0]
                cursor.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'"
                )
                runs_tables = cursor.fetchone()[0]
        finally:
            connection.close()
    finally:
        probe.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    assert imported["postgres_storage"] is True
    assert runs_tables == 1  # the warm-up did open the instance (Dagster created its tables)
    assert others == 0  # ... and closed every connection before any step is forked


def test_runs_event_logs_and_sensor_cursors_survive_a_process_restart(
    postgres_home: dict[str, str], tmp_path: Path
) -> None:
    defs_file = tmp_path / "storage_defs.py"
    defs_file.write_text(STORAGE_DEFS)
    env = postgres_home
    # Process 1: a run executed in process (run + event log).
    written = last_json(
        _child("-m", "tests.integration.test_postgres", "storage-write", str(defs_file), env=env)
    )
    # Processes 2-4, through Dagster's own CLI: a sensor cursor, a queued run, a pool limit.
    location = ["-f", str(defs_file)]
    outputs = [
        _child("-m", "dagster", "sensor", "cursor", "heartbeat", "--set", "cursor-42", *location,
               env=env),
        _child("-m", "dagster", "job", "launch", "-j", "sync_salesforce", *location,
               "--tags", json.dumps({"destination": "salesforce"}), env=env),
        _child("-m", "dagster", "instance", "concurrency", "set",
               "hightouch_salesforce_accounts", "1", env=env),
    ]  # fmt: skip
    # Process 5, started after every writer has exited: everything is still there.
    read = last_json(_child("-m", "tests.integration.test_postgres", "storage-read", env=env))

    runs = {run["run_id"]: run for run in read["runs"]}
    executed = runs[written["run_id"]]
    assert executed["status"] == "SUCCESS"
    assert executed["tags"]["destination"] == "salesforce"
    assert dg.DagsterEventType.ASSET_MATERIALIZATION.value in executed["event_types"]
    assert dg.DagsterEventType.RUN_SUCCESS.value in executed["event_types"]
    # The launched run waits in the queue (no daemon here), with its destination tag.
    queued = [run for run in runs.values() if run["run_id"] != written["run_id"]]
    assert [(run["status"], run["tags"].get("destination")) for run in queued] == [
        ("QUEUED", "salesforce")
    ]
    assert read["sensor_cursors"] == {"heartbeat": "cursor-42"}
    assert read["pool_limits"] == {"hightouch_salesforce_accounts": 1}
    password = env["DAGSTER_PG_PASSWORD"]
    for output in outputs:
        assert password not in output.stdout + output.stderr


# -- the child processes ---------------------------------------------------------------------------


def _chain_child() -> None:
    """Run the `activate` job once on the environment's sandbox and warehouse; print JSON."""
    secrets = [os.environ["HIGHTOUCH_API_TOKEN"], os.environ["ACTIVATION_PG_PASSWORD"]]
    with dg.instance_for_test() as instance:
        result = asdict(run_chain(instance, console_log_level="WARNING"))
        entries = [entry for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
        text = [repr(entry.dagster_event) + (entry.user_message or "") for entry in entries]
        text += [repr(run.run_config) + repr(run.tags) for run in instance.get_runs()]
        result["event_log_entries"] = len(entries)
        result["secrets_in_event_log"] = sum(secret in t for t in text for secret in secrets)
    print(json.dumps(result, default=str))


def _load_defs(defs_file: str) -> dg.Definitions:
    namespace: dict[str, Any] = {}
    exec(compile(Path(defs_file).read_text(), defs_file, "exec"), namespace)
    return namespace["defs"]


def _storage_write_child(defs_file: str) -> None:
    instance = dg.DagsterInstance.get()
    job = _load_defs(defs_file).resolve_job_def("sync_salesforce")
    result = job.execute_in_process(instance=instance, tags={"destination": "salesforce"})
    print(json.dumps({"run_id": result.run_id}))


def _storage_read_child() -> None:
    instance = dg.DagsterInstance.get()
    runs = [
        {
            "run_id": run.run_id,
            "status": run.status.value,
            "tags": dict(run.tags),
            "event_types": sorted(
                {
                    e.dagster_event.event_type_value
                    for e in instance.all_logs(run.run_id)
                    if e.dagster_event
                }
            ),
        }  # fmt: skip
        for run in instance.get_runs()
    ]
    cursors = {
        state.instigator_name: state.instigator_data.cursor
        for state in instance.all_instigator_state()
        if state.instigator_data is not None
    }
    pools = {
        pool: instance.event_log_storage.get_concurrency_info(pool).slot_count
        for pool in instance.event_log_storage.get_concurrency_keys()
    }
    print(json.dumps({"runs": runs, "sensor_cursors": cursors, "pool_limits": pools}))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {
        "chain": _chain_child,
        "storage-write": _storage_write_child,
        "storage-read": _storage_read_child,
    }[command](*arguments)
