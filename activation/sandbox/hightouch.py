"""The Hightouch API v1 stand-in: the declared syncs, their destinations, triggers and runs.

Paths, parameters and JSON fields follow Hightouch's OpenAPI (ids are numbers sent as strings,
timestamps `2022-02-08T16:11:04.712Z`, errors `{"message": ...}`, validation errors in the
`ValidateErrorJSON` shape). One sync per declared destination and per declared staging twin;
one Hightouch destination per CRM.
Runs are executed by `sync_engine`. Sandbox-only: `GET /sandbox/hightouch/triggers` counts the
triggers each sync received; `pages` serves the app's sync and run pages the run links open.

Each sync's `configuration` maps the mart's columns to the destination's fields as declared
(`mapped_columns`, `destination_fields`), with `referencedColumns` and `primaryKey` beside it. A
test can play someone editing a sync in Hightouch's UI: `PUT /sandbox/hightouch/syncs/{id}/mappings`
`{"mappings": [{"from": column, "to": field}, ...]}` replaces the mappings `GET /syncs/{id}` reports
(and its `referencedColumns`), `GET` reads them, `DELETE` (or `/sandbox/reset`) restores the
declared ones. Runs still deliver the declared columns: the edit changes what the API says.
"""

from __future__ import annotations

import hmac
import itertools
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from activation.lib.destinations import Destination
from activation.lib.environment import SANDBOX_HIGHTOUCH_PREFIX
from activation.sandbox import pages
from activation.sandbox.context import SandboxContext
from activation.sandbox.crm import CrmStandIns, batch_limits
from activation.sandbox.faults import FaultRegistry
from activation.sandbox.sync_engine import SyncEngine, iso_timestamp

WORKSPACE_ID = "1"
DESTINATIONS = {  # destination type -> (Hightouch destination id, display name)
    "salesforce": ("1", "Salesforce"),
    "hubspot": ("2", "HubSpot"),
    "iterable": ("3", "Iterable"),
    "braze": ("4", "Braze"),
}
SYNC_ORDER = ("id", "name", "slug", "createdAt", "updatedAt")
RUN_ORDER = ("id", "createdAt", "startedAt", "finishedAt")
DEFAULT_SYNC_LIMIT = 100
DEFAULT_RUN_LIMIT = 5  # as the real API

Handler = Callable[[Request], Awaitable[JSONResponse]]


class ApiError(Exception):
    """An error answer: its status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body


def not_found(message: str) -> ApiError:
    return ApiError(404, {"message": message})


def invalid(field: str, message: str, value: object = None, *, status: int = 422) -> ApiError:
    """The OpenAPI's ValidateErrorJSON (422); 400 for a body that is not JSON at all."""
    details = {field: {"message": message, "value": value}}
    return ApiError(status, {"message": "Validation failed", "details": details})


@dataclass(frozen=True)
class SyncDefinition:
    """A Hightouch sync as configured from one declared destination."""

    id: str
    slug: str
    model_id: str
    destination: Destination

    @property
    def destination_id(self) -> str:
        return DESTINATIONS[self.destination.destination_type][0]


def _generated_ids(destinations: Sequence[Destination]) -> Iterator[int]:
    """Ids for syncs declared by slug only: above every declared id, staging twins' included."""
    declared = [
        int(sync_id)
        for d in destinations
        for sync_id in (d.sync_id, d.staging.sync_id if d.staging else None)
        if sync_id
    ]
    return itertools.count(max(declared, default=0) + 1)


def sync_definitions(
    destinations: Sequence[Destination], ids: Iterator[int] | None = None
) -> list[SyncDefinition]:
    """Declared ids and slugs as given; a destination declared by slug only gets a numeric id
    above every declared one, and a missing slug is the key with dashes."""
    generated = _generated_ids(destinations) if ids is None else ids
    return [
        SyncDefinition(
            id=d.sync_id or str(next(generated)),
            slug=d.sync_slug or d.key.replace("_", "-"),
            model_id=str(index),
            destination=d,
        )
        for index, d in enumerate(destinations, start=1)
    ]


def staging_sync_definitions(
    production: Sequence[SyncDefinition], ids: Iterator[int]
) -> list[SyncDefinition]:
    """The declared staging twin (`staging` in destinations.yaml) of each sync that has one:
    same model, writing `<object>_staging` in the same CRM stand-in. A twin declared by id only
    gets the slug `<slug>-staging`; one declared by slug only gets the next id from `ids`."""
    definitions = []
    for s in production:
        staging = s.destination.staging
        if staging is None:
            continue
        sync_id = staging.sync_id or str(next(ids))
        slug = staging.sync_slug or f"{s.slug}-staging"
        twin = s.destination.model_copy(
            update={
                "key": f"{s.destination.key}_staging",
                "object": f"{s.destination.object}_staging",
                "sync_id": sync_id,
                "sync_slug": slug,
                "staging": None,
            }
        )
        definitions.append(SyncDefinition(sync_id, slug, s.model_id, twin))
    return definitions


