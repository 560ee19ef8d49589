"""Pins every non-public Dagster call the product makes (activation/dagster_api.py), no sandbox.

Each test runs tiny in-test assets on a throwaway instance (`dg.instance_for_test`) and asserts
exactly what the product relies on, so a Dagster upgrade that changes one of these calls fails
here, by name. The last tests walk activation/ and fail when product code reaches non-public
Dagster API other than through activation/dagster_api.py.
"""

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from activation.dagster_api import CheckEntry, check_history, events_of_run, run_location, tag_run
from activation.lib.paths import PROJECT_ROOT
from tests.support.child_process import COUNT_MIGRATION_SCRIPT_READS, last_json, run_python

MART = dg.AssetKey(["unit", "mart"])
UNIQUE = "unique_id"
BROKEN = dg.AssetKey(["unit", "broken"])


@dg.asset(key=MART)
def _mart() -> None:
    return None


@dg.asset_check(asset=MART, name=UNIQUE, blocking=True)
def _unique() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True, metadata={"rows": 3})


@dg.asset(key=BROKEN, check_specs=[dg.AssetCheckSpec("never_evaluated", asset=BROKEN)])
def _broken():  # no return annotation: with check_specs Dagster reads one as outputs
    raise RuntimeError("the asset fails, so its check is planned and never evaluated")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _materialize(instance: dg.DagsterInstance, *defs: object) -> dg.ExecuteInProcessResult:
    return dg.materialize(list(defs), instance=instance, raise_on_error=False)  # type: ignore[arg-type]


# -- check_history ---------------------------------------------------------------------------------


def test_check_history_holds_run_and_step_of_an_in_run_evaluation(
    instance: dg.DagsterInstance,
) -> None:
    first = _materialize(instance, _mart, _unique)
    second = _materialize(instance, _mart, _unique)
    history = check_history(instance, dg.AssetCheckKey(MART, UNIQUE))
    assert all(isinstance(entry, CheckEntry) for entry in history)
    assert [entry.run_id for entry in history] == [second.run_id, first.run_id]  # newest first
    newest = history[0]
    assert newest.step_key  # produced by a step of the run
    assert newest.evaluation is not None and newest.evaluation.passed
    assert newest.evaluation.asset_key == MART and newest.evaluation.check_name == UNIQUE
    assert newest.evaluation.metadata["rows"].value == 3
    assert newest.created >= history[1].created > 0
    # The evaluation names the materialization it judged (the gate compares storage ids).
    target = newest.evaluation.target_materialization_data
    latest = instance.fetch_materializations(MART, limit=1).records[0]
    assert target is not None and target.storage_id == latest.storage_id
    assert target.run_id == second.run_id


def test_check_history_limit_and_unknown_check(instance: dg.DagsterInstance) -> None:
    for _ in range(3):
        _materialize(instance, _mart, _unique)
    assert len(check_history(instance, dg.AssetCheckKey(MART, UNIQUE), limit=2)) == 2
    assert check_history(instance, dg.AssetCheckKey(MART, "no_such_check")) == []


def test_check_history_of_a_runless_report_has_no_run_and_no_step(
    instance: dg.DagsterInstance,
) -> None:
    """What the webserver's unauthenticated `/report_asset_check/` stores: the gate ignores it."""
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=MART, check_name="runless_probe", passed=False)
    )
    [runless] = check_history(instance, dg.AssetCheckKey(MART, "runless_probe"))
    assert (runless.run_id, runless.step_key) == ("", None)
    assert runless.evaluation is not None and not runless.evaluation.passed


def test_check_history_of_a_check_planned_but_never_evaluated(
    instance: dg.DagsterInstance,
) -> None:
    result = _materialize(instance, _broken)
    assert not result.success
    [planned] = check_history(instance, dg.AssetCheckKey(BROKEN, "never_evaluated"))
    assert planned.run_id == result.run_id and planned.evaluation is None


# -- run_location ----------------------------------------------------------------------------------


def test_run_location_is_none_for_an_in_process_run(instance: dg.DagsterInstance) -> None:
    result = _materialize(instance, _mart)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run_location(run) is None


