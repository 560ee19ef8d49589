"""The trigger sensors, ticked with `build_sensor_context` and their cursors.

- mart_update_sensor: real Dagster runs on a test instance. The mart is a small asset with a
  blocking check (the dbt build is covered by test_chain); the sync asset is a stand-in that
  waits on an event, so a sync run is genuinely in flight while the mart updates again.
- airbyte_job_sensor: the real code location against the sandbox's Airbyte API, with jobs started
  outside Dagster (POST /jobs over HTTP) and by Dagster (the ingest asset).
- webhook_event_sensor: events recorded in the intake's SQLite file.
"""

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from activation.core.run_history import failed_blocking_checks, planned_asset_keys
from activation.dagster_api import events_of_run
from activation.defs.triggers.common import BUILD_JOB_NAME, SYNC_JOB_NAME
from activation.defs.triggers.mart_updates import build_mart_update_sensor, load_cursor
from activation.defs.triggers.webhook_events import build_webhook_event_sensor
from activation.lib.destinations import load_destinations
from activation.tooling.stack import start_airbyte_job, wait_for_airbyte_job
from activation.webhooks import store
from tests.support.warehouse_path import worker_sandbox

DESTINATION = next(d for d in load_destinations() if d.key == "salesforce_contacts")
MART = dg.AssetKey(["marts", DESTINATION.mart])
SYNC = dg.AssetKey(["activate", DESTINATION.key])


