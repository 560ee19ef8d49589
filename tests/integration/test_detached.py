"""Detached waits: a sync step triggers through the one sync path and ends; the
detached_sync_sensor reports the run once it ends. Real Dagster steps, real HTTP to the sandbox.

The module declares every destination `wait: detached` (salesforce_contacts without `after`, so
salesforce_accounts may detach too). The sensor is evaluated for real: in this process with
`build_sensor_context` (its events then stored in order, as the daemon stores a tick's
`asset_events`), and under the real `dagster-daemon`, SIGKILLed while five runs are in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import yaml

from activation.core.contract import recorded_types
from activation.core.ledger_signature import LedgerSigner
from activation.lib.destinations import load_destinations
from activation.lib.environment import SANDBOX_HIGHTOUCH_PREFIX
from activation.lib.hightouch import IN_FLIGHT
from activation.lib.paths import DEFAULT_DESTINATIONS_FILE, PROJECT_ROOT
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import ChainResult
from tests.support.gate_support import ROUTING_KEYS, TOKEN, chain_sandbox, launch, sync_key
from tests.support.polling import wait_for

SENSOR = "detached_sync_sensor"
FAILED_ROWS = "failed_rows"


def _detached_declaration(folder: Path) -> Path:
    document = yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())
    for destination in document["destinations"]:
        destination["wait"] = "detached"
        destination.pop("after", None)
    path = folder / "destinations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    folder = tmp_path_factory.mktemp("detached")
    with chain_sandbox(folder / "data", _detached_declaration(folder)) as box:
        yield box


@pytest.fixture(scope="module")
def definitions(sandbox: SandboxProcess) -> dg.Definitions:
    from activation.definitions import build_definitions

    return build_definitions()


def _destination(key: str):
    return next(d for d in load_destinations() if d.key == key)


# -- helpers --------------------------------------------------------------------------------------


class Sensor:
    """The code location's detached_sync_sensor evaluated in this process, its cursor kept."""

    def __init__(self, definitions: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.definition = definitions.get_sensor_def(SENSOR)
        self.resources = {k: definitions.resources[k] for k in ("hightouch", "pagerduty", "slack")}
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> list[Any]:
        """One evaluation; returns its asset events without storing them (a crash before the
        daemon stored them)."""
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources=self.resources,
            definitions=None,
        ) as context:
            result = self.definition(context)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        return list(result.asset_events or [])

    def store(self, events: list[Any]) -> None:
        """What the daemon does with a tick's asset events, in order."""
        for event in events:
            self.instance.report_runless_asset_event(event)

    def tick_until_events(self, timeout: float = 30.0) -> list[Any]:
        return wait_for("a detached run to end", self.tick, timeout, interval=0.5)

    def drain(self, timeout: float = 30.0) -> None:
        """Tick and store until no detached run is in flight."""
        from activation.core.detached import in_flight_runs

        signer = LedgerSigner(TOKEN)
        deadline = time.monotonic() + timeout
        while in_flight_runs(self.instance, load_destinations(), signer=signer):
            assert time.monotonic() < deadline, "detached runs still in flight"
            self.store(self.tick())
            time.sleep(0.3)


def full_resync(
    definitions: dg.Definitions, instance: dg.DagsterInstance, *keys: dg.AssetKey
) -> dg.ExecuteInProcessResult:
    """Launch the syncs as full resyncs (every row sent, so a rejecting run rejects some)."""
    ops = {key.to_python_identifier(): {"config": {"full_resync": True}} for key in keys}
    return definitions.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=list(keys),
        run_config={"ops": ops},
        raise_on_error=False,
    )


