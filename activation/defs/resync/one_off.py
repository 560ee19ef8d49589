"""`resync_destination`: one destination, on request, with who asked and why."""

from typing import Any

import dagster as dg
from dagster import OpExecutionContext
from pydantic import Field

from activation.core.sync_path import SyncOptions
from activation.defs.resync.shared import ONE_OFF_JOB, ResyncPlan, report_outcomes, resync_op
from activation.lib.destinations import Destination, load_destinations
from activation.lib.notify import SyncOutcome
from activation.resources import (
    PagerDutyResource,
    SlackWebhookResource,
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
        output = report_outcomes(context, list(results), destinations, slack, pagerduty, note)
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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[build_one_off_job(load_destinations())])
