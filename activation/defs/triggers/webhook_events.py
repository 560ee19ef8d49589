"""The webhook trigger: the events the intake recorded, answered by scoped, coalesced runs of
`build_after_upstream`.

Scope. An event's `source` names what landed, read against the `raw/*` assets (the Airbyte
streams): a stream (`customers` or `raw/customers`), or an Airbyte connection (its name or id:
every stream of it). The run then builds only what depends on that: the dbt models downstream of
those streams with their checks, the checks of other models that read a rebuilt one (a dbt
`relationships` test, whose check lists the rebuilt model in `additional_deps`: a rebuilt parent
cannot silently break a child that was not rebuilt) and the syncs downstream of those marts.
Models that are not rebuilt keep the results their checks had on the data they still hold, which
is what the cross-run quality gate reads (activation/core/gate.py), so a scoped run's syncs are
not refused as "untested". Two cases build the whole job instead, as before this scope
existed: a source that names no stream or connection (a Fivetran connector, a Snowflake task, any
caller that names something this code location has no asset for; logged as a warning, tagged
`activation/webhook-scope: full`), and an upstream model of a selected sync that was never built
(a fresh deployment: the gate would have no result to read for it).

Coalescing. Each tick reads every event after the cursor (up to MAX_EVENTS_PER_RUN) and requests
ONE run for all of them, whose selection is the union of their scopes: events for one source
share one run, events for several sources share the union (one dbt build covers the models of
both, and there is still one writer on the warehouse). The run key is the range of sequence
numbers served (`webhook:<first>-<last>`), so a re-evaluated tick or a restarted daemon that
replays the cursor launches nothing twice for the same events. Every served event is recorded:
on the run, by the tags `activation/webhook-event-count`, `activation/webhook-first-seq` and
`-last-seq` (events are served in contiguous ranges) and `activation/webhook-event-ids` (the ids,
one per line, up to IDS_IN_TAG of them); and, for every event however many, in the webhook store
against the run key (`store.served_by`, `run_serving_event`).

One build at a time: while any run that builds the marts is queued or running (this sensor's,
the Airbyte sensor's, an `activate` launched by hand), the events wait and the cursor stays where
it is. Two dbt builds at once would fight over the warehouse (a DuckDB file takes one writer), and
a waiting event is never lost: it is answered by the first tick after that run ends, together
with every event that arrived meanwhile.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from activation.core.run_history import InFlightRuns
from activation.dagster_api import airbyte_connection_of
from activation.defs.ingest.airbyte import INGEST_GROUP
from activation.defs.triggers.common import (
    BUILD_JOB_NAME,
    BUILD_SELECTION,
    TRIGGER_TAG,
    syncs_by_mart,
)
from activation.lib.destinations import load_destinations
from activation.webhooks import store

# Every pass of the sensor daemon, which loops every 5 s. An interval equal to the loop (5)
# makes the daemon skip a pass whenever the previous tick started a little later within its pass
# (4.99 s elapsed < 5): up to 10 s between ticks, where 1 keeps it at one tick per pass.
WEBHOOK_SENSOR_INTERVAL_SECONDS = 1
MAX_EVENTS_PER_RUN = 10_000
"""A backlog longer than this is served by several runs, one after the other."""
IDS_IN_TAG = 50
"""At most this many event ids are listed on the run; the store records every one."""
SYNC_GROUP = "activate"

EVENT_ID_TAG = "activation/webhook-event-id"
"""The first (oldest) event the run serves: the only one when it serves one."""
EVENT_IDS_TAG = "activation/webhook-event-ids"
EVENT_COUNT_TAG = "activation/webhook-event-count"
FIRST_SEQ_TAG = "activation/webhook-first-seq"
LAST_SEQ_TAG = "activation/webhook-last-seq"
SOURCE_TAG = "activation/webhook-source"
SCOPE_TAG = "activation/webhook-scope"
RUN_KEY_TAG = "dagster/run_key"


def load_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(json.loads(cursor)["seq"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f'webhook_event_sensor cursor must be {{"seq": N}}: {cursor!r}') from error


@dataclass(frozen=True)
class Scope:
    """What a run must build for some events: `keys` (None: the whole job) and why."""

    keys: frozenset[dg.AssetKey] | None
    reason: str
    checks: frozenset[dg.AssetCheckKey] = frozenset()
    """The checks to run with `keys`: theirs and those of other assets that read one of them."""


class SourceScopes:
    """Source name -> the assets of `build_after_upstream` that depend on what it landed, read
    from the code location's graph (the sensor defines no assets, so the graph is only whole in
    the repository it evaluates in)."""

    def __init__(self, repository: dg.RepositoryDefinition) -> None:
        self._assets = list({id(a): a for a in repository.assets_defs_by_key.values()}.values())
        self._job_keys = BUILD_SELECTION.resolve(self._assets)
        self._raw: dict[str, set[dg.AssetKey]] = {}
        self._groups = {
            spec.key: spec.group_name for assets_def in self._assets for spec in assets_def.specs
        }
        for spec in (spec for assets_def in self._assets for spec in assets_def.specs):
            if spec.group_name != INGEST_GROUP:
                continue
            connection_id, connection_name = airbyte_connection_of(spec)
            names = {spec.key.to_user_string(), spec.key.path[-1], connection_id, connection_name}
            for name in names - {""}:
                self._raw.setdefault(name, set()).add(spec.key)
        self._check_specs = [
            spec
            for definition in [*self._assets, *repository.asset_checks_defs_by_key.values()]
            for spec in definition.check_specs
            if spec.asset_key in self._job_keys
        ]

    def raw_keys(self, source: str) -> frozenset[dg.AssetKey]:
        """The `raw/*` assets the source names (none when it names no stream or connection)."""
        return frozenset(self._raw.get(source.strip(), ()))

    def downstream(self, raw_keys: Iterable[dg.AssetKey]) -> frozenset[dg.AssetKey]:
        """The models and syncs of the job downstream of these streams (not the streams)."""
        selection = dg.AssetSelection.assets(*raw_keys).downstream(include_self=False)
        return frozenset(selection.resolve(self._assets) & self._job_keys)

    def checks(self, keys: frozenset[dg.AssetKey]) -> frozenset[dg.AssetCheckKey]:
        """The checks of `keys`, and every check of the job that also reads one of `keys`."""
        return frozenset(
            spec.key
            for spec in self._check_specs
            if spec.asset_key in keys or any(dep.asset_key in keys for dep in spec.additional_deps)
        )

    def never_built_upstream(
        self, instance: dg.DagsterInstance, keys: frozenset[dg.AssetKey]
    ) -> list[dg.AssetKey]:
        """Models of the job upstream of the selected syncs, outside `keys`, never materialized:
        the gate would find no check result for them, so they must be built too."""
        syncs = [k for k in keys if self._groups.get(k) == SYNC_GROUP]
        upstream = dg.AssetSelection.assets(*syncs).upstream().resolve(self._assets)
        models = {k for k in upstream & self._job_keys if self._groups.get(k) != SYNC_GROUP}
        outside = sorted(models - keys, key=lambda k: k.to_user_string())
        return [k for k in outside if not instance.fetch_materializations(k, limit=1).records]


def scope_of(
    instance: dg.DagsterInstance, scopes: SourceScopes | None, sources: Sequence[str]
) -> Scope:
    """The union of what `sources` landed feeds, or the whole job (with the reason)."""
    if scopes is None:
        return Scope(None, "no asset graph to read the sources against")
    raw: set[dg.AssetKey] = set()
    for source in sorted(set(sources)):
        found = scopes.raw_keys(source)
        if not found:
            return Scope(None, f"source {source!r} names no Airbyte stream or connection")
        raw |= found
    keys = scopes.downstream(raw)
    missing = scopes.never_built_upstream(instance, keys)
    if missing:
        names = ", ".join(k.to_user_string() for k in missing)
        return Scope(None, f"{names} upstream of the selected syncs was never built")
    streams = ", ".join(sorted(k.to_user_string() for k in raw))
    return Scope(keys, f"downstream of {streams}", scopes.checks(keys))


def run_serving_event(instance: dg.DagsterInstance, event_id: str) -> dg.DagsterRun | None:
    """The run that served a recorded webhook event; None while it waits (or never launched)."""
    run_key = store.served_by(store.events_db_path(), event_id)
    if run_key is None:
        return None
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            tags={RUN_KEY_TAG: run_key, "dagster/sensor_name": "webhook_event_sensor"}
        ),
        limit=1,
    )
    return records[0].dagster_run if records else None


def _ids_tag(events: Sequence[store.Event]) -> str:
    shown = [e.event_id for e in events[:IDS_IN_TAG]]
    more = len(events) - len(shown)
    return "\n".join(shown + ([f"... and {more} more (see the webhook store)"] if more else []))


def build_webhook_event_sensor(
    job_name: str, mart_keys: Sequence[dg.AssetKey]
) -> dg.SensorDefinition:
    @dg.sensor(
        name="webhook_event_sensor",
        job_name=job_name,
        minimum_interval_seconds=WEBHOOK_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Builds the dbt models downstream of what the signed webhook events "
        "recorded by `activation webhooks` say landed, then their syncs: every pending event "
        "in one run, one run at a time.",
    )
    def webhook_event_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seq = load_cursor(context.cursor)
        path = store.events_db_path()
        events = store.events_after(path, seq, limit=MAX_EVENTS_PER_RUN)
        if not events:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"No new webhook event in {path}."),
                cursor=json.dumps({"seq": seq}),
            )
        busy = InFlightRuns(context.instance).planning_any(mart_keys)
        if busy:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(
                    f"{len(events)} event(s) from {events[0].event_id} wait: run "
                    f"{busy[0].run_id} is building the marts."
                ),
                cursor=json.dumps({"seq": seq}),
            )
        repository = context.repository_def
        scopes = SourceScopes(repository) if repository is not None else None
        sources = sorted({e.source for e in events})
        scope = scope_of(context.instance, scopes, sources)
        first, last = events[0], events[-1]
        run_key = f"webhook:{first.seq}-{last.seq}"
        if scope.keys is None:
            context.log.warning(f"{run_key}: building the whole job: {scope.reason}")
        else:
            context.log.info(f"{run_key}: {len(scope.keys)} assets {scope.reason}")
        request = dg.RunRequest(
            run_key=run_key,
            asset_selection=(
                None if scope.keys is None else sorted(scope.keys, key=lambda k: k.to_user_string())
            ),
            asset_check_keys=(
                None
                if scope.keys is None
                else sorted(scope.checks, key=lambda k: k.to_user_string())
            ),
            tags={
                TRIGGER_TAG: "webhook",
                EVENT_ID_TAG: first.event_id[:200],
                EVENT_IDS_TAG: _ids_tag(events),
                EVENT_COUNT_TAG: str(len(events)),
                FIRST_SEQ_TAG: str(first.seq),
                LAST_SEQ_TAG: str(last.seq),
                SOURCE_TAG: ",".join(sources)[:200],
                SCOPE_TAG: "full" if scope.keys is None else "scoped",
            },
        )
        store.mark_served(path, [e.seq for e in events], run_key)
        return dg.SensorResult(run_requests=[request], cursor=json.dumps({"seq": last.seq}))

    return webhook_event_sensor


@dg.definitions
def defs() -> dg.Definitions:
    marts = list(syncs_by_mart(load_destinations()))
    return dg.Definitions(sensors=[build_webhook_event_sensor(BUILD_JOB_NAME, marts)])
