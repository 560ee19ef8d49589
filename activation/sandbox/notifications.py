"""Stand-ins for the notification sinks: Slack and Teams incoming webhooks, PagerDuty Events v2.

Each answers as the real service does (status codes and bodies), and records what it accepted so
tests and the demo can read it back: `GET /sandbox/notifications?sink=slack|teams|pagerduty`.
Only accepted messages are recorded: a rejected or failed call never reached a person.

Fault injection: `POST /sandbox/notifications/faults {"sink", "status", "count"}` makes the next
`count` calls to that sink answer `status` (before the body is even read, like an outage), so
retry logic can be tested. Every sink goes through `Sinks.answer`, the one place faults apply.

Each Slack message is kept with its blocks, a message `ts` and the review channel, as Slack keeps
it: the Slack app stand-in (`slack_app`) clicks its buttons, as a given user, against the
configured interactivity URL, and serves the `response_url` that edits it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from activation.sandbox import slack_app
from activation.sandbox.context import SandboxContext

SINKS = ("slack", "teams", "pagerduty")
PAGERDUTY_ACTIONS = ("trigger", "acknowledge", "resolve")
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
PAGERDUTY_ROUTING_KEY_LENGTH = 32
PAGERDUTY_DEDUP_KEY_MAX = 255

_NOT_JSON = object()


@dataclass(frozen=True)
class Accepted:
    """A sink's answer to a message it took: the response, and the body to record."""

    response: Response
    body: Any


Judge = Callable[[Any], Accepted | Response]
"""A sink's rules: the parsed body (or `_NOT_JSON`) -> Accepted, or the rejection to answer."""


class Sinks:
    """What the sinks received, and the faults still to inject; shared by the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[dict[str, Any]] = []
        self._faults: dict[str, tuple[int, int]] = {}  # sink -> (status, calls left)
        self._posted = 0  # Slack messages so far, for their `ts`

    def reset(self) -> None:
        with self._lock:
            self._received.clear()
            self._faults.clear()

    def set_fault(self, sink: str, status: int, count: int) -> None:
        with self._lock:
            self._faults[sink] = (status, count)

    def received(self, sink: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._received if sink in (None, r["sink"])]

    def _take_fault(self, sink: str) -> int | None:
        with self._lock:
            status, left = self._faults.get(sink, (0, 0))
            if left <= 0:
                return None
            if left == 1:
                del self._faults[sink]
            else:
                self._faults[sink] = (status, left - 1)
            return status

    async def answer(self, sink: str, request: Request, judge: Judge) -> Response:
        """Inject a pending fault, else parse the body, apply the sink's rules, record if taken."""
        fault = self._take_fault(sink)
        if fault is not None:
            return PlainTextResponse(f"sandbox fault injected: HTTP {fault}", status_code=fault)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = _NOT_JSON
        verdict = judge(body)
        if isinstance(verdict, Accepted):
            with self._lock:
                record = {
                    "sink": sink,
                    "path": request.url.path,
                    "received_at": datetime.now(UTC).isoformat(),
                    "body": verdict.body,
                }
                if sink == "slack":  # where Slack keeps it: a channel and a message ts
                    self._posted += 1
                    record["ts"] = f"{int(time.time())}.{self._posted:06d}"
                    record["channel"] = slack_app.CHANNEL_ID
                self._received.append(record)
            return verdict.response
        return verdict


# -- the sinks' rules (pure: body in, answer out) -------------------------------------------------


def judge_slack(body: Any) -> Accepted | Response:
    """Slack incoming webhook: 200 "ok"; 400 with Slack's error code as plain text otherwise."""
    if not isinstance(body, dict):
        return PlainTextResponse("invalid_payload", status_code=400)
    text, blocks = body.get("text"), body.get("blocks")
    if text is not None and not isinstance(text, str):
        return PlainTextResponse("invalid_payload", status_code=400)
    if blocks is not None and not (
        isinstance(blocks, list) and all(isinstance(b, dict) and "type" in b for b in blocks)
    ):
        return PlainTextResponse("invalid_blocks", status_code=400)
    if not text and not blocks and not body.get("attachments"):
        return PlainTextResponse("no_text", status_code=400)
    return Accepted(PlainTextResponse("ok"), body)


