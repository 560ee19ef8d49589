"""Following Hightouch runs that no worker waits for: the other half of a detached wait.

A sync step whose destination waits detached (`wait` in destinations.yaml) goes through the one
sync path (gate, pool, contract, trigger once or re-attach) and then, instead of polling the run
to its end, records it as in flight and ends. The record is a trigger mark in Dagster's own event
log (`activation_trigger: detached` on an `AssetObservation` of the sync asset, with the Hightouch
sync and run ids, the triggering Dagster run and the metadata the materialization must carry),
so it survives a daemon restart on any instance storage (SQLite, PostgreSQL), and nothing else
holds state that matters.

`follow_in_flight` (called by `detached_sync_sensor`, activation/defs/triggers/detached_syncs.py,
every tick) reads every in-flight run once, within a request budget (the oldest-read first; the
rest next tick), and for each run that ended returns the events the step would have recorded:

- the sync asset's materialization, with the attached path's metadata (`sync_run_metadata`, the
  pre-sync decisions' `record_on_success`, `sync_stage`) plus `dagster_run_id` of the triggering
  run, when the run succeeded within its failure policy (or over it with `on_exceed: warn`);
- the sync asset's `failed_rows` check evaluation, always, last;
- on the first report of a run: the synced snapshot for the guards, the resolve of the owner's
  gate page, one Slack summary, the owner's page when the run failed in Hightouch or broke an
  `on_exceed: fail` policy (no materialization then), and the `activation_report` statuses.

Exactly once, whatever restarts: each ended run is reported as one block of events, in this
order: its materialization (when it has one), its `failed_rows` evaluation, and a `reported` mark
(`activation_trigger: reported` on the sync asset, with the run id). A run is in flight until
the event log holds its `reported` mark or its `failed_rows` evaluation (read from Dagster's
asset-check history, which keeps the latest sensor-made evaluation of each check; a `reported`
mark is written back for one found there without it), and each event is only returned when the
event log does not hold it yet, matched by Hightouch run id. So a tick that is evaluated again,
or a daemon killed before or while storing a tick's events, reports what is missing and nothing
twice. A page or Slack summary may be sent again after such a crash: a page carries the same
PagerDuty dedup key, so the incident is the same one.

What the event log is trusted for: anyone with the webserver can record runless events (its
`/report_asset_*` endpoints), so a forged `detached` mark could make the follower report a run
and rewrite the guards' baseline, and a forged `reported` mark, `failed_rows` evaluation or
materialization could make it skip a real run's report and page. So a `detached` mark counts
only when written inside an existing Dagster run, and a runless event counts only when it
carries the follower's HMAC-SHA256 signature (`activation.core.ledger_signature`, keyed by a key
derived from the Hightouch API token); events written inside a run count as they are. Rotating
the token voids the old signatures: a run whose `reported` mark is not yet behind the sensor's
cursor is reported again (its page keeps its dedup key, so it updates the same incident).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from activation.core import ledger_signature as ledger
from activation.core.event_log import metadata_text, records_after
from activation.core.guards import record_synced_snapshot
from activation.core.ledger_signature import LedgerSigner
from activation.core.paging import GatePager, page_sync_failure, resolve_page, sync_failure_key
from activation.core.run_summary import (
    REPORT_KEY,
    outcome_from_metadata,
    previous_statuses,
    summary_table,
)
from activation.core.sync_path import (
    DETACHED,
    REPORTED,
    TRIGGER_MARK,
    failed_rows_verdict,
    sync_run_metadata,
)
from activation.core.verdicts import FAILED_ROWS_CHECK
from activation.dagster_api import check_history
from activation.lib.destinations import Destination, sync_asset_key_for
from activation.lib.hightouch import TERMINAL_FAILURE, HightouchClient, HightouchError, SyncRun
from activation.lib.notify import NotificationError, SyncOutcome, sync_summary_message
from activation.resources import PagerDutyResource, SlackWebhookResource

# Metadata of a detached mark that is the record's own, not the materialization's to carry.
_MARK_ONLY = frozenset(
    {TRIGGER_MARK, "dagster_run_family", "detached_at", "detached_because", "destination"}
)
AssetEvent = dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation
Log = logging.Logger | dg.DagsterLogManager


@dataclass(frozen=True)
class InFlight:
    """One Hightouch run a step left in flight, as its detached mark records it."""

    destination: Destination
    storage_id: int
    sync_id: str
    run_id: str
    run_family: str
    dagster_run_id: str
    carried: Mapping[str, dg.MetadataValue]
    """What the sync's materialization carries besides the run's own metadata."""

    @property
    def key(self) -> dg.AssetKey:
        return sync_asset_key_for(self.destination.key)


@dataclass(frozen=True)
class Ended:
    """An in-flight run found ended, and what was reported for it this time."""

    record: InFlight
    run: SyncRun
    outcome: SyncOutcome
    first_report: bool


@dataclass
class FollowResult:
    events: list[AssetEvent] = field(default_factory=list)
    """For the sensor's `SensorResult(asset_events=...)` (or `report_runless_asset_event`)."""
    ended: list[Ended] = field(default_factory=list)
    in_flight: list[InFlight] = field(default_factory=list)
    """Still in flight after this pass, including those not read (over the budget)."""
    deferred: int = 0
    """In-flight runs not read this pass: over the request budget; read first next pass."""
    checked: dict[str, float] = field(default_factory=dict)
    """Hightouch run id -> when it was last read (for the sensor's cursor)."""
    after: dict[str, int] = field(default_factory=dict)
    """Destination key -> storage id of the sync asset's observations up to which every
    detached mark is reported (for the sensor's cursor: the next pass reads after it)."""
    requests: int = 0


