"""The Airbyte stand-in: one workspace, one Postgres -> DuckDB connection, and its sync jobs.

Paths, parameters and JSON fields follow Airbyte's public REST API (`/api/public/v1`) and the
configuration API (`/api/v1`) as `dagster_airbyte.AirbyteWorkspace` 0.29 calls them. Errors of
the REST API use its problem JSON (`type`, `title`, `status`, `detail`); the configuration API
answers with its `KnownException` shape. No authentication is enforced: a token is handed out
to clients that ask for one, and every request is served with or without it.

A sync job goes pending -> running -> succeeded in a daemon thread (`JobEngine`), each phase
lasting `phase_seconds`; at the end of the running phase it lands every stream as Parquet with
`generator.land_streams`, using the scenario in force when the job was triggered; with a
PostgreSQL warehouse the landing is also loaded into its `raw.<stream>` tables (`warehouse.py`).

Sandbox-only: `GET/POST /sandbox/scenario` (what later syncs land) and `GET /sandbox/airbyte/jobs`.
An injected `airbyte_job` fault (`activation.sandbox.faults`) makes a job end failed or cancelled
after its running phase, or stay running until it is cancelled.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from activation.lib.environment import (
    SANDBOX_AIRBYTE_CONFIG_PREFIX,
    SANDBOX_AIRBYTE_CONNECTION_ID,
    SANDBOX_AIRBYTE_REST_PREFIX,
    SANDBOX_AIRBYTE_WORKSPACE_ID,
)
from activation.sandbox.context import SandboxContext
from activation.sandbox.fault_specs import JobFault
from activation.sandbox.faults import FaultRegistry

logger = logging.getLogger(__name__)

WORKSPACE_NAME = "activation"
CONNECTION_NAME = "crm_postgres_to_warehouse"
SOURCE_ID = "2b6a4f0e-6c1d-4f3e-9a57-0c1f5d2e8b41"
DESTINATION_ID = "c7e1d3a2-51b4-4d8e-b0f6-9e3a7c5d1f20"
DESTINATION_DEFINITION_ID = "94bd199c-2ff0-4aa2-b98e-17f0acb72610"
CREATED_AT = 1735689600  # 2025-01-01T00:00:00Z: when the sandbox's objects "were created"

API_DOC_URL = "https://reference.airbyte.com"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
JOB_TYPES = ("sync", "reset", "refresh", "clear")
ACTIVE_STATUSES = ("pending", "running", "incomplete")
JOB_ORDER_FIELDS = {"createdAt": "created_at", "updatedAt": "updated_at"}
JOIN_SECONDS = 30.0


class ProblemError(Exception):
    """A REST API error, answered as Airbyte's problem JSON."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail

    def response(self) -> JSONResponse:
        return JSONResponse(
            {
                "type": f"{API_DOC_URL}/reference/errors#{self.title}",
                "title": self.title,
                "status": self.status,
                "detail": self.detail,
            },
            status_code=self.status,
            media_type="application/problem+json",
        )


def bad_request(detail: str) -> ProblemError:
    return ProblemError(400, "bad-request", detail)


def not_found(resource_id: object) -> ProblemError:
    return ProblemError(404, "resource-not-found", f"Could not find a resource for: {resource_id}")


# -- timestamps ------------------------------------------------------------------------------------


def iso_seconds(moment: datetime) -> str:
    """Airbyte's job timestamps: whole seconds, UTC, `2025-01-01T00:00:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_duration(seconds: float) -> str:
    """A duration as Java's `Duration.toString()` writes it for whole seconds (`PT1M3S`)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return "PT" + text + (f"{secs}S" if secs or not text else "")


