"""The `promote` job: a staging Hightouch sync, a human sign-off, then the production sync.

    staging_sync -> request_review -> sign_off -> production_sync -> announce

`request_review` posts the staging run's counts and a one-time approval code to Slack and Teams;
`sign_off` waits until a valid decision is recorded for this run (see `activation.approvals`),
given with `activation approve|reject` or by launching the small `sign_off_decision` job from
the Launchpad (op and job names share one namespace in Dagster, so it cannot be `sign_off`).
A rejection or an expired wait fails the run before `production_sync`, so production is never
triggered; an approval triggers it exactly once. The decision is written into the
promotion run: an observation and output metadata of `sign_off`, plus run tags.

This module must not use `from __future__ import annotations`: Dagster reads the op signatures.
"""

import time
from dataclasses import replace
from enum import Enum

import dagster as dg
from pydantic import Field

from activation.approvals import (
    APPROVALS_KEY,
    DecisionRefused,
    ReviewRequest,
    Verdict,
    code_proof,
    code_verifier,
    decision_tags,
    judged_decisions,
    new_approval_code,
    read_entries,
    record_decision,
    review_request_observation,
    tag_run,
    utc_text,
)
from activation.approvals import Decision as SignOff
from activation.environment import sandbox_url
from activation.hightouch import HightouchClient
from activation.resources import HightouchResource, SlackWebhookResource
from activation.review_messages import (
    SANDBOX_TEAMS_WEBHOOK_PATH,
    TEAMS_WEBHOOK_URL_VAR,
    ReviewInvitation,
    RunSummary,
    TeamsWebhookResource,
    outcome_slack_message,
    outcome_teams_card,
    review_slack_message,
    review_teams_card,
)
from activation.sync_step import sync_run_metadata

PROMOTION_GROUP = "promotion"


class PromotionConfig(dg.Config):
    """The promote job's Launchpad form (one form, mapped onto every op)."""

    staging_sync: str = Field(
        description="Staging Hightouch sync: its id (digits only) or its slug. It runs first; "
        "reviewers see its counts."
    )
    production_sync: str = Field(
        description="Production Hightouch sync: its id (digits only) or its slug. Triggered "
        "once, only after an approval."
    )
    full_resync: bool = Field(
        default=False,
        description="Run both syncs as full resyncs (no diff; every row is sent again).",
    )
    allowed_reviewers: list[str] = Field(
        default=[],
        description="Names allowed to decide (compared case-insensitively). Empty: anyone "
        "holding the approval code.",
    )
    approval_timeout_seconds: float = Field(
        default=4 * 3600.0,
        description="How long sign_off waits for a decision; after it the run fails with "
        "'approval expired' and production is not triggered.",
    )
    poll_interval_seconds: float = Field(
        default=5.0, description="Seconds between sign_off's reads of recorded decisions."
    )
    notify_slack: bool = Field(
        default=True, description="Post the review request and the outcome to Slack."
    )
    notify_teams: bool = Field(
        default=True,
        description="Post them to Microsoft Teams as Adaptive Cards (needs TEAMS_WEBHOOK_URL).",
    )
    dagster_url: str = Field(
        default="http://127.0.0.1:3000",
        description="Base URL of the Dagster UI, for the run link in the messages.",
    )

    def problems(self) -> list[str]:
        """What is wrong with this form, naming each field (empty when it is usable)."""
        found = []
        for name in ("staging_sync", "production_sync"):
            if not getattr(self, name).strip():
                found.append(f"{name}: give a Hightouch sync id or slug")
        if self.staging_sync.strip() and self.staging_sync.strip() == self.production_sync.strip():
            found.append("production_sync: must not be the staging sync")
        if self.approval_timeout_seconds <= 0:
            found.append("approval_timeout_seconds: must be greater than 0")
        if self.poll_interval_seconds <= 0:
            found.append("poll_interval_seconds: must be greater than 0")
        if not (self.notify_slack or self.notify_teams):
            found.append(
                "notify_slack / notify_teams: enable at least one, or no reviewer receives the "
                "approval code"
            )
        if any(not name.strip() for name in self.allowed_reviewers):
            found.append("allowed_reviewers: names must not be blank")
        return found


def _sync_id(client: HightouchClient, reference: str) -> str:
    reference = reference.strip()
    return reference if reference.isdigit() else client.resolve_sync_id(reference)


def _run_sync(
    context: dg.OpExecutionContext, hightouch: HightouchResource, reference: str, full: bool
) -> tuple[RunSummary, dict[str, dg.MetadataValue]]:
    """Trigger the sync, follow its run to the end; the run as reviewers see it, and its
    metadata under the names the sync assets use (`activation.sync_step.sync_run_metadata`)."""
    with hightouch.get_client() as client:
        sync_id = _sync_id(client, reference)
        run_id = client.trigger(sync_id, full_resync=full)
        context.log.info(f"Triggered Hightouch run {run_id} of sync {sync_id}")
        run = client.wait_for_run(sync_id, run_id)
        url = client.run_url(sync_id, run_id)
        return RunSummary.of(run, url), sync_run_metadata(run, url)


