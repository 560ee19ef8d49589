"""The cross-run gate on the sandbox: real dbt on DuckDB, real Dagster runs, real HTTP.

A sync launched on its own (as by hand from the UI, a sensor or automation) must refuse when a
blocking check upstream failed in an earlier run, when the mart was materialized after its checks
ran, and when a Python (non-dbt) check on the mart failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from activation.demo import ChainResult, run_chain
from activation.gate import CheckRecord, Materialization, judge_check, latest_check_record
from activation.sandbox.launcher import SandboxProcess
from activation.transform import mart_asset_key
from tests.gate_support import chain_sandbox, launch, step_failures, sync_key

CONTACTS = "salesforce_contacts"
CONTACTS_MART = mart_asset_key("mart_salesforce_contacts")
UNIQUE_CUSTOMER_ID = "unique_stg_customers_customer_id"
MART_UNIQUE = "unique_mart_salesforce_contacts_contact_id"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with chain_sandbox(tmp_path_factory.mktemp("gate") / "data") as box:
        yield box


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_home"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def good_run(sandbox: SandboxProcess, instance: dg.DagsterInstance) -> ChainResult:
    result = run_chain(instance, console_log_level="WARNING")
    assert result.success, result.failed_steps
    return result


def _good_again(sandbox: SandboxProcess, instance: dg.DagsterInstance) -> None:
    sandbox.set_scenario()
    assert run_chain(instance, console_log_level="WARNING").success


def test_latest_check_record_is_pinned(good_run: ChainResult, instance: dg.DagsterInstance) -> None:
    """Pins the one non-public call: what the gate reads for a passed, never-run check."""
    record = latest_check_record(instance, dg.AssetCheckKey(CONTACTS_MART, MART_UNIQUE))
    assert record is not None
    assert record.status == "passed" and record.severity == "ERROR"
    latest = instance.fetch_materializations(CONTACTS_MART, limit=1).records[0]
    assert record.target_storage_id == latest.storage_id
    assert record.run_id == latest.run_id
    assert latest_check_record(instance, dg.AssetCheckKey(CONTACTS_MART, "no_such_check")) is None


def test_in_run_guard_and_python_checks_ran_and_passed(
    good_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    for name in ("guard_salesforce_contacts", "contact_emails_unique"):
        record = latest_check_record(instance, dg.AssetCheckKey(CONTACTS_MART, name))
        assert record is not None and record.status == "passed", name


def test_sync_alone_after_good_run_passes_the_gate(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    before = sandbox.trigger_counts()
    result = launch(instance, sync_key(CONTACTS))
    assert result.success, step_failures(result)
    after = sandbox.trigger_counts()
    assert after["102"] == before["102"] + 1


def test_failed_dbt_test_in_earlier_run_blocks_a_hand_launched_sync(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    sandbox.set_scenario(bad_rows=True)
    try:
        bad = run_chain(instance, console_log_level="WARNING")
    finally:
        sandbox.set_scenario()
    assert not bad.success
    bad_run_id = instance.get_run_records(limit=1)[0].dagster_run.run_id
    records_before = sandbox.records("salesforce", "Contact")
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert not result.success
    assert sandbox.trigger_counts() == triggers_before
    assert sandbox.records("salesforce", "Contact") == records_before
    [failure] = step_failures(result)
    assert failure.step == "activate__salesforce_contacts"
    check = f"staging/stg_customers:{UNIQUE_CUSTOMER_ID}"
    assert f"check {check} failed" in failure.description
    assert f"in run {bad_run_id}" in failure.description
    refused = {r["check"]: r for r in failure.metadata["refused_checks"]}  # type: ignore[union-attr]
    assert refused[check]["run_id"] == bad_run_id
    assert refused[check]["result"].startswith("failed")
    # The mart was not rebuilt in the bad run: its checks' last results still judge its data.
    assert not any(name.startswith("marts/") for name in refused), refused
    planned = latest_check_record(instance, dg.AssetCheckKey(CONTACTS_MART, MART_UNIQUE))
    assert planned is not None and planned.status == "passed" and planned.run_id != bad_run_id

    _good_again(sandbox, instance)
    assert launch(instance, sync_key(CONTACTS)).success


def test_mart_materialized_again_without_its_checks_refuses_as_untested(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    # The mart rebuilt outside a checked run (e.g. `dbt run` by hand, reported to Dagster).
    instance.report_runless_asset_event(
        dg.AssetMaterialization(CONTACTS_MART, description="rebuilt by hand")
    )
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert not result.success
    assert sandbox.trigger_counts() == triggers_before
    [failure] = step_failures(result)
    assert "marts/mart_salesforce_contacts:not_null_mart_salesforce_contacts_email" in (
        failure.description
    )
    assert "the data is untested" in failure.description
    # Another destination, reading another mart, is not held back.
    assert launch(instance, sync_key("hubspot_contacts")).success

    # The same through the CLI, which runs the code location's own repository (as the
    # webserver and daemon do) rather than an in-process job.
    cli = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "--select",
            "activate/salesforce_contacts",
            "-m",
            "activation.definitions",
        ],
        env={**os.environ, "DAGSTER_HOME": instance.root_directory},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cli.returncode != 0
    assert "refused to trigger Hightouch" in cli.stdout + cli.stderr
    assert "the data is untested" in cli.stdout + cli.stderr
    assert sandbox.trigger_counts()["102"] == triggers_before["102"]

    _good_again(sandbox, instance)


def test_failing_python_check_on_the_mart_gates_the_same_way(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    from activation.definitions import build_definitions

    warehouse = sandbox.data_dir / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as connection:
        first, second = connection.execute(
            "SELECT contact_id, email FROM marts.mart_salesforce_contacts ORDER BY contact_id "
            "LIMIT 2"
        ).fetchall()
        connection.execute(
            "UPDATE marts.mart_salesforce_contacts SET email = upper(?) WHERE contact_id = ?",
            [first[1], second[0]],
        )
    check = dg.AssetCheckKey(CONTACTS_MART, "contact_emails_unique")
    defs = dg.Definitions.merge(
        build_definitions(),
        dg.Definitions(
            jobs=[dg.define_asset_job("check_emails", selection=dg.AssetSelection.checks(check))]
        ),
    )
    checked = defs.resolve_job_def("check_emails").execute_in_process(
        instance=instance, raise_on_error=False
    )
    [evaluation] = checked.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["contacts_sharing_an_email"].value == 2
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert sandbox.trigger_counts() == triggers_before
    [failure] = step_failures(result)
    assert "check marts/mart_salesforce_contacts:contact_emails_unique failed" in (
        failure.description
    )
    assert f"in run {checked.run_id}" in failure.description

    _good_again(sandbox, instance)


@pytest.mark.parametrize(
    ("record", "materialization", "refused"),
    [
        (None, None, "has never been evaluated"),
        (CheckRecord("planned", "r1"), None, "was planned but has no result"),
        (CheckRecord("failed", "r1", description="3 rows"), None, "failed: 3 rows"),
        (CheckRecord("failed", "r1", severity="WARN"), None, None),
        (CheckRecord("passed", "r1", target_storage_id=7), Materialization(7, "r1", 1.0), None),
        (
            CheckRecord("passed", "r1", target_storage_id=7),
            Materialization(9, "r2", 2.0),
            "untested",
        ),
        (CheckRecord("passed", "r1", recorded_at=5.0), Materialization(9, "r2", 2.0), None),
        (CheckRecord("passed", "r1", recorded_at=1.0), Materialization(9, "r2", 2.0), "untested"),
    ],
    ids=[
        "never",
        "planned",
        "failed",
        "warn-only",
        "same-data",
        "newer-data",
        "no-target-later",
        "no-target-earlier",
    ],
)
def test_judge_check(
    record: CheckRecord | None, materialization: Materialization | None, refused: str | None
) -> None:
    refusal = judge_check(dg.AssetCheckKey(CONTACTS_MART, "c"), record, materialization)
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refused in refusal.result


def test_module_has_no_future_import() -> None:
    source = (Path(__file__).parents[1] / "activation" / "gate.py").read_text()
    assert "from __future__" not in source
