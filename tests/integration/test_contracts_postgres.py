"""The schema-contract scenario of test_contracts.py on a PostgreSQL warehouse (a real server).

The column types come from PostgreSQL's information_schema (`character varying`, `numeric(12,2)`,
`timestamp without time zone`...) and read as the same canonical types as on DuckDB, so the
recorded types and the refusals say the same thing on both engines. As in test_postgres.py, the
dbt target is chosen when the code location is imported, so it runs in a child process with the
PostgreSQL environment (this file's `__main__`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from activation.lib.destinations import load_destinations
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import sandbox_environment
from tests.support.child_process import last_json, run_python
from tests.support.contract_support import BRAZE, CONTACTS, RENAMED, RETYPED
from tests.support.postgres_server import PostgresServer

TOKEN = "pg-contract-token-5b2e91"


def _child(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python(*args, env={**os.environ, "DO_NOT_TRACK": "1"})


@pytest.fixture(scope="module")
def pg_sandbox(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxProcess]:
    database = postgres_server.create_database("activation_contracts")
    env = {
        **postgres_server.warehouse_environment(database),
        "ACTIVATION_DBT_TARGET": "postgres",
        "HIGHTOUCH_API_TOKEN": TOKEN,
        "ACTIVATION_SYNC_RETRY_DELAY_SECONDS": "0",
    }
    folder = tmp_path_factory.mktemp("pg_contracts") / "data"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with sandbox_environment(folder, "--phase-seconds", "0.05", "--rows", "300") as box:
            _child("-m", "activation.tooling.cli", "prepare")
            _child("-m", "activation.tooling.cli", "refresh")
            yield box


@pytest.fixture(scope="module")
def scenario(pg_sandbox: SandboxProcess) -> dict[str, Any]:
    result = _child("-m", "tests.integration.test_contracts_postgres", "scenario")
    return last_json(result)


def test_the_contract_holds_on_postgres_and_records_the_warehouse_types(
    scenario: dict[str, Any],
) -> None:
    assert scenario["good"]["success"], scenario["good"]
    assert scenario["good"]["contracts"] == {d.key: True for d in load_destinations()}
    types = scenario["good"]["types"]
    assert types[BRAZE]["login_count"] == "integer"
    assert types[BRAZE]["last_event_at"] == "timestamp"
    assert types[BRAZE]["email"] == "varchar"
    assert types["iterable_users"]["mrr_usd"] == "decimal(12,2)"
    assert types["iterable_users"]["signup_date"] == "date"


def test_a_renamed_or_retyped_column_holds_the_sync_back_on_postgres(
    scenario: dict[str, Any],
) -> None:
    launch = scenario["changed"]
    assert launch["success"]
    assert launch["materialized"] == []
    contacts = launch["checks"][f"{CONTACTS}:schema_contract"]
    assert not contacts["passed"] and RENAMED in contacts["description"]
    braze = launch["checks"][f"{BRAZE}:schema_contract"]
    retyped = RETYPED.format(run_id=scenario["good"]["run_id"])
    assert not braze["passed"] and retyped in braze["description"]
    assert scenario["triggers_after"] == scenario["triggers_before"]


# -- the child process ---------------------------------------------------------------------------


def _scenario_child() -> None:
    """The good run, then another build renaming and retyping a column, then the two syncs
    launched by hand; prints JSON."""
    from activation.core.contract import COLUMN_TYPES_METADATA
    from activation.tooling.demo import run_chain
    from tests.support.contract_support import (
        changed_project,
        contract_evaluations,
        launch_syncs,
        rebuild,
        trigger_counts,
    )

    with dg.instance_for_test() as instance, tempfile.TemporaryDirectory() as folder:
        good = run_chain(instance, console_log_level="WARNING")
        types = {
            key: metadata.get(COLUMN_TYPES_METADATA, {}).get("columns", {})  # type: ignore[union-attr]
            for key, metadata in good.syncs.items()
        }
        rebuild(changed_project(Path(folder)), "mart_salesforce_contacts", "mart_braze_users")
        before = trigger_counts()
        launch = launch_syncs(instance, CONTACTS, BRAZE)
        output = {
            "good": {
                "success": good.success,
                "run_id": good.run_id,
                "failed_steps": good.failed_steps,
                "contracts": contract_evaluations(instance, good.run_id),
                "types": types,
            },
            "changed": launch.as_json(),
            "triggers_before": before,
            "triggers_after": trigger_counts(),
        }
    print(json.dumps(output, default=str))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"scenario": _scenario_child}[command](*arguments)