def _notify(
    config: PromotionConfig,
    slack: SlackWebhookResource,
    teams: TeamsWebhookResource,
    slack_message: dict,
    teams_card: dict,
) -> list[str]:
    """Post to the configured channels; returns the channels reached."""
    reached = []
    if config.notify_slack:
        slack.post(slack_message)
        reached.append("slack")
    if config.notify_teams:
        teams.post(teams_card)
        reached.append("teams")
    return reached


def _tell_outcome(
    context: dg.OpExecutionContext,
    config: PromotionConfig,
    slack: SlackWebhookResource,
    teams: TeamsWebhookResource,
    headline: str,
    summary: RunSummary | None,
    detail: str,
) -> None:
    """Best effort: a failed notice must not hide why the run stopped."""
    try:
        _notify(
            config,
            slack,
            teams,
            outcome_slack_message(context.run_id, headline, summary, detail),
            outcome_teams_card(context.run_id, headline, summary, detail),
        )
    except Exception as error:  # the Failure that follows is what matters
        context.log.warning(f"Could not post the outcome: {error}")


@dg.op(
    description="Checks the form, then triggers the staging Hightouch sync and waits for it.",
)
def staging_sync(
    context: dg.OpExecutionContext, config: PromotionConfig, hightouch: HightouchResource
) -> dg.Output[RunSummary]:
    problems = config.problems()
    if problems:
        raise dg.Failure("The promote form is invalid: " + "; ".join(problems))
    summary, metadata = _run_sync(context, hightouch, config.staging_sync, config.full_resync)
    context.log.info(f"Staging run {summary.run_id} {summary.status}: {summary.counts}")
    return dg.Output(summary, metadata=metadata)


@dg.op(
    description="Posts the staging counts and a one-time approval code to Slack and Teams, "
    "and records the request (with only the code's verifier) on promotion/approvals.",
)
def request_review(
    context: dg.OpExecutionContext,
    config: PromotionConfig,
    staging: RunSummary,
    slack: SlackWebhookResource,
    teams: TeamsWebhookResource,
) -> dg.Output[ReviewRequest]:
    code = new_approval_code()
    now = time.time()
    request = ReviewRequest(
        promotion_run_id=context.run_id,
        staging=staging,
        production_sync=config.production_sync.strip(),
        verifier=code_verifier(code_proof(context.run_id, code)),
        allowed_reviewers=tuple(name.strip() for name in config.allowed_reviewers),
        requested_at=now,
        expires_at=now + config.approval_timeout_seconds,
    )
    # Recorded before posting: a reviewer quick enough to answer at once must find it.
    context.log_event(review_request_observation(request))
    invitation = ReviewInvitation(
        promotion_run_id=context.run_id,
        promotion_run_url=f"{config.dagster_url.rstrip('/')}/runs/{context.run_id}",
        staging=staging,
        production_sync=request.production_sync,
        code=code,
        expires_at=utc_text(request.expires_at),
        allowed_reviewers=request.allowed_reviewers,
    )
    reached = _notify(
        config, slack, teams, review_slack_message(invitation), review_teams_card(invitation)
    )
    context.log.info(
        f"Review requested in {', '.join(reached)}; waiting until {utc_text(request.expires_at)}"
    )
    return dg.Output(
        request,
        metadata={
            "posted_to": ", ".join(reached),
            "staging_run_id": staging.run_id,
            "expires_at": utc_text(request.expires_at),
            "allowed_reviewers": ", ".join(request.allowed_reviewers) or "(anyone with the code)",
        },
    )


def _public_metadata(decision: SignOff) -> dict[str, object]:
    """The decision as shown in the promotion run (the proof stays in the approvals record)."""
    metadata = decision.metadata()
    metadata.pop("proof")
    metadata["kind"] = "sign_off"
    return metadata


def _await_decision(
    context: dg.OpExecutionContext, review: ReviewRequest, poll_seconds: float
) -> SignOff | None:
    """The first valid decision on this run, or None once the approval expires. Void decisions
    and refusals are logged as warnings once each, so the run shows every attempt."""
    reported: set[int] = set()
    while True:
        entries = read_entries(context.instance, since=review.requested_at - 1)
        decision = None
        for entry, valid, problem in judged_decisions(review, entries):
            decision = decision or valid
            if problem and entry.storage_id not in reported:
                reported.add(entry.storage_id)
                context.log.warning(
                    f"Ignored a decision by {entry.meta.get('reviewer')!r}: {problem}"
                )
        for entry in entries:
            mine = entry.meta.get("promotion_run_id") == context.run_id
            if entry.kind == "refused" and mine and entry.storage_id not in reported:
                reported.add(entry.storage_id)
                context.log.warning(
                    f"Refused a {entry.meta.get('decision')} by {entry.meta.get('reviewer')!r}: "
                    f"{entry.meta.get('refusal')}"
                )
        if decision is not None:
            return replace(decision, proof="")  # the proof stays in the approvals record only
        remaining = review.expires_at - time.time()
        if remaining <= 0:
            return None
        time.sleep(min(poll_seconds, remaining))


