"""Forged reports against the detached-sync follower: anyone with the webserver can record
runless events (`/report_asset_observation/`, `/report_asset_check/`,
`/report_asset_materialization/` call `DagsterInstance.report_runless_asset_event`, as here).
None of them may make the follower report a run nobody left in flight, rewrite the guards'
baseline, or skip reporting (and paging) a real run. Real steps, a real sandbox over HTTP, the
code location's `detached_sync_sensor` evaluated for real.

The module declares every destination `wait: detached` except iterable_users, which waits
attached: its next sync shows whether a forged mark made the sync path wait for a run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import dagster as dg
import httpx
import pytest
import yaml

from activation.core.detached import in_flight_of
from activation.core.guards import snapshot_table
from activation.core.ledger_signature import (
    FAILED_ROWS,
    MATERIALIZATION,
    REPORTED,
    SIGNATURE,
    LedgerSigner,
)
from activation.core.verdicts import FAILED_ROWS_CHECK
from activation.lib.destinations import Destination
from activation.lib.environment import SANDBOX_HIGHTOUCH_PREFIX
from activation.lib.hightouch import IN_FLIGHT
from activation.lib.paths import DEFAULT_DESTINATIONS_FILE
from activation.lib.warehouse import warehouse_connection
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import ChainResult
from tests.integration.test_detached import (
    Sensor,
    _destination,
    detached_runs,
    failed_rows_evaluations,
    full_resync,
    hightouch_run,
    materializations,
    pages,
)
from tests.support.gate_support import TOKEN, chain_sandbox, launch, sync_key
from tests.support.polling import wait_for

ATTACHED = "iterable_users"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    folder = tmp_path_factory.mktemp("forgery")
    document = yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())
    for destination in document["destinations"]:
        destination["wait"] = "attached" if destination["key"] == ATTACHED else "detached"
        destination.pop("after", None)
    declaration = folder / "destinations.yaml"
    declaration.write_text(yaml.safe_dump(document, sort_keys=False))
    with chain_sandbox(folder / "data", declaration) as box:
        yield box


@pytest.fixture(scope="module")
def definitions(sandbox: SandboxProcess) -> dg.Definitions:
    from activation.definitions import build_definitions

    return build_definitions()


@pytest.fixture(scope="module")
def sensor(
    definitions: dg.Definitions, instance: dg.DagsterInstance, good_run: ChainResult
) -> Sensor:
    assert good_run.success
    follower = Sensor(definitions, instance)
    follower.drain()
    return follower


def _snapshot(destination: Destination) -> tuple[int, str]:
    """The guards' baseline as the warehouse holds it: row count and a digest of its rows."""
    with warehouse_connection(read_only=True) as session:
        rows = session.rows(f"SELECT pk, row_hash FROM {snapshot_table(destination)} ORDER BY pk")
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def _forge(instance: dg.DagsterInstance, *events: Any) -> None:
    """What the webserver's report endpoints do with a request body."""
    for event in events:
        instance.report_runless_asset_event(event)


