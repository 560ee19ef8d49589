"""Syncs under API faults: real Dagster steps, real HTTP to the sandbox with faults injected.

Each scenario asserts the step's final state, how many triggers the Hightouch stand-in received
for the sync (never more than one per intended sync), that the destination received exactly the
intended rows (nothing lost, nothing twice), and that the API token appears nowhere in the run's
event log or in the captured logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pytest

from activation.core.sync_path import TRIGGER_MARK
from activation.lib.destinations import load_destinations
from activation.lib.environment import (
    SANDBOX_AIRBYTE_CONNECTION_ID,
    SANDBOX_AIRBYTE_REST_PREFIX,
    SANDBOX_HIGHTOUCH_PREFIX,
)
from activation.lib.hightouch import IN_FLIGHT
from activation.resources import HightouchResource
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import run_chain
from tests.support.chain_support import sandbox_chain
from tests.support.polling import wait_for

TOKEN = "fault-test-token-3b7d91ce"
DESTINATION = next(d for d in load_destinations() if d.key == "iterable_users")
SYNC_ID = DESTINATION.sync_id or ""
SYNC_KEY = dg.AssetKey(["activate", DESTINATION.key])
SYNC_STEP = "activate__" + DESTINATION.key
RUNS_PATH = f"/syncs/{SYNC_ID}/runs"


@dataclass
class World:
    sandbox: SandboxProcess
    instance: dg.DagsterInstance
    definitions: dg.Definitions
    mart_rows: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {
        "HIGHTOUCH_API_TOKEN": TOKEN,
        "ACTIVATION_SYNC_RETRY_DELAY_SECONDS": "0.1",
        "ACTIVATION_AIRBYTE_POLL_TIMEOUT_SECONDS": "3",
    }
    with sandbox_chain(tmp_path_factory, "faults", env) as setup:
        chain = run_chain(setup.instance, console_log_level="CRITICAL")
        assert chain.success, chain.failed_steps
        from activation.definitions import build_definitions

        yield World(
            setup.sandbox,
            setup.instance,
            build_definitions(),
            _rows(setup.folder, DESTINATION.mart),
        )


def _rows(folder: Path, mart: str) -> int:
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as connection:
        return connection.execute(f"select count(*) from marts.{mart}").fetchone()[0]


@pytest.fixture(autouse=True)
def _no_faults_left(world: World) -> Iterator[None]:
    yield
    httpx.delete(world.sandbox.url + "/sandbox/faults").raise_for_status()

    # A run left going (the poll-timeout case) must not deliver rows into the next test.
    def none_in_flight() -> bool:
        runs = httpx.get(
            f"{world.sandbox.url}{SANDBOX_HIGHTOUCH_PREFIX}/syncs/{SYNC_ID}/runs",
            params={"limit": 5},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).json()["data"]
        return all(run["status"] not in IN_FLIGHT for run in runs)

    wait_for(f"every run of sync {SYNC_ID} to end", none_in_flight, 30, interval=0.2)


def inject(world: World, **spec: object) -> None:
    response = httpx.post(world.sandbox.url + "/sandbox/faults", json=spec)
    assert response.status_code == 201, response.text


def fast_hightouch(world: World, **overrides: object) -> HightouchResource:
    settings: dict[str, object] = {
        "api_base_url": world.sandbox.url + SANDBOX_HIGHTOUCH_PREFIX,
        "api_token": TOKEN,
        "app_url": world.sandbox.url + "/hightouch/app",
        "connect_timeout_seconds": 1.0,
        "read_timeout_seconds": 1.0,
        "max_retries": 2,
        "poll_interval_seconds": 0.05,
        "max_poll_interval_seconds": 0.5,
        "poll_timeout_seconds": 20.0,
    }
    settings.update(overrides)
    return HightouchResource(**settings)  # type: ignore[arg-type]


JOB = "fault_test_sync"


def sync_job_definitions(base: dg.Definitions, hightouch: HightouchResource) -> dg.Definitions:
    """The code location's assets and resources with a job running only the one sync."""
    return dg.Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        jobs=[dg.define_asset_job(JOB, selection=[SYNC_KEY])],
        resources={**(base.resources or {}), "hightouch": hightouch},
        executor=dg.in_process_executor,
    )


