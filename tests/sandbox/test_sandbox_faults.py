"""Fault injection in the sandbox, each kind observed over real HTTP with httpx.

HTTP faults in front of the stand-ins (status, hang, reset, malformed JSON, HTML), Hightouch run
outcome faults, CRM outages the run engine retries, Airbyte job outcomes, the control endpoint
itself, and the per-path request counter.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from activation.lib.environment import SANDBOX_AIRBYTE_CONNECTION_ID, SANDBOX_AIRBYTE_REST_PREFIX
from activation.sandbox.launcher import SandboxProcess, start_sandbox
from tests.support.sandbox_marts import (
    API,
    build_mart,
    counts,
    destination,
    get_run,
    mart_records,
    reset,
    running_sandbox,
    trigger,
    wait_for_run,
)

HUBSPOT = destination("hubspot_contacts")  # sync 201, batches of 100
ACCOUNTS = destination("salesforce_accounts")  # sync 101, salesforce, batches of 5,000
REST = SANDBOX_AIRBYTE_REST_PREFIX
RUNS_101 = f"{API}/syncs/101/runs"


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    yield from running_sandbox(tmp_path_factory.mktemp("faults"), "--rows", "50")


@pytest.fixture
def sandbox(module_sandbox: SandboxProcess) -> SandboxProcess:
    """This module's sandbox, reset before each test: no faults, runs, counts or records."""
    return reset(module_sandbox)


