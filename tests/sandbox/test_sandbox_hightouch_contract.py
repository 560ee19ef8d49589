"""The Hightouch stand-in's sync configuration: the field mappings the schema contract compares.

`GET /syncs/{id}` returns each sync's `configuration` (mappings from mart column to destination
field, the external id mapping), `referencedColumns` and `primaryKey` as destinations.yaml
declares them; a control endpoint edits the mappings as someone would in Hightouch's UI; the
product's client reads all of it. Optional trigger bodies stay optional.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from activation.lib.destinations import Destination, load_destinations
from activation.lib.hightouch import FieldMapping, HightouchClient
from activation.sandbox.launcher import SandboxProcess
from tests.support.sandbox_marts import API, reset, running_sandbox

CONTACTS = "102"  # salesforce_contacts
CONTROL = "/sandbox/hightouch/syncs/{}/mappings"


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    yield from running_sandbox(tmp_path_factory.mktemp("hightouch_contract"))


@pytest.fixture
def sandbox(module_sandbox: SandboxProcess) -> SandboxProcess:
    return reset(module_sandbox)


def _declared(key: str) -> Destination:
    return next(d for d in load_destinations() if d.key == key)


def _client(sandbox: SandboxProcess) -> HightouchClient:
    return HightouchClient(sandbox.url + API, "test-token", max_retries=0)


def test_each_sync_maps_its_columns_to_the_declared_destination_fields(
    sandbox: SandboxProcess,
) -> None:
    with sandbox.client() as http:
        syncs = {s["id"]: s for s in http.get(f"{API}/syncs").json()["data"]}
    for d in load_destinations():
        assert d.sync_id is not None
        sync = syncs[d.sync_id]
        configuration = sync["configuration"]
        assert configuration["mappings"] == [
            {"from": column, "to": d.field_for(column), "type": "standard"}
            for column in d.mapped_columns
        ]
        assert configuration["externalIdMapping"] == {
            "from": d.primary_key,
            "to": d.field_for(d.primary_key),
            "type": "standard",
        }
        assert sync["referencedColumns"] == list(d.mapped_columns)
        assert sync["primaryKey"] == d.primary_key
    contacts = syncs[CONTACTS]["configuration"]["mappings"]
    assert {"from": "email", "to": "Email", "type": "standard"} in contacts
    # A column with no declared field feeds the field of its own name.
    braze = syncs["401"]["configuration"]["mappings"]
    assert {"from": "login_count", "to": "login_count", "type": "standard"} in braze


def test_the_client_reads_the_sync_as_hightouch_holds_it(sandbox: SandboxProcess) -> None:
    with _client(sandbox) as client:
        live = client.get_sync(CONTACTS)
    d = _declared("salesforce_contacts")
    assert live.id == CONTACTS and live.slug == d.sync_slug
    assert live.primary_key == "contact_id"
    assert live.referenced_columns == d.mapped_columns
    assert live.mappings == tuple(FieldMapping(c, f) for c, f in d.field_mappings)
    assert live.external_id_mapping == FieldMapping("contact_id", "External_Id__c")
    assert live.destination_object == "Contact"


def _configuration(http: httpx.Client) -> dict:
    return http.get(f"{API}/syncs/{CONTACTS}").json()["configuration"]


def test_a_mapping_added_in_the_ui_shows_in_the_api_until_restored(
    sandbox: SandboxProcess,
) -> None:
    with sandbox.client() as http:
        before = http.get(f"{API}/syncs/{CONTACTS}").json()
        mappings = [*before["configuration"]["mappings"], {"from": "country", "to": "Country__c"}]
        edited = http.put(CONTROL.format(CONTACTS), json={"mappings": mappings})
        assert edited.status_code == 200, edited.text
        after = http.get(f"{API}/syncs/{CONTACTS}").json()
        assert after["configuration"]["mappings"][-1] == {
            "from": "country",
            "to": "Country__c",
            "type": "standard",
        }
        assert after["referencedColumns"] == [*before["referencedColumns"], "country"]
        assert after["updatedAt"] > before["updatedAt"]
        # Other syncs, the staging twin included, keep their declared mappings.
        twin = http.get(f"{API}/syncs/403").json()
        assert twin["configuration"]["mappings"] == before["configuration"]["mappings"]
        assert http.get(CONTROL.format(CONTACTS)).json()["edited"] is True

        restored = http.delete(CONTROL.format(CONTACTS))
        assert restored.json() == {"mappings": before["configuration"]["mappings"], "edited": False}
        assert _configuration(http) == before["configuration"]

        http.put(CONTROL.format(CONTACTS), json={"mappings": []}).raise_for_status()
        assert http.get(f"{API}/syncs/{CONTACTS}").json()["referencedColumns"] == []
        http.post("/sandbox/reset").raise_for_status()
        assert _configuration(http) == before["configuration"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "requestBody.mappings"),
        ({"mappings": {"from": "a", "to": "b"}}, "requestBody.mappings"),
        ({"mappings": ["email"]}, "requestBody.mappings[0]"),
        ({"mappings": [{"from": "email"}]}, "requestBody.mappings[0].to"),
        ({"mappings": [{"from": 3, "to": "Email"}]}, "requestBody.mappings[0].from"),
    ],
    ids=["no-mappings", "not-a-list", "not-an-object", "no-to", "from-not-text"],
)
def test_malformed_mapping_edits_are_refused_naming_the_field(
    sandbox: SandboxProcess, body: dict, field: str
) -> None:
    with sandbox.client() as http:
        response = http.put(CONTROL.format(CONTACTS), json=body)
        assert response.status_code == 422
        assert field in response.json()["details"]
        unknown = http.put(CONTROL.format("999"), json={"mappings": []})
        assert unknown.status_code == 404


def test_an_optional_trigger_body_may_be_absent_empty_or_null(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        absent = http.post(f"{API}/syncs/{CONTACTS}/trigger")
        empty = http.post(f"{API}/syncs/{CONTACTS}/trigger", json={})
        null = http.post(
            f"{API}/syncs/{CONTACTS}/trigger",
            content=b"null",
            headers={"Content-Type": "application/json"},
        )
        # The body of /syncs/trigger is required: null names no sync.
        required = http.post(
            f"{API}/syncs/trigger", content=b"null", headers={"Content-Type": "application/json"}
        )
    assert [r.status_code for r in (absent, empty, null)] == [200, 200, 200]
    assert len({r.json()["id"] for r in (absent, empty, null)}) == 3
    assert required.status_code == 422
    assert sandbox.trigger_counts() == {CONTACTS: 3}
