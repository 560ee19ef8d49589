"""The one way a Hightouch sync is triggered: every job and asset that reaches Hightouch calls
`sync_destination`, and nothing else in the product calls the client's `trigger`.

In order, for one destination (its production sync, or the staging twin the promote job runs):

1. the quality gate (`activation.core.gate.gate_verdict`, the sync asset's `quality_gate` check):
   the upstream blocking checks passed, in a run of this code location, on the data the mart
   holds now;
2. the destination's concurrency pool: the calling step must carry `hightouch_<key>`, so two
   runs never sync one destination at once (checked here, so a new job cannot forget it);
3. the schema contract (`activation.core.contract.contract_verdict`, the `schema_contract`
   check): the mapped columns exist with the types of the last successful sync, and the live
   Hightouch mappings match destinations.yaml;
4. re-attach or trigger once (below), then follow the run to its end, or, for a detached wait
   (the destination's `wait`, asset steps only), record the run as in flight and return at once:
   `activation.core.detached` reports it when it ends (docs/detached-syncs.md);
5. the destination's failed-rows policy, recorded as the sync asset's `failed_rows` check;
6. after a production sync: the snapshot the guards compare the next sync with, the asset
   materialization when the caller is an op, and the resolve of the owner's gate page.

When 1 or 3 refuses, nothing is sent (activation/core/verdicts.py): an asset step yields both
checks and ends without a materialization (held back, not failed); an op logs them and fails
with `SyncHeldBack` (`GateClosed` when the gate refused).

The one failure that matters in reverse-ETL is shipping rows twice, and a retried step that
triggers a second sync does exactly that. So every trigger is remembered in Dagster's event log as
an `AssetObservation` on the sync asset, tagged with the run family (the root run id, shared by a
run, its step retries and its re-executions). A later attempt of the same family finds the
Hightouch run it already started and follows it instead of triggering again:

- step retried by its `RetryPolicy`, or run re-executed from failure: follow the remembered run
  while it is in flight or ended well; trigger anew only when it ended failed or interrupted
  (a retry of a failed sync is the point of retrying) or when the family already materialized it
  (a deliberate "re-execute all" of `activate` is a new sync);
- a step that died between asking Hightouch and remembering the answer: an intent observation is
  written before the trigger, and a run created since that intent is adopted;
- `once_per_family` (the promote job's production sync, bound to one approval): the family may
  trigger at most once, ever. A later attempt follows that run while it is in flight and is
  refused once it has ended, whatever the run config says: a new push needs a new approval.
"""

from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import dagster as dg
from dagster import AssetExecutionContext, OpExecutionContext

from activation.core.contract import contract_verdict
from activation.core.gate import GateClosed, gate_verdict, resolve_gate_page
from activation.core.guards import record_synced_snapshot
from activation.core.ledger_signature import MATERIALIZATION, LedgerSigner
from activation.core.verdicts import FAILED_ROWS_CHECK, PreSyncVerdict, SyncHeldBack
from activation.lib.destinations import Destination, FailurePolicy, sync_asset_key_for
from activation.lib.hightouch import (
    TERMINAL_FAILURE,
    HightouchClient,
    HightouchError,
    HightouchPollTimeout,
    HightouchRequestRefused,
    HightouchRunFailed,
    RowCounts,
    SyncRun,
    expected_end,
    parse_api_time,
)
from activation.resources import (
    HightouchResource,
    PagerDutyResource,
    QualityGate,
    SlackWebhookResource,
)

# The sync runs as an asset step (the activate job) or as an op (resync and promote jobs)
# writing the same asset's events.
StepContext = AssetExecutionContext | OpExecutionContext

TRIGGER_MARK = "activation_trigger"  # observation metadata: "intent", "triggered", "detached"
DETACHED = "detached"  # the trigger mark of a run a step left in flight (activation.core.detached)
REPORTED = "reported"  # ... and the mark the detached-sync sensor writes once it reported its end
SYNC_STAGE_TAG = "activation/sync_stage"
_LOOKBACK = 50  # observations read back per attempt; a family's marks are the newest ones


