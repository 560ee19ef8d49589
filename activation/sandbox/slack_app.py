"""The Slack app's side of the sandbox: button clicks, response URLs and one Web API method.

Real Slack, for an app with interactivity on, does three things this stand-in does too:

- when someone clicks a button in one of the app's messages, it POSTs a `block_actions` payload,
  form-encoded as `payload=<JSON>`, to the app's interactivity URL, signed with the app's signing
  secret (`X-Slack-Signature: v0=` + HMAC-SHA256 of `v0:<timestamp>:<raw body>`,
  `X-Slack-Request-Timestamp`);
- it serves the payload's `response_url`: 5 uses within 30 minutes, `replace_original` edits the
  message, anything else goes to the clicking user only (ephemeral);
- it answers `usergroups.users.list` (Bearer token) with the members of a user group.

Control (sandbox only):
- `POST /sandbox/slack/click {"action_id", "user_id", "user_name"?, "team_id"?, "reason"?,
  "message_ts"?, "send"?}` clicks a button of a posted message (default: the newest message that
  shows it) as that user: it builds the payload, signs it, posts it to the interactivity URL and
  returns the answer (`status`, `outcome`, `seconds` it took) and the exact request
  (`"send": false` builds and signs only).
- `GET /sandbox/slack/messages` (each posted message, as posted and as it reads now),
  `GET /sandbox/slack/ephemeral[?user=U...]`.
- `GET|POST /sandbox/slack/app {"interactivity_url"?, "signing_secret"?}`; at start they come from
  ACTIVATION_SANDBOX_SLACK_INTERACTIVITY_URL and SLACK_SIGNING_SECRET. The secret is never shown.
- `POST /sandbox/slack/usergroups {"id": "S...", "users": ["U...", ...]}`.

`POST /sandbox/reset` forgets edits, ephemeral answers and response URLs (the posted messages go
with the Slack sink); the app's settings and user groups stay, like the workspace's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

TEAM_ID = "T0SANDBOX"
TEAM_DOMAIN = "sandbox"
CHANNEL_ID = "C0SANDBOXREVIEW"
CHANNEL_NAME = "activation-reviews"
APP_ID = "A0SANDBOXAPP"
SIGNING_SECRET_VAR = "SLACK_SIGNING_SECRET"
INTERACTIVITY_URL_VAR = "ACTIVATION_SANDBOX_SLACK_INTERACTIVITY_URL"
RESPONSE_URL_USES = 5
RESPONSE_URL_SECONDS = 30 * 60


def sign(secret: str, timestamp: str, body: bytes) -> str:
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def find_button(blocks: Any, action_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(actions block, button) of the button with `action_id` in a message's blocks."""
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict) and block.get("type") == "actions":
            for element in block.get("elements") or []:
                if isinstance(element, dict) and element.get("action_id") == action_id:
                    return block, element
    return None


def input_state(blocks: Any, typed: dict[str, str]) -> dict[str, Any]:
    """`state.values` of a message's input blocks, with what the user typed (by action id)."""
    values: dict[str, Any] = {}
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict) and block.get("type") == "input":
            element = block.get("element") or {}
            action_id = element.get("action_id", "")
            values[block.get("block_id", "")] = {
                action_id: {"type": element.get("type"), "value": typed.get(action_id) or None}
            }
    return {"values": values}


def block_actions_payload(
    message: dict[str, Any],
    button: tuple[dict[str, Any], dict[str, Any]],
    *,
    user_id: str,
    user_name: str,
    team_id: str,
    typed: dict[str, str],
    response_url: str,
) -> dict[str, Any]:
    """The payload Slack sends when `user_id` clicks `button` in `message`."""
    block, element = button
    now = time.time()
    body = message["current"]
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": APP_ID,
        "token": "sandbox-verification-token",
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": message["channel"],
            "is_ephemeral": False,
        },
        "trigger_id": f"{int(now)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": message["channel"], "name": CHANNEL_NAME},
        "message": {
            "type": "message",
            "subtype": "bot_message",
            "bot_id": "B0SANDBOX",
            "ts": message["ts"],
            "text": body.get("text", ""),
            "blocks": body.get("blocks", []),
        },
        "state": input_state(body.get("blocks"), typed),
        "response_url": response_url,
        "actions": [
            {
                "type": element.get("type", "button"),
                "action_id": element["action_id"],
                "block_id": block.get("block_id", ""),
                "text": element.get("text"),
                "value": element.get("value"),
                "style": element.get("style"),
                "action_ts": f"{now:.6f}",
            }
        ],
    }


