"""What both resync jobs share: one op per destination holding its pool and taking the one sync
path (started only when the form selects it; the others are skipped and take no pool slot), and
the report that posts the summary, pages failed destinations' owners and fails the run if any
destination failed (a failure never stops the other destinations)."""

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import dagster as dg
from dagster import OpExecutionContext

from activation.core.paging import page_sync_failure
from activation.core.run_summary import (
    ONE_OFF_RESYNC_JOB,
    outcome_from_metadata,
    summary_table,
)
from activation.core.sync_path import SyncOptions, sync_destination
from activation.core.verdicts import SyncHeldBack, blocked_by
from activation.lib.destinations import Destination
from activation.lib.notify import NotificationError, SyncOutcome, sync_summary_message
from activation.resources import (
    HightouchResource,
    PagerDutyResource,
    QualityGate,
    SlackWebhookResource,
)

ONE_OFF_JOB = ONE_OFF_RESYNC_JOB
REQUESTED_BY_TAG = "activation/requested_by"


def did_not_sync(status: str) -> bool:
    """Failed, skipped or "blocked by ...": a destination declared `after` it is skipped."""
    return status in ("failed", "skipped") or status.startswith("blocked")


def sync_in_op(
    context: OpExecutionContext,
    destination: Destination,
    hightouch: HightouchResource,
    options: SyncOptions,
    extra_metadata: dict[str, object] | None = None,
    *,
    gate: QualityGate,
    pagerduty: PagerDutyResource,
    slack: SlackWebhookResource,
) -> SyncOutcome:
    """One destination through the one sync path, from an op; a refusal or a failure comes
    back as an outcome so the other destinations go on."""
    try:
        result = sync_destination(
            context,
            destination,
            hightouch=hightouch,
            gate=gate,
            pagerduty=pagerduty,
            slack=slack,
            options=options,
            extra_metadata={**(extra_metadata or {}), "full_resync": options.full_resync},
        )
    except SyncHeldBack as held:
        return SyncOutcome(
            destination.key, blocked_by(held.verdicts), None, None, detail=held.description or ""
        )
    except dg.Failure as failure:
        context.log.error(failure.description or f"{destination.key} failed")
        return outcome_from_metadata(
            destination.key,
            failure.metadata or {},
            status="failed",
            detail=failure.description or "",
        )
    return outcome_from_metadata(destination.key, result.metadata)


# What a resync op decided before syncing: the options and the metadata to record.
ResyncPlan = tuple[SyncOptions, dict[str, object]]


def resync_op(
    destination: Destination,
    *,
    name: str,
    description: str,
    inputs: tuple[str, ...],
    decide: Callable[[dict[str, Any]], SyncOutcome | ResyncPlan],
) -> dg.OpDefinition:
    """One destination's op of a resync job: it holds the destination's pool, `decide` reads
    the op's inputs and says whether (and how) to sync, and the sync takes the one path."""

    @dg.op(
        name=name,
        pool=destination.pool,
        tags={"destination": destination.destination_type},
        description=description,
        ins={input_name: dg.In() for input_name in inputs},
    )
    def resync_one(
        context: OpExecutionContext,
        hightouch: HightouchResource,
        pagerduty: PagerDutyResource,
        slack: SlackWebhookResource,
        quality_gate: dg.ResourceParam[QualityGate],
        **op_inputs: Any,
    ) -> SyncOutcome:
        decided = decide(op_inputs)
        if isinstance(decided, SyncOutcome):
            return decided
        options, extra = decided
        return sync_in_op(
            context,
            destination,
            hightouch,
            options,
            extra,
            gate=quality_gate,
            pagerduty=pagerduty,
            slack=slack,
        )

    return resync_one


def report_outcomes(
    context: OpExecutionContext,
    results: list[SyncOutcome],
    destinations: tuple[Destination, ...],
    slack: SlackWebhookResource,
    pagerduty: PagerDutyResource,
    header_note: str = "",
) -> dg.Output:
    """Slack summary, pages for failures, run-visible metadata; fails the run on any failure.
    `results` holds the destinations that took part (the ops of the others never started)."""
    shown = list(results)
    message = sync_summary_message(context.run_id, shown)
    if header_note:
        message["text"] = header_note + "\n" + message["text"]
    try:
        slack.post(message)
    except NotificationError as error:  # a failed notification never hides the outcome
        context.log.error(f"SLACK FAILED: summary not posted: {error}")
    by_key = {d.key: d for d in destinations}
    failed = [r for r in shown if r.status == "failed" or r.status.startswith("blocked")]
    for result in failed:
        if result.status == "failed":
            page_sync_failure(
                context.log,
                pagerduty,
                None,
                by_key[result.destination],
                dagster_run_id=context.run_id,
                reason=result.detail[:500],
            )
    metadata = {
        "summary": dg.MetadataValue.md(summary_table(shown)),
        "results": dg.MetadataValue.json([asdict(r) for r in shown]),
    }
    if failed:
        raise dg.Failure(
            description="Destinations that did not sync: "
            + ", ".join(f"{r.destination} ({r.status})" for r in failed)
            + ". The others shipped; see the summary.",
            metadata=metadata,
            allow_retries=False,
        )
    return dg.Output(len(shown), metadata=metadata)