def with_hightouch(world: World, hightouch: HightouchResource) -> dg.Definitions:
    return sync_job_definitions(world.definitions, hightouch)


def sync_once(
    world: World, hightouch: HightouchResource | None = None, *, full_resync: bool = True
) -> dg.ExecuteInProcessResult:
    definitions = with_hightouch(world, hightouch or fast_hightouch(world))
    return definitions.resolve_job_def(JOB).execute_in_process(
        instance=world.instance,
        run_config={"ops": {SYNC_STEP: {"config": {"full_resync": full_resync}}}},
        raise_on_error=False,
    )


def triggers(world: World) -> int:
    return world.sandbox.trigger_counts().get(SYNC_ID, 0)


def delivered_since(world: World, calls_before: int) -> int:
    """Rows the CRM stand-in accepted since `calls_before` calls (rejected rows excluded)."""
    response = httpx.get(
        f"{world.sandbox.url}/sandbox/destinations/{DESTINATION.destination_type}/calls"
    )
    calls = response.json()["calls"][calls_before:]
    return sum(
        int(c["batch_size"]) - int(c.get("rejected") or 0)
        for c in calls
        if c.get("object") == DESTINATION.object
    )


def call_count(world: World) -> int:
    response = httpx.get(
        f"{world.sandbox.url}/sandbox/destinations/{DESTINATION.destination_type}/calls"
    )
    return int(response.json()["count"])


def assert_token_absent(world: World, result: dg.ExecuteInProcessResult, caplog) -> None:
    for entry in world.instance.all_logs(result.run_id):
        assert TOKEN not in repr(entry)
    assert TOKEN not in caplog.text


def run_log_text(world: World, run_id: str) -> str:
    return "\n".join(str(entry.user_message) for entry in world.instance.all_logs(run_id))


