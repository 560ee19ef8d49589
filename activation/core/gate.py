"""The cross-run quality gate: a sync triggers only data whose blocking checks passed.

Blocking asset checks stop downstream steps inside one run only. A sync launched in another run
(a sensor, automation, or a hand launch of the sync asset alone) would otherwise push whatever the
mart holds. `gate_verdict` is therefore the first thing every sync does, before any HTTP to
Hightouch: for every asset upstream of the sync (the marts and the models they are built from) it
reads, from the Dagster instance, the latest evaluation of each blocking check and refuses when

- that evaluation failed with severity ERROR (the check, its result and its run are named), or
- the asset was materialized after its checks last ran (untested data), or the check never ran, or
- the check judged the destination's mart and the mart's fingerprint (row count and a hash of the
  primary key and mapped columns) differs now, or the result recorded no fingerprint.

Only evidence from this code location counts: an evaluation produced in a step of a run of one
of the location's jobs. A report from outside a run (the webserver's unauthenticated
`/report_asset_check/` endpoint) or from another code location is ignored, so an older genuine
result stands.

Which checks gate which sync is computed once, when the code location loads
(`blocking_checks_by_destination`, from the assembled definitions), and injected into every sync
step as the `quality_gate` resource: any blocking asset check upstream of a sync gates it, the
dbt tests (defs/transform), the warehouse guards and Python checks (defs/quality). A refusal pages
the owner of the destination once per refused sync (core/paging.py); `resolve_gate_page` closes
the page after a successful sync. Paging problems are logged and never open the gate.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from activation.core.guards import (
    GUARD_CHECK_PREFIX,
    Fingerprint,
    fingerprint,
    guard_check_name,
    recorded_fingerprints,
)
from activation.core.paging import GatePager
from activation.core.verdicts import GATE_CHECK, PreSyncVerdict, SyncHeldBack
from activation.dagster_api import CheckEntry, check_history, run_location
from activation.lib.destinations import Destination, mart_asset_key, sync_asset_key_for
from activation.lib.warehouse import WarehouseError, warehouse_connection
from activation.resources import PagerDutyResource, QualityGate, SlackWebhookResource

__all__ = [
    "GateClosed",
    "PagerDutyResource",
    "gate_check_spec",
    "gate_refusals",
    "gate_verdict",
    "resolve_gate_page",
]


_HISTORY = 20  # records read per check: planned-only runs in a row beyond this are refused
IMPLICIT_ASSET_JOB = "__ASSET_JOB"  # the job a hand launch of assets runs in


@dataclass(frozen=True)
class CheckRecord:
    """The latest record Dagster holds for one asset check, in the gate's own terms."""

    status: str
    """`passed`, `failed`, `planned` (planned in a run that has not evaluated it), or `never`
    (every record there was is not evidence, see `ignored`)."""
    run_id: str
    severity: str = "ERROR"
    description: str | None = None
    target_storage_id: int | None = None
    """Storage id of the materialization the check evaluated (None when unknown)."""
    recorded_at: float = 0.0
    fingerprints: dict[str, Fingerprint] | None = None
    """What the check judged, per destination reading the asset (None: nothing recorded)."""
    ignored: tuple[str, ...] = ()
    """Why newer evaluations were not counted (each a sentence), newest first."""
    failing_rows: str | None = None
    """The failed check's sample of failing rows (a Markdown table), when it carries one."""


@dataclass(frozen=True)
class Materialization:
    storage_id: int
    run_id: str
    timestamp: float


@dataclass(frozen=True)
class Refusal:
    """Why one check keeps the gate closed."""

    check: dg.AssetCheckKey
    result: str
    run_id: str | None
    failing_rows: str | None = None

    @property
    def check_name(self) -> str:
        return f"{self.check.asset_key.to_user_string()}:{self.check.name}"

    def sentence(self) -> str:
        where = f" in run {self.run_id}" if self.run_id else ""
        return f"check {self.check_name} {self.result}{where}"


def refusal_sentence(destination: Destination, refusals: Sequence[Refusal]) -> str:
    return (
        f"Sync {destination.key} refused to trigger Hightouch: "
        + "; ".join(r.sentence() for r in refusals)
        + ". Nothing was sent. Fix the data and rebuild the mart with its checks "
        "(the `activate` job does both)."
    )


