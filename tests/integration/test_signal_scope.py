"""webhook_event_sensor scopes and coalesces: a signal for one source builds only what depends on
it, signals arriving together share one run, none is lost, each served id is recorded.

The sensor is evaluated with `build_sensor_context` against the real code location's graph (the
sandbox's Airbyte streams and the dbt project), a real instance and the real webhook store; one
real scoped `build_after_upstream` run (after one `activate` run, as in a deployment) shows that
only the source's downstream models are built and its syncs pass the gate and ship.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from activation.defs.triggers.common import BUILD_JOB_NAME
from activation.defs.triggers.webhook_events import (
    EVENT_COUNT_TAG,
    EVENT_ID_TAG,
    EVENT_IDS_TAG,
    FIRST_SEQ_TAG,
    IDS_IN_TAG,
    LAST_SEQ_TAG,
    SCOPE_TAG,
    SOURCE_TAG,
    SourceScopes,
    run_serving_event,
    scope_of,
)
from activation.lib.destinations import load_destinations
from activation.lib.environment import SANDBOX_AIRBYTE_CONNECTION_ID
from activation.tooling.demo import run_chain
from activation.webhooks import store
from tests.support.chain_support import SandboxChain, sandbox_chain


def keys(*names: str) -> frozenset[dg.AssetKey]:
    return frozenset(dg.AssetKey.from_user_string(name) for name in names)


EVENTS_SCOPE = keys("staging/stg_events", "marts/mart_braze_users", "activate/braze_users")
ACCOUNTS_SCOPE = keys(
    "staging/stg_accounts",
    "marts/mart_salesforce_accounts",
    "activate/salesforce_accounts",
    # declared `after: [salesforce_accounts]`, so downstream of it
    "activate/salesforce_contacts",
)
SUBSCRIPTIONS_SCOPE = keys(
    "staging/stg_subscriptions",
    "marts/mart_iterable_users",
    "marts/mart_salesforce_accounts",
    "activate/iterable_users",
    "activate/salesforce_accounts",
    "activate/salesforce_contacts",
)
RELATIONSHIPS_TO_STG_ACCOUNTS = dg.AssetCheckKey(
    dg.AssetKey(["staging", "stg_customers"]),
    "relationships_stg_customers_account_id__account_id__ref_stg_accounts_",
)
RELATIONSHIPS_TO_SF_ACCOUNTS = dg.AssetCheckKey(
    dg.AssetKey(["marts", "mart_salesforce_contacts"]),
    "relationships_mart_salesforce_contacts_account_id__account_id__ref_mart_salesforce_accounts_",
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxChain]:
    env = {"HIGHTOUCH_API_TOKEN": "signal-scope-test-token"}
    with sandbox_chain(tmp_path_factory, "signal_scope", env) as setup:
        yield setup


@pytest.fixture(scope="module")
def defs(chain: SandboxChain) -> dg.Definitions:
    from activation.definitions import build_definitions

    return build_definitions()


@pytest.fixture(scope="module")
def job_keys(defs: dg.Definitions) -> frozenset[dg.AssetKey]:
    job = defs.resolve_job_def(BUILD_JOB_NAME)
    return frozenset(job.asset_layer.selected_asset_keys)


class Signals:
    """A fresh instance (whose models were all built once) and a fresh webhook store, with the
    real webhook_event_sensor ticking against the code location's graph."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, folder: Path) -> None:
        self.defs, self.instance = defs, instance
        self.repository = defs.get_repository_def()
        self.sensor = next(s for s in defs.sensors if s.name == "webhook_event_sensor")
        self.path = folder / "webhooks.sqlite"
        store.initialise(self.path)

    def built(self, asset_keys: frozenset[dg.AssetKey]) -> None:
        for key in asset_keys:
            self.instance.report_runless_asset_event(dg.AssetMaterialization(key))

    def send(self, source: str, *event_ids: str) -> None:
        for event_id in event_ids:
            store.record(self.path, f"signal:{event_id}", source, {"event_id": event_id})

    def tick(self, cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=cursor, repository_def=self.repository
        )
        return self.sensor(context)


@pytest.fixture
def signals(
    defs: dg.Definitions,
    job_keys: frozenset[dg.AssetKey],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Signals]:
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(tmp_path))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        world = Signals(defs, instance, tmp_path)
        world.built(job_keys)
        yield world


def _selection(request: dg.RunRequest) -> frozenset[dg.AssetKey] | None:
    return None if request.asset_selection is None else frozenset(request.asset_selection)


