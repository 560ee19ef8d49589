"""A small Hightouch API v1 client on httpx. No Dagster inside: the resource wraps it.

It triggers a sync by id or slug, then polls the run it triggered until the run ends. Timeouts are
set on every request; 429, 5xx and transport errors are retried with backoff; other 4xx fail at
once with a message saying what to check. An answer of the wrong shape (not JSON, a list where
an object belongs, a run without an id, a non-numeric completion ratio) and an unusable Retry-After
are treated like a server error: retried, then `HightouchUnavailable`, never a crash. The API token
is only ever placed in the Authorization header: it is never logged and never part of an error
message (httpx's own request log is redacted by `activation.lib.redaction`).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from activation.lib.redaction import install_http_log_redaction

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

install_http_log_redaction()

TERMINAL_SUCCESS = frozenset({"success", "warning", "completed_with_errors"})
TERMINAL_FAILURE = frozenset({"failed", "cancelled", "interrupted"})
IN_FLIGHT = frozenset({"queued", "querying", "processing", "reporting", "pending"})
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_SKEW = timedelta(seconds=2)
# What a parser may still raise on an odd answer; their messages can quote the answer, so only
# `HightouchMalformedAnswer`'s (which names fields, not values) reaches the log.
_PARSE_SLIPS = (ValueError, KeyError, TypeError, AttributeError, IndexError)


class HightouchError(RuntimeError):
    """The Hightouch API refused a request or a sync run did not succeed."""


class HightouchUnavailable(HightouchError):
    """No usable answer after the retries (5xx, 429, transport errors, malformed answers):
    transient, so a later attempt may succeed."""


class HightouchMalformedAnswer(HightouchError):
    """An answer of the wrong shape; retried like a server error. The message names the field,
    never its value."""


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
    def from_api(cls, value: object, name: str = "row counts") -> RowCounts:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise HightouchMalformedAnswer(f"{name} is not an object")
        return cls(
            added=_count(value.get("addedCount"), f"{name}.addedCount"),
            changed=_count(value.get("changedCount"), f"{name}.changedCount"),
            removed=_count(value.get("removedCount"), f"{name}.removedCount"),
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
    def from_api(cls, sync_id: str, data: object) -> SyncRun:
        """Raises `HightouchMalformedAnswer` when a field has the wrong type; absent fields take
        their defaults. A `completionRatio` of "abc" or {} is malformed; an absent or null one
        only says no progress is known (the spec calls it a number, but a null for a queued run
        must not turn every poll into a retry), so it reads as 0."""
        if not isinstance(data, Mapping):
            raise HightouchMalformedAnswer("a run is not an object")
        ratio = _number(data.get("completionRatio"), "completionRatio") or 0.0
        error = data.get("error")
        return cls(
            id=_identifier(data.get("id"), "run id"),
            sync_id=sync_id,
            status=_optional_text(data.get("status"), "status") or "unknown",
            created_at=_optional_text(data.get("createdAt"), "createdAt"),
            started_at=_optional_text(data.get("startedAt"), "startedAt"),
            finished_at=_optional_text(data.get("finishedAt"), "finishedAt"),
            query_size=_count(data.get("querySize"), "querySize"),
            completion_ratio=ratio,
            # Only ever shown to people, so an odd type is kept as text rather than refused.
            error=str(error) if error not in (None, "") else None,
            planned=RowCounts.from_api(data.get("plannedRows"), "plannedRows"),
            successful=RowCounts.from_api(data.get("successfulRows"), "successfulRows"),
            failed=RowCounts.from_api(data.get("failedRows"), "failedRows"),
        )

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_SUCCESS or self.status in TERMINAL_FAILURE


@dataclass(frozen=True)
class FieldMapping:
    """One field mapping of a sync's configuration: a model column (`from`) feeding a
    destination field (`to`)."""

    column: str | None
    """The model column; None for a mapping fed by no column (a static value or a template)."""
    field: str
    kind: str = "standard"


@dataclass(frozen=True)
class HightouchSync:
    """What `GET /syncs/{id}` says about a sync that the schema contract compares.

    Hightouch documents `configuration` as destination-specific and open to change, so it is read
    leniently: `mappings` is None when the configuration holds no readable `mappings` list (the
    mappings cannot be compared then), and items of a shape not understood are left out.
    `referencedColumns` and `primaryKey` are part of the documented Sync object and must be
    well-formed.
    """

    id: str
    slug: str | None
    primary_key: str | None
    referenced_columns: tuple[str, ...]
    mappings: tuple[FieldMapping, ...] | None
    external_id_mapping: FieldMapping | None
    destination_object: str | None
    """`configuration.object`, when the destination has one (Salesforce Contact...)."""

    @classmethod
    def from_api(cls, data: object) -> HightouchSync:
        if not isinstance(data, Mapping):
            raise HightouchMalformedAnswer("the sync is not an object")
        referenced = data.get("referencedColumns")
        if referenced is None:
            referenced = []
        if not isinstance(referenced, list) or not all(isinstance(c, str) for c in referenced):
            raise HightouchMalformedAnswer("referencedColumns is not a list of strings")
        configuration = data.get("configuration")
        if configuration is not None and not isinstance(configuration, Mapping):
            raise HightouchMalformedAnswer("configuration is not an object")
        configuration = configuration or {}
        raw_mappings = configuration.get("mappings")
        mappings = (
            tuple(m for m in map(_field_mapping, raw_mappings) if m is not None)
            if isinstance(raw_mappings, list)
            else None
        )
        target = configuration.get("object")
        return cls(
            id=_identifier(data.get("id"), "sync id"),
            slug=_optional_text(data.get("slug"), "slug"),
            primary_key=_optional_text(data.get("primaryKey"), "primaryKey"),
            referenced_columns=tuple(referenced),
            mappings=mappings,
            external_id_mapping=_field_mapping(configuration.get("externalIdMapping")),
            destination_object=target if isinstance(target, str) and target else None,
        )


def _field_mapping(item: object) -> FieldMapping | None:
    """A `{from, to, type}` mapping; None for anything else (no destination field named)."""
    if not isinstance(item, Mapping):
        return None
    to, source, kind = item.get("to"), item.get("from"), item.get("type")
    if not isinstance(to, str) or not to:
        return None
    return FieldMapping(
        column=source if isinstance(source, str) and source else None,
        field=to,
        kind=kind if isinstance(kind, str) and kind else "standard",
    )


def _identifier(value: object, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise HightouchMalformedAnswer(f"{name} is missing or not a string or integer")
    return str(value).strip()


def _optional_text(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise HightouchMalformedAnswer(f"{name} is not a string")


def _number(value: object, name: str) -> float | None:
    """A finite number (numeric strings too), None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise HightouchMalformedAnswer(f"{name} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise HightouchMalformedAnswer(f"{name} is not a number") from None
    if not math.isfinite(number):
        raise HightouchMalformedAnswer(f"{name} is not a finite number")
    return number


def _count(value: object, name: str) -> int:
    number = _number(value, name)
    if number is None:
        return 0
    if number < 0 or not number.is_integer():
        raise HightouchMalformedAnswer(f"{name} is not a row count")
    return int(number)


def _items(data: object, what: str) -> list[Mapping[str, Any]]:
    """The `data` list of a list answer (`{"data": [...]}`), each item an object."""
    items = data.get("data") if isinstance(data, Mapping) else None
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise HightouchMalformedAnswer(f"the answer is not {{'data': [{what}]}}")
    return items


def _trigger_answer(data: object) -> str:
    if not isinstance(data, Mapping):
        raise HightouchMalformedAnswer("the answer is not an object")
    return _identifier(data.get("id"), "run id")


def retry_after_seconds(response: httpx.Response | None) -> float | None:
    """Retry-After in seconds from now: delta seconds (fractions allowed) or an HTTP date.

    None when absent or unusable (negative, not finite, not a number nor a date): the caller
    then backs off on its own schedule, as if the header were not there.
    """
    header = (response.headers.get("Retry-After") or "").strip() if response is not None else ""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        parsed = email.utils.parsedate_to_datetime(header)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return max(parsed.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError, OSError, AttributeError):
        return None


def retry_delay(attempt: int, response: httpx.Response | None, *, base: float, cap: float) -> float:
    """Seconds to wait before retry `attempt` (1-based): a usable Retry-After, else backoff.

    Backoff is exponential with full jitter, so many clients throttled together do not retry in
    lockstep.
    """
    honoured = retry_after_seconds(response)
    if honoured is not None:
        return min(honoured, cap)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


# Hightouch answers 429 past 200 requests per 10 s per workspace: budgets are counted per window.
RATE_LIMIT_WINDOW_SECONDS = 10.0
# Share of a client's window budget it may spend at once: a sync step's first requests (the
# contract's read of the sync, the run history, the trigger) then go without waiting.
BURST_SHARE = 0.1


@dataclass
class RequestBudget:
    """At most `per_window` requests in any `window` seconds (one more at the window's edges, as
    with plain spacing), up to `burst` of them at once: the generic cell rate algorithm, a token
    bucket holding `burst` tokens that refills at (per_window + 1 - burst) / window per second, so
    a full burst and a window's refill add up to the window's share and no more.

    Hightouch counts requests per window, not their spacing: a step that spends its burst first
    and then polls keeps to the same limit as one that spaces every request evenly."""

    per_window: float
    window: float = RATE_LIMIT_WINDOW_SECONDS
    burst: int = 1
    _theoretical_arrival: float = field(default=0.0, repr=False)

    @classmethod
    def for_share(
        cls, requests_per_second: float, window: float = RATE_LIMIT_WINDOW_SECONDS
    ) -> RequestBudget | None:
        """The budget of `requests_per_second` counted over `window`; None for no limit."""
        if requests_per_second <= 0:
            return None
        per_window = requests_per_second * window
        burst = max(1, math.floor(per_window * BURST_SHARE))
        return cls(per_window=per_window, window=window, burst=burst)

    @property
    def interval(self) -> float:
        """Seconds between two requests once the burst is spent (1 / rate for a burst of one)."""
        return self.window / (self.per_window + 1 - self.burst)

    def take(self, sleep: Callable[[float], None]) -> None:
        """Wait (with `sleep`) until one more request conforms, then account for it."""
        interval = self.interval
        tolerance = (self.burst - 1) * interval
        now = time.monotonic()
        wait = self._theoretical_arrival - tolerance - now
        if wait > 0:
            sleep(wait)
            now = max(time.monotonic(), now + wait)  # a test's sleep may not pass time
        self._theoretical_arrival = max(now, self._theoretical_arrival) + interval


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
        self._budget = RequestBudget.for_share(max_requests_per_second)
        # (sync, run) -> monotonic time of the trigger, until the run's first read
        self._triggered_at: dict[tuple[str, str], float] = {}
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
        """Wait until the budget allows a request, then count the request about to be made."""
        if self._budget is not None:
            self._budget.take(self._sleep)
        self.request_count += 1

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        parse: Callable[[Any], _T],
        before_retry: Callable[[], _T | None] | None = None,
        **kwargs: Any,
    ) -> _T:
        """One API call with retries; `what` names the call in errors ("trigger sync 101").

        `parse` turns the JSON answer into the result; `HightouchMalformedAnswer` there (or one
        of `_PARSE_SLIPS`) counts as a malformed answer, retried. `before_retry`, when given, runs
        before every retry and ends the call with its result when that is not None.
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
            except httpx.RequestError as error:
                # TransportError, and DecodingError for a body that does not match its encoding.
                last_problem = f"{type(error).__name__}"
            else:
                if response.status_code < 400:
                    try:
                        return parse(response.json())
                    except (HightouchMalformedAnswer, *_PARSE_SLIPS) as error:
                        why = f": {error}" if isinstance(error, HightouchMalformedAnswer) else ""
                        last_problem = f"HTTP {response.status_code} with a malformed answer{why}"
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
        raise HightouchUnavailable(
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
            answer = response.json()
        except ValueError:
            answer = None
        message = answer.get("message") if isinstance(answer, Mapping) else None
        detail = str(message)[:200] if message else response.text[:200]
        return f"Hightouch {what}: HTTP {response.status_code} ({detail}); {hint}"

    # -- API --------------------------------------------------------------------------------------

    def resolve_sync_id(self, sync_slug: str) -> str:
        """The id of the sync with this slug (runs are read by sync id)."""

        def parse(data: object) -> str | None:
            matches = [s for s in _items(data, "sync") if s.get("slug") == sync_slug]
            return _identifier(matches[0].get("id"), "sync id") if matches else None

        sync_id = self._request(
            "GET", "/syncs", params={"slug": sync_slug}, what=f"find {sync_slug}", parse=parse
        )
        if sync_id is None:
            raise HightouchRequestRefused(
                f"Hightouch has no sync with slug {sync_slug!r}; check sync_slug in "
                "destinations.yaml"
            )
        return sync_id

    def get_sync(self, sync_id: str) -> HightouchSync:
        """The sync as Hightouch holds it now: its field mappings, referenced columns and
        primary key (`GET /syncs/{id}`), which can differ from destinations.yaml once someone
        edits the sync in Hightouch's UI."""
        return self._request(
            "GET", f"/syncs/{sync_id}", what=f"read sync {sync_id}", parse=HightouchSync.from_api
        )

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
            run_id = self._request(
                "POST",
                f"/syncs/{sync_id}/trigger",
                json=body,
                what=what,
                parse=_trigger_answer,
                before_retry=adopt_started_run,
            )
        except HightouchRequestRefused:
            raise
        except HightouchError as error:
            adopted = adopt_started_run()
            if adopted is None:
                raise HightouchUnavailable(f"{error}; no run of the sync was started") from None
            run_id = adopted
        self._triggered_at[(sync_id, run_id)] = time.monotonic()
        return run_id

    def recent_runs(self, sync_id: str, *, limit: int = 5) -> list[SyncRun]:
        """The sync's newest runs, newest first (an empty list is a valid answer)."""
        runs: list[SyncRun] = self._request(
            "GET",
            f"/syncs/{sync_id}/runs",
            params={"limit": limit, "orderBy": "createdAt"},
            what=f"list runs of sync {sync_id}",
            parse=lambda data: [SyncRun.from_api(sync_id, item) for item in _items(data, "run")],
        )
        return sorted(runs, key=lambda run: run.created_at or "", reverse=True)

    def first_read(self, sync_id: str, run_id: str) -> list[SyncRun]:
        """The sync's newest runs (`HISTORY_RUNS`: the run and the history that says how long a
        run of this sync takes), read as the first read of a run's wait: no sooner than half a
        poll interval after this client triggered it, at once for a run it did not trigger or
        has read before (the trigger time is taken out here: it serves one read).

        A run read in the instant it was triggered has not moved; reading it half an interval
        later loses nothing, and the doubling poll that follows (when the sync has no history)
        then lands its reads at 0.75, 1.75, 3.75 s rather than 0.5, 1.5, 3.5 s: over run lengths
        spread from 0.3 s to 2 minutes, ends are noticed slightly sooner at slightly fewer reads.
        """
        triggered = self._triggered_at.pop((sync_id, run_id), None)
        if triggered is not None:
            wait = triggered + self.poll_interval / 2 - time.monotonic()
            if wait > 0:
                self._sleep(wait)
        return self.recent_runs(sync_id, limit=HISTORY_RUNS)

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

        def parse(data: object) -> SyncRun | None:
            runs = [SyncRun.from_api(sync_id, item) for item in _items(data, "run")]
            return next((run for run in runs if run.id == run_id), None)

        return self._request(
            "GET",
            f"/syncs/{sync_id}/runs",
            params={"runId": run_id},
            what=f"read run {run_id} of sync {sync_id}",
            parse=parse,
        )

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
        history: Sequence[SyncRun] | None = None,
    ) -> SyncRun:
        """Poll until the run ends; raises when it fails or the timeout passes.

        `history`: the sync's newest runs as the caller just read them (`recent_runs` with
        `HISTORY_RUNS`), used as the first read instead of asking again.

        Polling adapts: it starts every `poll_interval` seconds and doubles up to
        `max_poll_interval` while nothing is known of the run's progress. Once Hightouch reports a
        completion ratio, the end is estimated from the progress rate and the next read is placed
        just before it, so a finished run is noticed quickly with few requests. A run reporting no
        progress is expected to end as long after its `startedAt` as the sync's recent successful
        runs took (read from the same first request, the sync's newest runs): reads are sparse
        before that window and every `WINDOW_STEP` seconds inside it.
        """
        # Unset: the client's own settings (the resource passes them in).
        poll_timeout = self.poll_timeout if poll_timeout is None else poll_timeout
        deadline = time.monotonic() + poll_timeout
        schedule = PollSchedule(
            self.poll_interval if poll_interval is None else poll_interval,
            self.max_poll_interval if max_poll_interval is None else max_poll_interval,
        )
        warned_statuses: set[str] = set()
        # The first read lists the sync's newest runs: ours, and the history that says how long
        # a run of this sync takes (one request for both; our run alone if it is not listed).
        if history is None:
            history = self.first_read(sync_id, run_id)
        run = next((r for r in history if r.id == run_id), None)
        if run is None:
            run = self.get_run(sync_id, run_id)
        while True:
            if run is not None and not run.finished and not schedule.expects_end:
                expected = expected_end(run, history, time.time())
                if expected is not None:
                    now = time.monotonic()
                    schedule.expect_end(now + expected[0], now + expected[1])
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
            elapsed = seconds_since_start(run, time.time()) if run is not None else None
            self._sleep(min(schedule.next_delay(time.monotonic(), ratio, elapsed), remaining))
            run = self.get_run(sync_id, run_id)


