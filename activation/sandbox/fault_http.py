"""HTTP faults in front of the stand-ins: the ASGI middleware that answers instead of them.

Which call gets which fault is decided by `FaultRegistry.take_http`; this module only acts it out:
an error status with the API's JSON error body, a hang, a dropped connection, a truncated JSON
body or a proxy's HTML error page (see `activation.sandbox.faults` for the spec).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activation.lib.environment import SANDBOX_AIRBYTE_REST_PREFIX, SANDBOX_HIGHTOUCH_PREFIX
from activation.sandbox.airbyte import ProblemError
from activation.sandbox.fault_specs import CONTROL_PREFIX, HttpFault
from activation.sandbox.faults import FaultRegistry

TRUNCATED_JSON = b'{"data": [{"id": "1", "status": "succ'
_SYNC_PATH = re.compile(re.escape(SANDBOX_HIGHTOUCH_PREFIX) + r"/syncs/(\d+)(?:/trigger|/runs)?/?$")
_HTML_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class FaultMiddleware:
    """ASGI middleware in front of every stand-in: applies the HTTP fault a call matches."""

    def __init__(self, app: ASGIApp, registry: FaultRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        match = _SYNC_PATH.match(path)
        sync_id = match.group(1) if match else None
        replay = receive
        if sync_id is None and self.registry.wants_sync_from_body(method, path):
            body, replay = await _buffered(receive)
            sync_id = self.registry.sync_of_trigger_body(body)
        fault = self.registry.take_http(method, path, sync_id)
        if fault is None:
            await self.app(scope, replay, send)
            return
        await self._apply(fault, scope, receive, replay, send)

    async def _apply(
        self, fault: HttpFault, scope: Scope, receive: Receive, replay: Receive, send: Send
    ) -> None:
        answer: _Captured | None = None
        if fault.phase == "after":
            answer = _Captured()
            await self.app(scope, replay, answer.send)
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            if answer is not None:
                await answer.replay(send)
            elif not _client_gone(receive):
                await self.app(scope, replay, send)
            return
        if fault.kind == "reset":
            await drop_connection(receive)
            return
        response = _fault_response(fault, scope["path"], answer)
        await response(scope, replay, send)


def _fault_response(fault: HttpFault, path: str, answer: _Captured | None) -> Response:
    if fault.kind == "malformed_json":
        body = answer.body[: max(1, len(answer.body) // 2)] if answer else TRUNCATED_JSON
        return Response(body, status_code=200, media_type="application/json")
    assert fault.status is not None
    phrase = _phrase(fault.status)
    if fault.kind == "html":
        page = _HTML_PAGE.format(status=fault.status, phrase=phrase)
        return HTMLResponse(page, status_code=fault.status)
    if fault.body is not None:
        response: Response = JSONResponse(dict(fault.body), status_code=fault.status)
    elif path.startswith(SANDBOX_AIRBYTE_REST_PREFIX):
        title = phrase.lower().replace(" ", "-")
        response = ProblemError(fault.status, title, f"{phrase} (sandbox fault)").response()
    else:
        response = JSONResponse(_hightouch_error(fault.status), status_code=fault.status)
    if fault.retry_after is not None:
        response.headers["Retry-After"] = fault.retry_after
    return response


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _hightouch_error(status: int) -> dict[str, Any]:
    """The error JSON Hightouch answers with (also used for the stand-ins without their own)."""
    if status == 429:
        return {"message": "Too many requests: rate limit exceeded, try again later"}
    if status == 422:
        return {"message": "Validation failed", "details": {}}
    return {"message": _phrase(status)}


@dataclass
class _Captured:
    """A stand-in's answer held back instead of sent (phase `after`)."""

    messages: list[Message] = field(default_factory=list)

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    async def replay(self, send: Send) -> None:
        for message in self.messages:
            await send(message)


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body; returns it and a `receive` that hands it out again."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


# ASGI gives an app no way to drop a connection, and uvicorn answers 500 to an app that raises
# or returns without answering. Its `receive` is a bound method of the request cycle, which holds
# the transport: these functions reach it there (pinned by tests/sandbox/test_sandbox_faults).


def _cycle(receive: Receive) -> Any:
    cycle = getattr(receive, "__self__", None)
    if getattr(cycle, "transport", None) is None:
        raise RuntimeError("the sandbox must run under uvicorn to drop or watch a connection")
    return cycle


def _client_gone(receive: Receive) -> bool:
    return bool(_cycle(receive).disconnected)


async def drop_connection(receive: Receive) -> None:
    """Reset the request's TCP connection (SO_LINGER 0, then abort): the client reads no bytes."""
    cycle = _cycle(receive)
    sock = cycle.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cycle.transport.abort()
    # uvicorn answers 500 to an app that returns before the cycle knows the connection is gone.
    for _ in range(200):
        if cycle.disconnected:
            return
        await asyncio.sleep(0.005)
    cycle.disconnected = True