def step_events(result: dg.ExecuteInProcessResult, step_key: str, kind: str) -> int:
    return sum(
        1 for e in result.all_events if e.step_key == step_key and e.event_type_value == kind
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "expected a failed step"
    data = failures[-1].step_failure_data
    return f"{data.error.message if data.error else ''} {data.user_failure_data}"


RECOVERED = {
    "429 with Retry-After on the trigger": [
        {
            "kind": "status",
            "status": 429,
            "retry_after": 1,
            "sync_id": SYNC_ID,
            "method": "POST",
        }
    ],
    "429 without Retry-After on reads": [
        {"kind": "status", "status": 429, "path_regex": RUNS_PATH, "method": "GET", "count": 2}
    ],
    "500, 502, 503 and 504 on reads": [
        {"kind": "status", "status": status, "path_regex": RUNS_PATH, "method": "GET"}
        for status in (500, 502, 503, 504)
    ],
    "trigger answered 502 after it started the run": [
        {"kind": "status", "status": 502, "sync_id": SYNC_ID, "method": "POST", "phase": "after"}
    ],
    "connection reset after the trigger started the run": [
        {"kind": "reset", "sync_id": SYNC_ID, "method": "POST", "phase": "after"}
    ],
    "a read hangs past the client timeout": [
        {"kind": "hang", "seconds": 2.5, "path_regex": RUNS_PATH, "method": "GET"}
    ],
    "a read's connection is reset": [{"kind": "reset", "path_regex": RUNS_PATH, "method": "GET"}],
    "malformed JSON": [
        {"kind": "malformed_json", "path_regex": RUNS_PATH, "method": "GET", "phase": "after"}
    ],
    "an HTML error page from a proxy": [{"kind": "html", "path_regex": RUNS_PATH}],
    "an unknown run status": [
        {"kind": "run", "sync_id": SYNC_ID, "unknown_status": "mystery_status", "unknown_polls": 3}
    ],
    "a warning run with no failed rows": [
        {"kind": "run", "sync_id": SYNC_ID, "outcome": "warning"}
    ],
}


@pytest.mark.parametrize("faults", RECOVERED.values(), ids=RECOVERED.keys())
def test_transient_faults_end_in_one_sync_with_every_row(
    world: World, faults: list[dict], caplog: pytest.LogCaptureFixture
) -> None:
    before, calls = triggers(world), call_count(world)
    for fault in faults:
        inject(world, **fault)
    result = sync_once(world)
    assert result.success, failure_message(result)
    assert triggers(world) - before == 1
    assert delivered_since(world, calls) == world.mart_rows
    metadata = result.asset_materializations_for_node(SYNC_STEP)[0].metadata
    assert metadata["successful_added"].value == world.mart_rows
    assert_token_absent(world, result, caplog)


def test_an_unknown_status_is_logged_once(world: World, caplog) -> None:
    inject(world, kind="run", sync_id=SYNC_ID, unknown_status="mystery_status", unknown_polls=4)
    assert sync_once(world).success
    assert caplog.text.count("unknown status 'mystery_status'") == 1


def test_a_failed_run_fails_the_step_with_its_error_and_link_and_is_not_retried(
    world: World, caplog
) -> None:
    before, calls = triggers(world), call_count(world)
    inject(world, kind="run", sync_id=SYNC_ID, outcome="failed", error="DESTINATION_EXPLODED")
    result = sync_once(world)
    assert not result.success
    message = failure_message(result)
    assert "DESTINATION_EXPLODED" in message and f"/syncs/{SYNC_ID}/runs/" in message
    assert triggers(world) - before == 1
    assert delivered_since(world, calls) == 0
    assert step_events(result, SYNC_STEP, "STEP_UP_FOR_RETRY") == 0
    assert_token_absent(world, result, caplog)


def test_an_interrupted_run_is_retried_as_one_new_sync(world: World, caplog) -> None:
    before, calls = triggers(world), call_count(world)
    inject(world, kind="run", sync_id=SYNC_ID, outcome="interrupted", error="worker restarted")
    result = sync_once(world)
    assert result.success, failure_message(result)
    # The interrupted run ended, so the retry is a new intended sync: two triggers in all,
    # and every row delivered once (the interrupted run delivered nothing).
    assert triggers(world) - before == 2
    assert delivered_since(world, calls) == world.mart_rows
    assert step_events(result, SYNC_STEP, "STEP_UP_FOR_RETRY") == 1


def test_rejected_rows_over_the_policy_fail_the_step(world: World, caplog) -> None:
    # destinations.yaml declares no limit for this destination: any failed row fails the step.
    before, calls = triggers(world), call_count(world)
    inject(world, kind="run", sync_id=SYNC_ID, reject_ratio=0.1)
    result = sync_once(world)
    assert not result.success
    message = failure_message(result)
    assert "rows failed" in message and "max_failed_rows=0" in message
    assert triggers(world) - before == 1
    rejected = world.mart_rows - delivered_since(world, calls)
    assert 0 < rejected <= world.mart_rows * 0.1 + 1
    assert step_events(result, SYNC_STEP, "STEP_UP_FOR_RETRY") == 0
    assert_token_absent(world, result, caplog)


def test_a_poll_timeout_names_the_run_and_says_there_is_no_cancel(world: World, caplog) -> None:
    before = triggers(world)
    inject(world, kind="run", sync_id=SYNC_ID, running_seconds=4)
    result = sync_once(world, fast_hightouch(world, poll_timeout_seconds=1.0))
    assert not result.success
    message = failure_message(result)
    assert "did not finish within" in message and "no cancel endpoint" in message
    assert f"/syncs/{SYNC_ID}/runs/" in message
    assert triggers(world) - before == 1
    assert step_events(result, SYNC_STEP, "STEP_UP_FOR_RETRY") == 0


def test_a_refused_token_fails_at_once_without_retry_or_trigger(world: World, caplog) -> None:
    before = triggers(world)
    inject(world, kind="status", status=401, sync_id=SYNC_ID, method="POST")
    result = sync_once(world)
    assert not result.success
    message = failure_message(result)
    assert "HTTP 401" in message and "HIGHTOUCH_API_TOKEN" in message and SYNC_ID in message
    assert triggers(world) == before
    assert step_events(result, SYNC_STEP, "STEP_UP_FOR_RETRY") == 0
    assert_token_absent(world, result, caplog)


def test_a_step_retry_reattaches_to_the_run_it_started(world: World, caplog) -> None:
    # Reads fail for longer than the client retries (3 attempts), so the first step attempt
    # fails after triggering; its retry must follow the same Hightouch run.
    before, calls = triggers(world), call_count(world)
    inject(world, kind="status", status=503, path_regex=RUNS_PATH, method="GET", count=3)
    result = sync_once(world)
    assert result.success, failure_message(result)
    assert step_events(result, SYNC_STEP, "STEP_UP_FOR_RETRY") == 1
    assert triggers(world) - before == 1
    assert delivered_since(world, calls) == world.mart_rows
    assert "Re-attaching to Hightouch run" in run_log_text(world, result.run_id)
    assert_token_absent(world, result, caplog)


def test_a_reexecution_from_failure_follows_the_run_of_the_failed_run(world: World, caplog) -> None:
    before, calls = triggers(world), call_count(world)
    inject(world, kind="status", status=503, path_regex=RUNS_PATH, method="GET", count=1000)
    failed = sync_once(world)
    assert not failed.success
    assert step_events(failed, SYNC_STEP, "STEP_UP_FOR_RETRY") == 2
    httpx.delete(world.sandbox.url + "/sandbox/faults").raise_for_status()

    options = dg.ReexecutionOptions.from_failure(failed.run_id, world.instance)
    rerun = dg.execute_job(
        dg.reconstructable(_reexecutable_job),
        instance=world.instance,
        reexecution_options=options,
        run_config={"ops": {SYNC_STEP: {"config": {"full_resync": True}}}},
        raise_on_error=False,
    )
    assert rerun.success
    assert triggers(world) - before == 1
    assert delivered_since(world, calls) == world.mart_rows
    assert "Re-attaching to Hightouch run" in run_log_text(world, rerun.run_id)


def test_forged_reports_outside_a_run_do_not_steer_a_reexecution(world: World) -> None:
    """Anyone with the webserver can report runless events. A forged trigger mark naming the
    failed run's family (pointing at a decoy Hightouch run) and a forged materialization saying
    the genuine run was synced must not make the re-execution follow the decoy, nor skip the
    genuine run and trigger a second one: it follows the run the failed attempt started."""
    inject(world, kind="status", status=503, path_regex=RUNS_PATH, method="GET", count=1000)
    failed = sync_once(world)
    assert not failed.success
    httpx.delete(world.sandbox.url + "/sandbox/faults").raise_for_status()
    genuine = _triggered_run(world, failed.run_id)
    decoy = httpx.post(
        f"{world.sandbox.url}{SANDBOX_HIGHTOUCH_PREFIX}/syncs/{SYNC_ID}/trigger",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={},
    )
    decoy.raise_for_status()
    decoy_run = str(decoy.json()["id"])
    before, calls = triggers(world), call_count(world)
    world.instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=SYNC_KEY,
            metadata={
                TRIGGER_MARK: "triggered",
                "dagster_run_family": failed.run_id,
                "hightouch_sync_id": SYNC_ID,
                "hightouch_run_id": decoy_run,
            },
        )
    )
    world.instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=SYNC_KEY, metadata={"hightouch_run_id": genuine})
    )

    rerun = dg.execute_job(
        dg.reconstructable(_reexecutable_job),
        instance=world.instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(failed.run_id, world.instance),
        raise_on_error=False,
    )
    assert rerun.success
    assert triggers(world) == before  # no second trigger: the genuine run is followed
    assert f"Re-attaching to Hightouch run {genuine}" in run_log_text(world, rerun.run_id)
    recorded = world.instance.fetch_materializations(SYNC_KEY, limit=1).records[0]
    assert recorded.run_id == rerun.run_id
    assert recorded.asset_materialization is not None
    assert recorded.asset_materialization.metadata["hightouch_run_id"].value == genuine
    assert delivered_since(world, calls) == 0  # the genuine run had delivered already