class MartWorld:
    """A mart with a blocking check, a stand-in sync asset that can be held in flight."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.check_passes = True
        self.release = threading.Event()
        self.release.set()
        self.sync_runs: list[str] = []
        world = self

        @dg.asset(key=MART, check_specs=[dg.AssetCheckSpec("unique_id", asset=MART, blocking=True)])
        def mart() -> Iterator[object]:
            yield dg.Output(None)
            yield dg.AssetCheckResult(check_name="unique_id", passed=world.check_passes)

        @dg.asset(key=SYNC, deps=[MART])
        def sync(context: dg.AssetExecutionContext) -> None:
            world.sync_runs.append(context.run.run_id)
            assert world.release.wait(60), "the test never released the sync"

        self.assets = [mart, sync]
        self.sensor = build_mart_update_sensor([DESTINATION], SYNC_JOB_NAME)

    def update_mart(self) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            self.assets, instance=self.instance, selection=[MART], raise_on_error=False
        )

    def tick(self, cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor)
        return self.sensor(context)

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            self.assets,
            instance=self.instance,
            selection=list(request.asset_selection or []),
            tags=request.tags,
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[MartWorld]:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield MartWorld(instance)


def _newest_mart_storage_id(instance: dg.DagsterInstance) -> int:
    return instance.fetch_materializations(MART, limit=1).records[0].storage_id


def test_every_trigger_sensor_is_running_by_default_with_a_short_interval() -> None:
    from activation.defs.triggers.airbyte_jobs import build_airbyte_job_sensor

    built = [
        build_mart_update_sensor(load_destinations(), SYNC_JOB_NAME),
        build_airbyte_job_sensor(BUILD_JOB_NAME, [MART]),
        build_webhook_event_sensor(BUILD_JOB_NAME, [MART]),
    ]
    sensors = {s.name: s for s in built}
    assert set(sensors) == {"mart_update_sensor", "airbyte_job_sensor", "webhook_event_sensor"}
    for sensor in sensors.values():
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert (sensor.minimum_interval_seconds or 30) <= 30


def test_mart_update_requests_one_sync_and_none_on_repeat(world: MartWorld) -> None:
    world.update_mart()
    first = world.tick(None)  # first evaluation: starts from now, answers nothing old
    assert first.run_requests == []
    world.update_mart()
    second = world.tick(first.cursor)
    assert len(second.run_requests) == 1
    request = second.run_requests[0]
    newest = _newest_mart_storage_id(world.instance)
    assert request.run_key == f"mart-update:{MART.to_user_string()}:{newest}"
    assert list(request.asset_selection or []) == [SYNC]
    assert request.tags["activation/trigger"] == "mart-update"
    assert load_cursor(second.cursor)[MART.to_user_string()] == newest

    repeat = world.tick(second.cursor)
    assert repeat.run_requests == []
    # A daemon that lost the new cursor re-evaluates with the old one: same run key, so Dagster
    # launches nothing twice.
    replay = world.tick(first.cursor)
    assert [r.run_key for r in replay.run_requests] == [request.run_key]


def test_update_during_an_in_flight_sync_leads_to_exactly_one_more_sync(
    world: MartWorld,
) -> None:
    world.update_mart()
    cursor = world.tick(None).cursor
    world.update_mart()
    result = world.tick(cursor)
    (request,) = result.run_requests
    cursor = result.cursor

    world.release.clear()
    launched: list[dg.ExecuteInProcessResult] = []
    runner = threading.Thread(target=lambda: launched.append(world.launch(request)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not world.sync_runs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert world.sync_runs, "the sync run never started"
        in_flight = world.instance.get_run_by_id(world.sync_runs[0])
        assert in_flight is not None and in_flight.status == dg.DagsterRunStatus.STARTED

        world.update_mart()  # two updates land while the sync is still running
        world.update_mart()
        waiting = world.tick(cursor)
        assert waiting.run_requests == []
        assert "in flight" in (waiting.skip_reason.skip_message or "")
        assert waiting.cursor == cursor  # the updates stay pending
    finally:
        world.release.set()
        runner.join(60)
    assert launched and launched[0].success

    after = world.tick(cursor)
    assert len(after.run_requests) == 1  # the two updates coalesce into one more sync
    newest = _newest_mart_storage_id(world.instance)
    assert after.run_requests[0].run_key.endswith(f":{newest}")
    assert world.tick(after.cursor).run_requests == []


def test_failed_blocking_check_requests_no_sync(world: MartWorld) -> None:
    world.update_mart()
    cursor = world.tick(None).cursor
    world.check_passes = False
    failed = world.update_mart()
    assert failed_blocking_checks(world.instance, failed.run_id, MART) == ["unique_id"]
    result = world.tick(cursor)
    assert result.run_requests == []
    assert load_cursor(result.cursor)[MART.to_user_string()] == _newest_mart_storage_id(
        world.instance
    )


def test_a_run_that_synced_the_mart_itself_requests_nothing(world: MartWorld) -> None:
    world.update_mart()
    cursor = world.tick(None).cursor
    whole = dg.materialize(world.assets, instance=world.instance)  # mart and sync in one run
    assert whole.success
    assert world.tick(cursor).run_requests == []


def test_run_history_reads_planned_assets_and_check_evaluations(world: MartWorld) -> None:
    """Pins the one non-public call the sensors use (`DagsterInstance.all_logs`)."""
    run = dg.materialize(world.assets, instance=world.instance)
    assert planned_asset_keys(world.instance, run.run_id) == {MART, SYNC}
    checks = events_of_run(world.instance, run.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    assert [e.dagster_event.asset_check_evaluation_data.check_name for e in checks] == ["unique_id"]
    assert failed_blocking_checks(world.instance, run.run_id, MART) == []


# -- webhook_event_sensor --------------------------------------------------------------------------


def test_webhook_sensor_serves_pending_events_in_one_run_and_none_on_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an asset graph to read sources against, the run builds the whole job; the
    scoped selections are tested in test_signal_scope.py."""
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(tmp_path))
    sensor = build_webhook_event_sensor("build_after_upstream", [MART])
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:

        def tick(cursor: str | None) -> dg.SensorResult:
            return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))

        empty = tick(None)
        assert empty.run_requests == [] and empty.skip_reason is not None

        path = store.events_db_path()
        store.initialise(path)
        store.record(path, "signal:a", "script", {"event_id": "a"})
        store.record(path, "fivetran:s1", "fivetran", {"sync_id": "s1"})
        first = tick(empty.cursor)
        (request,) = first.run_requests  # both pending events, one run
        assert request.run_key == "webhook:1-2"
        assert request.asset_selection is None  # the whole job
        assert request.tags["activation/webhook-event-ids"] == "signal:a\nfivetran:s1"
        assert request.tags["activation/webhook-source"] == "fivetran,script"
        assert tick(first.cursor).run_requests == []  # none on repeat
        assert [r.run_key for r in tick(empty.cursor).run_requests] == ["webhook:1-2"]

        with pytest.raises(store.DuplicateEvent):
            store.record(path, "signal:a", "script", {"event_id": "a"})
        store.record(path, "signal:b", "script", {"event_id": "b"})
        # While a run that builds the marts is going, the next event waits (one build at a time).
        world = MartWorld(instance)
        job = dg.Definitions(assets=world.assets).resolve_implicit_global_asset_job_def()
        building = instance.create_run_for_job(
            job, asset_selection=frozenset({MART}), status=dg.DagsterRunStatus.NOT_STARTED
        )
        waiting = tick(first.cursor)
        assert waiting.run_requests == [] and waiting.cursor == first.cursor
        instance.report_run_canceled(building)
        last = tick(waiting.cursor)
        assert [r.run_key for r in last.run_requests] == ["webhook:3-3"]
        assert last.run_requests[0].tags["activation/webhook-event-id"] == "signal:b"
        assert json.loads(last.cursor or "{}") == {"seq": 3}


