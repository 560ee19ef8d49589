"""The whole chain on the sandbox: real Airbyte stand-in, real dbt on DuckDB, real Hightouch
stand-in over HTTP, real Dagster execution of the `activate` job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from activation.core.contract import CONTRACT_CHECK
from activation.core.run_summary import REPORT_KEY
from activation.core.verdicts import GATE_CHECK
from activation.dagster_api import check_history
from activation.lib.destinations import Destination, load_destinations, sync_asset_key_for
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import (
    ChainResult,
    prepare_code_location,
    run_chain,
)
from tests.support.warehouse_path import worker_sandbox

TOKEN = "chain-test-token-5f1c2b9e"


@pytest.fixture(scope="module")
def chain_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    folder = tmp_path_factory.mktemp("chain") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HIGHTOUCH_API_TOKEN", TOKEN)
        with worker_sandbox(folder, "--phase-seconds", "0.05", "--rows", "300") as sandbox:
            prepare_code_location()
            yield sandbox


@pytest.fixture(scope="module")
def first_run(chain_sandbox: SandboxProcess, instance: dg.DagsterInstance) -> ChainResult:
    return run_chain(instance)


def _mart_rows(data_dir: Path, mart: str) -> int:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as connection:
        return connection.execute(f"select count(*) from marts.{mart}").fetchone()[0]


def _by_key(destination_key: str) -> Destination:
    return next(d for d in load_destinations() if d.key == destination_key)


def test_good_run_lands_every_mart_in_its_destination(
    first_run: ChainResult, chain_sandbox: SandboxProcess
) -> None:
    assert first_run.success, first_run.failed_steps
    assert first_run.failed_checks == []
    assert first_run.passed_checks > 20
    for destination in load_destinations():
        rows = _mart_rows(chain_sandbox.data_dir, destination.mart)
        metadata = first_run.syncs[destination.key]
        assert rows > 0
        assert metadata["planned_added"] == rows
        assert metadata["successful_added"] == rows
        assert (metadata["planned_changed"], metadata["planned_removed"]) == (0, 0)
        assert str(metadata["hightouch_run_url"]).endswith(str(metadata["hightouch_run_id"]))
        records = chain_sandbox.records(destination.destination_type, destination.object)
        assert len(records) == rows
    assert chain_sandbox.trigger_counts() == {d.sync_id: 1 for d in load_destinations()}


def test_slack_report_lists_each_destination_run(
    first_run: ChainResult, chain_sandbox: SandboxProcess
) -> None:
    texts = [n["body"]["text"] for n in chain_sandbox.notifications("slack")]
    assert len(texts) == 1
    for destination in load_destinations():
        run_id = first_run.syncs[destination.key]["hightouch_run_id"]
        assert f"*{destination.key}*: success | run {run_id} |" in texts[0]


def test_second_run_plans_nothing_then_one_source_change_is_one_changed_row(
    first_run: ChainResult, chain_sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    second = run_chain(instance)
    assert second.success
    for metadata in second.syncs.values():
        planned = (
            metadata["planned_added"],
            metadata["planned_changed"],
            metadata["planned_removed"],
        )
        assert planned == (0, 0, 0)

    chain_sandbox.set_scenario(changed_rows=1)
    third = run_chain(instance)
    chain_sandbox.set_scenario()
    contacts = third.syncs["salesforce_contacts"]
    assert (contacts["planned_added"], contacts["planned_changed"]) == (0, 1)
    assert contacts["planned_removed"] == 0
    accounts = third.syncs["salesforce_accounts"]  # first_name is not mapped there
    assert (accounts["planned_added"], accounts["planned_changed"]) == (0, 0)
    changed = chain_sandbox.records("salesforce", _by_key("salesforce_contacts").object)
    with duckdb.connect(str(chain_sandbox.data_dir / "warehouse.duckdb"), read_only=True) as con:
        first_contact = con.execute(
            "select contact_id, first_name from marts.mart_salesforce_contacts "
            "order by contact_id limit 1"
        ).fetchone()
    assert changed[first_contact[0]]["first_name"] == first_contact[1]


def test_bad_rows_fail_the_blocking_checks_and_trigger_nothing(
    first_run: ChainResult, chain_sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    destinations = load_destinations()
    before = {d.key: chain_sandbox.records(d.destination_type, d.object) for d in destinations}
    triggers_before = chain_sandbox.trigger_counts()

    chain_sandbox.set_scenario(bad_rows=True)
    try:
        bad = run_chain(instance)
    finally:
        chain_sandbox.set_scenario()

    assert not bad.success
    assert bad.syncs == {}
    assert any(
        check.startswith("staging/stg_customers:unique_stg_customers_customer_id")
        for check in bad.failed_checks
    ), bad.failed_checks
    assert any("valid_email" in check for check in bad.failed_checks), bad.failed_checks
    assert chain_sandbox.trigger_counts() == triggers_before
    after = {d.key: chain_sandbox.records(d.destination_type, d.object) for d in destinations}
    assert after == before

    # Held back, not skipped: the summary and each sync's own `quality_gate` check name the
    # refusing dbt test.
    refusing = "staging/stg_customers:unique_stg_customers_customer_id"
    report = instance.fetch_materializations(REPORT_KEY, limit=1).records[0]
    materialization = report.event_log_entry.asset_materialization
    assert materialization is not None
    statuses = materialization.metadata["statuses"].value
    for destination in destinations:
        status = statuses[destination.key]  # type: ignore[index]
        assert status.startswith("blocked by ") and refusing in status, status
        [latest] = check_history(
            instance, dg.AssetCheckKey(sync_asset_key_for(destination.key), GATE_CHECK), limit=1
        )
        assert latest.evaluation is not None and not latest.evaluation.passed
        assert refusing in str(latest.evaluation.metadata["refusing_checks"].value)
        assert f"/runs/{bad.run_id}" in str(latest.evaluation.metadata["refusing_checks"].value)
        # The contract never ran: a warning that says so, not a red failure of its own.
        [contract] = check_history(
            instance,
            dg.AssetCheckKey(sync_asset_key_for(destination.key), CONTRACT_CHECK),
            limit=1,
        )
        assert contract.evaluation is not None
        assert contract.evaluation.severity == dg.AssetCheckSeverity.WARN
        assert f"Not evaluated in run {bad.run_id}" in (contract.evaluation.description or "")
    slack = chain_sandbox.notifications("slack")[-1]["body"]["text"]
    assert f"Activation run {bad.run_id}" in slack
    [line] = [row for row in slack.splitlines() if row.startswith("*salesforce_contacts*: ")]
    assert line.startswith("*salesforce_contacts*: blocked by ") and refusing in line, line


def test_the_api_token_never_reaches_the_event_log(
    first_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    records = instance.get_run_records(limit=20)
    assert records
    for record in records:
        run = record.dagster_run
        assert TOKEN not in repr(run.run_config) and TOKEN not in repr(run.tags)
        logs = instance.all_logs(run.run_id)
        assert logs
        for entry in logs:
            assert TOKEN not in (entry.user_message or "")
            assert TOKEN not in repr(entry.dagster_event)