class Stage(StrEnum):
    """Which of a destination's Hightouch syncs a step runs."""

    PRODUCTION = "production"
    STAGING = "staging"


@dataclass(frozen=True)
class SyncOptions:
    full_resync: bool = False
    reset_cdc: bool = False


@dataclass(frozen=True)
class SyncResult:
    """A finished, accepted Hightouch run and its metadata (the names the summaries read), or,
    with `in_flight`, a run left in flight by a detached wait (`run` as last read)."""

    run: SyncRun
    run_url: str
    metadata: dict[str, dg.MetadataValue]
    in_flight: bool = False


class SyncRefused(dg.Failure):
    """The sync path refused before any trigger (wrong pool, a spent approval); not retried."""

    def __init__(self, destination: Destination, reason: str) -> None:
        super().__init__(
            description=f"Sync {destination.key} refused: {reason}. Nothing was sent.",
            metadata={"destination": destination.key},
            allow_retries=False,
        )


def sync_reference(destination: Destination, stage: Stage) -> tuple[str | None, str | None]:
    """(sync id, sync slug) of the destination's production sync or its staging twin."""
    if stage is Stage.PRODUCTION:
        return destination.sync_id, destination.sync_slug
    if destination.staging is None:
        raise SyncRefused(destination, "no staging twin is declared in destinations.yaml")
    return destination.staging.sync_id, destination.staging.sync_slug


def run_family(context: StepContext) -> str:
    """The id shared by a run, its step retries and every re-execution of it."""
    return context.run.root_run_id or context.run.run_id


def _marks(context: StepContext, key: dg.AssetKey, sync_id: str) -> list[dict[str, str]]:
    """This family's trigger marks for the sync, newest first. Only marks written inside a run
    count: a mark reported through the webserver (runless, anyone can send one) naming this
    family could otherwise make a retry follow a run of the forger's choosing."""
    family = run_family(context)
    result = context.instance.fetch_observations(key, limit=_LOOKBACK)
    marks = []
    for record in result.records:
        observation = record.event_log_entry.asset_observation
        if observation is None or not record.run_id:
            continue
        values = {name: str(value.value) for name, value in observation.metadata.items()}
        if (
            values.get("dagster_run_family") == family
            and values.get("hightouch_sync_id") == sync_id
        ) and TRIGGER_MARK in values:
            marks.append(values)
    return marks


def _mark(
    context: StepContext,
    key: dg.AssetKey,
    sync_id: str,
    kind: str,
    **values: str | dg.MetadataValue,
) -> None:
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


def _already_materialized(
    context: StepContext, key: dg.AssetKey, hightouch_run_id: str, signer: LedgerSigner | None
) -> bool:
    """`hightouch_run_id` is recorded as synced: by a run, or by the detached follower (a runless
    report carrying its signature, checked with `signer`). Any other runless report (anyone can
    send one through the webserver) does not count: a forged one would make a retry skip or
    refuse a sync that never happened. Without it, a retry follows the ended run again, which
    triggers nothing."""
    result = context.instance.fetch_materializations(key, limit=5)
    for record in result.records:
        materialization = record.event_log_entry.asset_materialization
        meta = materialization.metadata if materialization else {}
        if (
            "hightouch_run_id" not in meta
            or str(meta["hightouch_run_id"].value) != hightouch_run_id
        ):
            continue
        if record.run_id or (signer is not None and signer.verifies(MATERIALIZATION, key, meta)):
            return True
    return False


def _adopt_after_intent(
    context: StepContext, key: dg.AssetKey, client: HightouchClient, sync_id: str, intent: dict
) -> str | None:
    """The run an attempt that stopped between asking and remembering started, if any."""
    since = parse_api_time(intent.get("intent_at"))
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


