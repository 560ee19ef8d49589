"""The cross-run quality gate: a sync triggers only data whose blocking checks passed.

Blocking asset checks stop downstream steps inside one run only. A sync launched in another run
(a sensor, automation, or a hand launch of the sync asset alone) would otherwise push whatever the
mart holds. `enforce_gate` is therefore the first thing every sync asset does, before any HTTP to
Hightouch: for every asset upstream of the sync (the marts and the models they are built from) it
reads, from the Dagster instance, the latest evaluation of each blocking check and refuses when

- that evaluation failed with severity ERROR (the check, its result and its run are named), or
- the asset was materialized after its checks last ran (untested data), or the check never ran.

The checks come from the repository definition, so any blocking asset check on a mart gates: the
dbt tests (`activation/transform.py`), the warehouse guards (`activation/guards.py`) and Python
checks (`activation/quality.py`). A refusal pages the owner of the destination
(`activation/paging.py`); paging problems are logged and never open the gate.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import dagster as dg
from dagster_shared.check import CheckError

from activation.destinations import Destination, sync_asset_key_for
from activation.guards import GUARD_CHECK_PREFIX, guard_check_name
from activation.paging import GatePager, PagerDutyResource
from activation.paths import destinations_file, warehouse_path
from activation.resources import SlackWebhookResource

__all__ = ["GateClosed", "PagerDutyResource", "enforce_gate", "gate_refusals"]


_HISTORY = 20  # records read per check: planned-only runs in a row beyond this are refused


@dataclass(frozen=True)
class CheckRecord:
    """The latest record Dagster holds for one asset check, in the gate's own terms."""

    status: str
    """`passed`, `failed`, or `planned` (planned in a run that has not evaluated it)."""
    run_id: str
    severity: str = "ERROR"
    description: str | None = None
    target_storage_id: int | None = None
    """Storage id of the materialization the check evaluated (None when unknown)."""
    recorded_at: float = 0.0


@dataclass(frozen=True)
class Materialization:
    storage_id: int
    run_id: str
    timestamp: float


@dataclass(frozen=True)
class Refusal:
    """Why one check keeps the gate closed."""

    check: dg.AssetCheckKey
    result: str
    run_id: str | None

    @property
    def check_name(self) -> str:
        return f"{self.check.asset_key.to_user_string()}:{self.check.name}"

    def sentence(self) -> str:
        where = f" in run {self.run_id}" if self.run_id else ""
        return f"check {self.check_name} {self.result}{where}"


class GateClosed(dg.Failure):
    """The sync refused to trigger; `refusals` says which checks and why."""

    def __init__(self, destination: Destination, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        super().__init__(
            description=f"Sync {destination.key} refused to trigger Hightouch: "
            + "; ".join(r.sentence() for r in refusals)
            + ". Nothing was sent. Fix the data and rebuild the mart with its checks "
            "(the `activate` job does both).",
            metadata={
                "refused_checks": dg.MetadataValue.json(
                    [
                        {"check": r.check_name, "result": r.result, "run_id": r.run_id}
                        for r in refusals
                    ]
                ),
                "destination": destination.key,
            },
            allow_retries=False,
        )


# -- reading Dagster's records --------------------------------------------------------------------


def latest_check_record(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey
) -> CheckRecord | None:
    """The latest evaluation of one asset check, or None when it was never planned nor run.

    Records a run planned without evaluating (its step did not get that far, or is still going)
    are passed over: what counts is the newest result, and whether it judged the data the asset
    holds now (`judge_check`). Only when no recent record has a result is it reported `planned`.

    `event_log_storage.get_asset_check_execution_history` is not public API (it is what the
    public GraphQL `assetCheckExecutions` serves, but that needs a webserver inside every run
    worker). This is the product's only call of it; tests/test_gate.py pins its behaviour.
    """
    history = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=_HISTORY
    )
    for record in history:
        evaluation = record.event.asset_check_evaluation if record.event else None
        if evaluation is None:  # a planned row carries no evaluation
            continue
        target = evaluation.target_materialization_data
        return CheckRecord(
            status="passed" if evaluation.passed else "failed",
            run_id=record.run_id,
            severity=evaluation.severity.value,
            description=evaluation.description,
            target_storage_id=target.storage_id if target else None,
            recorded_at=record.create_timestamp,
        )
    if history:
        return CheckRecord("planned", history[0].run_id, recorded_at=history[0].create_timestamp)
    return None


