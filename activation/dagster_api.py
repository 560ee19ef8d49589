"""The one door to Dagster APIs that are not public.

Product code (everything under activation/ except the sandbox) uses public Dagster,
dagster-dbt and dagster-airbyte API only, except through the functions below. Each wraps one
non-public call, says why the product needs it and which public API is missing, and is pinned
by tests/unit/test_dagster_api.py, which needs no sandbox: a Dagster upgrade that changes one of
these calls fails one small test here instead of a sensor, the gate or a promotion at run time.
The same test file walks activation/ and fails when another module imports `dagster._*`,
`dagster_shared`, Alembic (reached only for Dagster's storage) or a dagster-dbt/dagster-airbyte
submodule, or calls a wrapped method itself.

"Public" means marked `@public` (or a `PublicAttr`) in the installed Dagster 1.13 /
integrations 0.29: the names Dagster documents and keeps stable across minor releases.
"""

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
from dagster_airbyte import AirbyteWorkspace
from dagster_airbyte.translator import AirbyteJob, AirbyteMetadataSet, AirbyteWorkspaceData
from dagster_dbt import DbtCliResource

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

__all__ = [
    "CheckEntry",
    "DbtCliResourceWithoutAdapter",
    "check_history",
    "events_of_run",
    "run_location",
    "share_storage_migration_scripts",
    "tag_run",
]


# -- asset check history ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckEntry:
    """One row of an asset check's execution history, as Dagster stores it."""

    run_id: str
    """"" for an evaluation reported outside any run."""
    step_key: str | None
    """The step that logged it; None outside a step (a runless report)."""
    evaluation: dg.AssetCheckEvaluation | None
    """None for a row that was only planned."""
    created: float


def check_history(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, *, limit: int = 20
) -> list[CheckEntry]:
    """The newest `limit` rows of one asset check's execution history, newest first.

    Wraps `instance.event_log_storage.get_asset_check_execution_history` (and the non-public
    `EventLogEntry.asset_check_evaluation`). No public Python API returns a check's history with
    the run and step of each row: the public GraphQL `assetCheckExecutions` serves exactly this
    read but needs a webserver reachable from every run worker. The quality gate
    (activation/core/gate.py) needs run and step to decide which rows are evidence. On 1.13 a
    runless report (`report_runless_asset_event`) is stored with run id "" and no step key.
    """
    return [
        CheckEntry(
            run_id=record.run_id,
            step_key=record.event.step_key if record.event else None,
            evaluation=record.event.asset_check_evaluation if record.event else None,
            created=record.create_timestamp,
        )
        for record in instance.event_log_storage.get_asset_check_execution_history(
            check_key, limit=limit
        )
    ]


# -- runs ------------------------------------------------------------------------------------------


def run_location(run: dg.DagsterRun) -> str | None:
    """The code location a run was launched from, or None when it carries no remote origin
    (`execute_in_process`, `materialize`, `dagster asset materialize -m`).

    Wraps `DagsterRun.remote_job_origin` and `RemoteJobOrigin.location_name`, neither public.
    No public run field or tag names the code location (the `dagster/repository` storage tag
    is a label, not the location); the quality gate uses it so that another code location's runs
    cannot count as evidence.
    """
    origin = run.remote_job_origin
    return origin.location_name if origin is not None else None


def tag_run(instance: dg.DagsterInstance, run_id: str, tags: Mapping[str, str]) -> None:
    """Add (or overwrite) tags on an existing run, which may still be in flight.

    Wraps `DagsterInstance.add_run_tags`, not public in 1.13. No public API tags a run after it
    was created (tags are otherwise fixed at launch); the promotion job records its sign-off
    decision on its own run this way, so the decision shows in the runs list.
    """
    instance.add_run_tags(run_id, dict(tags))


def events_of_run(
    instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType | None = None
) -> list[dg.EventLogEntry]:
    """Every event a run wrote, oldest first; only those of `event_type` when given.

    Wraps `DagsterInstance.all_logs`, not public. The public readers (`fetch_materializations`,
    `fetch_observations`, `get_run_records`) are per asset or per run status; none returns one
    run's planned materializations, check evaluations or step failures. The trigger sensors
    (activation/core/run_history.py) and the run summary (activation/core/run_summary.py) read
    those.
    """
    return list(instance.all_logs(run_id, of_type=event_type))


# -- dagster-airbyte -------------------------------------------------------------------------------
# The public surface of dagster-airbyte 0.29 is the loader that lists the workspace while
# definitions load, the translator and `AirbyteWorkspace.sync_and_poll(context)`. Listing once
# into a stored file, reading a stream's connection, and reading a connection's jobs (for the
# sensor that answers jobs started outside Dagster) need the calls below.

__all__ = ["AirbyteJob", "AirbyteWorkspaceData"]


def fetch_airbyte_workspace_data(workspace: AirbyteWorkspace) -> AirbyteWorkspaceData:
    """The workspace's connections, streams and destinations, as dagster-airbyte's own
    serializable snapshot (`AirbyteWorkspace.fetch_airbyte_workspace_data`, not public)."""
    return workspace.fetch_airbyte_workspace_data()


