"""How a decision reaches the waiting `sign_off` op, and the `sign_off_decision` job.

Two paths, one set of rules (`activation.core.approvals.refusal`), one record per decision on
`promotion/approvals`, the first valid decision wins:

- **The code** (teams without Slack): `activation approve|reject` or the `sign_off_decision` job
  below (op and job names share one namespace in Dagster, so it cannot be called `sign_off`) call
  `record_decision` with the one-time code from the review message. The name is a claim.
- **A Slack click**: the intake (`activation webhooks`) verifies Slack's signature and records
  the click, sealed, in the Slack store (activation/webhooks/slack_store.py); it holds no Dagster
  credentials. The waiting op relays it (`SlackRelay`): it checks the seal with the signing
  secret of its own `slack` resource, checks every rule against the review request its run
  recorded, records the decision (or the refusal) from inside the run with the Slack user id,
  name and team id, and answers through the click's `response_url`: the message is replaced by
  "Approved by @alice at 14:02 UTC", a refusal goes to the clicking user only.

`await_decision` is the op's loop over both; `slack_group_members` and `open_slack_review` are
what `request_review` does on the Slack side before it posts the buttons.

This module must not use `from __future__ import annotations`: Dagster reads the op signatures.
"""

import sqlite3
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import dagster as dg
from pydantic import Field

from activation.components.hightouch_syncs import PARALLEL_SYNCS
from activation.core.approvals import (
    Decision,
    DecisionRefused,
    ReviewRequest,
    SlackIdentity,
    Verdict,
    decision_observation,
    first_decision,
    judged_decisions,
    public_metadata,
    read_entries,
    record_decision,
    refusal,
    slack_refusal_observation,
)
from activation.lib.notify import NotificationError, post_json
from activation.lib.review_messages import (
    ReviewInvitation,
    clock_text,
    decided_slack_message,
    ephemeral_slack_message,
)
from activation.resources import SlackWebhookResource
from activation.webhooks import slack_store
from activation.webhooks.slack import Click, SlackApiError, attestation_matches, usergroup_members


def outcome_text(decision: Decision) -> str:
    """`Approved by @alice at 14:02 UTC`: what the replaced review message says."""
    return f"{decision.verdict.done} by {decision.reviewer} at {clock_text(decision.decided_at)}"


@dataclass
class SlackRelay:
    """The clicks the intake recorded for this run family, judged by the waiting op."""

    context: dg.OpExecutionContext
    review: ReviewRequest
    signing_secret: str
    invitation: ReviewInvitation
    """The review message as it reads without the code, to replace it once decided."""
    store: Path = field(default_factory=slack_store.store_path)

    def poll(self) -> Decision | None:
        """Judge every pending click, oldest first; the first valid one is the decision."""
        family = self.review.run_family or self.review.promotion_run_id
        for stored in slack_store.pending_clicks(self.store, family):
            decision = self._judge(stored)
            if decision is not None:
                return decision
        return None

    def _judge(self, stored: slack_store.StoredClick) -> Decision | None:
        click, review = stored.click, self.review
        if not attestation_matches(self.signing_secret, click, stored.attestation):
            # Not written by an intake holding the signing secret: no one to answer.
            slack_store.settle(self.store, stored.seq, slack_store.VOID, "attestation mismatch")
            self.context.log.warning(
                f"Ignored Slack click #{stored.seq}: its record is not sealed by the intake "
                "(the attestation does not verify with this signing secret)"
            )
            return None
        identity = SlackIdentity(click.user_id, click.user_name, click.team_id)
        verdict = Verdict(click.verdict)
        problem = self._binding_problem(click)
        if problem is None:
            entries = read_entries(self.context.instance, since=review.requested_at - 1)
            problem = refusal(
                review,
                verdict=verdict,
                reviewer=identity.handle,
                note=click.reason,
                staging_run_id=click.binding.staging_run_id,
                proof="",
                at=time.time(),
                earlier=first_decision(review, entries),
                slack=identity,
            )
        if problem is not None:
            self.context.log_event(
                slack_refusal_observation(
                    review.promotion_run_id, verdict, identity, problem, _source(stored)
                )
            )
            self.context.log.warning(
                f"Refused a Slack {verdict.value} by {identity.handle} ({identity.user_id}): "
                f"{problem}"
            )
            answer = f"Your {verdict.value} was refused: {problem}."
            if verdict is Verdict.REJECT and problem.startswith("reason:"):
                answer += " Type the reason in the box above the buttons, then click Reject."
            self._finish(stored, slack_store.REFUSED, problem, ephemeral_slack_message(answer))
            return None
        decision = Decision(
            decision_id=uuid.uuid4().hex,
            promotion_run_id=review.promotion_run_id,
            verdict=verdict,
            reviewer=identity.handle,
            decided_at=time.time(),
            note=click.reason,
            staging=review.staging,
            source=_source(stored),
            destination=review.destination,
            production_sync=review.production_sync,
            full_resync=review.full_resync,
            slack=identity,
        )
        self.context.log_event(decision_observation(decision))
        # A decision by code recorded meanwhile may have come first: the stored order settles it.
        entries = read_entries(self.context.instance, since=review.requested_at - 1)
        winner = first_decision(review, entries)
        if winner is None or winner.decision_id != decision.decision_id:
            other = f"{winner.verdict.value} by {winner.reviewer}" if winner else "another"
            text = f"Nothing changed: promotion run {review.promotion_run_id} was decided first "
            text += f"({other})."
            self._finish(stored, slack_store.REFUSED, text, ephemeral_slack_message(text))
            return None
        self._finish(
            stored,
            slack_store.ACCEPTED,
            outcome_text(decision),
            decided_slack_message(self.invitation, outcome_text(decision), decision.note),
        )
        return decision

    def _binding_problem(self, click: Click) -> str | None:
        review, bound = self.review, click.binding
        if bound.promotion_run_id != review.promotion_run_id:
            return (
                f"this click is on the review message of promotion run {bound.promotion_run_id}, "
                f"not of the one waiting (promotion run {review.promotion_run_id}); decide on the "
                "current review message"
            )
        if bound.production_sync != review.production_sync:
            return (
                f"the button names production sync {bound.production_sync}, the review covers "
                f"production sync {review.production_sync}"
            )
        return None

    def _finish(self, stored: slack_store.StoredClick, status: str, outcome: str, answer: dict):
        slack_store.settle(self.store, stored.seq, status, outcome)
        try:
            post_json(
                stored.click.response_url,
                answer,
                timeout=5.0,
                attempts=2,
                what="Slack answer to a click",
            )
        except NotificationError as error:  # the decision stands; the message did not change
            self.context.log.warning(str(error))

    def close(self, outcome: str) -> None:
        """Later clicks on this review get `outcome` from the intake."""
        slack_store.close_review(self.store, self.review.promotion_run_id, outcome)


