"""The schema contract's judgement, from what was read: columns, types, mappings, policies.

The end-to-end behaviour (real dbt, Dagster and HTTP) is in tests/integration/test_contracts.py;
here each rule is pinned on its own, with no service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from activation.core.contract import (
    COLUMN_TYPES_METADATA,
    CONTRACT_CHECK,
    RecordedTypes,
    canonical_type,
    contract_check_spec,
    contract_summary_lines_from,
    judge_contract,
    recorded_types,
    sync_column_metadata,
)
from activation.lib.destinations import (
    Destination,
    DestinationsFileError,
    parse_destinations,
    sync_asset_key_for,
)
from activation.lib.hightouch import FieldMapping, HightouchMalformedAnswer, HightouchSync
from activation.lib.paths import DEFAULT_DESTINATIONS_FILE

SHIPPED = parse_destinations(DEFAULT_DESTINATIONS_FILE)
CONTACTS = next(d for d in SHIPPED if d.key == "salesforce_contacts")
ITERABLE = next(d for d in SHIPPED if d.key == "iterable_users")
ITERABLE_MART = {
    "user_id": "varchar",
    "email": "varchar",
    "plan": "varchar",
    "subscription_status": "varchar",
    "mrr_usd": "decimal(12,2)",
    "signup_date": "date",
}
MART = {
    "contact_id": "varchar",
    "account_id": "varchar",
    "email": "varchar",
    "first_name": "varchar",
    "last_name": "varchar",
    "lifecycle_stage": "varchar",
}


def _live(destination: Destination, *extra: FieldMapping, drop: str | None = None) -> HightouchSync:
    mappings = (
        tuple(
            FieldMapping(column, name)
            for column, name in destination.field_mappings
            if name != drop
        )
        + extra
    )
    return HightouchSync(
        id=destination.sync_id or "1",
        slug=destination.sync_slug,
        primary_key=destination.primary_key,
        referenced_columns=tuple(m.column for m in mappings if m.column),
        mappings=mappings,
        external_id_mapping=FieldMapping(
            destination.primary_key, destination.field_for(destination.primary_key)
        ),
        destination_object=destination.object,
    )


def _judge(
    destination: Destination = CONTACTS,
    mart: dict[str, str] | None = None,
    live: HightouchSync | None = None,
    recorded: dict[str, str] | None = None,
) -> Any:
    return judge_contract(
        destination,
        sync_id=destination.sync_id or "1",
        mart_columns=MART if mart is None else mart,
        live=live or _live(destination),
        recorded=RecordedTypes("run-1", recorded) if recorded is not None else None,
    )


@pytest.mark.parametrize(
    ("reported", "canonical"),
    [
        (("VARCHAR",), "varchar"),
        (("character varying",), "varchar"),
        (("text",), "varchar"),
        (("character varying", None, None, 40), "varchar(40)"),
        (("DECIMAL(12,2)", 12, 2), "decimal(12,2)"),
        (("numeric", 12, 2), "decimal(12,2)"),
        (("INTEGER", 32, 0), "integer"),
        (("integer", 32, 0), "integer"),
        (("BIGINT", 64, 0), "bigint"),
        (("timestamp without time zone",), "timestamp"),
        (("TIMESTAMP",), "timestamp"),
        (("timestamp with time zone",), "timestamptz"),
        (("DATE",), "date"),
    ],
    ids=lambda value: str(value),
)
def test_types_read_the_same_on_duckdb_and_postgresql(reported: tuple, canonical: str) -> None:
    assert canonical_type(*reported) == canonical


def test_a_contract_with_nothing_to_compare_types_with_passes_and_says_so() -> None:
    verdict = _judge()
    assert verdict.passed and verdict.check_name == CONTRACT_CHECK
    assert "no earlier successful sync recorded their types" in verdict.description
    assert "the 5 field mappings in Hightouch match destinations.yaml" in verdict.description
    recorded = verdict.record_on_success[COLUMN_TYPES_METADATA].value
    assert recorded == {"mart": "mart_salesforce_contacts", "columns": MART}
    schema = verdict.metadata["mart_column_schema"].value
    assert [(c.name, c.type) for c in schema.columns] == list(MART.items())
    table = verdict.metadata["field_mappings"].value
    assert "| email | varchar | - | Contact.Email | Contact.Email |" in table


def test_a_renamed_column_refuses_naming_the_column_and_the_field_it_feeds() -> None:
    mart = {("email_address" if c == "email" else c): t for c, t in MART.items()}
    verdict = _judge(mart=mart, recorded=MART)
    assert verdict.blocks
    assert (
        "column email is missing from marts.mart_salesforce_contacts (it feeds Contact.Email)"
        in verdict.description
    )
    assert ", perhaps renamed email_address" in verdict.description
    assert verdict.refusing == ("column email (Contact.Email)",)
    assert "| email | MISSING | varchar | Contact.Email | Contact.Email |" in (
        verdict.metadata["field_mappings"].value
    )


def test_a_retyped_column_refuses_naming_old_and_new_type_and_the_field() -> None:
    verdict = _judge(mart={**MART, "account_id": "bigint"}, recorded=MART)
    assert verdict.blocks
    assert (
        "column account_id changed type from varchar to bigint since the last successful sync "
        "(run run-1) (it feeds Contact.Account_External_Id__c)" in verdict.description
    )
    assert verdict.refusing == ("column account_id (Contact.Account_External_Id__c)",)
    # The record the next sync compares with is what the mart holds now.
    assert verdict.record_on_success[COLUMN_TYPES_METADATA].value["columns"]["account_id"] == (
        "bigint"
    )


def test_a_type_change_accepted_in_destinations_yaml_passes_and_says_so() -> None:
    accepted = CONTACTS.model_copy(update={"accepted_type_changes": (("account_id", "BIGINT"),)})
    verdict = _judge(accepted, mart={**MART, "account_id": "bigint"}, recorded=MART)
    assert verdict.passed
    assert (
        "Note: column account_id changed type from varchar to bigint, as accepted in "
        "destinations.yaml (accepted_type_changes)." in verdict.description
    )
    other = _judge(accepted, mart={**MART, "account_id": "integer"}, recorded=MART)
    assert other.blocks  # only the accepted type is accepted


def test_a_type_change_of_a_column_the_sync_does_not_read_is_not_its_concern() -> None:
    verdict = _judge(mart={**MART, "notes": "varchar"}, recorded={**MART, "notes": "integer"})
    assert verdict.passed


def test_a_mapping_added_in_hightouch_refuses_by_default_showing_the_difference() -> None:
    live = _live(CONTACTS, FieldMapping("first_name", "Nickname__c"))
    verdict = _judge(live=live, recorded=MART)
    assert verdict.blocks
    assert "Contact.Nickname__c <- first_name  (in Hightouch, not declared)" in (
        verdict.description
    )
    assert "(mapping_drift: refuse)" in verdict.description
    assert verdict.refusing == ("mapping Contact.Nickname__c (only in Hightouch)",)
    assert "+ Contact.Nickname__c <- first_name" in verdict.metadata["mapping_drift"].value


def test_a_mapping_removed_in_hightouch_refuses_by_default() -> None:
    verdict = _judge(live=_live(CONTACTS, drop="Email"), recorded=MART)
    assert verdict.blocks
    assert verdict.refusing == ("mapping Contact.Email (not in Hightouch)",)


def test_mapping_drift_declared_warn_warns_and_lets_the_sync_go() -> None:
    live = _live(ITERABLE, FieldMapping("plan", "planName"))
    verdict = _judge(ITERABLE, mart=ITERABLE_MART, live=live)
    assert not verdict.passed and not verdict.blocks
    assert verdict.severity == dg.AssetCheckSeverity.WARN
    assert "users.planName <- plan  (in Hightouch, not declared) (mapping_drift: warn)" in (
        verdict.description
    )
    assert verdict.record_on_success  # the sync ships, so its types are recorded


def test_a_mapping_in_hightouch_from_a_missing_column_refuses_even_under_warn() -> None:
    live = _live(ITERABLE, FieldMapping("ltv", "ltv"))
    verdict = _judge(ITERABLE, mart=ITERABLE_MART, live=live)
    assert verdict.blocks
    assert "column ltv is missing from marts.mart_iterable_users (it feeds users.ltv)" in (
        verdict.description
    )


def test_another_primary_key_in_hightouch_always_refuses() -> None:
    live = _live(CONTACTS)
    live = HightouchSync(**{**live.__dict__, "primary_key": "email"})
    verdict = _judge(live=live)
    assert verdict.blocks and "primary key" in verdict.refusing


def test_a_missing_mart_refuses() -> None:
    verdict = _judge(mart={})
    assert verdict.blocks
    assert "marts.mart_salesforce_contacts does not exist in the warehouse" in verdict.description
    assert not verdict.record_on_success


def test_unreadable_mappings_are_not_compared_and_say_so() -> None:
    live = HightouchSync(**{**_live(CONTACTS).__dict__, "mappings": None})
    verdict = _judge(live=live, recorded=MART)
    assert verdict.passed
    assert "lists no mappings to compare" in verdict.description


def test_the_live_sync_is_parsed_leniently_where_hightouch_says_it_may_change() -> None:
    sync = HightouchSync.from_api(
        {
            "id": 7,
            "slug": "s",
            "primaryKey": "id",
            "referencedColumns": ["a"],
            "configuration": {
                "mappings": [
                    {"from": "a", "to": "A"},
                    {"from": {"type": "template", "template": "{{a}}"}, "to": "T"},
                    {"to": ""},
                    "odd",
                ],
                "externalIdMapping": "not an object",
            },
        }
    )
    assert sync.id == "7"
    assert sync.mappings == (FieldMapping("a", "A"), FieldMapping(None, "T"))
    assert sync.external_id_mapping is None
    assert HightouchSync.from_api({"id": "8", "configuration": {}}).mappings is None
    for malformed in (
        [],
        {"referencedColumns": ["a"]},
        {"id": "9", "referencedColumns": "a"},
        {"id": "9", "configuration": ["x"]},
    ):
        with pytest.raises(HightouchMalformedAnswer):
            HightouchSync.from_api(malformed)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"no_such_column": "X"}, "destination_fields names 'no_such_column'"),
        ({"email": "Email", "first_name": "Email"}, "'Email' is fed by two columns"),
        ({"email": ""}, "email: give the destination field's name as text"),
        ({"email": 3}, "email: give the destination field's name as text"),
        (["email"], "give a mapping by mart column, e.g. {email: Email}"),
    ],
    ids=["unknown-column", "two-columns-one-field", "empty", "not-text", "not-a-mapping"],
)
def test_destination_fields_are_validated_naming_file_destination_and_field(
    tmp_path: Path, fields: object, message: str
) -> None:
    document = yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())
    document["destinations"][1]["destination_fields"] = fields
    path = tmp_path / "destinations.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(DestinationsFileError) as error:
        parse_destinations(path)
    text = str(error.value)
    assert str(path) in text and "destinations[1] (salesforce_contacts)" in text
    assert message in text


def test_accepted_type_changes_name_synced_columns_only(tmp_path: Path) -> None:
    document = yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())
    document["destinations"][4]["accepted_type_changes"] = {"login_count": "bigint", "x": "int"}
    path = tmp_path / "destinations.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(DestinationsFileError) as error:
        parse_destinations(path)
    assert "destinations[4] (braze_users): Value error, accepted_type_changes names 'x'" in (
        str(error.value)
    )


def test_mapping_drift_policy_is_validated(tmp_path: Path) -> None:
    document = yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())
    document["destinations"][0]["mapping_drift"] = "ignore"
    path = tmp_path / "destinations.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(DestinationsFileError, match=r"\(salesforce_accounts\)\.mapping_drift"):
        parse_destinations(path)


def test_the_sync_asset_declares_its_fields_types_and_lineage(tmp_path: Path) -> None:
    manifest = {
        "nodes": {
            "model.activation.mart_salesforce_contacts": {
                "resource_type": "model",
                "name": "mart_salesforce_contacts",
                "columns": {c: {"data_type": "varchar"} for c in MART},
            }
        }
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    metadata = sync_column_metadata(CONTACTS, path)
    schema = metadata["dagster/column_schema"].value  # type: ignore[attr-defined]
    assert [(c.name, c.type) for c in schema.columns] == [
        ("External_Id__c", "varchar"),
        ("Account_External_Id__c", "varchar"),
        ("Email", "varchar"),
        ("FirstName", "varchar"),
        ("LastName", "varchar"),
        ("Lifecycle_Stage__c", "varchar"),
    ]
    lineage = metadata["dagster/column_lineage"].value  # type: ignore[attr-defined]
    assert lineage.deps_by_column["Email"] == [
        dg.TableColumnDep(dg.AssetKey(["marts", "mart_salesforce_contacts"]), "email")
    ]


def test_the_check_spec_and_the_summary_lines() -> None:
    spec = contract_check_spec(CONTACTS)
    assert spec.key == dg.AssetCheckKey(sync_asset_key_for("salesforce_contacts"), CONTRACT_CHECK)
    assert not spec.blocking and "Contact" in (spec.description or "")
    broken = _judge(mart={c: t for c, t in MART.items() if c != "email"})
    warned = _judge(
        ITERABLE, mart=ITERABLE_MART, live=_live(ITERABLE, FieldMapping("plan", "planName"))
    )
    evaluations = [
        _judge().evaluation(sync_asset_key_for("salesforce_accounts")),
        broken.evaluation(sync_asset_key_for("salesforce_contacts")),
        warned.evaluation(sync_asset_key_for("iterable_users")),
    ]
    destinations = [
        d
        for d in SHIPPED
        if d.key in ("salesforce_accounts", "salesforce_contacts", "iterable_users", "braze_users")
    ]
    assert contract_summary_lines_from(evaluations, destinations) == [
        "salesforce_accounts: contract holds (marts.mart_salesforce_accounts -> salesforce "
        "Account)",
        "salesforce_contacts: contract BROKEN, sync held back: column email (Contact.Email)",
        "iterable_users: contract holds, with a warning: mapping users.planName (only in "
        "Hightouch)",
        "braze_users: contract not checked in this run (the sync did not start)",
    ]


def test_recorded_types_come_from_a_sync_run_of_the_same_mart_not_from_a_report() -> None:
    key = sync_asset_key_for(CONTACTS.key)

    def record(mart: str, columns: dict[str, str]) -> dict[str, dg.MetadataValue]:
        return {COLUMN_TYPES_METADATA: dg.MetadataValue.json({"mart": mart, "columns": columns})}

    # Unannotated: under postponed annotations Dagster cannot resolve `dg.OpExecutionContext`.
    @dg.op
    def synced(context) -> None:  # type: ignore[no-untyped-def]
        context.log_event(
            dg.AssetMaterialization(key, metadata=record(CONTACTS.mart, {"email": "varchar"}))
        )

    with dg.instance_for_test() as instance:
        assert recorded_types(instance, CONTACTS) is None
        run = (
            dg.GraphDefinition("sync", node_defs=[synced])
            .to_job()
            .execute_in_process(instance=instance)
        )
        # Newer, but not evidence of a sync: a report from outside any run, another mart's record.
        instance.report_runless_asset_event(
            dg.AssetMaterialization(key, metadata=record(CONTACTS.mart, {"email": "integer"}))
        )
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
        found = recorded_types(instance, CONTACTS)
        assert found == RecordedTypes(run.run_id, {"email": "varchar"})
        other = CONTACTS.model_copy(update={"mart": "mart_other"})
        assert recorded_types(instance, other) is None
