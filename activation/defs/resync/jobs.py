"""Operator jobs: `full_resync` (every destination, in throttled waves) and `resync_destination`
(one destination, on request, with a reason).

A full reload after a schema change trips destination limits (Salesforce 5,000 records per call,
HubSpot 100 per batch) unless it runs in waves. The waves are a static graph built from the
`wave` numbers in destinations.yaml: one op per destination and wave slot, a pause op between
slots. Each op carries its destination's concurrency pool, so a resync never overlaps another
run's sync of the same destination. The Launchpad form chooses which destinations take part,
may move a destination to another declared slot, flips full vs incremental, and sets the pause.

A destination's failure does not stop the waves: its op records the failure and the next waves
go on (only the destinations declared `after` it are skipped). The final report posts one Slack
message, pages the owners of the failed destinations, and fails the run if any destination
failed.
"""

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import dagster as dg
from dagster import OpExecutionContext
from pydantic import Field

from activation.components.hightouch_syncs import PARALLEL_SYNCS
from activation.core.gate import GateClosed
from activation.core.paging import page_sync_failure
from activation.core.run_summary import (
    FULL_RESYNC_JOB,
    ONE_OFF_RESYNC_JOB,
    outcome_from_metadata,
    summary_table,
)
from activation.core.sync_path import SyncOptions, sync_destination
from activation.lib.destinations import Destination, load_destinations
from activation.lib.notify import NotificationError, SyncOutcome, sync_summary_message
from activation.resources import (
    HightouchResource,
    PagerDutyResource,
    QualityGate,
    SlackWebhookResource,
)

ONE_OFF_JOB = ONE_OFF_RESYNC_JOB
REQUESTED_BY_TAG = "activation/requested_by"


class FullResyncConfig(dg.Config):
    """The full_resync form."""

    reason: str = Field(
        description="Why every destination is resent (a schema change, a lost CRM object...); "
        "kept in the plan's metadata and the summary."
    )
    requested_by: str = Field(description="Who asked for it (name or team).")
    destinations: list[str] = Field(
        default=[],
        description="Keys of the destinations to resync (see destinations.yaml). Empty: all.",
    )
    full_resync: bool = Field(
        default=True,
        description="True: resend every row (no diff, nothing removed). False: an ordinary "
        "incremental sync, in the same waves.",
    )
    wave_overrides: dict[str, int] = Field(
        default={},
        description="Move a destination to another wave for this run only, e.g. "
        '{"hubspot_contacts": 2}. Waves come from destinations.yaml; a wave number must be one '
        "of the declared ones, and later than the wave of every destination it is declared "
        "`after`.",
    )
    pause_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Pause between two waves, so destination rate limits recover.",
    )


class ResyncRequest(dg.Config):
    """The resync_destination form: one destination, with who asked and why."""

    destination: str = Field(description="Key of the destination to resync (destinations.yaml).")
    reason: str = Field(
        description="Why this resync is needed; kept in the run's metadata and the Slack message."
    )
    requested_by: str = Field(description="Who asked for it (name or team).")
    full_resync: bool = Field(
        default=True,
        description="True: resend every row. False: an incremental sync (a backfill of changes).",
    )


# Outcomes of destinations an op skipped by design; they stay out of the summary.
NOT_IN_THIS_RUN = frozenset({"not selected", "other wave"})
DID_NOT_SYNC = frozenset({"failed", "blocked", "skipped"})


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
    except GateClosed as closed:
        return SyncOutcome(destination.key, "blocked", None, None, detail=closed.description or "")
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
        quality_gate: QualityGate,
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


def _report(
    context: OpExecutionContext,
    results: list[SyncOutcome],
    destinations: tuple[Destination, ...],
    slack: SlackWebhookResource,
    pagerduty: PagerDutyResource,
    header_note: str = "",
) -> dg.Output:
    """Slack summary, pages for failures, run-visible metadata; fails the run on any failure."""
    shown = [r for r in results if r.status not in NOT_IN_THIS_RUN]
    message = sync_summary_message(context.run_id, shown)
    if header_note:
        message["text"] = header_note + "\n" + message["text"]
    try:
        slack.post(message)
    except NotificationError as error:  # a failed notification never hides the outcome
        context.log.error(f"SLACK FAILED: summary not posted: {error}")
    by_key = {d.key: d for d in destinations}
    failed = [r for r in shown if r.status in ("failed", "blocked")]
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


# -- full_resync ------------------------------------------------------------------------------


def declared_waves(destinations: tuple[Destination, ...]) -> list[int]:
    return sorted({d.wave for d in destinations})


