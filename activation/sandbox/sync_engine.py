"""The Hightouch run engine: one queue and one worker thread per sync, runs through real phases.

A trigger appends a queued run to its sync's queue. The sync's worker takes runs strictly one
after the other (a trigger during a run waits behind it, as in Hightouch); different syncs run in
parallel. Each run goes querying -> processing -> reporting, each phase lasting at least
`phase_seconds`, and ends success, warning (some rows rejected) or failed (the run could not run):

- querying: copy the mart from the warehouse and plan the diff (`sync_plan`);
- processing: send upserts and deletes to the CRM stand-in in that API's batch size;
- reporting: move the snapshot forward for the rows that went through.

A CRM call answered 429 or 5xx is retried (`CRM_ATTEMPTS` in all) before the run fails, as
Hightouch retries destination errors. Injected run faults (`fault_specs.RunFault`, taken when the
run is triggered) can hold a run in `processing`, end it early with a chosen status, make the
destination reject a share of rows, or report an unknown status for a few polls.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from activation.lib.destinations import Destination
from activation.sandbox import sync_plan
from activation.sandbox.context import SandboxStore
from activation.sandbox.crm import CrmStandIns, DestinationUnavailableError, RecordResult
from activation.sandbox.fault_specs import RunFault
from activation.sandbox.faults import FaultRegistry
from activation.sandbox.sync_plan import OPERATIONS, RunFailedError, SyncTables
from activation.sandbox.warehouse import MartUnavailableError, Warehouse

logger = logging.getLogger(__name__)
RESET_WAIT_SECONDS = 30.0
CRM_ATTEMPTS = 3
CRM_RETRY_SECONDS = 0.05
UNKNOWN_STATUS_MAX_SECONDS = 300.0
"""An unknown status nobody polls gives way to the real outcome after this long."""
HELD_RUN_PROGRESS = 0.99
"""The completion ratio a held run reaches by the end of its hold; delivery does the rest. Near 1,
so the ratio rises steadily over the whole run, as a client extrapolating it would expect."""
INJECTED_REJECTION = "INJECTED_REJECTION: the destination rejected this record (sandbox fault)"
DELIVERED_SAMPLE_ROWS = 50
"""Rows a run keeps of what the CRM accepted from it (the run page shows them); the total is
`successful.total`."""


def iso_timestamp(moment: datetime | None) -> str | None:
    """Hightouch's timestamp format: `2022-02-08T16:11:04.712Z`."""
    if moment is None:
        return None
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


@dataclass
class RowCounts:
    added: int = 0
    changed: int = 0
    removed: int = 0

    @property
    def total(self) -> int:
        return self.added + self.changed + self.removed

    def to_api(self) -> dict[str, int]:
        return {
            "addedCount": self.added,
            "changedCount": self.changed,
            "removedCount": self.removed,
        }


@dataclass(frozen=True)
class DeliveredRow:
    """A record the CRM stand-in accepted in a run: its operation, key and mapped fields (none
    for a removal)."""

    operation: str
    id: str
    fields: Mapping[str, Any]


@dataclass
class Run:
    """One sync run; mutated by its worker under the engine lock, read through `to_api`."""

    id: str
    sync_id: str
    created_at: datetime
    full_resync: bool
    reset_cdc: bool
    generation: int
    status: str = "queued"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    query_size: int = 0
    completion_ratio: float = 0.0
    error: str | None = None
    planned: RowCounts = field(default_factory=RowCounts)
    successful: RowCounts = field(default_factory=RowCounts)
    failed: RowCounts = field(default_factory=RowCounts)
    fault: RunFault | None = None
    unknown_reads_left: int = 0
    delivered: list[DeliveredRow] = field(default_factory=list)
    """The first `DELIVERED_SAMPLE_ROWS` records the CRM accepted, in delivery order."""

    def to_api(self) -> dict[str, Any]:
        """The SyncRun object of the Hightouch API."""
        return {
            "id": self.id,
            "createdAt": iso_timestamp(self.created_at),
            "startedAt": iso_timestamp(self.started_at),
            "finishedAt": iso_timestamp(self.finished_at),
            "querySize": self.query_size,
            "status": self.status,
            "completionRatio": self.completion_ratio,
            "error": self.error,
            "plannedRows": self.planned.to_api(),
            "successfulRows": self.successful.to_api(),
            "failedRows": self.failed.to_api(),
        }


