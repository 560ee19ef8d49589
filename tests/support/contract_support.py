"""Helpers of the schema-contract tests (DuckDB in-process, PostgreSQL in a child process).

A mart's schema changes the way it does in a real deployment: another build of the dbt project
(a later commit, deployed by its own job) renames or retypes a column, with its contract updated
so dbt itself accepts it, while this code location still declares the old column. Here that
build is a real `dbt run` of a copy of the project with the change made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

from activation.lib.destinations import load_destinations, sync_asset_key_for
from activation.lib.environment import SANDBOX_URL_VAR
from activation.lib.paths import DBT_PROJECT_DIR, warehouse_target

CONTACTS = "salesforce_contacts"  # `email` renamed to `email_address`
BRAZE = "braze_users"  # `login_count` retyped integer -> bigint
ACCOUNTS = "salesforce_accounts"  # a mapping added in Hightouch only: refused (default policy)
ITERABLE = "iterable_users"  # a mapping added in Hightouch only: warned (mapping_drift: warn)
CONTROL = "/sandbox/hightouch/syncs/{}/mappings"

RENAMED = "column email is missing from marts.mart_salesforce_contacts (it feeds Contact.Email)"
RETYPED = (
    "column login_count changed type from integer to bigint since the last successful sync "
    "(run {run_id}) (it feeds users.login_count)"
)

EXPECTED_LINEAGE = """\
salesforce_contacts.Email: Salesforce Contact.Email (Hightouch sync 102)
  <- marts/mart_salesforce_contacts.email (varchar)
    <- staging/stg_customers.email
      <- raw/customers.email (source)

salesforce_accounts.Name: Salesforce Account.Name (Hightouch sync 101)
  <- marts/mart_salesforce_accounts.account_name (varchar)
    <- staging/stg_accounts.account_name
      <- raw/accounts.name (source)
"""


def _replace_once(path: Path, old: str, new: str, after: str = "") -> None:
    text = path.read_text()
    start = text.index(after) if after else 0
    at = text.index(old, start)
    path.write_text(text[:at] + new + text[at + len(old) :])


def changed_project(folder: Path) -> Path:
    """A copy of the dbt project in which `mart_salesforce_contacts.email` is renamed
    `email_address` and `mart_braze_users.login_count` is a bigint, contracts updated."""
    project = folder / "dbt_project_next"
    shutil.copytree(
        DBT_PROJECT_DIR,
        project,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", ".user.yml"),
    )
    models = project / "models" / "marts"
    _replace_once(
        models / "mart_salesforce_contacts.sql", "    email,", "    email as email_address,"
    )
    _replace_once(
        models / "_marts.yml",
        "      - name: email\n",
        "      - name: email_address\n",
        after="  - name: mart_salesforce_contacts",
    )
    _replace_once(
        models / "mart_braze_users.sql",
        "cast(coalesce(activity.login_count, 0) as integer)",
        "cast(coalesce(activity.login_count, 0) as bigint)",
    )
    _replace_once(
        models / "_marts.yml",
        "data_type: integer",
        "data_type: bigint",
        after="      - name: login_count",
    )
    return project


def rebuild(project: Path, *models: str) -> None:
    """`dbt run` of `models` from `project` against the warehouse in force."""
    dbt = Path(sys.executable).parent / "dbt"
    result = subprocess.run(
        [
            *(str(dbt), "run", "--no-use-colors", "--select", *models),
            *("--target", warehouse_target()),
            *("--project-dir", str(project), "--profiles-dir", str(project)),
            *("--target-path", str(project / "target"), "--log-path", str(project / "logs")),
        ],
        env={**os.environ, "DO_NOT_TRACK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@dataclass
class Launch:
    """What a hand launch of some sync assets did (plain values: a child process prints it)."""

    run_id: str
    success: bool
    materialized: list[str]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`<destination>:<check>` -> passed, severity, description, metadata values."""

    def check(self, destination: str, name: str = "schema_contract") -> dict[str, Any]:
        return self.checks[f"{destination}:{name}"]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def launch_syncs(instance: dg.DagsterInstance, *destinations: str) -> Launch:
    """Launch only these sync assets (as a hand launch from the UI does)."""
    from activation.definitions import build_definitions

    keys = {sync_asset_key_for(d): d for d in destinations}
    result = (
        build_definitions()
        .resolve_implicit_global_asset_job_def()
        .execute_in_process(instance=instance, asset_selection=list(keys), raise_on_error=False)
    )
    launch = Launch(
        run_id=result.run_id,
        success=result.success,
        materialized=sorted(
            keys[e.asset_key] for e in result.get_asset_materialization_events() if e.asset_key
        ),
    )
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.asset_key in keys:
            launch.checks[f"{keys[evaluation.asset_key]}:{evaluation.check_name}"] = {
                "passed": evaluation.passed,
                "severity": evaluation.severity.value,
                "description": evaluation.description or "",
                "metadata": {k: str(v.value) for k, v in evaluation.metadata.items()},
            }
    return launch


def trigger_counts() -> dict[str, int]:
    """Triggers the sandbox in force (ACTIVATION_SANDBOX_URL) received, per sync id."""
    response = httpx.get(f"{os.environ[SANDBOX_URL_VAR]}/sandbox/hightouch/triggers", timeout=30)
    response.raise_for_status()
    return {str(k): int(v) for k, v in response.json().items()}


def contract_evaluations(instance: dg.DagsterInstance, run_id: str) -> dict[str, bool]:
    """Destination -> whether its `schema_contract` passed in the run."""
    keys = {sync_asset_key_for(d.key): d.key for d in load_destinations()}
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return {
        keys[e.asset_check_evaluation.asset_key]: e.asset_check_evaluation.passed
        for e in entries
        if e.asset_check_evaluation
        and e.asset_check_evaluation.check_name == "schema_contract"
        and e.asset_check_evaluation.asset_key in keys
    }
