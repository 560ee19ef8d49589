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

from activation.core.gate import (
    CheckRecord,
    Evidence,
    Materialization,
    judge_check,
    judge_fingerprint,
    latest_check_record,
)
from activation.core.guards import FINGERPRINT_METADATA, Fingerprint
from activation.dagster_api import check_history, run_location
from activation.lib.destinations import mart_asset_key
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import ChainResult, run_chain
from tests.support.gate_support import (
    chain_sandbox,
    held_back,
    launch,
    step_failures,
    sync_key,
    synced,
    transform_and_its_sources,
)

CONTACTS = "salesforce_contacts"
CONTACTS_MART = mart_asset_key("mart_salesforce_contacts")
UNIQUE_CUSTOMER_ID = "unique_stg_customers_customer_id"
MART_UNIQUE = "unique_mart_salesforce_contacts_contact_id"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with chain_sandbox(tmp_path_factory.mktemp("gate") / "data") as box:
        yield box


def _good_again(sandbox: SandboxProcess, instance: dg.DagsterInstance) -> None:
    """Good data landed and judged again: the Airbyte sync and the dbt build with every check on
    what they build, as a rebuild upstream would. No Hightouch sync: a test that needs one
    launches it, and the gate must open for it on this run's evidence alone."""
    from activation.definitions import build_definitions

    sandbox.set_scenario()
    definitions = build_definitions()
    result = launch(instance, *transform_and_its_sources(definitions), definitions=definitions)
    assert result.success, step_failures(result)


def _evidence(instance: dg.DagsterInstance) -> Evidence:
    from activation.definitions import build_definitions

    return Evidence.for_run(instance, build_definitions().resources["quality_gate"], None)


def _latest(instance: dg.DagsterInstance, check: dg.AssetCheckKey) -> CheckRecord | None:
    return latest_check_record(instance, check, _evidence(instance))


def test_latest_check_record_is_pinned(good_run: ChainResult, instance: dg.DagsterInstance) -> None:
    """Pins the one non-public call: what the gate reads for a passed, never-run check."""
    record = _latest(instance, dg.AssetCheckKey(CONTACTS_MART, MART_UNIQUE))
    assert record is not None
    assert record.status == "passed" and record.severity == "ERROR"
    latest = instance.fetch_materializations(CONTACTS_MART, limit=1).records[0]
    assert record.target_storage_id == latest.storage_id
    assert record.run_id == latest.run_id
    assert _latest(instance, dg.AssetCheckKey(CONTACTS_MART, "no_such_check")) is None


def test_check_history_and_run_location_are_pinned(
    good_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    """Pins what Dagster 1.13 stores, which the evidence rule relies on: an evaluation from a
    step carries its run and step; a runless report carries run id "" and no step; an
    in-process run carries no remote origin."""
    check = dg.AssetCheckKey(CONTACTS_MART, "pinned_runless_probe")
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=CONTACTS_MART, check_name=check.name, passed=True)
    )
    [runless] = check_history(instance, check)
    assert (runless.run_id, runless.step_key) == ("", None)
    assert runless.evaluation is not None and runless.evaluation.passed
    assert _evidence(instance).why_not(runless) == ("an evaluation reported outside any run")
    [stepped, *_] = check_history(instance, dg.AssetCheckKey(CONTACTS_MART, MART_UNIQUE))
    assert stepped.run_id and stepped.step_key
    run = instance.get_run_by_id(stepped.run_id)
    assert run is not None and run_location(run) is None


