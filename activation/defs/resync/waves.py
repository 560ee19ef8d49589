"""`full_resync`: every destination (or a chosen few), in throttled waves.

A full reload after a schema change trips destination limits (Salesforce 5,000 records per call,
HubSpot 100 per batch) unless it runs in waves. The waves are a static graph built from the
`wave` numbers in destinations.yaml: one op per destination and wave slot, a pause op between
slots. Each op carries its destination's concurrency pool, so a resync never overlaps another
run's sync of the same destination. The Launchpad form chooses which destinations take part,
may move a destination to another declared slot (never into or before the wave of one it is
declared `after`), flips full vs incremental, sets the pause, and requires a reason and the
requester.

The form is checked by the job's config mapping before the run exists: a mistake is refused
with each field named and its valid values, and nothing starts. `resync_plan` then yields one
output per planned slot; the ops of the other slots are skipped and never take a pool slot.

A destination's failure does not stop the waves: its op records the failure and the next waves
go on (only the destinations declared `after` it are skipped).
"""

import time
from collections.abc import Iterable
from typing import Any

import dagster as dg
from dagster import OpExecutionContext
from pydantic import Field

from activation.core.executors import fan_out_executor
from activation.core.forms import (
    blank_fields,
    mapped_form,
    refuse_field_errors,
    unknown_value,
    valid_values,
)
from activation.core.run_summary import FULL_RESYNC_JOB
from activation.core.sync_path import SyncOptions
from activation.defs.resync.shared import ResyncPlan, did_not_sync, report_outcomes, resync_op
from activation.lib.destinations import Destination, load_destinations
from activation.lib.notify import SyncOutcome
from activation.resources import PagerDutyResource, SlackWebhookResource

PLAN_OP = "resync_plan"


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
        '{"hubspot_contacts": 2}. Only for destinations taking part. The wave must be one '
        "declared in destinations.yaml, later than the wave of every destination it is declared "
        "`after`, and earlier than the wave of every destination declared `after` it.",
    )
    pause_seconds: float = Field(
        default=60.0,
        description="Pause between two waves, in seconds (0 or more), so destination rate "
        "limits recover.",
    )


def declared_waves(destinations: Iterable[Destination]) -> list[int]:
    return sorted({d.wave for d in destinations})


def _fitting_waves(
    key: str, plan: dict[str, int], destinations: tuple[Destination, ...], waves: list[int]
) -> list[int]:
    """The declared waves `key` could take, the other destinations staying where `plan` puts
    them: after every planned destination it runs after, before every one that runs after it."""
    upstream = [plan[k] for d in destinations if d.key == key for k in d.after if k in plan]
    downstream = [plan[d.key] for d in destinations if key in d.after and d.key in plan]
    return [w for w in waves if all(u < w for u in upstream) and all(w < v for v in downstream)]


def _order_problems(
    config: FullResyncConfig, plan: dict[str, int], destinations: tuple[Destination, ...]
) -> list[str]:
    """A destination's op only sees the results of earlier waves, so one placed in the same wave
    as (or before) a destination it is declared `after` would sync without waiting for it."""
    waves = declared_waves(destinations)
    found = []
    for destination in destinations:
        key = destination.key
        for upstream in destination.after:
            if key not in plan or upstream not in plan or plan[upstream] < plan[key]:
                continue
            clash = (
                f"{key} (wave {plan[key]}) is declared after {upstream} (wave {plan[upstream]}) "
                "and must run in a later wave"
            )
            moved = [k for k in (key, upstream) if k in config.wave_overrides]
            if not moved:
                found.append(f"destinations.yaml: {clash}; move one of them with wave_overrides")
            for k in moved:
                fitting = _fitting_waves(k, plan, destinations, waves)
                found.append(
                    f"wave_overrides.{k}: {clash}; "
                    + valid_values(fitting, none="(no declared wave fits; change the other one)")
                )
    return found


def form_problems(config: FullResyncConfig, destinations: tuple[Destination, ...]) -> list[str]:
    """What is wrong with the form, naming each field and its valid values (empty: usable)."""
    keys = [d.key for d in destinations]
    waves = declared_waves(destinations)
    found = blank_fields(config, "reason", "requested_by")
    if config.pause_seconds < 0:
        found.append(f"pause_seconds: {config.pause_seconds:g} is negative; valid: 0 or more")
    found += [
        unknown_value("destinations", key, "a declared destination", keys)
        for key in config.destinations
        if key not in keys
    ]
    chosen = [k for k in keys if k in (config.destinations or keys)]
    selection_known = all(k in keys for k in config.destinations)
    for key, wave in config.wave_overrides.items():
        field = f"wave_overrides.{key}"
        if key not in keys:
            found.append(unknown_value(field, key, "a declared destination", keys))
        elif selection_known and key not in chosen:
            found.append(
                f"{field}: {key} does not take part in this run (destinations); "
                + valid_values(chosen)
            )
        elif wave not in waves:
            found.append(unknown_value(field, wave, "a declared wave", waves))
    if found:  # the order can only be judged on known destinations and waves
        return found
    return _order_problems(config, _plan(config, destinations), destinations)


