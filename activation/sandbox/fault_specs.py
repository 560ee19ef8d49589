"""Fault specs: the JSON a test posts to `/sandbox/faults`, validated into typed effects.

The spec itself is documented in `activation.sandbox.faults`. A bad spec raises `FaultSpecError`
naming the field, so the control endpoint can answer 422 with what to change.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from activation.lib.hightouch import IN_FLIGHT, TERMINAL_FAILURE, TERMINAL_SUCCESS

CONTROL_PREFIX = "/sandbox/"
HTTP_KINDS = ("status", "hang", "reset", "malformed_json", "html")
KINDS = (*HTTP_KINDS, "run", "crm_status", "airbyte_job")
RUN_OUTCOMES = ("failed", "warning", "interrupted", "cancelled")
JOB_OUTCOMES = ("failed", "cancelled", "running")
# Every status the product's Hightouch client knows; an injected unknown status must be none.
HIGHTOUCH_STATUSES = TERMINAL_SUCCESS | TERMINAL_FAILURE | IN_FLIGHT
MAX_SECONDS = 3600.0
_DEFAULT_RUN_ERRORS = {
    "failed": "Sync failed: the destination answered 500 Internal Server Error (sandbox fault)",
    "warning": "Some rows could not be synced to the destination (sandbox fault)",
    "interrupted": "The run was interrupted before it finished (sandbox fault)",
    "cancelled": "The run was cancelled (sandbox fault)",
}


class FaultSpecError(ValueError):
    """A fault spec the sandbox cannot honour; names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


# -- the effects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpFault:
    kind: str
    path: str | None = None
    path_regex: re.Pattern[str] | None = None
    sync_id: str | None = None
    method: str | None = None
    phase: str = "before"
    status: int | None = None
    retry_after: str | None = None
    body: Mapping[str, Any] | None = None
    seconds: float = 0.0

    def matches(self, method: str, path: str, sync_id: str | None) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is not None:
            return path.startswith(self.path)
        if self.path_regex is not None:
            return self.path_regex.search(path) is not None
        return sync_id is not None and sync_id == self.sync_id


