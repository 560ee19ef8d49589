"""Contract of the Airbyte stand-in, over real HTTP to a sandbox process.

Paths, status codes and JSON fields are the ones dagster-airbyte's `AirbyteWorkspace` reads; the
last test points the real `AirbyteWorkspace` at the stand-in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import dagster as dg
import duckdb
import httpx
import pytest
from dagster_airbyte import AirbyteWorkspace, load_airbyte_asset_specs
from dagster_airbyte.translator import AirbyteMetadataSet

from activation.lib.environment import (
    SANDBOX_AIRBYTE_CONFIG_PREFIX,
    SANDBOX_AIRBYTE_CONNECTION_ID,
    SANDBOX_AIRBYTE_REST_PREFIX,
    SANDBOX_AIRBYTE_WORKSPACE_ID,
)
from activation.sandbox import generator
from activation.sandbox.launcher import SandboxProcess, start_sandbox

REST = SANDBOX_AIRBYTE_REST_PREFIX
CONFIG = SANDBOX_AIRBYTE_CONFIG_PREFIX
TERMINAL = {"succeeded", "failed", "cancelled"}
BAD_CUSTOMER_ROWS = (
    generator.DUPLICATE_ID_ROWS + generator.NULL_EMAIL_ROWS + len(generator.MALFORMED_EMAILS)
)


@pytest.fixture
def slow_sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """Phases of 0.6 s: long enough to see each status and to cancel before landing."""
    process = start_sandbox(tmp_path / "slow", "--phase-seconds", "0.6", "--rows", "200")
    try:
        yield process
    finally:
        process.stop()


def trigger(http: httpx.Client) -> httpx.Response:
    return http.post(
        f"{REST}/jobs", json={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID, "jobType": "sync"}
    )


def wait_for_end(http: httpx.Client, job_id: int, timeout: float = 20.0) -> list[str]:
    """Poll the job until it is terminal; returns the distinct statuses seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"{REST}/jobs/{job_id}").json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in TERMINAL:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end within {timeout}s (seen {seen})")


def parquet_rows(path: Path) -> int:
    with duckdb.connect() as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM read_parquet(?)", [str(path)]
        ).fetchone()
    return int(count)


def assert_problem(response: httpx.Response, status: int, title: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] == title
    assert body["type"].endswith(f"#{title}") and body["detail"]


def test_token_workspace_and_destination(sandbox: SandboxProcess) -> None:
    with sandbox.client(token=None) as http:
        token = http.post(
            f"{REST}/applications/token", json={"client_id": "a", "client_secret": "b"}
        )
        assert token.status_code == 200
        assert token.json()["access_token"] and token.json()["token_type"] == "Bearer"
        assert_problem(
            http.post(f"{REST}/applications/token", json={"client_id": "a"}), 400, "bad-request"
        )

        workspace = http.get(f"{REST}/workspaces/{SANDBOX_AIRBYTE_WORKSPACE_ID}")
        assert workspace.status_code == 200
        assert workspace.json()["workspaceId"] == SANDBOX_AIRBYTE_WORKSPACE_ID
        assert_problem(http.get(f"{REST}/workspaces/not-a-workspace"), 404, "resource-not-found")

        connection = http.get(f"{REST}/connections/{SANDBOX_AIRBYTE_CONNECTION_ID}").json()
        destination = http.get(f"{REST}/destinations/{connection['destinationId']}")
        assert destination.status_code == 200
        assert destination.json()["destinationType"] == "duckdb"
        assert destination.json()["configuration"] == {"database": "warehouse", "schema": "raw"}
        assert_problem(http.get(f"{REST}/destinations/unknown"), 404, "resource-not-found")


def test_connections_list_is_paginated_with_an_empty_next_on_the_last_page(
    sandbox: SandboxProcess,
) -> None:
    with sandbox.client() as http:
        page = http.get(
            f"{REST}/connections", params={"workspaceIds": SANDBOX_AIRBYTE_WORKSPACE_ID, "limit": 1}
        )
        assert page.status_code == 200
        body = page.json()
        assert [c["connectionId"] for c in body["data"]] == [SANDBOX_AIRBYTE_CONNECTION_ID]
        assert body["data"][0]["name"] == "crm_postgres_to_warehouse"
        assert body["data"][0]["prefix"] == ""
        assert body["next"] == "" and body["previous"] == ""

        past_the_end = http.get(f"{REST}/connections", params={"limit": 1, "offset": 1}).json()
        assert past_the_end["data"] == [] and past_the_end["next"] == ""
        assert "offset=0" in past_the_end["previous"]

        other = http.get(f"{REST}/connections", params={"workspaceIds": "another-workspace"})
        assert other.json()["data"] == []
        assert_problem(http.get(f"{REST}/connections", params={"limit": 0}), 400, "bad-request")
        assert_problem(http.get(f"{REST}/connections", params={"limit": 101}), 400, "bad-request")


