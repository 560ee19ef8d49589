"""The schema contract at the activation edge: real dbt on DuckDB, real Dagster runs, real HTTP.

A mart column renamed or retyped by another build of the dbt project holds its sync back (the
check names the column, the old and new type and the field it feeds; nothing reaches the
sandbox's Hightouch), a mapping added in Hightouch's UI only meets the destination's declared
policy, the dbt assets and the sync assets carry column schema and lineage, and `activation
lineage` prints the chain from a CRM field back to the raw column. The same scenario on a
PostgreSQL warehouse is in test_contracts_postgres.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from activation.core.contract import contract_summary_lines
from activation.lib.destinations import load_destinations, mart_asset_key, sync_asset_key_for
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import ChainResult
from tests.support.contract_support import (
    ACCOUNTS,
    BRAZE,
    CONTACTS,
    CONTROL,
    EXPECTED_LINEAGE,
    ITERABLE,
    RENAMED,
    RETYPED,
    Launch,
    changed_project,
    contract_evaluations,
    launch_syncs,
    rebuild,
)
from tests.support.gate_support import chain_sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with chain_sandbox(tmp_path_factory.mktemp("contracts") / "data") as box:
        yield box


@pytest.fixture(scope="module")
def changed_marts(
    good_run: ChainResult,
    sandbox: SandboxProcess,
    instance: dg.DagsterInstance,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Launch, dict[str, int], dict[str, int]]:
    """Another build renames contacts' email and retypes braze's login_count; then both syncs
    are launched by hand. Returns the launch and the trigger counts before and after."""
    project = changed_project(tmp_path_factory.mktemp("next_build"))
    rebuild(project, "mart_salesforce_contacts", "mart_braze_users")
    before = sandbox.trigger_counts()
    launch = launch_syncs(instance, CONTACTS, BRAZE)
    return launch, before, sandbox.trigger_counts()


def _raw(value: object) -> Any:
    """A metadata entry's value, whether the definition holds it wrapped or not."""
    return value.value if isinstance(value, dg.MetadataValue) else value


def _sync_id(key: str) -> str:
    sync_id = next(d.sync_id for d in load_destinations() if d.key == key)
    assert sync_id is not None
    return sync_id


