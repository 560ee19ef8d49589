"""Runs of the Hightouch stand-in: phases, the diff against the last run, delivery to the CRMs,
rejected rows and their retry, queueing, and failures that must send nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime

import duckdb
import pytest

from activation.sandbox.launcher import SandboxProcess
from tests.support.sandbox_marts import (
    build_mart,
    counts,
    crm_calls,
    destination,
    execute,
    get_run,
    mart_records,
    reset,
    running_sandbox,
    sync_once,
    trigger,
    wait_for_run,
    warehouse,
)

HUBSPOT = destination("hubspot_contacts")  # sync 201, batches of 100, maps email
ACCOUNTS = destination("salesforce_accounts")  # sync 101, batches of 5,000
BRAZE = destination("braze_users")  # sync 401, batches of 75, a nullable timestamp


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    yield from running_sandbox(tmp_path_factory.mktemp("hightouch_runs"))


@pytest.fixture
def sandbox(module_sandbox: SandboxProcess) -> SandboxProcess:
    """This module's sandbox, reset before each test (the marts are rebuilt by each test)."""
    return reset(module_sandbox)


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def test_first_run_adds_every_row_through_the_phases(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 250)
    seen: list[str] = []
    with sandbox.client() as http:
        run_id = trigger(http, "201")
        while not seen or seen[-1] not in {"success", "warning", "failed"}:
            status = get_run(http, "201", run_id)["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            time.sleep(0.005)
        run = get_run(http, "201", run_id)
        calls = crm_calls(http, "hubspot")
    phases = ["queued", "querying", "processing", "reporting", "success"]
    assert seen == [p for p in phases if p in seen] and seen[-1] == "success"
    assert {"querying", "processing", "reporting"} & set(seen), seen
    assert counts(run, "plannedRows") == (250, 0, 0)
    assert counts(run, "successfulRows") == (250, 0, 0)
    assert counts(run, "failedRows") == (0, 0, 0)
    assert (run["querySize"], run["completionRatio"], run["error"]) == (250, 1.0, None)
    assert run["createdAt"] <= run["startedAt"] < run["finishedAt"]
    # querying, processing and reporting each last at least --phase-seconds (0.05 s); the
    # timestamps are cut to the millisecond, so allow one on each end
    assert _seconds(run["finishedAt"]) - _seconds(run["startedAt"]) >= 3 * 0.05 - 0.002
    assert [c["batch_size"] for c in calls] == [100, 100, 50]
    assert {(c["operation"], c["object"]) for c in calls} == {("upsert", "contacts")}
    assert sandbox.records("hubspot", "contacts") == mart_records(sandbox.data_dir, HUBSPOT)


def test_an_immediate_second_run_plans_nothing(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, BRAZE.mart, 120)
    with sandbox.client() as http:
        first = sync_once(http, "401")
        second = sync_once(http, "401")
        calls = crm_calls(http, "braze")
    assert counts(first, "plannedRows") == (120, 0, 0)
    assert (second["status"], second["querySize"]) == ("success", 120)
    assert counts(second, "plannedRows") == (0, 0, 0)
    assert [c["batch_size"] for c in calls] == [75, 45]  # the second run sent nothing
    assert sandbox.records("braze", "users") == mart_records(sandbox.data_dir, BRAZE)


def test_changed_and_removed_rows_are_exactly_what_moved(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 200)
    with sandbox.client() as http:
        sync_once(http, "201")
        execute(
            sandbox.data_dir,
            "UPDATE marts.mart_hubspot_contacts SET first_name = 'Renamed' "
            "WHERE contact_id = 'C0000007'",
            # an unmapped change only: not a change for Hightouch
            "ALTER TABLE marts.mart_hubspot_contacts ADD COLUMN note VARCHAR DEFAULT 'x'",
        )
        changed = sync_once(http, "201")
        execute(
            sandbox.data_dir,
            "DELETE FROM marts.mart_hubspot_contacts WHERE contact_id = 'C0000009'",
        )
        removed = sync_once(http, "201")
        calls = crm_calls(http, "hubspot")
    assert counts(changed, "plannedRows") == (0, 1, 0)
    assert counts(changed, "successfulRows") == (0, 1, 0)
    assert counts(removed, "plannedRows") == (0, 0, 1)
    assert counts(removed, "successfulRows") == (0, 0, 1)
    assert [(c["operation"], c["batch_size"]) for c in calls[-2:]] == [("upsert", 1), ("delete", 1)]
    records = sandbox.records("hubspot", "contacts")
    assert records["C0000007"]["first_name"] == "Renamed"
    assert "C0000009" not in records
    assert records == mart_records(sandbox.data_dir, HUBSPOT)


def test_full_resync_sends_every_row_and_removes_none(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 150)
    with sandbox.client() as http:
        sync_once(http, "201")
        execute(
            sandbox.data_dir,
            "DELETE FROM marts.mart_hubspot_contacts WHERE contact_id = 'C0000001'",
        )
        resync = sync_once(http, "201", fullResync=True)
        after = sync_once(http, "201")
    assert counts(resync, "plannedRows") == (149, 0, 0)
    assert counts(resync, "successfulRows") == (149, 0, 0)
    assert "C0000001" in sandbox.records("hubspot", "contacts")  # left behind, as in Hightouch
    # A full resync runs as a first run would: the next run diffs against it only.
    assert counts(after, "plannedRows") == (0, 0, 0)


def test_reset_cdc_takes_a_new_baseline_without_sending(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 120)
    with sandbox.client() as http:
        sync_once(http, "201")
        execute(sandbox.data_dir, "UPDATE marts.mart_hubspot_contacts SET country = 'SE'")
        calls_before = len(crm_calls(http, "hubspot"))
        baseline = sync_once(http, "201", resetCDC=True)
        after = sync_once(http, "201")
        calls_after = len(crm_calls(http, "hubspot"))
    assert (baseline["status"], counts(baseline, "plannedRows")) == ("success", (0, 0, 0))
    assert counts(after, "plannedRows") == (0, 0, 0)
    assert calls_after == calls_before


def test_duplicate_primary_keys_fail_the_run_and_send_nothing(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 100)
    execute(
        sandbox.data_dir,
        "INSERT INTO marts.mart_hubspot_contacts "
        "SELECT * REPLACE ('other@example.com' AS email) FROM marts.mart_hubspot_contacts "
        "WHERE contact_id = 'C0000004'",
    )
    with sandbox.client() as http:
        run = sync_once(http, "201")
        calls = crm_calls(http, "hubspot")
    assert run["status"] == "failed"
    assert "NON_UNIQUE_PRIMARY_KEY" in run["error"] and "C0000004" in run["error"]
    assert counts(run, "successfulRows") == (0, 0, 0)
    assert calls == [] and sandbox.records("hubspot", "contacts") == {}


def test_a_missing_mart_fails_the_run_with_a_clear_error(sandbox: SandboxProcess) -> None:
    execute(sandbox.data_dir, "DROP TABLE IF EXISTS marts.mart_iterable_users")
    with sandbox.client() as http:
        run = sync_once(http, "301")
    assert run["status"] == "failed"
    assert "marts.mart_iterable_users" in run["error"] and "dbt" in run["error"]
    assert run["finishedAt"] is not None


def test_rejected_emails_end_in_warning_and_are_retried(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 200)
    bad = "contact_id IN ('C0000003', 'C0000150')"
    execute(
        sandbox.data_dir,
        f"UPDATE marts.mart_hubspot_contacts SET email = 'not-an-email' WHERE {bad}",
    )
    with sandbox.client() as http:
        first = sync_once(http, "201")
        unchanged_retry = sync_once(http, "201")
        fix = f"UPDATE marts.mart_hubspot_contacts SET email = contact_id || '@x.com' WHERE {bad}"
        execute(sandbox.data_dir, fix)
        fixed = sync_once(http, "201")
    assert first["status"] == "warning" and "INVALID_EMAIL" in first["error"]
    assert counts(first, "plannedRows") == (200, 0, 0)
    assert counts(first, "successfulRows") == (198, 0, 0)
    assert counts(first, "failedRows") == (2, 0, 0)
    # Nothing changed in the mart, yet the rejected rows are planned again; all rejected: failed.
    assert counts(unchanged_retry, "plannedRows") == (2, 0, 0)
    assert unchanged_retry["status"] == "failed" and counts(unchanged_retry, "failedRows") == (
        2,
        0,
        0,
    )
    assert (fixed["status"], counts(fixed, "successfulRows")) == ("success", (2, 0, 0))
    assert sandbox.records("hubspot", "contacts") == mart_records(sandbox.data_dir, HUBSPOT)


def test_a_rejected_change_keeps_the_old_value_until_it_goes_through(
    sandbox: SandboxProcess,
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 50)
    where = "WHERE contact_id = 'C0000010'"
    with sandbox.client() as http:
        sync_once(http, "201")
        execute(
            sandbox.data_dir,
            f"UPDATE marts.mart_hubspot_contacts SET email = 'bob@@x', first_name = 'Bob' {where}",
        )
        rejected = sync_once(http, "201")
        kept = sandbox.records("hubspot", "contacts")["C0000010"]
        execute(
            sandbox.data_dir,
            f"UPDATE marts.mart_hubspot_contacts SET email = 'bob@example.com' {where}",
        )
        retried = sync_once(http, "201")
    assert (rejected["status"], counts(rejected, "failedRows")) == ("failed", (0, 1, 0))
    assert kept["email"] == "person.10@example.com" and kept["first_name"] == "First10"
    assert counts(retried, "successfulRows") == (0, 1, 0)
    assert sandbox.records("hubspot", "contacts")["C0000010"]["email"] == "bob@example.com"


def test_a_trigger_during_a_run_queues_behind_it(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 100)
    with sandbox.client() as http:
        first_id = trigger(http, "201")
        second_id = trigger(http, "201")
        waiting = get_run(http, "201", second_id)
        first = wait_for_run(http, "201", first_id)
        second = wait_for_run(http, "201", second_id)
    assert waiting["status"] == "queued" and waiting["startedAt"] is None
    assert second["startedAt"] >= first["finishedAt"]
    assert counts(first, "plannedRows") == (100, 0, 0)
    assert counts(second, "plannedRows") == (0, 0, 0)


def test_different_syncs_run_in_parallel(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 50)
    build_mart(sandbox.data_dir, BRAZE.mart, 50)
    with sandbox.client() as http:
        hubspot_id, braze_id = trigger(http, "201"), trigger(http, "401")
        hubspot = wait_for_run(http, "201", hubspot_id)
        braze = wait_for_run(http, "401", braze_id)
    assert hubspot["status"] == braze["status"] == "success"
    assert braze["startedAt"] < hubspot["finishedAt"] and hubspot["startedAt"] < braze["finishedAt"]


def test_salesforce_takes_5000_records_per_call(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, ACCOUNTS.mart, 5_200)
    with sandbox.client() as http:
        run = sync_once(http, "101")
        calls = crm_calls(http, "salesforce")
    assert counts(run, "successfulRows") == (5_200, 0, 0)
    assert [(c["object"], c["batch_size"]) for c in calls] == [("Account", 5000), ("Account", 200)]
    assert sandbox.records("salesforce", "Account") == mart_records(sandbox.data_dir, ACCOUNTS)


def test_a_warehouse_briefly_locked_by_another_process_is_retried(
    sandbox: SandboxProcess,
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 30)
    holder = duckdb.connect(str(warehouse(sandbox.data_dir)))  # a writer, as dbt would be
    release = threading.Timer(0.6, holder.close)
    release.start()
    try:
        with sandbox.client() as http:
            run = sync_once(http, "201")
    finally:
        release.join()
    assert run["status"] == "success" and counts(run, "successfulRows") == (30, 0, 0)
