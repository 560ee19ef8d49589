"""Event-driven syncs: what launches a sync when upstream data lands, with no schedule.

Three triggers, each a sensor that is RUNNING by default (a deployment gets them without anyone
switching them on in the UI), each launching at most one run per upstream event:

- `mart_update_sensor` (this module): a mart materialized in a finished run whose blocking checks
  on that mart passed, and that run did not itself sync the mart's destinations -> a run of those
  destinations' sync assets (job `sync_on_mart_update`).
- `airbyte_job_sensor` (activation/defs/triggers/airbyte_jobs.py): a succeeded Airbyte job that
  Dagster did not start -> dbt build of the affected models, then the syncs (job
  `build_after_upstream`).
- `webhook_event_sensor` (activation/defs/triggers/webhook_events.py): a signed HTTP signal
  recorded by the `activation webhooks` intake -> the same `build_after_upstream` run.

Why a sensor and not declarative automation (`AutomationCondition.eager()`): the behaviour this
project must guarantee is "an update that lands while a sync is in flight still leads to exactly
one more sync". `eager()` was seen on Dagster 1.13 to drop exactly that update (no run was
ever made for an update landing just after a request), and its evaluation is not ours to test
tick by tick. A sensor with a cursor
makes the rule explicit and testable with `build_sensor_context`:

- the cursor holds, per mart, the storage id of the last materialization already answered;
- while a run that plans one of the mart's syncs is queued or running, the cursor does NOT move,
  so updates that land meanwhile stay pending and, once the run ends, coalesce into ONE request;
- the run key is the mart plus the storage id of the newest materialization answered, so a
  re-evaluated tick or a restarted daemon that replays an old cursor launches nothing twice.

Sensor-launched syncs are gated like any other: the cross-run quality gate runs inside the sync
asset (activation/core/gate.py), and this sensor also skips a materialization whose run failed a
blocking check on the mart.
"""

import json
from collections.abc import Sequence

import dagster as dg

from activation.core.event_log import records_after
from activation.core.gate import latest_materialization
from activation.core.run_history import (
    InFlightRuns,
    failed_blocking_checks,
    planned_asset_keys,
    run_is_finished,
)
from activation.defs.triggers.common import (
    SYNC_JOB_NAME,
    TRIGGER_TAG,
    json_object_cursor,
    syncs_by_mart,
)
from activation.lib.destinations import Destination, load_destinations

# Every pass of the sensor daemon (a 5 s loop); see WEBHOOK_SENSOR_INTERVAL_SECONDS.
MART_SENSOR_INTERVAL_SECONDS = 1
MART_TAG = "activation/mart"
UPSTREAM_RUN_TAG = "activation/upstream-run"
PAGE = 100


def load_cursor(cursor: str | None) -> dict[str, int]:
    """`{"marts/mart_x": storage_id}`."""
    value = json_object_cursor(cursor, "mart_update_sensor")
    if not all(isinstance(v, int) for v in value.values()):
        raise ValueError(f"mart_update_sensor cursor must map mart keys to ids: {cursor!r}")
    return value


def _pending(
    instance: dg.DagsterInstance, mart: dg.AssetKey, after: int
) -> list[dg.EventLogRecord]:
    """Materializations of the mart newer than `after`, oldest first."""
    return list(records_after(instance.fetch_materializations, mart, after, page=PAGE))


def build_mart_update_sensor(
    destinations: Sequence[Destination], job_name: str
) -> dg.SensorDefinition:
    marts = syncs_by_mart(destinations)

    @dg.sensor(
        name="mart_update_sensor",
        job_name=job_name,
        minimum_interval_seconds=MART_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Syncs a mart's destinations once per mart update whose blocking checks "
        "passed, when the run that built it did not sync them itself.",
    )
    def mart_update_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        instance = context.instance
        cursor = load_cursor(context.cursor)
        in_flight_runs = InFlightRuns(instance)
        requests: list[dg.RunRequest] = []
        waiting: list[str] = []
        for mart, sync_keys in marts.items():
            name = mart.to_user_string()
            if name not in cursor:
                # First evaluation: start from now. Syncing every mart's old state on the day
                # the sensor is deployed would surprise; later updates are all answered.
                newest_now = latest_materialization(instance, mart)
                cursor[name] = newest_now.storage_id if newest_now else 0
                continue
            pending = _pending(instance, mart, cursor[name])
            if not pending:
                continue
            newest = pending[-1]
            if not run_is_finished(instance, newest.run_id):
                waiting.append(f"{name}: run {newest.run_id} that built it is still going")
                continue
            in_flight = in_flight_runs.planning_any(sync_keys)
            if in_flight:
                # Do not move the cursor: the update is answered once this run ends.
                waiting.append(f"{name}: sync run {in_flight[0].run_id} is in flight")
                continue
            cursor[name] = newest.storage_id
            if newest.run_id and set(sync_keys) <= planned_asset_keys(instance, newest.run_id):
                context.log.info(f"{name}: run {newest.run_id} synced it itself")
                continue
            failed = failed_blocking_checks(instance, newest.run_id, mart) if newest.run_id else []
            if failed:
                context.log.info(f"{name}: not synced, blocking checks failed: {failed}")
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"mart-update:{name}:{newest.storage_id}",
                    asset_selection=list(sync_keys),
                    tags={
                        TRIGGER_TAG: "mart-update",
                        MART_TAG: name,
                        UPSTREAM_RUN_TAG: newest.run_id or "runless",
                    },
                )
            )
        skip = None
        if not requests:
            skip = dg.SkipReason(
                "Waiting: " + "; ".join(waiting) if waiting else "No new mart update to sync."
            )
        return dg.SensorResult(
            run_requests=requests, skip_reason=skip, cursor=json.dumps(cursor, sort_keys=True)
        )

    return mart_update_sensor


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[build_mart_update_sensor(load_destinations(), SYNC_JOB_NAME)])
