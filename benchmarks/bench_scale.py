"""Hundreds of syncs: 200 destinations driven on the sandbox, waits attached against detached.

Not a test: it prints figures. The declaration comes from the load benchmark's generator
(benchmarks/bench_load.py: the demo's five destinations and 195 reading 20 generated marts of a
100-model dbt project). The same declaration is written twice, differing only in `wait`:

- attached: every sync step triggers its Hightouch run and follows it to the end (today's path);
- detached: every destination that no other syncs `after` is `wait: detached` (a destination
  others sync after must wait attached, so its dependants see its materialization); its step
  triggers and ends, and the detached-sync follower (the `detached_sync_sensor`'s pass,
  `activation.core.detached.follow_in_flight`) reports each run when it ends. Here the follower
  runs in this process every `--follow-interval` seconds, as the daemon would tick the sensor,
  and records what it reports as the daemon does (runless asset events).

Each mode runs the `activate` job once (`dagster job execute`: the Airbyte job, a dbt build of
the 100 models with their tests, then 200 sync steps on the multiprocess executor, one pool per
destination) after a sandbox reset, with every Hightouch run held running for
`--running-seconds`. Printed per mode:

- wall time from launch to the last sync's materialization;
- the seconds sync steps held a worker process, summed over the 200 steps, and the most sync
  steps running at once (from the run's event log): what a detached wait gives back;
- peak processes and peak memory of the job's process tree, as proportional set size (a page
  shared by forked processes counted once), plus, detached, this process, which does the
  follower's work;
- Hightouch requests per 10 s, the maximum over every 10 s window, counted at the sandbox (the
  workspace limit is 200);
- the delay from each Hightouch run's `finishedAt` (the sandbox's) to the sync asset's
  materialization timestamp in the Dagster instance: median, p95, max;
- rows in the CRM stand-ins, which must match between the modes.

Run: `PATH=$PWD/.venv/bin:$PATH .venv/bin/python benchmarks/bench_scale.py --destinations 200`
(about 25 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

from bench_chain import _children, become_subreaper, reap_orphans, tree_rss  # noqa: E402
from bench_load import generate_destinations, generate_project  # noqa: E402

from activation.lib.paths import PROJECT_ROOT  # noqa: E402

WORKSPACE_LIMIT_PER_10S = 200
SAMPLE_SECONDS = 0.5


@dataclass
class Samples:
    """Process tree and sandbox request counts, sampled in a thread while a mode runs."""

    peak_processes: int = 0
    peak_rss: int = 0
    requests: list[tuple[float, int]] = field(default_factory=list)


def tree_pss(pid: int) -> int:
    """Proportional set size of `pid` and every descendant, in bytes: shared pages (a forked
    step shares most of its memory with the forkserver) counted once, unlike summed RSS."""
    tree, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        todo.extend(tree.get(current, []))
    return total


def tree_size(pid: int) -> int:
    tree, count, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        count += 1
        todo.extend(tree.get(current, []))
    return count


def hightouch_requests(sandbox) -> int:  # type: ignore[no-untyped-def]
    return sum(
        count
        for path, count in sandbox.request_counts().items()
        if path.split(" ", 1)[1].startswith("/hightouch/")
    )


def sample(pid: int, sandbox, stop: threading.Event, into: Samples, extra_rss: Callable[[], int]):  # type: ignore[no-untyped-def]
    next_count = 0.0
    while not stop.is_set():
        into.peak_processes = max(into.peak_processes, tree_size(pid))
        into.peak_rss = max(into.peak_rss, tree_pss(pid) + extra_rss())
        now = time.monotonic()
        if now >= next_count:
            into.requests.append((now, hightouch_requests(sandbox)))
            next_count = now + 1.0
        stop.wait(SAMPLE_SECONDS)


def sync_steps_held(instance, destinations) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """From the newest run's event log: the seconds sync steps held a worker process, summed
    (STEP_START to its success or failure), and the most sync steps running at once."""
    import dagster as dg

    (run,) = instance.get_runs(limit=1)
    steps = {f"activate__{d.key}" for d in destinations}
    started: dict[str, float] = {}
    spans: list[tuple[float, float]] = []
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is None or entry.step_key not in steps:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[entry.step_key] = entry.timestamp
        elif (
            event.event_type
            in (
                dg.DagsterEventType.STEP_SUCCESS,
                dg.DagsterEventType.STEP_FAILURE,
            )
            and entry.step_key in started
        ):
            spans.append((started.pop(entry.step_key), entry.timestamp))
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return sum(b - a for a, b in spans), peak


def max_per_window(requests: list[tuple[float, int]], window: float = 10.0) -> int:
    """The most requests counted in any `window` seconds (1 s sampling)."""
    best = 0
    for i, (start, count) in enumerate(requests):
        later = [c for t, c in requests[i:] if t - start <= window]
        best = max(best, later[-1] - count)
    return best


def write_declaration(folder: Path, count: int, detached: bool) -> tuple[Path, int]:
    path = generate_destinations(folder, count)
    declared = yaml.safe_load(path.read_text())
    followed = {key for d in declared["destinations"] for key in d.get("after", [])}
    detached_count = 0
    for destination in declared["destinations"]:
        if detached and destination["key"] not in followed:
            destination["wait"] = "detached"
            detached_count += 1
        else:
            destination["wait"] = "attached"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    return path, detached_count


def self_pss() -> int:
    return tree_pss(os.getpid()) - sum(tree_pss(c) for c in _children().get(os.getpid(), []))


def materialized_at(instance, key) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Hightouch run id -> timestamp of its sync asset's materialization."""
    result = instance.fetch_materializations(key, limit=20)
    seen = {}
    for record in result.records:
        materialization = record.event_log_entry.asset_materialization
        run_id = materialization.metadata.get("hightouch_run_id") if materialization else None
        if run_id is not None:
            seen[str(run_id.value)] = record.event_log_entry.timestamp
    return seen


