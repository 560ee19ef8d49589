"""The `promote` job: a declared destination's staging sync, a human sign-off, then its
production sync.

    promotion_target -> staging_sync__<key> -> request_review -> sign_off
                     -> production_sync__<key> -> announce

The form names a destination key from destinations.yaml; its staging twin is declared there too.
An unknown key (or one without a staging twin) is refused by the form mapping, before the run is
created, listing the valid keys. Each destination has its own staging and production op, carrying
its concurrency pool; `promotion_target` yields only the chosen destination's branch and Dagster
skips the others (they take no pool slot).

Both syncs go through the one sync path (`activation.core.sync_path.sync_destination`): the quality
gate, the pool, re-attach, the failed-rows policy. `request_review` posts the staging run's counts
and a one-time approval code to Slack and Teams, and, when the Slack app's signing secret is
configured, Approve / Reject buttons to Slack; `sign_off` waits until a valid decision is recorded
for this run (see `activation.core.approvals`), given with `activation approve|reject`, by
launching the small `sign_off_decision` job from the Launchpad (op and job names share one
namespace in Dagster, so it cannot be `sign_off`), or by a Slack click relayed from the intake
(`activation.defs.promotion.sign_off`). A rejection or an expired wait fails the run before
production, so production is never triggered.

An approval is bound to the run family, the staging Hightouch run, the destination's production
sync and the full-resync flag. The production step re-reads the approval from the records, refuses
any other target or flag (naming the approved values), and triggers at most once in the whole run
family: a re-execution re-attaches to the run the approval started, a replay after it synced is
refused.

This module must not use `from __future__ import annotations`: Dagster reads the op signatures.
"""

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from activation.components.hightouch_syncs import PARALLEL_SYNCS
from activation.core.approvals import (
    APPROVALS_KEY,
    REVIEW_STEP,
    DecisionRefused,
    ReviewRequest,
    Verdict,
    code_proof,
    code_verifier,
    decision_tags,
    new_approval_code,
    public_metadata,
    review_request_observation,
    utc_text,
    verified_approval,
)
from activation.core.approvals import Decision as SignOff
from activation.core.sync_path import Stage, SyncOptions, run_family, sync_destination
from activation.dagster_api import tag_run
from activation.defs.promotion.sign_off import (
    SlackRelay,
    await_decision,
    open_slack_review,
    outcome_text,
    slack_group_members,
)
from activation.lib.destinations import Destination, load_destinations
from activation.lib.notify import NotificationError
from activation.lib.review_messages import (
    ButtonBinding,
    ReviewInvitation,
    RunSummary,
    how_to_decide,
    outcome_slack_message,
    outcome_teams_card,
    review_slack_message,
    review_teams_card,
)
from activation.resources import (
    HightouchResource,
    PagerDutyResource,
    QualityGate,
    SlackWebhookResource,
    TeamsWebhookResource,
)

PROMOTION_GROUP = "promotion"
PROMOTE_JOB = "promote"
DAGSTER_URL_VAR = "ACTIVATION_DAGSTER_URL"
FALLBACK_DAGSTER_URL = "http://127.0.0.1:3000"
SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
SLACK_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")


def default_dagster_url() -> str:
    """ACTIVATION_DAGSTER_URL when set (by `activation dev` and the test stack), else port 3000."""
    return os.environ.get(DAGSTER_URL_VAR, "").strip().rstrip("/") or FALLBACK_DAGSTER_URL


class PromotionFormError(ValueError):
    """The promote form is unusable; the message names each field and the valid values."""