def served_sync_definitions(destinations: Sequence[Destination]) -> list[SyncDefinition]:
    """Every sync the stand-in serves: one per declared destination, then the declared staging
    twins."""
    ids = _generated_ids(destinations)
    production = sync_definitions(destinations, ids)
    return production + staging_sync_definitions(production, ids)


class HightouchApi:
    """The API's answers; `routes()` binds them to paths behind `endpoint` (auth, errors)."""

    def __init__(
        self, definitions: Sequence[SyncDefinition], engine: SyncEngine, token: str | None
    ) -> None:
        self._syncs = {s.id: s for s in definitions}
        self._engine = engine
        self._token = token
        self._created_at = iso_timestamp(datetime.now(UTC))
        self._limits = batch_limits()
        self._edited: dict[str, tuple[list[dict[str, str]], str | None]] = {}
        """Sync id -> mappings set through the control endpoint, and when."""

    def reset_mappings(self) -> None:
        self._edited.clear()

    def mappings(self, sync: SyncDefinition) -> list[dict[str, str]]:
        """The sync's field mappings: as edited through the control endpoint, else declared."""
        if sync.id in self._edited:
            return [dict(m) for m in self._edited[sync.id][0]]
        d = sync.destination
        return [{"from": c, "to": field, "type": "standard"} for c, field in d.field_mappings]

    # -- objects --------------------------------------------------------------------------------

    def sync_object(self, sync: SyncDefinition) -> dict[str, Any]:
        runs = self._engine.runs(sync.id)
        last = runs[-1] if runs else None
        d = sync.destination
        mappings = self.mappings(sync)
        edited_at = self._edited.get(sync.id, ([], None))[1]
        return {
            "id": sync.id,
            "slug": sync.slug,
            "workspaceId": WORKSPACE_ID,
            "createdAt": self._created_at,
            "updatedAt": edited_at or self._created_at,
            "destinationId": sync.destination_id,
            "modelId": sync.model_id,
            "configuration": {
                "object": d.object,
                "mode": "upsert",
                "externalIdMapping": {
                    "from": d.primary_key,
                    "to": d.field_for(d.primary_key),
                    "type": "standard",
                },
                "mappings": mappings,
                "associationMappings": [],
            },
            "schedule": {"type": "manual", "schedule": {}},
            "status": last["status"] if last else "pending",
            "disabled": False,
            "lastRunAt": last["createdAt"] if last else None,
            # As in the API's examples: the mapped model columns (the primary key is beside).
            "referencedColumns": list(dict.fromkeys(m["from"] for m in mappings)),
            "primaryKey": d.primary_key,
        }

    def destination_object(self, destination_type: str) -> dict[str, Any]:
        destination_id, name = DESTINATIONS[destination_type]
        return {
            "id": destination_id,
            "name": name,
            "slug": destination_type,
            "workspaceId": WORKSPACE_ID,
            "createdAt": self._created_at,
            "updatedAt": self._created_at,
            "type": destination_type,
            "configuration": {"batchSize": self._limits[destination_type]},
            "syncs": [
                s.id
                for s in self._syncs.values()
                if s.destination.destination_type == destination_type
            ],
        }

    # -- endpoints ------------------------------------------------------------------------------

    async def list_syncs(self, request: Request) -> JSONResponse:
        params = request.query_params
        model_id = _number(params, "modelId", None)
        objects = [
            self.sync_object(s)
            for s in self._syncs.values()
            if params.get("slug") in (None, s.slug) and model_id in (None, int(s.model_id))
        ]
        order = _choice(params, "orderBy", SYNC_ORDER)
        objects = _ordered(objects, "slug" if order == "name" else order)  # syncs have no name
        return JSONResponse({"data": objects[: _number(params, "limit", DEFAULT_SYNC_LIMIT)]})

    async def get_sync(self, request: Request) -> JSONResponse:
        return JSONResponse(self.sync_object(self._sync(_path_number(request, "syncId"))))

    async def list_destinations(self, request: Request) -> JSONResponse:
        params = request.query_params
        objects = [
            self.destination_object(kind)
            for kind, (_, name) in DESTINATIONS.items()
            if params.get("slug") in (None, kind) and params.get("name") in (None, name)
        ]
        objects = _ordered(objects, _choice(params, "orderBy", SYNC_ORDER))
        return JSONResponse({"data": objects[: _number(params, "limit", DEFAULT_SYNC_LIMIT)]})

    async def get_destination(self, request: Request) -> JSONResponse:
        destination_id = _path_number(request, "destinationId")
        for kind, (known_id, _) in DESTINATIONS.items():
            if known_id == destination_id:
                return JSONResponse(self.destination_object(kind))
        raise not_found(f"Destination {destination_id} not found")

    async def trigger(self, request: Request) -> JSONResponse:
        options = _trigger_options(await _json_body(request, required=False))
        sync = self._sync(request.path_params["syncId"])
        return JSONResponse({"id": self._engine.trigger(sync.id, **options)})

    async def trigger_custom(self, request: Request) -> JSONResponse:
        body = await _json_body(request, required=True)
        options = _trigger_options(body)
        sync_id, sync_slug = _string(body, "syncId"), _string(body, "syncSlug")
        if sync_id is None and sync_slug is None:
            raise invalid("requestBody", "give syncId or syncSlug", body)
        if sync_id is None:
            sync = next((s for s in self._syncs.values() if s.slug == sync_slug), None)
            if sync is None:
                raise not_found(f"Sync with slug {sync_slug} not found")
        else:
            sync = self._sync(sync_id)
            if sync_slug not in (None, sync.slug):
                raise invalid("requestBody.syncSlug", "names another sync than syncId", sync_slug)
        return JSONResponse({"id": self._engine.trigger(sync.id, **options)})

    async def list_runs(self, request: Request) -> JSONResponse:
        runs = self._engine.runs(self._sync(_path_number(request, "syncId")).id, polled=True)
        params = request.query_params
        run_id = _number(params, "runId", None)
        if run_id is not None:
            runs = [run for run in runs if run["id"] == str(run_id)]
        runs = _ordered(runs, _choice(params, "orderBy", RUN_ORDER), newest_first=True)
        offset = _number(params, "offset", 0)
        return JSONResponse(
            {"data": runs[offset : offset + _number(params, "limit", DEFAULT_RUN_LIMIT)]}
        )

    async def trigger_counts(self, request: Request) -> JSONResponse:
        return JSONResponse(self._engine.trigger_counts())

    # -- sandbox control: edit a sync's mappings as someone would in Hightouch's UI ------------

    async def read_mappings(self, request: Request) -> JSONResponse:
        sync = self._sync(_path_number(request, "syncId"))
        return JSONResponse({"mappings": self.mappings(sync), "edited": sync.id in self._edited})

    async def replace_mappings(self, request: Request) -> JSONResponse:
        sync = self._sync(_path_number(request, "syncId"))
        body = await _json_body(request, required=True)
        self._edited[sync.id] = (_mappings(body), iso_timestamp(datetime.now(UTC)))
        return JSONResponse({"mappings": self.mappings(sync), "edited": True})

    async def restore_mappings(self, request: Request) -> JSONResponse:
        sync = self._sync(_path_number(request, "syncId"))
        self._edited.pop(sync.id, None)
        return JSONResponse({"mappings": self.mappings(sync), "edited": False})

    def control(self, handler: Handler) -> Handler:
        """A control handler; an `ApiError` becomes its JSON answer (no auth, like /sandbox/*)."""

        async def answer(request: Request) -> JSONResponse:
            try:
                return await handler(request)
            except ApiError as error:
                return JSONResponse(error.body, status_code=error.status)

        return answer

    def _sync(self, sync_id: str) -> SyncDefinition:
        if sync_id not in self._syncs:
            raise not_found(f"Sync {sync_id} not found")
        return self._syncs[sync_id]

    def endpoint(self, handler: Handler) -> Handler:
        """Bearer auth (any non-empty token, or only the configured one), then the handler;
        an `ApiError` becomes its JSON answer."""

        async def answer(request: Request) -> JSONResponse:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            token = token.strip()
            valid = scheme.lower() == "bearer" and bool(token)
            if valid and self._token is not None:
                valid = hmac.compare_digest(token.encode(), self._token.encode())
            if not valid:
                message = "Unauthorized: send Authorization: Bearer <API key>"
                return JSONResponse({"message": message}, status_code=401)
            try:
                return await handler(request)
            except ApiError as error:
                return JSONResponse(error.body, status_code=error.status)

        return answer


