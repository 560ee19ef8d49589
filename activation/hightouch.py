"""A small Hightouch API v1 client on httpx. No Dagster inside: the resource wraps it.

It triggers a sync by id or slug, then polls the run it triggered until the run ends. Timeouts are
set on every request; 429, 5xx and transport errors are retried with backoff; other 4xx fail at
once with a message saying what to check. The API token is only ever placed in the Authorization
header: it is never logged and never part of an error message.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

logger = logging.getLogger(__name__)

TERMINAL_SUCCESS = frozenset({"success", "warning", "completed_with_errors"})
TERMINAL_FAILURE = frozenset({"failed", "cancelled", "interrupted"})
IN_FLIGHT = frozenset({"queued", "querying", "processing", "reporting", "pending"})
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_SKEW = timedelta(seconds=2)


class HightouchError(RuntimeError):
    """The Hightouch API refused a request or a sync run did not succeed."""


class HightouchRequestRefused(HightouchError):
    """A 4xx other than 429: retrying cannot help; the configuration must change."""


class HightouchPollTimeout(HightouchError):
    """The run did not finish within the poll timeout (it may still be running)."""


class HightouchRunFailed(HightouchError):
    """The run ended failed, cancelled or interrupted."""

    def __init__(self, run: SyncRun, run_url: str) -> None:
        self.run = run
        self.run_url = run_url
        super().__init__(
            f"Hightouch run {run.id} of sync {run.sync_id} ended {run.status}: "
            f"{run.error or 'no error message'} ({run_url})"
        )


@dataclass(frozen=True)
class RowCounts:
    added: int = 0
    changed: int = 0
    removed: int = 0

    @classmethod
    def from_api(cls, value: object) -> RowCounts:
        counts = value if isinstance(value, Mapping) else {}
        return cls(
            added=int(counts.get("addedCount") or 0),
            changed=int(counts.get("changedCount") or 0),
            removed=int(counts.get("removedCount") or 0),
        )

    @property
    def total(self) -> int:
        return self.added + self.changed + self.removed


@dataclass(frozen=True)
class SyncRun:
    """A Hightouch sync run; unknown fields of the API answer are ignored."""

    id: str
    sync_id: str
    status: str
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    query_size: int
    completion_ratio: float
    error: str | None
    planned: RowCounts
    successful: RowCounts
    failed: RowCounts

    @classmethod
    def from_api(cls, sync_id: str, data: Mapping[str, Any]) -> SyncRun:
        return cls(
            id=str(data["id"]),
            sync_id=sync_id,
            status=str(data.get("status") or "unknown"),
            created_at=data.get("createdAt"),
            started_at=data.get("startedAt"),
            finished_at=data.get("finishedAt"),
            query_size=int(data.get("querySize") or 0),
            completion_ratio=float(data.get("completionRatio") or 0.0),
            error=data.get("error") or None,
            planned=RowCounts.from_api(data.get("plannedRows")),
            successful=RowCounts.from_api(data.get("successfulRows")),
            failed=RowCounts.from_api(data.get("failedRows")),
        )

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_SUCCESS or self.status in TERMINAL_FAILURE


def retry_delay(attempt: int, response: httpx.Response | None, *, base: float, cap: float) -> float:
    """Seconds to wait before retry `attempt` (1-based): Retry-After when given, else backoff.

    Retry-After may be seconds or an HTTP date. Without it: exponential backoff with full jitter,
    so many clients throttled together do not retry in lockstep.
    """
    header = response.headers.get("Retry-After") if response is not None else None
    if header:
        header = header.strip()
        if header.isdigit():
            return min(float(header), cap)
        parsed = email.utils.parsedate_to_datetime(header) if header else None
        if parsed is not None:
            return min(max(parsed.timestamp() - time.time(), 0.0), cap)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


class HightouchClient:
    """Talks to one Hightouch workspace.

    Example:
        client = HightouchClient("https://api.hightouch.com/api/v1", token)
        run = client.sync_and_wait(sync_id="101")
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        app_url: str = "https://app.hightouch.com",
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_requests_per_second: float = 0.0,
        poll_interval: float = 0.5,
        max_poll_interval: float = 30.0,
        poll_timeout: float = 3600.0,
    ) -> None:
        if not token:
            raise HightouchError("the Hightouch API token is empty (HIGHTOUCH_API_TOKEN)")
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
        )
        self.app_url = app_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self.request_count = 0
        # This client's share of the workspace rate limit (0: unlimited); 429s remain the backstop.
        self._spacing = 1.0 / max_requests_per_second if max_requests_per_second > 0 else 0.0
        self._next_request_at = 0.0
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.poll_timeout = poll_timeout

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HightouchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------

    def _take_budget(self) -> None:
        """Space requests by the budget, then count the request about to be made."""
        if self._spacing:
            wait = self._next_request_at - time.monotonic()
            if wait > 0:
                self._sleep(wait)
            self._next_request_at = max(time.monotonic(), self._next_request_at) + self._spacing
        self.request_count += 1

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        parse: Callable[[Any], Any] = lambda data: data,
        before_retry: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One API call with retries; `what` names the call in errors ("trigger sync 101").

        `parse` turns the JSON answer into the result (a KeyError or TypeError there counts as a
        malformed answer, retried); `before_retry`, when given, runs before every retry and ends
        the call with its result when that is not None.
        """
        last_problem = ""
        for attempt in range(1, self.max_retries + 2):
            if attempt > 1 and before_retry is not None:
                early = before_retry()
                if early is not None:
                    return early
            response: httpx.Response | None = None
            try:
                self._take_budget()
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}"
            else:
                if response.status_code < 400:
                    try:
                        return parse(response.json())
                    except (ValueError, KeyError, TypeError):
                        last_problem = f"HTTP {response.status_code} with a malformed answer"
                elif response.status_code in _RETRYABLE_STATUS:
                    last_problem = f"HTTP {response.status_code}"
                else:
                    raise HightouchRequestRefused(self._explain(what, response))
            if attempt > self.max_retries:
                break
            delay = retry_delay(attempt, response, base=self.backoff_base, cap=self.backoff_cap)
            logger.warning(
                "Hightouch %s: %s; retry %d of %d in %.1fs",
                what,
                last_problem,
                attempt,
                self.max_retries,
                delay,
            )
            self._sleep(delay)
        raise HightouchError(
            f"Hightouch {what}: gave up after {self.max_retries + 1} attempts ({last_problem})"
        )

    @staticmethod
    def _explain(what: str, response: httpx.Response) -> str:
        hint = {
            401: "check HIGHTOUCH_API_TOKEN: the API rejected the token",
            403: "check that the API token's workspace may run this sync",
            404: "check the sync id or slug in destinations.yaml: Hightouch does not know it",
        }.get(response.status_code, "the request was refused; check the sync's configuration")
        try:
            detail = response.json().get("message") or response.text[:200]
        except ValueError:
            detail = response.text[:200]
        return f"Hightouch {what}: HTTP {response.status_code} ({detail}); {hint}"

    # -- API --------------------------------------------------------------------------------------

    def resolve_sync_id(self, sync_slug: str) -> str:
        """The id of the sync with this slug (runs are read by sync id)."""
        data = self._request("GET", "/syncs", params={"slug": sync_slug}, what=f"find {sync_slug}")
        matches = [s for s in data.get("data") or [] if s.get("slug") == sync_slug]
        if not matches:
            raise HightouchRequestRefused(
                f"Hightouch has no sync with slug {sync_slug!r}; check sync_slug in "
                "destinations.yaml"
            )
        return str(matches[0]["id"])

    def trigger(self, sync_id: str, *, full_resync: bool = False, reset_cdc: bool = False) -> str:
        """Start a run of the sync; returns the new run's id.

        A trigger is not idempotent: when an attempt ends without a clear answer (timeout, reset,
        5xx, 429) Hightouch may still have started the run. Before every retry the client lists
        the sync's runs and adopts a run created since the first attempt instead of triggering a
        second one. Clock skew between this host and Hightouch is allowed for by `_SKEW`.
        """
        body = {"fullResync": full_resync, "resetCDC": reset_cdc}
        what = f"trigger sync {sync_id}"
        since = datetime.now(UTC) - _SKEW

        def adopt_started_run() -> str | None:
            adopted = self._run_created_since(sync_id, since)
            if adopted is None:
                return None
            logger.warning(
                "Hightouch %s: the earlier attempt did start run %s; following it instead of "
                "triggering again",
                what,
                adopted.id,
            )
            return adopted.id

        try:
            return self._request(
                "POST",
                f"/syncs/{sync_id}/trigger",
                json=body,
                what=what,
                parse=lambda data: str(data["id"]),
                before_retry=adopt_started_run,
            )
        except HightouchRequestRefused:
            raise
        except HightouchError as error:
            adopted = adopt_started_run()
            if adopted is not None:
                return adopted
            raise HightouchError(f"{error}; no run of the sync was started") from None

    def recent_runs(self, sync_id: str, *, limit: int = 5) -> list[SyncRun]:
        """The sync's newest runs, newest first (an empty list is a valid answer)."""
        data = self._request(
            "GET",
            f"/syncs/{sync_id}/runs",
            params={"limit": limit, "orderBy": "createdAt"},
            what=f"list runs of sync {sync_id}",
        )
        runs = [
            SyncRun.from_api(sync_id, item)
            for item in data.get("data") or []
            if isinstance(item, Mapping) and item.get("id") is not None
        ]
        return sorted(runs, key=lambda run: run.created_at or "", reverse=True)

    def _run_created_since(self, sync_id: str, since: datetime) -> SyncRun | None:
        """A run that began after `since` and had not already ended by then: one that our own
        unanswered trigger may have started (a run someone else finished earlier is not)."""
        for run in self.recent_runs(sync_id):
            created = parse_api_time(run.created_at)
            finished = parse_api_time(run.finished_at)
            if created is None or created < since:
                continue
            if finished is not None and finished < since + _SKEW:
                continue
            return run
        return None

    def get_run(self, sync_id: str, run_id: str) -> SyncRun | None:
        """The run, or None while Hightouch does not list it yet."""
        data = self._request(
            "GET",
            f"/syncs/{sync_id}/runs",
            params={"runId": run_id},
            what=f"read run {run_id} of sync {sync_id}",
        )
        for item in data.get("data") or []:
            if str(item.get("id")) == run_id:
                return SyncRun.from_api(sync_id, item)
        return None

    def run_url(self, sync_id: str, run_id: str) -> str:
        return f"{self.app_url}/syncs/{sync_id}/runs/{run_id}"

    def wait_for_run(
        self,
        sync_id: str,
        run_id: str,
        *,
        poll_interval: float | None = None,
        max_poll_interval: float | None = None,
        poll_timeout: float | None = None,
    ) -> SyncRun:
        """Poll until the run ends; raises when it fails or the timeout passes.

        Polling adapts: it starts every `poll_interval` seconds and doubles up to
        `max_poll_interval` while nothing is known of the run's progress. Once Hightouch reports a
        completion ratio, the end is estimated from the progress rate and the next read is placed
        just before it, so a finished run is noticed quickly with few requests.
        """
        # Unset: the client's own settings (the resource passes them in).
        poll_timeout = self.poll_timeout if poll_timeout is None else poll_timeout
        deadline = time.monotonic() + poll_timeout
        schedule = PollSchedule(
            self.poll_interval if poll_interval is None else poll_interval,
            self.max_poll_interval if max_poll_interval is None else max_poll_interval,
        )
        warned_statuses: set[str] = set()
        while True:
            run = self.get_run(sync_id, run_id)
            if run is not None and run.finished:
                if run.status in TERMINAL_FAILURE:
                    raise HightouchRunFailed(run, self.run_url(sync_id, run_id))
                return run
            if run is not None and run.status not in IN_FLIGHT | warned_statuses:
                warned_statuses.add(run.status)
                logger.warning(
                    "Hightouch run %s reports unknown status %r; treating it as running",
                    run_id,
                    run.status,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HightouchPollTimeout(
                    f"Hightouch run {run_id} of sync {sync_id} did not finish within "
                    f"{poll_timeout:.0f}s ({self.run_url(sync_id, run_id)}). Hightouch has no "
                    "cancel endpoint: the run may still finish; check it there."
                )
            ratio = run.completion_ratio if run is not None else 0.0
            self._sleep(min(schedule.next_delay(time.monotonic(), ratio), remaining))


class PollSchedule:
    """Delays between reads of a running sync run.

    Without progress information the delay doubles from `minimum` to `maximum`. Once the
    completion ratio rises, a second reading a second later gives the rate, the remaining time is
    extrapolated from the last two readings, and the next read lands just after the estimated
    end, so a steadily progressing run is noticed within a second of its end in a handful of
    reads; a run that is not done by then is read every `minimum` seconds, re-estimated.
    """

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = max(minimum, 0.0)
        self.maximum = max(maximum, self.minimum)
        self._delay = self.minimum
        self._readings: list[tuple[float, float]] = []

    def next_delay(self, now: float, ratio: float) -> float:
        if 0 < ratio < 1 and (not self._readings or ratio > self._readings[-1][1]):
            self._readings.append((now, ratio))
            if len(self._readings) == 1:
                # Progress has started: a second reading soon gives the rate.
                return min(self.maximum, max(self.minimum, 1.0))
        if len(self._readings) >= 2:
            (t0, r0), (t1, r1) = self._readings[-2], self._readings[-1]
            remaining = (1 - r1) * (t1 - t0) / (r1 - r0) - (now - t1)
            # Read just after the estimated end; the cap bounds the cost of a wrong estimate
            # on long runs, where every read refreshes it.
            return min(self.maximum, max(self.minimum, remaining + 0.2))
        delay = self._delay
        self._delay = min(self.maximum, max(self._delay * 2, 0.05))
        return delay


def parse_api_time(value: str | None) -> datetime | None:
    """An ISO-8601 timestamp as Hightouch sends it ("...Z"), in UTC; None when absent or bad."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