@pytest.fixture
def http(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with sandbox.client() as client:
        yield client


def only_fault(sandbox: SandboxProcess) -> dict[str, Any]:
    (fault,) = sandbox.faults()
    return fault


# -- HTTP status faults ---------------------------------------------------------------------------


def test_429_with_retry_after_seconds_hits_the_next_call_only(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="status", status=429, retry_after=3, path=RUNS_101)
    throttled = http.get(RUNS_101)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "3"
    assert throttled.headers["content-type"] == "application/json"
    assert "rate limit" in throttled.json()["message"].lower()
    assert http.get(RUNS_101).status_code == 200
    fault = only_fault(sandbox)
    assert fault | {"id": None} == {
        "id": None,
        "kind": "status",
        "spec": {"kind": "status", "status": 429, "retry_after": 3, "path": RUNS_101},
        "count": 1,
        "remaining": 0,
        "hits": 1,
    }


def test_429_with_an_http_date_and_without_retry_after(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    sandbox.inject_fault(kind="status", status=429, retry_after=when, path=RUNS_101)
    sandbox.inject_fault(kind="status", status=429, path=RUNS_101)
    dated, bare = http.get(RUNS_101), http.get(RUNS_101)
    assert (dated.status_code, dated.headers["retry-after"]) == (429, when)
    assert bare.status_code == 429 and "retry-after" not in bare.headers
    assert http.get(RUNS_101).status_code == 200


@pytest.mark.parametrize("status", [500, 502, 503, 504, 400, 401, 403, 404, 422])
def test_status_faults_answer_a_json_error_and_the_trigger_never_lands(
    sandbox: SandboxProcess, http: httpx.Client, status: int
) -> None:
    sandbox.inject_fault(kind="status", status=status, sync_id="101", method="POST")
    response = http.post(f"{API}/syncs/101/trigger", json={})
    assert response.status_code == status
    assert isinstance(response.json()["message"], str)
    assert sandbox.trigger_counts() == {}
    assert http.post(f"{API}/syncs/101/trigger", json={}).status_code == 200
    assert sandbox.trigger_counts() == {"101": 1}


def test_a_status_fault_on_airbyte_answers_problem_json_for_count_calls(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="status", status=503, path=f"{REST}/jobs", method="GET", count=2)
    answers = [http.get(f"{REST}/jobs") for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["content-type"] == "application/problem+json"
    assert answers[0].json()["status"] == 503 and answers[0].json()["title"]
    assert only_fault(sandbox)["hits"] == 2


def test_a_custom_body_replaces_the_default(sandbox: SandboxProcess, http: httpx.Client) -> None:
    body = {"message": "Sync is disabled", "code": "SYNC_DISABLED"}
    sandbox.inject_fault(kind="status", status=400, path=f"{API}/syncs", body=body)
    response = http.get(f"{API}/syncs")
    assert (response.status_code, response.json()) == (400, body)


# -- hang, reset, malformed JSON, HTML ------------------------------------------------------------


def test_a_hang_past_the_client_timeout_before_the_stand_in_never_triggers(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="hang", seconds=1.0, sync_id="101")
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"{API}/syncs/101/trigger", json={}, timeout=0.3)
    time.sleep(1.2)  # the hang is over: a client that hung up is dropped unseen
    assert sandbox.trigger_counts() == {}


def test_a_hang_shorter_than_the_client_timeout_answers_late(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="hang", seconds=0.6, path=RUNS_101)
    began = time.monotonic()
    response = http.get(RUNS_101, timeout=5)
    assert response.status_code == 200 and response.json() == {"data": []}
    assert time.monotonic() - began >= 0.6


def test_a_hang_after_the_stand_in_acted_records_the_trigger_the_client_never_saw(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="hang", seconds=1.0, sync_id="101", phase="after")
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"{API}/syncs/101/trigger", json={}, timeout=0.3)
    assert sandbox.trigger_counts() == {"101": 1}
    assert len(http.get(RUNS_101).json()["data"]) == 1


@pytest.mark.parametrize(("phase", "triggers"), [("before", {}), ("after", {"101": 1})])
def test_a_reset_drops_the_connection_without_an_answer(
    sandbox: SandboxProcess, http: httpx.Client, phase: str, triggers: dict[str, int]
) -> None:
    """Pins `fault_http.drop_connection`, which reaches uvicorn's transport through `receive`."""
    sandbox.inject_fault(kind="reset", sync_id="101", phase=phase)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.post(f"{API}/syncs/101/trigger", json={})
    assert sandbox.trigger_counts() == triggers
    assert http.get(RUNS_101).status_code == 200  # the server itself is fine
    assert "Exception in ASGI application" not in sandbox.log_path.read_text()


def test_malformed_json_is_a_200_whose_body_does_not_parse(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="malformed_json", path=f"{API}/syncs", method="GET")
    sandbox.inject_fault(kind="malformed_json", path=f"{API}/syncs", phase="after")
    for _ in range(2):
        response = http.get(f"{API}/syncs")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        with pytest.raises(ValueError):
            response.json()
    whole = http.get(f"{API}/syncs").text
    assert whole.startswith(response.text) and len(response.text) < len(whole)


def test_html_is_a_502_error_page(sandbox: SandboxProcess, http: httpx.Client) -> None:
    sandbox.inject_fault(kind="html", path_regex=r"/syncs/\d+/runs$")
    response = http.get(RUNS_101)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in response.text
    with pytest.raises(ValueError):
        response.json()


# -- targets --------------------------------------------------------------------------------------


def test_a_sync_target_hits_every_call_naming_that_sync_and_no_other(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="status", status=503, sync_id="101", count=10)
    assert http.get(f"{API}/syncs/201/runs").status_code == 200
    assert http.post(f"{API}/syncs/201/trigger", json={}).status_code == 200
    assert http.post(f"{API}/syncs/trigger", json={"syncId": "201"}).status_code == 200
    assert http.get(f"{API}/syncs").status_code == 200
    faulted = [
        http.get(f"{API}/syncs/101"),
        http.get(RUNS_101),
        http.post(f"{API}/syncs/101/trigger", json={}),
        http.post(f"{API}/syncs/trigger", json={"syncId": "101"}),
        http.post(f"{API}/syncs/trigger", json={"syncSlug": ACCOUNTS.sync_slug}),
    ]
    assert [r.status_code for r in faulted] == [503] * 5
    assert sandbox.trigger_counts() == {"201": 2}
    assert only_fault(sandbox)["hits"] == 5


def test_a_method_filter_and_control_paths_are_never_faulted(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="status", status=500, path_regex=".*", method="POST", count=5)
    assert http.get(RUNS_101).status_code == 200
    assert http.get("/sandbox/health").status_code == 200
    assert http.post("/sandbox/scenario", json={}).status_code == 200
    assert only_fault(sandbox)["hits"] == 0
    assert http.post(f"{API}/syncs/101/trigger", json={}).status_code == 500


def test_staging_syncs_are_fault_targets_too(
    tmp_path: Path,
) -> None:
    """The fault targets are the syncs the stand-in serves, staging twins included."""
    staging_sandbox = start_sandbox(tmp_path / "data", "--phase-seconds", "0.05")
    try:
        with staging_sandbox.client() as client:
            syncs = client.get(f"{API}/syncs").json()["data"]
            staging = next(s for s in syncs if s["slug"].endswith("-staging"))
            staging_sandbox.inject_fault(kind="status", status=503, sync_id=str(staging["id"]))
            by_slug = client.post(f"{API}/syncs/trigger", json={"syncSlug": staging["slug"]})
            assert by_slug.status_code == 503
            assert staging_sandbox.trigger_counts() == {}
    finally:
        staging_sandbox.stop()


# -- the control endpoint -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "kind"),
        ({"kind": "teleport"}, "kind"),
        ({"kind": "status", "path": "/x"}, "status"),
        ({"kind": "status", "status": 200, "path": "/x"}, "status"),
        ({"kind": "status", "status": 429, "retry_after": "soon", "path": "/x"}, "retry_after"),
        ({"kind": "status", "status": 500}, "path"),
        ({"kind": "status", "status": 500, "path": "/x", "sync_id": "101"}, "path"),
        ({"kind": "status", "status": 500, "path": "/sandbox/reset"}, "path"),
        ({"kind": "hang", "path": "/x"}, "seconds"),
        ({"kind": "reset", "path_regex": "(", "count": 1}, "path_regex"),
        ({"kind": "reset", "path": "/x", "count": 0}, "count"),
        ({"kind": "reset", "path": "/x", "colour": "red"}, "colour"),
        ({"kind": "run", "sync_id": "999", "outcome": "failed"}, "sync_id"),
        ({"kind": "run", "sync_id": "101"}, "outcome"),
        ({"kind": "run", "sync_id": "101", "unknown_status": "success"}, "unknown_status"),
        ({"kind": "run", "sync_id": "101", "reject_ratio": 1.5}, "reject_ratio"),
        ({"kind": "run", "sync_id": "101", "reject_rows": 2, "reject_ratio": 0.5}, "reject_rows"),
        (
            {"kind": "run", "sync_id": "101", "outcome": "failed", "report_progress": False},
            "report_progress",
        ),
        ({"kind": "crm_status", "destination_type": "marketo"}, "destination_type"),
        ({"kind": "airbyte_job", "outcome": "exploded"}, "outcome"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(
    sandbox: SandboxProcess, http: httpx.Client, spec: dict[str, Any], field: str
) -> None:
    response = http.post("/sandbox/faults", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert field in response.json()["message"]
    assert sandbox.faults() == []


def test_faults_are_listed_and_cleared_by_delete_and_by_reset(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    first = sandbox.inject_fault(kind="reset", path="/airbyte", count=3)
    second = sandbox.inject_fault(kind="run", sync_id="101", outcome="failed")
    assert [(f["id"], f["kind"], f["remaining"]) for f in sandbox.faults()] == [
        (first["id"], "reset", 3),
        (second["id"], "run", 1),
    ]
    assert second["id"] > first["id"]
    sandbox.clear_faults()
    assert sandbox.faults() == []
    sandbox.inject_fault(kind="reset", path="/airbyte")
    reset(sandbox)
    assert sandbox.faults() == []
    with pytest.raises(ValueError, match="kind"):
        sandbox.inject_fault(kind="nope")


def test_requests_are_counted_per_method_and_path(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="status", status=503, path=RUNS_101)
    for _ in range(3):
        http.get(RUNS_101)
    http.post(f"{API}/syncs/101/trigger", json={})
    http.get("/sandbox/health")
    assert sandbox.request_counts() == {
        f"GET {RUNS_101}": 3,
        f"POST {API}/syncs/101/trigger": 1,
    }
    sandbox.clear_request_counts()
    assert sandbox.request_counts() == {}


# -- Hightouch run outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["failed", "cancelled", "interrupted"])
def test_a_run_ended_early_delivers_nothing_and_only_the_next_run_is_hit(
    sandbox: SandboxProcess, http: httpx.Client, outcome: str
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 120)
    sandbox.inject_fault(kind="run", sync_id="201", outcome=outcome, error=f"boom ({outcome})")
    run = wait_for_run(http, "201", trigger(http, "201"))
    assert (run["status"], run["error"]) == (outcome, f"boom ({outcome})")
    assert run["finishedAt"] is not None
    assert counts(run, "successfulRows") == (0, 0, 0)
    assert sandbox.records("hubspot", "contacts") == {}
    after = wait_for_run(http, "201", trigger(http, "201"))
    assert (after["status"], counts(after, "successfulRows")) == ("success", (120, 0, 0))
    assert sandbox.records("hubspot", "contacts") == mart_records(sandbox.data_dir, HUBSPOT)
    assert only_fault(sandbox)["hits"] == 1


def test_a_warning_outcome_delivers_everything_and_ends_warning(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 30)
    sandbox.inject_fault(kind="run", sync_id="201", outcome="warning")
    run = wait_for_run(http, "201", trigger(http, "201"))
    assert run["status"] == "warning" and "sandbox fault" in run["error"]
    assert counts(run, "failedRows") == (0, 0, 0)
    assert sandbox.records("hubspot", "contacts") == mart_records(sandbox.data_dir, HUBSPOT)


def test_an_unknown_status_is_reported_for_the_given_number_of_polls(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 10)
    sandbox.inject_fault(
        kind="run", sync_id="201", unknown_status="mystery_status", unknown_polls=3
    )
    run_id = trigger(http, "201")
    statuses: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not statuses or statuses[-1] != "success"):
        statuses.append(get_run(http, "201", run_id)["status"])
        time.sleep(0.02)
    assert statuses.count("mystery_status") == 3, statuses
    assert statuses[-1] == "success"
    first = statuses.index("mystery_status")
    assert statuses[first : first + 3] == ["mystery_status"] * 3


def test_rejected_rows_are_counted_and_never_reach_the_crm_then_retry(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 250)
    intended = mart_records(sandbox.data_dir, HUBSPOT)
    sandbox.inject_fault(kind="run", sync_id="201", reject_ratio=0.1)
    run = wait_for_run(http, "201", trigger(http, "201"))
    assert run["status"] == "warning" and "INJECTED_REJECTION" in run["error"]
    assert counts(run, "failedRows") == (25, 0, 0)
    assert counts(run, "successfulRows") == (225, 0, 0)
    held = sandbox.records("hubspot", "contacts")
    assert len(held) == 225
    assert held == {key: intended[key] for key in held}  # exactly the mart's rows, once each
    retry = wait_for_run(http, "201", trigger(http, "201"))
    assert retry["status"] == "success" and counts(retry, "plannedRows") == (25, 0, 0)
    assert sandbox.records("hubspot", "contacts") == intended


def test_rejecting_every_row_fails_the_run(sandbox: SandboxProcess, http: httpx.Client) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 40)
    sandbox.inject_fault(kind="run", sync_id="201", reject_rows=40)
    run = wait_for_run(http, "201", trigger(http, "201"))
    assert run["status"] == "failed" and counts(run, "failedRows") == (40, 0, 0)
    assert sandbox.records("hubspot", "contacts") == {}


def test_a_long_run_stays_processing_for_the_given_seconds(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 10)
    sandbox.inject_fault(kind="run", sync_id="201", running_seconds=1.5)
    sandbox.inject_fault(kind="run", sync_id="201", running_seconds=1.0, report_progress=False)
    held, silent = trigger(http, "201"), trigger(http, "201")
    time.sleep(0.8)
    early = get_run(http, "201", held)
    assert early["status"] == "processing" and 0.2 < early["completionRatio"] < 0.9
    time.sleep(0.4)
    later = get_run(http, "201", held)
    assert later["completionRatio"] > early["completionRatio"]
    run = wait_for_run(http, "201", held)
    started = datetime.fromisoformat(run["startedAt"])
    finished = datetime.fromisoformat(run["finishedAt"])
    assert (run["status"], run["completionRatio"]) == ("success", 1.0)
    assert (finished - started).total_seconds() >= 1.5
    time.sleep(0.6)  # the second run (queued behind the first) is now in its hold
    quiet = get_run(http, "201", silent)
    assert (quiet["status"], quiet["completionRatio"]) == ("processing", 0.0)
    assert wait_for_run(http, "201", silent)["status"] == "success"


# -- CRM stand-in outages -------------------------------------------------------------------------


def test_a_crm_outage_longer_than_the_engines_retries_fails_the_run(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    build_mart(sandbox.data_dir, ACCOUNTS.mart, 20)
    sandbox.inject_fault(kind="crm_status", destination_type="salesforce", status=503, count=3)
    run = wait_for_run(http, "101", trigger(http, "101"))
    assert run["status"] == "failed"
    assert "salesforce" in run["error"] and "503" in run["error"] and "3 attempts" in run["error"]
    assert sandbox.records("salesforce", "Account") == {}
    assert only_fault(sandbox)["hits"] == 3


def test_a_short_crm_outage_is_retried_and_the_run_succeeds(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    build_mart(sandbox.data_dir, ACCOUNTS.mart, 20)
    sandbox.inject_fault(kind="crm_status", destination_type="salesforce", count=2)
    run = wait_for_run(http, "101", trigger(http, "101"))
    assert run["status"] == "success" and counts(run, "successfulRows") == (20, 0, 0)
    assert sandbox.records("salesforce", "Account") == mart_records(sandbox.data_dir, ACCOUNTS)
    assert only_fault(sandbox)["hits"] == 2


def test_a_crm_client_error_is_not_retried(sandbox: SandboxProcess, http: httpx.Client) -> None:
    build_mart(sandbox.data_dir, ACCOUNTS.mart, 5)
    sandbox.inject_fault(kind="crm_status", destination_type="salesforce", status=400, count=3)
    run = wait_for_run(http, "101", trigger(http, "101"))
    assert run["status"] == "failed" and "HTTP 400" in run["error"]
    assert only_fault(sandbox)["remaining"] == 2


# -- Airbyte job outcomes -------------------------------------------------------------------------


def start_job(http: httpx.Client) -> httpx.Response:
    return http.post(
        f"{REST}/jobs", json={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID, "jobType": "sync"}
    )


def job_status(http: httpx.Client, job_id: int, until: set[str], timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"{REST}/jobs/{job_id}").json()["status"]
        if status in until:
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {status} after {timeout}s")


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_an_airbyte_job_can_end_failed_or_cancelled_landing_nothing(
    sandbox: SandboxProcess, http: httpx.Client, outcome: str
) -> None:
    before = sorted(p.name for p in (sandbox.data_dir / "raw").glob("*.parquet"))
    sandbox.inject_fault(kind="airbyte_job", outcome=outcome)
    job = start_job(http).json()
    assert job_status(http, job["jobId"], {"succeeded", "failed", "cancelled"}) == outcome
    (listed,) = http.get("/sandbox/airbyte/jobs").json()
    assert listed["rowsByStream"] == {}
    assert (listed["error"] is not None) == (outcome == "failed")
    assert sorted(p.name for p in (sandbox.data_dir / "raw").glob("*.parquet")) == before
    following = start_job(http).json()
    assert job_status(http, following["jobId"], {"succeeded", "failed"}) == "succeeded"


def test_an_airbyte_job_can_stay_running_and_block_a_second_job_with_409(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    sandbox.inject_fault(kind="airbyte_job", outcome="running")
    job_id = start_job(http).json()["jobId"]
    assert job_status(http, job_id, {"running"}) == "running"
    time.sleep(0.5)  # ten phases: a normal job would have finished
    assert http.get(f"{REST}/jobs/{job_id}").json()["status"] == "running"
    conflict = start_job(http)
    assert conflict.status_code == 409 and conflict.json()["title"] == "try-again-later"
    assert http.delete(f"{REST}/jobs/{job_id}").json()["status"] == "cancelled"
    assert start_job(http).status_code == 200
