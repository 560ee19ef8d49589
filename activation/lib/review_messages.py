"""What reviewers and the team read about a promotion: the Slack message and the Teams card.

The review request carries what a reviewer needs to decide (the staging Hightouch run, its
planned / successful / failed counts), the one-time approval code, and the exact ways to answer.
The code appears only here, in the review channel: nothing else stores or logs it.

Teams receives real Adaptive Cards (version 1.4) wrapped in the message envelope that incoming
webhooks and Workflows accept (the webhook resource is in activation/resources.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from activation.lib.hightouch import SyncRun

ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
COUNT_NAMES = tuple(
    f"{stage}_{change}"
    for stage in ("planned", "successful", "failed")
    for change in ("added", "changed", "removed")
)


@dataclass(frozen=True)
class RunSummary:
    """A finished Hightouch run as people see it: ids, link, status and the nine counts."""

    sync_id: str
    run_id: str
    run_url: str
    status: str
    planned_added: int = 0
    planned_changed: int = 0
    planned_removed: int = 0
    successful_added: int = 0
    successful_changed: int = 0
    successful_removed: int = 0
    failed_added: int = 0
    failed_changed: int = 0
    failed_removed: int = 0

    @classmethod
    def of(cls, run: SyncRun, run_url: str) -> RunSummary:
        counts = {
            f"{stage}_{change}": getattr(getattr(run, stage), change)
            for stage in ("planned", "successful", "failed")
            for change in ("added", "changed", "removed")
        }
        return cls(sync_id=run.sync_id, run_id=run.id, run_url=run_url, status=run.status, **counts)

    @property
    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNT_NAMES}

    @property
    def failed_total(self) -> int:
        return self.failed_added + self.failed_changed + self.failed_removed

    def count_lines(self) -> list[tuple[str, str]]:
        """(label, value) rows shared by the Slack message and the Teams FactSet."""
        return [
            (
                "Planned",
                f"+{self.planned_added} added, ~{self.planned_changed} changed, "
                f"-{self.planned_removed} removed",
            ),
            (
                "Successful",
                f"+{self.successful_added} added, ~{self.successful_changed} changed, "
                f"-{self.successful_removed} removed",
            ),
            (
                "Failed",
                f"{self.failed_total} failed ({self.failed_added} added, "
                f"{self.failed_changed} changed, {self.failed_removed} removed)",
            ),
        ]


@dataclass(frozen=True)
class ReviewInvitation:
    """Everything the review message says; `code` is the one-time approval code in clear."""

    promotion_run_id: str
    promotion_run_url: str
    staging: RunSummary
    production_sync: str
    code: str
    expires_at: str
    allowed_reviewers: tuple[str, ...]

    def approve_command(self) -> str:
        return (
            f"activation approve {self.promotion_run_id} --reviewer YOUR_NAME "
            f"--code {self.code} --staging-run {self.staging.run_id} --comment 'why'"
        )

    def reject_command(self) -> str:
        return (
            f"activation reject {self.promotion_run_id} --reviewer YOUR_NAME "
            f"--code {self.code} --staging-run {self.staging.run_id} --reason 'why'"
        )

    def launchpad_steps(self) -> str:
        return (
            "In the Dagster UI open job `sign_off_decision`, Launchpad, and fill in: "
            f"promotion_run_id {self.promotion_run_id}, staging_run_id {self.staging.run_id}, "
            "decision approve or reject, reviewer, approval_code (above), comment or reason."
        )

    def who_may_decide(self) -> str:
        if self.allowed_reviewers:
            return "Allowed reviewers: " + ", ".join(self.allowed_reviewers)
        return "Any reviewer holding this code may decide."

    def title(self) -> str:
        return (
            f"Review needed: promote staging sync {self.staging.sync_id} to production "
            f"sync {self.production_sync}"
        )


def review_slack_message(invitation: ReviewInvitation) -> dict[str, Any]:
    """Slack Block Kit message asking for a decision (text also carries everything)."""
    staging = invitation.staging
    counts = "\n".join(f"*{label}:* {value}" for label, value in staging.count_lines())
    details = (
        f"Staging Hightouch run {staging.run_id} ({staging.status}): <{staging.run_url}|open in "
        f"Hightouch>\nPromotion run {invitation.promotion_run_id}: <{invitation.promotion_run_url}"
        f"|open in Dagster>\n{counts}"
    )
    how = (
        f"*Approval code:* `{invitation.code}` (one-time, expires {invitation.expires_at})\n"
        f"Approve: `{invitation.approve_command()}`\n"
        f"Reject: `{invitation.reject_command()}`\n"
        f"{invitation.launchpad_steps()}\n{invitation.who_may_decide()}"
    )
    return {
        "text": f"{invitation.title()}\n{details}\n{how}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": invitation.title()[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": details}},
            {"type": "section", "text": {"type": "mrkdwn", "text": how}},
        ],
    }


def adaptive_card_message(
    body: list[dict[str, Any]], actions: list[dict[str, Any]]
) -> dict[str, Any]:
    """An Adaptive Card 1.4 in the envelope Teams incoming webhooks and Workflows accept."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": ADAPTIVE_CARD_CONTENT_TYPE,
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                    "actions": actions,
                },
            }
        ],
    }


