"""The Airbyte trigger: a succeeded Airbyte job that Dagster did not start launches dbt + syncs.

Airbyte's own scheduler (or someone in the Airbyte UI) runs a connection; nothing tells Dagster.
This sensor reads `GET <REST>/jobs?workspaceIds=&connectionId=&createdAtStart=` for each
connection the code location knows (the connections behind the `raw/*` assets) and, for every
succeeded sync job it has not answered yet, requests one run of the models downstream of that
connection's streams and the syncs after them (job `build_after_upstream`).

Exactly once, none lost:
- the cursor holds, per connection, the id of the newest job already decided (`after`) and its
  start time (`since`, which bounds the next query); job ids only grow, and Airbyte runs one job
  per connection at a time, so a job that is still pending or running stops the scan there and is
  decided on a later tick;
- the run key is the Airbyte job id, so a replayed cursor (restarted daemon, re-evaluated tick)
  cannot launch a second run for the same job;
- one build at a time: while a run that builds the marts is queued or running, the next job
  waits (the cursor stays before it), since two dbt builds would fight over the warehouse.

"Started by Dagster" is read from Dagster itself: the ingest step puts `airbyte_job_id` on the
materializations of the connection's `raw/*` assets. A Dagster run that plans those assets and is
still going may be the one that started the job, so the decision waits for it to end.
On its first evaluation the sensor takes the jobs that already exist as answered (it does not
replay a connection's history), except a job still running then, which is decided when it ends.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
from dagster_airbyte import AirbyteWorkspace

from activation.core.run_history import InFlightRuns
from activation.dagster_api import AirbyteJob, airbyte_connection_of, airbyte_jobs_for_connection
from activation.defs.ingest.airbyte import INGEST_GROUP
from activation.defs.triggers.common import (
    BUILD_JOB_NAME,
    TRIGGER_TAG,
    json_object_cursor,
    syncs_by_mart,
)
from activation.lib.destinations import load_destinations

AIRBYTE_SENSOR_INTERVAL_SECONDS = 30
ACTIVE_STATUSES = ("pending", "running", "incomplete")
AIRBYTE_JOB_TAG = "activation/airbyte-job-id"
AIRBYTE_CONNECTION_TAG = "activation/airbyte-connection-id"
RECENT_MATERIALIZATIONS = 200


@dataclass(frozen=True)
class Connection:
    connection_id: str
    raw_keys: tuple[dg.AssetKey, ...]
    downstream: tuple[dg.AssetKey, ...]
    """The models and syncs to build after this connection lands (its raw keys excluded)."""


def connections_of(repository: dg.RepositoryDefinition) -> list[Connection]:
    """The Airbyte connections behind the `raw/*` assets, with what lies downstream of each,
    read from the code location's graph when the sensor evaluates (this module defines no
    assets of its own, so the graph is only whole there)."""
    assets = list({id(a): a for a in repository.assets_defs_by_key.values()}.values())
    raw_keys: dict[str, list[dg.AssetKey]] = {}
    for spec in (spec for assets_def in assets for spec in assets_def.specs):
        if spec.group_name != INGEST_GROUP:
            continue
        connection_id, _ = airbyte_connection_of(spec)
        if connection_id:
            raw_keys.setdefault(connection_id, []).append(spec.key)
    connections = []
    for connection_id, keys in sorted(raw_keys.items()):
        downstream = dg.AssetSelection.assets(*keys).downstream(include_self=False).resolve(assets)
        connections.append(
            Connection(
                connection_id,
                tuple(sorted(keys, key=lambda k: k.to_user_string())),
                tuple(sorted(downstream, key=lambda k: k.to_user_string())),
            )
        )
    return connections


def load_cursor(cursor: str | None) -> dict[str, dict]:
    """`{connection_id: {"after": job_id, "since": iso-time or null}}`."""
    return json_object_cursor(cursor, "airbyte_job_sensor")


def baseline(jobs: Sequence[AirbyteJob]) -> dict:
    """First sight of a connection: every finished job counts as answered; a running one not."""
    active = [j.id for j in jobs if j.status in ACTIVE_STATUSES]
    after = min(active) - 1 if active else max((j.id for j in jobs), default=0)
    return {"after": after, "since": None}


def dagster_started_job_ids(instance: dg.DagsterInstance, raw_keys: Sequence[dg.AssetKey]) -> set:
    """Airbyte job ids that Dagster's ingest step recorded on the connection's raw assets."""
    ids: set[int] = set()
    # Every key: a run may have selected only some of the connection's streams.
    for key in raw_keys:
        records = instance.fetch_materializations(key, limit=RECENT_MATERIALIZATIONS).records
        for record in records:
            materialization = record.asset_materialization
            value = materialization.metadata.get("airbyte_job_id") if materialization else None
            if value is not None and value.value is not None:
                ids.add(int(str(value.value)))
    return ids


def build_airbyte_job_sensor(
    job_name: str, mart_keys: Sequence[dg.AssetKey]
) -> dg.SensorDefinition:
    """`mart_keys`: while a run that builds any of them is going, no new build is launched
    (one dbt build at a time; the waiting job is answered after that run ends)."""

    @dg.sensor(
        name="airbyte_job_sensor",
        job_name=job_name,
        minimum_interval_seconds=AIRBYTE_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Builds the affected dbt models then the syncs once per succeeded Airbyte "
        "job that was started outside Dagster.",
    )
    def airbyte_job_sensor(
        context: dg.SensorEvaluationContext, airbyte: AirbyteWorkspace
    ) -> dg.SensorResult:
        if context.repository_def is None:
            return dg.SensorResult(skip_reason=dg.SkipReason("No code location graph to read."))
        connections = connections_of(context.repository_def)
        cursor = load_cursor(context.cursor)
        requests: list[dg.RunRequest] = []
        notes: list[str] = []
        in_flight_runs = InFlightRuns(context.instance)
        for connection in connections:
            state = cursor.get(connection.connection_id)
            since = datetime.fromisoformat(state["since"]) if state and state["since"] else None
            jobs = airbyte_jobs_for_connection(airbyte, connection.connection_id, since)
            if state is None:
                cursor[connection.connection_id] = baseline(jobs)
                continue
            ours: set | None = None
            for airbyte_job in (j for j in jobs if j.id > state["after"]):
                if airbyte_job.status in ACTIVE_STATUSES:
                    notes.append(f"job {airbyte_job.id} is {airbyte_job.status}")
                    break
                if airbyte_job.status == "succeeded":
                    if in_flight_runs.planning_any(connection.raw_keys):
                        # A Dagster ingest run may have started this job; decide once it ends.
                        notes.append(f"job {airbyte_job.id}: a Dagster ingest run is in flight")
                        break
                    if ours is None:
                        ours = dagster_started_job_ids(context.instance, connection.raw_keys)
                    if airbyte_job.id not in ours:
                        busy = in_flight_runs.planning_any(mart_keys)
                        if requests or busy:
                            # One build at a time: this job is answered after that run ends.
                            running = busy[0].run_id if busy else "requested this tick"
                            notes.append(f"job {airbyte_job.id} waits for run {running}")
                            break
                        requests.append(_request(connection, airbyte_job))
                start = airbyte_job.start_time
                state = {"after": airbyte_job.id, "since": start.isoformat() if start else None}
                cursor[connection.connection_id] = state
        skip = None
        if not requests:
            skip = dg.SkipReason(
                "; ".join(notes)
                if notes
                else "No new succeeded Airbyte job started outside Dagster."
            )
        return dg.SensorResult(
            run_requests=requests, skip_reason=skip, cursor=json.dumps(cursor, sort_keys=True)
        )

    return airbyte_job_sensor


def _request(connection: Connection, airbyte_job: AirbyteJob) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"airbyte-job:{airbyte_job.id}",
        asset_selection=list(connection.downstream),
        tags={
            TRIGGER_TAG: "airbyte",
            AIRBYTE_JOB_TAG: str(airbyte_job.id),
            AIRBYTE_CONNECTION_TAG: connection.connection_id,
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    marts = list(syncs_by_mart(load_destinations()))
    return dg.Definitions(sensors=[build_airbyte_job_sensor(BUILD_JOB_NAME, marts)])