def judge_teams(body: Any) -> Accepted | Response:
    """Teams Workflows webhook: any JSON is accepted (202, empty body) and handed to the flow;
    a body that is not JSON fails the trigger with the Logic Apps error shape."""
    if body is _NOT_JSON:
        return JSONResponse(
            {
                "error": {
                    "code": "InvalidRequestContent",
                    "message": "The input body for trigger 'manual' of type 'Request' must be of "
                    "type JSON, but was of type 'application/octet-stream'.",
                }
            },
            status_code=400,
        )
    return Accepted(Response(status_code=202), body)


def pagerduty_errors(body: Any) -> list[str]:
    """What PagerDuty's Events API v2 would reject in this event (empty when it is valid)."""
    if not isinstance(body, dict):
        return ["Event object must be a JSON object"]
    errors: list[str] = []
    routing_key = body.get("routing_key")
    if not isinstance(routing_key, str) or not routing_key:
        errors.append("'routing_key' is missing or blank")
    elif len(routing_key) != PAGERDUTY_ROUTING_KEY_LENGTH:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = body.get("event_action")
    if action not in PAGERDUTY_ACTIONS:
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and (
        not isinstance(dedup_key, str) or len(dedup_key) > PAGERDUTY_DEDUP_KEY_MAX
    ):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup_key:
        errors.append(f"'dedup_key' is required for event_action '{action}'")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            for field in ("summary", "source", "severity"):
                value = payload.get(field)
                if not isinstance(value, str) or not value.strip():
                    errors.append(f"'payload.{field}' is missing or blank")
            severity = payload.get("severity")
            if isinstance(severity, str) and severity and severity not in PAGERDUTY_SEVERITIES:
                errors.append(
                    "'payload.severity' is invalid (must be one of: critical, error, warning, info)"
                )
    return errors


def judge_pagerduty(body: Any) -> Accepted | Response:
    """PagerDuty Events API v2: 202 with the dedup key (made up on a trigger without one)."""
    errors = ["Request body is not valid JSON"] if body is _NOT_JSON else pagerduty_errors(body)
    if errors:
        return JSONResponse(
            {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
            status_code=400,
        )
    dedup_key = body.get("dedup_key") or uuid.uuid4().hex
    recorded = {**body, "dedup_key": dedup_key}
    return Accepted(
        JSONResponse(
            {"status": "success", "message": "Event processed", "dedup_key": dedup_key},
            status_code=202,
        ),
        recorded,
    )


# -- sandbox-only control -------------------------------------------------------------------------


def _fault_problem(body: Any) -> str | None:
    """Why a fault request is invalid (naming the field), or None."""
    if not isinstance(body, dict):
        return "body: must be a JSON object with sink, status and count"
    unknown = sorted(set(body) - {"sink", "status", "count"})
    if unknown:
        return f"{unknown[0]}: unknown field (expected sink, status, count)"
    if body.get("sink") not in SINKS:
        return f"sink: must be one of {', '.join(SINKS)}"
    status = body.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        return "status: must be an HTTP error status between 400 and 599"
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return "count: must be a positive integer"
    return None


def routes(context: SandboxContext) -> list[BaseRoute]:
    sinks = Sinks()
    context.on_reset(sinks.reset)
    app, slack_routes = slack_app.routes(lambda: sinks.received("slack"))
    context.on_reset(app.reset)

    async def slack(request: Request) -> Response:
        return await sinks.answer("slack", request, judge_slack)

    async def teams(request: Request) -> Response:
        return await sinks.answer("teams", request, judge_teams)

    async def pagerduty(request: Request) -> Response:
        return await sinks.answer("pagerduty", request, judge_pagerduty)

    async def received(request: Request) -> JSONResponse:
        sink = request.query_params.get("sink")
        if sink is not None and sink not in SINKS:
            return JSONResponse(
                {"message": f"sink: must be one of {', '.join(SINKS)}", "field": "sink"},
                status_code=422,
            )
        return JSONResponse(sinks.received(sink))

    async def faults(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        problem = _fault_problem(body)
        if problem is not None:
            return JSONResponse(
                {"message": problem, "field": problem.split(":")[0]}, status_code=422
            )
        sink, status, count = body["sink"], body["status"], body.get("count", 1)
        sinks.set_fault(sink, status, count)
        return JSONResponse({"sink": sink, "status": status, "count": count})

    return [
        Route("/slack/services/{team}/{bot}/{secret}", slack, methods=["POST"]),
        Route("/teams/webhook/{path:path}", teams, methods=["POST"]),
        Route("/pagerduty/v2/enqueue", pagerduty, methods=["POST"]),
        Route("/sandbox/notifications", received, methods=["GET"]),
        Route("/sandbox/notifications/faults", faults, methods=["POST"]),
        *slack_routes,
    ]