@dg.op(
    description="Waits for a valid approve or reject of this run (CLI or the sign_off_decision "
    "job); fails on rejection or when the approval expires, so production is never triggered.",
)
def sign_off(
    context: dg.OpExecutionContext,
    config: PromotionConfig,
    review: ReviewRequest,
    slack: SlackWebhookResource,
    teams: TeamsWebhookResource,
) -> dg.Output[SignOff]:
    decision = _await_decision(context, review, config.poll_interval_seconds)
    if decision is None:
        detail = (
            f"approval expired at {utc_text(review.expires_at)}: no decision on promotion "
            f"run {context.run_id}; production sync {review.production_sync} was not triggered"
        )
        context.log_event(
            dg.AssetObservation(
                asset_key=APPROVALS_KEY,
                description=f"Approval expired for promotion run {context.run_id}",
                metadata={"kind": "expired", "promotion_run_id": context.run_id},
            )
        )
        tag_run(context.instance, context.run_id, {"activation/sign_off/decision": "expired"})
        _tell_outcome(context, config, slack, teams, "Promotion expired", None, detail)
        raise dg.Failure(description=detail)

    metadata = _public_metadata(decision)
    context.log_event(
        dg.AssetObservation(
            asset_key=APPROVALS_KEY,
            description=f"Sign-off of promotion run {context.run_id}",
            metadata=metadata,
        )
    )
    tag_run(context.instance, context.run_id, decision_tags(decision))
    if decision.verdict is Verdict.REJECT:
        detail = (
            f"rejected by {decision.reviewer} at {decision.decided_at_utc}: {decision.note}; "
            f"production sync {review.production_sync} was not triggered"
        )
        _tell_outcome(context, config, slack, teams, "Promotion rejected", None, detail)
        raise dg.Failure(description=detail, metadata=metadata)
    context.log.info(f"Approved by {decision.reviewer} at {decision.decided_at_utc}")
    return dg.Output(decision, metadata=metadata)


@dg.op(
    description="Triggers the production Hightouch sync once, after the approval.",
)
def production_sync(
    context: dg.OpExecutionContext,
    config: PromotionConfig,
    approval: SignOff,
    hightouch: HightouchResource,
) -> dg.Output[RunSummary]:
    summary, metadata = _run_sync(context, hightouch, config.production_sync, config.full_resync)
    return dg.Output(summary, metadata={**metadata, "approved_by": approval.reviewer})


@dg.op(description="Announces the production run with its id and counts.")
def announce(
    context: dg.OpExecutionContext,
    config: PromotionConfig,
    production: RunSummary,
    approval: SignOff,
    slack: SlackWebhookResource,
    teams: TeamsWebhookResource,
) -> dg.Output[None]:
    detail = f"Approved by {approval.reviewer} at {approval.decided_at_utc}"
    if approval.note:
        detail += f": {approval.note}"
    headline = f"Promoted to production sync {production.sync_id}"
    reached = _notify(
        config,
        slack,
        teams,
        outcome_slack_message(context.run_id, headline, production, detail),
        outcome_teams_card(context.run_id, headline, production, detail),
    )
    return dg.Output(None, metadata={"posted_to": ", ".join(reached), **production.counts})


PROMOTE_OPS = ("staging_sync", "request_review", "sign_off", "production_sync", "announce")


@dg.config_mapping
def _promotion_form(config: PromotionConfig) -> dict:
    """One Launchpad form for the whole job: every op reads the same values."""
    values = config.model_dump()
    return {"ops": {name: {"config": values} for name in PROMOTE_OPS}}


@dg.job(
    config=_promotion_form,
    description="Promote a Hightouch sync from staging to production with a human sign-off: "
    "staging sync, review request (Slack and Teams), sign-off, production sync, announcement.",
    tags={"activation/concern": "promotion"},
)
def promote() -> None:
    staging = staging_sync()
    approval = sign_off(request_review(staging))
    announce(production_sync(approval), approval)


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
    return dg.Output(None, metadata=_public_metadata(decision))


@dg.job(
    name="sign_off_decision",
    description="Approve or reject a waiting promote run from the Launchpad (needs the code "
    "posted in the review channel).",
    tags={"activation/concern": "promotion"},
)
def sign_off_job() -> None:
    record_sign_off()


def build_teams_resource() -> TeamsWebhookResource:
    """The sandbox's Teams sink when the sandbox is selected, else EnvVar TEAMS_WEBHOOK_URL."""
    base = sandbox_url()
    if base:
        return TeamsWebhookResource(webhook_url=base + SANDBOX_TEAMS_WEBHOOK_PATH)
    return TeamsWebhookResource(webhook_url=dg.EnvVar(TEAMS_WEBHOOK_URL_VAR))


def build_promotion_definitions() -> dg.Definitions:
    """The promote and sign_off_decision jobs, the approvals asset, and the `teams` resource."""
    approvals = dg.AssetSpec(
        APPROVALS_KEY,
        group_name=PROMOTION_GROUP,
        description="Review requests, decisions and refusals of promote runs (observations).",
        kinds={"dagster"},
    )
    return dg.Definitions(
        assets=[approvals],
        jobs=[promote, sign_off_job],
        resources={"teams": build_teams_resource()},
    )