def test_in_run_guard_and_python_checks_ran_and_passed(
    good_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    for name in ("guard_salesforce_contacts", "contact_emails_unique", MART_UNIQUE):
        record = _latest(instance, dg.AssetCheckKey(CONTACTS_MART, name))
        assert record is not None and record.status == "passed", name
        # Every check on the mart recorded what it judged, per destination reading the mart.
        assert record.fingerprints is not None, name
        judged = record.fingerprints[CONTACTS]
        assert judged.rows > 0 and int(judged.hash) > 0, name
    staging = _latest(
        instance, dg.AssetCheckKey(dg.AssetKey(["staging", "stg_customers"]), UNIQUE_CUSTOMER_ID)
    )
    assert staging is not None and staging.fingerprints is None


def test_sync_alone_after_good_run_passes_the_gate(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    before = sandbox.trigger_counts()
    result = launch(instance, sync_key(CONTACTS))
    assert result.success, step_failures(result)
    after = sandbox.trigger_counts()
    assert after["102"] == before["102"] + 1


def test_a_step_without_the_destinations_pool_is_refused_before_any_trigger(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    """A job someone adds that syncs a destination from an op without its pool: with the gate
    open (the previous test synced), the sync path still refuses it and nothing is sent."""
    from activation.core.sync_path import sync_destination
    from activation.definitions import build_definitions
    from activation.lib.destinations import load_destinations

    resources = build_definitions().resources
    contacts = next(d for d in load_destinations() if d.key == CONTACTS)

    @dg.op(required_resource_keys={"hightouch", "quality_gate"})
    def poolless_sync(context) -> None:  # type: ignore[no-untyped-def]
        sync_destination(
            context,
            contacts,
            hightouch=context.resources.hightouch,
            gate=context.resources.quality_gate,
            pagerduty=None,
            slack=None,
        )

    @dg.job(
        resource_defs={
            "hightouch": resources["hightouch"],
            "quality_gate": dg.ResourceDefinition.hardcoded_resource(resources["quality_gate"]),
        }
    )
    def rogue_sync() -> None:
        poolless_sync()

    before = sandbox.trigger_counts()
    result = rogue_sync.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = step_failures(result)
    assert "Gate open" in " ".join(
        e.user_message or "" for e in instance.all_logs(result.run_id)
    ), "the gate must have let it through, so the pool is what refused"
    assert "holds pool (none), not hightouch_salesforce_contacts" in failure.description
    assert sandbox.trigger_counts() == before


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

    assert not synced(result, sync_key(CONTACTS))
    assert sandbox.trigger_counts() == triggers_before
    assert sandbox.records("salesforce", "Contact") == records_before
    [failure] = held_back(result)
    assert failure.step == "activate__salesforce_contacts"
    check = f"staging/stg_customers:{UNIQUE_CUSTOMER_ID}"
    assert f"check {check} failed" in failure.description
    assert f"in run {bad_run_id}" in failure.description
    refused = {r["check"]: r for r in failure.metadata["refused_checks"]}  # type: ignore[union-attr]
    assert refused[check]["run_id"] == bad_run_id
    assert refused[check]["result"].startswith("failed")
    # The mart was not rebuilt in the bad run: its checks' last results still judge its data.
    assert not any(name.startswith("marts/") for name in refused), refused
    planned = _latest(instance, dg.AssetCheckKey(CONTACTS_MART, MART_UNIQUE))
    assert planned is not None and planned.status == "passed" and planned.run_id != bad_run_id

    # The sync asset is subsettable: a launch may leave its checks out (materialize without
    # checks) or select only them. The gate is the sync path's, not the check's: neither
    # reaches Hightouch while it is closed.
    from activation.definitions import build_definitions

    job = build_definitions().resolve_implicit_global_asset_job_def()
    gate_check = dg.AssetCheckKey(sync_key(CONTACTS), "quality_gate")
    for subset in (
        job.get_subset(asset_selection={sync_key(CONTACTS)}, asset_check_selection=set()),
        job.get_subset(asset_selection=set(), asset_check_selection={gate_check}),
    ):
        result = subset.execute_in_process(instance=instance, raise_on_error=False)
        assert "activate__salesforce_contacts" in {e.step_key for e in result.all_events}
        assert sandbox.trigger_counts() == triggers_before
        assert sandbox.records("salesforce", "Contact") == records_before

    _good_again(sandbox, instance)
    assert synced(launch(instance, sync_key(CONTACTS)), sync_key(CONTACTS))


def test_runless_passed_report_does_not_open_a_gate_a_failed_check_closed(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    sandbox.set_scenario(bad_rows=True)
    try:
        assert not run_chain(instance, console_log_level="WARNING").success
    finally:
        sandbox.set_scenario()
    bad_run_id = instance.get_run_records(limit=1)[0].dagster_run.run_id
    staging = dg.AssetKey(["staging", "stg_customers"])
    # What the webserver's unauthenticated POST /report_asset_check/ does.
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=staging, check_name=UNIQUE_CUSTOMER_ID, passed=True, description="forged"
        )
    )
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert not synced(result, sync_key(CONTACTS))
    assert sandbox.trigger_counts() == triggers_before
    [failure] = held_back(result)
    assert f"check staging/stg_customers:{UNIQUE_CUSTOMER_ID} failed" in failure.description
    assert f"in run {bad_run_id}" in failure.description
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if "not counted as evidence" in (entry.user_message or "")
    ]
    assert any("reported outside any run" in w for w in warnings), warnings

    _good_again(sandbox, instance)


def test_row_edited_in_the_mart_after_its_checks_closes_the_gate(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    _good_again(sandbox, instance)
    checked_run = instance.get_run_records(limit=1)[0].dagster_run.run_id
    with duckdb.connect(str(sandbox.data_dir / "warehouse.duckdb")) as connection:
        connection.execute(
            "UPDATE marts.mart_salesforce_contacts SET last_name = 'Edited' WHERE contact_id = "
            "(SELECT min(contact_id) FROM marts.mart_salesforce_contacts)"
        )
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert not synced(result, sync_key(CONTACTS))
    assert sandbox.trigger_counts() == triggers_before
    [failure] = held_back(result)
    assert "the mart changed since its checks ran" in failure.description
    assert f"check marts/mart_salesforce_contacts:{MART_UNIQUE} judged" in failure.description
    assert f"in run {checked_run}" in failure.description
    refused = {r["check"] for r in failure.metadata["refused_checks"]}  # type: ignore[union-attr]
    assert f"marts/mart_salesforce_contacts:{MART_UNIQUE}" in refused
    assert not any(name.startswith("staging/") for name in refused), refused
    # Another destination's mart did not change: its sync goes ahead.
    assert synced(launch(instance, sync_key("hubspot_contacts")), sync_key("hubspot_contacts"))

    _good_again(sandbox, instance)
    assert synced(launch(instance, sync_key(CONTACTS)), sync_key(CONTACTS))


def test_mart_materialized_again_without_its_checks_refuses_as_untested(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    # The mart rebuilt outside a checked run (e.g. `dbt run` by hand, reported to Dagster).
    instance.report_runless_asset_event(
        dg.AssetMaterialization(CONTACTS_MART, description="rebuilt by hand")
    )
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert not synced(result, sync_key(CONTACTS))
    assert sandbox.trigger_counts() == triggers_before
    [failure] = held_back(result)
    assert "marts/mart_salesforce_contacts:not_null_mart_salesforce_contacts_email" in (
        failure.description
    )
    assert "the data is untested" in failure.description
    # Another destination, reading another mart, is not held back.
    assert synced(launch(instance, sync_key("hubspot_contacts")), sync_key("hubspot_contacts"))

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
    # Held back, not failed: the run succeeds without a sync, and the gate said why.
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert "refused to trigger Hightouch" in cli.stdout + cli.stderr
    assert "did not pass" in cli.stdout + cli.stderr  # the quality_gate check failed
    assert sandbox.trigger_counts()["102"] == triggers_before["102"]
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
    # A job this code location does not define: its evaluation is not evidence.
    foreign = dg.Definitions.merge(
        build_definitions(),
        dg.Definitions(
            jobs=[dg.define_asset_job("check_emails", selection=dg.AssetSelection.checks(check))]
        ),
    )
    elsewhere = foreign.resolve_job_def("check_emails").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not elsewhere.get_asset_check_evaluations()[0].passed
    # The check alone, in the code location's own asset job (a hand launch of the check).
    own_job = build_definitions().resolve_implicit_global_asset_job_def()
    checked = own_job.get_subset(
        asset_selection=set(), asset_check_selection={check}
    ).execute_in_process(instance=instance, raise_on_error=False)
    [evaluation] = checked.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["contacts_sharing_an_email"].value == 2
    assert CONTACTS in evaluation.metadata[FINGERPRINT_METADATA].value  # type: ignore[operator]
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert sandbox.trigger_counts() == triggers_before
    [failure] = held_back(result)
    assert "check marts/mart_salesforce_contacts:contact_emails_unique failed" in (
        failure.description
    )
    assert f"in run {checked.run_id}" in failure.description
    assert elsewhere.run_id not in failure.description
    # The dbt tests judged the mart before the edit.
    assert "the mart changed since its checks ran" in failure.description

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


_JUDGED = Fingerprint(300, "123")


@pytest.mark.parametrize(
    ("fingerprints", "refused"),
    [
        ({CONTACTS: _JUDGED}, None),
        ({CONTACTS: Fingerprint(300, "124")}, "the mart changed since its checks ran"),
        ({CONTACTS: Fingerprint(299, "123")}, "the mart changed since its checks ran"),
        ({"hubspot_contacts": _JUDGED}, "judged data without a fingerprint"),
        (None, "judged data without a fingerprint"),
    ],
    ids=["same", "other-hash", "other-count", "other-destination", "none"],
)
def test_judge_fingerprint(fingerprints: dict | None, refused: str | None) -> None:
    record = CheckRecord("passed", "r1", fingerprints=fingerprints)
    refusal = judge_fingerprint(dg.AssetCheckKey(CONTACTS_MART, "c"), record, CONTACTS, _JUDGED)
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refused in refusal.sentence()
        assert refusal.sentence().endswith("in run r1")


def test_module_has_no_future_import() -> None:
    source = (Path(__file__).parents[2] / "activation" / "core" / "gate.py").read_text()
    assert "from __future__" not in source
