"""Helpers for the Hightouch/CRM stand-in tests: marts written into the sandbox's warehouse file,
runs awaited over HTTP, and the JSON a CRM should hold for a mart row.

The marts have the columns and types of the dbt project's marts (see destinations.yaml), filled
with generated rows, so these tests do not need a dbt build.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx

from activation.lib.destinations import Destination, load_destinations
from activation.lib.environment import SANDBOX_HIGHTOUCH_PREFIX
from activation.sandbox.launcher import SandboxProcess, start_sandbox

API = SANDBOX_HIGHTOUCH_PREFIX
TERMINAL = {"success", "warning", "failed", "cancelled", "interrupted"}

# The select list of each mart over `range(n) AS t(i)`; ids sort in row order (zero-padded).
_MART_SQL = {
    "mart_salesforce_accounts": """
        'A' || lpad(i::VARCHAR, 6, '0') AS account_id,
               'Account ' || i AS account_name,
               'account' || i || '.example.com' AS domain,
               ['software', 'retail', 'finance'][i % 3 + 1] AS industry,
               (10 + i)::INTEGER AS employee_count,
               (i % 7)::INTEGER AS active_customer_count,
               (i * 12.5)::DECIMAL(12, 2) AS total_mrr_usd""",
    "mart_salesforce_contacts": """
        'C' || lpad(i::VARCHAR, 7, '0') AS contact_id,
               'A' || lpad((i // 10)::VARCHAR, 6, '0') AS account_id,
               'person.' || i || '@example.com' AS email,
               'First' || i AS first_name,
               'Last' || i AS last_name,
               'lead' AS lifecycle_stage""",
    "mart_hubspot_contacts": """
        'C' || lpad(i::VARCHAR, 7, '0') AS contact_id,
               'person.' || i || '@example.com' AS email,
               'First' || i AS first_name,
               'Last' || i AS last_name,
               ['lead', 'customer'][i % 2 + 1] AS lifecycle_stage,
               ['US', 'GB', 'DE'][i % 3 + 1] AS country""",
    "mart_iterable_users": """
        'C' || lpad(i::VARCHAR, 7, '0') AS user_id,
               'person.' || i || '@example.com' AS email,
               ['free', 'pro'][i % 2 + 1] AS plan,
               'active' AS subscription_status,
               (i * 1.25)::DECIMAL(12, 2) AS mrr_usd,
               DATE '2026-01-01' + (i % 300)::INTEGER AS signup_date""",
    "mart_braze_users": """
        'C' || lpad(i::VARCHAR, 7, '0') AS external_id,
               'person.' || i || '@example.com' AS email,
               'First' || i AS first_name,
               ['US', 'FR'][i % 2 + 1] AS country,
               (i % 40)::INTEGER AS login_count,
               CASE WHEN i % 5 <> 0
                    THEN TIMESTAMP '2026-01-01 08:00:00' + to_seconds(i * 61)
               END AS last_event_at""",
}


def running_sandbox(folder: Path, *args: str) -> Iterator[SandboxProcess]:
    """A sandbox for a whole test module (starting one per test costs ~0.8 s each)."""
    process = start_sandbox(folder / "data", "--phase-seconds", "0.05", *args)
    try:
        yield process
    finally:
        process.stop()


def reset(sandbox: SandboxProcess) -> SandboxProcess:
    """Back to a clean state: no runs, trigger counts, snapshots or CRM records."""
    with sandbox.client() as http:
        http.post("/sandbox/reset").raise_for_status()
    return sandbox


def destination(key: str) -> Destination:
    return next(d for d in load_destinations() if d.key == key)


def warehouse(data_dir: Path) -> Path:
    return data_dir / "warehouse.duckdb"


def build_mart(data_dir: Path, mart: str, rows: int) -> None:
    """(Re)create `marts.<mart>` with `rows` generated rows."""
    execute(
        data_dir,
        "CREATE SCHEMA IF NOT EXISTS marts",
        f"CREATE OR REPLACE TABLE marts.{mart} AS "
        f"SELECT {_MART_SQL[mart]} FROM range({rows}) AS t(i) ORDER BY 1",
    )


def execute(data_dir: Path, *statements: str) -> None:
    """Run SQL on the warehouse through a short-lived connection (the sandbox reads it too)."""
    with duckdb.connect(str(warehouse(data_dir))) as connection:
        for statement in statements:
            connection.execute(statement)


def mart_records(data_dir: Path, d: Destination) -> dict[str, dict[str, Any]]:
    """What the CRM should hold for this mart: record id -> mapped fields as JSON values."""
    columns = ", ".join([d.primary_key, *d.mapped_columns])
    with duckdb.connect(str(warehouse(data_dir)), read_only=True) as connection:
        rows = connection.execute(f"SELECT {columns} FROM marts.{d.mart}").fetchall()
    return {
        str(row[0]): {c: _as_json(v) for c, v in zip(d.mapped_columns, row[1:], strict=True)}
        for row in rows
    }


def _as_json(value: Any) -> Any:
    """Numbers stay numbers, dates and timestamps become ISO 8601 strings."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, date):
        return value.strftime("%Y-%m-%d")
    return value


def trigger(client: httpx.Client, sync_id: str, **body: bool) -> str:
    response = client.post(f"{API}/syncs/{sync_id}/trigger", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def get_run(client: httpx.Client, sync_id: str, run_id: str) -> dict[str, Any]:
    response = client.get(f"{API}/syncs/{sync_id}/runs", params={"runId": run_id})
    assert response.status_code == 200, response.text
    (run,) = response.json()["data"]
    return run


def wait_for_run(
    client: httpx.Client, sync_id: str, run_id: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = get_run(client, sync_id, run_id)
        if run["status"] in TERMINAL:
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} of sync {sync_id} did not finish in {timeout}s: {run}")


def sync_once(client: httpx.Client, sync_id: str, **body: bool) -> dict[str, Any]:
    return wait_for_run(client, sync_id, trigger(client, sync_id, **body))


def counts(run: dict[str, Any], field: str) -> tuple[int, int, int]:
    """(added, changed, removed) of plannedRows / successfulRows / failedRows."""
    value = run[field]
    return value["addedCount"], value["changedCount"], value["removedCount"]


def crm_calls(client: httpx.Client, destination_type: str) -> list[dict[str, Any]]:
    response = client.get(f"/sandbox/destinations/{destination_type}/calls")
    assert response.status_code == 200, response.text
    return response.json()["calls"]
