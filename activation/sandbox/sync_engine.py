"""The Hightouch run engine: one queue and one worker thread per sync, runs through real phases.

A trigger appends a queued run to its sync's queue. The sync's worker takes runs strictly one
after the other (a trigger during a run waits behind it, as in Hightouch); different syncs run in
parallel. Each run goes querying -> processing -> reporting, each phase lasting at least
`phase_seconds`, and ends success, warning (some rows rejected) or failed (the run could not run):

- querying: copy the mart from the warehouse and plan the diff (`sync_plan`);
- processing: send upserts and deletes to the CRM stand-in in that API's batch size;
- reporting: move the snapshot forward for the rows that went through.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from activation.destinations import Destination
from activation.sandbox import sync_plan
from activation.sandbox.context import SandboxStore
from activation.sandbox.crm import CrmStandIns, RecordResult
from activation.sandbox.sync_plan import OPERATIONS, RunFailedError, SyncTables
from activation.sandbox.warehouse import MartUnavailableError, copy_mart

logger = logging.getLogger(__name__)
RESET_WAIT_SECONDS = 30.0


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
        warehouse_path: Path,
        phase_seconds: float,
        syncs: Mapping[str, Destination],
    ) -> None:
        self._store = store
        self._crm = crm
        self._warehouse_path = warehouse_path
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
        with self._lock:
            run = Run(
                id=str(next(self._run_ids)),
                sync_id=sync_id,
                created_at=datetime.now(UTC),
                full_resync=full_resync,
                reset_cdc=reset_cdc,
                generation=self._generation,
            )
            self._runs[sync_id].append(run)
            self._triggers[sync_id] += 1
        self._workers[sync_id].submit(run)
        return run.id

    def runs(self, sync_id: str) -> list[dict[str, Any]]:
        """The sync's runs as API objects, oldest first."""
        with self._lock:
            return [run.to_api() for run in self._runs[sync_id]]

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
            failed_ids, first_error = self._deliver(run, destination)
        with self._phase(run, "reporting"), self._store.cursor() as cursor:
            sync_plan.update_snapshot(cursor, destination, failed_ids, full_resync=run.full_resync)
        self._finish(run, *self._outcome(run, first_error))

    def _query(self, run: Run, destination: Destination) -> None:
        size = copy_mart(
            self._store,
            self._warehouse_path,
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
        done = 0
        failed_ids: list[str] = []
        first_error: str | None = None
        for operation in OPERATIONS:
            with self._store.cursor() as cursor:
                records = sync_plan.planned_records(cursor, destination, operation)
            for start in range(0, len(records), limit):
                self._check(run)
                results = self._send(destination, operation, records[start : start + limit])
                rejected = [result for result in results if not result.ok]
                failed_ids.extend(result.id for result in rejected)
                first_error = first_error or next((r.error for r in rejected), None)
                done += len(results)
                with self._lock:
                    _count(run.successful, operation, len(results) - len(rejected))
                    _count(run.failed, operation, len(rejected))
                    run.completion_ratio = round(done / total, 4)
        return failed_ids, first_error

    def _send(
        self, destination: Destination, operation: str, records: list[dict[str, Any]]
    ) -> list[RecordResult]:
        kind, object_name = destination.destination_type, destination.object
        if operation == "removed":
            return self._crm.delete(kind, object_name, [record["id"] for record in records])
        return self._crm.upsert(kind, object_name, records)

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
        if self._stopping.is_set() or run.generation != self._generation:
            raise _Interrupted()

    def _update(self, run: Run, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(run, name, value)

    def _finish(self, run: Run, status: str, error: str | None) -> None:
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