def _triggered_run(world: World, run_id: str) -> str:
    """The Hightouch run the run's own step recorded as triggered."""
    for record in world.instance.fetch_observations(SYNC_KEY, limit=50).records:
        observation = record.event_log_entry.asset_observation
        if record.run_id == run_id and observation is not None:
            mark = observation.metadata.get(TRIGGER_MARK)
            if mark is not None and mark.value == "triggered":
                return str(observation.metadata["hightouch_run_id"].value)
    raise AssertionError(f"run {run_id} recorded no trigger")


def _reexecutable_job() -> dg.JobDefinition:
    """The sync job rebuilt in the re-execution's own process, from the environment."""
    from activation.definitions import build_definitions

    base = build_definitions()
    return sync_job_definitions(base, base.resources["hightouch"]).resolve_job_def(JOB)


# -- The Airbyte step ---------------------------------------------------------------------------

INGEST_JOB = "fault_test_ingest"


def run_ingest(world: World) -> dg.ExecuteInProcessResult:
    base = world.definitions
    definitions = dg.Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        jobs=[dg.define_asset_job(INGEST_JOB, selection=dg.AssetSelection.groups("ingest"))],
        resources=base.resources,
        executor=dg.in_process_executor,
    )
    return definitions.resolve_job_def(INGEST_JOB).execute_in_process(
        instance=world.instance, raise_on_error=False
    )