def latest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey
) -> Materialization | None:
    records = instance.fetch_materializations(asset_key, limit=1).records
    if not records:
        return None
    return Materialization(records[0].storage_id, records[0].run_id, records[0].timestamp)


def upstream_blocking_checks(
    repository_def: dg.RepositoryDefinition, asset_key: dg.AssetKey
) -> dict[dg.AssetKey, list[dg.AssetCheckKey]]:
    """Blocking checks of every asset upstream of `asset_key`, by the asset they check.

    The same set that stops the sync inside one run: a failed blocking check anywhere upstream
    fails the steps that depend on it, so the gate applies it across runs as well.
    """
    assets = repository_def.assets_defs_by_key
    specs: dict[dg.AssetKey, list[dg.AssetCheckKey]] = {}
    for assets_def in [*assets.values(), *repository_def.asset_checks_defs_by_key.values()]:
        for spec in assets_def.check_specs:
            if spec.blocking:
                specs.setdefault(spec.asset_key, [])
                if spec.key not in specs[spec.asset_key]:
                    specs[spec.asset_key].append(spec.key)
    upstream: set[dg.AssetKey] = set()
    todo = [asset_key]
    while todo:
        key = todo.pop()
        assets_def = assets.get(key)
        for parent in assets_def.asset_deps.get(key, set()) if assets_def else set():
            if parent not in upstream:
                upstream.add(parent)
                todo.append(parent)
    return {key: sorted(specs[key], key=str) for key in sorted(upstream, key=str) if key in specs}


# -- the decision (pure) --------------------------------------------------------------------------


def judge_check(
    check: dg.AssetCheckKey, record: CheckRecord | None, materialization: Materialization | None
) -> Refusal | None:
    """Why this check closes the gate, or None when it lets the data through."""
    if record is None:
        return Refusal(check, "has never been evaluated", None)
    if record.status == "planned":
        return Refusal(
            check, "was planned but has no result (its run did not evaluate it)", record.run_id
        )
    if record.status == "failed" and record.severity == "ERROR":
        detail = f": {record.description}" if record.description else ""
        return Refusal(check, f"failed{detail}", record.run_id)
    if materialization is not None and not _evaluated_latest(record, materialization):
        return Refusal(
            check,
            f"last ran before the latest materialization (run {materialization.run_id}): "
            "the data is untested",
            record.run_id,
        )
    return None


def _evaluated_latest(record: CheckRecord, materialization: Materialization) -> bool:
    if record.target_storage_id is not None:
        return record.target_storage_id == materialization.storage_id
    if record.run_id == materialization.run_id:
        return True
    return record.recorded_at > materialization.timestamp


def gate_refusals(
    instance: dg.DagsterInstance,
    repository_def: dg.RepositoryDefinition,
    destination: Destination,
    sync_key: dg.AssetKey,
) -> list[Refusal]:
    """Every reason the sync of `destination` must not trigger (empty: the gate is open)."""
    refusals: list[Refusal] = []
    own_guard = guard_check_name(destination)
    for asset_key, checks in upstream_blocking_checks(repository_def, sync_key).items():
        materialization = latest_materialization(instance, asset_key)
        for check in checks:
            # Another destination's guard on a shared mart compares with that destination's
            # snapshot; it gates that sync, not this one.
            if check.name.startswith(GUARD_CHECK_PREFIX) and check.name != own_guard:
                continue
            refusal = judge_check(check, latest_check_record(instance, check), materialization)
            if refusal:
                refusals.append(refusal)
    return refusals