def refused_checks_metadata(refusals: Sequence[Refusal]) -> dg.MetadataValue:
    return dg.MetadataValue.json(
        [{"check": r.check_name, "result": r.result, "run_id": r.run_id} for r in refusals]
    )


def refusals_table(refusals: Sequence[Refusal]) -> str:
    """Markdown: each refusing check, its result and a link to the run that produced it (a
    relative link, so it opens in whatever webserver shows it)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")[:300]

    rows = [
        f"| `{r.check_name}` | {cell(r.result)} | "
        + (f"[{r.run_id[:8]}](/runs/{r.run_id})" if r.run_id else "-")
        + " |"
        for r in refusals
    ]
    return "| refusing check | result | run |\n|---|---|---|\n" + "\n".join(rows)


def gate_check_spec(destination: Destination) -> dg.AssetCheckSpec:
    """The `quality_gate` check every sync asset carries (see activation/core/verdicts.py)."""
    return dg.AssetCheckSpec(
        GATE_CHECK,
        asset=sync_asset_key_for(destination.key),
        description=f"Before anything is sent to {destination.destination_type}: every "
        f"blocking check upstream of this sync passed, in a run of this code location, on the "
        f"rows {destination.mart} holds now. Fails, naming each refusing check, when the sync "
        "is held back.",
    )


def verdict_of(destination: Destination, refusals: Sequence[Refusal]) -> PreSyncVerdict:
    """The `quality_gate` evaluation for these refusals (none: the gate is open)."""
    if not refusals:
        return PreSyncVerdict(
            GATE_CHECK,
            passed=True,
            description=f"Every blocking check upstream of {destination.key} passed on the "
            "data the mart holds now.",
        )
    metadata: dict[str, dg.MetadataValue] = {
        "refusing_checks": dg.MetadataValue.md(refusals_table(refusals)),
        "refused_checks": refused_checks_metadata(refusals),
    }
    sample = next((r for r in refusals if r.failing_rows), None)
    if sample is not None:
        metadata["failing_rows"] = dg.MetadataValue.md(
            f"Failing rows of `{sample.check_name}`:\n\n{sample.failing_rows}"
        )
    return PreSyncVerdict(
        GATE_CHECK,
        passed=False,
        description=refusal_sentence(destination, refusals),
        metadata=metadata,
        refusing=tuple(r.check_name for r in refusals),
    )


class GateClosed(SyncHeldBack):
    """The sync refused to trigger; `refusals` says which checks and why."""

    def __init__(
        self,
        destination: Destination,
        refusals: list[Refusal],
        verdicts: list[PreSyncVerdict] | None = None,
    ) -> None:
        self.refusals = refusals
        super().__init__(
            destination,
            verdicts or [verdict_of(destination, refusals)],
            metadata={"refused_checks": refused_checks_metadata(refusals)},
        )


# -- reading Dagster's records --------------------------------------------------------------------


@dataclass
class Evidence:
    """Which check records count: those a run of this code location produced in a step.

    Anyone who can reach the webserver can report a check evaluation without a run, and another
    code location's runs can write any check key: neither may open this location's gate.
    """

    instance: dg.DagsterInstance
    job_names: frozenset[str]
    current_location: str | None = None
    """The code location of the run the gate decides for (None when it carries none)."""
    _runs: dict[str, dg.DagsterRun | None] = field(default_factory=dict)

    @classmethod
    def for_run(
        cls, instance: dg.DagsterInstance, gate: QualityGate, run: dg.DagsterRun | None
    ) -> "Evidence":
        location = run_location(run) if run is not None else None
        return cls(instance, frozenset(gate.job_names), location)

    def _run(self, run_id: str) -> dg.DagsterRun | None:
        if run_id not in self._runs:
            self._runs[run_id] = self.instance.get_run_by_id(run_id)
        return self._runs[run_id]

    def why_not(self, entry: CheckEntry) -> str | None:
        """Why `entry` is not evidence for this code location, or None when it is."""
        if not entry.run_id:
            return "an evaluation reported outside any run"
        if entry.evaluation is not None and not entry.step_key:
            return f"an evaluation in run {entry.run_id} not produced by a step"
        run = self._run(entry.run_id)
        if run is None:
            return f"an evaluation from run {entry.run_id}, which the instance does not hold"
        job = run.job_name
        if job not in self.job_names:
            return (
                f"an evaluation from run {entry.run_id} of job {job}, "
                "not a job of this code location"
            )
        location = run_location(run)
        if location and self.current_location and location != self.current_location:
            return f"an evaluation from run {entry.run_id} of code location {location}"
        return None


def latest_check_record(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, evidence: Evidence
) -> CheckRecord | None:
    """The latest evaluation of one asset check that counts as evidence, or None when none was
    ever planned nor run by this code location.

    Records a run planned without evaluating (its step did not get that far, or is still going)
    are passed over: what counts is the newest result, and whether it judged the data the asset
    holds now (`judge_check`). Only when no recent record has a result is it reported `planned`.
    Records that are not evidence (`Evidence.why_not`) are skipped, never counted as passes.
    """
    ignored: list[str] = []
    planned: CheckEntry | None = None
    for entry in check_history(instance, check_key, limit=_HISTORY):
        reason = evidence.why_not(entry)
        if reason:
            ignored.append(reason)
            continue
        evaluation = entry.evaluation
        if evaluation is None:
            planned = planned or entry
            continue
        target = evaluation.target_materialization_data
        return CheckRecord(
            status="passed" if evaluation.passed else "failed",
            run_id=entry.run_id,
            severity=evaluation.severity.value,
            description=evaluation.description,
            target_storage_id=target.storage_id if target else None,
            recorded_at=entry.created,
            fingerprints=recorded_fingerprints(
                {name: value.value for name, value in evaluation.metadata.items()}
            ),
            ignored=tuple(ignored),
            failing_rows=_text(evaluation.metadata.get("failing_rows")),
        )
    if planned is not None:
        return CheckRecord("planned", planned.run_id, recorded_at=planned.created)
    return CheckRecord("never", "", ignored=tuple(ignored)) if ignored else None


def _text(value: dg.MetadataValue | None) -> str | None:
    text = getattr(value, "value", None)
    return text if isinstance(text, str) else None


def latest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey
) -> Materialization | None:
    records = instance.fetch_materializations(asset_key, limit=1).records
    if not records:
        return None
    return Materialization(records[0].storage_id, records[0].run_id, records[0].timestamp)


def blocking_checks_by_destination(
    definitions: dg.Definitions, destinations: Iterable[Destination]
) -> dict[str, dict[str, list[str]]]:
    """For each destination, the blocking checks of every asset upstream of its sync asset, by
    the asset they check (user strings, as the `quality_gate` resource holds them).

    The same set that stops the sync inside one run: a failed blocking check anywhere upstream
    fails the steps that depend on it, so the gate applies it across runs as well. Read from the
    assembled definitions through public APIs only, once, when the code location loads.
    """
    # Read from the definitions as declared: resolving the asset graph would need every resource
    # bound, this gate among them.
    parents: dict[dg.AssetKey, set[dg.AssetKey]] = {}
    for asset in definitions.assets or []:
        if isinstance(asset, dg.AssetSpec):
            parents[asset.key] = {dep.asset_key for dep in asset.deps}
        elif isinstance(asset, dg.AssetsDefinition):
            for key, deps in asset.asset_deps.items():
                parents[key] = set(deps)
    blocking: dict[dg.AssetKey, set[dg.AssetCheckKey]] = {}
    for definition in [*(definitions.assets or []), *(definitions.asset_checks or [])]:
        for spec in getattr(definition, "check_specs", ()):  # an AssetSpec has none
            if spec.blocking:
                blocking.setdefault(spec.asset_key, set()).add(spec.key)
    result: dict[str, dict[str, list[str]]] = {}
    for destination in destinations:
        upstream: set[dg.AssetKey] = set()
        todo = [sync_asset_key_for(destination.key)]
        while todo:
            for parent in parents.get(todo.pop(), set()):
                if parent not in upstream:
                    upstream.add(parent)
                    todo.append(parent)
        result[destination.key] = {
            key.to_user_string(): sorted(check.name for check in blocking[key])
            for key in sorted(upstream, key=lambda k: k.to_user_string())
            if key in blocking
        }
    return result


def quality_gate_for(
    definitions: dg.Definitions, destinations: Sequence[Destination]
) -> QualityGate:
    """The `quality_gate` resource of the assembled definitions (see activation/definitions.py)."""
    jobs = sorted({job.name for job in definitions.jobs or []} | {IMPLICIT_ASSET_JOB})
    return QualityGate(
        blocking_checks=blocking_checks_by_destination(definitions, destinations), job_names=jobs
    )


# -- the decision (pure) --------------------------------------------------------------------------


def judge_check(
    check: dg.AssetCheckKey, record: CheckRecord | None, materialization: Materialization | None
) -> Refusal | None:
    """Why this check closes the gate, or None when it lets the data through."""
    if record is None or record.status == "never":
        return Refusal(check, "has never been evaluated", None)
    if record.status == "planned":
        return Refusal(
            check, "was planned but has no result (its run did not evaluate it)", record.run_id
        )
    if record.status == "failed" and record.severity == "ERROR":
        detail = f": {record.description}" if record.description else ""
        return Refusal(check, f"failed{detail}", record.run_id, record.failing_rows)
    if materialization is not None and not _evaluated_latest(record, materialization):
        return Refusal(
            check,
            f"last ran before the latest materialization (run {materialization.run_id}): "
            "the data is untested",
            record.run_id,
        )
    return None


def _evaluated_latest(record: CheckRecord, materialization: Materialization) -> bool:
    if record.target_storage_id is not None:
        return record.target_storage_id == materialization.storage_id
    if record.run_id == materialization.run_id:
        return True
    return record.recorded_at > materialization.timestamp


def judge_fingerprint(
    check: dg.AssetCheckKey, record: CheckRecord, destination_key: str, current: Fingerprint
) -> Refusal | None:
    """Why a counted result on the destination's mart does not vouch for the mart as it is now."""
    recorded = (record.fingerprints or {}).get(destination_key)
    if recorded is None:
        return Refusal(
            check,
            f"judged data without a fingerprint for {destination_key}, so what it judged "
            "cannot be compared with the mart",
            record.run_id,
        )
    if recorded != current:
        return Refusal(
            check,
            f"judged {recorded.rows} rows (hash {recorded.hash}) but the mart now holds "
            f"{current.rows} rows (hash {current.hash}): the mart changed since its checks ran",
            record.run_id,
        )
    return None