def _ordered(
    items: list[dict[str, Any]], field: str, *, newest_first: bool = False
) -> list[dict[str, Any]]:
    """Sorted by `field`, ties by numeric id. A run without startedAt/finishedAt yet is the
    newest."""

    def key(item: dict[str, Any]) -> tuple[bool, str, int]:
        value = None if field == "id" else item[field]
        return (field != "id" and value is None, value or "", int(item["id"]))

    return sorted(items, key=key, reverse=newest_first)


@overload
def _number(params: Mapping[str, Any], name: str, default: int) -> int: ...
@overload
def _number(params: Mapping[str, Any], name: str, default: None) -> int | None: ...
def _number(params: Mapping[str, Any], name: str, default: int | None) -> int | None:
    """A non-negative whole-number parameter (ids, limit, offset); the API takes numbers."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid(name, "invalid float number", raw) from None
    if value < 0 or not value.is_integer():
        raise invalid(name, "must be a non-negative whole number", raw)
    return int(value)


def _path_number(request: Request, name: str) -> str:
    return str(_number(request.path_params, name, None))


def _choice(params: Mapping[str, Any], name: str, allowed: Sequence[str]) -> str:
    value = params.get(name) or allowed[0]
    if value not in allowed:
        raise invalid(name, f"should be one of: {', '.join(allowed)}", value)
    return value


async def _json_body(request: Request, *, required: bool) -> dict[str, Any]:
    """The JSON object of the body. An optional body (`required: false` in the OpenAPI) may be
    absent, `{}` or a JSON `null`: all three mean "no options"."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise invalid("requestBody", "'requestBody' is required")
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise invalid("requestBody", "the body is not valid JSON", status=400) from None
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise invalid("requestBody", "invalid object", body)
    return body