def _plan(config: FullResyncConfig, destinations: tuple[Destination, ...]) -> dict[str, int]:
    chosen = set(config.destinations) or {d.key for d in destinations}
    return {
        d.key: config.wave_overrides.get(d.key, d.wave) for d in destinations if d.key in chosen
    }


def plan_waves(config: FullResyncConfig, destinations: tuple[Destination, ...]) -> dict[str, int]:
    """Destination key -> wave for this run; raises naming each bad field and its valid values
    (the form mapping refused these before the run; kept for a run that bypassed it)."""
    problems = form_problems(config, destinations)
    if problems:
        raise dg.Failure(
            description="The full_resync form is invalid: "
            + "; ".join(problems)
            + ". Nothing was synced.",
            allow_retries=False,
        )
    return _plan(config, destinations)


def build_full_resync_job(destinations: tuple[Destination, ...]) -> dg.JobDefinition:
    waves = declared_waves(destinations)
    # One op, and one conditional output of the plan, per wave slot of each destination.
    slots = {(wave, d.key): f"wave{wave}__{d.key}" for wave in waves for d in destinations}

    @dg.op(
        name=PLAN_OP,
        out={
            "settings": dg.Out(dict, description="The plan and the form's choices."),
            **{
                slot: dg.Out(dict, is_required=False, description=f"Starts {slot}.")
                for slot in slots.values()
            },
        },
        description="Fixes which destination runs in which wave and starts only those slots "
        "(the other slots are skipped and hold no pool).",
    )
    def plan(context: OpExecutionContext, config: FullResyncConfig):
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
        settings = {
            "plan": plan,
            "full_resync": config.full_resync,
            "pause": config.pause_seconds,
            "reason": reason,
            "requested_by": requested_by,
        }
        yield dg.Output(
            settings,
            output_name="settings",
            metadata={
                "reason": reason,
                "requested_by": requested_by,
                # A claim, like any tag: open-source Dagster does not authenticate users.
                "dagster_user": context.run.tags.get("dagster/user") or "not set",
                "plan": dg.MetadataValue.json(plan),
                "full_resync": config.full_resync,
            },
        )
        for key, wave in plan.items():
            yield dg.Output(settings, output_name=slots[(wave, key)])

    def destination_op(destination: Destination, wave: int) -> dg.OpDefinition:
        def decide(inputs: dict[str, Any]) -> SyncOutcome | ResyncPlan:
            settings, earlier = inputs["settings"], inputs["earlier"]
            done = {r.destination: r for r in earlier}
            broken = [k for k in destination.after if k in done and did_not_sync(done[k].status)]
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
            name=slots[(wave, destination.key)],
            description=f"Resync {destination.key} in wave {wave}; runs only when the plan puts "
            "it there.",
            inputs=("settings", "earlier"),
            decide=decide,
        )

    @dg.op(
        name="wave_pause", description="Gathers a wave's results and pauses before the next wave."
    )
    def pause(context: OpExecutionContext, settings: dict, results: list) -> list:
        # `results`: the results so far (one list, never skipped) and the outcome of each of
        # this wave's ops that ran (the others were skipped and are absent).
        wave = [r for r in results if isinstance(r, SyncOutcome)]
        earlier = [r for item in results if isinstance(item, list) for r in item]
        if wave and settings["pause"] > 0:
            context.log.info(f"Wave done; pausing {settings['pause']:g} s before the next one.")
            time.sleep(settings["pause"])
        return [*earlier, *wave]

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

    @dg.config_mapping
    def full_resync_form(config: FullResyncConfig) -> dict:
        """One Launchpad form for the whole job, checked before the run is created."""
        problems = form_problems(config, destinations)
        return mapped_form(FULL_RESYNC_JOB, config, problems, [PLAN_OP])

    @dg.graph
    def full_resync_graph():
        planned = plan()
        earlier = start()
        for wave in waves:
            ran = [
                destination_op(d, wave)(
                    settings=getattr(planned, slots[(wave, d.key)]), earlier=earlier
                )
                for d in destinations
            ]
            earlier = pause.alias(f"after_wave{wave}")(planned.settings, [earlier, *ran])
        report(earlier)

    return full_resync_graph.to_job(
        name=FULL_RESYNC_JOB,
        description="Resync destinations in throttled waves (waves from destinations.yaml), with "
        "a pause between waves and one summary at the end. The form is checked before the run "
        "is created.",
        config=refuse_field_errors(FULL_RESYNC_JOB, full_resync_form),
        executor_def=fan_out_executor(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[build_full_resync_job(load_destinations())])
