"""The `sign_off_decision` job: approve or reject a waiting promote run from the Launchpad.

Op and job names share one namespace in Dagster, so it cannot be called `sign_off` like the op
that waits for the decision. The decision is checked and recorded by the same function as the
CLI's (`activation.core.approvals.record_decision`), so both record alike.

This module must not use `from __future__ import annotations`: Dagster reads the op signatures.
"""

from enum import Enum

import dagster as dg
from pydantic import Field

from activation.core.approvals import DecisionRefused, Verdict, public_metadata, record_decision


class SignOffDecision(Enum):
    approve = "approve"
    reject = "reject"


class SignOffForm(dg.Config):
    """The sign_off_decision job's Launchpad form: a decision on one waiting promotion run."""

    promotion_run_id: str = Field(description="Run id of the promote run waiting for sign-off.")
    decision: SignOffDecision = Field(description="approve or reject.")
    reviewer: str = Field(description="Your name (must be in the run's allow-list, if any).")
    approval_code: str = Field(
        description="The one-time code from the review message in Slack or Teams."
    )
    comment: str = Field(
        default="", description="Comment (approve) or reason (reject; required to reject)."
    )
    staging_run_id: str = Field(
        default="",
        description="The staging Hightouch run id shown in the review message; empty means the "
        "one currently under review.",
    )


@dg.op(description="Records the decision on the named promotion run, or fails saying why not.")
def record_sign_off(context: dg.OpExecutionContext, config: SignOffForm) -> dg.Output[None]:
    try:
        decision = record_decision(
            context.instance,
            promotion_run_id=config.promotion_run_id,
            verdict=Verdict(config.decision.value),
            reviewer=config.reviewer,
            code=config.approval_code,
            note=config.comment,
            staging_run_id=config.staging_run_id or None,
            source=f"sign_off_decision run {context.run_id}",
        )
    except DecisionRefused as error:
        raise dg.Failure(description=str(error)) from None
    context.log.info(
        f"Recorded {decision.verdict.value} of promotion run {decision.promotion_run_id} by "
        f"{decision.reviewer} at {decision.decided_at_utc}"
    )
    return dg.Output(None, metadata=public_metadata(decision))


@dg.job(
    name="sign_off_decision",
    description="Approve or reject a waiting promote run from the Launchpad (needs the code "
    "posted in the review channel).",
    tags={"activation/concern": "promotion"},
)
def sign_off_job() -> None:
    record_sign_off()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[sign_off_job])
