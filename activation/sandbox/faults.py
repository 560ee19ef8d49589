"""Fault injection: make the sandbox's next N calls, runs or jobs misbehave on purpose.

Clients are only trustworthy if their retries, timeouts and re-attach logic were seen working
against the failures real services produce. This module lets a test ask for those failures:
it keeps the faults still to inject (`FaultRegistry`) and serves the control endpoint;
`fault_specs` validates a spec, `fault_http` acts out the HTTP faults in front of the stand-ins.

Control endpoint (never itself subject to faults; every path under `/sandbox/` is exempt):

- `POST /sandbox/faults` with one spec (below) -> 201 and the fault as listed;
- `GET /sandbox/faults` -> `{"faults": [...]}`, each with `id`, `kind`, `spec`, `count`,
  `remaining` and `hits` (how many calls, runs or jobs it has hit so far);
- `DELETE /sandbox/faults` clears them all; `POST /sandbox/reset` does too.

A spec is one flat JSON object; unknown fields and bad values are answered 422 with the field
named. Common fields: `kind` (required) and `count` (how many calls/runs/jobs it hits, default 1).
Faults are tried in the order they were added; one call, run or job consumes at most one fault.

HTTP faults, applied in front of every stand-in (`kind`: `status`, `hang`, `reset`,
`malformed_json`, `html`):

- target, exactly one of: `path` (a path prefix, e.g. `/hightouch/api/v1/syncs/101/runs`),
  `path_regex` (searched in the path), or `sync_id` (every Hightouch call naming that sync:
  `/syncs/{id}`, `/syncs/{id}/trigger`, `/syncs/{id}/runs`, and `POST /syncs/trigger` whose body
  names it by `syncId` or `syncSlug`); optional `method` (`GET`, `POST`, ...).
- `phase`: `before` (default: the stand-in never sees the call) or `after` (the stand-in handles
  it, e.g. a trigger is recorded, then its answer is replaced or delayed: "the server did it but
  the answer was lost", the case where a naive retry triggers twice).
- `status`: answer `status` (400-599, required) with the JSON error body that API uses
  (Hightouch `{"message"}`, Airbyte problem JSON), or `body` (an object) instead; `retry_after`
  adds a `Retry-After` header: whole seconds or an HTTP-date string.
- `hang`: wait `seconds` (required), then answer normally. With phase `before`, a client that
  hung up meanwhile is dropped without the stand-in ever seeing its call.
- `reset`: drop the connection without any answer (TCP reset); httpx raises `ReadError` or
  `RemoteProtocolError`.
- `malformed_json`: 200 with a JSON body cut short (the real answer, halved, with phase `after`).
- `html`: an HTML error page as a proxy sends it; `status` defaults to 502.

Hightouch run faults (`kind`: `run`) change the next `count` runs triggered for `sync_id`:
`outcome` (`failed`, `cancelled`, `interrupted`: the run ends so after querying, delivering
nothing; `warning`: it delivers everything and ends warning), `error` (the run's error string),
`unknown_status` (reported for `unknown_polls` reads of the run, default 3, before the run
finishes), `reject_ratio` (0-1) or `reject_rows` (the destination rejects that share or number of
the planned rows, spread evenly: they are counted in `failedRows` and never reach the CRM), and
`running_seconds` (the run stays `processing` that long before it delivers, its
`completionRatio` rising steadily to 0.99 meanwhile, or staying 0 with `report_progress: false`:
a run whose progress Hightouch does not know yet).

CRM faults (`kind`: `crm_status`): the stand-in of `destination_type` answers `status` (default
503) to its next `count` calls. The Hightouch engine retries a 429/5xx twice, so `count: 3` or more
makes the run end failed with an error naming the destination and status.

Airbyte job faults (`kind`: `airbyte_job`): the next `count` jobs of `connection_id` (default the
sandbox's connection) end `failed` (with `error`) or `cancelled`, or stay `running` until
cancelled. A second job while one runs is already refused with 409, as Airbyte does.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from activation.lib.environment import SANDBOX_HIGHTOUCH_PREFIX
from activation.sandbox.fault_specs import (
    CrmFault,
    Effect,
    FaultSpecError,
    HttpFault,
    JobFault,
    RunFault,
    Targets,
    parse_fault,
)

_TRIGGER_BY_BODY = SANDBOX_HIGHTOUCH_PREFIX + "/syncs/trigger"


@dataclass
class Fault:
    id: int
    kind: str
    spec: dict[str, Any]
    effect: Effect
    target: str | None
    """The sync id, destination type or connection id a non-HTTP fault applies to."""
    count: int
    remaining: int
    hits: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "spec": self.spec,
            "count": self.count,
            "remaining": self.remaining,
            "hits": self.hits,
        }


# -- the registry -------------------------------------------------------------------------------


class FaultRegistry:
    """The faults still to inject. HTTP faults are taken on the event loop, run, CRM and job
    faults on worker threads: a lock guards the list."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, body: Any) -> Fault:
        kind, effect, target, count = parse_fault(body, self.targets)
        with self._lock:
            fault = Fault(next(self._ids), kind, dict(body), effect, target, count, count)
            self._faults.append(fault)
            return fault

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.to_json() for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_http(self, method: str, path: str, sync_id: str | None) -> HttpFault | None:
        return self._take(
            lambda f: isinstance(f.effect, HttpFault) and f.effect.matches(method, path, sync_id)
        )

    def take_run(self, sync_id: str) -> RunFault | None:
        return self._take(lambda f: isinstance(f.effect, RunFault) and f.target == sync_id)

    def take_crm(self, destination_type: str) -> int | None:
        """The status the destination's stand-in answers instead of serving this call."""
        effect = self._take(
            lambda f: isinstance(f.effect, CrmFault) and f.target == destination_type
        )
        return effect.status if effect is not None else None

    def take_job(self, connection_id: str) -> JobFault | None:
        return self._take(lambda f: isinstance(f.effect, JobFault) and f.target == connection_id)

    def wants_sync_from_body(self, method: str, path: str) -> bool:
        """Whether the trigger body must be read to learn its sync (only when a fault cares)."""
        if method != "POST" or path.rstrip("/") != _TRIGGER_BY_BODY:
            return False
        with self._lock:
            return any(
                isinstance(f.effect, HttpFault) and f.effect.sync_id and f.remaining
                for f in self._faults
            )

    def sync_of_trigger_body(self, body: bytes) -> str | None:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        if data.get("syncId") is not None:
            return str(data["syncId"])
        slug = data.get("syncSlug")
        return next((i for i, s in self.targets.syncs.items() if s == slug), None)

    def _take(self, wanted: Callable[[Fault], bool]) -> Any:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and wanted(fault):
                    fault.remaining -= 1
                    fault.hits += 1
                    return fault.effect
        return None


# -- control endpoints --------------------------------------------------------------------------


def routes(registry: FaultRegistry) -> list[BaseRoute]:
    async def add(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        try:
            fault = registry.add(body)
        except FaultSpecError as error:
            return JSONResponse(
                {"message": f"invalid fault spec: {error}", "field": error.field},
                status_code=422,
            )
        return JSONResponse(fault.to_json(), status_code=201)

    async def listing(request: Request) -> JSONResponse:
        return JSONResponse({"faults": registry.listing()})

    async def clear(request: Request) -> JSONResponse:
        registry.clear()
        return JSONResponse({"faults": []})

    handlers: list[tuple[str, Callable[[Request], Awaitable[JSONResponse]]]] = [
        ("POST", add),
        ("GET", listing),
        ("DELETE", clear),
    ]
    return [Route("/sandbox/faults", handler, methods=[m]) for m, handler in handlers]
