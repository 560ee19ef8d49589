"""Only a process that executes a run builds its definitions once and starts the step forkserver
early (activation/core/step_forkserver.py); its step processes fork from that forkserver and are
no run worker themselves; everywhere else each load builds afresh and no forkserver starts.

Each case runs in a fresh interpreter, as Dagster's processes are: a plain one (what a code
server is), a `multiprocessing` spawn child of it (the default run launcher's run worker), one
started as `dagster job execute`, and a run worker with Celery selected. Forkservers are counted
where they are: the child processes of the probed process, read from /proc.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from activation.lib.paths import PROJECT_ROOT
from tests.support.child_process import last_json, run_python
from tests.support.warehouse_path import prepare_manifest_in
from tests.unit.conftest import LISTING, NOWHERE

PROBE = r'''
import gc, json, multiprocessing, os, sys


def forkservers():
    """This process's children that are multiprocessing forkservers."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == os.getpid() and b"multiprocessing.forkserver" in command:
            found.append(int(pid))
    return found


def probe(results):
    import activation.definitions as location

    heavy = sorted(m for m in ("dbt", "dagster_dbt", "dagster_airbyte") if m in sys.modules)
    first, second = location.defs(), location.defs()
    servers = forkservers()
    step_exit = None
    if servers:
        # A step process as the multiprocess executor starts one (forkserver context). It exits
        # 10 if it takes itself for a run worker, 20 if its parent is not the early forkserver.
        code = (
            "import os, sys\n"
            "from activation.core.step_forkserver import executes_a_run\n"
            f"sys.exit(10 if executes_a_run() else 20 if os.getppid() != {servers[0]} else 0)\n"
        )
        step = multiprocessing.get_context("forkserver").Process(target=exec, args=(code,))
        step.start()
        step.join(240)
        step_exit = step.exitcode
    results.put({
        "heavy_imported_before_load": heavy,
        "same_definitions": first is second,
        "forkservers": len(servers),
        "frozen_objects": gc.get_freeze_count(),
        "step_exit": step_exit,
        "sync_jobs": sorted(j.name for j in first.resolve_all_job_defs() if j.name == "activate"),
    })


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "job-execute":
        sys.argv[1:] = ["job", "execute", "-m", "activation.definitions", "-j", "activate"]
    queue = multiprocessing.get_context("spawn").Queue()
    if mode == "run-worker":
        worker = multiprocessing.get_context("spawn").Process(target=probe, args=(queue,))
        worker.start()
        print(json.dumps(queue.get(timeout=300)))
        worker.join(60)
    else:
        probe(queue)
        print(json.dumps(queue.get(timeout=60)))
'''


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("forkserver_data")
    shutil.copy(LISTING, data / "airbyte_listing.json")
    prepare_manifest_in(data)
    env = {k: v for k, v in os.environ.items() if k != "ACTIVATION_SANDBOX_URL"}
    env.update(NOWHERE, ACTIVATION_DATA_DIR=str(data), DO_NOT_TRACK="1")
    env.pop("ACTIVATION_EXECUTOR", None)
    return env


def _probe(tmp_path: Path, env: dict[str, str], mode: str) -> dict[str, object]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return last_json(run_python(str(script), mode, env={**env, "PYTHONPATH": str(PROJECT_ROOT)}))


def test_a_code_server_builds_at_every_load_and_starts_no_forkserver(
    tmp_path: Path, probe_env: dict[str, str]
) -> None:
    probed = _probe(tmp_path, probe_env, "plain")
    assert probed["same_definitions"] is False  # a reload sees changed files and settings
    assert probed["forkservers"] == 0
    # Nothing is exempted from garbage collection where definitions are rebuilt at every load.
    assert probed["frozen_objects"] == 0
    assert probed["sync_jobs"] == ["activate"]


@pytest.mark.parametrize("mode", ["run-worker", "job-execute"])
def test_a_run_worker_starts_the_forkserver_first_and_builds_once(
    tmp_path: Path, probe_env: dict[str, str], mode: str
) -> None:
    probed = _probe(tmp_path, probe_env, mode)
    # Nothing heavy is imported before the load starts the forkserver, so the forkserver's
    # imports run beside the run worker's instead of after them.
    assert probed["heavy_imported_before_load"] == []
    assert probed["forkservers"] == 1
    assert probed["same_definitions"] is True
    # What it loaded stays to the end of the run: frozen, the collector leaves it alone (and
    # interpreter exit does not collect it).
    assert probed["frozen_objects"] > 100_000
    # A step forks from that forkserver (the executor found it running), and does not take
    # itself for a run worker: it starts no forkserver of its own.
    assert probed["step_exit"] == 0
    assert probed["sync_jobs"] == ["activate"]


def test_a_celery_run_worker_starts_no_forkserver(
    tmp_path: Path, probe_env: dict[str, str]
) -> None:
    pytest.importorskip("dagster_celery")
    env = {
        **probe_env,
        "ACTIVATION_EXECUTOR": "celery",
        "ACTIVATION_CELERY_BROKER_URL": "redis://127.0.0.1:9/0",
    }
    probed = _probe(tmp_path, env, "run-worker")
    assert probed["forkservers"] == 0  # Celery workers run the steps: no forkserver is used
    assert probed["same_definitions"] is True