# -- airbyte_job_sensor ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def airbyte_location(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    from activation.tooling.demo import prepare_code_location

    folder = tmp_path_factory.mktemp("airbyte_sensor") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HIGHTOUCH_API_TOKEN", "airbyte-sensor-test-token")
        with worker_sandbox(folder, "--phase-seconds", "0.3", "--rows", "50") as sandbox:
            prepare_code_location()
            from activation.definitions import build_definitions

            yield sandbox, build_definitions()


def _airbyte_ticker(
    defs: dg.Definitions, instance: dg.DagsterInstance
) -> Callable[[str | None], dg.SensorResult]:
    """One evaluation of `airbyte_job_sensor` per call, from the given cursor."""
    sensor = next(s for s in defs.sensors if s.name == "airbyte_job_sensor")

    def tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={"airbyte": defs.resources["airbyte"]},
            repository_def=defs.get_repository_def(),
        )
        return sensor(context)

    return tick


def test_airbyte_sensor_answers_each_outside_job_once(
    airbyte_location: tuple, tmp_path: Path
) -> None:
    sandbox, defs = airbyte_location
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        tick = _airbyte_ticker(defs, instance)
        baseline = tick(None)
        assert baseline.run_requests == []

        outside = start_airbyte_job(sandbox.url)
        running = tick(baseline.cursor)  # still pending or running: decided later, not skipped
        assert running.run_requests == []
        wait_for_airbyte_job(sandbox.url, outside)
        done = tick(running.cursor)
        (request,) = done.run_requests
        assert request.run_key == f"airbyte-job:{outside}"
        assert request.tags["activation/airbyte-job-id"] == str(outside)
        selection = set(request.asset_selection or [])
        assert dg.AssetKey(["marts", DESTINATION.mart]) in selection
        assert SYNC in selection
        assert not any(key.path[0] == "raw" for key in selection)
        assert tick(done.cursor).run_requests == []

        # A job Dagster's ingest step started is not answered (the run that started it goes on).
        ingest = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey(["raw", "customers"])}
        )
        assert ingest.execute_in_process(instance=instance).success
        assert tick(done.cursor).run_requests == []


def test_airbyte_sensor_waits_while_a_dagster_ingest_run_is_in_flight(
    airbyte_location: tuple, tmp_path: Path
) -> None:
    sandbox, defs = airbyte_location
    raw = dg.AssetKey(["raw", "customers"])
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        tick = _airbyte_ticker(defs, instance)
        baseline = tick(None)
        # An unfinished ingest run may be the one that starts the next job: no decision yet.
        ingest_job = defs.resolve_implicit_global_asset_job_def()
        queued = instance.create_run_for_job(
            ingest_job, asset_selection=frozenset({raw}), status=dg.DagsterRunStatus.NOT_STARTED
        )
        job_id = start_airbyte_job(sandbox.url)
        wait_for_airbyte_job(sandbox.url, job_id)
        waiting = tick(baseline.cursor)
        assert waiting.run_requests == []
        assert waiting.cursor == baseline.cursor
        assert "in flight" in (waiting.skip_reason.skip_message or "")

        instance.report_run_canceled(queued)  # it ended without recording this job as its own
        decided = tick(waiting.cursor)
        assert [r.run_key for r in decided.run_requests] == [f"airbyte-job:{job_id}"]