HISTORY_RUNS = 6
"""Runs listed by the first read of a wait: ours and the sync's recent ones, whose durations say
when a run reporting no progress should end."""
WINDOW_STEP = 0.8
"""Seconds between reads inside a run's expected end window: the end is noticed within it."""
_LAND_AFTER = 0.2


def seconds_since_start(run: SyncRun, now: float) -> float | None:
    """How long `run` has been going at `now` (epoch): since its `startedAt` (else `createdAt`);
    None when it has neither. A clock ahead of Hightouch's must not put the start in the future,
    so never negative."""
    started = parse_api_time(run.started_at) or parse_api_time(run.created_at)
    return None if started is None else max(0.0, now - started.timestamp())


def expected_end(
    run: SyncRun, history: Sequence[SyncRun], now: float
) -> tuple[float, float] | None:
    """Seconds from `now` (epoch) to the earliest and latest expected end of `run`: its
    `startedAt` (else `createdAt`) plus the shortest and longest of the other successful runs in
    `history`; None when either is unknown. Negative when the window is already past."""
    elapsed = seconds_since_start(run, now)
    if elapsed is None:
        return None
    durations = []
    for other in history:
        if other.id == run.id or other.status not in TERMINAL_SUCCESS:
            continue
        began, ended = parse_api_time(other.started_at), parse_api_time(other.finished_at)
        if began is not None and ended is not None and ended >= began:
            durations.append((ended - began).total_seconds())
    if not durations:
        return None
    return min(durations) - elapsed, max(durations) - elapsed


