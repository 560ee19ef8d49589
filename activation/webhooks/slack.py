"""Slack interactivity: Slack's request signature, the button click it carries, and the
attestation the intake hands to the waiting `sign_off` op.

Pure functions and one small HTTP call (no Dagster), so every rule is tested directly.

- **Signature.** Slack signs every interaction request with the app's signing secret:
  `X-Slack-Signature: v0=` + hex HMAC-SHA256(secret, `"v0:" + X-Slack-Request-Timestamp + ":" +
  raw body`). It is checked on the raw body with a constant-time comparison, before anything is
  parsed; a timestamp more than five minutes from now is refused (Slack's own advice), so a
  captured request cannot be re-sent later, and the intake's store refuses it sooner (one use).
- **Click.** The body is form-encoded, `payload=<JSON>` of a `block_actions` payload. A click on
  the review message's Approve or Reject button carries the clicking user's Slack id, name and
  team, the button's value (`ButtonBinding`: what the decision is bound to) and, for a rejection,
  the reason typed in the message's input (`state.values`).
- **Attestation.** The intake stores only the fields `sign_off` needs (never the raw body: Slack
  echoes the whole message, approval code included), sealed with an HMAC under a key derived from
  the same signing secret. `sign_off` checks the seal, so a row written into the store by anyone
  without the secret decides nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs

import httpx

from activation.lib.review_messages import (
    APPROVE_ACTION,
    REASON_ACTION,
    REASON_BLOCK,
    REJECT_ACTION,
    ButtonBinding,
)
from activation.webhooks.signatures import Rejection

SIGNING_SECRET_VAR = "SLACK_SIGNING_SECRET"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER = "X-Slack-Signature"
VERSION = "v0"
TOLERANCE_SECONDS = 300
VERDICTS = {APPROVE_ACTION: "approve", REJECT_ACTION: "reject"}
_ATTESTATION_CONTEXT = b"activation/slack-click-attestation/v1"


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The `X-Slack-Signature` value Slack sends for this timestamp and raw body."""
    base = f"{VERSION}:{timestamp}:".encode() + body
    return f"{VERSION}=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signed: str | None,
    *,
    tolerance_seconds: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raises `Rejection`: 401 unsigned, 403 forged, 403 stale. The signature is checked before
    the clock, so a forger learns nothing from the answer."""
    if not signed or not timestamp:
        missing = SIGNATURE_HEADER if not signed else TIMESTAMP_HEADER
        raise Rejection(401, f"unsigned: the {missing} header is missing")
    if not timestamp.strip().isdigit():
        raise Rejection(401, f"unsigned: {TIMESTAMP_HEADER} must be Unix seconds")
    expected = signature(secret, timestamp.strip(), body)
    if not hmac.compare_digest(expected.encode(), signed.strip().encode()):
        raise Rejection(403, f"forged: {SIGNATURE_HEADER} does not match timestamp and body")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance_seconds:
        raise Rejection(
            403,
            f"stale: the Slack request is {int(age)} s old (refused past "
            f"{int(tolerance_seconds)} s)",
        )


def request_digest(signed: str) -> str:
    """What the store keeps to refuse a replay: one signature, one use."""
    return hashlib.sha256(signed.strip().encode()).hexdigest()


@dataclass(frozen=True)
class Click:
    """One click on a review message's Approve or Reject button, as Slack reported it."""

    verdict: str
    """approve or reject."""
    reason: str
    user_id: str
    user_name: str
    team_id: str
    binding: ButtonBinding
    action_ts: str
    request_ts: int
    response_url: str
    """Where the answer goes (Slack: valid 30 minutes, 5 uses). A capability: never logged."""

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Click:
        values = dict(fields)
        values["binding"] = ButtonBinding(**values["binding"])
        return cls(**values)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_click(body: bytes, request_ts: int) -> Click | None:
    """The click in a signed interaction body; None when it is not a click on our buttons (other
    interactions are acknowledged and ignored). Raises `Rejection` 400 when malformed."""
    try:
        form = parse_qs(body.decode(), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError):
        raise Rejection(400, "malformed: the body is not a form with a payload= JSON") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return None
    actions = [
        a
        for a in payload.get("actions") or []
        if isinstance(a, dict) and a.get("action_id") in VERDICTS
    ]
    if not actions:
        return None
    action = actions[0]
    user, team = _object(payload.get("user")), _object(payload.get("team"))
    try:
        binding = ButtonBinding.from_value(_text(action.get("value")))
    except ValueError as error:
        raise Rejection(400, f"malformed: {error}") from None
    user_id, response_url = _text(user.get("id")), _text(payload.get("response_url"))
    if not user_id or not response_url:
        raise Rejection(400, "malformed: the payload has no user id or response_url")
    return Click(
        verdict=VERDICTS[action["action_id"]],
        reason=_reason(payload)[:2000],
        user_id=user_id,
        user_name=_text(user.get("username")) or _text(user.get("name")) or user_id,
        team_id=_text(team.get("id")) or _text(user.get("team_id")),
        binding=binding,
        action_ts=_text(action.get("action_ts")),
        request_ts=request_ts,
        response_url=response_url,
    )


def _reason(payload: dict[str, Any]) -> str:
    state = payload.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    block = values.get(REASON_BLOCK) if isinstance(values, dict) else None
    field = block.get(REASON_ACTION) if isinstance(block, dict) else None
    return _text(field.get("value")) if isinstance(field, dict) else ""


def _attestation_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _ATTESTATION_CONTEXT, hashlib.sha256).digest()


def attest(secret: str, click: Click) -> str:
    """The intake's seal over a verified click's fields."""
    canonical = json.dumps(click.fields(), sort_keys=True, separators=(",", ":"))
    return hmac.new(_attestation_key(secret), canonical.encode(), hashlib.sha256).hexdigest()


def attestation_matches(secret: str, click: Click, attestation: str) -> bool:
    return bool(attestation) and hmac.compare_digest(attest(secret, click), attestation)


class SlackApiError(RuntimeError):
    """A Slack Web API call failed; the message names the method and Slack's error code."""


def usergroup_members(
    api_base_url: str, token: str, usergroup: str, *, timeout: float = 10.0
) -> tuple[str, ...]:
    """User ids of a Slack user group (`usergroups.users.list`, scope usergroups:read)."""
    try:
        response = httpx.get(
            f"{api_base_url.rstrip('/')}/usergroups.users.list",
            params={"usergroup": usergroup},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        body = response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise SlackApiError(f"usergroups.users.list: {type(error).__name__}") from None
    if response.status_code != 200 or not isinstance(body, dict) or not body.get("ok"):
        error_code = body.get("error") if isinstance(body, dict) else None
        raise SlackApiError(
            f"usergroups.users.list: {error_code or f'HTTP {response.status_code}'}"
        )
    return tuple(str(user) for user in body.get("users") or [])