def find_run_to_follow(
    context: StepContext,
    key: dg.AssetKey,
    client: HightouchClient,
    sync_id: str,
    *,
    once_per_family: bool = False,
    destination: Destination | None = None,
    signer: LedgerSigner | None = None,
) -> str | None:
    """The Hightouch run an earlier attempt of this run family started and that is worth
    following, or None when a new trigger is right. With `once_per_family`, a run the family
    already recorded as synced refuses (`SyncRefused`) instead of allowing a second trigger.
    `signer` lets the detached follower's signed reports count as recorded."""
    marks = _marks(context, key, sync_id)
    if not marks:
        return None
    if marks[0][TRIGGER_MARK] == "intent":
        adopted = _adopt_after_intent(context, key, client, sync_id, marks[0])
        if adopted or not once_per_family:
            return adopted
    triggered = next((m for m in marks if m[TRIGGER_MARK] == "triggered"), None)
    if triggered is None:
        return None
    run_id = triggered["hightouch_run_id"]
    if once_per_family:
        if _already_materialized(context, key, run_id, signer):
            raise SyncRefused(
                destination,  # type: ignore[arg-type]
                f"this promotion's approval was already used by Hightouch run {run_id} of sync "
                f"{sync_id}, which is recorded as synced; a new production push needs a new "
                "promote run and a new approval",
            )
        context.log.info(
            f"Re-attaching to Hightouch run {run_id} that this promotion's approval started "
            "(an approval triggers production at most once)."
        )
        return run_id
    if _already_materialized(context, key, run_id, signer):
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


def failed_rows_verdict(
    destination: Destination, run: SyncRun, run_url: str
) -> tuple[PreSyncVerdict, str | None]:
    """The `failed_rows` check on an ended run, and the violation (None when within policy).

    A run that ended failed, cancelled or interrupted fails the check (its rows were not all
    delivered; the error says why). Over the policy the check fails as an error when the policy
    says `on_exceed: fail`, as a warning with `warn`. The same verdict whether the step waited
    attached or the detached-sync sensor followed the run."""
    policy = destination.failure_policy
    metadata: dict[str, dg.MetadataValue] = {
        "hightouch_run_id": dg.MetadataValue.text(run.id),
        "hightouch_status": dg.MetadataValue.text(run.status),
        "failed_rows": dg.MetadataValue.int(run.failed.total),
        "planned_rows": dg.MetadataValue.int(run.planned.total),
        "hightouch_run_url": dg.MetadataValue.url(run_url),
    }
    if run.status in TERMINAL_FAILURE:
        why = f"Hightouch run {run.id} ended {run.status}: {run.error or 'no error message'}"
        verdict = PreSyncVerdict(FAILED_ROWS_CHECK, False, why + ".", metadata)
        return verdict, why
    violation = failed_rows_violation(run, policy)
    if violation is None:
        verdict = PreSyncVerdict(
            FAILED_ROWS_CHECK,
            True,
            f"Hightouch run {run.id}: {run.failed.total} of {run.planned.total} planned rows "
            "failed, within the failure policy.",
            metadata,
        )
        return verdict, None
    severity = (
        dg.AssetCheckSeverity.ERROR if policy.on_exceed == "fail" else dg.AssetCheckSeverity.WARN
    )
    verdict = PreSyncVerdict(
        FAILED_ROWS_CHECK,
        False,
        f"Hightouch run {run.id}: {violation} (failure_policy on_exceed: {policy.on_exceed}).",
        metadata,
        severity=severity,
    )
    return verdict, violation


