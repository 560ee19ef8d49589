"""What the Dagster instance knows about runs, read the way the trigger sensors need it.

One place for the reads the sensors share: which runs are still going, which assets a run
planned, which checks a run evaluated. `events_of_run` is the one call that is not public API
(`DagsterInstance.get_records_for_run`): it is wrapped here alone and pinned by
tests/test_sensors.py, so a Dagster upgrade that changes it fails one test, not the sensors.
"""

from collections.abc import Iterable

import dagster as dg

FINISHED_STATUSES = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
UNFINISHED_STATUSES = tuple(s for s in dg.DagsterRunStatus if s not in FINISHED_STATUSES)


def events_of_run(
    instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType
) -> list[dg.EventLogEntry]:
    """Every event of one type that a run wrote, oldest first (wraps a non-public call)."""
    entries: list[dg.EventLogEntry] = []
    cursor = None
    while True:
        connection = instance.get_records_for_run(
            run_id, cursor=cursor, of_type=event_type, limit=1000
        )
        entries.extend(record.event_log_entry for record in connection.records)
        if not connection.has_more:
            return entries
        cursor = connection.cursor


def planned_asset_keys(instance: dg.DagsterInstance, run_id: str) -> set[dg.AssetKey]:
    """Assets a run set out to materialize (Dagster records the plan when the run is created)."""
    keys = set()
    for entry in events_of_run(instance, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED):
        if entry.dagster_event is not None and entry.dagster_event.asset_key is not None:
            keys.add(entry.dagster_event.asset_key)
    return keys


def failed_blocking_checks(
    instance: dg.DagsterInstance, run_id: str, asset_key: dg.AssetKey
) -> list[str]:
    """Names of the blocking checks on `asset_key` that failed in the run.

    dbt error-severity tests are blocking; an evaluation that does not say whether it blocks
    counts as blocking when its severity is ERROR (the safe reading).
    """
    failed = []
    for entry in events_of_run(instance, run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = (
            entry.dagster_event.asset_check_evaluation_data if entry.dagster_event else None
        )
        if evaluation is None or evaluation.asset_key != asset_key or evaluation.passed:
            continue
        blocking = evaluation.blocking
        if blocking is None:
            blocking = evaluation.severity == dg.AssetCheckSeverity.ERROR
        if blocking:
            failed.append(evaluation.check_name)
    return sorted(failed)


def unfinished_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs queued, starting or running (anything not yet success, failure or canceled)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=list(UNFINISHED_STATUSES)), limit=200
    )
    return [record.dagster_run for record in records]


def runs_planning_any(
    instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey]
) -> list[dg.DagsterRun]:
    """Unfinished runs that plan to materialize any of `keys` (their sync is in flight)."""
    wanted = set(keys)
    found = []
    for run in unfinished_runs(instance):
        # An empty or absent selection means "the whole job": read the run's plan instead.
        selection = run.asset_selection
        planned = set(selection) if selection else planned_asset_keys(instance, run.run_id)
        if planned & wanted:
            found.append(run)
    return found


def run_is_finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    """True for a finished run, and for runless events (reported from outside any run)."""
    if not run_id:
        return True
    run = instance.get_run_by_id(run_id)
    return run is None or run.status in FINISHED_STATUSES