def _text(text: str, **style: object) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def _facts(rows: list[tuple[str, str]]) -> dict[str, Any]:
    return {"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in rows]}


def review_teams_card(invitation: ReviewInvitation) -> dict[str, Any]:
    """The review request as an Adaptive Card: counts as facts, commands as monospace text."""
    staging = invitation.staging
    body = [
        _text(invitation.title(), size="Medium", weight="Bolder"),
        _facts(
            [
                ("Promotion run", invitation.promotion_run_id),
                ("Staging Hightouch run", f"{staging.run_id} ({staging.status})"),
                *staging.count_lines(),
                ("Approval code", invitation.code),
                ("Expires", invitation.expires_at),
            ]
        ),
        _text("Approve:", weight="Bolder"),
        _text(invitation.approve_command(), fontType="Monospace"),
        _text("Reject:", weight="Bolder"),
        _text(invitation.reject_command(), fontType="Monospace"),
        _text(invitation.launchpad_steps()),
        _text(invitation.who_may_decide(), isSubtle=True),
    ]
    actions = [
        {"type": "Action.OpenUrl", "title": "Staging run in Hightouch", "url": staging.run_url},
        {
            "type": "Action.OpenUrl",
            "title": "Promotion run in Dagster",
            "url": invitation.promotion_run_url,
        },
    ]
    return adaptive_card_message(body, actions)


def outcome_lines(
    promotion_run_id: str, headline: str, summary: RunSummary | None, detail: str
) -> tuple[str, list[tuple[str, str]]]:
    rows = [("Promotion run", promotion_run_id)]
    if summary is not None:
        rows += [("Hightouch run", f"{summary.run_id} ({summary.status})"), *summary.count_lines()]
    return f"{headline}\n{detail}".strip(), rows


def outcome_slack_message(
    promotion_run_id: str, headline: str, summary: RunSummary | None, detail: str = ""
) -> dict[str, Any]:
    """Completion, rejection or expiry of a promotion, for Slack."""
    text, rows = outcome_lines(promotion_run_id, headline, summary, detail)
    facts = "\n".join(f"*{label}:* {value}" for label, value in rows)
    link = f"\n<{summary.run_url}|open in Hightouch>" if summary else ""
    return {
        "text": f"{text}\n{facts}{link}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{text}\n{facts}{link}"}}
        ],
    }


def outcome_teams_card(
    promotion_run_id: str, headline: str, summary: RunSummary | None, detail: str = ""
) -> dict[str, Any]:
    """Completion, rejection or expiry of a promotion, as an Adaptive Card."""
    _, rows = outcome_lines(promotion_run_id, headline, summary, detail)
    body = [_text(headline, size="Medium", weight="Bolder"), _facts(rows)]
    if detail:
        body.insert(1, _text(detail))
    actions = (
        [{"type": "Action.OpenUrl", "title": "Run in Hightouch", "url": summary.run_url}]
        if summary
        else []
    )
    return adaptive_card_message(body, actions)