class SlackApp:
    """The app's settings and what happened to its messages; shared by the worker threads."""

    def __init__(self, messages: Any, signing_secret: str, interactivity_url: str) -> None:
        self._messages = messages  # () -> the Slack sink's records, oldest first
        self.signing_secret = signing_secret
        self.interactivity_url = interactivity_url
        self._lock = threading.Lock()
        self._edits: dict[str, list[dict[str, Any]]] = {}
        self._ephemeral: list[dict[str, Any]] = []
        self._response_urls: dict[str, dict[str, Any]] = {}
        self.usergroups: dict[str, list[str]] = {}

    def reset(self) -> None:
        with self._lock:
            self._edits.clear()
            self._ephemeral.clear()
            self._response_urls.clear()

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            edits = {ts: list(e) for ts, e in self._edits.items()}
        found = []
        for record in self._messages():
            updates = edits.get(record["ts"], [])
            found.append(
                {
                    "ts": record["ts"],
                    "channel": record["channel"],
                    "posted": record["body"],
                    "current": updates[-1] if updates else record["body"],
                    "updates": updates,
                }
            )
        return found

    def ephemeral(self, user: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._ephemeral if user in (None, e["user_id"])]

    def issue_response_url(self, base: str, ts: str, user_id: str) -> str:
        token = secrets.token_urlsafe(18)
        with self._lock:
            self._response_urls[token] = {
                "ts": ts,
                "user_id": user_id,
                "issued": time.time(),
                "uses": 0,
            }
        return f"{base}/slack/actions/{TEAM_ID}/{ts.replace('.', '')}/{token}"

    def respond(self, token: str, body: dict[str, Any]) -> str | None:
        """Apply a post to a response URL; the Slack error code when it is refused."""
        with self._lock:
            issued = self._response_urls.get(token)
            if issued is None:
                return "invalid_token"
            if time.time() - issued["issued"] > RESPONSE_URL_SECONDS:
                return "expired_url"
            if issued["uses"] >= RESPONSE_URL_USES:
                return "used_url"
            issued["uses"] += 1
            received = {**body, "received_at": time.time()}
            if body.get("replace_original") is True or body.get("delete_original") is True:
                self._edits.setdefault(issued["ts"], []).append(received)
            else:
                to = {"user_id": issued["user_id"], "ts": issued["ts"]}
                self._ephemeral.append({**to, **received})
        return None