class PromotionConfig(dg.Config):
    """The promote job's Launchpad form (one form, mapped onto every op that reads it)."""

    destination: str = Field(
        description="Key of the destination to promote, as declared in destinations.yaml with a "
        "`staging:` twin. Its staging sync runs first; its production sync only after an "
        "approval."
    )
    full_resync: bool = Field(
        default=False,
        description="Run both syncs as full resyncs (no diff; every row is sent again). The "
        "approval covers this choice: it cannot be changed afterwards.",
    )
    allowed_reviewers: list[str] = Field(
        default=[],
        description="Names allowed to decide with the code, from the CLI or sign_off_decision "
        "(compared case-insensitively; a claim, not an identity). Empty: anyone holding the "
        "approval code.",
    )
    slack_reviewer_ids: list[str] = Field(
        default=[],
        description="Slack user ids (U... or W...) allowed to decide with the Approve / Reject "
        "buttons of the Slack message; Slack authenticates who clicked. Empty with no group: "
        "anyone in the review channel, unless allowed_reviewers names people (then the buttons "
        "are refused and the code decides).",
    )
    slack_reviewer_group: str = Field(
        default="",
        description="A Slack user-group id (S...) whose members may click too; members are read "
        "when the review is requested (needs SLACK_BOT_TOKEN with usergroups:read).",
    )
    require_verified_identity: bool = Field(
        default=False,
        description="Accept only Slack clicks (a verified identity): decisions with the code "
        "(CLI, sign_off_decision) are refused for this run.",
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
        default=default_dagster_url(),
        description="Base URL of the Dagster UI, for the run link in the messages. Default: "
        f"${DAGSTER_URL_VAR} as it was when the code location loaded (`activation dev` and the "
        f"test stack set it), else {FALLBACK_DAGSTER_URL}.",
    )

    def problems(self, promotable: Sequence[str]) -> list[str]:
        """What is wrong with this form, naming each field (empty when it is usable)."""
        found = []
        if self.destination.strip() not in promotable:
            found.append(
                f"destination: {self.destination!r} is not a declared destination with a "
                f"staging twin; valid: {', '.join(promotable) or '(none declared)'}"
            )
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
        bad_ids = [i for i in self.slack_reviewer_ids if not SLACK_USER_ID.match(i.strip())]
        if bad_ids:
            found.append(
                f"slack_reviewer_ids: {', '.join(map(repr, bad_ids))} are not Slack user ids "
                "(U... or W..., from a profile's 'Copy member ID')"
            )
        group = self.slack_reviewer_group.strip()
        if group and not SLACK_GROUP_ID.match(group):
            found.append(f"slack_reviewer_group: {group!r} is not a Slack user-group id (S...)")
        if (self.slack_allow_list or self.require_verified_identity) and not self.notify_slack:
            found.append(
                "notify_slack: Slack reviewers or require_verified_identity need the Slack "
                "message (its buttons)"
            )
        return found

    @property
    def slack_allow_list(self) -> bool:
        return bool(self.slack_reviewer_ids or self.slack_reviewer_group.strip())


@dataclass(frozen=True)
class Promoted:
    """The production run an approval started, with that approval (for the announcement)."""

    summary: RunSummary
    approval: SignOff


def production_reference(destination: Destination) -> str:
    """The production sync an approval covers: its declared id, else its declared slug."""
    return destination.sync_id or destination.sync_slug or ""


def _notify(
    config: PromotionConfig,
    slack: SlackWebhookResource,
    teams: TeamsWebhookResource,
    slack_message: dict,
    teams_card: dict,
) -> list[str]:
    """Post to every configured channel, even when an earlier one fails; returns the channels
    reached, or raises naming each channel that failed once all were tried."""
    reached, failures = [], []
    channels = [
        ("slack", config.notify_slack, lambda: slack.post(slack_message)),
        ("teams", config.notify_teams, lambda: teams.post(teams_card)),
    ]
    for name, enabled, post in channels:
        if not enabled:
            continue
        try:
            post()
            reached.append(name)
        except NotificationError as error:
            failures.append(f"{name}: {error}")
    if failures:
        raise NotificationError(
            "; ".join(failures) + (f" (reached: {', '.join(reached)})" if reached else "")
        )
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


def _slack_buttons(config: PromotionConfig, slack: SlackWebhookResource) -> bool:
    """Whether the Slack message carries Approve / Reject buttons: Slack is notified and the
    code location holds the Slack app's signing secret (to check the clicks). A form that relies
    on Slack identities without it fails here, before anything is posted."""
    buttons = config.notify_slack and bool(slack.signing_secret)
    if (config.slack_allow_list or config.require_verified_identity) and not buttons:
        raise dg.Failure(
            description="slack_reviewer_ids / slack_reviewer_group / require_verified_identity "
            "need the Slack buttons, and the code location has no Slack signing secret: set "
            "SLACK_SIGNING_SECRET (the Slack app's signing secret). Nothing was posted.",
            allow_retries=False,
        )
    return buttons