def sync_run_metadata(run: SyncRun, run_url: str) -> dict[str, dg.MetadataValue]:
    """Metadata of a Hightouch run (the names the report and the summaries read back)."""
    values: dict[str, str | int] = {
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
    metadata: dict[str, dg.MetadataValue] = {
        name: dg.MetadataValue.text(v) if isinstance(v, str) else dg.MetadataValue.int(int(v))
        for name, v in values.items()
    }
    metadata["hightouch_run_url"] = dg.MetadataValue.url(run_url)
    return metadata


# Resource fields that say where a secret or the rows go. A run config may tune timeouts, never
# these: an operator with Launchpad access could otherwise send the Hightouch token, the owners'
# pages or the run summaries to an address of their choosing.
PINNED_RESOURCE_FIELDS = {
    "hightouch": ("api_base_url", "api_token", "app_url"),
    "slack": ("webhook_url", "signing_secret", "bot_token", "api_base_url"),
    "teams": ("webhook_url",),
    "pagerduty": ("events_url",),
}


def _check_run_config(context: StepContext, destination: Destination) -> None:
    """Refuse, before any request, a run whose config overrides where secrets and rows go."""

    def config_of(name: str) -> Mapping[str, object]:
        resources = (context.run.run_config or {}).get("resources")
        resource = resources.get(name) if isinstance(resources, Mapping) else None
        config = resource.get("config") if isinstance(resource, Mapping) else None
        return config if isinstance(config, Mapping) else {}

    overridden = sorted(
        f"resources.{name}.config.{field}"
        for name, fields in PINNED_RESOURCE_FIELDS.items()
        for field in fields
        if field in config_of(name)
    )
    if overridden:
        raise SyncRefused(
            destination,
            f"the run config overrides {', '.join(overridden)}; endpoints and secrets come "
            "from the code location's environment only",
        )


def _check_pool(context: StepContext, destination: Destination) -> None:
    """Every step that syncs a destination must hold its pool; a job that forgot would let two
    runs write one CRM object at once, so it is refused before anything is sent."""
    held = context.op_def.pool
    if held != destination.pool:
        raise SyncRefused(
            destination,
            f"step {context.op_def.name} holds pool {held or '(none)'}, not {destination.pool}; "
            "every step that syncs a destination must carry its pool",
        )


def sync_destination(
    context: StepContext,
    destination: Destination,
    *,
    hightouch: HightouchResource,
    gate: QualityGate,
    pagerduty: PagerDutyResource | None,
    slack: SlackWebhookResource | None,
    options: SyncOptions = SyncOptions(),
    stage: Stage = Stage.PRODUCTION,
    once_per_family: bool = False,
    extra_metadata: Mapping[str, object] | None = None,
    verdicts: list[PreSyncVerdict] | None = None,
    may_detach: bool = False,
) -> SyncResult:
    """Gate, pool, re-attach or trigger once, follow, judge failed rows, record: the one path
    from a Dagster step to a Hightouch trigger (see the module docstring).

    Returns the accepted run; raises `SyncHeldBack` (`GateClosed` for the quality gate) or
    `SyncRefused` before any trigger, or a `dg.Failure` (retryable only for transient faults)
    after one. The pre-sync decisions are appended to `verdicts` as they are taken, for an asset
    step to yield as its own check results (also when this raises); without `verdicts` (an op)
    they are logged as evaluations of the sync asset's checks. An op caller gets the sync asset's
    materialization logged here; an asset step returns `result.metadata` itself.

    With `may_detach` (asset steps), a production sync whose destination waits detached returns
    right after the trigger (or re-attach) with `in_flight` set: the run is recorded as in
    flight in the event log, and neither materialization nor `failed_rows` is reported here.
    """
    _check_run_config(context, destination)
    key = sync_asset_key_for(destination.key)
    decided: list[PreSyncVerdict] = [] if verdicts is None else verdicts

    def decide(verdict: PreSyncVerdict) -> None:
        decided.append(verdict)
        if verdicts is None and stage is Stage.PRODUCTION:
            # `log_event` records check evaluations too (its annotation lags behind).
            context.log_event(verdict.evaluation(key))  # type: ignore[arg-type]

    gate_decision, refusals = gate_verdict(
        context, destination, gate=gate, pagerduty=pagerduty, slack=slack
    )
    decide(gate_decision)
    _check_pool(context, destination)
    with hightouch.get_client() as client:
        try:
            declared_id, slug = sync_reference(destination, stage)
            sync_id = declared_id or client.resolve_sync_id(slug or "")
            # Taken even when the gate refused: a renamed column also closes the gate (its
            # fingerprint cannot be read), and only the contract names the column and field.
            decide(contract_verdict(context, destination, client, sync_id))
            if refusals:
                raise GateClosed(destination, refusals, list(decided))
            if any(v.blocks for v in decided):
                raise SyncHeldBack(destination, list(decided))
            carried: dict[str, dg.MetadataValue] = {}
            for verdict in decided:
                carried.update(verdict.record_on_success)
            carried.update({k: _metadata_value(v) for k, v in (extra_metadata or {}).items()})
            detachable = may_detach and stage is Stage.PRODUCTION and not once_per_family
            signer = LedgerSigner(hightouch.api_token)
            if detachable:
                _wait_for_detached_predecessor(context, key, destination, client, sync_id, signer)
            result = _sync(
                context,
                key,
                destination,
                client,
                sync_id,
                options,
                stage,
                once_per_family,
                decide=decide,
                signer=signer,
                detach_with=carried if detachable else None,
            )
            if result.in_flight:
                return result
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
                allow_retries=error.run.status == "interrupted" and not once_per_family,
            ) from None
        except (HightouchRequestRefused, HightouchPollTimeout) as error:
            raise dg.Failure(
                description=f"{destination.key}: {error}", allow_retries=False
            ) from None
        except HightouchError as error:
            raise dg.Failure(
                description=f"{destination.key}: {error}", allow_retries=True
            ) from None
    metadata = result.metadata
    metadata.update(carried)
    metadata["sync_stage"] = dg.MetadataValue.text(stage.value)
    if stage is Stage.PRODUCTION:
        _remember_synced_rows(context, destination, metadata)
        if not context.has_assets_def:
            context.log_event(dg.AssetMaterialization(asset_key=key, metadata=metadata))
        _resolve_page(context, destination, pagerduty, slack)
    return result


