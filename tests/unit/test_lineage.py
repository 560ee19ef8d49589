"""Column lineage traced from compiled SQL, and the chain `activation lineage` prints.

The real project's chains (compiled by dbt) are pinned in tests/integration/test_contracts.py;
here the tracing rules are pinned on small hand-written models.
"""

from __future__ import annotations

from typing import Any

import pytest

from activation.lib.column_lineage import ColumnRef, LineageError, model_column_lineage
from activation.lib.destinations import parse_destinations
from activation.lib.paths import DEFAULT_DESTINATIONS_FILE
from activation.tooling.lineage import (
    LineageRequestError,
    field_lineage,
    render,
    resolve_field,
)

SOURCE = "source.activation.raw.customers"
STAGING = "model.activation.stg_customers"
EVENTS = "model.activation.stg_events"
MART = "model.activation.mart_salesforce_contacts"


def _manifest(adapter: str = "duckdb") -> dict[str, Any]:
    def model(name: str, schema: str, parents: list[str], columns: list[str]) -> dict[str, Any]:
        return {
            "resource_type": "model",
            "name": name,
            "alias": name,
            "schema": schema,
            "config": {"schema": schema},
            "package_name": "activation",
            "original_file_path": f"models/{name}.sql",
            "depends_on": {"nodes": parents},
            "columns": {c: {"name": c, "data_type": "varchar"} for c in columns},
        }

    return {
        "metadata": {"adapter_type": adapter},
        "nodes": {
            STAGING: model("stg_customers", "staging", [SOURCE], ["customer_id", "email"]),
            EVENTS: model("stg_events", "staging", [], ["customer_id", "event_type"]),
            MART: model(
                "mart_salesforce_contacts",
                "marts",
                [STAGING, EVENTS],
                ["contact_id", "email", "login_count", "source_system"],
            ),
        },
        "sources": {
            SOURCE: {
                "resource_type": "source",
                "source_name": "raw",
                "name": "customers",
                "identifier": "customers",
                "schema": "raw",
                "columns": {"customer_id": {}, "email_address": {}},
            }
        },
    }


STAGING_SQL = """
select cast(customer_id as TEXT) as customer_id, lower(trim(email_address)) as email
from read_parquet('/data/somewhere/raw/customers.parquet')
"""
MART_SQL = """
with logins as (
    select customer_id, count(case when event_type = 'login' then 1 end) as login_count
    from "warehouse"."staging"."stg_events"
    group by customer_id
)
select
    customers.customer_id as contact_id,
    customers.email,
    coalesce(logins.login_count, 0) as login_count,
    'crm' as source_system
from "warehouse"."staging"."stg_customers" as customers
left join logins on logins.customer_id = customers.customer_id
"""


def test_a_file_backed_source_is_recognised_by_its_file_name() -> None:
    lineage = model_column_lineage(_manifest(), STAGING, STAGING_SQL)
    assert lineage == {
        "customer_id": (ColumnRef(SOURCE, "customer_id"),),
        "email": (ColumnRef(SOURCE, "email_address"),),
    }


@pytest.mark.parametrize("adapter", ["duckdb", "postgres"])
def test_columns_are_traced_through_ctes_joins_and_aggregates(adapter: str) -> None:
    sql = MART_SQL.replace('"warehouse"', '"analytics"') if adapter == "postgres" else MART_SQL
    lineage = model_column_lineage(_manifest(adapter), MART, sql)
    assert lineage == {
        "contact_id": (ColumnRef(STAGING, "customer_id"),),
        "email": (ColumnRef(STAGING, "email"),),
        "login_count": (ColumnRef(EVENTS, "event_type"),),
        "source_system": (),
    }


def test_a_relation_that_is_no_parent_is_refused_by_name() -> None:
    with pytest.raises(LineageError, match="reads .*stg_accounts.*not a known parent"):
        model_column_lineage(
            _manifest(), MART, 'select account_id from "warehouse"."staging"."stg_accounts"'
        )
    with pytest.raises(LineageError, match="cannot parse"):
        model_column_lineage(_manifest(), MART, "select from where (")


SHIPPED = parse_destinations(DEFAULT_DESTINATIONS_FILE)


@pytest.mark.parametrize(
    ("spec", "column", "field"),
    [
        ("salesforce_contacts.Email", "email", "Email"),
        ("salesforce_contacts.email", "email", "Email"),
        ("salesforce.Contact.Email", "email", "Email"),
        ("salesforce_contacts.External_Id__c", "contact_id", "External_Id__c"),
        ("braze_users.login_count", "login_count", "login_count"),
    ],
)
def test_a_field_is_named_by_destination_and_field(spec: str, column: str, field: str) -> None:
    request = resolve_field(spec, SHIPPED)
    assert (request.column, request.field) == (column, field)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("Email", "give <destination>.<field>"),
        ("nowhere.Email", "no destination 'nowhere' (known: salesforce_accounts,"),
        ("salesforce_contacts.Phone", "has no field 'Phone' (fields: External_Id__c,"),
    ],
)
def test_an_unknown_field_lists_what_is_known(spec: str, message: str) -> None:
    with pytest.raises(LineageRequestError, match=message.replace("(", r"\(")):
        resolve_field(spec, SHIPPED)


def test_the_chain_is_printed_from_the_field_back_to_the_source() -> None:
    manifest = _manifest()
    lineage = {
        STAGING: model_column_lineage(manifest, STAGING, STAGING_SQL),
        MART: model_column_lineage(manifest, MART, MART_SQL),
    }
    chain = field_lineage(resolve_field("salesforce_contacts.Email", SHIPPED), manifest, lineage)
    assert render(chain) == [
        "salesforce_contacts.Email: Salesforce Contact.Email (Hightouch sync 102)",
        "  <- marts/mart_salesforce_contacts.email (varchar)",
        "    <- staging/stg_customers.email (varchar)",
        "      <- raw/customers.email_address (source)",
    ]