def plan_waves(config: FullResyncConfig, destinations: tuple[Destination, ...]) -> dict[str, int]:
    """Destination key -> wave for this run; raises naming the bad field and value."""
    blank = [name for name in ("reason", "requested_by") if not getattr(config, name).strip()]
    if blank:
        raise dg.Failure(
            description=f"full_resync config: {' and '.join(blank)} must not be empty. "
            "Nothing was synced.",
            allow_retries=False,
        )
    keys = [d.key for d in destinations]
    waves = declared_waves(destinations)
    unknown = [k for k in [*config.destinations, *config.wave_overrides] if k not in keys]
    if unknown:
        raise dg.Failure(
            description=f"full_resync config: unknown destination(s) {', '.join(unknown)}; "
            f"declared: {', '.join(keys)}. Nothing was synced.",
            allow_retries=False,
        )
    bad = {k: w for k, w in config.wave_overrides.items() if w not in waves}
    if bad:
        raise dg.Failure(
            description=f"full_resync config: wave_overrides {bad} name a wave that is not "
            f"declared (declared waves: {waves}). Nothing was synced.",
            allow_retries=False,
        )
    chosen = set(config.destinations or keys)
    plan = {
        d.key: config.wave_overrides.get(d.key, d.wave) for d in destinations if d.key in chosen
    }
    # A destination's op only sees the results of earlier waves, so one placed in the same wave
    # as (or before) a destination it is declared `after` would sync without waiting for it.
    misordered = [
        f"{d.key} (wave {plan[d.key]}) is declared after {upstream} (wave {plan[upstream]})"
        for d in destinations
        if d.key in plan
        for upstream in d.after
        if upstream in plan and plan[upstream] >= plan[d.key]
    ]
    if misordered:
        raise dg.Failure(
            description="full_resync config: the waves (after wave_overrides) break the "
            "declared order: "
            + "; ".join(misordered)
            + ". A destination must run in a later wave than those it is declared after. "
            "Nothing was synced.",
            allow_retries=False,
        )
    return plan


def build_full_resync_job(destinations: tuple[Destination, ...]) -> dg.JobDefinition:
    waves = declared_waves(destinations)

    @dg.op(
        name="resync_plan",
        description="Checks the form and fixes which destination runs in which wave.",
    )
    def plan(context: OpExecutionContext, config: FullResyncConfig) -> dict:
        plan = plan_waves(config, destinations)
        reason, requested_by = config.reason.strip(), config.requested_by.strip()
        context.log.info(
            "Wave plan: "
            + "; ".join(
                f"wave {w}: {', '.join(k for k, v in plan.items() if v == w) or '-'}" for w in waves
            )
            + f"; pause {config.pause_seconds:g} s; full_resync={config.full_resync}"
            + f"; requested by {requested_by}: {reason}"
        )
        context.add_output_metadata(
            {
                "reason": reason,
                "requested_by": requested_by,
                # A claim, like any tag: open-source Dagster does not authenticate users.
                "dagster_user": context.run.tags.get("dagster/user") or "not set",
                "plan": dg.MetadataValue.json(plan),
                "full_resync": config.full_resync,
            }
        )
        return {
            "plan": plan,
            "full_resync": config.full_resync,
            "pause": config.pause_seconds,
            "reason": reason,
            "requested_by": requested_by,
        }

    def destination_op(destination: Destination, wave: int) -> dg.OpDefinition:
        def decide(inputs: dict[str, Any]) -> SyncOutcome | ResyncPlan:
            settings, earlier = inputs["settings"], inputs["earlier"]
            if destination.key not in settings["plan"]:
                return SyncOutcome(destination.key, "not selected", None, None)
            if settings["plan"][destination.key] != wave:
                return SyncOutcome(destination.key, "other wave", None, None)
            done = {r.destination: r for r in earlier}
            broken = [k for k in destination.after if k in done and done[k].status in DID_NOT_SYNC]
            if broken:
                return SyncOutcome(
                    destination.key,
                    "skipped",
                    None,
                    None,
                    detail=f"runs after {', '.join(broken)}, which did not sync",
                )
            return SyncOptions(full_resync=settings["full_resync"]), {"wave": wave}

        return resync_op(
            destination,
            name=f"wave{wave}__{destination.key}",
            description=f"Resync {destination.key} if it belongs to wave {wave}.",
            inputs=("settings", "earlier"),
            decide=decide,
        )

    @dg.op(
        name="wave_pause", description="Gathers a wave's results and pauses before the next wave."
    )
    def pause(context: OpExecutionContext, settings: dict, earlier: list, wave: list) -> list:
        results = [*earlier, *wave]
        ran = any(r.status not in NOT_IN_THIS_RUN for r in wave)
        if ran and settings["pause"] > 0:
            context.log.info(f"Wave done; pausing {settings['pause']:g} s before the next one.")
            time.sleep(settings["pause"])
        return results

    @dg.op(
        name="resync_report", description="Posts the summary, pages failed destinations' owners."
    )
    def report(
        context: OpExecutionContext,
        slack: SlackWebhookResource,
        pagerduty: PagerDutyResource,
        results: list,
    ) -> int:
        output = _report(context, results, destinations, slack, pagerduty, "Full resync")
        context.add_output_metadata(dict(output.metadata))
        return output.value

    @dg.op(name="resync_start")
    def start() -> list:
        return []

    @dg.op(name="wave_results", description="Collects the results of one wave.")
    def collect_wave(results: list[SyncOutcome]) -> list:
        return list(results)

    @dg.graph
    def full_resync_graph():
        settings = plan()
        earlier = start()
        for wave in waves:
            ops = [
                destination_op(d, wave)(settings=settings, earlier=earlier) for d in destinations
            ]
            wave_results = collect_wave.alias(f"collect_wave{wave}")(ops)
            earlier = pause.alias(f"after_wave{wave}")(settings, earlier, wave_results)
        report(earlier)

    return full_resync_graph.to_job(
        name=FULL_RESYNC_JOB,
        description="Resync destinations in throttled waves (waves from destinations.yaml), with "
        "a pause between waves and one summary at the end.",
        executor_def=PARALLEL_SYNCS,
    )


