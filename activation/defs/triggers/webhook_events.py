"""The webhook trigger: one `build_after_upstream` run per event the intake recorded.

The cursor is the sequence number of the last event answered; the run key is the event id, so a
replayed cursor (a restarted daemon, a re-evaluated tick) launches nothing twice, and the intake
already refused a second delivery of the same id.

Runs are launched one at a time: while any run that builds the marts is queued or running (this
sensor's, the Airbyte sensor's, an `activate` launched by hand), the next event waits and the
cursor stays where it is. Two dbt builds at once would fight over the warehouse (a DuckDB file
takes one writer), and a waiting event is never lost: it is answered by the tick after that run
ends.
"""

import json
from collections.abc import Sequence

import dagster as dg

from activation.core.run_history import InFlightRuns
from activation.defs.triggers.common import BUILD_JOB_NAME, TRIGGER_TAG, syncs_by_mart
from activation.lib.destinations import load_destinations
from activation.webhooks import store

WEBHOOK_SENSOR_INTERVAL_SECONDS = 5
EVENT_ID_TAG = "activation/webhook-event-id"
SOURCE_TAG = "activation/webhook-source"


def load_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(json.loads(cursor)["seq"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f'webhook_event_sensor cursor must be {{"seq": N}}: {cursor!r}') from error


def build_webhook_event_sensor(
    job_name: str, mart_keys: Sequence[dg.AssetKey]
) -> dg.SensorDefinition:
    @dg.sensor(
        name="webhook_event_sensor",
        job_name=job_name,
        minimum_interval_seconds=WEBHOOK_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Builds the dbt models then the syncs once per signed webhook event "
        "recorded by `activation webhooks`, one run at a time.",
    )
    def webhook_event_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seq = load_cursor(context.cursor)
        path = store.events_db_path()
        events = store.events_after(path, seq, limit=1)
        if not events:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"No new webhook event in {path}."),
                cursor=json.dumps({"seq": seq}),
            )
        (event,) = events
        busy = InFlightRuns(context.instance).planning_any(mart_keys)
        if busy:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(
                    f"Event {event.event_id} waits: run {busy[0].run_id} is building the marts."
                ),
                cursor=json.dumps({"seq": seq}),
            )
        request = dg.RunRequest(
            run_key=f"webhook:{event.event_id}",
            tags={
                TRIGGER_TAG: "webhook",
                EVENT_ID_TAG: event.event_id[:200],
                SOURCE_TAG: event.source[:200],
            },
        )
        return dg.SensorResult(run_requests=[request], cursor=json.dumps({"seq": event.seq}))

    return webhook_event_sensor


@dg.definitions
def defs() -> dg.Definitions:
    marts = list(syncs_by_mart(load_destinations()))
    return dg.Definitions(sensors=[build_webhook_event_sensor(BUILD_JOB_NAME, marts)])