class _Interrupted(Exception):
    """A reset or the server's shutdown stopped the run."""


class _InjectedEnd(Exception):
    """An injected fault ends the run early with this status and error."""

    def __init__(self, status: str, error: str | None) -> None:
        super().__init__(error)
        self.status, self.error = status, error


class _SyncWorker:
    """The queue and daemon thread of one sync: its runs execute one at a time, in order."""

    def __init__(
        self, sync_id: str, execute: Callable[[Run], None], stopping: threading.Event
    ) -> None:
        self._queue: deque[Run] = deque()
        self._wakeup = threading.Condition()
        self._execute = execute
        self._stopping = stopping
        self.busy = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop, name=f"hightouch-sync-{sync_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, run: Run) -> None:
        with self._wakeup:
            self._queue.append(run)
            self._wakeup.notify()

    def clear(self) -> None:
        with self._wakeup:
            self._queue.clear()

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping.is_set():
                    self._wakeup.wait()
                if self._stopping.is_set():
                    return
                run = self._queue.popleft()
            with self.busy:
                self._execute(run)


class SyncEngine:
    """Runs of the declared syncs. `syncs` maps each Hightouch sync id to its destination."""

    def __init__(
        self,
        store: SandboxStore,
        crm: CrmStandIns,
        warehouse: Warehouse,
        phase_seconds: float,
        syncs: Mapping[str, Destination],
        faults: FaultRegistry | None = None,
    ) -> None:
        self._faults = faults
        self._store = store
        self._crm = crm
        self._warehouse = warehouse
        self._phase_seconds = phase_seconds
        self._syncs = dict(syncs)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._generation = 0
        self._run_ids = itertools.count(1)
        self._runs: dict[str, list[Run]] = {sync_id: [] for sync_id in self._syncs}
        self._triggers: Counter[str] = Counter()
        self._workers = {
            sync_id: _SyncWorker(sync_id, self._execute, self._stopping) for sync_id in self._syncs
        }
        for worker in self._workers.values():
            worker.start()

    # -- what the API reads and does ------------------------------------------------------------

    def trigger(self, sync_id: str, *, full_resync: bool = False, reset_cdc: bool = False) -> str:
        """Queue a run of the sync; returns its id."""
        fault = self._faults.take_run(sync_id) if self._faults else None
        with self._lock:
            run = Run(
                id=str(next(self._run_ids)),
                sync_id=sync_id,
                created_at=datetime.now(UTC),
                full_resync=full_resync,
                reset_cdc=reset_cdc,
                generation=self._generation,
                fault=fault,
            )
            self._runs[sync_id].append(run)
            self._triggers[sync_id] += 1
        self._workers[sync_id].submit(run)
        return run.id

    def runs(self, sync_id: str, *, polled: bool = False) -> list[dict[str, Any]]:
        """The sync's runs as API objects, oldest first. `polled`: a client reads the runs
        list, which counts down a run's injected unknown status."""
        with self._lock:
            if polled:
                for run in self._runs[sync_id]:
                    showing = run.fault is not None and run.status == run.fault.unknown_status
                    if showing and run.unknown_reads_left:
                        run.unknown_reads_left -= 1
            return [run.to_api() for run in self._runs[sync_id]]

    def run_records(self, sync_id: str) -> list[Run]:
        """Copies of the sync's runs, oldest first, delivered rows included (for the app pages);
        an unknown sync has none."""
        with self._lock:
            return copy.deepcopy(self._runs.get(sync_id, []))

    def trigger_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._triggers)

    def reset(self) -> None:
        """Forget runs, trigger counts and snapshots; an in-flight run stops at its next step."""
        with self._lock:
            self._generation += 1
            for worker in self._workers.values():
                worker.clear()
            for runs in self._runs.values():
                runs.clear()
            self._triggers.clear()
        for worker in self._workers.values():
            if worker.busy.acquire(timeout=RESET_WAIT_SECONDS):
                worker.busy.release()
        with self._store.cursor() as cursor:
            for destination in self._syncs.values():
                sync_plan.drop_tables(cursor, destination)

    def shutdown(self) -> None:
        self._stopping.set()
        for worker in self._workers.values():
            worker.wake()
        for worker in self._workers.values():
            worker.join(timeout=5)

    # -- one run --------------------------------------------------------------------------------

    def _execute(self, run: Run) -> None:
        destination = self._syncs[run.sync_id]
        try:
            self._run_phases(run, destination)
        except (RunFailedError, MartUnavailableError) as error:
            self._finish(run, "failed", str(error))
        except _InjectedEnd as end:
            self._finish(run, end.status, end.error)
        except _Interrupted:
            self._finish(run, "interrupted", "the run was interrupted (sandbox reset or shutdown)")
        except Exception as error:  # a bug in the stand-in: make it visible on the run
            logger.exception("Hightouch stand-in: run %s of sync %s crashed", run.id, run.sync_id)
            self._finish(run, "failed", f"internal error: {type(error).__name__}: {error}")

    def _run_phases(self, run: Run, destination: Destination) -> None:
        with self._phase(run, "querying"):
            self._query(run, destination)
        if run.reset_cdc:
            with self._phase(run, "reporting"), self._store.cursor() as cursor:
                sync_plan.rebaseline(cursor, destination)
            self._finish(run, "success", None)
            return
        with self._phase(run, "processing"):
            self._hold(run)
            if run.fault is not None and run.fault.ends_early:
                raise _InjectedEnd(str(run.fault.outcome), run.fault.run_error)
            failed_ids, first_error = self._deliver(run, destination)
        with self._phase(run, "reporting"), self._store.cursor() as cursor:
            sync_plan.update_snapshot(cursor, destination, failed_ids, full_resync=run.full_resync)
        status, error = self._outcome(run, first_error)
        if run.fault is not None and run.fault.outcome == "warning" and status == "success":
            status, error = "warning", run.fault.run_error
        self._finish(run, status, error)

    def _query(self, run: Run, destination: Destination) -> None:
        size = self._warehouse.copy_mart(
            self._store,
            destination.mart,
            key=destination.primary_key,
            columns=destination.mapped_columns,
            into=SyncTables.of(destination).current,
        )
        self._update(run, query_size=size)
        with self._store.cursor() as cursor:
            sync_plan.check_primary_key(cursor, destination)
            if run.reset_cdc:
                return
            counts = sync_plan.plan(cursor, destination, full_resync=run.full_resync)
        self._update(run, planned=RowCounts(**counts))

    def _deliver(self, run: Run, destination: Destination) -> tuple[list[str], str | None]:
        """Send the plan in batches; returns the rejected keys and the first rejection reason."""
        limit = self._crm.batch_limit(destination.destination_type)
        total = max(run.planned.total, 1)
        rejected_positions = run.fault.rejected_positions(run.planned.total) if run.fault else ()
        done = 0
        failed_ids: list[str] = []
        first_error: str | None = None
        for operation in OPERATIONS:
            with self._store.cursor() as cursor:
                records = sync_plan.planned_records(cursor, destination, operation)
            for start in range(0, len(records), limit):
                self._check(run)
                batch: list[dict[str, Any]] = []
                injected: list[RecordResult] = []  # rejected rows never reach the CRM stand-in
                for position, record in enumerate(records[start : start + limit], start=done):
                    if position in rejected_positions:
                        injected.append(
                            RecordResult(str(record["id"]), ok=False, error=INJECTED_REJECTION)
                        )
                    else:
                        batch.append(record)
                results = self._send(run, destination, operation, batch) if batch else []
                results = results + injected
                rejected = [result for result in results if not result.ok]
                accepted = [
                    DeliveredRow(
                        operation,
                        str(record["id"]),
                        {} if operation == "removed" else dict(record["fields"]),
                    )
                    # the CRM answers batch records in order; injected rejections come after
                    for record, result in zip(batch, results[: len(batch)], strict=True)
                    if result.ok
                ]
                failed_ids.extend(result.id for result in rejected)
                first_error = first_error or next((r.error for r in rejected), None)
                done += len(results)
                with self._lock:
                    _count(run.successful, operation, len(results) - len(rejected))
                    _count(run.failed, operation, len(rejected))
                    room = DELIVERED_SAMPLE_ROWS - len(run.delivered)
                    run.delivered.extend(accepted[: max(room, 0)])
                    # max: a held run already reported progress; the ratio never goes back
                    run.completion_ratio = max(run.completion_ratio, round(done / total, 4))
        return failed_ids, first_error

    def _send(
        self, run: Run, destination: Destination, operation: str, records: list[dict[str, Any]]
    ) -> list[RecordResult]:
        """One batch to the CRM; 429 and 5xx answers are retried, then fail the run."""
        kind, object_name = destination.destination_type, destination.object
        for attempt in range(1, CRM_ATTEMPTS + 1):
            try:
                if operation == "removed":
                    return self._crm.delete(kind, object_name, [r["id"] for r in records])
                return self._crm.upsert(kind, object_name, records)
            except DestinationUnavailableError as error:
                if not error.retryable or attempt == CRM_ATTEMPTS:
                    tries = f" on {attempt} attempts" if error.retryable else ""
                    raise RunFailedError(
                        f"DESTINATION_ERROR: {error}{tries} for a batch of {len(records)} "
                        f"{operation} {object_name} records; the run stopped"
                    ) from error
                self._stopping.wait(CRM_RETRY_SECONDS * 2 ** (attempt - 1))
                self._check(run)
        raise AssertionError("unreachable")

    @staticmethod
    def _outcome(run: Run, first_error: str | None) -> tuple[str, str | None]:
        failed = run.failed.total
        if not failed:
            return "success", None
        if not run.successful.total:
            return "failed", f"all {failed} rows were rejected by the destination ({first_error})"
        return (
            "warning",
            f"{failed} of {run.planned.total} rows were rejected by the destination; "
            f"they are retried on the next run (first: {first_error})",
        )

    # -- run state and timing -------------------------------------------------------------------

    @contextmanager
    def _phase(self, run: Run, status: str) -> Iterator[None]:
        """Enter a phase; it lasts at least `phase_seconds` unless it fails."""
        self._check(run)
        began = time.monotonic()
        if status == "querying":
            self._update(run, status=status, started_at=datetime.now(UTC))
        else:
            self._update(run, status=status)
        yield
        remaining = began + self._phase_seconds - time.monotonic()
        if remaining > 0:
            self._stopping.wait(remaining)
        self._check(run)

    def _check(self, run: Run) -> None:
        if self._stale(run):
            raise _Interrupted()

    def _stale(self, run: Run) -> bool:
        return self._stopping.is_set() or run.generation != self._generation

    def _hold(self, run: Run) -> None:
        """An injected long run: stay in the current phase for `running_seconds`, the completion
        ratio rising to `HELD_RUN_PROGRESS` (unless the fault hides progress)."""
        seconds = run.fault.running_seconds if run.fault else 0.0
        ends = time.monotonic() + seconds
        while (left := ends - time.monotonic()) > 0:
            self._stopping.wait(min(left, 0.1))
            self._check(run)
            if run.fault is not None and run.fault.report_progress:
                progress = HELD_RUN_PROGRESS * (1 - max(ends - time.monotonic(), 0) / seconds)
                self._update(run, completion_ratio=round(progress, 4))

    def _report_unknown_status(self, run: Run) -> None:
        """An injected unknown status, shown for a number of polls before the real outcome."""
        fault = run.fault
        if fault is None or fault.unknown_status is None or self._stale(run):
            return
        self._update(run, status=fault.unknown_status, unknown_reads_left=fault.unknown_polls)
        gives_up = time.monotonic() + UNKNOWN_STATUS_MAX_SECONDS
        while run.unknown_reads_left > 0 and not self._stale(run) and time.monotonic() < gives_up:
            self._stopping.wait(0.01)

    def _update(self, run: Run, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(run, name, value)

    def _finish(self, run: Run, status: str, error: str | None) -> None:
        self._report_unknown_status(run)
        ratio = 1.0 if status in ("success", "warning") else run.completion_ratio
        self._update(
            run,
            status=status,
            error=error,
            finished_at=datetime.now(UTC),
            completion_ratio=ratio,
        )


def _count(counts: RowCounts, operation: str, value: int) -> None:
    setattr(counts, operation, getattr(counts, operation) + value)
