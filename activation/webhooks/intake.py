"""`activation webhooks --port N`: the HTTP intake for "data landed" signals.

Routes:
- `POST /webhooks/fivetran`: a Fivetran webhook, signed with `X-Fivetran-Signature-256`. Only
  `sync_end` with `data.status == "SUCCESSFUL"` means data landed; other events are answered
  200 `ignored` and not recorded. Event id: `fivetran:<sync_id>` (or connector + created time
  when a payload has no sync id).
- `POST /webhooks/signal`: any caller, signed with `X-Activation-Timestamp` and
  `X-Activation-Signature` (see `signatures`). Body: `{"event_id": "...", "source": "..."}`.
- `POST /webhooks/slack/interactions`: the Slack app's interactivity URL. Clicks on the Approve
  and Reject buttons of promote review messages, signed by Slack with the app's signing secret
  (`SLACK_SIGNING_SECRET`, see `slack`). A verified click is recorded, sealed, in the Slack store
  (`slack_store`) for the waiting `sign_off` op, which judges it and answers through the click's
  `response_url`; a click on a closed or expired review is answered here, ephemerally. Slack
  always gets an empty 200 within milliseconds (it allows 3 s); the outcome is in the
  `X-Activation-Click` header (pending, refused, ignored) for tests and logs.
- `GET /webhooks/health`.

Answers: 202 accepted (recorded), 200 ignored, 400 malformed body, 401 unsigned, 403 forged or
stale, 409 replayed event id, 413 body too large. A replay gets 409, not 200: it is a refusal
(nothing is recorded, no run follows), and saying so lets a caller tell "accepted now" from
"already had it"; a sender that retries on 409 only ever gets 409 again, so it cannot cause a
second run. Requests are checked in that order: size, signature, clock, body, replay, so an
unauthenticated body is never parsed.

The secret comes from `ACTIVATION_WEBHOOK_SECRET` and is never logged; a missing secret fails at
start with the variable named. `SLACK_SIGNING_SECRET` is optional, read at start too; without it
the Slack route answers 503. Neither secret, a Slack request body (it echoes the review message,
approval code included) nor a response URL is ever logged. Serve it on 127.0.0.1 behind a
TLS-terminating proxy (docs/event-driven.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from activation.lib.environment import MissingSettingError
from activation.lib.redaction import install_http_log_redaction
from activation.lib.review_messages import ephemeral_slack_message
from activation.webhooks import slack, slack_store, store
from activation.webhooks.signatures import (
    DEFAULT_TOLERANCE_SECONDS,
    FIVETRAN_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Rejection,
    verify_fivetran,
    verify_generic,
)

SECRET_VAR = "ACTIVATION_WEBHOOK_SECRET"
MAX_BODY_BYTES = 1 << 20
MAX_EVENT_ID_CHARS = 200

logger = logging.getLogger(__name__)


def webhook_secret() -> str:
    """The signing secret; raises naming the variable when it is unset or blank."""
    value = os.environ.get(SECRET_VAR, "").strip()
    if not value:
        raise MissingSettingError(
            f"{SECRET_VAR} is not set: the webhook intake needs the shared signing secret "
            "(the same value configured as the webhook secret in Fivetran or the caller)."
        )
    return value


def slack_signing_secret() -> str | None:
    """The Slack app's signing secret, or None when Slack buttons are not used."""
    return os.environ.get(slack.SIGNING_SECRET_VAR, "").strip() or None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejection(400, "malformed: the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise Rejection(400, "malformed: the body must be a JSON object")
    return value


def _text(payload: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_EVENT_ID_CHARS:
        raise Rejection(
            400,
            f"malformed: {name} must be a non-empty string of at most "
            f"{MAX_EVENT_ID_CHARS} characters",
        )
    return value.strip()


def fivetran_event_id(payload: dict[str, Any]) -> str | None:
    """`fivetran:<sync_id>` for a successful sync_end; None for events that land no data."""
    if _text(payload, "event", required=True) != "sync_end":
        return None
    data = payload.get("data")
    if not isinstance(data, dict) or data.get("status") != "SUCCESSFUL":
        return None
    sync_id = payload.get("sync_id")
    if isinstance(sync_id, str) and sync_id.strip():
        return f"fivetran:{sync_id.strip()}"
    connector = _text(payload, "connector_id", required=True)
    created = _text(payload, "created", required=True)
    return f"fivetran:{connector}:{created}"


async def read_bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes.

    Read chunk by chunk, so at most about `limit` bytes are ever held, whether the body declares
    its length or arrives chunked. The declared length is only a shortcut to refuse before
    reading; it is not trusted for the bound. The unread rest is left to the server, which
    discards it after the answer.
    """
    too_large = Rejection(413, f"the body is over {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise too_large
        body += chunk
    return bytes(body)


def closed_review_answer(path: Path, click: slack.Click, now: float) -> str | None:
    """Why a click cannot count, when the store already says so (the review is closed, expired
    or unknown); None while the review is open (the waiting `sign_off` op judges it)."""
    review = slack_store.review(path, click.binding.promotion_run_id)
    run = click.binding.promotion_run_id
    if review is None:
        return f"No promote run is waiting for this message (promotion run {run})."
    if review.closed_at is not None:
        return f"Nothing changed: promotion run {run} is closed ({review.outcome})."
    if now > review.expires_at:
        return f"Nothing changed: the approval of promotion run {run} has expired."
    return None


async def _tell(response_url: str, text: str) -> None:
    """Answer the clicking user only (best effort; the URL is never logged)."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.post(response_url, json=ephemeral_slack_message(text))
        if answer.status_code >= 300:
            logger.warning("Slack did not take the answer to a click: HTTP %s", answer.status_code)
    except httpx.HTTPError as error:
        logger.warning("Slack did not take the answer to a click: %s", type(error).__name__)


def build_intake_app(
    secret: str,
    db_path: Path,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    slack_secret: str | None = None,
    slack_db_path: Path | None = None,
) -> Starlette:
    store.initialise(db_path)
    install_http_log_redaction()
    slack_path = slack_db_path or slack_store.store_path()
    if slack_secret:
        slack_store.initialise(slack_path)

    def accept(event_id: str, source: str, payload: dict[str, Any]) -> JSONResponse:
        try:
            event = store.record(db_path, event_id, source, payload)
        except store.DuplicateEvent:
            logger.warning("replayed webhook event %s refused", event_id)
            raise Rejection(409, f"replayed: event {event_id} was already received") from None
        logger.info("accepted webhook event %s from %s", event_id, source)
        return JSONResponse(
            {"status": "accepted", "event_id": event_id, "seq": event.seq}, status_code=202
        )

    async def fivetran(request: Request, body: bytes) -> JSONResponse:
        verify_fivetran(secret, body, request.headers.get(FIVETRAN_SIGNATURE_HEADER))
        payload = _json_object(body)
        event_id = fivetran_event_id(payload)
        if event_id is None:
            return JSONResponse({"status": "ignored", "reason": "not a successful sync_end"})
        return accept(event_id, "fivetran", payload)

    async def signal(request: Request, body: bytes) -> JSONResponse:
        verify_generic(
            secret,
            body,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            tolerance_seconds=tolerance_seconds,
        )
        payload = _json_object(body)
        event_id = _text(payload, "event_id", required=True)
        source = _text(payload, "source", required=False) or "signal"
        return accept(f"signal:{event_id}", source, payload)

    async def slack_interactions(request: Request, body: bytes) -> Response:
        if not slack_secret:
            raise Rejection(503, f"not configured: {slack.SIGNING_SECRET_VAR} is not set")
        timestamp = request.headers.get(slack.TIMESTAMP_HEADER)
        signed = request.headers.get(slack.SIGNATURE_HEADER)
        slack.verify(slack_secret, body, timestamp, signed)
        assert timestamp is not None and signed is not None  # verify refuses them missing
        click = slack.parse_click(body, int(timestamp))
        if click is None:
            return Response(status_code=200, headers={"X-Activation-Click": "ignored"})
        answer = closed_review_answer(slack_path, click, time.time())
        try:
            slack_store.record_click(
                slack_path,
                slack.request_digest(signed),
                click,
                slack.attest(slack_secret, click),
                status=slack_store.PENDING if answer is None else slack_store.REFUSED,
                outcome=answer or "",
            )
        except slack_store.DuplicateClick:
            logger.warning("replayed Slack request refused (%s)", click.user_id)
            raise Rejection(409, "replayed: this Slack request was already received") from None
        logger.info(
            "Slack click: %s of promotion run %s by %s (%s)%s",
            click.verdict,
            click.binding.promotion_run_id,
            click.user_id,
            click.user_name,
            "" if answer is None else "; refused, the review is not open",
        )
        if answer is None:
            return Response(status_code=200, headers={"X-Activation-Click": "pending"})
        return Response(
            status_code=200,
            headers={"X-Activation-Click": "refused"},
            background=BackgroundTask(_tell, click.response_url, answer),
        )

    def guarded(handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                body = await read_bounded_body(request, MAX_BODY_BYTES)
                return await handler(request, body)
            except Rejection as rejection:
                if rejection.status in (401, 403):
                    client = request.client.host if request.client else "?"
                    logger.warning("refused webhook from %s: %s", client, rejection.reason)
                return JSONResponse(
                    {"status": "rejected", "reason": rejection.reason},
                    status_code=rejection.status,
                )

        return endpoint

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/fivetran", guarded(fivetran), methods=["POST"]),
            Route("/webhooks/signal", guarded(signal), methods=["POST"]),
            Route("/webhooks/slack/interactions", guarded(slack_interactions), methods=["POST"]),
            Route("/webhooks/health", health, methods=["GET"]),
        ]
    )


def serve(host: str, port: int, tolerance_seconds: float, db_path: Path | None = None) -> None:
    import uvicorn

    app = build_intake_app(
        webhook_secret(),
        db_path or store.events_db_path(),
        tolerance_seconds,
        slack_secret=slack_signing_secret(),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="warning")