def parse_timestamp(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"{name} must be an ISO-8601 date-time, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- the workspace's objects -----------------------------------------------------------------------


def _primary_key(stream: str, schema: dict) -> list[list[str]]:
    """`accounts` -> [["account_id"]]: each CRM table is keyed by its singular id column."""
    column = f"{stream.removesuffix('s')}_id"
    return [[column]] if column in schema.get("properties", {}) else []


def workspace_response() -> dict[str, Any]:
    return {
        "workspaceId": SANDBOX_AIRBYTE_WORKSPACE_ID,
        "name": WORKSPACE_NAME,
        "dataResidency": "auto",
    }


def destination_response() -> dict[str, Any]:
    return {
        "destinationId": DESTINATION_ID,
        "name": "warehouse",
        "destinationType": "duckdb",
        "definitionId": DESTINATION_DEFINITION_ID,
        "workspaceId": SANDBOX_AIRBYTE_WORKSPACE_ID,
        "configuration": {"database": "warehouse", "schema": "raw"},
        "createdAt": CREATED_AT,
    }


def connection_response(schemas: dict[str, dict]) -> dict[str, Any]:
    """The connection as the REST API lists it."""
    return {
        "connectionId": SANDBOX_AIRBYTE_CONNECTION_ID,
        "name": CONNECTION_NAME,
        "sourceId": SOURCE_ID,
        "destinationId": DESTINATION_ID,
        "workspaceId": SANDBOX_AIRBYTE_WORKSPACE_ID,
        "status": "active",
        "schedule": {"scheduleType": "manual"},
        "dataResidency": "auto",
        "nonBreakingSchemaUpdatesBehavior": "ignore",
        "namespaceDefinition": "destination",
        "prefix": "",
        "configurations": {
            "streams": [
                {
                    "name": stream,
                    "syncMode": "full_refresh_overwrite",
                    "cursorField": [],
                    "primaryKey": _primary_key(stream, schema),
                }
                for stream, schema in schemas.items()
            ]
        },
        "createdAt": CREATED_AT,
        "tags": [],
    }


def connection_read(schemas: dict[str, dict]) -> dict[str, Any]:
    """The connection as the configuration API's `connections/get` returns it (ConnectionRead)."""
    return {
        "connectionId": SANDBOX_AIRBYTE_CONNECTION_ID,
        "name": CONNECTION_NAME,
        "namespaceDefinition": "destination",
        "namespaceFormat": "${SOURCE_NAMESPACE}",
        "prefix": "",
        "sourceId": SOURCE_ID,
        "destinationId": DESTINATION_ID,
        "operationIds": [],
        "syncCatalog": {
            "streams": [
                {
                    "stream": {
                        "name": stream,
                        "namespace": "public",
                        "jsonSchema": schema,
                        "supportedSyncModes": ["full_refresh", "incremental"],
                        "sourceDefinedCursor": False,
                        "defaultCursorField": [],
                        "sourceDefinedPrimaryKey": _primary_key(stream, schema),
                    },
                    "config": {
                        "syncMode": "full_refresh",
                        "cursorField": [],
                        "destinationSyncMode": "overwrite",
                        "primaryKey": _primary_key(stream, schema),
                        "aliasName": stream,
                        "selected": True,
                        "fieldSelectionEnabled": False,
                    },
                }
                for stream, schema in schemas.items()
            ]
        },
        "scheduleType": "manual",
        "status": "active",
        "geography": "auto",
        "breakingChange": False,
        "nonBreakingChangesPreference": "ignore",
        "notifySchemaChanges": False,
        "backfillPreference": "disabled",
        "createdAt": CREATED_AT,
    }


# -- scenario --------------------------------------------------------------------------------------

DEFAULT_SCENARIO: dict[str, Any] = {"bad_rows": False, "changed_rows": 0}


class ScenarioError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_scenario(body: Any) -> dict[str, Any]:
    """A scenario from `{"bad_rows": bool, "changed_rows": int}`; absent fields take defaults."""
    if not isinstance(body, dict):
        raise ScenarioError("body", "must be a JSON object with bad_rows and changed_rows")
    for name in body:
        if name not in DEFAULT_SCENARIO:
            raise ScenarioError(name, "unknown field (expected bad_rows, changed_rows)")
    scenario = {**DEFAULT_SCENARIO, **body}
    if not isinstance(scenario["bad_rows"], bool):
        raise ScenarioError("bad_rows", "must be true or false")
    changed = scenario["changed_rows"]
    if isinstance(changed, bool) or not isinstance(changed, int) or changed < 0:
        raise ScenarioError("changed_rows", "must be a non-negative integer")
    return scenario


# -- jobs ------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One sync job; mutated only under the engine's lock."""

    id: int
    connection_id: str
    scenario: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    status: str = "pending"
    rows_by_stream: dict[str, int] = field(default_factory=dict)
    bytes_synced: int = 0
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    fault: JobFault | None = None

    def to_api(self) -> dict[str, Any]:
        """The REST API's JobResponse."""
        return {
            "jobId": self.id,
            "status": self.status,
            "jobType": "sync",
            "startTime": iso_seconds(self.created_at),
            "connectionId": self.connection_id,
            "lastUpdatedAt": iso_seconds(self.updated_at),
            "duration": iso_duration((self.updated_at - self.created_at).total_seconds()),
            "bytesSynced": self.bytes_synced,
            "rowsSynced": sum(self.rows_by_stream.values()),
        }


Lander = Callable[[dict[str, Any], datetime], dict[str, int]]
"""Lands every stream for a scenario at an extraction time; returns rows per stream."""


class JobEngine:
    """The job table and one daemon thread per active job. A lock guards the table; threads
    sleep on their job's `stop` event, so a cancel, a reset or the shutdown wakes them at once."""

    def __init__(
        self,
        land: Lander,
        raw_dir: Path,
        phase_seconds: float,
        faults: FaultRegistry | None = None,
    ) -> None:
        self._faults = faults
        self._land = land
        self._raw_dir = raw_dir
        self._phase_seconds = phase_seconds
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._threads: dict[int, threading.Thread] = {}
        # Ids keep growing across resets, so a client holding an old id never reads a new job.
        self._ids = itertools.count(1)

    def start(self, connection_id: str, scenario: dict[str, Any]) -> dict[str, Any]:
        """A new pending job; a second one while one is active is refused, as Airbyte does."""
        with self._lock:
            if any(
                j.connection_id == connection_id and j.status in ACTIVE_STATUSES
                for j in self._jobs.values()
            ):
                raise ProblemError(
                    409, "try-again-later", f"A sync is already running for: {connection_id}"
                )
            now = datetime.now(UTC)
            fault = self._faults.take_job(connection_id) if self._faults else None
            job = Job(next(self._ids), connection_id, dict(scenario), now, now, fault=fault)
            self._jobs[job.id] = job
            thread = threading.Thread(
                target=self._run, args=(job,), name=f"airbyte-job-{job.id}", daemon=True
            )
            self._threads = {i: t for i, t in self._threads.items() if t.is_alive()}
            self._threads[job.id] = thread
            thread.start()
            return job.to_api()

    def get(self, job_id: int) -> dict[str, Any]:
        with self._lock:
            if job_id not in self._jobs:
                raise not_found(job_id)
            return self._jobs[job_id].to_api()

    def jobs(self) -> list[Job]:
        """Copies of every job, oldest first (safe to read outside the lock)."""
        with self._lock:
            return [
                Job(**{**vars(j), "rows_by_stream": dict(j.rows_by_stream)})
                for j in self._jobs.values()
            ]

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel an active job (it ends "cancelled"); a finished job is returned unchanged."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise not_found(job_id)
            if job.status in ACTIVE_STATUSES:
                job.status = "cancelled"
                job.updated_at = datetime.now(UTC)
                job.stop.set()
            return job.to_api()

    def reset(self) -> None:
        """Forget every job; wait for active ones to stop so no old sync lands after the reset."""
        with self._lock:
            dropped = list(self._jobs.values())
            self._jobs.clear()
            threads = list(self._threads.values())
            self._threads.clear()
        for job in dropped:
            job.stop.set()
        for thread in threads:
            thread.join(JOIN_SECONDS)

    def shutdown(self) -> None:
        with self._lock:
            jobs, threads = list(self._jobs.values()), list(self._threads.values())
        for job in jobs:
            job.stop.set()
        for thread in threads:
            thread.join(5.0)

    def _advance(self, job: Job, status: str) -> bool:
        """Move the job on unless it was cancelled or dropped meanwhile; False if it was."""
        with self._lock:
            if job.stop.is_set() or self._jobs.get(job.id) is not job:
                return False
            job.status = status
            job.updated_at = datetime.now(UTC)
            return True

    def _injected_end(self, job: Job) -> bool:
        """Apply the job's injected fault, if any; True when the job must not land anything."""
        if job.fault is None:
            return False
        if job.fault.outcome == "running":
            job.stop.wait()  # until cancelled, reset or shut down
        elif job.fault.outcome == "failed":
            with self._lock:
                job.error = job.fault.error
            self._advance(job, "failed")
        else:
            self._advance(job, "cancelled")
        return True

    def _run(self, job: Job) -> None:
        if job.stop.wait(self._phase_seconds) or not self._advance(job, "running"):
            return
        if job.stop.wait(self._phase_seconds) or self._injected_end(job):
            return
        try:
            rows = self._land(job.scenario, datetime.now(UTC))
            size = sum((self._raw_dir / f"{s}.parquet").stat().st_size for s in rows)
        except Exception as error:  # a failed landing fails the job, as a failed attempt does
            logger.exception("Airbyte job %s failed while landing streams", job.id)
            with self._lock:
                job.error = f"{type(error).__name__}: {error}"
            self._advance(job, "failed")
            return
        with self._lock:
            # Recorded even if a cancel came in while landing: the files are already there.
            job.rows_by_stream, job.bytes_synced = rows, size
        self._advance(job, "succeeded")


# -- the API ---------------------------------------------------------------------------------------


def _int_param(params: QueryParams, name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise bad_request(f"{name} must be between {low} and {high}, got {number}")
    return number


def _workspace_ids(params: QueryParams) -> set[str] | None:
    """`workspaceIds` repeated or comma-separated; None when absent (no filter)."""
    values = [v.strip() for raw in params.getlist("workspaceIds") for v in raw.split(",")]
    return {v for v in values if v} or None


def paginate(request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Airbyte's list envelope: `data`, and `next`/`previous` page URLs ("" when there is none)."""
    params = request.query_params
    limit = _int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(params, "offset", 0, 0, 2**31)
    url = request.url
    following = offset + limit
    return {
        "data": items[offset:following],
        "next": str(url.include_query_params(limit=limit, offset=following))
        if following < len(items)
        else "",
        "previous": str(url.include_query_params(limit=limit, offset=max(0, offset - limit)))
        if offset > 0
        else "",
    }


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad_request("The body of the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("The body of the request must be a JSON object")
    return body


class AirbyteApi:
    """Handlers of the REST and configuration API, bound to paths by `routes`."""

    def __init__(self, engine: JobEngine, schemas: Callable[[], dict[str, dict]]) -> None:
        self._engine = engine
        self._schemas = schemas
        self._scenario_lock = threading.Lock()
        self.scenario = dict(DEFAULT_SCENARIO)

    def reset(self) -> None:
        with self._scenario_lock:
            self.scenario = dict(DEFAULT_SCENARIO)
        self._engine.reset()

    # REST API

    async def token(self, request: Request) -> JSONResponse:
        body = await _json_object(request)
        for name in ("client_id", "client_secret"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise bad_request(f"{name} is required")
        return JSONResponse(
            {
                "access_token": "sandbox-" + secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 180,
            }
        )

    async def workspace(self, request: Request) -> JSONResponse:
        workspace_id = request.path_params["workspaceId"]
        if workspace_id != SANDBOX_AIRBYTE_WORKSPACE_ID:
            raise not_found(workspace_id)
        return JSONResponse(workspace_response())

    async def connections(self, request: Request) -> JSONResponse:
        workspaces = _workspace_ids(request.query_params)
        items = [connection_response(self._schemas())]
        items = [c for c in items if workspaces is None or c["workspaceId"] in workspaces]
        return JSONResponse(paginate(request, items))

    async def connection(self, request: Request) -> JSONResponse:
        connection_id = request.path_params["connectionId"]
        if connection_id != SANDBOX_AIRBYTE_CONNECTION_ID:
            raise not_found(connection_id)
        return JSONResponse(connection_response(self._schemas()))

    async def destination(self, request: Request) -> JSONResponse:
        destination_id = request.path_params["destinationId"]
        if destination_id != DESTINATION_ID:
            raise not_found(destination_id)
        return JSONResponse(destination_response())

    async def create_job(self, request: Request) -> JSONResponse:
        body = await _json_object(request)
        connection_id, job_type = body.get("connectionId"), body.get("jobType")
        if not isinstance(connection_id, str) or not connection_id:
            raise bad_request("connectionId is required")
        if job_type not in JOB_TYPES:
            raise bad_request(f"jobType must be one of {', '.join(JOB_TYPES)}")
        if connection_id != SANDBOX_AIRBYTE_CONNECTION_ID:
            raise not_found(connection_id)
        if job_type != "sync":
            raise ProblemError(
                422, "unprocessable-entity", f"the sandbox runs sync jobs only, not {job_type}"
            )
        with self._scenario_lock:
            scenario = dict(self.scenario)
        return JSONResponse(self._engine.start(connection_id, scenario))

    async def list_jobs(self, request: Request) -> JSONResponse:
        params = request.query_params
        connection_id = params.get("connectionId")
        if connection_id is not None and connection_id != SANDBOX_AIRBYTE_CONNECTION_ID:
            raise not_found(connection_id)
        workspaces = _workspace_ids(params)
        bounds = {
            name: parse_timestamp(params[name], name)
            for name in ("createdAtStart", "createdAtEnd", "updatedAtStart", "updatedAtEnd")
            if params.get(name)
        }
        order_by = params.get("orderBy", "createdAt|DESC")
        order_field, _, direction = order_by.partition("|")
        if order_field not in JOB_ORDER_FIELDS or direction.upper() not in ("ASC", "DESC"):
            raise bad_request("orderBy must be createdAt or updatedAt with |ASC or |DESC")
        if workspaces is not None and SANDBOX_AIRBYTE_WORKSPACE_ID not in workspaces:
            jobs: list[Job] = []
        else:
            jobs = [
                j
                for j in self._engine.jobs()
                if connection_id in (None, j.connection_id)
                and params.get("jobType") in (None, "sync")
                and params.get("status") in (None, j.status)
                and j.created_at >= bounds.get("createdAtStart", j.created_at)
                and j.created_at <= bounds.get("createdAtEnd", j.created_at)
                and j.updated_at >= bounds.get("updatedAtStart", j.updated_at)
                and j.updated_at <= bounds.get("updatedAtEnd", j.updated_at)
            ]
        jobs.sort(
            key=lambda j: (getattr(j, JOB_ORDER_FIELDS[order_field]), j.id),
            reverse=direction.upper() == "DESC",
        )
        return JSONResponse(paginate(request, [j.to_api() for j in jobs]))

    async def get_job(self, request: Request) -> JSONResponse:
        return JSONResponse(self._engine.get(_job_id(request)))

    async def cancel_job(self, request: Request) -> JSONResponse:
        return JSONResponse(self._engine.cancel(_job_id(request)))

    # Configuration API

    async def config_connection(self, request: Request) -> JSONResponse:
        try:
            body = await _json_object(request)
        except ProblemError as error:
            return _known_exception(422, "InvalidInputException", error.detail)
        connection_id = body.get("connectionId")
        if not isinstance(connection_id, str) or not connection_id:
            return _known_exception(422, "InvalidInputException", "connectionId is required")
        if connection_id != SANDBOX_AIRBYTE_CONNECTION_ID:
            return _known_exception(
                404,
                "IdNotFoundKnownException",
                f"Could not find configuration for STANDARD_SYNC: {connection_id}.",
                id=connection_id,
            )
        return JSONResponse(connection_read(self._schemas()))

    # Sandbox control

    async def get_scenario(self, request: Request) -> JSONResponse:
        with self._scenario_lock:
            return JSONResponse(dict(self.scenario))

    async def set_scenario(self, request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        try:
            scenario = parse_scenario(body)
        except ScenarioError as error:
            return JSONResponse({"message": str(error), "field": error.field}, status_code=422)
        with self._scenario_lock:
            self.scenario = scenario
        return JSONResponse(dict(scenario))

    async def sandbox_jobs(self, request: Request) -> JSONResponse:
        return JSONResponse(
            [
                {
                    "id": j.id,
                    "status": j.status,
                    "connectionId": j.connection_id,
                    "jobType": "sync",
                    "createdAt": j.created_at.isoformat(),
                    "scenario": j.scenario,
                    "rowsByStream": j.rows_by_stream,
                    "error": j.error,
                }
                for j in self._engine.jobs()
            ]
        )


def _job_id(request: Request) -> int:
    raw = request.path_params["jobId"]
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"jobId must be an integer, got {raw!r}") from None


def _known_exception(status: int, name: str, message: str, **extra: Any) -> JSONResponse:
    """The configuration API's error body (`KnownException` info)."""
    return JSONResponse(
        {
            "message": message,
            "exceptionClassName": f"io.airbyte.commons.server.errors.{name}",
            "exceptionStack": [],
            "rootCauseExceptionStack": [],
            **extra,
        },
        status_code=status,
    )


def _problems(handler: Callable) -> Callable:
    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except ProblemError as error:
            return error.response()

    return wrapped


def routes(context: SandboxContext, faults: FaultRegistry | None = None) -> list[BaseRoute]:
    settings = context.settings

    def land(scenario: dict[str, Any], extracted_at: datetime) -> dict[str, int]:
        from activation.sandbox import generator

        rows = generator.land_streams(
            settings.raw_dir, settings.rows, generator.Scenario(**scenario), extracted_at
        )
        context.warehouse.land_raw(settings.raw_dir, tuple(rows))
        return rows

    def schemas() -> dict[str, dict]:
        from activation.sandbox import generator

        return generator.stream_json_schemas()

    engine = JobEngine(land, settings.raw_dir, settings.phase_seconds, faults)
    api = AirbyteApi(engine, schemas)
    context.on_reset(api.reset)
    context.on_shutdown(engine.shutdown)
    rest, config = SANDBOX_AIRBYTE_REST_PREFIX, SANDBOX_AIRBYTE_CONFIG_PREFIX
    table: list[tuple[str, Callable, str]] = [
        (f"{rest}/applications/token", api.token, "POST"),
        (f"{rest}/workspaces/{{workspaceId}}", api.workspace, "GET"),
        (f"{rest}/connections", api.connections, "GET"),
        (f"{rest}/connections/{{connectionId}}", api.connection, "GET"),
        (f"{rest}/destinations/{{destinationId}}", api.destination, "GET"),
        (f"{rest}/jobs", api.create_job, "POST"),
        (f"{rest}/jobs", api.list_jobs, "GET"),
        (f"{rest}/jobs/{{jobId}}", api.get_job, "GET"),
        (f"{rest}/jobs/{{jobId}}", api.cancel_job, "DELETE"),
        (f"{config}/connections/get", api.config_connection, "POST"),
        ("/sandbox/scenario", api.get_scenario, "GET"),
        ("/sandbox/scenario", api.set_scenario, "POST"),
        ("/sandbox/airbyte/jobs", api.sandbox_jobs, "GET"),
    ]
    return [Route(path, _problems(handler), methods=[method]) for path, handler, method in table]
