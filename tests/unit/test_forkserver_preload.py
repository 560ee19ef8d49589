"""The forkserver preload warms Dagster's instance storage once per run, and leaves nothing open.

Each step process is forked from the multiprocess executor's forkserver. Whatever the forkserver
holds open is shared by every step: an open SQLite or PostgreSQL connection would be used by
several processes at once. So the warm-up must import the storage modules (what makes the first
instance of a process slow) and close what it opened. Each case runs in a fresh interpreter,
as the forkserver is one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.child_process import COUNT_MIGRATION_SCRIPT_READS, last_json, run_python

PROBE = (
    COUNT_MIGRATION_SCRIPT_READS
    + r"""
import gc, json, os, sys
import activation.tooling.forkserver_preload  # noqa: F401  (the forkserver's import)
home = os.environ.get("DAGSTER_HOME", "")
open_in_home = []
for fd in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        continue
    if home and target.startswith(home):
        open_in_home.append(target)
script_reads = None
if home:
    # What a step forked now would do first: open the instance, write to its run's shard.
    reads.clear()
    import dagster as dg
    try:
        with dg.DagsterInstance.get() as instance:
            dg.materialize([dg.asset(name="probe_asset")(lambda: None)], instance=instance)
        script_reads = len(reads)
    except Exception as error:  # the broken-config cases: the step would report it
        script_reads = type(error).__name__
print(json.dumps({
    "script_reads": script_reads,
    "storage_imported": "dagster._core.storage.runs.sqlite.sqlite_run_storage" in sys.modules,
    "alembic_imported": "alembic" in sys.modules,
    "open_in_home": open_in_home,
    "frozen_objects": gc.get_freeze_count(),
}))
"""
)


def _probe(env_home: Path | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    if env_home is not None:
        env["DAGSTER_HOME"] = str(env_home)
    env["DO_NOT_TRACK"] = "1"
    return last_json(run_python("-c", PROBE, env=env, timeout=300))


def test_storage_modules_are_imported_and_nothing_stays_open(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    probed = _probe(home)
    assert probed["storage_imported"] is True
    assert probed["alembic_imported"] is True
    # The instance was opened (its SQLite files exist) and closed again before any fork.
    assert (home / "history").exists() or (home / "storage").exists()
    assert probed["open_in_home"] == []
    # Frozen before any fork: the steps' collections leave the inherited heap alone.
    assert probed["frozen_objects"] > 100_000
    # Dagster's migration scripts were read before any fork: a step's schema checks read none.
    assert probed["script_reads"] == 0


def test_without_a_home_nothing_is_opened(tmp_path: Path) -> None:
    """An ephemeral instance (no DAGSTER_HOME) is passed to each step by reference: the preload
    must not create a home of its own."""
    probed = _probe(None)
    assert probed["storage_imported"] is False


@pytest.mark.parametrize("config", ["run_storage: [not, a, mapping]\n", "storage: {nope: 1}\n"])
def test_a_broken_instance_config_does_not_stop_the_forkserver(tmp_path: Path, config: str) -> None:
    """The step processes open the instance themselves and report the error: the forkserver
    must still start (an import error there would fail every step without a word of why)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(config)
    probed = _probe(home)
    assert probed["open_in_home"] == []