@dataclass
class _Trust:
    """What one pass believes of the event log (see the module docstring): detached marks
    written inside an existing run, and the follower's own runless events when signed."""

    instance: dg.DagsterInstance
    signer: LedgerSigner
    runs: dict[str, bool] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    """Detached marks recorded outside a run, as "<asset> run <hightouch run id>"."""

    def in_run(self, run_id: str) -> bool:
        if run_id not in self.runs:
            self.runs[run_id] = bool(run_id) and self.instance.get_run_by_id(run_id) is not None
        return self.runs[run_id]

    def counts(
        self, kind: str, key: dg.AssetKey, run_id: str, metadata: Mapping[str, dg.MetadataValue]
    ) -> bool:
        """A ledger event counts when a run wrote it, or when it is the follower's own."""
        return bool(run_id) or self.signer.verifies(kind, key, metadata)


def _marks(
    trust: _Trust,
    destination: Destination,
    newest: int | None,
    after: int | None = None,
) -> tuple[list[InFlight], set[str], int | None]:
    """The destination's detached marks, oldest first (one per Hightouch run), the run ids its
    `reported` marks name, and the newest storage id read: among the observations of the sync
    asset after `after` (all when None), or its `newest`."""
    instance = trust.instance
    key = sync_asset_key_for(destination.key)
    records: list[dg.EventLogRecord] = []
    if newest is not None:
        records = list(instance.fetch_observations(key, limit=newest).records)[::-1]
    else:
        records = list(records_after(instance.fetch_observations, key, after))
    marks: dict[str, InFlight] = {}
    reported: set[str] = set()
    for record in records:
        observation = record.event_log_entry.asset_observation
        kind = metadata_text(observation.metadata, TRIGGER_MARK) if observation else ""
        if observation is None or kind not in (DETACHED, REPORTED):
            continue
        metadata = observation.metadata
        run_id = metadata_text(metadata, "hightouch_run_id")
        if kind == REPORTED:
            if trust.counts(ledger.REPORTED, key, record.run_id, metadata):
                reported.add(run_id)
            continue
        if not trust.in_run(record.run_id):
            trust.ignored.append(f"{key.to_user_string()} run {run_id or '(none)'}")
            continue
        if not run_id or run_id in marks:  # a re-attaching re-execution may mark it again
            continue
        marks[run_id] = InFlight(
            destination=destination,
            storage_id=record.storage_id,
            sync_id=metadata_text(metadata, "hightouch_sync_id"),
            run_id=run_id,
            run_family=metadata_text(metadata, "dagster_run_family"),
            dagster_run_id=metadata_text(metadata, "dagster_run_id"),
            carried={k: v for k, v in metadata.items() if k not in _MARK_ONLY},
        )
    newest_read = records[-1].storage_id if records else after
    return list(marks.values()), reported, newest_read