def _string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(f"requestBody.{name}", "invalid string value", value)
    return value


def _mappings(body: dict[str, Any]) -> list[dict[str, str]]:
    """`{"mappings": [{"from": column, "to": field[, "type": ...]}, ...]}`, validated."""
    items = body.get("mappings")
    if not isinstance(items, list):
        raise invalid("requestBody.mappings", "give a list of {from, to} objects", items)
    mappings = []
    for index, item in enumerate(items):
        where = f"requestBody.mappings[{index}]"
        if not isinstance(item, dict):
            raise invalid(where, "invalid object", item)
        for name in ("from", "to"):
            if not isinstance(item.get(name), str) or not item[name]:
                raise invalid(f"{where}.{name}", "invalid string value", item.get(name))
        kind = item.get("type", "standard")
        if not isinstance(kind, str):
            raise invalid(f"{where}.type", "invalid string value", kind)
        mappings.append({"from": item["from"], "to": item["to"], "type": kind})
    return mappings


def _trigger_options(body: dict[str, Any]) -> dict[str, bool]:
    """fullResync / resetCDC as keyword arguments of `SyncEngine.trigger`."""
    options = {"full_resync": "fullResync", "reset_cdc": "resetCDC"}
    for name in options.values():
        if not isinstance(body.get(name, False), bool):
            raise invalid(f"requestBody.{name}", "invalid boolean value", body[name])
    return {option: body.get(name, False) for option, name in options.items()}


def routes(
    context: SandboxContext,
    definitions: Sequence[SyncDefinition],
    faults: FaultRegistry | None = None,
) -> list[BaseRoute]:
    """The API's routes for `definitions` (from `served_sync_definitions`), and the app pages."""
    engine = SyncEngine(
        store=context.store,
        crm=CrmStandIns(context.store, faults=faults),
        warehouse=context.warehouse,
        phase_seconds=context.settings.phase_seconds,
        syncs={s.id: s.destination for s in definitions},
        faults=faults,
    )
    context.on_reset(engine.reset)
    context.on_shutdown(engine.shutdown)
    api = HightouchApi(definitions, engine, context.settings.hightouch_token)
    context.on_reset(api.reset_mappings)
    api_routes = [
        ("GET", "/syncs", api.list_syncs),
        ("POST", "/syncs/trigger", api.trigger_custom),
        ("GET", "/syncs/{syncId}", api.get_sync),
        ("POST", "/syncs/{syncId}/trigger", api.trigger),
        ("GET", "/syncs/{syncId}/runs", api.list_runs),
        ("GET", "/destinations", api.list_destinations),
        ("GET", "/destinations/{destinationId}", api.get_destination),
    ]
    return [
        *(
            Route(SANDBOX_HIGHTOUCH_PREFIX + path, api.endpoint(handler), methods=[method])
            for method, path, handler in api_routes
        ),
        Route("/sandbox/hightouch/triggers", api.trigger_counts, methods=["GET"]),
        *(
            Route(
                "/sandbox/hightouch/syncs/{syncId}/mappings", api.control(handler), methods=[method]
            )
            for method, handler in (
                ("GET", api.read_mappings),
                ("PUT", api.replace_mappings),
                ("DELETE", api.restore_mappings),
            )
        ),
        *pages.routes({s.id: s for s in definitions}, engine),
    ]
