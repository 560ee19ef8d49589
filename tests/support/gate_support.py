"""Helpers shared by the gate, guard and paging tests: a chain sandbox and hand launches."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from activation.lib.destinations import load_destinations, sync_asset_key_for
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import prepare_code_location
from tests.support.warehouse_path import worker_sandbox

ROUTING_KEYS = {
    "PAGERDUTY_ROUTING_KEY_REVENUE_OPS": "revops" + secrets.token_hex(13),
    "PAGERDUTY_ROUTING_KEY_MARKETING_OPS": "mktops" + secrets.token_hex(13),
    "PAGERDUTY_ROUTING_KEY_LIFECYCLE": "lifecy" + secrets.token_hex(13),
}
TOKEN = "gate-test-token-" + secrets.token_hex(6)


@contextmanager
def chain_sandbox(folder: Path, destinations_file: Path | None = None) -> Iterator[SandboxProcess]:
    """A sandbox selected through the environment, with routing keys and a prepared manifest."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HIGHTOUCH_API_TOKEN", TOKEN)
        patch.setenv("ACTIVATION_SYNC_RETRY_DELAY_SECONDS", "0")
        for name, value in ROUTING_KEYS.items():
            patch.setenv(name, value)
        if destinations_file:
            patch.setenv("ACTIVATION_DESTINATIONS_FILE", str(destinations_file))
        load_destinations.cache_clear()
        try:
            with worker_sandbox(folder, "--phase-seconds", "0.05", "--rows", "300") as box:
                prepare_code_location()
                yield box
        finally:
            load_destinations.cache_clear()


def sync_key(destination_key: str) -> dg.AssetKey:
    return sync_asset_key_for(destination_key)


def transform_and_its_sources(definitions: dg.Definitions) -> list[dg.AssetKey]:
    """The dbt models and the Airbyte streams they read: a rebuild upstream of every sync."""
    from activation.defs.transform.dbt import TRANSFORM_GROUP

    selection = dg.AssetSelection.groups(TRANSFORM_GROUP).upstream()
    return sorted(selection.resolve(definitions.resolve_asset_graph()))


def launch(
    instance: dg.DagsterInstance, *keys: dg.AssetKey, definitions: dg.Definitions | None = None
) -> dg.ExecuteInProcessResult:
    """Launch only the given assets, as a hand launch from the UI does."""
    from activation.definitions import build_definitions

    defs = definitions or build_definitions()
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=list(keys), raise_on_error=False
    )


@dataclass(frozen=True)
class StepFailure:
    step: str
    description: str
    metadata: dict[str, object]


def step_failures(result: dg.ExecuteInProcessResult) -> list[StepFailure]:
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data.user_failure_data
            failures.append(
                StepFailure(
                    event.step_key or "",
                    data.description if data else str(event.step_failure_data.error),
                    {k: v.value for k, v in (data.metadata if data else {}).items()},
                )
            )
    return failures


def all_log_text(instance: dg.DagsterInstance) -> str:
    """Every message and event of every run, for asserting a secret never appears."""
    parts = []
    for record in instance.get_run_records(limit=100):
        run = record.dagster_run
        parts += [repr(run.run_config), repr(run.tags)]
        for entry in instance.all_logs(run.run_id):
            parts += [entry.user_message or "", repr(entry.dagster_event)]
    return "\n".join(parts)


def held_back(result: dg.ExecuteInProcessResult, check: str = "quality_gate") -> list[StepFailure]:
    """The syncs the run held back, as a data engineer sees them: a failed pre-sync `check` on
    the sync asset (an asset step, which then ends without a materialization) or an op's
    `SyncHeldBack` failure. `step` is the step that decided."""
    held = []
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            continue
        evaluation = event.asset_check_evaluation_data
        if (
            evaluation.asset_key.path[0] == "activate"
            and evaluation.check_name == check
            and not evaluation.passed
        ):
            held.append(
                StepFailure(
                    event.step_key or "",
                    evaluation.description or "",
                    {k: v.value for k, v in evaluation.metadata.items()},
                )
            )
    return held + [f for f in step_failures(result) if "blocked_by" in f.metadata]


def synced(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> bool:
    """The run succeeded and materialized the sync asset (a held-back sync does not)."""
    return result.success and any(
        event.asset_key == key for event in result.get_asset_materialization_events()
    )