def airbyte_jobs(world: World) -> list[dict]:
    response = httpx.get(
        f"{world.sandbox.url}{SANDBOX_AIRBYTE_REST_PREFIX}/jobs",
        params={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID, "limit": 100},
    )
    response.raise_for_status()
    return response.json()["data"]


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_a_failed_or_cancelled_airbyte_job_fails_its_step_with_the_job_id(
    world: World, outcome: str
) -> None:
    inject(world, kind="airbyte_job", outcome=outcome)
    result = run_ingest(world)
    assert not result.success
    job_id = max(int(job["jobId"]) for job in airbyte_jobs(world))
    message = failure_message(result)
    assert str(job_id) in message and "Airbyte connection" in message


def test_an_airbyte_poll_timeout_cancels_the_job(world: World) -> None:
    # ACTIVATION_AIRBYTE_POLL_TIMEOUT_SECONDS is 3 in this module.
    inject(world, kind="airbyte_job", outcome="running")
    result = run_ingest(world)
    assert not result.success
    assert "cancelled the Airbyte job" in failure_message(result)
    newest = max(airbyte_jobs(world), key=lambda job: int(job["jobId"]))
    assert newest["status"] == "cancelled"


def test_a_sync_already_running_in_airbyte_is_followed_not_duplicated(world: World) -> None:
    inject(world, kind="airbyte_job", outcome="running")
    started = httpx.post(
        f"{world.sandbox.url}{SANDBOX_AIRBYTE_REST_PREFIX}/jobs",
        json={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID, "jobType": "sync"},
    )
    started.raise_for_status()
    outside_job = int(started.json()["jobId"])
    count = len(airbyte_jobs(world))
    result = run_ingest(world)
    # The step attached to the running job (no second job) and, at its timeout, cancelled it.
    assert len(airbyte_jobs(world)) == count
    assert str(outside_job) in failure_message(result)


# -- Retries stay with the step that failed ------------------------------------------------------


def test_a_transient_hightouch_fault_retries_only_that_destinations_step(world: World) -> None:
    inject(world, kind="status", status=503, path_regex=RUNS_PATH, method="GET", count=3)
    base = world.definitions
    definitions = dg.Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        jobs=base.jobs,
        resources={**(base.resources or {}), "hightouch": fast_hightouch(world)},
        executor=dg.in_process_executor,
    )
    result = definitions.resolve_job_def("activate").execute_in_process(
        instance=world.instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )
    assert result.success, failure_message(result)
    starts: dict[str, int] = {}
    for event in result.all_events:
        if event.event_type_value in ("STEP_START", "STEP_RESTARTED"):
            starts[event.step_key or ""] = starts.get(event.step_key or "", 0) + 1
    assert starts[SYNC_STEP] == 2
    assert {step: n for step, n in starts.items() if n != 1} == {SYNC_STEP: 2}
    assert starts["dbt_build"] == 1
    assert sum(1 for step in starts if step.startswith("airbyte_")) == 1