def current_fingerprint(destination: Destination) -> Fingerprint:
    """The destination's mart as it is now; any failure to read it is a `WarehouseError`, which
    refuses (a mart that cannot be read cannot be vouched for)."""
    try:
        with warehouse_connection(read_only=True) as session:
            return fingerprint(session, destination)
    except WarehouseError:
        raise
    except Exception as error:  # noqa: BLE001 - DuckDB's or PostgreSQL's errors alike
        raise WarehouseError(f"marts.{destination.mart}: {error}") from error


def gate_refusals(
    instance: dg.DagsterInstance,
    gate: QualityGate,
    destination: Destination,
    *,
    run: dg.DagsterRun | None = None,
    fingerprint_now: Callable[[Destination], Fingerprint] = current_fingerprint,
    ignored: list[str] | None = None,
) -> list[Refusal]:
    """Every reason the sync of `destination` must not trigger (empty: the gate is open).

    `run` is the run the decision is for (its code location bounds the evidence); records
    skipped as not evidence are appended to `ignored` when given. The mart is fingerprinted at
    most once per call, and only when a counted result on it needs comparing.
    """
    evidence = Evidence.for_run(instance, gate, run)
    own_mart = mart_asset_key(destination.mart)
    own_guard = guard_check_name(destination)
    now: list[Fingerprint | WarehouseError] = []
    refusals: list[Refusal] = []
    for asset_key, checks in gate.checks_for(destination.key).items():
        materialization = latest_materialization(instance, asset_key)
        for check in checks:
            # Another destination's guard on a shared mart compares with that destination's
            # snapshot; it gates that sync, not this one.
            if check.name.startswith(GUARD_CHECK_PREFIX) and check.name != own_guard:
                continue
            record = latest_check_record(instance, check, evidence)
            if ignored is not None and record is not None:
                ignored.extend(f"{check.to_user_string()}: {why}" for why in record.ignored)
            refusal = judge_check(check, record, materialization)
            if refusal is None and record is not None and asset_key == own_mart:
                if not now:
                    try:
                        now.append(fingerprint_now(destination))
                    except WarehouseError as error:
                        now.append(error)
                if isinstance(now[0], WarehouseError):
                    refusal = Refusal(
                        check, f"could not be compared with the mart: {now[0]}", record.run_id
                    )
                else:
                    refusal = judge_fingerprint(check, record, destination.key, now[0])
            if refusal:
                refusals.append(refusal)
    return refusals


