"""`full_resync`: every destination (or a chosen few), in throttled waves.

A full reload after a schema change trips destination limits (Salesforce 5,000 records per call,
HubSpot 100 per batch) unless it runs in waves. The waves are a static graph built from the
`wave` numbers in destinations.yaml: one op per destination and wave slot, a pause op between
slots. Each op carries its destination's concurrency pool, so a resync never overlaps another
run's sync of the same destination. The Launchpad form chooses which destinations take part,
may move a destination to another declared slot (never before one it is declared `after`), flips
full vs incremental, sets the pause, and requires a reason and the requester.

A destination's failure does not stop the waves: its op records the failure and the next waves
go on (only the destinations declared `after` it are skipped).
"""

import time
from typing import Any

import dagster as dg
from dagster import OpExecutionContext
from pydantic import Field

from activation.components.hightouch_syncs import PARALLEL_SYNCS
from activation.core.run_summary import (
    FULL_RESYNC_JOB,
)
from activation.core.sync_path import SyncOptions
from activation.defs.resync.shared import (
    DID_NOT_SYNC,
    NOT_IN_THIS_RUN,
    ResyncPlan,
    report_outcomes,
    resync_op,
)
from activation.lib.destinations import Destination, load_destinations
from activation.lib.notify import SyncOutcome
from activation.resources import (
    PagerDutyResource,
    SlackWebhookResource,
)


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
        output = report_outcomes(context, results, destinations, slack, pagerduty, "Full resync")
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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[build_full_resync_job(load_destinations())])
