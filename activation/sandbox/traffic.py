"""Counts the requests the sandbox receives, per method and path, as a client's bill of calls.

A client's cost (how many requests it made to notice a run ending, how hard it retries) is best
counted where the requests arrive, not by the client itself. Every request is counted, faulted
ones included, before anything else sees it.

- `GET /sandbox/requests` -> `{"counts": {"GET /hightouch/api/v1/syncs/101/runs": 12, ...},
  "total": N}` (control paths under `/sandbox/` are not counted);
- `DELETE /sandbox/requests` sets every count back to zero; `POST /sandbox/reset` does too.
"""

from __future__ import annotations

import threading
from collections import Counter

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from activation.sandbox.fault_specs import CONTROL_PREFIX


class RequestCounts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, method: str, path: str) -> None:
        with self._lock:
            self._counts[f"{method} {path}"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


class RequestCounter:
    """ASGI middleware: counts each request to a stand-in, then passes it on unchanged."""

    def __init__(self, app: ASGIApp, counts: RequestCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(CONTROL_PREFIX):
            self.counts.add(scope["method"], scope["path"])
        await self.app(scope, receive, send)


def routes(counts: RequestCounts) -> list[BaseRoute]:
    async def read(request: Request) -> JSONResponse:
        snapshot = counts.snapshot()
        return JSONResponse({"counts": snapshot, "total": sum(snapshot.values())})

    async def clear(request: Request) -> JSONResponse:
        counts.clear()
        return JSONResponse({"counts": {}, "total": 0})

    return [
        Route("/sandbox/requests", read, methods=["GET"]),
        Route("/sandbox/requests", clear, methods=["DELETE"]),
    ]
