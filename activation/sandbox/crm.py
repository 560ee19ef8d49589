"""Stand-ins for the four CRMs the Hightouch syncs write to: Salesforce, HubSpot, Iterable, Braze.

The Hightouch run engine calls them in process, the way Hightouch calls the real APIs: batches of
upserts or deletes of one object, each batch no larger than that API accepts, with a result per
record. They keep what they were sent in the sandbox store (current records per destination type
and object, keyed by record id, plus a log of every call) so tests and the demo can read back
exactly what reached each "CRM".

Batch limits follow each API: Salesforce Bulk API 5,000 records per call (the common Data Loader
setting), HubSpot batch endpoints 100 inputs, Braze `/users/track` 75 objects, Iterable bulk
update 1,000 by default, changed with the `ACTIVATION_SANDBOX_ITERABLE_BATCH_SIZE` environment
variable (read when the sandbox starts).

An injected `crm_status` fault (`activation.sandbox.faults`) makes a call raise
`DestinationUnavailableError` before anything is stored, as an API outage would.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from activation.sandbox.context import SandboxContext, SandboxStore
from activation.sandbox.faults import FaultRegistry

ITERABLE_BATCH_SIZE_VAR = "ACTIVATION_SANDBOX_ITERABLE_BATCH_SIZE"
_FIXED_BATCH_LIMITS = {"salesforce": 5000, "hubspot": 100, "braze": 75}
_ITERABLE_DEFAULT_BATCH_SIZE = 1000
# Deliberately simple: one @, no spaces, a dot in the domain. Enough to reject what the CRMs
# reject in practice ('not-an-email', 'bob@@example', empty strings).
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS crm_records (
    destination_type VARCHAR NOT NULL,
    object VARCHAR NOT NULL,
    record_id VARCHAR NOT NULL,
    fields JSON NOT NULL,
    PRIMARY KEY (destination_type, object, record_id)
);
CREATE SEQUENCE IF NOT EXISTS crm_call_number;
CREATE TABLE IF NOT EXISTS crm_calls (
    number BIGINT NOT NULL DEFAULT nextval('crm_call_number'),
    destination_type VARCHAR NOT NULL,
    object VARCHAR NOT NULL,
    operation VARCHAR NOT NULL,
    batch_size INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    called_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


class BatchTooLargeError(ValueError):
    """A batch above the API's limit: the real API would refuse it, so the caller has a bug."""


class DestinationUnavailableError(RuntimeError):
    """The CRM answered an HTTP error to the whole call (an injected fault): nothing was stored."""

    def __init__(self, destination_type: str, status: int) -> None:
        super().__init__(f"the {destination_type} API answered HTTP {status}")
        self.destination_type = destination_type
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class RecordResult:
    """The destination's answer for one record of a batch."""

    id: str
    ok: bool
    error: str | None = None


def batch_limits() -> dict[str, int]:
    """Records per call each destination type accepts."""
    iterable = int(os.environ.get(ITERABLE_BATCH_SIZE_VAR) or _ITERABLE_DEFAULT_BATCH_SIZE)
    if iterable < 1:
        raise ValueError(f"{ITERABLE_BATCH_SIZE_VAR} must be a positive integer, got {iterable}")
    return {**_FIXED_BATCH_LIMITS, "iterable": iterable}


def record_problem(fields: Mapping[str, Any]) -> str | None:
    """Why a destination would reject this record, or None. Only a mapped `email` is checked."""
    if "email" not in fields:
        return None
    email = fields["email"]
    if not isinstance(email, str) or not _EMAIL.match(email):
        return f"INVALID_EMAIL: {email!r} is not a valid email address"
    return None


