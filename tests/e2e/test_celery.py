"""Steps on Celery workers, for real: Redis as broker and result backend (Debian's redis-server
on a free port), the suite's PostgreSQL server as Dagster's storage (deploy/dagster.yaml), two
`dagster-celery worker start` workers, and `activate` launched with `ACTIVATION_EXECUTOR=celery`
by `dagster job execute`, as an operator would, against the sandbox.

One whole `activate` run shows, from its event log:
1. every step ran in a Celery worker and both workers took steps (dagster-celery's "Executing
   steps ... in celery worker" engine event names the worker; STEP_START's pid is a pool process
   of that worker), and every destination received its rows;
2. the HubSpot sync, slowed at the Hightouch stand-in by a `running_seconds` fault, has the
   process running it SIGKILLed mid-wait: the worker requeues the task (acks late, reject on
   worker lost: activation/core/executors.py), a live worker process runs the step again, it
   re-attaches to the Hightouch run the killed attempt triggered, and the stand-in counts exactly
   one trigger for that sync;
3. a second run of that sync, launched meanwhile, waits for the destination's pool (claimed by
   the first run's executor even while its step was between workers) and starts only after the
   first run's sync ended.

Triggers are counted at the sandbox, never from the product's logs. The module costs about
75-110 s (one dbt build, a 15 s slow Hightouch run, worker start-up).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._utils.concurrency import ConcurrencyKeyInfo  # the pool's claims, for typing

from activation.components.hightouch_syncs import PARALLEL_SYNCS
from activation.core.executors import (
    BACKEND_VARIABLE,
    BROKER_VARIABLE,
    EXECUTOR_VARIABLE,
    ExecutorSettingError,
    celery_worker_config,
    fan_out_executor,
)
from activation.core.sync_path import TRIGGER_MARK
from activation.lib.destinations import load_destinations
from activation.lib.paths import PROJECT_ROOT
from activation.sandbox.launcher import SandboxProcess, start_sandbox
from tests.support.polling import wait_for
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer, redis_or_skip, running_redis

TOKEN = "celery-e2e-token-3f9a1c"
WORKERS = ("worker1", "worker2")
VENV_BIN = Path(sys.executable).parent
RUN_TIMEOUT_SECONDS = 240
WORKER_MARKER = "in celery worker"  # dagster-celery's engine event when a worker takes a step
SLOW_SYNC = next(d for d in load_destinations() if d.key == "hubspot_contacts")
SLOW_STEP = "activate__hubspot_contacts"
# Long enough, on a loaded machine, for the second run to start and wait for the pool while the
# first still holds it: 25 s was not, once, in a CI run that took 938 s on a slowed host.
SLOW_SECONDS = 60.0


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class CeleryWorld:
    environment: dict[str, str]
    sandbox: SandboxProcess
    instance: dg.DagsterInstance
    workers: dict[str, Worker]
    folder: Path

    def launch(self, *args: str, tag: str) -> subprocess.Popen[str]:
        """`dagster job execute -m activation.definitions -j activate ARGS` in the background."""
        return subprocess.Popen(
            [
                str(VENV_BIN / "dagster"),
                "job",
                "execute",
                "-m",
                "activation.definitions",
                "-j",
                "activate",
                "--tags",
                json.dumps({"celery_e2e": tag}),
                *args,
            ],  # fmt: skip
            cwd=PROJECT_ROOT,
            env=self.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run_id(self, tag: str) -> str | None:
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={"celery_e2e": tag}))
        assert len(runs) <= 1, f"expected one run tagged {tag}, found {len(runs)}"
        return runs[0].run_id if runs else None

    def events(self, run_id: str) -> list[dg.EventLogEntry]:
        return list(self.instance.all_logs(run_id))


def _child_tree(pid: int) -> set[int]:
    """pid and every process below it, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return tree