def _materialized(trust: _Trust, records: Sequence[InFlight]) -> set[str]:
    """Run ids among `records` whose sync asset materialization (matched by Hightouch run id)
    the event log holds, recorded by the sensor or by a step that re-attached and waited."""
    instance = trust.instance
    found: set[str] = set()
    ids: dict[dg.AssetKey, set[str]] = {}
    oldest: dict[dg.AssetKey, int] = {}
    for record in records:
        ids.setdefault(record.key, set()).add(record.run_id)
        oldest[record.key] = min(oldest.get(record.key, record.storage_id), record.storage_id)
    for key, run_ids in ids.items():
        for stored in records_after(instance.fetch_materializations, key, oldest[key]):
            materialization = stored.asset_materialization
            if materialization is None:
                continue
            metadata = materialization.metadata
            run_id = metadata_text(metadata, "hightouch_run_id")
            if run_id in run_ids and trust.counts(
                ledger.MATERIALIZATION, key, stored.run_id, metadata
            ):
                found.add(run_id)
    return found


_RUNLESS_RUN_ID = ""  # the run id Dagster gives events recorded outside any run
_RECENT_RUNLESS_CHECKS = 500


def _judged(
    trust: _Trust, destination: Destination, runless: Mapping[dg.AssetKey, set[str]]
) -> set[str]:
    """Run ids of the sync's recorded `failed_rows` evaluations: the newest outside any run
    (`runless`, read once per pass) and those of recent runs (a step that re-attached to a
    detached run and waited for it), from Dagster's asset-check history."""
    key = sync_asset_key_for(destination.key)
    check_key = dg.AssetCheckKey(key, FAILED_ROWS_CHECK)
    found = set(runless.get(key, set()))
    for entry in check_history(trust.instance, check_key, limit=25):
        evaluation = entry.evaluation
        if evaluation is not None and trust.counts(
            ledger.FAILED_ROWS, key, entry.run_id, evaluation.metadata
        ):
            found.add(metadata_text(evaluation.metadata, "hightouch_run_id"))
    return found


def _runless_judged(trust: _Trust) -> dict[dg.AssetKey, set[str]]:
    """Run ids of the newest signed `failed_rows` evaluations recorded outside any run (by this
    sensor), by sync asset. Only a crash between a run's evaluation and its `reported` mark
    makes them matter, and that evaluation is then among the newest."""
    connection = trust.instance.get_records_for_run(
        _RUNLESS_RUN_ID,
        of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION,
        limit=_RECENT_RUNLESS_CHECKS,
        ascending=False,
    )
    found: dict[dg.AssetKey, set[str]] = {}
    for record in connection.records:
        event = record.event_log_entry.dagster_event
        evaluation = event.asset_check_evaluation_data if event else None
        if (
            evaluation is not None
            and evaluation.check_name == FAILED_ROWS_CHECK
            and trust.signer.verifies(ledger.FAILED_ROWS, evaluation.asset_key, evaluation.metadata)
        ):
            run_id = metadata_text(evaluation.metadata, "hightouch_run_id")
            found.setdefault(evaluation.asset_key, set()).add(run_id)
    return found


@dataclass(frozen=True)
class Listing:
    """One read of the event log: what is in flight, for a pass of `follow_in_flight`."""

    pending: list[InFlight]
    """Still in flight, oldest first."""
    repairs: list[AssetEvent]
    """`reported` marks for runs whose evaluation the check history holds without one."""
    after: dict[str, int]
    """Destination key -> storage id up to which every detached mark is reported (stored)."""


def list_in_flight(
    instance: dg.DagsterInstance,
    destinations: Iterable[Destination],
    *,
    signer: LedgerSigner,
    newest: int | None = None,
    after: Mapping[str, int] | None = None,
    log: Log | None = None,
) -> Listing:
    """Every run left in flight whose end is not recorded yet (`after`: as in
    `follow_in_flight`; `newest`: only among each sync asset's newest observations)."""
    trust = _Trust(instance, signer)
    pending: list[InFlight] = []
    repairs: list[AssetEvent] = []
    low_water: dict[str, int] = {}
    runless: dict[dg.AssetKey, set[str]] | None = None
    for destination in destinations:
        start = (after or {}).get(destination.key)
        marks, reported, newest_read = _marks(trust, destination, newest, start)
        open_marks = [m for m in marks if m.run_id not in reported]
        # Marks reported in this pass are stored after it: the next pass reads them again.
        if open_marks:
            low_water[destination.key] = open_marks[0].storage_id - 1
        elif newest_read is not None:
            low_water[destination.key] = newest_read
        if not open_marks:
            continue
        runless = _runless_judged(trust) if runless is None else runless
        judged = _judged(trust, destination, runless)
        for mark in open_marks:
            if mark.run_id in judged:
                repairs.append(_reported_mark(mark, signer))
            else:
                pending.append(mark)
    if trust.ignored:
        (log or logging.getLogger(__name__)).warning(
            f"detached mark(s) reported outside a run ignored: {', '.join(trust.ignored)} "
            "(only a sync step's run records a run in flight)"
        )
    return Listing(sorted(pending, key=lambda r: r.storage_id), repairs, low_water)


