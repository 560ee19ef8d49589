"""The Hightouch stand-in speaks the Hightouch API v1 contract: paths, auth, fields, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activation.lib.destinations import Destination, load_destinations
from activation.sandbox.hightouch import served_sync_definitions, sync_definitions
from activation.sandbox.launcher import SandboxProcess, start_sandbox
from tests.support.sandbox_marts import (
    API,
    build_mart,
    get_run,
    reset,
    running_sandbox,
    sync_once,
    trigger,
    wait_for_run,
)

# Required fields of the OpenAPI schemas (components.schemas.*.required).
SYNC_FIELDS = {
    "id", "slug", "workspaceId", "createdAt", "updatedAt", "destinationId", "modelId",
    "configuration", "schedule", "status", "disabled", "lastRunAt", "referencedColumns",
    "primaryKey",
}  # fmt: skip
DESTINATION_FIELDS = {
    "id", "name", "slug", "workspaceId", "createdAt", "updatedAt", "type", "configuration",
    "syncs",
}  # fmt: skip
RUN_FIELDS = {
    "id", "createdAt", "startedAt", "finishedAt", "querySize", "status", "completionRatio",
    "plannedRows", "successfulRows", "failedRows",
}  # fmt: skip
DESTINATION_IDS = {"salesforce": "1", "hubspot": "2", "iterable": "3", "braze": "4"}
ENDPOINTS = [
    ("GET", "/syncs"),
    ("GET", "/syncs/201"),
    ("GET", "/syncs/201/runs"),
    ("POST", "/syncs/201/trigger"),
    ("POST", "/syncs/trigger"),
    ("GET", "/destinations"),
    ("GET", "/destinations/2"),
]


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    yield from running_sandbox(tmp_path_factory.mktemp("hightouch_api"))


@pytest.fixture
def sandbox(module_sandbox: SandboxProcess) -> SandboxProcess:
    """This module's sandbox, reset before each test."""
    return reset(module_sandbox)


def _declared() -> tuple[Destination, ...]:
    return load_destinations()


def _assert_validation_error(response: httpx.Response, status: int = 422) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["message"] == "Validation failed"
    assert isinstance(body["details"], dict) and body["details"]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[f"{m} {p}" for m, p in ENDPOINTS])
def test_every_endpoint_wants_a_bearer_token(
    sandbox: SandboxProcess, method: str, path: str
) -> None:
    with httpx.Client(base_url=sandbox.url) as http:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcg=="}):
            response = http.request(method, API + path, headers=headers, json={"syncId": "201"})
            assert response.status_code == 401, (headers, response.text)
            assert "message" in response.json()
    assert sandbox.trigger_counts() == {}


def test_a_configured_token_is_the_only_one_accepted(tmp_path: Path) -> None:
    process = start_sandbox(tmp_path / "data", "--hightouch-token", "right-token")
    try:
        with process.client("wrong-token") as wrong, process.client("right-token") as right:
            assert wrong.get(f"{API}/syncs").status_code == 401
            assert right.get(f"{API}/syncs").status_code == 200
    finally:
        process.stop()


def _staging_ids() -> set[str]:
    return {d.staging.sync_id for d in _declared() if d.staging and d.staging.sync_id}


