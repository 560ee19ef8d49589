"""One destination's Hightouch sync inside a Dagster step: re-attach or trigger once, follow, judge.

The one failure that matters in reverse-ETL is shipping rows twice, and a retried step that
triggers a second sync does exactly that. So every trigger is remembered in Dagster's event log as
an `AssetObservation` on the sync asset, tagged with the run family (the root run id, shared by a
run, its step retries and its re-executions). A later attempt of the same family finds the
Hightouch run it already started and follows it instead of triggering again:

- step retried by its `RetryPolicy`, or run re-executed from failure: follow the remembered run
  while it is in flight or ended well; trigger anew only when it ended failed or interrupted
  (a retry of a failed sync is the point of retrying) or when the family already materialized it
  (a deliberate "re-execute all" is a new sync);
- a step that died between asking Hightouch and remembering the answer: an intent observation is
  written before the trigger, and a run created since that intent is adopted.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster import AssetExecutionContext, OpExecutionContext

from activation.destinations import Destination, FailurePolicy
from activation.guards import record_synced_snapshot
from activation.hightouch import (
    TERMINAL_FAILURE,
    HightouchClient,
    HightouchError,
    HightouchPollTimeout,
    HightouchRequestRefused,
    HightouchRunFailed,
    SyncRun,
    parse_api_time,
)
from activation.resources import HightouchResource

# The sync runs as an asset step (the activate job) or as an op (resync jobs) writing the same
# asset's events.
StepContext = AssetExecutionContext | OpExecutionContext

TRIGGER_MARK = "activation_trigger"  # observation metadata: "intent" or "triggered"
_LOOKBACK = 50  # observations read back per attempt; a family's marks are the newest ones


@dataclass(frozen=True)
class SyncOptions:
    full_resync: bool = False
    reset_cdc: bool = False


def run_family(context: StepContext) -> str:
    """The id shared by a run, its step retries and every re-execution of it."""
    return context.run.root_run_id or context.run.run_id


def _marks(context: StepContext, key: dg.AssetKey, sync_id: str) -> list[dict[str, str]]:
    """This family's trigger marks for the sync, newest first."""
    family = run_family(context)
    result = context.instance.fetch_observations(key, limit=_LOOKBACK)
    marks = []
    for record in result.records:
        observation = record.event_log_entry.asset_observation
        if observation is None:
            continue
        values = {name: str(value.value) for name, value in observation.metadata.items()}
        if (
            values.get("dagster_run_family") == family
            and values.get("hightouch_sync_id") == sync_id
        ) and TRIGGER_MARK in values:
            marks.append(values)
    return marks


def _mark(context: StepContext, key: dg.AssetKey, sync_id: str, kind: str, **values: str) -> None:
    context.log_event(
        dg.AssetObservation(
            asset_key=key,
            metadata={
                TRIGGER_MARK: kind,
                "dagster_run_family": run_family(context),
                "hightouch_sync_id": sync_id,
                **values,
            },
        )
    )


def _already_materialized(context: StepContext, key: dg.AssetKey, hightouch_run_id: str) -> bool:
    result = context.instance.fetch_materializations(key, limit=5)
    for record in result.records:
        materialization = record.event_log_entry.asset_materialization
        meta = materialization.metadata if materialization else {}
        if "hightouch_run_id" in meta and str(meta["hightouch_run_id"].value) == hightouch_run_id:
            return True
    return False


def find_run_to_follow(
    context: StepContext, key: dg.AssetKey, client: HightouchClient, sync_id: str
) -> str | None:
    """The Hightouch run an earlier attempt of this run family started and that is worth
    following, or None when a new trigger is right."""
    marks = _marks(context, key, sync_id)
    if not marks:
        return None
    newest = marks[0]
    if newest[TRIGGER_MARK] == "intent":
        # The earlier attempt stopped between asking and remembering: adopt what it started.
        since = parse_api_time(newest.get("intent_at"))
        for run in client.recent_runs(sync_id):
            created = parse_api_time(run.created_at)
            if since and created and created >= since:
                context.log.warning(
                    f"An earlier attempt asked Hightouch to run sync {sync_id} and stopped "
                    f"before recording the answer; following run {run.id} it started."
                )
                _mark(context, key, sync_id, "triggered", hightouch_run_id=run.id)
                return run.id
        return None
    run_id = newest["hightouch_run_id"]
    if _already_materialized(context, key, run_id):
        return None
    run = client.get_run(sync_id, run_id)
    if run is not None and run.finished and run.status in TERMINAL_FAILURE:
        context.log.info(
            f"Hightouch run {run_id} from an earlier attempt ended {run.status}; triggering anew."
        )
        return None
    context.log.info(
        f"Re-attaching to Hightouch run {run_id} that an earlier attempt of this run started "
        "(no second trigger)."
    )
    return run_id


