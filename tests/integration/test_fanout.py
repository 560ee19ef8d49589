"""Fan-out to every destination with isolation, `after` dependencies, owners, pools and waves.

Real Dagster execution against the sandbox over HTTP; faults are injected in the CRM stand-ins.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pytest

from activation.lib.destinations import load_destinations
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import ChainResult, run_chain
from tests.support.chain_support import sandbox_chain
from tests.support.polling import wait_for

TOKEN = "fanout-test-token-58e0a7"
ROUTING_KEYS = {
    # PagerDuty integration keys are 32 characters; the stand-in refuses others.
    "PAGERDUTY_ROUTING_KEY_REVENUE_OPS": "R" * 32,
    "PAGERDUTY_ROUTING_KEY_MARKETING_OPS": "M" * 32,
    "PAGERDUTY_ROUTING_KEY_LIFECYCLE": "L" * 32,
}
DESTINATIONS = {d.key: d for d in load_destinations()}


@dataclass
class World:
    sandbox: SandboxProcess
    instance: dg.DagsterInstance
    folder: Path
    first: ChainResult


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {"HIGHTOUCH_API_TOKEN": TOKEN, "ACTIVATION_SYNC_RETRY_DELAY_SECONDS": "0.1"}
    with sandbox_chain(tmp_path_factory, "fanout", {**env, **ROUTING_KEYS}) as setup:
        # Salesforce is down for the first run (its stand-in answers 503 to every call).
        inject(setup.sandbox, kind="crm_status", destination_type="salesforce", count=10_000)
        first = run_chain(setup.instance, "CRITICAL")
        httpx.delete(setup.sandbox.url + "/sandbox/faults").raise_for_status()
        yield World(setup.sandbox, setup.instance, setup.folder, first)


def inject(sandbox: SandboxProcess, **spec: object) -> None:
    response = httpx.post(sandbox.url + "/sandbox/faults", json=spec)
    assert response.status_code == 201, response.text


def mart_rows(world: World, mart: str) -> int:
    with duckdb.connect(str(world.folder / "warehouse.duckdb"), read_only=True) as connection:
        return connection.execute(f"select count(*) from marts.{mart}").fetchone()[0]


def test_one_destination_down_the_others_ship(world: World) -> None:
    first = world.first
    assert not first.success
    assert first.failed_steps == ["activate__salesforce_accounts"]
    assert set(first.syncs) == {"hubspot_contacts", "iterable_users", "braze_users"}
    for key, destination in DESTINATIONS.items():
        records = world.sandbox.records(destination.destination_type, destination.object)
        expected = mart_rows(world, destination.mart) if key in first.syncs else 0
        assert len(records) == expected, key


def test_the_dependent_sync_is_skipped_and_named_in_the_summary(world: World) -> None:
    texts = [n["body"]["text"] for n in world.sandbox.notifications("slack")]
    summary = next(t for t in texts if world.first.run_id in t)
    assert "*salesforce_accounts*: failed" in summary
    assert "*salesforce_contacts*: skipped" in summary
    for key in ("hubspot_contacts", "iterable_users", "braze_users"):
        run_id = world.first.syncs[key]["hightouch_run_id"]
        assert f"*{key}*: success | run {run_id} |" in summary
    report = world.instance.fetch_materializations(
        dg.AssetKey(["activate", "activation_report"]), limit=1
    ).records[0]
    metadata = report.event_log_entry.asset_materialization.metadata
    assert metadata["dagster_run_id"].value == world.first.run_id
    assert metadata["failed_destinations"].value == "salesforce_accounts"


def test_only_the_failed_destinations_owner_is_paged(world: World) -> None:
    pages = [n["body"] for n in world.sandbox.notifications("pagerduty")]
    triggers = [p for p in pages if p["event_action"] == "trigger"]
    assert [p["routing_key"] for p in triggers] == [
        ROUTING_KEYS["PAGERDUTY_ROUTING_KEY_REVENUE_OPS"]
    ]
    assert "salesforce_accounts" in triggers[0]["payload"]["summary"]
    assert TOKEN not in repr(pages)


def test_the_owner_is_in_the_asset_graph() -> None:
    from activation.components.hightouch_syncs import build_sync_asset

    spec = next(iter(build_sync_asset(DESTINATIONS["hubspot_contacts"]).specs))
    assert spec.owners == ["team:marketing-ops"]
    assert spec.metadata["slack_channel"] == "#marketing-ops-alerts"


def test_the_page_is_resolved_when_the_destination_syncs_again(world: World) -> None:
    again = run_chain(world.instance, "CRITICAL")
    assert again.success, again.failed_steps
    pages = [n["body"] for n in world.sandbox.notifications("pagerduty")]
    resolves = [p for p in pages if p["event_action"] == "resolve"]
    triggers = [p for p in pages if p["event_action"] == "trigger"]
    assert [p["dedup_key"] for p in resolves] == [triggers[0]["dedup_key"]]
    for destination in ("salesforce_accounts", "salesforce_contacts"):
        d = DESTINATIONS[destination]
        assert len(world.sandbox.records(d.destination_type, d.object)) == mart_rows(world, d.mart)


def _events_with_time(instance: dg.DagsterInstance, run_id: str):
    for entry in instance.all_logs(run_id):
        if entry.dagster_event is not None:
            yield entry


def step_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for entry in _events_with_time(instance, run_id):
        event = entry.dagster_event
        key = event.step_key or ""
        if event.event_type_value == "STEP_START":
            starts.setdefault(key, entry.timestamp)
        if event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[key] = entry.timestamp
    return {key: (starts[key], ends[key]) for key in starts if key in ends}


def test_full_resync_runs_in_waves_with_a_pause_and_removes_nothing(world: World) -> None:
    from activation.definitions import build_definitions

    job = build_definitions().resolve_job_def("full_resync")
    pause = 1.5
    result = job.execute_in_process(
        instance=world.instance,
        run_config=_full_resync_config(pause_seconds=pause),
        raise_on_error=False,
    )
    assert result.success
    plan_metadata = _plan_metadata(result)
    assert plan_metadata["reason"].value == "schema change in the marts"
    assert plan_metadata["requested_by"].value == "ops@data"
    settings = result.output_for_node("resync_plan", "settings")
    assert (settings["reason"], settings["requested_by"]) == (
        "schema change in the marts",
        "ops@data",
    )
    windows = step_windows(world.instance, result.run_id)
    synced = {
        key: window
        for key, window in windows.items()
        if key.startswith("wave") and _synced_in(result, key)
    }
    wave1 = {k: w for k, w in synced.items() if k.startswith("wave1__")}
    wave2 = {k: w for k, w in synced.items() if k.startswith("wave2__")}
    assert {k.split("__", 1)[1] for k in wave1} == {
        d.key for d in DESTINATIONS.values() if d.wave == 1
    }
    assert {k.split("__", 1)[1] for k in wave2} == {
        d.key for d in DESTINATIONS.values() if d.wave == 2
    }
    wave1_done = max(end for _, end in wave1.values())
    wave2_start = min(start for start, _ in wave2.values())
    assert wave2_start >= wave1_done + pause
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        key = event.asset_key.path[-1]
        assert metadata["full_resync"].value is True
        assert metadata["planned_removed"].value == 0
        assert metadata["planned_added"].value == mart_rows(world, DESTINATIONS[key].mart)
    assert len(result.get_asset_materialization_events()) == len(DESTINATIONS)


def _full_resync_config(**config: object) -> dict:
    """The full_resync form (the job's run config is the form itself, as in the Launchpad)."""
    base = {"reason": "schema change in the marts", "requested_by": "ops@data"}
    return {**base, **config}


def _plan_metadata(result: dg.ExecuteInProcessResult) -> dict:
    output = next(
        e
        for e in result.all_events
        if e.is_successful_output
        and e.step_key == "resync_plan"
        and e.step_output_data.output_name == "settings"
    )
    return output.step_output_data.metadata


def _synced_in(result: dg.ExecuteInProcessResult, step_key: str) -> bool:
    return any(
        e.step_key == step_key and e.event_type_value == "ASSET_MATERIALIZATION"
        for e in result.all_events
    )


def test_a_bad_wave_override_is_refused_before_any_sync(world: World) -> None:
    description = _refusal(world, wave_overrides={"braze_users": 7})
    assert "wave_overrides.braze_users: 7 is not a declared wave; valid: 1, 2" in description


def _refusal(world: World, **config: object) -> str:
    """Launch full_resync with `config`; assert the form was refused before the run existed
    (no run, no trigger), and return the refusal's message."""
    from activation.definitions import build_definitions

    before = world.sandbox.trigger_counts()
    runs_before = len(world.instance.get_runs())
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        build_definitions().resolve_job_def("full_resync").execute_in_process(
            instance=world.instance,
            run_config=_full_resync_config(pause_seconds=0, **config),
            raise_on_error=False,
        )
    assert len(world.instance.get_runs()) == runs_before
    assert world.sandbox.trigger_counts() == before
    return str(refused.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"salesforce_contacts": 1},
            "salesforce_contacts (wave 1) is declared after salesforce_accounts (wave 1)",
        ),
        (
            {"salesforce_accounts": 2},
            "salesforce_contacts (wave 2) is declared after salesforce_accounts (wave 2)",
        ),
    ],
    ids=["dependent-moved-into-its-upstreams-wave", "upstream-moved-into-the-dependents-wave"],
)
def test_a_wave_override_against_the_declared_order_is_refused_before_any_sync(
    world: World, overrides: dict[str, int], expected: str
) -> None:
    assert expected in _refusal(world, wave_overrides=overrides)