def repository_for_gate(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
) -> dg.RepositoryDefinition:
    """The code location's repository, where every check definition lives.

    A run launched by the webserver, a sensor or the daemon carries it. `execute_in_process`
    (the demo, the tests) does not, and its job is cut down to the selected assets, so the
    definitions are loaded again here, once per process and environment.

    Dagster 1.13 has no public way to ask whether the step has a repository: the property
    (itself not marked public) raises `CheckError` from `check.invariant` when it is unset, and
    that class lives in `dagster_shared.check` (a package of the Dagster release, not a
    `dagster._` module). The in-process tests (tests/test_gate.py) take this fallback on every
    sync, so a change in that behaviour fails them.
    """
    try:
        return context.repository_def
    except CheckError:
        return _loaded_repository(
            os.environ.get("ACTIVATION_SANDBOX_URL", ""),
            str(destinations_file()),
            str(warehouse_path()),
        )


@cache
def _loaded_repository(sandbox: str, destinations: str, warehouse: str) -> dg.RepositoryDefinition:
    from activation.definitions import build_definitions  # it imports this module

    return build_definitions().get_repository_def()


def enforce_gate(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    destination: Destination,
    *,
    pagerduty: PagerDutyResource | None = None,
    slack: SlackWebhookResource | None = None,
) -> None:
    """Raise `GateClosed` (a `dg.Failure`) unless every upstream blocking check passed on the
    data the mart holds now. Call it first in a sync asset, before any request to Hightouch.

    `pagerduty` / `slack` are the resources used to page the owner on a refusal (and resolve the
    page once the checks pass); without them the gate still holds and says paging is off. The
    sync asset step and the resync jobs' ops both call it (the key comes from the destination).
    """
    sync_key = sync_asset_key_for(destination.key)
    refusals = gate_refusals(context.instance, repository_for_gate(context), destination, sync_key)
    pager = GatePager.from_step(context, destination, pagerduty=pagerduty, slack=slack)
    if not refusals:
        context.log.info(f"Gate open for {destination.key}: every upstream blocking check passed")
        _never_fail(context, pager.resolve_passing)
        return
    closed = GateClosed(destination, refusals)
    context.log.error(closed.description or "gate closed")
    _never_fail(context, lambda: pager.page_refusals(refusals))
    raise closed


def _never_fail(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, notify: Callable[[], None]
) -> None:
    """Paging must not decide the gate: an unexpected error there is logged, not raised."""
    try:
        notify()
    except Exception as error:  # noqa: BLE001 - any paging fault, the decision stands
        context.log.error(f"PAGING FAILED: {type(error).__name__}: {error}")


def build_blocked_sync_sensor(destinations: tuple[Destination, ...]) -> dg.SensorDefinition:
    """Pages owners when a run fails and leaves their sync's gate closed.

    Inside one run, a failed blocking check stops the sync step before it starts, so the step's
    own gate never runs and never pages. After any failed run this sensor reads every sync's gate
    and pages what it refuses (checks already paged are not paged again); the step's gate
    resolves the pages once the checks pass.
    """

    @dg.run_failure_sensor(
        name="page_blocked_syncs",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="After a failed run, pages the owner of every sync whose quality gate is "
        "now closed (a blocking check failed, or a mart is untested).",
    )
    def page_blocked_syncs(
        context: dg.RunFailureSensorContext,
        pagerduty: PagerDutyResource,
        slack: SlackWebhookResource,
    ) -> None:
        run_id = context.dagster_run.run_id
        repository = context.repository_def
        for destination in destinations:
            key = sync_asset_key_for(destination.key)
            pager = GatePager(
                context.instance,
                context.log,
                destination,
                sync_key=key,
                run_id=run_id,
                record=context.instance.report_runless_asset_event,
                pagerduty=pagerduty,
                slack=slack,
            )
            if pager.decided_in(run_id):
                continue  # the sync step's gate ran in this run and paged already
            refusals = gate_refusals(context.instance, repository, destination, key)
            if refusals:
                context.log.warning(
                    f"Run {run_id} failed and sync {destination.key} is blocked: "
                    + "; ".join(r.sentence() for r in refusals)
                )
                pager.page_refusals(refusals, only_new=True)

    return page_blocked_syncs