def slack_group_members(group: str, slack: SlackWebhookResource) -> tuple[str, ...]:
    """Members of a Slack user group, read once, when the review is requested (so the record
    says who could decide); raises `dg.Failure` before anything is posted when it cannot."""
    if not group:
        return ()
    if not slack.bot_token:
        raise dg.Failure(
            description=f"slack_reviewer_group {group}: reading its members needs a Slack bot "
            "token with usergroups:read; set SLACK_BOT_TOKEN. Nothing was posted.",
            allow_retries=False,
        )
    try:
        return usergroup_members(slack.api_base_url, slack.bot_token, group)
    except SlackApiError as error:
        raise dg.Failure(
            description=f"slack_reviewer_group {group}: could not read its members ({error}). "
            "Nothing was posted.",
        ) from None


def open_slack_review(request: ReviewRequest) -> None:
    """Tell the Slack store the review is open (before the buttons are posted), so the intake
    can answer clicks on it once it is closed or expired."""
    path = slack_store.store_path()
    try:
        slack_store.open_review(
            path,
            request.promotion_run_id,
            request.run_family or request.promotion_run_id,
            request.expires_at,
        )
    except (OSError, sqlite3.Error) as error:
        raise dg.Failure(
            description=f"The Slack interactions store {path} is not usable ({error}); the "
            "intake and the promote runs must share ACTIVATION_DATA_DIR. Nothing was posted.",
            allow_retries=False,
        ) from None


def _source(stored: slack_store.StoredClick) -> str:
    return f"slack click #{stored.seq} (action_ts {stored.click.action_ts})"


def await_decision(
    context: dg.OpExecutionContext,
    review: ReviewRequest,
    poll_seconds: float,
    relay: SlackRelay | None = None,
) -> Decision | None:
    """The first valid decision on this run, or None once the approval expires. Void decisions
    and refusals recorded by others are logged as warnings once each, so the run shows every
    attempt (the relay logs the Slack clicks it refuses itself)."""
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
            mine = entry.meta.get("promotion_run_id") == review.promotion_run_id
            from_outside = entry.run_id != review.promotion_run_id
            new = entry.storage_id not in reported
            if entry.kind == "refused" and mine and from_outside and new:
                reported.add(entry.storage_id)
                context.log.warning(
                    f"Refused a {entry.meta.get('decision')} by "
                    f"{entry.meta.get('reviewer')!r}: {entry.meta.get('refusal')}"
                )
        if decision is None and relay is not None:
            decision = relay.poll()
        if decision is not None:
            return replace(decision, proof="")  # the proof stays in the approvals record only
        remaining = review.expires_at - time.time()
        if remaining <= 0:
            return None
        time.sleep(min(poll_seconds, remaining))


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
    executor_def=PARALLEL_SYNCS,  # one short step, on the run's own host, as promote
)
def sign_off_job() -> None:
    record_sign_off()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[sign_off_job])
