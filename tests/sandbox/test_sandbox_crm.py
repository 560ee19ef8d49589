"""The CRM stand-ins: batch limits per API, record validation, what they keep, their endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from activation.sandbox.context import SandboxStore
from activation.sandbox.crm import (
    ITERABLE_BATCH_SIZE_VAR,
    BatchTooLargeError,
    CrmStandIns,
    record_problem,
)
from activation.sandbox.launcher import SandboxProcess
from tests.support.sandbox_marts import (
    build_mart,
    counts,
    crm_calls,
    destination,
    mart_records,
    reset,
    running_sandbox,
    sync_once,
)

ITERABLE = destination("iterable_users")  # sync 301
CONTACTS = destination("salesforce_contacts")  # sync 102
ACCOUNTS = destination("salesforce_accounts")  # sync 101


@pytest.fixture(scope="module")
def module_sandbox(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SandboxProcess]:
    """Iterable's batch size is configurable; 40 makes its batching visible with few rows."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ITERABLE_BATCH_SIZE_VAR, "40")
        yield from running_sandbox(tmp_path_factory.mktemp("crm"))


@pytest.fixture
def sandbox(module_sandbox: SandboxProcess) -> SandboxProcess:
    return reset(module_sandbox)


@pytest.fixture
def crm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CrmStandIns]:
    """The stand-ins in process, on their own store, with the default batch sizes."""
    monkeypatch.delenv(ITERABLE_BATCH_SIZE_VAR, raising=False)
    store = SandboxStore(tmp_path / "sandbox.duckdb")
    try:
        yield CrmStandIns(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("fields", "rejected"),
    [
        ({"email": "ada.lovelace.1@example.com"}, False),
        ({"email": "a@b.co"}, False),
        ({"first_name": "no email mapped"}, False),
        ({"email": "not-an-email"}, True),
        ({"email": "bob@@example"}, True),
        ({"email": "bob@example"}, True),
        ({"email": "bo b@example.com"}, True),
        ({"email": ""}, True),
        ({"email": None}, True),
    ],
)
def test_only_a_mapped_invalid_email_is_a_record_problem(fields: dict, rejected: bool) -> None:
    problem = record_problem(fields)
    assert (problem is not None) == rejected
    if rejected:
        assert problem.startswith("INVALID_EMAIL")


def test_a_batch_above_the_api_limit_is_refused(crm: CrmStandIns) -> None:
    records = [{"id": f"r{i}", "fields": {"email": f"r{i}@example.com"}} for i in range(101)]
    with pytest.raises(BatchTooLargeError, match="hubspot accepts at most 100"):
        crm.upsert("hubspot", "contacts", records)
    with pytest.raises(BatchTooLargeError, match="braze accepts at most 75"):
        crm.delete("braze", "users", [r["id"] for r in records[:76]])
    assert crm.records("hubspot", "contacts") == [] and crm.calls("hubspot") == []
    assert crm.limits == {"salesforce": 5000, "hubspot": 100, "braze": 75, "iterable": 1000}


def test_upserts_replace_and_deletes_remove_per_object(crm: CrmStandIns) -> None:
    results = crm.upsert(
        "salesforce",
        "Contact",
        [
            {"id": "c1", "fields": {"email": "c1@example.com", "first_name": "Ann"}},
            {"id": "c2", "fields": {"email": "nope", "first_name": "Bo"}},
        ],
    )
    crm.upsert("salesforce", "Account", [{"id": "c1", "fields": {"account_name": "Acme"}}])
    crm.upsert("salesforce", "Contact", [{"id": "c1", "fields": {"email": "c1@example.com"}}])
    crm.delete("salesforce", "Account", ["c1", "never-existed"])
    assert [(r.id, r.ok) for r in results] == [("c1", True), ("c2", False)]
    assert crm.records("salesforce", "Contact") == [
        {"id": "c1", "object": "Contact", "fields": {"email": "c1@example.com"}}
    ]
    assert crm.records("salesforce", "Account") == []
    calls = [
        (c["operation"], c["object"], c["batch_size"], c["rejected"])
        for c in crm.calls("salesforce")
    ]
    assert calls == [
        ("upsert", "Contact", 2, 1),
        ("upsert", "Account", 1, 0),
        ("upsert", "Contact", 1, 0),
        ("delete", "Account", 2, 0),
    ]


def test_iterable_batch_size_comes_from_the_environment(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, ITERABLE.mart, 95)
    with sandbox.client() as http:
        run = sync_once(http, "301")
        calls = crm_calls(http, "iterable")
        destination_config = http.get("/hightouch/api/v1/destinations/3").json()["configuration"]
    assert counts(run, "successfulRows") == (95, 0, 0)
    assert [c["batch_size"] for c in calls] == [40, 40, 15]
    assert destination_config == {"batchSize": 40}
    assert sandbox.records("iterable", "users") == mart_records(sandbox.data_dir, ITERABLE)


def test_records_endpoint_lists_one_object_sorted_by_id(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, CONTACTS.mart, 12)
    build_mart(sandbox.data_dir, ACCOUNTS.mart, 3)
    with sandbox.client() as http:
        sync_once(http, "102")
        sync_once(http, "101")
        contacts = http.get(
            "/sandbox/destinations/salesforce/records", params={"object": "Contact"}
        ).json()
        everything = http.get("/sandbox/destinations/salesforce/records").json()
        unknown = http.get("/sandbox/destinations/marketo/records")
        unknown_calls = http.get("/sandbox/destinations/marketo/calls")
    ids = [r["id"] for r in contacts["records"]]
    assert contacts["count"] == 12 and ids == sorted(ids)
    assert {r["object"] for r in contacts["records"]} == {"Contact"}
    assert contacts["records"][0] == {
        "id": "C0000000",
        "object": "Contact",
        "fields": {
            "account_id": "A000000",
            "email": "person.0@example.com",
            "first_name": "First0",
            "last_name": "Last0",
            "lifecycle_stage": "lead",
        },
    }
    assert everything["count"] == 15
    assert unknown.status_code == 404 and "marketo" in unknown.json()["message"]
    assert unknown_calls.status_code == 404


def test_reset_clears_records_and_calls(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, ACCOUNTS.mart, 4)
    with sandbox.client() as http:
        sync_once(http, "101")
        assert len(crm_calls(http, "salesforce")) == 1
        reset(sandbox)
        calls = crm_calls(http, "salesforce")
        again = sync_once(http, "101")
    assert calls == []
    # The Hightouch snapshot was reset too, so the records are sent again in full.
    assert counts(again, "plannedRows") == (4, 0, 0)
    assert len(sandbox.records("salesforce", "Account")) == 4
