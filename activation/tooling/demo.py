"""`make demo`: the whole chain on the sandbox, once on good data and once on bad data.

The first half shows rows reaching every CRM stand-in with their counts; the second breaks the
source data and shows the blocking dbt tests stopping the chain before any Hightouch trigger. The
demo exits 0 only when both halves behaved as they must.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from activation.lib.destinations import Destination, load_destinations
from activation.lib.environment import SANDBOX_URL_VAR
from activation.lib.paths import data_dir
from activation.sandbox.launcher import SandboxProcess, start_sandbox


@dataclass(frozen=True)
class ChainResult:
    run_id: str
    success: bool
    syncs: dict[str, dict[str, object]]
    """Destination key -> materialization metadata values of its sync asset in this run."""
    failed_checks: list[str]
    passed_checks: int
    failed_steps: list[str]


def prepare_dbt_manifest() -> Path:
    """`dbt parse`, so `@dbt_assets` can read the manifest when definitions load."""
    from activation.core.dbt_project import dbt_project
    from activation.resources import build_dbt_resource

    build_dbt_resource().cli(["parse", "--quiet"], target_path=dbt_project.target_path).wait()
    return dbt_project.manifest_path


def prepare_code_location() -> None:
    """What the code location needs before it loads: the dbt manifest and the Airbyte listing
    (the latter from the endpoints in force, here the sandbox)."""
    from activation.core.airbyte_listing import refresh_listing
    from activation.resources import build_airbyte_workspace

    prepare_dbt_manifest()
    refresh_listing(build_airbyte_workspace())


@contextmanager
def sandbox_environment(
    folder: Path, *sandbox_args: str, port: int | None = None
) -> Iterator[SandboxProcess]:
    """A sandbox process selected through the environment, stopped and deselected afterwards."""
    sandbox = start_sandbox(folder, *sandbox_args, port=port)
    saved = {k: os.environ.get(k) for k in (SANDBOX_URL_VAR, "ACTIVATION_DATA_DIR")}
    os.environ[SANDBOX_URL_VAR] = sandbox.url
    os.environ["ACTIVATION_DATA_DIR"] = str(folder)
    # The sandbox accepts any non-empty token; a fresh random one keeps the demo honest about
    # never printing it.
    os.environ.setdefault("HIGHTOUCH_API_TOKEN", "demo-" + secrets.token_hex(8))
    try:
        yield sandbox
    finally:
        sandbox.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_chain(instance: dg.DagsterInstance, console_log_level: str = "DEBUG") -> ChainResult:
    """Load the code location as Dagster would and execute the `activate` job once."""
    from activation.components.hightouch_syncs import sync_asset_key
    from activation.core.run_summary import report_run
    from activation.definitions import build_definitions

    definitions = build_definitions()
    result = definitions.resolve_job_def("activate").execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": console_log_level}}}},
    )
    # What the summary sensors do after every run under the daemon; an in-process run has no
    # daemon, so the same report is made here.
    defined = definitions.resources or {}
    with dg.build_resources({name: defined[name] for name in ("slack", "pagerduty")}) as resources:
        report_run(
            instance,
            result.run_id,
            load_destinations(),
            slack=resources.slack,
            pagerduty=resources.pagerduty,
            log=logging.getLogger("activation.tooling.demo"),
            gate=defined["quality_gate"],
        )
    syncs: dict[str, dict[str, object]] = {}
    keys = {sync_asset_key(d): d.key for d in load_destinations()}
    for event in result.get_asset_materialization_events():
        if event.asset_key in keys:
            metadata = event.materialization.metadata
            syncs[keys[event.asset_key]] = {k: v.value for k, v in metadata.items()}
    evaluations = result.get_asset_check_evaluations()
    failed_checks = sorted(
        f"{e.asset_key.to_user_string()}:{e.check_name}" for e in evaluations if not e.passed
    )
    failed_steps = sorted(
        event.step_key or "" for event in result.all_events if event.is_step_failure
    )
    return ChainResult(
        run_id=result.run_id,
        success=result.success,
        syncs=syncs,
        failed_checks=failed_checks,
        passed_checks=sum(1 for e in evaluations if e.passed),
        failed_steps=failed_steps,
    )


def destination_state(
    sandbox: SandboxProcess, destinations: tuple[Destination, ...]
) -> dict[str, dict[str, dict]]:
    return {d.key: sandbox.records(d.destination_type, d.object) for d in destinations}


def _reported_statuses(instance: dg.DagsterInstance) -> dict[str, str]:
    """Each destination's status in the latest run summary."""
    from activation.core.run_summary import REPORT_KEY

    records = instance.fetch_materializations(REPORT_KEY, limit=1).records
    materialization = records[0].event_log_entry.asset_materialization if records else None
    value = materialization.metadata.get("statuses") if materialization else None
    return {str(k): str(v) for k, v in dict(value.value).items()} if value else {}  # type: ignore[arg-type]