def _sync(
    context: StepContext,
    key: dg.AssetKey,
    destination: Destination,
    client: HightouchClient,
    sync_id: str,
    options: SyncOptions,
    stage: Stage,
    once_per_family: bool,
    *,
    decide: Callable[[PreSyncVerdict], None],
    signer: LedgerSigner,
    detach_with: Mapping[str, dg.MetadataValue] | None = None,
) -> SyncResult:
    """Trigger once (or re-attach), then follow the run to its end and judge its failed rows;
    with `detach_with` (the metadata the sync's materialization will carry), a destination that
    waits detached records the run as in flight instead and returns at once."""
    run_id = find_run_to_follow(
        context,
        key,
        client,
        sync_id,
        once_per_family=once_per_family,
        destination=destination,
        signer=signer,
    )
    if run_id is None:
        _mark(context, key, sync_id, "intent", intent_at=datetime.now(UTC).isoformat())
        run_id = client.trigger(
            sync_id, full_resync=options.full_resync, reset_cdc=options.reset_cdc
        )
        _mark(context, key, sync_id, "triggered", hightouch_run_id=run_id)
        context.log.info(
            f"Triggered Hightouch run {run_id} of {stage.value} sync {sync_id}"
            + (" (full resync)" if options.full_resync else "")
        )
    url = client.run_url(sync_id, run_id)
    history: list[SyncRun] | None = None
    if detach_with is not None and destination.wait != "attached":
        history = client.first_read(sync_id, run_id)
        latest = next((r for r in history if r.id == run_id), None) or _not_listed(sync_id, run_id)
        why = _detach_reason(destination, latest, history)
        if why is not None and not latest.finished:
            _record_detached(context, key, destination, sync_id, latest, stage, detach_with, why)
            return SyncResult(latest, url, sync_run_metadata(latest, url), in_flight=True)
    try:
        run = client.wait_for_run(sync_id, run_id, history=history)
    except HightouchRunFailed as error:
        if stage is Stage.PRODUCTION:
            decide(failed_rows_verdict(destination, error.run, error.run_url)[0])
        raise
    metadata = sync_run_metadata(run, url)
    context.log.info(
        f"Hightouch run {run_id} {run.status}: planned +{run.planned.added} "
        f"~{run.planned.changed} -{run.planned.removed}, failed {run.failed.total}"
    )
    verdict, violation = failed_rows_verdict(destination, run, url)
    if stage is Stage.PRODUCTION:
        decide(verdict)
    if violation:
        message = f"{destination.key}: Hightouch run {run_id} ({run.status}): {violation} ({url})"
        if destination.failure_policy.on_exceed == "fail":
            metadata["destination"] = dg.MetadataValue.text(destination.key)
            raise dg.Failure(description=message, metadata=metadata, allow_retries=False)
        context.log.warning(message)
        metadata["failure_policy"] = dg.MetadataValue.text(f"exceeded, warned: {violation}")
    return SyncResult(run, url, metadata)