def test_run_location_names_the_code_location_of_a_launched_run(
    instance: dg.DagsterInstance,
) -> None:
    """A run launched from the webserver or a daemon carries a remote origin; it survives the
    run storage round trip the gate reads it through."""
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=RegisteredCodeLocationOrigin("activation"),
            repository_name="__repository__",
        ),
        job_name="activate",
    )
    run = dg.DagsterRun(job_name="activate", run_id="launched-run", remote_job_origin=origin)
    instance.add_run(run)
    stored = instance.get_run_by_id("launched-run")
    assert stored is not None and run_location(stored) == "activation"


# -- tag_run ---------------------------------------------------------------------------------------


def test_tag_run_adds_and_overwrites_tags_of_an_existing_run(instance: dg.DagsterInstance) -> None:
    result = dg.materialize([_mart], instance=instance, tags={"keep": "me", "decision": "none"})
    tag_run(instance, result.run_id, {"decision": "approve", "reviewer": "alice"})
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert {k: run.tags[k] for k in ("keep", "decision", "reviewer")} == {
        "keep": "me",
        "decision": "approve",
        "reviewer": "alice",
    }
    # Tags written this way are what the runs list filters on.
    tagged = instance.get_run_records(filters=dg.RunsFilter(tags={"reviewer": "alice"}))
    assert [record.dagster_run.run_id for record in tagged] == [result.run_id]


def test_tag_run_from_inside_the_run_itself(instance: dg.DagsterInstance) -> None:
    """The promotion job tags its own run while it is in flight."""

    @dg.op
    def sign_off(context: dg.OpExecutionContext) -> None:
        tag_run(context.instance, context.run_id, {"activation/sign_off/decision": "expired"})

    @dg.job
    def tags_itself() -> None:
        sign_off()

    result = tags_itself.execute_in_process(instance=instance)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags["activation/sign_off/decision"] == "expired"


# -- events_of_run ---------------------------------------------------------------------------------