def failed_rows_violation(run: SyncRun, policy: FailurePolicy) -> str | None:
    """Why the run's failed rows break the destination's policy, or None when they do not.

    With no limit declared, any failed row breaks it: the safe default for a product whose
    job is that no row goes missing unnoticed. `warning` runs follow the same rule.
    """
    failed = run.failed.total
    attempted = run.planned.total or (run.successful.total + failed)
    max_rows = policy.max_failed_rows
    if max_rows is None and policy.max_failed_ratio is None:
        max_rows = 0
    if max_rows is not None and failed > max_rows:
        return f"{failed} rows failed, more than max_failed_rows={max_rows}"
    if (
        policy.max_failed_ratio is not None
        and attempted
        and failed / attempted > (policy.max_failed_ratio)
    ):
        return (
            f"{failed} of {attempted} rows failed ({failed / attempted:.2%}), more than "
            f"max_failed_ratio={policy.max_failed_ratio:.2%}"
        )
    return None


def sync_run_metadata(run: SyncRun, run_url: str) -> dict[str, dg.MetadataValue]:
    """Metadata of a Hightouch run (the names the report and the summaries read back)."""
    values: dict[str, object] = {
        "hightouch_sync_id": run.sync_id,
        "hightouch_run_id": run.id,
        "hightouch_status": run.status,
        "query_size": run.query_size,
    }
    for prefix, counts in (
        ("planned", run.planned),
        ("successful", run.successful),
        ("failed", run.failed),
    ):
        values[f"{prefix}_added"] = counts.added
        values[f"{prefix}_changed"] = counts.changed
        values[f"{prefix}_removed"] = counts.removed
    metadata = {
        name: dg.MetadataValue.text(v) if isinstance(v, str) else dg.MetadataValue.int(v)
        for name, v in values.items()
    }
    metadata["hightouch_run_url"] = dg.MetadataValue.url(run_url)
    return metadata


def run_destination_sync(
    context: StepContext,
    destination: Destination,
    hightouch: HightouchResource,
    options: SyncOptions,
    key: dg.AssetKey,
) -> dict[str, dg.MetadataValue]:
    """Trigger (or re-attach to) the destination's Hightouch run, follow it, judge its rows.

    Returns the metadata of the finished run for the sync asset `key`; raises `dg.Failure`
    (retryable only for transient faults) otherwise.
    """
    with hightouch.get_client() as client:
        try:
            return _sync(context, key, destination, client, options)
        except HightouchRunFailed as error:
            # Only an interrupted run (Hightouch's own infrastructure stopped it) is worth a new
            # trigger from a step retry. A failed run is the destination's verdict and a
            # cancelled one was stopped on purpose: both fail the step for a human to look at.
            raise dg.Failure(
                description=f"{destination.key}: {error}",
                metadata={
                    **sync_run_metadata(error.run, error.run_url),
                    "destination": dg.MetadataValue.text(destination.key),
                },
                allow_retries=error.run.status == "interrupted",
            ) from None
        except (HightouchRequestRefused, HightouchPollTimeout) as error:
            raise dg.Failure(
                description=f"{destination.key}: {error}", allow_retries=False
            ) from None
        except HightouchError as error:
            raise dg.Failure(
                description=f"{destination.key}: {error}", allow_retries=True
            ) from None


def _sync(
    context: StepContext,
    key: dg.AssetKey,
    destination: Destination,
    client: HightouchClient,
    options: SyncOptions,
) -> dict[str, dg.MetadataValue]:
    sync_id = destination.sync_id or client.resolve_sync_id(destination.sync_slug or "")
    run_id = find_run_to_follow(context, key, client, sync_id)
    if run_id is None:
        _mark(context, key, sync_id, "intent", intent_at=datetime.now(UTC).isoformat())
        run_id = client.trigger(
            sync_id, full_resync=options.full_resync, reset_cdc=options.reset_cdc
        )
        _mark(context, key, sync_id, "triggered", hightouch_run_id=run_id)
        context.log.info(
            f"Triggered Hightouch run {run_id} of sync {sync_id}"
            + (" (full resync)" if options.full_resync else "")
        )
    run = client.wait_for_run(sync_id, run_id)
    url = client.run_url(sync_id, run_id)
    metadata = sync_run_metadata(run, url)
    context.log.info(
        f"Hightouch run {run_id} {run.status}: planned +{run.planned.added} "
        f"~{run.planned.changed} -{run.planned.removed}, failed {run.failed.total}"
    )
    violation = failed_rows_violation(run, destination.failure_policy)
    if violation:
        message = f"{destination.key}: Hightouch run {run_id} ({run.status}): {violation} ({url})"
        if destination.failure_policy.on_exceed == "fail":
            metadata["destination"] = dg.MetadataValue.text(destination.key)
            raise dg.Failure(description=message, metadata=metadata, allow_retries=False)
        context.log.warning(message)
        metadata["failure_policy"] = dg.MetadataValue.text(f"exceeded, warned: {violation}")
    _remember_synced_rows(context, destination, metadata)
    return metadata


def _remember_synced_rows(
    context: StepContext, destination: Destination, metadata: dict[str, dg.MetadataValue]
) -> None:
    """The guards measure the next sync's changes against what this one shipped. A snapshot
    that cannot be written leaves the older one in place: the next guard then sees more change,
    never less, so the failure is logged and the sync stands."""
    try:
        rows = record_synced_snapshot(destination)
    except Exception as error:  # the warehouse may be locked or unreachable; see docstring
        context.log.warning(f"{destination.key}: synced snapshot not recorded: {error}")
        return
    metadata["synced_snapshot_rows"] = dg.MetadataValue.int(rows)