def _problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body: must be a JSON object"
    for name in ("action_id", "user_id"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            return f"{name}: required (a string)"
    for name in ("user_name", "team_id", "reason", "message_ts"):
        if name in body and not isinstance(body[name], str):
            return f"{name}: must be a string"
    if "send" in body and not isinstance(body["send"], bool):
        return "send: must be true or false"
    return None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def routes(messages: Any) -> tuple[SlackApp, list[BaseRoute]]:
    """The Slack app over the Slack sink's messages (`messages()` returns its records)."""
    app = SlackApp(
        messages,
        os.environ.get(SIGNING_SECRET_VAR, "").strip(),
        os.environ.get(INTERACTIVITY_URL_VAR, "").strip(),
    )

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"message": message}, status_code=status)

    async def click(request: Request) -> Response:
        body = _json(await request.body())
        problem = _problem(body)
        if problem is not None:
            return refuse(422, problem)
        action_id, user_id = body["action_id"].strip(), body["user_id"].strip()
        shown = [
            m
            for m in app.messages()
            if body.get("message_ts") in (None, m["ts"])
            and find_button(m["current"].get("blocks"), action_id)
        ]
        if not shown:
            return refuse(404, f"no message shows a button {action_id!r} (a decided message "
                          "has none)")  # fmt: skip
        if not app.signing_secret:
            return refuse(409, f"the Slack app has no signing secret: start the sandbox with "
                          f"{SIGNING_SECRET_VAR} or POST /sandbox/slack/app")  # fmt: skip
        send = body.get("send", True)
        if send and not app.interactivity_url:
            return refuse(409, f"the Slack app has no interactivity URL: start the sandbox with "
                          f"{INTERACTIVITY_URL_VAR} or POST /sandbox/slack/app")  # fmt: skip
        message = shown[-1]
        button = find_button(message["current"].get("blocks"), action_id)
        assert button is not None
        response_url = app.issue_response_url(
            str(request.base_url).rstrip("/"), message["ts"], user_id
        )
        payload = block_actions_payload(
            message,
            button,
            user_id=user_id,
            user_name=body.get("user_name") or user_id.lower(),
            team_id=body.get("team_id") or TEAM_ID,
            typed={"reason": body.get("reason", "")},
            response_url=response_url,
        )
        raw = urlencode({"payload": json.dumps(payload)}).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": sign(app.signing_secret, timestamp, raw),
        }
        result: dict[str, Any] = {
            "message_ts": message["ts"],
            "request": {"url": app.interactivity_url, "body": raw.decode(), "headers": headers},
        }
        if not send:
            return JSONResponse(result)
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.post(app.interactivity_url, content=raw, headers=headers)
        except httpx.HTTPError as error:
            return refuse(502, f"the interactivity URL did not answer: {type(error).__name__}")
        result.update(
            status=answer.status_code,
            answer=answer.text,
            outcome=answer.headers.get("X-Activation-Click", ""),
            seconds=answer.elapsed.total_seconds(),  # Slack gives up after 3
        )
        return JSONResponse(result)

    async def respond(request: Request) -> Response:
        body = _json(await request.body())
        if not isinstance(body, dict):
            return JSONResponse({"ok": False, "error": "invalid_payload"}, status_code=400)
        error = app.respond(request.path_params["token"], body)
        if error is not None:
            return JSONResponse({"ok": False, "error": error}, status_code=404)
        return JSONResponse({"ok": True})

    async def usergroup_users(request: Request) -> Response:
        form = dict(await request.form()) if request.method == "POST" else {}
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else form.get("token")
        group = str(request.query_params.get("usergroup") or form.get("usergroup") or "")
        if not token:
            return JSONResponse({"ok": False, "error": "not_authed"})
        if not group:
            return JSONResponse({"ok": False, "error": "invalid_arguments"})
        if group not in app.usergroups:
            return JSONResponse({"ok": False, "error": "no_such_subteam"})
        return JSONResponse({"ok": True, "users": app.usergroups[group]})

    async def settings(request: Request) -> Response:
        if request.method == "POST":
            body = _json(await request.body())
            if not isinstance(body, dict) or set(body) - {"interactivity_url", "signing_secret"}:
                return refuse(422, "body: an object with interactivity_url and/or signing_secret")
            if not all(isinstance(v, str) for v in body.values()):
                return refuse(422, "interactivity_url, signing_secret: must be strings")
            app.interactivity_url = body.get("interactivity_url", app.interactivity_url).strip()
            app.signing_secret = body.get("signing_secret", app.signing_secret).strip()
        return JSONResponse(
            {
                "interactivity_url": app.interactivity_url,
                "signing_secret_set": bool(app.signing_secret),
                "team_id": TEAM_ID,
                "channel_id": CHANNEL_ID,
                "app_id": APP_ID,
            }
        )

    async def usergroups(request: Request) -> Response:
        body = _json(await request.body())
        users = body.get("users") if isinstance(body, dict) else None
        group = body.get("id") if isinstance(body, dict) else None
        if not isinstance(group, str) or not group.startswith("S"):
            return refuse(422, "id: a user-group id (S...)")
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            return refuse(422, "users: a list of user ids")
        app.usergroups[group] = list(users)
        return JSONResponse({"id": group, "users": users})

    async def listing(request: Request) -> Response:
        return JSONResponse(app.messages())

    async def ephemeral(request: Request) -> Response:
        return JSONResponse(app.ephemeral(request.query_params.get("user")))

    return app, [
        Route("/slack/actions/{team}/{message}/{token}", respond, methods=["POST"]),
        Route("/slack/api/usergroups.users.list", usergroup_users, methods=["GET", "POST"]),
        Route("/sandbox/slack/click", click, methods=["POST"]),
        Route("/sandbox/slack/messages", listing, methods=["GET"]),
        Route("/sandbox/slack/ephemeral", ephemeral, methods=["GET"]),
        Route("/sandbox/slack/app", settings, methods=["GET", "POST"]),
        Route("/sandbox/slack/usergroups", usergroups, methods=["POST"]),
    ]