def _reported_mark(record: InFlight, signer: LedgerSigner) -> dg.AssetObservation:
    metadata = {
        TRIGGER_MARK: dg.MetadataValue.text(REPORTED),
        "hightouch_sync_id": dg.MetadataValue.text(record.sync_id),
        "hightouch_run_id": dg.MetadataValue.text(record.run_id),
        "dagster_run_id": dg.MetadataValue.text(record.dagster_run_id),
    }
    return dg.AssetObservation(
        asset_key=record.key, metadata=signer.sign(ledger.REPORTED, record.key, metadata)
    )


def in_flight_runs(
    instance: dg.DagsterInstance,
    destinations: Iterable[Destination],
    *,
    signer: LedgerSigner,
    after: Mapping[str, int] | None = None,
) -> list[InFlight]:
    """Every run left in flight whose end is not recorded yet, oldest first (`after`: as in
    `follow_in_flight`)."""
    return list_in_flight(instance, destinations, signer=signer, after=after).pending


def in_flight_of(
    instance: dg.DagsterInstance,
    destination: Destination,
    *,
    signer: LedgerSigner,
    log: Log | None = None,
) -> list[InFlight]:
    """The destination's runs still in flight, among its recent marks (for the sync path, which
    lets one sync of a destination run at a time)."""
    return list_in_flight(instance, [destination], signer=signer, newest=200, log=log).pending


def follow_in_flight(
    instance: dg.DagsterInstance,
    client: HightouchClient,
    destinations: Sequence[Destination],
    *,
    signer: LedgerSigner,
    listing: Listing | None = None,
    max_requests: int | None = None,
    checked: Mapping[str, float] | None = None,
    after: Mapping[str, int] | None = None,
    pagerduty: PagerDutyResource | None = None,
    slack: SlackWebhookResource | None = None,
    log: Log | None = None,
) -> FollowResult:
    """One batched pass over every run left in flight: one read per run (at most
    `max_requests`, the least recently read first), and the events to record for each that
    ended (see the module docstring). Nothing is recorded here: the caller stores `events` in
    order (the sensor returns them; a script calls `report_events`).

    `checked` and `after` are the previous pass's `FollowResult.checked` (when each run was last
    read) and `FollowResult.after` (where each sync asset's marks are all reported); both only
    save work, and a pass without them reads the whole history. `listing` is this pass's
    `list_in_flight` when the caller already read it (the sensor, to size `max_requests`);
    `signer` signs the events and verifies those the event log holds (see the module docstring).
    """
    log = log or logging.getLogger(__name__)
    if listing is None:
        listing = list_in_flight(instance, destinations, signer=signer, after=after, log=log)
    last_read = dict(checked or {})
    order = sorted(listing.pending, key=lambda r: (last_read.get(r.run_id, 0.0), r.storage_id))
    budget = len(order) if max_requests is None else max(0, max_requests)
    result = FollowResult(
        events=list(listing.repairs),
        deferred=max(0, len(order) - budget),
        after=listing.after,
    )
    materialized = _materialized(_Trust(instance, signer), order[:budget])
    previous = previous_statuses(instance)
    statuses: dict[str, str] = {}
    blocks: list[list[AssetEvent]] = []
    for record in order[:budget]:
        try:
            result.requests += 1
            run = client.get_run(record.sync_id, record.run_id)
        except HightouchError as error:  # transient or not, the run is read again next pass
            log.warning(f"detached run {record.run_id} of {record.destination.key}: {error}")
            run = None
        last_read[record.run_id] = time.time()
        if run is None or not run.finished:
            result.in_flight.append(record)
            continue
        block: list[AssetEvent] = []
        ended = _report(
            instance,
            record,
            run,
            client.run_url(record.sync_id, record.run_id),
            record.run_id in materialized,
            result.events,
            block,
            signer=signer,
            pagerduty=pagerduty,
            slack=slack,
            log=log,
        )
        blocks.append(block)
        result.ended.append(ended)
        if ended.first_report:
            key = record.destination.key
            statuses[key] = ended.outcome.status
            if pagerduty and ended.outcome.status != "failed" and previous.get(key) == "failed":
                resolve_page(
                    log, pagerduty, record.destination, sync_failure_key(record.destination)
                )
    result.in_flight.extend(order[budget:])
    if statuses:
        outcomes = [e.outcome for e in result.ended if e.first_report]
        triggered_by = sorted({e.record.dagster_run_id for e in result.ended if e.first_report})
        result.events.append(
            dg.AssetMaterialization(
                asset_key=REPORT_KEY,
                metadata={
                    "dagster_run_id": ", ".join(triggered_by),
                    "reported_by": "detached_sync_sensor",
                    "summary": dg.MetadataValue.md(summary_table(outcomes)),
                    "statuses": dg.MetadataValue.json({**previous, **statuses}),
                    "failed_destinations": ", ".join(
                        sorted(o.destination for o in outcomes if o.status == "failed")
                    )
                    or "none",
                },
            )
        )
    # Each run's own block last, whole: materialization, failed_rows, reported mark.
    for block in blocks:
        result.events.extend(block)
    in_flight_ids = {r.run_id for r in result.in_flight}
    result.checked = {k: v for k, v in last_read.items() if k in in_flight_ids}
    return result