def test_each_source_scopes_to_exactly_what_depends_on_it(signals: Signals) -> None:
    scopes = SourceScopes(signals.repository)
    instance = signals.instance
    assert scope_of(instance, scopes, ["events"]).keys == EVENTS_SCOPE
    assert scope_of(instance, scopes, ["raw/events"]).keys == EVENTS_SCOPE
    accounts = scope_of(instance, scopes, ["accounts"])
    assert accounts.keys == ACCOUNTS_SCOPE
    # Its checks: those of its assets, and the tests of other models that read a rebuilt one.
    assert {c.asset_key for c in accounts.checks} == ACCOUNTS_SCOPE | keys(
        "staging/stg_customers", "marts/mart_salesforce_contacts"
    )
    assert {c for c in accounts.checks if c.asset_key not in ACCOUNTS_SCOPE} == {
        RELATIONSHIPS_TO_STG_ACCOUNTS,
        RELATIONSHIPS_TO_SF_ACCOUNTS,
    }
    assert not {
        c for c in scope_of(instance, scopes, ["events"]).checks if c.asset_key not in EVENTS_SCOPE
    }
    assert scope_of(instance, scopes, ["subscriptions"]).keys == SUBSCRIPTIONS_SCOPE
    # A connection (by id or by name) is every stream it lands: here, every model and sync.
    whole = scope_of(instance, scopes, [SANDBOX_AIRBYTE_CONNECTION_ID]).keys
    assert whole is not None and len(whole) == 14
    assert scope_of(instance, scopes, ["crm_postgres_to_warehouse"]).keys == whole
    # A source that names nothing this location holds: the whole job, saying why.
    unknown = scope_of(instance, scopes, ["events", "snowflake"])
    assert unknown.keys is None and "'snowflake'" in unknown.reason


def test_signals_for_two_sources_together_are_one_run_carrying_every_id(
    signals: Signals,
) -> None:
    empty = signals.tick(None)
    assert empty.run_requests == []
    signals.send("events", "e1")
    signals.send("accounts", "a1")
    signals.send("events", "e2")
    result = signals.tick(empty.cursor)
    (request,) = result.run_requests
    assert request.run_key == "webhook:1-3"
    assert _selection(request) == EVENTS_SCOPE | ACCOUNTS_SCOPE
    assert request.tags[EVENT_IDS_TAG].splitlines() == ["signal:e1", "signal:a1", "signal:e2"]
    assert request.tags[EVENT_ID_TAG] == "signal:e1"
    assert (request.tags[EVENT_COUNT_TAG], request.tags[FIRST_SEQ_TAG]) == ("3", "1")
    assert request.tags[LAST_SEQ_TAG] == "3"
    assert request.tags[SOURCE_TAG] == "accounts,events"
    assert request.tags[SCOPE_TAG] == "scoped"
    for event_id in ("signal:e1", "signal:a1", "signal:e2"):
        assert store.served_by(signals.path, event_id) == "webhook:1-3"
    assert json.loads(result.cursor or "{}") == {"seq": 3}

    assert signals.tick(result.cursor).run_requests == []  # none on repeat
    # A daemon that lost the new cursor re-evaluates the same events: same run key.
    assert [r.run_key for r in signals.tick(empty.cursor).run_requests] == ["webhook:1-3"]