def airbyte_connection_of(spec: dg.AssetSpec) -> tuple[str, str]:
    """(connection id, connection name) dagster-airbyte records in a stream's metadata
    (`AirbyteMetadataSet`, not public); ("", "") for an asset it did not build."""
    try:
        metadata = AirbyteMetadataSet.extract(spec.metadata)
    except Exception:  # noqa: BLE001 - not an Airbyte asset: it carries no connection metadata
        return "", ""
    return metadata.connection_id or "", metadata.connection_name or ""


def airbyte_jobs_for_connection(
    workspace: AirbyteWorkspace, connection_id: str, created_after: datetime | None
) -> list[AirbyteJob]:
    """The connection's jobs created after `created_after`, oldest first (the client's
    `get_jobs_for_connection`, not public; the public surface only starts jobs)."""
    jobs = workspace.get_client().get_jobs_for_connection(
        connection_id, created_after=created_after
    )
    return sorted(jobs, key=lambda job: job.id)


def airbyte_sync_and_poll(workspace: AirbyteWorkspace, connection_id: str) -> dict:
    """Start a sync of one connection and wait for it; the job's details. The public
    `AirbyteWorkspace.sync_and_poll(context)` syncs the connection of the step's assets and
    yields their results but hides the job id, which the ingest step records on every stream."""
    return dict(workspace.get_client().sync_and_poll(connection_id=connection_id).job_details)


# -- dagster-dbt -----------------------------------------------------------------------------------


class DbtCliResourceWithoutAdapter(DbtCliResource):
    """`DbtCliResource` without the dbt adapter it builds in the step's own process before every
    dbt command.

    dagster-dbt 0.29 builds that adapter (`_initialize_dbt_core_adapter`, not public: loading the
    profile and project, then parsing dbt's 500-odd macros with Jinja) only so that
    `DbtEventIterator.fetch_column_metadata` and `fetch_row_counts` can query the warehouse from
    the step. This product calls neither (activation/defs/transform/dbt.py says why), and the
    build costs about 1.3 s of wall and CPU on every dbt step, on the path from a signal to its
    first trigger; dbt itself, in its own process, builds its own adapter as before. No public
    option turns it off. The invocation's `adapter` is None, which dagster-dbt already accepts:
    it is what it passes when the build fails, and for the Fusion engine.

    In the mode this product loads dagster-dbt in (activation/dbt_out_of_process.py) the build
    cannot succeed, but dagster-dbt still tries it: it imports dbt-core's adapter modules (the
    second this product saves at load), then fails and logs a warning on every dbt step.
    """

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> None:  # type: ignore[override]
        return None


# -- Dagster's storage migration scripts -----------------------------------------------------------


def share_storage_migration_scripts() -> None:
    """One read of Dagster's storage migration scripts per process, shared by every storage the
    process opens and inherited by every process forked from it.

    Whenever a process opens an instance's SQLite storage (Dagster's default; PostgreSQL
    storage does not check at open), and the first time it writes to a run's event log, Dagster
    compares the database's schema revision with its newest Alembic migration
    (`check_alembic_revision`, not public). To find the newest, Alembic builds a fresh
    `ScriptDirectory` and executes each of Dagster's 90 migration scripts again: about five
    times in every step process (run storage, schedule storage, the event index, the run's own
    shard), some 50 ms of CPU per step and more wall on two cores shared by six steps. The
    scripts are files of the installed Dagster and cannot change while a process runs, so one
    `ScriptDirectory` serves every check. No public option skips or caches the check.

    Only Dagster's own script location is shared; every other use of Alembic (another location,
    a `ScriptDirectory` subclass) builds its directory as before. The revision comparison itself
    still runs against each database. Called in the step forkserver before it warms the instance
    (activation/tooling/forkserver_preload.py), so each step process inherits the scripts read.
    Not in the process that executes a run: it opens its instance before the code location
    loads, and then checks once more at most. A second call does nothing.
    """
    # Imported here: Alembic takes 0.4 s to import, and only a process that opens an instance
    # (which imports it anyway) needs it.
    from alembic.script import ScriptDirectory
    from dagster._core.storage.sql import ALEMBIC_SCRIPTS_LOCATION

    if getattr(ScriptDirectory.from_config, "shares_dagster_scripts", False):
        return
    build = ScriptDirectory.from_config.__func__  # type: ignore[attr-defined]
    # Dagster's SQLite storages each read their own alembic.ini; the three files are identical.
    shared: ScriptDirectory | None = None
    lock = threading.Lock()

    def from_config(cls: type["ScriptDirectory"], config: "AlembicConfig") -> "ScriptDirectory":
        nonlocal shared
        if (
            cls is not ScriptDirectory
            or config.get_main_option("script_location") != ALEMBIC_SCRIPTS_LOCATION
        ):
            return build(cls, config)
        with lock:
            if shared is None:
                shared = build(cls, config)
            return shared

    from_config.shares_dagster_scripts = True  # type: ignore[attr-defined]
    ScriptDirectory.from_config = classmethod(from_config)  # type: ignore[method-assign,assignment]