def _invitation(request: ReviewRequest, config: PromotionConfig, code: str) -> ReviewInvitation:
    """The review message's content (`code` empty: as it reads once decided)."""
    return ReviewInvitation(
        promotion_run_id=request.promotion_run_id,
        promotion_run_url=f"{config.dagster_url.rstrip('/')}/runs/{request.promotion_run_id}",
        staging=request.staging,
        production_sync=request.production_sync,
        code=code,
        expires_at=utc_text(request.expires_at),
        allowed_reviewers=request.allowed_reviewers,
        dagster_home=os.environ.get("DAGSTER_HOME") or None,
        buttons=ButtonBinding(
            promotion_run_id=request.promotion_run_id,
            run_family=request.run_family or request.promotion_run_id,
            staging_run_id=request.staging.run_id,
            production_sync=request.production_sync,
            destination=request.destination,
        )
        if request.slack_buttons
        else None,
        slack_reviewers=request.slack_reviewer_ids,
        slack_group=request.slack_reviewer_group,
    )


def build_promote_job(destinations: Sequence[Destination]) -> dg.JobDefinition:
    """The promote job over the destinations that declare a staging twin."""
    promotable = tuple(d for d in destinations if d.staging is not None)
    keys = tuple(d.key for d in promotable)
    by_key = {d.key: d for d in promotable}

    @dg.op(
        name="promotion_target",
        out={key: dg.Out(str, is_required=False) for key in keys},
        description="Starts the branch of the destination the form names (the others are "
        "skipped and hold no pool).",
    )
    def promotion_target(context: dg.OpExecutionContext, config: PromotionConfig):
        problems = config.problems(keys)  # the form mapping refused these already; kept for
        if problems:  # a run launched with raw op config instead of the form
            raise dg.Failure("The promote form is invalid: " + "; ".join(problems))
        key = config.destination.strip()
        context.log.info(f"Promoting {key}: staging sync first, production after sign-off")
        yield dg.Output(key, output_name=key)

    def staging_op(destination: Destination) -> dg.OpDefinition:
        @dg.op(
            name=f"staging_sync__{destination.key}",
            pool=destination.pool,
            tags={"destination": destination.destination_type},
            description=f"Syncs {destination.key}'s staging twin through the one sync path "
            "(gate, pool, re-attach, failed-rows policy) and waits for its run.",
        )
        def staging_sync(
            context: dg.OpExecutionContext,
            config: PromotionConfig,
            target: str,
            hightouch: HightouchResource,
            pagerduty: PagerDutyResource,
            slack: SlackWebhookResource,
            quality_gate: dg.ResourceParam[QualityGate],
        ) -> dg.Output[RunSummary]:
            result = sync_destination(
                context,
                destination,
                hightouch=hightouch,
                gate=quality_gate,
                pagerduty=pagerduty,
                slack=slack,
                options=SyncOptions(full_resync=config.full_resync),
                stage=Stage.STAGING,
            )
            summary = RunSummary.of(result.run, result.run_url)
            context.log.info(f"Staging run {summary.run_id} {summary.status}: {summary.counts}")
            return dg.Output(summary, metadata=result.metadata)

        return staging_sync

    @dg.op(
        name=REVIEW_STEP,
        description="Posts the staging counts and a one-time approval code to Slack and Teams, "
        "and records the request (with only the code's verifier) on promotion/approvals.",
    )
    def request_review(
        context: dg.OpExecutionContext,
        config: PromotionConfig,
        staging: list[RunSummary],
        slack: SlackWebhookResource,
        teams: TeamsWebhookResource,
    ) -> dg.Output[ReviewRequest]:
        (summary,) = staging  # promotion_target started exactly one branch
        destination = by_key[config.destination.strip()]
        buttons = _slack_buttons(config, slack)
        members = slack_group_members(config.slack_reviewer_group.strip(), slack)
        code = new_approval_code()
        now = time.time()
        request = ReviewRequest(
            promotion_run_id=context.run_id,
            staging=summary,
            production_sync=production_reference(destination),
            verifier=code_verifier(code_proof(context.run_id, code)),
            allowed_reviewers=tuple(name.strip() for name in config.allowed_reviewers),
            requested_at=now,
            expires_at=now + config.approval_timeout_seconds,
            destination=destination.key,
            run_family=run_family(context),
            full_resync=config.full_resync,
            slack_buttons=buttons,
            slack_reviewer_ids=tuple(i.strip() for i in config.slack_reviewer_ids),
            slack_reviewer_group=config.slack_reviewer_group.strip(),
            slack_group_members=members,
            require_verified_identity=config.require_verified_identity,
        )
        # Recorded before posting: a reviewer quick enough to answer at once must find it.
        context.log_event(review_request_observation(request))
        if buttons:
            open_slack_review(request)
        invitation = _invitation(request, config, code)
        try:
            reached = _notify(
                config,
                slack,
                teams,
                review_slack_message(invitation),
                review_teams_card(invitation),
            )
        except NotificationError as error:
            raise dg.Failure(
                description=f"The review request could not be posted everywhere: {error}. "
                "Production will not run without a review.",
                allow_retries=False,
            ) from None
        context.log.info(
            f"Review requested in {', '.join(reached)}; waiting until "
            f"{utc_text(request.expires_at)}"
        )
        return dg.Output(
            request,
            metadata={
                "posted_to": ", ".join(reached),
                "destination": destination.key,
                "staging_run_id": summary.run_id,
                "production_sync": request.production_sync,
                "full_resync": config.full_resync,
                "expires_at": utc_text(request.expires_at),
                "allowed_reviewers": ", ".join(request.allowed_reviewers)
                or "(anyone with the code)",
                "slack_buttons": buttons,
                "slack_allowed": request.slack_allowed() or "(anyone in the channel)",
            },
        )

    @dg.op(
        name="sign_off",
        out={key: dg.Out(SignOff, is_required=False) for key in keys},
        description="Waits for a valid approve or reject of this run (CLI, the "
        "sign_off_decision job, or a Slack click relayed from the intake); fails on rejection or "
        "when the approval expires, so production is never triggered.",
    )
    def sign_off(
        context: dg.OpExecutionContext,
        config: PromotionConfig,
        review: ReviewRequest,
        slack: SlackWebhookResource,
        teams: TeamsWebhookResource,
    ):
        context.log.info(
            f"Waiting for a decision on promotion run {review.promotion_run_id} until "
            f"{utc_text(review.expires_at)}. Decide with one of:\n"
            + how_to_decide(
                review.promotion_run_id,
                review.staging.run_id,
                dagster_home=os.environ.get("DAGSTER_HOME") or None,
                slack_buttons=review.slack_buttons,
            )
        )
        relay = (
            SlackRelay(context, review, slack.signing_secret, _invitation(review, config, ""))
            if review.slack_buttons
            else None
        )
        outcome = "the promote run stopped waiting"
        try:
            decision = await_decision(context, review, config.poll_interval_seconds, relay)
            outcome = "expired" if decision is None else outcome_text(decision)
        finally:
            if relay is not None:
                relay.close(outcome)
        if decision is None:
            detail = (
                f"approval expired at {utc_text(review.expires_at)}: no decision on promotion "
                f"run {review.promotion_run_id}; production sync {review.production_sync} was "
                "not triggered"
            )
            context.log_event(
                dg.AssetObservation(
                    asset_key=APPROVALS_KEY,
                    description=f"Approval expired for promotion run {review.promotion_run_id}",
                    metadata={"kind": "expired", "promotion_run_id": review.promotion_run_id},
                )
            )
            tag_run(context.instance, context.run_id, {"activation/sign_off/decision": "expired"})
            _tell_outcome(context, config, slack, teams, "Promotion expired", None, detail)
            raise dg.Failure(description=detail)

        metadata = public_metadata(decision)
        context.log_event(
            dg.AssetObservation(
                asset_key=APPROVALS_KEY,
                description=f"Sign-off of promotion run {review.promotion_run_id}",
                metadata=metadata,
            )
        )
        tag_run(context.instance, context.run_id, decision_tags(decision))
        if decision.verdict is Verdict.REJECT:
            detail = (
                f"rejected by {decision.who()} at {decision.decided_at_utc}: {decision.note}; "
                f"production sync {review.production_sync} was not triggered"
            )
            _tell_outcome(context, config, slack, teams, "Promotion rejected", None, detail)
            raise dg.Failure(description=detail, metadata=metadata)
        context.log.info(f"Approved by {decision.who()} at {decision.decided_at_utc}")
        yield dg.Output(decision, output_name=review.destination, metadata=metadata)

    def production_op(destination: Destination) -> dg.OpDefinition:
        @dg.op(
            name=f"production_sync__{destination.key}",
            pool=destination.pool,
            tags={"destination": destination.destination_type},
            description=f"Syncs {destination.key}'s production sync once, only under the "
            "approval of this run family, through the one sync path.",
        )
        def production_sync(
            context: dg.OpExecutionContext,
            config: PromotionConfig,
            approval: SignOff,
            hightouch: HightouchResource,
            pagerduty: PagerDutyResource,
            slack: SlackWebhookResource,
            quality_gate: dg.ResourceParam[QualityGate],
        ) -> dg.Output[Promoted]:
            try:
                request = verified_approval(context.instance, approval)
            except DecisionRefused as error:
                raise dg.Failure(
                    description=f"Production sync of {destination.key} refused: {error}. "
                    "Nothing was sent.",
                    allow_retries=False,
                ) from None
            problem = request.binding_problem(
                run_family=run_family(context),
                destination=config.destination.strip(),
                production_sync=production_reference(destination),
                full_resync=config.full_resync,
            )
            if problem:
                raise dg.Failure(
                    description=f"Production sync of {destination.key} refused: {problem}. "
                    "Nothing was sent; a new target or flag needs a new promote run.",
                    allow_retries=False,
                )
            result = sync_destination(
                context,
                destination,
                hightouch=hightouch,
                gate=quality_gate,
                pagerduty=pagerduty,
                slack=slack,
                options=SyncOptions(full_resync=request.full_resync),
                stage=Stage.PRODUCTION,
                once_per_family=True,
                extra_metadata={
                    "approved_by": approval.reviewer,
                    "approved_at": approval.decided_at_utc,
                    "approval_decision_id": approval.decision_id,
                    "approval_path": approval.path,
                    "identity_verified": approval.identity_verified,
                    **(
                        {"approved_by_slack_user_id": approval.slack.user_id}
                        if approval.slack
                        else {}
                    ),
                    "promotion_run_id": request.promotion_run_id,
                },
            )
            summary = RunSummary.of(result.run, result.run_url)
            return dg.Output(
                Promoted(summary, approval),
                metadata={**result.metadata, "approved_by": approval.reviewer},
            )

        return production_sync

    @dg.op(description="Announces the production run with its id, counts and approver.")
    def announce(
        context: dg.OpExecutionContext,
        config: PromotionConfig,
        promoted: list[Promoted],
        slack: SlackWebhookResource,
        teams: TeamsWebhookResource,
    ) -> dg.Output[None]:
        (done,) = promoted
        approval, production = done.approval, done.summary
        detail = f"Approved by {approval.who()} at {approval.decided_at_utc}"
        if approval.note:
            detail += f": {approval.note}"
        headline = f"Promoted {approval.destination} to production sync {production.sync_id}"
        reached = _notify(
            config,
            slack,
            teams,
            outcome_slack_message(context.run_id, headline, production, detail),
            outcome_teams_card(context.run_id, headline, production, detail),
        )
        return dg.Output(None, metadata={"posted_to": ", ".join(reached), **production.counts})

    staging_ops = {d.key: staging_op(d) for d in promotable}
    production_ops = {d.key: production_op(d) for d in promotable}
    configured = [
        "promotion_target",
        REVIEW_STEP,
        "sign_off",
        "announce",
        *(op.name for op in staging_ops.values()),
        *(op.name for op in production_ops.values()),
    ]

    @dg.config_mapping
    def promotion_form(config: PromotionConfig) -> dict:
        """One Launchpad form for the whole job, checked before the run is created."""
        problems = config.problems(keys)
        if problems:
            raise PromotionFormError("The promote form is invalid: " + "; ".join(problems))
        values = config.model_dump()
        return {"ops": {name: {"config": values} for name in configured}}

    @dg.job(
        name=PROMOTE_JOB,
        config=promotion_form,
        description="Promote a declared destination from its staging twin to production with a "
        "human sign-off: staging sync, review request (Slack and Teams), sign-off, production "
        "sync, announcement. Both syncs pass the quality gate and hold the destination's pool.",
        tags={"activation/concern": "promotion"},
        # Never Celery (ACTIVATION_EXECUTOR): the sign-off step waits hours for a human, which
        # would hold a Celery worker and outlive the broker's visibility timeout (redelivery).
        executor_def=PARALLEL_SYNCS,
    )
    def promote() -> None:
        targets = promotion_target()
        review = request_review([staging_ops[key](getattr(targets, key)) for key in keys])
        approvals = sign_off(review)
        announce([production_ops[key](getattr(approvals, key)) for key in keys])

    return promote


def build_promotion_definitions(destinations: Sequence[Destination]) -> dg.Definitions:
    """The promote job and the approvals asset its records live on."""
    approvals = dg.AssetSpec(
        APPROVALS_KEY,
        group_name=PROMOTION_GROUP,
        description="Review requests, decisions and refusals of promote runs (observations).",
        kinds={"dagster"},
        owners=["team:data-platform"],
    )
    return dg.Definitions(
        assets=[approvals],
        jobs=[build_promote_job(destinations)],
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_promotion_definitions(load_destinations())
