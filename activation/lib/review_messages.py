"""What reviewers and the team read about a promotion: the Slack message and the Teams card.

The review request carries what a reviewer needs to decide (the staging Hightouch run, its
planned / successful / failed counts), the one-time approval code, and the exact ways to answer.
The code appears only here, in the review channel: nothing else stores or logs it.

With a Slack app configured, the Slack message also carries Approve and Reject buttons and a
reason input. The buttons carry what a decision is bound to (`ButtonBinding`: the promote run and
its family, the staging Hightouch run, the production sync), never the code: a click is proved by
Slack's signature and the clicking user's Slack identity (activation/webhooks/slack.py).

Teams receives real Adaptive Cards (version 1.4) wrapped in the message envelope that incoming
webhooks and Workflows accept (the webhook resource is in activation/resources.py).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from activation.lib.hightouch import SyncRun

ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
COUNT_NAMES = tuple(
    f"{stage}_{change}"
    for stage in ("planned", "successful", "failed")
    for change in ("added", "changed", "removed")
)
# Block Kit ids of the review message's interactive parts; the intake recognises clicks by them.
APPROVE_ACTION = "activation_approve"
REJECT_ACTION = "activation_reject"
DECISION_BLOCK = "activation_decision"
REASON_BLOCK = "activation_reason"
REASON_ACTION = "reason"
CODE_PLACEHOLDER = "<code from the review message>"


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
class ButtonBinding:
    """What a Slack button click is bound to: carried in the button's value, never the code."""

    promotion_run_id: str
    run_family: str
    staging_run_id: str
    production_sync: str
    destination: str

    def to_value(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_value(cls, value: str) -> ButtonBinding:
        """Raises ValueError when the value is not one of ours."""
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("the button value is not JSON") from None
        names = ("promotion_run_id", "run_family", "staging_run_id", "production_sync")
        if not isinstance(data, dict) or not all(
            isinstance(data.get(n), str) and data[n] for n in names
        ):
            raise ValueError("the button value does not name a promotion")
        return cls(**{n: str(data[n]) for n in (*names, "destination") if n in data})


def dagster_home_option(dagster_home: str | None) -> str:
    """` --dagster-home PATH` for a printed command, when the instance's home is known."""
    return f" --dagster-home {shlex.quote(dagster_home)}" if dagster_home else ""


def approve_command(
    promotion_run_id: str, staging_run_id: str, code: str, dagster_home: str | None = None
) -> str:
    return (
        f"activation approve {promotion_run_id} --reviewer YOUR_NAME --code {code} "
        f"--staging-run {staging_run_id} --comment 'why'{dagster_home_option(dagster_home)}"
    )


def reject_command(
    promotion_run_id: str, staging_run_id: str, code: str, dagster_home: str | None = None
) -> str:
    return (
        f"activation reject {promotion_run_id} --reviewer YOUR_NAME --code {code} "
        f"--staging-run {staging_run_id} --reason 'why'{dagster_home_option(dagster_home)}"
    )


def launchpad_steps(promotion_run_id: str, staging_run_id: str) -> str:
    return (
        "In the Dagster UI open job `sign_off_decision`, Launchpad, and fill in: "
        f"promotion_run_id {promotion_run_id}, staging_run_id {staging_run_id}, "
        "decision approve or reject, reviewer, approval_code (from the review message), comment "
        "or reason."
    )


def how_to_decide(
    promotion_run_id: str,
    staging_run_id: str,
    *,
    dagster_home: str | None,
    slack_buttons: bool,
) -> str:
    """The ways to decide, for the waiting run's log: the code is a placeholder, never the code."""
    bound = (promotion_run_id, staging_run_id, CODE_PLACEHOLDER, dagster_home)
    lines = [
        f"Approve: {approve_command(*bound)}",
        f"Reject: {reject_command(*bound)}",
        launchpad_steps(promotion_run_id, staging_run_id),
    ]
    if slack_buttons:
        lines.append("Or click Approve / Reject in the Slack review message (Slack identity).")
    return "\n".join(lines)


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
    dagster_home: str | None = None
    """DAGSTER_HOME of the run, added to the printed commands as --dagster-home."""
    buttons: ButtonBinding | None = None
    """Set when Slack clicks can decide: the message then carries Approve / Reject buttons."""
    slack_reviewers: tuple[str, ...] = ()
    slack_group: str = ""

    def approve_command(self) -> str:
        return approve_command(
            self.promotion_run_id, self.staging.run_id, self.code, self.dagster_home
        )

    def reject_command(self) -> str:
        return reject_command(
            self.promotion_run_id, self.staging.run_id, self.code, self.dagster_home
        )

    def launchpad_steps(self) -> str:
        return launchpad_steps(self.promotion_run_id, self.staging.run_id)

    def who_may_decide(self) -> str:
        if self.allowed_reviewers:
            return "Allowed reviewers: " + ", ".join(self.allowed_reviewers)
        return "Any reviewer holding this code may decide."

    def who_may_click(self) -> str:
        allowed = [f"<@{user}>" for user in self.slack_reviewers]
        if self.slack_group:
            allowed.append(f"members of <!subteam^{self.slack_group}>")
        if allowed:
            return "Buttons: " + ", ".join(allowed) + " (checked against your Slack identity)."
        if self.allowed_reviewers:
            return "Buttons: no Slack identities are allowed for this promotion; use the code."
        return "Buttons: anyone in this channel (your Slack identity is recorded)."

    def title(self) -> str:
        return (
            f"Review needed: promote staging sync {self.staging.sync_id} to production "
            f"sync {self.production_sync}"
        )

    def details(self) -> str:
        staging = self.staging
        counts = "\n".join(f"*{label}:* {value}" for label, value in staging.count_lines())
        return (
            f"Staging Hightouch run {staging.run_id} ({staging.status}): <{staging.run_url}|open "
            f"in Hightouch>\nPromotion run {self.promotion_run_id}: <{self.promotion_run_url}"
            f"|open in Dagster>\n{counts}"
        )


def review_slack_message(invitation: ReviewInvitation) -> dict[str, Any]:
    """Slack Block Kit message asking for a decision (text also carries everything); with
    `invitation.buttons`, a reason input and Approve / Reject buttons follow."""
    details = invitation.details()
    how = (
        f"*Approval code:* `{invitation.code}` (one-time, expires {invitation.expires_at})\n"
        f"Approve: `{invitation.approve_command()}`\n"
        f"Reject: `{invitation.reject_command()}`\n"
        f"{invitation.launchpad_steps()}\n{invitation.who_may_decide()}"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": invitation.title()[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": details}},
        {"type": "section", "text": {"type": "mrkdwn", "text": how}},
    ]
    if invitation.buttons is not None:
        blocks += decision_blocks(invitation.buttons, invitation.who_may_click())
    return {"text": f"{invitation.title()}\n{details}\n{how}", "blocks": blocks}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def decision_blocks(binding: ButtonBinding, who_may_click: str) -> list[dict[str, Any]]:
    """The reason input and the Approve / Reject buttons (each button asks to confirm)."""
    value = binding.to_value()

    def button(action_id: str, label: str, style: str, confirm: str) -> dict[str, Any]:
        return {
            "type": "button",
            "action_id": action_id,
            "text": _plain(label),
            "style": style,
            "value": value,
            "confirm": {
                "title": _plain(f"{label} this promotion?"),
                "text": {"type": "mrkdwn", "text": confirm},
                "confirm": _plain(label),
                "deny": _plain("Cancel"),
            },
        }

    return [
        {
            "type": "input",
            "block_id": REASON_BLOCK,
            "optional": True,
            "label": _plain("Reason (required to reject)"),
            "element": {"type": "plain_text_input", "action_id": REASON_ACTION},
        },
        {
            "type": "actions",
            "block_id": DECISION_BLOCK,
            "elements": [
                button(
                    APPROVE_ACTION,
                    "Approve",
                    "primary",
                    f"Production sync {binding.production_sync} will run with these counts.",
                ),
                button(
                    REJECT_ACTION,
                    "Reject",
                    "danger",
                    "Production will not run; type the reason above first.",
                ),
            ],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": who_may_click}]},
    ]


def clock_text(timestamp: float) -> str:
    """`14:02 UTC`, as the updated review message shows the decision time."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M UTC")


def decided_slack_message(
    invitation: ReviewInvitation, outcome: str, note: str = ""
) -> dict[str, Any]:
    """The review message once decided (sent to the click's response_url, replacing it): the
    counts and the outcome, with no buttons and no code (it is spent)."""
    line = f"*{outcome}*" + (f": {note}" if note else "")
    return {
        "replace_original": True,
        "text": f"{outcome}. {invitation.title()}",
        "blocks": [
            {"type": "header", "text": _plain(invitation.title()[:150])},
            {"type": "section", "text": {"type": "mrkdwn", "text": invitation.details()}},
            {"type": "section", "text": {"type": "mrkdwn", "text": line}},
        ],
    }


def ephemeral_slack_message(text: str) -> dict[str, Any]:
    """An answer only the clicking user sees (sent to the click's response_url)."""
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


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