def detached_runs(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Destination key -> Hightouch run id the Dagster run left in flight."""
    found = {}
    for entry in instance.all_logs(run_id):
        observation = entry.asset_observation
        mark = observation.metadata.get("activation_trigger") if observation else None
        if observation is not None and mark is not None and mark.value == "detached":
            found[observation.asset_key.path[-1]] = str(
                observation.metadata["hightouch_run_id"].value
            )
    return found


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str) -> list[dict]:
    records = instance.fetch_materializations(key, limit=200).records
    found = []
    for record in records:
        metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
        if "hightouch_run_id" in metadata and metadata["hightouch_run_id"].value == run_id:
            found.append({k: v.value for k, v in metadata.items()})
    return found


def failed_rows_evaluations(
    instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str
) -> list[dg.AssetCheckEvaluation]:
    entries = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    found = []
    for entry in entries:
        evaluation = entry.event_log_entry.dagster_event.asset_check_evaluation_data  # type: ignore[union-attr]
        meta = evaluation.metadata
        if (
            evaluation.asset_key == key
            and evaluation.check_name == FAILED_ROWS
            and "hightouch_run_id" in meta
            and meta["hightouch_run_id"].value == run_id
        ):
            found.append(evaluation)
    return found


def pages(sandbox: SandboxProcess) -> list[dict]:
    return [n["body"] for n in sandbox.notifications("pagerduty")]


def hightouch_run(sandbox: SandboxProcess, sync_id: str, run_id: str) -> dict:
    response = httpx.get(
        f"{sandbox.url}{SANDBOX_HIGHTOUCH_PREFIX}/syncs/{sync_id}/runs",
        params={"runId": run_id},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response.raise_for_status()
    return response.json()["data"][0]


@pytest.fixture(scope="module")
def sensor(
    definitions: dg.Definitions, instance: dg.DagsterInstance, good_run: ChainResult
) -> Sensor:
    """The sensor, after the `activate` run's own detached syncs (if any: a sandbox run may end
    before its step reads it, and an ended run is reported by the step) were reported."""
    assert good_run.success
    follower = Sensor(definitions, instance)
    follower.drain()
    return follower


# -- one detached sync ----------------------------------------------------------------------------


def test_a_detached_sync_over_its_failed_rows_policy_fails_its_check_and_pages_its_owner(
    sandbox: SandboxProcess,
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    sensor: Sensor,
) -> None:
    braze = _destination("braze_users")
    key = sync_key(braze.key)
    sandbox.inject_fault(kind="run", sync_id=braze.sync_id, reject_ratio=0.2, running_seconds=3)
    triggers_before = sandbox.trigger_counts().get(braze.sync_id or "", 0)
    pages_before = len(pages(sandbox))

    step = full_resync(definitions, instance, key)

    # The step triggered once, judged the gate and the contract, and ended without waiting.
    assert step.success
    assert step.get_asset_materialization_events() == []
    checks = {e.check_name: e.passed for e in step.get_asset_check_evaluations()}
    assert checks == {"quality_gate": True, "schema_contract": True}
    [(destination, run_id)] = detached_runs(instance, step.run_id).items()
    assert destination == braze.key
    assert sandbox.trigger_counts()[braze.sync_id or ""] == triggers_before + 1
    logs = "\n".join(str(e.user_message) for e in instance.all_logs(step.run_id))
    assert f"Hightouch run {run_id}" in logs and "detached_sync_sensor reports" in logs
    assert hightouch_run(sandbox, braze.sync_id or "", run_id)["status"] in IN_FLIGHT

    events = sensor.tick_until_events()
    sensor.store(events)

    [evaluation] = failed_rows_evaluations(instance, key, run_id)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "max_failed_rows=0" in (evaluation.description or "")
    assert evaluation.metadata["failed_rows"].value > 0  # type: ignore[operator]
    assert materializations(instance, key, run_id) == []  # on_exceed: fail ships no materialization
    [page] = pages(sandbox)[pages_before:]
    assert page["event_action"] == "trigger"
    assert page["routing_key"] == ROUTING_KEYS[braze.owner.pagerduty_routing_key_env]
    assert page["dedup_key"] == "activation/activate/braze_users/sync_failed"
    assert page["payload"]["custom_details"]["dagster_run_id"] == step.run_id
    assert "max_failed_rows=0" in page["payload"]["summary"]
    slack = [n["body"]["text"] for n in sandbox.notifications("slack")]
    assert any(run_id in text and "braze_users*: failed" in text for text in slack)

    # Reported once: later ticks find nothing in flight, and page nobody.
    assert sensor.tick() == []
    assert len(pages(sandbox)) == pages_before + 1
    assert sandbox.trigger_counts()[braze.sync_id or ""] == triggers_before + 1


def test_a_crash_between_evaluation_and_storage_reports_what_is_missing_once(
    sandbox: SandboxProcess,
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    sensor: Sensor,
) -> None:
    iterable = _destination("iterable_users")
    key = sync_key(iterable.key)
    sandbox.inject_fault(kind="run", sync_id=iterable.sync_id, running_seconds=3)
    step = full_resync(definitions, instance, key)
    assert step.success
    run_id = detached_runs(instance, step.run_id)[iterable.key]

    first = sensor.tick_until_events()  # the daemon dies before storing these
    again = sensor.tick()  # the restarted daemon evaluates again: the same report
    assert [type(e) for e in again] == [type(e) for e in first]
    assert [type(e) for e in again[-3:]] == [
        dg.AssetMaterialization,  # the sync's, then its failed_rows, then the reported mark
        dg.AssetCheckEvaluation,
        dg.AssetObservation,
    ]
    assert {e.asset_key for e in again[-3:]} == {key}
    sensor.store(again[:-2])  # ...and dies after storing the materialization
    rest = sensor.tick()
    assert [type(e) for e in rest] == [dg.AssetCheckEvaluation, dg.AssetObservation]
    sensor.store(rest[:1])  # ...and again, after storing the check
    repair = sensor.tick()
    assert [type(e) for e in repair] == [dg.AssetObservation]  # only the reported mark
    sensor.store(repair)
    assert sensor.tick() == []

    [stored] = materializations(instance, key, run_id)
    [evaluation] = failed_rows_evaluations(instance, key, run_id)
    assert evaluation.passed
    # The metadata of the attached path, plus the Dagster run that triggered.
    assert stored["dagster_run_id"] == step.run_id
    assert stored["sync_stage"] == "production"
    assert stored["hightouch_status"] == "success"
    assert stored["successful_added"] > 0 and stored["failed_added"] == 0
    assert {"mart_column_types", "synced_snapshot_rows", "hightouch_run_url"} <= set(stored)
    # The next contract compares with these types: read from the mark the step's run wrote,
    # not from the runless report (which anyone could forge).
    recorded = recorded_types(instance, iterable)
    assert recorded is not None and recorded.run_id == step.run_id


# -- a daemon restart while five detached runs are in flight --------------------------------------


class Daemon:
    """`dagster-daemon run` on the test's Dagster home, in its own process group."""

    def __init__(self, instance: dg.DagsterInstance, log_path: Path) -> None:
        self.instance = instance
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "DAGSTER_HOME": self.instance.root_directory}
        command = [
            str(Path(sys.executable).parent / "dagster-daemon"),
            "run",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
        ]
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL to the daemon and its code server: no shutdown, no flush."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def test_a_daemon_restart_while_five_detached_runs_are_in_flight_loses_none_and_duplicates_none(
    sandbox: SandboxProcess, instance: dg.DagsterInstance, sensor: Sensor, tmp_path: Path
) -> None:
    destinations = load_destinations()
    assert len(destinations) == 5
    sensor.drain()
    # The steps trigger braze_users and hubspot_contacts first: their runs are meant to end
    # after the daemon is back (on a slow machine they may end while it is down too); the three
    # triggered last end while it is down.
    late = {"braze_users", "hubspot_contacts"}
    for destination in destinations:
        seconds = 20.0 if destination.key in late else 7.0
        sandbox.inject_fault(kind="run", sync_id=destination.sync_id, running_seconds=seconds)
    triggers_before = sandbox.trigger_counts()
    daemon = Daemon(instance, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_for(
            "the daemon to evaluate detached_sync_sensor",
            lambda: SENSOR in daemon.log(),
            60,
            interval=0.5,
        )
        step = launch(instance, *(sync_key(d.key) for d in destinations))
        assert step.success
        in_flight = detached_runs(instance, step.run_id)
        assert set(in_flight) == {d.key for d in destinations}
        daemon.kill()  # mid-flight: every run still going in Hightouch
        statuses = {
            d.key: hightouch_run(sandbox, d.sync_id or "", in_flight[d.key])["status"]
            for d in destinations
        }
        assert set(statuses.values()) <= IN_FLIGHT, statuses

        def ended(key: str) -> bool:
            sync_id = _destination(key).sync_id or ""
            return hightouch_run(sandbox, sync_id, in_flight[key])["status"] not in IN_FLIGHT

        early = [d.key for d in destinations if d.key not in late]
        wait_for("the early runs to end", lambda: all(ended(k) for k in early), 30, interval=0.5)
        ended_while_down = {d.key for d in destinations if ended(d.key)}
        daemon.start()

        def reported(key: str) -> bool:
            return bool(failed_rows_evaluations(instance, sync_key(key), in_flight[key]))

        wait_for(
            "the daemon to report every detached run",
            lambda: all(reported(d.key) for d in destinations),
            60,
            interval=0.5,
        )
    finally:
        daemon.kill()
    assert set(early) <= ended_while_down
    assert sensor.tick() == []  # the next evaluation finds nothing left to report
    for destination in destinations:
        key, run_id = sync_key(destination.key), in_flight[destination.key]
        assert len(materializations(instance, key, run_id)) == 1, destination.key
        [evaluation] = failed_rows_evaluations(instance, key, run_id)
        assert evaluation.passed, evaluation.description
    after = sandbox.trigger_counts()
    assert {d.sync_id: after[d.sync_id or ""] - triggers_before.get(d.sync_id or "", 0)
            for d in destinations} == {d.sync_id: 1 for d in destinations}  # fmt: skip