def _log_text(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(str(e.user_message) for e in instance.all_logs(run_id))


# -- a forged detached mark -----------------------------------------------------------------------


def _run_outside_dagster(sandbox: SandboxProcess, sync_id: str) -> str:
    """A run started in Hightouch itself (its UI or schedule), waited for until it succeeded:
    a real, finished run that no step of this code location recorded."""
    response = httpx.post(
        f"{sandbox.url}{SANDBOX_HIGHTOUCH_PREFIX}/syncs/{sync_id}/trigger",
        json={},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response.raise_for_status()
    run_id = str(response.json()["id"])
    wait_for(
        "the run to succeed",
        lambda: hightouch_run(sandbox, sync_id, run_id)["status"] == "success",
        30,
        interval=0.5,
    )
    return run_id


def test_a_forged_detached_mark_of_a_finished_run_reports_nothing_and_keeps_the_guard_baseline(
    sandbox: SandboxProcess, instance: dg.DagsterInstance, sensor: Sensor, good_run: ChainResult
) -> None:
    destination = _destination(ATTACHED)
    key, sync_id = sync_key(ATTACHED), destination.sync_id or ""
    finished = _run_outside_dagster(sandbox, sync_id)

    # The forger names that run, a real Dagster run, and everything a step's mark carries.
    _forge(
        instance,
        dg.AssetObservation(
            asset_key=key,
            metadata={
                "activation_trigger": "detached",
                "hightouch_sync_id": sync_id,
                "hightouch_run_id": finished,
                "dagster_run_id": good_run.run_id,
                "dagster_run_family": good_run.run_id,
                "destination": ATTACHED,
                "sync_stage": "production",
            },
        ),
    )
    assert in_flight_of(instance, destination, signer=LedgerSigner(TOKEN)) == []

    # The next sync of the destination triggers at once: it waits for no forged run first.
    triggers = sandbox.trigger_counts().get(sync_id, 0)
    after = launch(instance, key)
    assert after.success
    assert sandbox.trigger_counts()[sync_id] == triggers + 1
    logs = _log_text(instance, after.run_id)
    assert f"Hightouch run {finished} of {ATTACHED}" not in logs
    assert f"detached mark(s) reported outside a run ignored: {key.to_user_string()}" in logs

    # The mart moved on since the last genuine sync (here the baseline lacks one row the mart
    # has): reporting the forged mark would rewrite the baseline to the mart, hiding that change.
    with warehouse_connection(read_only=False) as session:
        table = snapshot_table(destination)
        session.run(f"DELETE FROM {table} WHERE pk = (SELECT min(pk) FROM {table})")
    baseline = _snapshot(destination)

    for _ in range(3):
        events = sensor.tick()
        assert events == []
        sensor.store(events)
    assert _snapshot(destination) == baseline
    assert materializations(instance, key, finished) == []
    assert failed_rows_evaluations(instance, key, finished) == []


# -- forged reports of a run still in flight ------------------------------------------------------


def test_forged_reports_of_an_in_flight_run_do_not_stop_its_genuine_report_and_page(
    sandbox: SandboxProcess,
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    sensor: Sensor,
) -> None:
    braze = _destination("braze_users")
    key, sync_id = sync_key(braze.key), braze.sync_id or ""
    sandbox.inject_fault(kind="run", sync_id=sync_id, reject_ratio=0.2, running_seconds=6)
    pages_before = len(pages(sandbox))
    triggers = sandbox.trigger_counts().get(sync_id, 0)
    step = full_resync(definitions, instance, key)
    assert step.success
    run_id = detached_runs(instance, step.run_id)[braze.key]
    assert hightouch_run(sandbox, sync_id, run_id)["status"] in IN_FLIGHT

    # Each forgery names the run and its Dagster run; some even carry a signature, made with
    # a key the forger guessed (another token).
    guessed = LedgerSigner("guessed-token")
    ids = {
        "hightouch_sync_id": dg.MetadataValue.text(sync_id),
        "hightouch_run_id": dg.MetadataValue.text(run_id),
        "dagster_run_id": dg.MetadataValue.text(step.run_id),
    }
    reported = {"activation_trigger": dg.MetadataValue.text("reported"), **ids}
    _forge(
        instance,
        dg.AssetObservation(asset_key=key, metadata=reported),
        dg.AssetObservation(asset_key=key, metadata=guessed.sign(REPORTED, key, reported)),
        dg.AssetCheckEvaluation(
            asset_key=key, check_name=FAILED_ROWS_CHECK, passed=True, metadata=dict(ids)
        ),
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=FAILED_ROWS_CHECK,
            passed=True,
            metadata=guessed.sign(FAILED_ROWS, key, ids),
        ),
        dg.AssetMaterialization(
            asset_key=key, metadata={**ids, "hightouch_status": dg.MetadataValue.text("success")}
        ),
        dg.AssetMaterialization(asset_key=key, metadata=guessed.sign(MATERIALIZATION, key, ids)),
    )
    forged_materializations = len(materializations(instance, key, run_id))
    assert forged_materializations == 2
    assert [r.run_id for r in in_flight_of(instance, braze, signer=LedgerSigner(TOKEN))] == [run_id]

    events = sensor.tick_until_events(timeout=90)
    sensor.store(events)
    assert TOKEN not in repr(events)  # the key's source never reaches the event log

    # The genuine report: the failing check (on_exceed: fail ships no materialization), signed.
    genuine = [e for e in failed_rows_evaluations(instance, key, run_id) if not e.passed]
    [evaluation] = genuine
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert LedgerSigner(TOKEN).verifies(FAILED_ROWS, key, evaluation.metadata)
    assert len(materializations(instance, key, run_id)) == forged_materializations
    [page] = pages(sandbox)[pages_before:]
    assert page["event_action"] == "trigger"
    assert page["dedup_key"] == "activation/activate/braze_users/sync_failed"
    assert in_flight_of(instance, braze, signer=LedgerSigner(TOKEN)) == []

    # Reported once: a further tick reports nothing and pages nobody; one trigger in all.
    assert sensor.tick() == []
    assert len(pages(sandbox)) == pages_before + 1
    assert len([e for e in failed_rows_evaluations(instance, key, run_id) if not e.passed]) == 1
    assert sandbox.trigger_counts()[sync_id] == triggers + 1


# -- the signature ----------------------------------------------------------------------------


def _metadata(run_id: str = "77", dagster_run_id: str = "abc") -> dict[str, dg.MetadataValue]:
    return {
        "hightouch_run_id": dg.MetadataValue.text(run_id),
        "dagster_run_id": dg.MetadataValue.text(dagster_run_id),
    }


def test_a_signature_verifies_only_the_event_kind_asset_and_ids_it_was_made_for() -> None:
    signer, key = LedgerSigner("token-one"), dg.AssetKey(["activate", "braze_users"])
    signed = signer.sign(REPORTED, key, _metadata())
    assert signer.verifies(REPORTED, key, signed)
    assert LedgerSigner("token-one").verifies(REPORTED, key, signed)  # another pass, same token

    tampered = {**signed, "hightouch_run_id": dg.MetadataValue.text("78")}
    assert not signer.verifies(REPORTED, key, tampered)
    other_run = {**signed, "dagster_run_id": dg.MetadataValue.text("abd")}
    assert not signer.verifies(REPORTED, key, other_run)
    assert not signer.verifies(MATERIALIZATION, key, signed)  # not replayable as another kind
    assert not signer.verifies(REPORTED, dg.AssetKey(["activate", "iterable_users"]), signed)
    assert not LedgerSigner("token-two").verifies(REPORTED, key, signed)  # a rotated token
    assert not signer.verifies(REPORTED, key, _metadata())  # unsigned
    with pytest.raises(ValueError, match="Hightouch API token"):
        LedgerSigner("")


def test_neither_the_token_nor_the_signature_key_shows_in_what_is_signed() -> None:
    token = "secret-token-" + "x" * 20
    signer = LedgerSigner(token)
    signed = signer.sign(FAILED_ROWS, dg.AssetKey(["activate", "braze_users"]), _metadata())
    assert token not in repr(signed) and token not in repr(signer)
    assert set(signed) == {"hightouch_run_id", "dagster_run_id", SIGNATURE}
