"""The end of every run that synced: one summary per run, and each failed destination's owner paged.

Dagster never executes a step downstream of a failed one, so a summary asset inside the run would
be skipped exactly when it matters most (Salesforce down, the other destinations shipped). The
summary is therefore written by two run-status sensors, on success and on failure, for every run
of this code location that touched a sync: they read the run's event log, post one Slack message
listing each destination's status, counts and Hightouch run id, record the same table as a
materialization of the `activate/activation_report` asset (so it is in the UI, linked to the
run), and page the owner of each destination whose sync failed, and only that owner. A page is
resolved when the destination's next sync succeeds. Gate refusals are paged by the gate itself.

A sync its step left in flight (a detached wait) is reported "in flight" with its Hightouch run
id; the detached-sync sensor reports its end (activation/core/detached.py).

A held-back sync is reported "blocked by <check>", never "skipped" nor "failed": its step yielded
a failed pre-sync check (activation/core/verdicts.py), an op failed with `SyncHeldBack`, or the
sync never started because a blocking check upstream failed earlier in the run. In that last
case the summary asks the gate which checks refuse now, and records that as the sync asset's
`quality_gate` evaluation, so the sync's own page names them too.

`report_run` is the function both sensors call; the demo calls it too, right after its
in-process run, where no daemon runs sensors.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from activation.core.contract import CONTRACT_CHECK
from activation.core.event_log import metadata_text
from activation.core.gate import gate_refusals, verdict_of
from activation.core.paging import (
    PagerDutyResource,
    page_sync_failure,
    resolve_page,
    sync_failure_key,
)
from activation.core.verdicts import BLOCKED_BY, FAILED_ROWS_CHECK, GATE_CHECK
from activation.dagster_api import events_of_run
from activation.lib.destinations import SYNC_KEY_PREFIX, Destination, sync_asset_key_for
from activation.lib.notify import NotificationError, SyncOutcome, sync_summary_message
from activation.resources import QualityGate, SlackWebhookResource

REPORT_KEY = dg.AssetKey([SYNC_KEY_PREFIX, "activation_report"])
IN_FLIGHT_STATUS = "in flight"
_TRIGGER_MARK = "activation_trigger"  # activation.core.sync_path.TRIGGER_MARK (no import cycle)
FULL_RESYNC_JOB = "full_resync"
ONE_OFF_RESYNC_JOB = "resync_destination"
# These jobs post their own summary (their failures are collected, not raised per step).
SELF_REPORTING_JOBS = frozenset({FULL_RESYNC_JOB, ONE_OFF_RESYNC_JOB})


@dataclass(frozen=True)
class RunReport:
    run_id: str
    outcomes: tuple[SyncOutcome, ...]
    failures: dict[str, str]
    """Destination key -> why its sync failed (gate refusals excluded: the gate pages those)."""

    @property
    def statuses(self) -> dict[str, str]:
        return {o.destination: o.status for o in self.outcomes}


def outcome_from_metadata(
    destination_key: str,
    metadata: Mapping[str, dg.MetadataValue],
    *,
    status: str | None = None,
    detail: str = "",
) -> SyncOutcome:
    """A destination's outcome from the metadata of its sync (materialization or failure)."""

    def value(name: str) -> object:
        found = metadata.get(name)
        return found.value if found is not None else None

    def number(name: str) -> int:
        return int(value(name) or 0)  # type: ignore[call-overload]

    run_id, run_url = value("hightouch_run_id"), value("hightouch_run_url")
    return SyncOutcome(
        destination=destination_key,
        status=status or str(value("hightouch_status") or "success"),
        hightouch_run_id=str(run_id) if run_id else None,
        run_url=str(run_url) if run_url else None,
        added=number("successful_added"),
        changed=number("successful_changed"),
        removed=number("successful_removed"),
        failed=sum(number(f"failed_{kind}") for kind in ("added", "changed", "removed")),
        detail=detail,
    )


def _sync_key_of(asset_key: dg.AssetKey | None, by_key: Mapping[str, Destination]) -> str | None:
    path = asset_key.path if asset_key else []
    if len(path) == 2 and path[0] == SYNC_KEY_PREFIX and path[1] in by_key:
        return path[1]
    return None