def gate_verdict(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    destination: Destination,
    *,
    gate: QualityGate,
    pagerduty: PagerDutyResource | None = None,
    slack: SlackWebhookResource | None = None,
) -> tuple[PreSyncVerdict, list[Refusal]]:
    """The `quality_gate` decision for this sync: passed when every upstream blocking check
    passed on the data the mart holds now, else failed, naming each refusing check, its result
    and run, with a sample of the failing rows. Taken first on the sync path, before any request
    to Hightouch; `gate` is the `quality_gate` resource (which checks gate which sync).

    `pagerduty` / `slack` page the owner on a refusal (once per refused sync; the same refusing
    checks again page nobody); without them the gate still holds and says paging is off. An open
    gate resolves nothing: call `resolve_gate_page` once the sync has succeeded.
    """
    ignored: list[str] = []
    refusals = gate_refusals(context.instance, gate, destination, run=context.run, ignored=ignored)
    for reason in ignored:
        context.log.warning(f"Gate {destination.key}: not counted as evidence: {reason}")
    verdict = verdict_of(destination, refusals)
    if not refusals:
        context.log.info(f"Gate open for {destination.key}: every upstream blocking check passed")
        return verdict, refusals
    context.log.error(verdict.description)
    pager = GatePager.from_step(context, destination, pagerduty=pagerduty, slack=slack)
    _never_fail(context, lambda: pager.page_refusals(refusals))
    return verdict, refusals