@pytest.mark.parametrize("field", ["reason", "requested_by"])
def test_a_full_resync_without_a_reason_or_requester_is_refused(world: World, field: str) -> None:
    description = _refusal(world, **{field: "   "})
    assert f"{field}: must not be empty" in description


def test_the_full_resync_form_requires_reason_and_requested_by(world: World) -> None:
    from activation.definitions import build_definitions

    job = build_definitions().resolve_job_def("full_resync")
    with pytest.raises(dg.DagsterInvalidConfigError) as error:
        job.execute_in_process(
            instance=world.instance,
            run_config={"pause_seconds": 0},
        )
    assert "reason" in str(error.value) and "requested_by" in str(error.value)


def test_the_declared_order_only_binds_destinations_selected_in_the_run() -> None:
    from activation.defs.resync.waves import FullResyncConfig, plan_waves

    config = FullResyncConfig(
        reason="contacts only",
        requested_by="ops",
        destinations=["salesforce_contacts"],
        wave_overrides={"salesforce_contacts": 1},
    )
    assert plan_waves(config, tuple(DESTINATIONS.values())) == {"salesforce_contacts": 1}


def test_a_one_off_resync_records_who_asked_and_why(world: World) -> None:
    from activation.definitions import build_definitions

    result = (
        build_definitions()
        .resolve_job_def("resync_destination")
        .execute_in_process(
            instance=world.instance,
            run_config={
                "destination": "braze_users",
                "reason": "schema change in braze attributes",
                "requested_by": "dana@lifecycle",
            },
            tags={"dagster/user": "dana@example.com"},
            raise_on_error=False,
        )
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert event.asset_key == dg.AssetKey(["activate", "braze_users"])
    assert metadata["reason"].value == "schema change in braze attributes"
    assert metadata["requested_by"].value == "dana@lifecycle"
    assert metadata["dagster_user"].value == "dana@example.com"
    text = world.sandbox.notifications("slack")[-1]["body"]["text"]
    assert "requested by dana@lifecycle" in text and "schema change" in text


POOL_TEST_TAG = "activation/test"


def _launch_resync(instance_ref: object, destination_key: str, go: object = None) -> None:
    """One run of resync_destination in its own process (two in-process runs in one process
    would share Python's logging locks, which Dagster's in-process executor does not expect).
    With `go` (an Event), the process loads the code location first and launches once it is set,
    so the launch itself takes a fraction of a second."""
    from activation.definitions import build_definitions

    job = build_definitions().resolve_job_def("resync_destination")
    if go is not None and not go.wait(timeout=180):  # type: ignore[attr-defined]
        raise TimeoutError("the test never said go")
    config = {"destination": destination_key, "reason": "pool", "requested_by": "ci"}
    with dg.DagsterInstance.from_ref(instance_ref) as instance:  # type: ignore[arg-type]
        job.execute_in_process(
            instance=instance, run_config=config, tags={POOL_TEST_TAG: "pool"}, raise_on_error=False
        )


def test_two_runs_against_one_destination_are_serialized_by_its_pool(world: World) -> None:
    """The second run asks for the destination's pool while the first holds it, and waits.

    It asks once the first holds the slot, not in the same instant: Dagster reads a free slot
    row, then writes it, with no lock held between the two on either storage, so two claims in
    the same instant can both win. A CI run saw it (both steps started in the same second);
    docs/deployment.md gives the figures and why Hightouch still runs the two one at a time."""
    destination = DESTINATIONS["iterable_users"]
    storage = world.instance.event_log_storage
    storage.set_concurrency_slots(destination.pool, 1)
    # The first run's Hightouch run lasts long enough for the second run to ask meanwhile.
    inject(world.sandbox, kind="run", sync_id=destination.sync_id, running_seconds=6, count=1)
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    ref = world.instance.get_ref()
    first = spawn.Process(target=_launch_resync, args=(ref, destination.key))
    second = spawn.Process(target=_launch_resync, args=(ref, destination.key, go))
    first.start()
    second.start()

    def holders() -> list[str]:
        return [s.run_id for s in storage.get_concurrency_info(destination.pool).claimed_slots]

    try:
        [holder] = wait_for("the first run to hold the pool", holders, interval=0.05)
        go.set()
        for process in (first, second):
            process.join(timeout=180)
            assert process.exitcode == 0
    finally:
        for process in (first, second):
            if process.is_alive():
                process.kill()
    runs = world.instance.get_runs(filters=dg.RunsFilter(tags={POOL_TEST_TAG: "pool"}))
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    [waiter] = [run.run_id for run in runs if run.run_id != holder]
    step = f"resync__{destination.key}"
    held, waited = step_windows(world.instance, holder)[step], step_windows(world.instance, waiter)
    assert waited[step][0] >= held[1], "the second run's sync started before the first one ended"
    blocked = [
        entry.user_message
        for entry in _events_with_time(world.instance, waiter)
        if entry.step_key == step and "blocked by limit for pool" in entry.user_message
    ]
    assert blocked and destination.pool in blocked[0]