def test_a_burst_for_one_source_is_one_run_and_every_id_is_recorded(signals: Signals) -> None:
    burst = [f"b{i}" for i in range(IDS_IN_TAG + 10)]
    signals.send("events", *burst)
    (request,) = signals.tick(None).run_requests
    assert _selection(request) == EVENTS_SCOPE
    assert request.run_key == f"webhook:1-{len(burst)}"
    assert request.tags[EVENT_COUNT_TAG] == str(len(burst))
    listed = request.tags[EVENT_IDS_TAG].splitlines()
    assert listed[:-1] == [f"signal:{b}" for b in burst[:IDS_IN_TAG]]
    assert listed[-1] == "... and 10 more (see the webhook store)"
    assert {store.served_by(signals.path, f"signal:{b}") for b in burst} == {request.run_key}

    # Queryable per event from the instance once Dagster created the run with that key.
    job = signals.defs.resolve_job_def(BUILD_JOB_NAME)
    run = signals.instance.create_run_for_job(
        job,
        asset_selection=frozenset(request.asset_selection or []),
        tags={
            **request.tags,
            "dagster/run_key": request.run_key or "",
            "dagster/sensor_name": "webhook_event_sensor",
        },
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    served = run_serving_event(signals.instance, f"signal:{burst[-1]}")
    assert served is not None and served.run_id == run.run_id
    signals.instance.report_run_canceled(run)


def test_signals_during_a_build_wait_and_none_is_lost(signals: Signals) -> None:
    signals.send("events", "e1")
    first = signals.tick(None)
    (request,) = first.run_requests
    job = signals.defs.resolve_job_def(BUILD_JOB_NAME)
    building = signals.instance.create_run_for_job(
        job,
        asset_selection=frozenset(request.asset_selection or []),
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    signals.send("accounts", "a1", "a2")
    signals.send("events", "e2")
    waiting = signals.tick(first.cursor)
    assert waiting.run_requests == [] and waiting.cursor == first.cursor
    assert "wait" in (waiting.skip_reason.skip_message or "")
    assert store.served_by(signals.path, "signal:a1") is None

    signals.instance.report_run_canceled(building)
    after = signals.tick(waiting.cursor)
    (request,) = after.run_requests  # every event that waited, in one run
    assert request.run_key == "webhook:2-4"
    assert _selection(request) == EVENTS_SCOPE | ACCOUNTS_SCOPE
    assert request.tags[EVENT_IDS_TAG].splitlines() == ["signal:a1", "signal:a2", "signal:e2"]
    assert signals.tick(after.cursor).run_requests == []


def test_an_unknown_source_or_a_model_never_built_builds_the_whole_job(
    signals: Signals, tmp_path: Path
) -> None:
    signals.send("fivetran", "f1")
    (request,) = signals.tick(None).run_requests
    assert request.asset_selection is None and request.tags[SCOPE_TAG] == "full"

    (tmp_path / "fresh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "fresh")) as fresh:
        scopes = SourceScopes(signals.repository)
        scope = scope_of(fresh, scopes, ["events"])
        assert scope.keys is None and "never built" in scope.reason


def _hightouch_runs(chain: SandboxChain) -> dict[str, int]:
    counts = {}
    with chain.sandbox.client() as http:
        for destination in load_destinations():
            response = http.get(
                f"/hightouch/api/v1/syncs/{destination.sync_id}/runs", params={"limit": 100}
            )
            response.raise_for_status()
            counts[destination.key] = len(response.json()["data"])
    return counts


def test_a_scoped_run_builds_only_its_downstream_and_its_syncs_ship(
    chain: SandboxChain, defs: dg.Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = chain.instance
    first = run_chain(instance, console_log_level="WARNING")  # what a deployment has already
    assert first.success, first.failed_steps
    before = _hightouch_runs(chain)

    store.initialise(store.events_db_path())
    store.record(store.events_db_path(), "signal:accounts-landed", "accounts", {})
    sensor = next(s for s in defs.sensors if s.name == "webhook_event_sensor")
    context = dg.build_sensor_context(
        instance=instance, cursor=None, repository_def=defs.get_repository_def()
    )
    (request,) = sensor(context).run_requests
    assert _selection(request) == ACCOUNTS_SCOPE

    # What the daemon does with the request: the job subset to its assets and checks.
    job = defs.resolve_job_def(BUILD_JOB_NAME).get_subset(
        asset_selection=set(request.asset_selection or []),
        asset_check_selection=set(request.asset_check_keys or []),
    )
    result = job.execute_in_process(
        instance=instance,
        tags=request.tags,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    assert result.success
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == ACCOUNTS_SCOPE  # stg_customers, the other marts: not rebuilt
    evaluations = result.get_asset_check_evaluations()
    gate = {
        e.asset_key.to_user_string(): e.passed
        for e in evaluations
        if e.check_name == "quality_gate"
    }
    # salesforce_contacts reads a mart this run did not rebuild: its earlier results still count.
    assert gate == {"activate/salesforce_accounts": True, "activate/salesforce_contacts": True}
    checked = {e.asset_check_key for e in evaluations}
    assert set(request.asset_check_keys or []) == checked
    # The tests of models not rebuilt that read a rebuilt one ran too (dbt relationships).
    assert {RELATIONSHIPS_TO_STG_ACCOUNTS, RELATIONSHIPS_TO_SF_ACCOUNTS} <= checked
    after = _hightouch_runs(chain)
    shipped = {key for key in after if after[key] > before[key]}
    assert shipped == {"salesforce_accounts", "salesforce_contacts"}
    assert all(after[key] == before[key] + 1 for key in shipped)