def _report(
    instance: dg.DagsterInstance,
    record: InFlight,
    run: SyncRun,
    url: str,
    materialized: bool,
    side_events: list[AssetEvent],
    block: list[AssetEvent],
    *,
    signer: LedgerSigner,
    pagerduty: PagerDutyResource | None,
    slack: SlackWebhookResource | None,
    log: Log,
) -> Ended:
    """The events of one ended run into `block` (its own, in order) and `side_events` (gate
    page records); the page and the Slack summary when nothing of it was recorded yet."""
    destination, key = record.destination, record.key
    verdict, violation = failed_rows_verdict(destination, run, url)
    failed = run.status in TERMINAL_FAILURE or (
        violation is not None and destination.failure_policy.on_exceed == "fail"
    )
    first = not materialized
    metadata = sync_run_metadata(run, url)
    if not failed:
        metadata.update(record.carried)
        metadata["dagster_run_id"] = dg.MetadataValue.text(record.dagster_run_id)
        if violation:
            metadata["failure_policy"] = dg.MetadataValue.text(f"exceeded, warned: {violation}")
        if not materialized:
            try:
                rows = record_synced_snapshot(destination)
                metadata["synced_snapshot_rows"] = dg.MetadataValue.int(rows)
            except Exception as error:  # as the attached path: the sync stands without it
                log.warning(f"{destination.key}: synced snapshot not recorded: {error}")
            signed = signer.sign(ledger.MATERIALIZATION, key, metadata)
            block.append(dg.AssetMaterialization(asset_key=key, metadata=signed))
    status = "failed" if failed else run.status
    detail = (
        f"Hightouch run {run.id}: {violation or run.error or run.status}" if failed else ""
    ) + f" (detached; triggered by Dagster run {record.dagster_run_id})"
    outcome = outcome_from_metadata(destination.key, metadata, status=status, detail=detail)
    if first:
        log.info(f"{destination.key}: detached Hightouch run {run.id} ended {run.status}")
        if failed and pagerduty is not None:
            page_sync_failure(
                log,
                pagerduty,
                None,
                destination,
                dagster_run_id=record.dagster_run_id,
                reason=f"{destination.key}: {verdict.description}"[:500],
            )
        if not failed:
            pager = GatePager(
                instance,
                log,
                destination,
                sync_key=key,
                run_id=record.dagster_run_id,
                record=side_events.append,
                pagerduty=pagerduty,
                slack=slack,
            )
            try:
                pager.resolve()
            except Exception as error:  # noqa: BLE001 - the rows are shipped; the page can wait
                log.error(f"PAGING FAILED: gate page of {destination.key} not resolved: {error}")
        if slack is not None:
            try:
                slack.post(sync_summary_message(record.dagster_run_id, [outcome]))
            except NotificationError as error:
                log.error(f"SLACK FAILED: the summary of run {run.id} was not posted: {error}")
    evaluation = verdict.evaluation(key)
    evaluated = {
        **evaluation.metadata,
        "dagster_run_id": dg.MetadataValue.text(record.dagster_run_id),
    }
    block.append(evaluation.with_metadata(signer.sign(ledger.FAILED_ROWS, key, evaluated)))
    block.append(_reported_mark(record, signer))
    return Ended(record, run, outcome, first)


def report_events(instance: dg.DagsterInstance, events: Iterable[AssetEvent]) -> None:
    """Store a pass's events in order, as the sensor daemon does with a tick's `asset_events`
    (for scripts and benchmarks that call `follow_in_flight` without a daemon)."""
    for event in events:
        instance.report_runless_asset_event(event)