def test_configuration_api_describes_the_four_selected_streams(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        response = http.post(
            f"{CONFIG}/connections/get", json={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID}
        )
        assert response.status_code == 200
        details = response.json()
        assert details["connectionId"] == SANDBOX_AIRBYTE_CONNECTION_ID
        assert details["name"] == "crm_postgres_to_warehouse" and details["prefix"] == ""
        streams = details["syncCatalog"]["streams"]
        assert [s["stream"]["name"] for s in streams] == list(generator.STREAMS)
        schemas = generator.stream_json_schemas()
        for entry in streams:
            name = entry["stream"]["name"]
            assert entry["config"]["selected"] is True
            assert entry["stream"]["jsonSchema"] == schemas[name]
            assert entry["config"]["primaryKey"] == [[f"{name.removesuffix('s')}_id"]]
        destination = http.get(f"{REST}/destinations/{details['destinationId']}")
        assert destination.status_code == 200

        unknown = http.post(f"{CONFIG}/connections/get", json={"connectionId": "nope"})
        assert unknown.status_code == 404
        assert "nope" in unknown.json()["message"]
        assert http.post(f"{CONFIG}/connections/get", json={}).status_code == 422


def test_sync_job_goes_pending_running_succeeded_and_lands_the_streams(
    slow_sandbox: SandboxProcess,
) -> None:
    slow_sandbox.set_scenario(bad_rows=True)
    raw = slow_sandbox.data_dir / "raw"
    with slow_sandbox.client() as http:
        started = trigger(http)
        assert started.status_code == 200
        job = started.json()
        assert isinstance(job["jobId"], int) and job["status"] == "pending"
        assert job["jobType"] == "sync" and job["connectionId"] == SANDBOX_AIRBYTE_CONNECTION_ID
        assert_problem(trigger(http), 409, "try-again-later")

        assert wait_for_end(http, job["jobId"]) == ["pending", "running", "succeeded"]
        done = http.get(f"{REST}/jobs/{job['jobId']}").json()
        assert done["duration"].startswith("PT") and done["duration"].endswith("S")
        assert done["startTime"].endswith("Z") and done["lastUpdatedAt"] >= done["startTime"]

    counts = {stream: parquet_rows(raw / f"{stream}.parquet") for stream in generator.STREAMS}
    assert counts["customers"] == 200 + BAD_CUSTOMER_ROWS
    assert counts["accounts"] == generator.account_count(200)
    assert done["rowsSynced"] == sum(counts.values())
    assert done["bytesSynced"] == sum((raw / f"{s}.parquet").stat().st_size for s in counts)
    sandbox_jobs = httpx.get(f"{slow_sandbox.url}/sandbox/airbyte/jobs").json()
    assert sandbox_jobs[0]["rowsByStream"] == counts
    assert sandbox_jobs[0]["scenario"] == {"bad_rows": True, "changed_rows": 0}


def test_cancelled_job_ends_cancelled_without_landing(slow_sandbox: SandboxProcess) -> None:
    raw = slow_sandbox.data_dir / "raw"
    with slow_sandbox.client() as http:
        job_id = trigger(http).json()["jobId"]
        cancelled = http.delete(f"{REST}/jobs/{job_id}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        time.sleep(1.5)  # past both phases: the worker must not have landed or moved the job on
        assert http.get(f"{REST}/jobs/{job_id}").json()["status"] == "cancelled"
        assert not list(raw.glob("*.parquet"))

        # The connection is free again; cancelling a finished job changes nothing.
        second = trigger(http).json()["jobId"]
        assert wait_for_end(http, second)[-1] == "succeeded"
        assert http.delete(f"{REST}/jobs/{second}").json()["status"] == "succeeded"
        assert_problem(http.delete(f"{REST}/jobs/999999"), 404, "resource-not-found")


def test_jobs_list_filters_orders_and_paginates(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        ids = []
        for _ in range(3):
            ids.append(trigger(http).json()["jobId"])
            assert wait_for_end(http, ids[-1])[-1] == "succeeded"

        base = {
            "connectionId": SANDBOX_AIRBYTE_CONNECTION_ID,
            "workspaceIds": SANDBOX_AIRBYTE_WORKSPACE_ID,
        }
        newest_first = http.get(f"{REST}/jobs", params=base).json()
        assert [j["jobId"] for j in newest_first["data"]] == ids[::-1]
        assert newest_first["next"] == ""

        pages, params = [], {**base, "limit": 2, "orderBy": "createdAt|ASC"}
        while True:
            page = http.get(f"{REST}/jobs", params=params).json()
            pages.append([j["jobId"] for j in page["data"]])
            if not page["next"]:
                break
            assert urlparse(page["next"]).path == f"{REST}/jobs"
            params = {k: v[0] for k, v in parse_qs(urlparse(page["next"]).query).items()}
        assert pages == [ids[:2], ids[2:]]

        future = http.get(f"{REST}/jobs", params={**base, "createdAtStart": "2999-01-01T00:00:00Z"})
        assert future.json()["data"] == []
        past = http.get(f"{REST}/jobs", params={**base, "createdAtStart": "2000-01-01T00:00:00Z"})
        assert len(past.json()["data"]) == 3
        running = http.get(f"{REST}/jobs", params={**base, "status": "running"})
        assert running.json()["data"] == []

        assert_problem(
            http.get(f"{REST}/jobs", params={"connectionId": "unknown"}), 404, "resource-not-found"
        )
        assert_problem(http.get(f"{REST}/jobs", params={"orderBy": "id|UP"}), 400, "bad-request")
        assert_problem(http.get(f"{REST}/jobs/not-a-number"), 400, "bad-request")
        assert_problem(http.get(f"{REST}/jobs/424242"), 404, "resource-not-found")
        assert_problem(
            http.post(f"{REST}/jobs", json={"connectionId": "unknown", "jobType": "sync"}),
            404,
            "resource-not-found",
        )
        assert_problem(
            http.post(f"{REST}/jobs", json={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID}),
            400,
            "bad-request",
        )


def test_scenario_control_validates_and_reset_restores_it(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        assert http.get("/sandbox/scenario").json() == {"bad_rows": False, "changed_rows": 0}
        sandbox.set_scenario(bad_rows=True, changed_rows=5)
        assert http.get("/sandbox/scenario").json() == {"bad_rows": True, "changed_rows": 5}

        for body, field in [
            ({"bad_rows": "yes"}, "bad_rows"),
            ({"changed_rows": -1}, "changed_rows"),
            ({"changed_rows": 1.5}, "changed_rows"),
            ({"changed_rows": True}, "changed_rows"),
            ({"surprise": 1}, "surprise"),
            ([1, 2], "body"),
        ]:
            rejected = http.post("/sandbox/scenario", json=body)
            assert rejected.status_code == 422, body
            assert rejected.json()["field"] == field and field in rejected.json()["message"]
        assert http.get("/sandbox/scenario").json() == {"bad_rows": True, "changed_rows": 5}

        job_id = trigger(http).json()["jobId"]
        assert wait_for_end(http, job_id)[-1] == "succeeded"
        landed = sorted(p.name for p in (sandbox.data_dir / "raw").glob("*.parquet"))
        assert http.post("/sandbox/reset").status_code == 200
        assert http.get("/sandbox/scenario").json() == {"bad_rows": False, "changed_rows": 0}
        assert http.get("/sandbox/airbyte/jobs").json() == []
        assert_problem(http.get(f"{REST}/jobs/{job_id}"), 404, "resource-not-found")
        assert sorted(p.name for p in (sandbox.data_dir / "raw").glob("*.parquet")) == landed
        # Ids are never reused after a reset, so a stale id cannot name a new job.
        assert trigger(http).json()["jobId"] > job_id


def test_dagster_airbyte_workspace_loads_specs_and_syncs(sandbox: SandboxProcess) -> None:
    workspace = AirbyteWorkspace(
        rest_api_base_url=sandbox.url + REST,
        configuration_api_base_url=sandbox.url + CONFIG,
        workspace_id=SANDBOX_AIRBYTE_WORKSPACE_ID,
        poll_interval=0.05,
        poll_timeout=30,
        request_max_retries=0,
    )
    specs = load_airbyte_asset_specs(workspace)
    assert {spec.key for spec in specs} == {dg.AssetKey(s) for s in generator.STREAMS}
    for spec in specs:
        assert AirbyteMetadataSet.extract(spec.metadata).connection_id == (
            SANDBOX_AIRBYTE_CONNECTION_ID
        )
        assert "duckdb" in spec.kinds

    output = workspace.get_client().sync_and_poll(SANDBOX_AIRBYTE_CONNECTION_ID)
    assert output.job_details["status"] == "succeeded"
    assert output.job_details["rowsSynced"] > 0
    customers = sandbox.data_dir / "raw" / "customers.parquet"
    assert parquet_rows(customers) == 1000  # the sandbox's default rows, default scenario