def test_events_of_run_by_type(instance: dg.DagsterInstance) -> None:
    result = _materialize(instance, _mart, _unique)
    planned = events_of_run(
        instance, result.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    )
    assert [e.dagster_event.asset_key for e in planned if e.dagster_event] == [MART]
    checks = events_of_run(instance, result.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    assert [
        e.dagster_event.asset_check_evaluation_data.check_name for e in checks if e.dagster_event
    ] == [UNIQUE]
    assert events_of_run(instance, "no-such-run", dg.DagsterEventType.RUN_SUCCESS) == []


def test_events_of_run_unfiltered_is_the_whole_log_oldest_first(
    instance: dg.DagsterInstance,
) -> None:
    result = _materialize(instance, _mart, _broken)
    entries = events_of_run(instance, result.run_id)
    assert all(entry.run_id == result.run_id for entry in entries)
    timestamps = [entry.timestamp for entry in entries]
    assert timestamps == sorted(timestamps)
    types = [entry.dagster_event_type for entry in entries if entry.is_dagster_event]
    assert dg.DagsterEventType.RUN_START in types
    assert types[-1] == dg.DagsterEventType.RUN_FAILURE
    # What activation/core/run_summary.py reads from it: materializations and step failures.
    materialized = [entry.asset_materialization for entry in entries]
    assert [m.asset_key for m in materialized if m is not None] == [MART]
    failures = [
        e.dagster_event for e in entries if e.dagster_event and e.dagster_event.is_step_failure
    ]
    assert len(failures) == 1 and failures[0].step_key == "unit__broken"
    assert failures[0].step_failure_data.error is not None


# -- DbtCliResourceWithoutAdapter ------------------------------------------------------------------


# A real `dbt parse` through each resource, in a fresh interpreter. With "dbt-core-seen",
# dagster-dbt is imported before this package, so it sees dbt-core and its own resource builds an
# adapter in this process (what the override removes: if dagster-dbt renames the method, ours
# builds one too and the test fails); otherwise dagster-dbt runs in this product's mode
# (activation/dbt_out_of_process.py), where its own resource still reaches for dbt-core's
# adapter modules before failing, and ours imports none.
ADAPTER_PROBE = r"""
import json, shutil, sys
from pathlib import Path
if sys.argv[1] == "dbt-core-seen":
    import dagster_dbt
import activation  # installs the finder; too late for a dagster-dbt already imported
from dagster_dbt import DbtCliResource
from activation.core.dbt_project import dbt_project
from activation.resources import build_dbt_resource

ours = build_dbt_resource()
plain = DbtCliResource(
    project_dir=dbt_project,
    target=dbt_project.target,
    dbt_executable=ours.dbt_executable,
    global_config_flags=ours.global_config_flags,
)
without = ours.cli(["parse"], target_path=Path(sys.argv[2], "ours")).wait()
after_ours = "dbt.adapters.factory" in sys.modules
# The second parse starts from the first one's (same profile and files): dbt parses again only
# what changed, nothing, and the adapter question is answered before dbt starts either way.
Path(sys.argv[2], "plain").mkdir()
shutil.copy(Path(sys.argv[2], "ours", "partial_parse.msgpack"), Path(sys.argv[2], "plain"))
with_adapter = plain.cli(["parse"], target_path=Path(sys.argv[2], "plain")).wait()
print(json.dumps({
    "ours": [without.adapter is not None, without.is_successful()],
    "plain": [with_adapter.adapter is not None, with_adapter.is_successful()],
    "adapter_modules_after_ours": after_ours,
}))
"""


@pytest.mark.parametrize("mode", ["dbt-core-seen", "product"])
def test_the_dbt_resource_runs_dbt_without_the_adapter_dagster_dbt_builds(
    tmp_path: Path, mode: str
) -> None:
    script = tmp_path / "probe.py"
    script.write_text(ADAPTER_PROBE)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    probed = last_json(run_python(str(script), mode, str(tmp_path), env=env))
    assert probed["ours"] == [False, True]  # no adapter, and dbt itself works the same
    if mode == "product":  # with dbt-core seen, dagster-dbt imported its adapter modules itself
        assert probed["adapter_modules_after_ours"] is False
    assert probed["plain"] == [mode == "dbt-core-seen", True]
    assert (tmp_path / "ours" / "manifest.json").exists()


# -- share_storage_migration_scripts ---------------------------------------------------------------

# Counts every migration script Alembic executes (`Script._from_path` runs one script file),
# then opens a SQLite instance and writes to its index and to a run shard, as a step does.
SCRIPT_READS_PROBE = (
    COUNT_MIGRATION_SCRIPT_READS
    + r"""
import json, os, tempfile
from alembic.config import Config
from alembic.script import ScriptDirectory
import dagster as dg
from activation.dagster_api import share_storage_migration_scripts

def reads_to_open_and_write():
    reads.clear()
    with dg.DagsterInstance.get() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("probe"))
        dg.materialize([dg.asset(name="probe_asset")(lambda: None)], instance=instance)
    return len(reads)

counts = {"unshared": [reads_to_open_and_write(), reads_to_open_and_write()]}
share_storage_migration_scripts()
share_storage_migration_scripts()
counts["shared"] = [reads_to_open_and_write(), reads_to_open_and_write()]
pid = os.fork()
if pid == 0:
    os._exit(min(reads_to_open_and_write(), 255))
counts["forked"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
other = Config()
other.set_main_option("script_location", tempfile.mkdtemp())
first, second = ScriptDirectory.from_config(other), ScriptDirectory.from_config(other)
counts["other_location_shared"] = first is second
print(json.dumps(counts))
"""
)


def test_storage_checks_read_dagster_migration_scripts_once_per_process(tmp_path: Path) -> None:
    """In a fresh interpreter (the sharing is process-wide): before, every instance opened and
    written to executes Dagster's migration scripts several times over; after, the first one
    executes them once and no later one, in this process or a process forked from it, executes
    any. Another Alembic script location is not shared."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DO_NOT_TRACK": "1"}
    counts = last_json(run_python("-c", SCRIPT_READS_PROBE, env=env, timeout=300))
    storage = Path(dg.__file__).parent / "_core" / "storage"
    scripts = len(list(storage.glob("alembic/versions/*.py")))
    assert scripts > 50, "is Dagster's migration folder still there?"
    # One shared directory serves all three SQLite storages because their configs are the same.
    configs = {path.read_text() for path in storage.glob("*/sqlite/alembic/alembic.ini")}
    assert len(configs) == 1, "Dagster's SQLite storages now configure Alembic differently"
    unshared = counts["unshared"]
    # each open of an instance and write to a new run: the run storage, the event index and the
    # run's own shard each read them again
    assert min(unshared) >= 2 * scripts, counts
    assert counts["shared"][0] <= scripts, counts
    assert counts["shared"][1] == 0, counts
    assert counts["forked"] == 0, counts
    assert counts["other_location_shared"] is False


# -- no other module reaches non-public Dagster API ------------------------------------------------

ACTIVATION = Path(__file__).resolve().parents[2] / "activation"
ADAPTER = Path("dagster_api.py")
NOT_PRODUCT = Path("sandbox")
WRAPPED_NAMES = frozenset(
    {
        "all_logs",
        "add_run_tags",
        "get_asset_check_execution_history",
        "event_log_storage",
        "remote_job_origin",
        "get_jobs_for_connection",
        "sync_and_poll",
        "fetch_airbyte_workspace_data",
    }
)
# Non-public methods of Dagster classes that the adapter overrides in a subclass.
OVERRIDDEN_NAMES = frozenset({"_initialize_dbt_core_adapter"})
INTEGRATIONS = ("dagster_dbt", "dagster_airbyte")


def non_public_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every non-public Dagster import or wrapped call in one module."""

    def bad_module(name: str) -> bool:
        top, _, rest = name.partition(".")
        if top in ("dagster_shared", "alembic"):  # Alembic only serves Dagster's storage here
            return True
        if top == "dagster":
            return rest.startswith("_")
        return top in INTEGRATIONS and bool(rest)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if bad_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if bad_module(node.module):
                found.append((node.lineno, node.module))
            elif node.module == "dagster":
                found += [
                    (node.lineno, f"dagster.{a.name}") for a in node.names if a.name.startswith("_")
                ]
        elif isinstance(node, ast.Attribute) and node.attr in WRAPPED_NAMES:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.FunctionDef) and node.name in OVERRIDDEN_NAMES:
            found.append((node.lineno, f"def {node.name}"))
    return found