class PollSchedule:
    """Delays between reads of a running sync run.

    With an expected end window (`expect_end`, from the sync's recent run durations) and no
    progress information, the next read lands just after the window opens (at most `maximum`
    away), reads inside it come every `WINDOW_STEP` seconds, and past it the delay grows by half
    each read up to `maximum`. So a silent run ending as its predecessors did is noticed within
    a second, at fewer reads than a fixed 3 s poll.

    Without either the delay doubles from `minimum` to `maximum`. Once the
    completion ratio rises, a second reading a second later (sooner when the pace since the run's
    `startedAt` says a short run ends before that) gives the rate, the remaining time is
    extrapolated from the last two readings, and the next read lands just after the estimated
    end, so a steadily progressing run is noticed within a second of its end in a handful of
    reads; a run that is not done by then is read every `minimum` seconds, re-estimated.
    """

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = max(minimum, 0.0)
        self.maximum = max(maximum, self.minimum)
        self._delay = self.minimum
        self._readings: list[tuple[float, float]] = []
        self._window: tuple[float, float] | None = None
        self._late_delay = WINDOW_STEP

    @property
    def expects_end(self) -> bool:
        return self._window is not None

    def expect_end(self, earliest: float, latest: float) -> None:
        """The run should end between these two instants (same clock as `next_delay`'s `now`)."""
        self._window = (earliest, max(earliest, latest))

    def next_delay(self, now: float, ratio: float, elapsed: float | None = None) -> float:
        """Seconds until the next read; `elapsed`: how long the run has been going
        (`seconds_since_start`; None when unknown)."""
        if 0 < ratio < 1 and (not self._readings or ratio > self._readings[-1][1]):
            self._readings.append((now, ratio))
            if len(self._readings) == 1:
                # Progress has started: a second reading soon gives the rate.
                second = min(self.maximum, max(self.minimum, 1.0))
                if elapsed is not None and elapsed > 0:
                    # At the pace since its start the run may end before that second reading
                    # (a short run): read just after that end instead. A run that started slow
                    # is only read once more, early, which then serves as the second reading.
                    projected = (1 - ratio) * elapsed / ratio + _LAND_AFTER
                    return min(second, max(_LAND_AFTER, projected))
                return second
        if len(self._readings) >= 2:
            (t0, r0), (t1, r1) = self._readings[-2], self._readings[-1]
            remaining = (1 - r1) * (t1 - t0) / (r1 - r0) - (now - t1)
            # Read just after the estimated end; the cap bounds the cost of a wrong estimate
            # on long runs, where every read refreshes it.
            return min(self.maximum, max(self.minimum, remaining + 0.2))
        if self._window is not None:
            earliest, latest = self._window
            if now < earliest:
                return min(self.maximum, earliest - now + _LAND_AFTER)
            if now <= latest + _LAND_AFTER:
                return WINDOW_STEP
            # Later than every recent run: back off, as without an estimate.
            delay, self._late_delay = self._late_delay, min(self.maximum, self._late_delay * 1.5)
            return min(self.maximum, delay)
        delay = self._delay
        self._delay = min(self.maximum, max(self._delay * 2, 0.05))
        return delay


def parse_api_time(value: str | None) -> datetime | None:
    """An ISO-8601 timestamp as Hightouch sends it ("...Z"), in UTC; None when absent or bad."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
