"""What the Dagster instance knows about runs, read the way the trigger sensors need it.

One place for the reads the sensors share: which runs are still going, which assets a run
planned, which checks a run evaluated. A run's events are read with
`activation.dagster_api.events_of_run`, the adapter for the non-public `DagsterInstance.all_logs`.
"""

from collections.abc import Iterable

import dagster as dg

from activation.dagster_api import events_of_run

FINISHED_STATUSES = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
UNFINISHED_STATUSES = tuple(s for s in dg.DagsterRunStatus if s not in FINISHED_STATUSES)


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


class InFlightRuns:
    """The unfinished runs and the assets each plans, read at most once per sensor tick.

    A tick asks "is a run planning any of these keys?" once per mart, connection or job; the
    runs and their plans are read on the first question and reused for the rest of the tick.
    """

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self._plans: list[tuple[dg.DagsterRun, set[dg.AssetKey]]] | None = None

    def planning_any(self, keys: Iterable[dg.AssetKey]) -> list[dg.DagsterRun]:
        """Unfinished runs that plan to materialize any of `keys` (their sync is in flight)."""
        if self._plans is None:
            # An empty or absent selection means "the whole job": read the run's plan instead.
            self._plans = [
                (
                    run,
                    set(run.asset_selection)
                    if run.asset_selection
                    else planned_asset_keys(self._instance, run.run_id),
                )
                for run in unfinished_runs(self._instance)
            ]
        wanted = set(keys)
        return [run for run, planned in self._plans if planned & wanted]


def run_is_finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    """True for a finished run, and for runless events (reported from outside any run)."""
    if not run_id:
        return True
    run = instance.get_run_by_id(run_id)
    return run is None or run.status in FINISHED_STATUSES