def resolve_gate_page(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    destination: Destination,
    *,
    pagerduty: PagerDutyResource | None = None,
    slack: SlackWebhookResource | None = None,
) -> None:
    """Close the destination's gate page (if one is open): call it after a successful sync.

    An open gate alone does not resolve: the incident is about data not reaching the
    destination, which ends when a sync has delivered it. Never raises.
    """
    pager = GatePager.from_step(context, destination, pagerduty=pagerduty, slack=slack)
    _never_fail(context, pager.resolve)


def _never_fail(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, notify: Callable[[], None]
) -> None:
    """Paging must not decide the gate: an unexpected error there is logged, not raised."""
    try:
        notify()
    except Exception as error:  # noqa: BLE001 - any paging fault, the decision stands
        context.log.error(f"PAGING FAILED: {type(error).__name__}: {error}")


def build_blocked_sync_sensor(destinations: tuple[Destination, ...]) -> dg.SensorDefinition:
    """Pages owners when a run fails and leaves their sync's gate closed.

    Inside one run, a failed blocking check stops the sync step before it starts, so the step's
    own gate never runs and never pages. After any failed run this sensor reads every sync's gate
    and pages what it refuses, one page per sync (a sync already paged for the same refusing
    checks is not paged again); a successful sync resolves the page (`resolve_gate_page`).
    """

    @dg.run_failure_sensor(
        name="page_blocked_syncs",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="After a failed run, pages the owner of every sync whose quality gate is "
        "now closed (a blocking check failed, or a mart is untested).",
    )
    def page_blocked_syncs(
        context: dg.RunFailureSensorContext,
        pagerduty: PagerDutyResource,
        slack: SlackWebhookResource,
        quality_gate: dg.ResourceParam[QualityGate],
    ) -> None:
        run = context.dagster_run
        for destination in destinations:
            key = sync_asset_key_for(destination.key)
            pager = GatePager(
                context.instance,
                context.log,
                destination,
                sync_key=key,
                run_id=run.run_id,
                record=context.instance.report_runless_asset_event,
                pagerduty=pagerduty,
                slack=slack,
            )
            if pager.decided_in(run.run_id):
                continue  # the sync step's gate ran in this run and paged already
            refusals = gate_refusals(context.instance, quality_gate, destination, run=run)
            if refusals:
                context.log.warning(
                    f"Run {run.run_id} failed and sync {destination.key} is blocked: "
                    + "; ".join(r.sentence() for r in refusals)
                )
                pager.page_refusals(refusals)

    return page_blocked_syncs