@dataclass(frozen=True)
class RunFault:
    """What happens to one Hightouch run (read by `sync_engine`)."""

    outcome: str | None = None
    error: str | None = None
    unknown_status: str | None = None
    unknown_polls: int = 3
    reject_ratio: float | None = None
    reject_rows: int | None = None
    running_seconds: float = 0.0
    report_progress: bool = True

    @property
    def ends_early(self) -> bool:
        """The run ends after querying, without delivering anything."""
        return self.outcome in ("failed", "interrupted", "cancelled")

    @property
    def run_error(self) -> str | None:
        if self.outcome is None:
            return self.error
        return self.error or _DEFAULT_RUN_ERRORS[self.outcome]

    def rejected_positions(self, planned: int) -> frozenset[int]:
        """Which of the run's planned rows (0-based, in delivery order) the destination rejects;
        spread evenly so every batch and operation can be hit."""
        if self.reject_rows is not None:
            wanted = min(self.reject_rows, planned)
        elif self.reject_ratio is not None:
            wanted = min(planned, math.ceil(planned * self.reject_ratio))
        else:
            return frozenset()
        return frozenset(position * planned // wanted for position in range(wanted))


@dataclass(frozen=True)
class CrmFault:
    """The status a CRM stand-in answers instead of serving one call (its type is the target)."""

    status: int = 503


@dataclass(frozen=True)
class JobFault:
    """What happens to one Airbyte job (read by the Airbyte stand-in; the connection is the
    fault's target)."""

    outcome: str
    error: str | None = None


Effect = HttpFault | RunFault | CrmFault | JobFault


# -- parsing ------------------------------------------------------------------------------------


class _Fields:
    """Reads a spec's fields one by one; `finish` refuses any field nobody read."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self._body = body
        self._read: set[str] = set()

    def present(self, name: str) -> bool:
        return self._body.get(name) is not None

    def raw(self, name: str) -> Any:
        self._read.add(name)
        return self._body.get(name)

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FaultSpecError(name, f"must be a whole number from {low} to {high}")
        return value

    def number(self, name: str, default: float | None, low: float, high: float) -> float | None:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
            raise FaultSpecError(name, f"must be a number above {low:g} and at most {high:g}")
        return float(value)

    def string(self, name: str, choices: Iterable[str] | None = None) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise FaultSpecError(name, "must be a non-empty string")
        allowed = tuple(choices) if choices is not None else None
        if allowed is not None and value not in allowed:
            raise FaultSpecError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def finish(self, kind: str) -> None:
        unused = sorted(set(self._body) - self._read)
        if unused:
            raise FaultSpecError(unused[0], f"is not a field of a {kind!r} fault")


@dataclass(frozen=True)
class Targets:
    """What the sandbox serves, so a spec naming something else is refused at once."""

    syncs: Mapping[str, str]
    """Hightouch sync id -> slug."""
    destination_types: tuple[str, ...]
    connection_ids: tuple[str, ...]


def parse_fault(body: Any, targets: Targets) -> tuple[str, Effect, str | None, int]:
    """A spec -> (kind, effect, target, count); raises `FaultSpecError` naming the field."""
    if not isinstance(body, dict):
        raise FaultSpecError("body", "must be a JSON object with at least `kind`")
    fields = _Fields(body)
    kind = fields.string("kind", KINDS)
    if kind is None:
        raise FaultSpecError("kind", f"is required: one of {', '.join(KINDS)}")
    count = fields.integer("count", 1, 1, 1_000_000)
    assert count is not None
    target: str | None
    if kind in HTTP_KINDS:
        effect: Effect = _http_fault(kind, fields, targets)
        target = None
    elif kind == "run":
        target = _sync_id(fields, targets, required=True)
        effect = _run_fault(fields)
    elif kind == "crm_status":
        target = fields.string("destination_type", targets.destination_types)
        if target is None:
            raise FaultSpecError("destination_type", "is required for a crm_status fault")
        status = fields.integer("status", 503, 400, 599)
        assert status is not None
        effect = CrmFault(status)
    else:
        target = fields.string("connection_id", targets.connection_ids) or targets.connection_ids[0]
        outcome = fields.string("outcome", JOB_OUTCOMES)
        if outcome is None:
            raise FaultSpecError("outcome", f"is required: one of {', '.join(JOB_OUTCOMES)}")
        error = fields.string("error")
        if error is not None and outcome != "failed":
            raise FaultSpecError("error", "only a failed job has an error")
        effect = JobFault(outcome, error or "Sync failed (sandbox fault)")
    fields.finish(kind)
    return kind, effect, target, count


def _sync_id(fields: _Fields, targets: Targets, *, required: bool) -> str | None:
    value = fields.raw("sync_id")
    if value is None:
        if required:
            raise FaultSpecError("sync_id", "is required")
        return None
    sync_id = str(value)
    if sync_id not in targets.syncs:
        known = ", ".join(sorted(targets.syncs))
        raise FaultSpecError("sync_id", f"no sync {sync_id!r} in the sandbox (known: {known})")
    return sync_id


def _http_fault(kind: str, fields: _Fields, targets: Targets) -> HttpFault:
    path = fields.string("path")
    regex_text = fields.string("path_regex")
    sync_id = _sync_id(fields, targets, required=False)
    given = [name for name in ("path", "path_regex", "sync_id") if fields.present(name)]
    if len(given) != 1:
        raise FaultSpecError("path", "give exactly one target: path, path_regex or sync_id")
    if path is not None and (not path.startswith("/") or path.startswith(CONTROL_PREFIX)):
        raise FaultSpecError("path", f"must start with / and not with {CONTROL_PREFIX}")
    try:
        path_regex = re.compile(regex_text) if regex_text is not None else None
    except re.error as error:
        raise FaultSpecError("path_regex", f"is not a regular expression: {error}") from None
    method = fields.string("method")
    phase = fields.string("phase", ("before", "after")) or "before"
    status, retry_after, body, seconds = None, None, None, 0.0
    if kind in ("status", "html"):
        status = fields.integer("status", 502 if kind == "html" else None, 400, 599)
        if status is None:
            raise FaultSpecError("status", "is required for a status fault (400-599)")
    if kind == "status":
        retry_after = _retry_after(fields.raw("retry_after"))
        body = fields.raw("body")
        if body is not None and not isinstance(body, dict):
            raise FaultSpecError("body", "must be a JSON object")
    if kind == "hang":
        hang = fields.number("seconds", None, 0.0, MAX_SECONDS)
        if hang is None:
            raise FaultSpecError("seconds", "is required for a hang fault")
        seconds = hang
    return HttpFault(
        kind=kind,
        path=path,
        path_regex=path_regex,
        sync_id=sync_id,
        method=method.upper() if method else None,
        phase=phase,
        status=status,
        retry_after=retry_after,
        body=body,
        seconds=seconds,
    )


def _retry_after(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str):
        with contextlib.suppress(TypeError, ValueError):
            if email.utils.parsedate_to_datetime(value) is not None:
                return value
    raise FaultSpecError("retry_after", "must be whole seconds (>= 0) or an HTTP-date string")


def _run_fault(fields: _Fields) -> RunFault:
    outcome = fields.string("outcome", RUN_OUTCOMES)
    error = fields.string("error")
    unknown_status = fields.string("unknown_status")
    if unknown_status is not None and unknown_status in HIGHTOUCH_STATUSES:
        raise FaultSpecError("unknown_status", f"{unknown_status!r} is a status Hightouch uses")
    unknown_polls = fields.integer("unknown_polls", 3, 1, 10_000)
    if fields.present("unknown_polls") and unknown_status is None:
        raise FaultSpecError("unknown_polls", "needs unknown_status")
    reject_ratio = fields.number("reject_ratio", None, 0.0, 1.0)
    reject_rows = fields.integer("reject_rows", None, 1, 10_000_000)
    if reject_ratio is not None and reject_rows is not None:
        raise FaultSpecError("reject_rows", "give reject_ratio or reject_rows, not both")
    rejecting = reject_ratio is not None or reject_rows is not None
    if rejecting and outcome is not None:
        raise FaultSpecError("outcome", "a run that rejects rows ends by itself (warning/failed)")
    if error is not None and outcome is None:
        raise FaultSpecError("error", "needs an outcome")
    running_seconds = fields.number("running_seconds", 0.0, 0.0, MAX_SECONDS) or 0.0
    report_progress = fields.raw("report_progress")
    if report_progress is not None and (
        not isinstance(report_progress, bool) or not running_seconds
    ):
        raise FaultSpecError("report_progress", "true or false, with running_seconds")
    fault = RunFault(
        outcome=outcome,
        error=error,
        unknown_status=unknown_status,
        unknown_polls=unknown_polls or 3,
        reject_ratio=reject_ratio,
        reject_rows=reject_rows,
        running_seconds=running_seconds,
        report_progress=report_progress is not False,
    )
    if fault == RunFault():
        raise FaultSpecError(
            "outcome",
            "a run fault needs at least one of outcome, unknown_status, reject_ratio, "
            "reject_rows, running_seconds",
        )
    return fault