def test_every_contract_holds_on_the_good_run_and_the_types_are_recorded(
    good_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    assert contract_evaluations(instance, good_run.run_id) == {
        d.key: True for d in load_destinations()
    }
    for destination in load_destinations():
        recorded = good_run.syncs[destination.key]["mart_column_types"]
        assert recorded["mart"] == destination.mart  # type: ignore[index]
    braze = good_run.syncs[BRAZE]["mart_column_types"]["columns"]  # type: ignore[index]
    assert braze["login_count"] == "integer" and braze["last_event_at"] == "timestamp"
    iterable = good_run.syncs[ITERABLE]["mart_column_types"]["columns"]  # type: ignore[index]
    assert iterable["mrr_usd"] == "decimal(12,2)" and iterable["signup_date"] == "date"
    assert contract_summary_lines(instance, good_run.run_id) == [
        f"{d.key}: contract holds (marts.{d.mart} -> {d.destination_type} {d.object})"
        for d in load_destinations()
    ]


def test_dbt_models_record_column_lineage_back_to_the_raw_columns(
    good_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    def lineage(key: dg.AssetKey) -> dg.TableColumnLineage:
        [record] = instance.fetch_materializations(key, limit=1).records
        materialization = record.event_log_entry.asset_materialization
        assert materialization is not None
        return materialization.metadata["dagster/column_lineage"].value  # type: ignore[return-value]

    mart = lineage(mart_asset_key("mart_salesforce_contacts"))
    assert mart.deps_by_column["email"] == [
        dg.TableColumnDep(dg.AssetKey(["staging", "stg_customers"]), "email")
    ]
    staging = lineage(dg.AssetKey(["staging", "stg_accounts"]))
    assert staging.deps_by_column["account_name"] == [
        dg.TableColumnDep(dg.AssetKey(["raw", "accounts"]), "name")
    ]


def test_marts_and_syncs_declare_their_column_schema_and_the_sync_its_lineage(
    good_run: ChainResult,
) -> None:
    from activation.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    mart = graph.get(mart_asset_key("mart_iterable_users")).metadata
    schema = _raw(mart["dagster/column_schema"])  # the dbt contract's types
    assert {c.name: c.type for c in schema.columns}["mrr_usd"] == "decimal(12,2)"
    sync = graph.get(sync_asset_key_for(CONTACTS)).metadata
    fields = {c.name: c.type for c in _raw(sync["dagster/column_schema"]).columns}
    assert fields["Email"] == "varchar" and fields["External_Id__c"] == "varchar"
    lineage = _raw(sync["dagster/column_lineage"])
    assert lineage.deps_by_column["Email"] == [
        dg.TableColumnDep(mart_asset_key("mart_salesforce_contacts"), "email")
    ]


def test_a_renamed_mapped_column_holds_the_sync_back_naming_column_and_field(
    changed_marts: tuple[Launch, dict[str, int], dict[str, int]],
) -> None:
    launch, before, after = changed_marts
    assert launch.success  # held back is not a failure
    assert CONTACTS not in launch.materialized
    check = launch.check(CONTACTS)
    assert not check["passed"] and check["severity"] == "ERROR"
    assert RENAMED in check["description"]
    assert (
        "| email | MISSING | varchar | Contact.Email | Contact.Email |"
        in (check["metadata"]["field_mappings"])
    )
    contacts = _sync_id(CONTACTS)
    assert after.get(contacts, 0) == before.get(contacts, 0)


def test_a_retyped_mapped_column_holds_the_sync_back_naming_old_and_new_type(
    changed_marts: tuple[Launch, dict[str, int], dict[str, int]], good_run: ChainResult
) -> None:
    launch, before, after = changed_marts
    assert launch.success and BRAZE not in launch.materialized
    check = launch.check(BRAZE)
    assert not check["passed"] and check["severity"] == "ERROR"
    assert RETYPED.format(run_id=good_run.run_id) in check["description"]
    # Only the contract refused: the data itself is what its checks judged.
    assert launch.check(BRAZE, "quality_gate")["passed"]
    braze = _sync_id(BRAZE)
    assert after.get(braze, 0) == before.get(braze, 0)


def test_a_mapping_added_in_hightouch_only_meets_the_declared_policy(
    good_run: ChainResult, sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    """salesforce_accounts declares nothing (refuse); iterable_users declares `warn`."""
    added = {ACCOUNTS: ("domain", "Domain__c"), ITERABLE: ("plan", "planName")}
    with sandbox.client() as http:
        for key, (column, name) in added.items():
            current = http.get(CONTROL.format(_sync_id(key))).json()["mappings"]
            extra = {"from": column, "to": name}
            http.put(CONTROL.format(_sync_id(key)), json={"mappings": [*current, extra]})
        try:
            before = sandbox.trigger_counts()
            launch = launch_syncs(instance, ACCOUNTS, ITERABLE)
            after = sandbox.trigger_counts()
        finally:
            for key in added:
                http.delete(CONTROL.format(_sync_id(key))).raise_for_status()

    assert launch.success
    refused = launch.check(ACCOUNTS)
    assert not refused["passed"] and refused["severity"] == "ERROR"
    assert "Account.Domain__c <- domain  (in Hightouch, not declared)" in refused["description"]
    assert "(mapping_drift: refuse)" in refused["description"]
    assert "+ Account.Domain__c <- domain" in refused["metadata"]["mapping_drift"]
    assert ACCOUNTS not in launch.materialized
    assert after.get(_sync_id(ACCOUNTS), 0) == before.get(_sync_id(ACCOUNTS), 0)

    warned = launch.check(ITERABLE)
    assert not warned["passed"] and warned["severity"] == "WARN"
    assert (
        "users.planName <- plan  (in Hightouch, not declared) (mapping_drift: warn)"
        in (warned["description"])
    )
    assert ITERABLE in launch.materialized
    assert after[_sync_id(ITERABLE)] == before.get(_sync_id(ITERABLE), 0) + 1


def test_the_lineage_command_prints_the_chain_back_to_the_raw_column(
    good_run: ChainResult, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from activation.tooling.cli import main

    assert main(["lineage", "salesforce_contacts.Email", "salesforce.Account.Name"]) == 0
    assert capsys.readouterr().out == EXPECTED_LINEAGE