def _not_listed(sync_id: str, run_id: str) -> SyncRun:
    """A run Hightouch does not list yet (it lists a new run within seconds): queued."""
    none = RowCounts()
    return SyncRun(run_id, sync_id, "queued", None, None, None, 0, 0.0, None, none, none, none)


def _detach_reason(destination: Destination, run: SyncRun, history: list[SyncRun]) -> str | None:
    """Why this run is left in flight, or None when the step waits for it (attached)."""
    if destination.wait == "detached":
        return "wait: detached in destinations.yaml"
    if destination.wait != "auto":
        return None
    window = expected_end(run, history, datetime.now(UTC).timestamp())
    if window is None:
        return None
    started = parse_api_time(run.started_at) or parse_api_time(run.created_at)
    elapsed = max(0.0, datetime.now(UTC).timestamp() - started.timestamp()) if started else 0.0
    longest = window[1] + elapsed
    if longest <= destination.detach_after_seconds:
        return None
    return (
        f"wait: auto, and recent runs of this sync took up to {longest:.0f}s, more than "
        f"detach_after_seconds={destination.detach_after_seconds:.0f}"
    )


def _record_detached(
    context: StepContext,
    key: dg.AssetKey,
    destination: Destination,
    sync_id: str,
    run: SyncRun,
    stage: Stage,
    carried: Mapping[str, dg.MetadataValue],
    why: str,
) -> None:
    """The durable in-flight record: a trigger mark in Dagster's event log carrying what the
    detached-sync sensor needs to report the run as this step would have."""
    _mark(
        context,
        key,
        sync_id,
        DETACHED,
        **{
            **carried,
            "hightouch_run_id": run.id,
            "destination": destination.key,
            "sync_stage": stage.value,
            "dagster_run_id": context.run.run_id,
            "detached_at": datetime.now(UTC).isoformat(),
            "detached_because": why,
        },
    )
    context.log.info(
        f"Hightouch run {run.id} of sync {sync_id} is in flight ({run.status}); this step ends "
        f"without waiting ({why}). The detached_sync_sensor reports {key.to_user_string()}'s "
        "materialization and its failed_rows check when the run ends, and pages the owner if "
        "it fails."
    )


def _wait_for_detached_predecessor(
    context: StepContext,
    key: dg.AssetKey,
    destination: Destination,
    client: HightouchClient,
    sync_id: str,
    signer: LedgerSigner,
) -> None:
    """One sync of a destination at a time, as its pool promises: a step whose predecessor left
    a run in flight (detached) waits for that run to end before triggering. Its end is the
    sensor's to report; a failed one is not this step's failure."""
    from activation.core.detached import in_flight_of  # the follower imports this module

    for record in in_flight_of(context.instance, destination, signer=signer, log=context.log):
        if record.sync_id != sync_id or record.run_family == run_family(context):
            continue  # this family's own run is re-attached to, never waited for twice
        context.log.info(
            f"Hightouch run {record.run_id} of {destination.key}, left in flight by Dagster run "
            f"{record.dagster_run_id}, has not been reported ended yet; waiting for it first."
        )
        with suppress(HightouchRunFailed):
            client.wait_for_run(sync_id, record.run_id)


def _metadata_value(value: object) -> dg.MetadataValue:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    return dg.MetadataValue.text(str(value))


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


def _resolve_page(
    context: StepContext,
    destination: Destination,
    pagerduty: PagerDutyResource | None,
    slack: SlackWebhookResource | None,
) -> None:
    """The owner's gate page closes once the destination synced again; paging faults are
    logged and never fail a sync that shipped."""
    try:
        resolve_gate_page(context, destination, pagerduty=pagerduty, slack=slack)
    except Exception as error:  # noqa: BLE001 - the rows are shipped; the page can wait
        context.log.error(f"PAGING FAILED: gate page of {destination.key} not resolved: {error}")