def summarize_run(
    instance: dg.DagsterInstance,
    run_id: str,
    destinations: Sequence[Destination],
    gate: QualityGate | None = None,
) -> RunReport | None:
    """Each destination's outcome in the run, or None when the run touched no sync.

    With `gate`, a planned sync that never started is checked against the gate now: when it
    refuses, the sync is "blocked by" its refusing checks and the sync asset's `quality_gate`
    evaluation records them (once per run and sync)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.job_name in SELF_REPORTING_JOBS:
        return None
    by_key = {d.key: d for d in destinations}
    synced: dict[str, SyncOutcome] = {}
    failed: dict[str, SyncOutcome] = {}
    failures: dict[str, str] = {}
    planned: set[str] = set()
    gate_decided: set[str] = set()
    in_flight: dict[str, SyncOutcome] = {}
    for entry in events_of_run(instance, run_id):
        event = entry.dagster_event
        if event is None:
            continue
        # Dagster records, at run start, every asset the run plans to materialize: whatever
        # the job, a planned sync with no outcome was skipped.
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            key = _sync_key_of(event.asset_key, by_key)
            if key:
                planned.add(key)
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.asset_check_evaluation_data
            key = _sync_key_of(evaluation.asset_key, by_key)
            if key and evaluation.check_name == GATE_CHECK:
                gate_decided.add(key)
            if (
                key
                and not evaluation.passed
                and evaluation.severity.value == "ERROR"
                and evaluation.check_name != FAILED_ROWS_CHECK  # judged after a sync, not before
            ):
                # A pre-sync check refused: the sync was held back, nothing was sent.
                names = metadata_text(evaluation.metadata, BLOCKED_BY) or evaluation.check_name
                failed[key] = SyncOutcome(
                    key, f"blocked by {names}", None, None, detail=evaluation.description or ""
                )
        observation = entry.asset_observation
        if (
            observation is not None
            and metadata_text(observation.metadata, _TRIGGER_MARK) == "detached"
        ):
            key = _sync_key_of(observation.asset_key, by_key)
            if key:
                in_flight[key] = SyncOutcome(
                    key,
                    IN_FLIGHT_STATUS,
                    metadata_text(observation.metadata, "hightouch_run_id") or None,
                    None,
                    detail="detached: detached_sync_sensor reports it when the run ends",
                )
        materialization = entry.asset_materialization
        if materialization is not None:
            key = _sync_key_of(materialization.asset_key, by_key)
            if key:
                synced[key] = outcome_from_metadata(key, materialization.metadata)
        if event.is_step_failure and event.step_failure_data is not None:
            data = event.step_failure_data
            meta = dict(data.user_failure_data.metadata) if data.user_failure_data else {}
            key_value = meta.get("destination")
            key = str(key_value.value) if key_value is not None else None
            if key is None and (event.step_key or "").startswith(f"{SYNC_KEY_PREFIX}__"):
                key = (event.step_key or "").split("__", 1)[1]
            if key not in by_key:
                continue
            reason = (
                data.user_failure_data.description
                if data.user_failure_data and data.user_failure_data.description
                else (data.error.message.strip() if data.error else "step failed")
            )
            blocked = metadata_text(meta, BLOCKED_BY)
            failed[key] = outcome_from_metadata(
                key,
                meta,
                status=f"blocked by {blocked}" if blocked else "failed",
                detail=reason,
            )
            if not blocked:
                failures[key] = reason[:500]
    touched = set(synced) | set(failed) | set(in_flight)
    if not touched and not planned:
        return None
    outcomes = []
    for destination in destinations:
        if destination.key in synced:
            outcomes.append(synced[destination.key])
        elif destination.key in failed:
            outcomes.append(failed[destination.key])
        elif destination.key in in_flight:
            outcomes.append(in_flight[destination.key])
        elif destination.key in planned:
            outcomes.append(
                _not_started(instance, run, destination, gate, destination.key in gate_decided)
            )
    return RunReport(run_id, tuple(outcomes), failures)


def _not_started(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun | None,
    destination: Destination,
    gate: QualityGate | None,
    gate_decided: bool,
) -> SyncOutcome:
    """A planned sync whose step never ran: blocked by what its gate refuses now, else skipped."""
    refusals = gate_refusals(instance, gate, destination, run=run) if gate is not None else []
    if not refusals:
        upstream = ", ".join(destination.after) or destination.mart
        return SyncOutcome(
            destination.key,
            "skipped",
            None,
            None,
            detail=f"not run because an upstream step failed ({upstream})",
        )
    verdict = verdict_of(destination, refusals)
    if not gate_decided:
        key = sync_asset_key_for(destination.key)
        instance.report_runless_asset_event(verdict.evaluation(key))
        # The contract was planned too and never ran: Dagster would show it failed with the run.
        # Say what happened instead (a warning; the next sync checks the contract).
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=key,
                check_name=CONTRACT_CHECK,
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"Not evaluated in run {run.run_id if run else '?'}: the sync never "
                f"started ({'blocked by ' + ', '.join(verdict.refusing)}). The contract is "
                "checked when the sync next runs.",
            )
        )
    return SyncOutcome(
        destination.key,
        "blocked by " + ", ".join(verdict.refusing),
        None,
        None,
        detail="not started: a blocking check upstream refused",
    )


def previous_statuses(instance: dg.DagsterInstance) -> dict[str, str]:
    """Each destination's status in the latest `activation_report` (what changed is news)."""
    records = instance.fetch_materializations(REPORT_KEY, limit=1).records
    if not records:
        return {}
    materialization = records[0].event_log_entry.asset_materialization
    value = materialization.metadata.get("statuses") if materialization else None
    return dict(value.value) if value is not None else {}  # type: ignore[arg-type]