def finished_runs(sandbox, sync_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    with sandbox.client() as http:
        response = http.get(f"/hightouch/api/v1/syncs/{sync_id}/runs", params={"limit": 5})
        response.raise_for_status()
        return [r for r in response.json()["data"] if r.get("finishedAt")]


class DetachedSensor:
    """The code location's detached_sync_sensor evaluated in this process, as the daemon ticks
    it: its cursor kept between ticks, its asset events stored in order as runless events."""

    def __init__(self, instance) -> None:  # type: ignore[no-untyped-def]
        import dagster as dg

        from activation.definitions import build_definitions
        from activation.defs.triggers.detached_syncs import DETACHED_SENSOR_NAME

        definitions = build_definitions()
        self.definition = definitions.get_sensor_def(DETACHED_SENSOR_NAME)
        self.resources = {k: definitions.resources[k] for k in ("hightouch", "pagerduty", "slack")}
        self.instance, self.cursor, self.ticks = instance, None, 0
        self._dg = dg

    def tick(self) -> None:
        with self._dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        ) as context:
            result = self.definition(context)
        self.cursor = result.cursor
        self.ticks += 1
        for event in result.asset_events or []:
            self.instance.report_runless_asset_event(event)


def run_mode(
    name: str,
    declaration: Path,
    detached_count: int,
    sandbox,  # type: ignore[no-untyped-def]
    env: dict[str, str],
    folder: Path,
    running_seconds: float,
    follow_interval: float,
    timeout: float,
) -> dict:
    import dagster as dg

    from activation.lib.destinations import load_destinations, sync_asset_key_for

    env = {**env, "ACTIVATION_DESTINATIONS_FILE": str(declaration)}
    os.environ["ACTIVATION_DESTINATIONS_FILE"] = str(declaration)
    destinations = [d for d in load_destinations(declaration) if d.sync_id]
    with sandbox.client() as http:
        http.post("/sandbox/reset").raise_for_status()
    for destination in destinations:
        sandbox.inject_fault(
            kind="run", sync_id=destination.sync_id, running_seconds=running_seconds
        )
    with sandbox.client() as http:
        http.delete("/sandbox/requests").raise_for_status()

    instance = dg.DagsterInstance.get()
    follower = DetachedSensor(instance) if detached_count else None
    log = folder / f"{name}.log"
    samples, stop = Samples(), threading.Event()
    keep = set(_children().get(os.getpid(), []))
    started = time.monotonic()
    launched_at = time.time()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "job", "execute", "-m", "activation.definitions"]
            + ["-j", "activate"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=out,
        )
        sampler = threading.Thread(
            target=sample,
            args=(process.pid, sandbox, stop, samples, self_pss if follower else lambda: 0),
            daemon=True,
        )
        sampler.start()
        keys = {d.key: sync_asset_key_for(d.key) for d in destinations}
        reported: dict[str, float] = {}
        next_follow = time.monotonic()
        while True:
            code = process.poll()
            if follower is not None and time.monotonic() >= next_follow:
                follower.tick()
                next_follow = time.monotonic() + follow_interval
            if code is not None:
                done = {
                    key: max(seen.values())
                    for key, asset_key in keys.items()
                    if (seen := materialized_at(instance, asset_key))
                    and max(seen.values()) >= launched_at
                }
                reported = done
                if len(done) == len(keys) or follower is None:
                    break
            if time.monotonic() - started > timeout:
                break
            time.sleep(1.0)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    reap_orphans(keep)
    if code not in (0, None):
        print(f"  {name}: the job exited {code}; see {log}", flush=True)
    held, concurrent = sync_steps_held(instance, destinations)
    delays = []
    for destination in destinations:
        seen = materialized_at(instance, keys[destination.key])
        for run in finished_runs(sandbox, destination.sync_id or ""):
            if str(run["id"]) in seen:
                ended = datetime.fromisoformat(run["finishedAt"].replace("Z", "+00:00"))
                delays.append(seen[str(run["id"])] - ended.timestamp())
    shipped = {
        f"{d.destination_type}/{d.object}": len(sandbox.records(d.destination_type, d.object))
        for d in destinations
    }
    figures = {
        "mode": name,
        "detached": detached_count,
        "wall": wall,
        "materialized": len(reported),
        "syncs": len(destinations),
        "peak_processes": samples.peak_processes,
        "peak_rss_mb": samples.peak_rss / 1e6,
        "max_requests_per_10s": max_per_window(samples.requests),
        "delays": delays,
        "sync_step_seconds": held,
        "peak_sync_steps": concurrent,
        "shipped": shipped,
    }
    delay_text = (
        f"median {statistics.median(delays):.1f} s, p95 "
        f"{sorted(delays)[int(0.95 * (len(delays) - 1))]:.1f} s, max {max(delays):.1f} s"
        if delays
        else "none measured"
    )
    print(
        f"{name:<9} {len(reported)}/{len(destinations)} syncs materialized in {wall:.0f} s | "
        f"sync steps held a worker {held:.0f} s in all, at most {concurrent} at once | "
        f"peak processes {samples.peak_processes} | peak memory (PSS) "
        f"{samples.peak_rss / 1e6:.0f} MB | "
        f"Hightouch requests per 10 s: max {figures['max_requests_per_10s']} (limit "
        f"{WORKSPACE_LIMIT_PER_10S}) | run end -> materialization: {delay_text}",
        flush=True,
    )
    return figures


