"""Messages to people (Slack today) and the HTTP post that delivers them. No Dagster inside."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from activation.lib.redaction import install_http_log_redaction

logger = logging.getLogger(__name__)

install_http_log_redaction()


class NotificationError(RuntimeError):
    """A notification could not be delivered after its retries (the URL is never included)."""


def post_json(url: str, body: dict[str, Any], *, timeout: float, attempts: int, what: str) -> None:
    """POST `body` as JSON, retrying transport errors, 429 and 5xx with a short backoff.

    Webhook URLs embed secrets, so neither logs nor errors ever include the URL; httpx's own
    request log is redacted (`activation.lib.redaction`).
    """
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, json=body, timeout=timeout)
        except httpx.TransportError as error:
            problem = type(error).__name__
        else:
            if response.status_code < 300:
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break
        if attempt < attempts:
            logger.warning("%s: %s; retrying (%d of %d)", what, problem, attempt, attempts)
            time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
    raise NotificationError(f"{what} was not delivered: {problem}")


@dataclass(frozen=True)
class SyncOutcome:
    """What one destination's sync did, as reported to people."""

    destination: str
    status: str
    hightouch_run_id: str | None
    run_url: str | None
    added: int = 0
    changed: int = 0
    removed: int = 0
    failed: int = 0
    detail: str = ""
    """Why, for an outcome other than success (the error, the refusal, what it waited for)."""


def sync_summary_message(run_id: str, outcomes: Sequence[SyncOutcome]) -> dict[str, Any]:
    """A Slack message listing each destination's Hightouch run and its row counts."""
    lines = [
        f"*{o.destination}*: {o.status}"
        + (f": {o.detail[:300]}" if o.detail else "")
        + f" | run {o.hightouch_run_id or '-'} | "
        f"+{o.added} added, ~{o.changed} changed, -{o.removed} removed, {o.failed} failed"
        + (f" | <{o.run_url}|open in Hightouch>" if o.run_url else "")
        for o in outcomes
    ]
    header = f"Activation run {run_id}: {len(outcomes)} destination sync(s)"
    return {
        "text": header + "\n" + "\n".join(lines),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": header}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines) or "-"}},
        ],
    }