def product_modules() -> list[Path]:
    return sorted(
        path
        for path in ACTIVATION.rglob("*.py")
        if path.relative_to(ACTIVATION).parts[0] != NOT_PRODUCT.name
        and path.relative_to(ACTIVATION) != ADAPTER
    )


def test_only_the_adapter_reaches_non_public_dagster_api() -> None:
    modules = product_modules()
    assert len(modules) > 20, "walked too few modules: is ACTIVATION right?"
    offences = []
    for path in modules:
        relative = path.relative_to(ACTIVATION)
        for line, what in non_public_uses(ast.parse(path.read_text(), filename=str(path))):
            offences.append(f"activation/{relative}:{line}: {what}")
    assert offences == [], (
        "non-public Dagster API outside activation/dagster_api.py (wrap it there, documented "
        "and pinned in this file):\n" + "\n".join(offences)
    )


def test_the_walker_catches_each_kind_of_non_public_use() -> None:
    source = """
import dagster._core.events
import dagster_shared.serdes
from alembic.script import ScriptDirectory
from dagster._core.remote_origin import RemoteJobOrigin
from dagster import _check
from dagster_dbt.asset_utils import x
from dagster_airbyte.translator import AirbyteMetadataSet
from dagster_dbt import DbtCliResource
from dagster import asset
import dagster as dg
import dagster_airbyte
instance.all_logs(run_id)
instance.add_run_tags(run_id, {})
instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
run.remote_job_origin
class Quiet(DbtCliResource):
    def _initialize_dbt_core_adapter(self, args):
        return None
"""
    found = [what for _, what in non_public_uses(ast.parse(source))]
    assert sorted(found) == sorted(
        [
            "dagster._core.events",
            "dagster_shared.serdes",
            "alembic.script",
            "dagster._core.remote_origin",
            "dagster._check",
            "dagster_dbt.asset_utils",
            "dagster_airbyte.translator",
            ".all_logs",
            ".add_run_tags",
            ".event_log_storage",
            ".get_asset_check_execution_history",
            ".remote_job_origin",
            "def _initialize_dbt_core_adapter",
        ]
    )


def test_the_adapter_itself_holds_every_wrapped_call() -> None:
    """The wrapped names appear in the adapter: the guard above is not guarding nothing."""
    used = {what for _, what in non_public_uses(ast.parse((ACTIVATION / ADAPTER).read_text()))}
    assert {f".{name}" for name in WRAPPED_NAMES} <= used
    assert {f"def {name}" for name in OVERRIDDEN_NAMES} <= used