def measure(args: argparse.Namespace, folder: Path) -> None:
    """Both modes on one sandbox; runs in a child process whose environment already names the
    generated project (activation reads it when its modules are imported)."""
    from activation.tooling.demo import prepare_code_location, sandbox_environment

    become_subreaper()
    declarations = {
        mode: (folder / mode / "destinations.yaml", int((folder / mode / "detached").read_text()))
        for mode in args.modes.split(",")
    }
    with sandbox_environment(folder / "data") as sandbox:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        began = time.perf_counter()
        prepare_code_location()
        print(
            f"{args.destinations} destinations, Hightouch runs held {args.running_seconds:g} s; "
            f"manifest and listing prepared in {time.perf_counter() - began:.0f} s. "
            f"Logs in {folder}.",
            flush=True,
        )
        results = [
            run_mode(
                mode,
                path,
                detached_count,
                sandbox,
                env,
                folder,
                args.running_seconds,
                args.follow_interval,
                args.timeout,
            )
            for mode, (path, detached_count) in declarations.items()
        ]
        sandbox_rss = tree_rss(sandbox.process.pid) / 1e6
    print(f"sandbox RSS at the end: {sandbox_rss:.0f} MB")
    shipped = {json.dumps(r["shipped"], sort_keys=True) for r in results}
    print(
        "rows in the CRM stand-ins: "
        + ("the same in every mode" if len(shipped) == 1 else f"DIFFER: {shipped}")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destinations", type=int, default=200)
    parser.add_argument("--running-seconds", type=float, default=20.0)
    parser.add_argument("--follow-interval", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=2400.0, help="Per mode, in seconds.")
    parser.add_argument("--modes", default="attached,detached")
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        measure(args, args.inner)
        return 0
    with tempfile.TemporaryDirectory(prefix="activation-bench-scale-") as temporary:
        folder = Path(temporary)
        project = generate_project(folder / "generated")
        for mode in args.modes.split(","):
            (folder / mode).mkdir()
            _, detached_count = write_declaration(
                folder / mode, args.destinations, mode == "detached"
            )
            (folder / mode / "detached").write_text(str(detached_count))
        home = folder / "dagster_home"
        home.mkdir()
        # One sync at a time per destination: every pool's limit is 1.
        (home / "dagster.yaml").write_text(
            "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"
        )
        env = {
            **os.environ,
            "ACTIVATION_DBT_PROJECT_DIR": str(project),
            "ACTIVATION_DESTINATIONS_FILE": str(folder / "attached" / "destinations.yaml"),
            "ACTIVATION_DBT_TARGET": "duckdb",
            "DAGSTER_HOME": str(home),
            "DO_NOT_TRACK": "1",
            "HIGHTOUCH_API_TOKEN": os.environ.get("HIGHTOUCH_API_TOKEN", "bench-token"),
        }
        return subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--inner", str(folder)], env=env
        ).returncode


if __name__ == "__main__":
    sys.exit(main())