def report_run(
    instance: dg.DagsterInstance,
    run_id: str,
    destinations: Sequence[Destination],
    *,
    slack: SlackWebhookResource | None,
    pagerduty: PagerDutyResource | None,
    log: logging.Logger | dg.DagsterLogManager,
    gate: QualityGate | None = None,
) -> RunReport | None:
    """Summarize the run, post it, record it, page the failed destinations' owners."""
    report = summarize_run(instance, run_id, destinations, gate)
    if report is None:
        return None
    previous = previous_statuses(instance)
    if slack is not None:
        try:
            slack.post(sync_summary_message(run_id, report.outcomes))
        except NotificationError as error:
            log.error(f"SLACK FAILED: the summary of run {run_id} was not posted: {error}")
    by_key = {d.key: d for d in destinations}
    for key, reason in report.failures.items():
        if pagerduty is not None:
            page_sync_failure(
                log, pagerduty, None, by_key[key], dagster_run_id=run_id, reason=reason
            )
    for key, status in report.statuses.items():
        if (
            pagerduty is not None
            and status not in ("failed", IN_FLIGHT_STATUS)
            and previous.get(key) == "failed"
        ):
            resolve_page(log, pagerduty, by_key[key], sync_failure_key(by_key[key]))
    # An in-flight sync keeps its last known status until the detached-sync sensor reports it.
    statuses = {
        **previous,
        **{k: v for k, v in report.statuses.items() if v != IN_FLIGHT_STATUS or k not in previous},
    }
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=REPORT_KEY,
            metadata={
                "dagster_run_id": run_id,
                "summary": dg.MetadataValue.md(summary_table(report.outcomes)),
                "statuses": dg.MetadataValue.json(statuses),
                "failed_destinations": ", ".join(sorted(report.failures)) or "none",
            },
        )
    )
    return report


def summary_table(outcomes: Sequence[SyncOutcome]) -> str:
    rows = "\n".join(
        f"| {o.destination} | {o.status}{': ' + o.detail[:200] if o.detail else ''} | "
        f"{o.hightouch_run_id or '-'} | {o.added} | "
        f"{o.changed} | {o.removed} | {o.failed} |"
        for o in outcomes
    )
    return (
        "| destination | status | Hightouch run | added | changed | removed | failed |\n"
        "|---|---|---|---|---|---|---|\n" + rows
    )