def _table(result: ChainResult, destinations: tuple[Destination, ...]) -> str:
    rows = [f"  {'destination':<22}{'added':>8}{'changed':>9}{'removed':>9}{'failed':>8}  run id"]
    for d in destinations:
        m = result.syncs.get(d.key)
        if m is None:
            rows.append(f"  {d.key:<22}{'-':>8}{'-':>9}{'-':>9}{'-':>8}  (not synced)")
            continue
        failed = sum(int(str(m[f"failed_{k}"])) for k in ("added", "changed", "removed"))
        rows.append(
            f"  {d.key:<22}{m['successful_added']:>8}{m['successful_changed']:>9}"
            f"{m['successful_removed']:>9}{failed:>8}  {m['hightouch_run_id']}"
        )
    return "\n".join(rows)


def run_demo(folder: Path | None = None) -> int:
    # Dagster's notices about its own Beta and Preview APIs (the Airbyte workspace among them,
    # built as soon as the code location is prepared) would bury the demo's tables.
    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    folder = folder or data_dir() / "demo"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    destinations = load_destinations()
    problems: list[str] = []
    with sandbox_environment(folder) as sandbox:
        print(f"Sandbox on {sandbox.url}; data in {folder}")
        prepare_code_location()
        instance = dg.DagsterInstance.ephemeral()
        # The demo prints its own tables; the full event log stays in the run's records.
        quiet = "CRITICAL"
        # dagster-dbt echoes dbt's log to stdout; in a demo it would bury the tables.
        dbt_log = folder / "dbt_output.log"
        print(f"(dbt's own output goes to {dbt_log})")

        print("\n== 1. Good source data: Airbyte -> dbt build (blocking tests) -> Hightouch")
        with dbt_log.open("a") as log, contextlib.redirect_stdout(log):
            good = run_chain(instance, quiet)
        print(_table(good, destinations))
        print(
            f"  checks (dbt tests, guards, Python): {good.passed_checks} passed, "
            f"{len(good.failed_checks)} failed"
        )
        if not good.success or len(good.syncs) != len(destinations):
            problems.append(f"the good run did not sync every destination: {good.failed_steps}")
        from activation.core.contract import contract_summary_lines

        print("  schema contracts (mart columns and Hightouch mappings, checked before each sync):")
        for line in contract_summary_lines(instance, good.run_id, destinations):
            print(f"    {line}")
            if "contract holds" not in line:
                problems.append(f"a contract did not hold in the good run: {line}")
        before = destination_state(sandbox, destinations)
        triggers_before = sandbox.trigger_counts()
        for d in destinations:
            print(f"  {d.destination_type}/{d.object} holds {len(before[d.key])} records")

        print("\n== 2. Bad source rows (duplicate ids, null and malformed emails)")
        sandbox.set_scenario(bad_rows=True)
        with dbt_log.open("a") as log, contextlib.redirect_stdout(log):
            bad = run_chain(instance, quiet)
        print(f"  blocking checks failed: {len(bad.failed_checks)}")
        for check in bad.failed_checks:
            print(f"    - {check}")
        triggers_after = sandbox.trigger_counts()
        after = destination_state(sandbox, destinations)
        new_triggers = sum(triggers_after.values()) - sum(triggers_before.values())
        print(f"  Hightouch triggers during the bad run: {new_triggers}")
        unchanged = [d.key for d in destinations if after[d.key] == before[d.key]]
        print(f"  destinations unchanged: {len(unchanged)} of {len(destinations)}")
        statuses = _reported_statuses(instance)
        print("  the run summary (activate/activation_report, Slack) says:")
        for d in destinations:
            print(f"    {d.key}: {statuses.get(d.key, '(not reported)')}")
            if not str(statuses.get(d.key, "")).startswith("blocked by"):
                problems.append(f"{d.key} is not reported as blocked by the failing checks")
        if bad.success or not bad.failed_checks:
            problems.append("the bad run was not stopped by a failing blocking check")
        if new_triggers or bad.syncs:
            problems.append(f"the bad run triggered {new_triggers} Hightouch sync(s)")
        if len(unchanged) != len(destinations):
            problems.append("a destination changed during the bad run")

    if problems:
        print("\nDEMO FAILED:\n" + "\n".join(f"  - {p}" for p in problems))
        return 1
    print(
        "\nDEMO OK: good data reached every destination; bad data was stopped by the blocking "
        "dbt tests before any Hightouch sync, and every destination holds what it held before."
    )
    return 0