# -- resync_destination ------------------------------------------------------------------------


def build_one_off_job(destinations: tuple[Destination, ...]) -> dg.JobDefinition:
    keys = [d.key for d in destinations]

    @dg.op(name="resync_request", description="Checks the request before anything is synced.")
    def check_request(context: OpExecutionContext, config: ResyncRequest) -> dict:
        problems = []
        if config.destination not in keys:
            problems.append(
                f"destination {config.destination!r} is not declared ({', '.join(keys)})"
            )
        if not config.reason.strip():
            problems.append("reason is empty")
        if not config.requested_by.strip():
            problems.append("requested_by is empty")
        if problems:
            raise dg.Failure(
                description="resync_destination config: "
                + "; ".join(problems)
                + ". Nothing was synced.",
                allow_retries=False,
            )
        user = context.run.tags.get("dagster/user")
        request = {
            "destination": config.destination,
            "reason": config.reason.strip(),
            "requested_by": config.requested_by.strip(),
            "dagster_user": user or "not set (open-source Dagster does not authenticate users)",
            "full_resync": config.full_resync,
        }
        context.add_output_metadata({k: str(v) for k, v in request.items()})
        return request

    def destination_op(destination: Destination) -> dg.OpDefinition:
        def decide(inputs: dict[str, Any]) -> SyncOutcome | ResyncPlan:
            request = inputs["request"]
            if request["destination"] != destination.key:
                return SyncOutcome(destination.key, "not selected", None, None)
            who = {k: request[k] for k in ("reason", "requested_by", "dagster_user")}
            return SyncOptions(full_resync=request["full_resync"]), who

        return resync_op(
            destination,
            name=f"resync__{destination.key}",
            description=f"Resync {destination.key} when the request names it.",
            inputs=("request",),
            decide=decide,
        )

    @dg.op(name="announce_resync", description="Posts the outcome with who asked and why.")
    def announce(
        context: OpExecutionContext,
        slack: SlackWebhookResource,
        pagerduty: PagerDutyResource,
        request: dict,
        results: list[SyncOutcome],
    ) -> int:
        note = (
            f"Resync of {request['destination']} requested by {request['requested_by']} "
            f"(Dagster user: {request['dagster_user']}): {request['reason']}"
        )
        output = _report(context, list(results), destinations, slack, pagerduty, note)
        context.add_output_metadata({**dict(output.metadata), **request})
        return output.value

    @dg.graph
    def resync_graph():
        request = check_request()
        results = [destination_op(d)(request=request) for d in destinations]
        announce(request, results)

    return resync_graph.to_job(
        name=ONE_OFF_JOB,
        description="Resync or backfill one destination, with a required reason and requester.",
        executor_def=dg.in_process_executor,
    )


def build_resync_definitions(destinations: tuple[Destination, ...]) -> dg.Definitions:
    return dg.Definitions(
        jobs=[build_full_resync_job(destinations), build_one_off_job(destinations)]
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_resync_definitions(load_destinations())