class CrmStandIns:
    """The four CRMs' state, kept in the sandbox store (several instances share it safely)."""

    def __init__(self, store: SandboxStore, faults: FaultRegistry | None = None) -> None:
        self._store = store
        self._faults = faults
        self.limits = batch_limits()
        with store.lock, store.cursor() as cursor:
            cursor.execute(_SCHEMA)

    def batch_limit(self, destination_type: str) -> int:
        return self.limits[destination_type]

    def upsert(
        self, destination_type: str, object_name: str, records: Sequence[Mapping[str, Any]]
    ) -> list[RecordResult]:
        """Create or replace records (`{"id": ..., "fields": {...}}`); invalid ones are rejected.

        Replace, not merge: every sync sends all its mapped fields, so the stored record is
        exactly the last accepted payload.
        """
        self._refuse_oversized(destination_type, len(records))
        self._answer_injected_fault(destination_type)
        results = [
            RecordResult(str(r["id"]), ok=problem is None, error=problem)
            for r in records
            for problem in [record_problem(r["fields"])]
        ]
        accepted = [
            (result.id, json.dumps(record["fields"]))
            for record, result in zip(records, results, strict=True)
            if result.ok
        ]
        with self._store.lock, self._store.cursor() as cursor:
            cursor.execute(
                """
                INSERT OR REPLACE INTO crm_records (destination_type, object, record_id, fields)
                SELECT ?, ?, unnest(?::VARCHAR[]), unnest(?::VARCHAR[])::JSON
                """,
                [
                    destination_type,
                    object_name,
                    [record_id for record_id, _ in accepted],
                    [fields for _, fields in accepted],
                ],
            )
            self._log(cursor, destination_type, object_name, "upsert", results)
        return results

    def delete(
        self, destination_type: str, object_name: str, record_ids: Sequence[str]
    ) -> list[RecordResult]:
        """Delete records by id; deleting a record that is already gone succeeds (idempotent)."""
        self._refuse_oversized(destination_type, len(record_ids))
        self._answer_injected_fault(destination_type)
        results = [RecordResult(str(record_id), ok=True) for record_id in record_ids]
        with self._store.lock, self._store.cursor() as cursor:
            cursor.execute(
                """
                DELETE FROM crm_records
                WHERE destination_type = ? AND object = ? AND record_id IN (SELECT unnest(?))
                """,
                [destination_type, object_name, [r.id for r in results]],
            )
            self._log(cursor, destination_type, object_name, "delete", results)
        return results

    def records(self, destination_type: str, object_name: str | None) -> list[dict[str, Any]]:
        """Current records sorted by id (then object); all objects when `object_name` is None."""
        with self._store.cursor() as cursor:
            rows = cursor.execute(
                """
                SELECT record_id, object, fields::VARCHAR
                FROM crm_records
                WHERE destination_type = ? AND (? IS NULL OR object = ?)
                ORDER BY record_id, object
                """,
                [destination_type, object_name, object_name],
            ).fetchall()
        return [
            {"id": record_id, "object": obj, "fields": json.loads(fields)}
            for record_id, obj, fields in rows
        ]

    def calls(self, destination_type: str) -> list[dict[str, Any]]:
        """Every call received, oldest first."""
        with self._store.cursor() as cursor:
            rows = cursor.execute(
                """
                SELECT
                    operation,
                    object,
                    batch_size,
                    rejected,
                    strftime(called_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%gZ')
                FROM crm_calls
                WHERE destination_type = ?
                ORDER BY number
                """,
                [destination_type],
            ).fetchall()
        keys = ("operation", "object", "batch_size", "rejected", "called_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def reset(self) -> None:
        with self._store.lock, self._store.cursor() as cursor:
            cursor.execute("DELETE FROM crm_records; DELETE FROM crm_calls;")

    def _answer_injected_fault(self, destination_type: str) -> None:
        status = self._faults.take_crm(destination_type) if self._faults else None
        if status is not None:
            raise DestinationUnavailableError(destination_type, status)

    def _refuse_oversized(self, destination_type: str, size: int) -> None:
        limit = self.batch_limit(destination_type)
        if size > limit:
            raise BatchTooLargeError(
                f"{destination_type} accepts at most {limit} records per call, got {size}"
            )

    @staticmethod
    def _log(
        cursor: Any,
        destination_type: str,
        object_name: str,
        operation: str,
        results: Sequence[RecordResult],
    ) -> None:
        cursor.execute(
            "INSERT INTO crm_calls (destination_type, object, operation, batch_size, rejected) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                destination_type,
                object_name,
                operation,
                len(results),
                sum(not r.ok for r in results),
            ],
        )


def routes(context: SandboxContext) -> list[BaseRoute]:
    """Sandbox-only read endpoints: what each CRM holds and every call it received."""
    crm = CrmStandIns(context.store)
    context.on_reset(crm.reset)

    def destination_type(request: Request) -> str | None:
        value = request.path_params["destination_type"]
        return value if value in crm.limits else None

    def unknown(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "message": f"unknown destination type {request.path_params['destination_type']!r}"
                f" (known: {', '.join(sorted(crm.limits))})"
            },
            status_code=404,
        )

    async def records(request: Request) -> JSONResponse:
        kind = destination_type(request)
        if kind is None:
            return unknown(request)
        found = await run_in_threadpool(
            crm.records, kind, request.query_params.get("object") or None
        )
        return JSONResponse({"records": found, "count": len(found)})

    async def calls(request: Request) -> JSONResponse:
        kind = destination_type(request)
        if kind is None:
            return unknown(request)
        found = await run_in_threadpool(crm.calls, kind)
        return JSONResponse({"calls": found, "count": len(found)})

    return [
        Route("/sandbox/destinations/{destination_type}/records", records, methods=["GET"]),
        Route("/sandbox/destinations/{destination_type}/calls", calls, methods=["GET"]),
    ]