def test_one_sync_per_declared_destination(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        response = http.get(f"{API}/syncs")
    assert response.status_code == 200
    syncs = {s["id"]: s for s in response.json()["data"]}
    assert list(syncs) == sorted(syncs, key=int)  # default order: id
    declared = _declared()
    assert set(syncs) == {d.sync_id for d in declared} | _staging_ids()
    for d in declared:
        sync = syncs[d.sync_id]
        assert sync.keys() >= SYNC_FIELDS
        assert sync["slug"] == d.sync_slug
        assert sync["primaryKey"] == d.primary_key
        assert sync["referencedColumns"] == list(d.mapped_columns)
        assert sync["configuration"]["mappings"] == [
            {"from": c, "to": d.field_for(c), "type": "standard"} for c in d.mapped_columns
        ]
        assert sync["configuration"]["object"] == d.object
        assert (sync["status"], sync["lastRunAt"], sync["disabled"]) == ("pending", None, False)
        assert sync["destinationId"] == DESTINATION_IDS[d.destination_type]


def test_list_syncs_filters_limits_and_orders(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        by_slug = http.get(f"{API}/syncs", params={"slug": "hubspot-marketing-contacts"})
        model_id = by_slug.json()["data"][0]["modelId"]
        by_model = http.get(f"{API}/syncs", params={"modelId": model_id})
        by_unknown_slug = http.get(f"{API}/syncs", params={"slug": "nope"})
        limited = http.get(f"{API}/syncs", params={"limit": 2})
        ordered = http.get(f"{API}/syncs", params={"orderBy": "slug"})
        _assert_validation_error(http.get(f"{API}/syncs", params={"orderBy": "color"}))
        _assert_validation_error(http.get(f"{API}/syncs", params={"limit": "many"}))
        _assert_validation_error(http.get(f"{API}/syncs", params={"modelId": "x"}))
    assert [s["id"] for s in by_slug.json()["data"]] == ["201"]
    assert [s["id"] for s in by_model.json()["data"]] == ["201", "404"]  # and its staging twin
    assert by_unknown_slug.json() == {"data": []}
    assert [s["id"] for s in limited.json()["data"]] == ["101", "102"]
    slugs = [s["slug"] for s in ordered.json()["data"]]
    assert slugs == sorted(slugs) and len(slugs) == len(_declared()) + len(_staging_ids())


def test_get_sync_and_unknown_ids(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        found = http.get(f"{API}/syncs/301")
        missing = http.get(f"{API}/syncs/999")
        malformed = http.get(f"{API}/syncs/not-a-number")
        runs_of_missing = http.get(f"{API}/syncs/999/runs")
    assert found.status_code == 200 and found.json()["slug"] == "iterable-lifecycle-users"
    assert missing.status_code == 404 and "999" in missing.json()["message"]
    assert runs_of_missing.status_code == 404
    _assert_validation_error(malformed)


def test_one_destination_per_crm(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        listed = http.get(f"{API}/destinations").json()["data"]
        hubspot = http.get(f"{API}/destinations/2")
        missing = http.get(f"{API}/destinations/9")
        filtered = http.get(f"{API}/destinations", params={"slug": "braze"}).json()["data"]
    assert [(d["id"], d["type"]) for d in listed] == [
        ("1", "salesforce"),
        ("2", "hubspot"),
        ("3", "iterable"),
        ("4", "braze"),
    ]
    for destination in listed:
        assert destination.keys() >= DESTINATION_FIELDS
    assert listed[0]["syncs"] == ["101", "102", "402", "403"]
    assert hubspot.status_code == 200 and hubspot.json()["syncs"] == ["201", "404"]
    assert missing.status_code == 404 and "message" in missing.json()
    assert [d["id"] for d in filtered] == ["4"]


def test_trigger_by_id_by_slug_and_by_id_in_the_body(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        by_path = http.post(f"{API}/syncs/201/trigger")  # no body at all
        by_slug = http.post(f"{API}/syncs/trigger", json={"syncSlug": "hubspot-marketing-contacts"})
        by_id = http.post(f"{API}/syncs/trigger", json={"syncId": "201", "fullResync": True})
        run_ids = [r.json()["id"] for r in (by_path, by_slug, by_id)]
        runs = http.get(f"{API}/syncs/201/runs").json()["data"]
    assert all(r.status_code == 200 for r in (by_path, by_slug, by_id))
    assert all(run_id.isdigit() for run_id in run_ids) and len(set(run_ids)) == 3
    assert sorted(r["id"] for r in runs) == sorted(run_ids)
    assert sandbox.trigger_counts() == {"201": 3}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/syncs/trigger", {}, 422),
        ("/syncs/trigger", {"syncId": 201}, 422),
        ("/syncs/trigger", {"syncSlug": "hubspot-marketing-contacts", "fullResync": "yes"}, 422),
        ("/syncs/trigger", {"syncId": "201", "syncSlug": "braze-engagement-users"}, 422),
        ("/syncs/trigger", ["201"], 422),
        ("/syncs/trigger", b"{not json", 400),
        ("/syncs/201/trigger", {"resetCDC": 1}, 422),
        ("/syncs/201/trigger", b"{not json", 400),
    ],
    ids=[
        "neither-id-nor-slug",
        "numeric-sync-id",
        "string-full-resync",
        "id-and-slug-disagree",
        "array-body",
        "not-json",
        "numeric-reset-cdc",
        "not-json-by-path",
    ],
)
def test_malformed_triggers_are_refused(
    sandbox: SandboxProcess, path: str, body: object, status: int
) -> None:
    with sandbox.client() as http:
        if isinstance(body, bytes):
            response = http.post(API + path, content=body)
        else:
            response = http.post(API + path, json=body)
    _assert_validation_error(response, status)
    assert sandbox.trigger_counts() == {}


def test_unknown_syncs_cannot_be_triggered(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        by_path = http.post(f"{API}/syncs/999/trigger")
        by_slug = http.post(f"{API}/syncs/trigger", json={"syncSlug": "nope"})
        by_id = http.post(f"{API}/syncs/trigger", json={"syncId": "999"})
    for response in (by_path, by_slug, by_id):
        assert response.status_code == 404 and "not found" in response.json()["message"]
    assert sandbox.trigger_counts() == {}


def test_runs_list_newest_first_with_limit_order_and_run_id(sandbox: SandboxProcess) -> None:
    # No warehouse yet: every run fails quickly in querying, which is all this contract needs.
    with sandbox.client() as http:
        run_ids = [trigger(http, "401") for _ in range(7)]
        last = wait_for_run(http, "401", run_ids[-1])
        default = http.get(f"{API}/syncs/401/runs").json()["data"]
        limited = http.get(f"{API}/syncs/401/runs", params={"limit": 2}).json()["data"]
        paged = http.get(f"{API}/syncs/401/runs", params={"limit": 2, "offset": 2}).json()["data"]
        by_created = http.get(f"{API}/syncs/401/runs", params={"orderBy": "createdAt", "limit": 10})
        by_finish = http.get(f"{API}/syncs/401/runs", params={"orderBy": "finishedAt", "limit": 10})
        one = http.get(f"{API}/syncs/401/runs", params={"runId": run_ids[2]}).json()["data"]
        unknown = http.get(f"{API}/syncs/401/runs", params={"runId": "424242"})
        _assert_validation_error(http.get(f"{API}/syncs/401/runs", params={"orderBy": "status"}))
        _assert_validation_error(http.get(f"{API}/syncs/401/runs", params={"limit": "-1"}))
        sync = http.get(f"{API}/syncs/401").json()
    newest_first = list(reversed(run_ids))
    assert [r["id"] for r in default] == newest_first[:5]
    assert [r["id"] for r in limited] == newest_first[:2]
    assert [r["id"] for r in paged] == newest_first[2:4]
    assert [r["id"] for r in by_created.json()["data"]] == newest_first
    assert [r["id"] for r in by_finish.json()["data"]] == newest_first
    assert [r["id"] for r in one] == [run_ids[2]]
    assert unknown.status_code == 200 and unknown.json() == {"data": []}
    for run in default:
        assert run.keys() >= RUN_FIELDS
        assert run["status"] == "failed" and "mart_braze_users" in run["error"]
    assert (sync["status"], sync["lastRunAt"]) == ("failed", last["createdAt"])


def test_reset_forgets_runs_and_trigger_counts(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        run_id = trigger(http, "301")
        wait_for_run(http, "301", run_id)
        assert http.post("/sandbox/reset").status_code == 200
        runs = http.get(f"{API}/syncs/301/runs").json()
        unknown = http.get(f"{API}/syncs/301/runs", params={"runId": run_id}).json()
        newer = trigger(http, "301")
        listed = get_run(http, "301", newer)
    assert runs == {"data": []} and unknown == {"data": []}
    assert sandbox.trigger_counts() == {"301": 1}
    assert int(newer) > int(run_id)  # run ids are never reused
    assert listed["id"] == newer


def test_missing_sync_ids_and_slugs_are_derived() -> None:
    edits = {"braze_users": {"sync_id": None}, "salesforce_accounts": {"sync_slug": None}}
    declared = [d.model_copy(update=edits.get(d.key, {})) for d in _declared()]
    definitions = {s.destination.key: s for s in sync_definitions(declared)}
    braze, accounts = definitions["braze_users"], definitions["salesforce_accounts"]
    assert braze.slug == "braze-engagement-users"
    assert int(braze.id) > max(int(d.sync_id) for d in declared if d.sync_id)
    assert (accounts.id, accounts.slug) == ("101", "salesforce-accounts")
    assert definitions["hubspot_contacts"].id == "201"


def test_the_declared_staging_twins_are_served_without_any_setting(
    sandbox: SandboxProcess,
) -> None:
    """The module's sandbox starts without ACTIVATION_SANDBOX_STAGING_SYNCS: the twins come from
    `staging` in destinations.yaml alone, on the production sync's model, writing to
    `<object>_staging`."""
    with sandbox.client() as http:
        syncs = {s["slug"]: s for s in http.get(f"{API}/syncs").json()["data"]}
    for d in _declared():
        assert d.staging is not None
        twin, production = syncs[d.staging.sync_slug], syncs[d.sync_slug]
        assert twin["id"] == d.staging.sync_id
        assert twin["modelId"] == production["modelId"]
        assert twin["configuration"]["object"] == f"{d.object}_staging"
        assert twin["configuration"]["mappings"] == production["configuration"]["mappings"]
        assert twin["destinationId"] == production["destinationId"]


def test_a_staging_run_writes_the_staging_object_only(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, "mart_hubspot_contacts", 7)
    with sandbox.client() as http:
        run = sync_once(http, "404")
    assert run["status"] == "success", run
    assert len(sandbox.records("hubspot", "contacts_staging")) == 7
    assert sandbox.records("hubspot", "contacts") == {}


def test_staging_twins_follow_the_declaration() -> None:
    by_key = {d.key: d for d in _declared()}
    hubspot = by_key["hubspot_contacts"]
    assert hubspot.staging is not None
    declared = [
        by_key["salesforce_accounts"].model_copy(update={"staging": None}),
        hubspot.model_copy(
            update={"staging": hubspot.staging.model_copy(update={"sync_id": None})}
        ),
        by_key["braze_users"].model_copy(update={"sync_id": None}),
        by_key["iterable_users"],
    ]
    served = {s.destination.key: s for s in served_sync_definitions(declared)}
    assert "salesforce_accounts_staging" not in served
    # Ids generated for syncs declared by slug only never reuse a declared id, staging included.
    declared_ids = {s.id for s in served.values()} - {
        served["hubspot_contacts_staging"].id,
        served["braze_users"].id,
    }
    generated = [int(served["braze_users"].id), int(served["hubspot_contacts_staging"].id)]
    assert min(generated) > max(int(i) for i in declared_ids) and len(set(generated)) == 2
    assert served["hubspot_contacts_staging"].slug == "hubspot-marketing-contacts-staging"
    assert served["iterable_users_staging"].id == "405"
    assert served["hubspot_contacts_staging"].model_id == served["hubspot_contacts"].model_id