def _group_alive(worker: Worker) -> bool:
    worker.process.poll()  # reap the leader, or its zombie keeps the group alive
    try:
        os.killpg(worker.process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_workers(workers: list[Worker]) -> None:
    """Warm shutdown of every worker's whole process group (dagster-celery, celery and its
    pool) at once, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        alive = [w for w in workers if _group_alive(w)]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, sig)
        deadline = time.monotonic() + wait
        while any(_group_alive(w) for w in alive) and time.monotonic() < deadline:
            time.sleep(0.1)


def _wait_ready(world_workers: dict[str, Worker], redis_server: RedisServer) -> None:
    """Both workers answer a ping over the broker (they consume from the queue)."""
    from dagster_celery.make_app import make_app

    app = make_app({"broker": redis_server.url(), "backend": redis_server.url()})
    deadline = time.monotonic() + 90
    expected = {f"{name}@" for name in world_workers}
    while time.monotonic() < deadline:
        for worker in world_workers.values():
            if worker.process.poll() is not None:
                raise AssertionError(f"{worker.name} exited:\n{worker.log.read_text()[-3000:]}")
        replies = app.control.ping(timeout=1.0) or []
        answered = {name.split("@")[0] + "@" for reply in replies for name in reply}
        if expected <= answered:
            return
        time.sleep(0.5)
    logs = "\n".join(w.log.read_text()[-2000:] for w in world_workers.values())
    raise AssertionError(f"Celery workers did not answer within 90 s:\n{logs}")


@pytest.fixture(scope="module")
def world(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorld]:
    redis_or_skip()
    folder = tmp_path_factory.mktemp("celery")
    database = postgres_server.create_database("activation_celery")
    home = folder / "dagster_home"
    home.mkdir()
    # The production instance file: PostgreSQL storage, pools (default limit 1), run retries.
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    with running_redis(folder / "redis") as redis_server:
        sandbox = start_sandbox(folder / "data", "--phase-seconds", "0.05", "--rows", "60")
        workers: dict[str, Worker] = {}
        instance: dg.DagsterInstance | None = None
        try:
            environment = {
                **os.environ,
                **postgres_server.dagster_environment(database),
                "DAGSTER_HOME": str(home),
                "ACTIVATION_SANDBOX_URL": sandbox.url,
                "ACTIVATION_DATA_DIR": str(folder / "data"),
                "HIGHTOUCH_API_TOKEN": TOKEN,
                "ACTIVATION_SYNC_RETRY_DELAY_SECONDS": "1",
                EXECUTOR_VARIABLE: "celery",
                BROKER_VARIABLE: redis_server.url(),
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "DO_NOT_TRACK": "1",
            }
            # The workers' config is the product's executor config (broker by variable name).
            config = folder / "celery.yaml"
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(BROKER_VARIABLE, redis_server.url())
                config.write_text(yaml.safe_dump(celery_worker_config()))
            for name in WORKERS:
                log = folder / f"{name}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        [
                            str(VENV_BIN / "dagster-celery"),
                            "worker",
                            "start",
                            "-A",
                            "dagster_celery.app",
                            "-y",
                            str(config),
                            "-n",
                            name,
                            "-i",
                            "activation.definitions",
                            "--",
                            "--concurrency=1",
                        ],  # fmt: skip
                        cwd=PROJECT_ROOT,
                        env=environment,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, stopped as one
                    )
                workers[name] = Worker(name, process, log)
            # Workers import the code location while the dbt manifest is prepared.
            prepared = subprocess.run(
                [str(VENV_BIN / "python"), "-c",
                 "from activation.tooling.demo import prepare_code_location as p; p()"],
                cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert prepared.returncode == 0, prepared.stdout + prepared.stderr
            _wait_ready(workers, redis_server)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("DAGSTER_HOME", str(home))
                for key, value in postgres_server.dagster_environment(database).items():
                    patch.setenv(key, value)
                instance = dg.DagsterInstance.get()
            yield CeleryWorld(environment, sandbox, instance, workers, folder)
        finally:
            _stop_workers(list(workers.values()))
            if instance is not None:
                instance.dispose()
            sandbox.stop()
    for worker in workers.values():
        assert not _group_alive(worker), f"{worker.name} or one of its processes is still running"


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(
            f"run did not end within {RUN_TIMEOUT_SECONDS}s:\n{output[-4000:]}"
        ) from None
    return output


def _worker_of_step(events: list[dg.EventLogEntry]) -> dict[str, list[str]]:
    """step key -> the Celery workers (node names) that took it, in order."""
    taken: dict[str, list[str]] = {}
    for entry in events:
        event = entry.dagster_event
        if event is None or not event.is_engine_event or WORKER_MARKER not in entry.message:
            continue
        metadata = event.engine_event_data.metadata
        taken.setdefault(entry.step_key or "", []).append(str(metadata["Celery worker"].value))
    return taken


def _step_events(
    events: list[dg.EventLogEntry], step_key: str, kind: dg.DagsterEventType
) -> list[dg.EventLogEntry]:
    return [
        e
        for e in events
        if e.step_key == step_key
        and e.dagster_event is not None
        and e.dagster_event.event_type == kind
    ]


def _sync_metadata(events: list[dg.EventLogEntry], step_key: str) -> dict[str, Any]:
    (entry,) = _step_events(events, step_key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert entry.asset_materialization is not None
    return {k: v.value for k, v in entry.asset_materialization.metadata.items()}


@dataclass
class Scenario:
    run_id: str
    events: list[dg.EventLogEntry]
    pool_run_id: str
    pool_events: list[dg.EventLogEntry]
    killed_worker: str
    killed_pid: int
    triggers_when_synced: int
    counted_at: float
    pool_holders: set[str]
    pool_waiters: set[str]


@pytest.fixture(scope="module")
def scenario(world: CeleryWorld) -> Scenario:
    """One whole `activate` run. Its HubSpot sync is slowed down at Hightouch and the process
    running that step is SIGKILLed mid-wait; meanwhile a second run of that one sync is launched
    and has to wait for the destination's pool."""
    sync_id = SLOW_SYNC.sync_id
    assert sync_id is not None
    before = world.sandbox.trigger_counts().get(sync_id, 0)
    # Only the next Hightouch run of this sync stays running (a fault's count defaults to 1).
    world.sandbox.inject_fault(kind="run", sync_id=sync_id, running_seconds=SLOW_SECONDS)
    whole = world.launch(tag="whole")
    try:
        run_id = wait_for("the activate run exists", lambda: world.run_id("whole"))

        def triggered() -> bool:
            # The killed attempt asked Hightouch (counted at the sandbox) and recorded the run.
            return world.sandbox.trigger_counts().get(sync_id, 0) > before and any(
                e.asset_observation is not None
                and getattr(e.asset_observation.metadata.get(TRIGGER_MARK), "value", "")
                == "triggered"
                for e in _step_events(
                    world.events(run_id), SLOW_STEP, dg.DagsterEventType.ASSET_OBSERVATION
                )
            )

        def submitted() -> bool:
            return any(
                f'Submitting celery task for step "{SLOW_STEP}"' in e.message
                for e in world.events(run_id)
            )

        # The executor claims the step's pool slot before it submits the step to Celery; from
        # then on, a second run of the same sync has to wait. Launched now, it exists (its CLI
        # loads the code location first) well before the slow sync ends.
        wait_for("the slow sync submitted to Celery", submitted)
        pool_run = world.launch("-o", SLOW_STEP, tag="pool")
        try:
            wait_for("the slow sync triggered Hightouch", triggered)
            events = world.events(run_id)
            worker = _worker_of_step(events)[SLOW_STEP][0].split("@")[0]
            (start,) = _step_events(events, SLOW_STEP, dg.DagsterEventType.STEP_START)
            pid = start.dagster_event.pid if start.dagster_event else None
            # The step runs in a pool process of the worker that took it, not its main process.
            assert pid is not None and pid in _child_tree(world.workers[worker].process.pid)
            assert pid != world.workers[worker].process.pid
            os.kill(pid, signal.SIGKILL)
            pool_run_id = wait_for("the pool run exists", lambda: world.run_id("pool"))

            def waiting() -> ConcurrencyKeyInfo | None:
                info = world.instance.event_log_storage.get_concurrency_info(SLOW_SYNC.pool)
                return info if pool_run_id in {p.run_id for p in info.pending_steps} else None

            pool = wait_for("the pool run waiting for the destination's pool", waiting)
            # Count once the slow sync succeeded; the pool run's step only starts after that.
            wait_for(
                "the killed sync step to succeed",
                lambda: _step_events(
                    world.events(run_id), SLOW_STEP, dg.DagsterEventType.STEP_SUCCESS
                ),
            )
            count, counted_at = world.sandbox.trigger_counts().get(sync_id, 0) - before, time.time()
            pool_output = _finish(pool_run)
        finally:
            pool_run.kill()
        output = _finish(whole)
    finally:
        whole.kill()
    for tag, text in (("whole", output), ("pool", pool_output)):
        run = world.instance.get_run_by_id(world.run_id(tag) or "")
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS, text[-6000:]
    return Scenario(
        run_id=run_id,
        events=world.events(run_id),
        pool_run_id=pool_run_id,
        pool_events=world.events(pool_run_id),
        killed_worker=worker,
        killed_pid=pid,
        triggers_when_synced=count,
        counted_at=counted_at,
        pool_holders={slot.run_id for slot in pool.claimed_slots},
        pool_waiters={p.run_id for p in pool.pending_steps},
    )


def test_activate_runs_its_steps_on_both_celery_workers(
    world: CeleryWorld, scenario: Scenario
) -> None:
    events = scenario.events
    taken = _worker_of_step(events)
    started = {e.step_key for e in events if e.dagster_event and e.dagster_event.is_step_start}
    # Every step that started was taken by a Celery worker, and both workers took steps.
    assert started and started <= set(taken), f"steps not run by a worker: {started - set(taken)}"
    assert {host.split("@")[0] for hosts in taken.values() for host in hosts} == set(WORKERS), taken
    # Each step ran in a pool process of the worker named for it (STEP_START's pid); the killed
    # attempt's process is gone, its pid was checked before the kill.
    trees = {name: _child_tree(w.process.pid) for name, w in world.workers.items()}
    for entry in events:
        event = entry.dagster_event
        if event and event.is_step_start and event.pid != scenario.killed_pid:
            host = taken[entry.step_key or ""][-1].split("@")[0]
            assert event.pid in trees[host], f"{entry.step_key} ran outside {host}"
    # No step carries the launch priority tag dagster-celery ignores (it warns in every run).
    assert not [e.user_message for e in events if "dagster/priority" in e.user_message]
    # The broker's password reached neither the run's record nor its event log.
    password = world.environment[BROKER_VARIABLE].split(":")[2].split("@")[0]
    run = world.instance.get_run_by_id(scenario.run_id)
    assert password not in dg.serialize_value(run)
    assert not [e.message for e in events if password in dg.serialize_value(e)]
    # Every destination received its rows.
    for destination in load_destinations():
        records = world.sandbox.records(destination.destination_type, destination.object)
        assert records, f"{destination.key}: nothing delivered"


def test_killed_worker_process_ends_with_one_trigger_and_a_reattached_step(
    world: CeleryWorld, scenario: Scenario
) -> None:
    events = scenario.events
    # Celery gave the step to a worker twice: the first attempt's process was SIGKILLed, the
    # worker requeued the task (acks late, reject on worker lost), and it ran again.
    taken = _worker_of_step(events)[SLOW_STEP]
    assert len(taken) == 2 and taken[0].split("@")[0] == scenario.killed_worker, taken
    starts = _step_events(events, SLOW_STEP, dg.DagsterEventType.STEP_START)
    assert [s.dagster_event.pid == scenario.killed_pid for s in starts if s.dagster_event] == [
        True,
        False,
    ]
    log = (world.folder / f"{scenario.killed_worker}.log").read_text()
    assert f"pid:{scenario.killed_pid} exited with 'signal 9 (SIGKILL)'" in log
    # The second attempt followed the Hightouch run the killed one triggered...
    assert any(
        e.step_key == SLOW_STEP and "Re-attaching to Hightouch run" in e.message for e in events
    )
    # ...so the Hightouch stand-in counted exactly one trigger for this sync in this run,
    assert scenario.triggers_when_synced == 1
    # and the rows reached the CRM once: the one run added every row the CRM holds.
    metadata = _sync_metadata(events, SLOW_STEP)
    records = world.sandbox.records(SLOW_SYNC.destination_type, SLOW_SYNC.object)
    assert metadata["successful_added"] == len(records) > 0
    assert len(_step_events(events, SLOW_STEP, dg.DagsterEventType.STEP_SUCCESS)) == 1


def test_pool_holds_one_sync_per_destination_across_runs_and_worker_loss(
    scenario: Scenario,
) -> None:
    # After the kill the slot was still claimed by the first run (its executor, in the run
    # worker, claims it before submitting the step to Celery and frees it when the step's result
    # comes back), and the second run was waiting for it.
    assert scenario.pool_holders == {scenario.run_id}
    assert scenario.pool_run_id in scenario.pool_waiters
    first_end = _step_events(scenario.events, SLOW_STEP, dg.DagsterEventType.STEP_SUCCESS)
    second_start = _step_events(scenario.pool_events, SLOW_STEP, dg.DagsterEventType.STEP_START)
    assert len(first_end) == 1 and len(second_start) == 1
    assert second_start[0].timestamp > first_end[0].timestamp, "the two syncs overlapped"
    # (which is also why the trigger count above is the first run's alone)
    assert second_start[0].timestamp > scenario.counted_at
    # The second run is a new sync: nothing changed, so it added and changed nothing.
    metadata = _sync_metadata(scenario.pool_events, SLOW_STEP)
    assert (metadata["successful_added"], metadata["successful_changed"]) == (0, 0)


# -- the selection itself, no services -----------------------------------------------------------


def test_celery_without_a_broker_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(EXECUTOR_VARIABLE, "celery")
    monkeypatch.delenv(BROKER_VARIABLE, raising=False)
    with pytest.raises(ExecutorSettingError, match=BROKER_VARIABLE):
        fan_out_executor()
    monkeypatch.setenv(EXECUTOR_VARIABLE, "kubernetes")
    with pytest.raises(ExecutorSettingError, match="multiprocess, celery"):
        fan_out_executor()
    monkeypatch.delenv(EXECUTOR_VARIABLE)
    assert fan_out_executor() is PARALLEL_SYNCS


def test_broker_url_is_read_from_the_environment_never_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "redis://:s3cret-pw@broker:6379/0"
    monkeypatch.setenv(EXECUTOR_VARIABLE, "celery")
    monkeypatch.setenv(BROKER_VARIABLE, secret)
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    executor = fan_out_executor()
    assert executor.name == "celery_syncs"
    assert "s3cret" not in repr(celery_worker_config())
    assert celery_worker_config()["execution"]["config"]["broker"] == {"env": BROKER_VARIABLE}
    assert celery_worker_config()["execution"]["config"]["backend"] == {"env": BROKER_VARIABLE}
