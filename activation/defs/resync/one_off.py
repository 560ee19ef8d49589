"""`resync_destination`: one destination, on request, with who asked and why.

The form is checked by the job's config mapping before the run exists: an unknown destination
(listing the declared ones) or an empty reason or requester is refused and nothing starts.
`resync_request` yields only the chosen destination's output, so the other destinations' ops
are skipped and never take their pool.
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg
from dagster import OpExecutionContext
from pydantic import Field

from activation.core.forms import blank_fields, mapped_form, refuse_field_errors, unknown_value
from activation.core.sync_path import SyncOptions
from activation.defs.resync.shared import ONE_OFF_JOB, ResyncPlan, report_outcomes, resync_op
from activation.lib.destinations import Destination, load_destinations
from activation.lib.notify import SyncOutcome
from activation.resources import (
    PagerDutyResource,
    SlackWebhookResource,
)

REQUEST_OP = "resync_request"


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

    def problems(self, keys: Sequence[str]) -> list[str]:
        """What is wrong with this form, naming each field (empty when it is usable)."""
        found = blank_fields(self, "reason", "requested_by")
        if self.destination.strip() not in keys:
            what = "a declared destination"
            found.insert(0, unknown_value("destination", self.destination, what, keys))
        return found


def build_one_off_job(destinations: tuple[Destination, ...]) -> dg.JobDefinition:
    keys = [d.key for d in destinations]

    @dg.op(
        name=REQUEST_OP,
        out={
            "request": dg.Out(dict, description="The checked request."),
            **{
                key: dg.Out(dict, is_required=False, description=f"Starts resync__{key}.")
                for key in keys
            },
        },
        description="Checks the request and starts only the named destination's op (the others "
        "are skipped and hold no pool).",
    )
    def check_request(context: OpExecutionContext, config: ResyncRequest):
        problems = config.problems(keys)  # the form mapping refused these already; kept for
        if problems:  # a run that bypassed it
            raise dg.Failure(
                description="The resync_destination form is invalid: "
                + "; ".join(problems)
                + ". Nothing was synced.",
                allow_retries=False,
            )
        user = context.run.tags.get("dagster/user")
        key = config.destination.strip()
        request = {
            "destination": key,
            "reason": config.reason.strip(),
            "requested_by": config.requested_by.strip(),
            "dagster_user": user or "not set (open-source Dagster does not authenticate users)",
            "full_resync": config.full_resync,
        }
        yield dg.Output(
            request,
            output_name="request",
            metadata={k: str(v) for k, v in request.items()},
        )
        yield dg.Output(request, output_name=key)

    def destination_op(destination: Destination) -> dg.OpDefinition:
        def decide(inputs: dict[str, Any]) -> SyncOutcome | ResyncPlan:
            request = inputs["request"]
            who = {k: request[k] for k in ("reason", "requested_by", "dagster_user")}
            return SyncOptions(full_resync=request["full_resync"]), who

        return resync_op(
            destination,
            name=f"resync__{destination.key}",
            description=f"Resync {destination.key}; runs only when the request names it.",
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

    @dg.config_mapping
    def request_form(config: ResyncRequest) -> dict:
        """One Launchpad form for the whole job, checked before the run is created."""
        return mapped_form(ONE_OFF_JOB, config, config.problems(keys), [REQUEST_OP])

    @dg.graph
    def resync_graph():
        checked = check_request()
        results = [destination_op(d)(request=getattr(checked, d.key)) for d in destinations]
        announce(checked.request, results)

    return resync_graph.to_job(
        name=ONE_OFF_JOB,
        description="Resync or backfill one destination, with a required reason and requester. "
        "The form is checked before the run is created.",
        config=refuse_field_errors(ONE_OFF_JOB, request_form),
        executor_def=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[build_one_off_job(load_destinations())])
