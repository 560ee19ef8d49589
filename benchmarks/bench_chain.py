"""What orchestration costs: the `activate` job against a bare script doing the same external work.

Not a test: it prints figures. One sandbox (`--rows N` customers) serves every run; before each
run the sandbox is reset (Airbyte jobs, Hightouch runs and snapshots, CRM stand-ins, faults), so
every run starts from the same state and ships the same rows. Each pair runs, in this order:

- bare: a plain Python process (no Dagster) that starts the Airbyte job on the stand-in and polls
  it (every 0.25 s, the sandbox's Airbyte poll interval), runs `dbt build` (same project, profiles
  and target as the dbt resource), triggers the Hightouch syncs in parallel threads with the
  product's `HightouchClient` and waits for them, then posts one Slack message;
- bare after (with `--bare-after`): the same script, but syncing in the order destinations.yaml
  declares with `after` (Salesforce contacts once accounts are done), as the job must; its ratio
  is printed beside the issue's, never instead of it;
- job execute: `dagster job execute -m activation.definitions -j activate` against a temporary
  Dagster home with the per-destination pool limits set, as the UI's run worker executes a run:
  the job's own executor (multiprocess, one process per step);
- in process: `execute_in_process` of the same job (`activation.tooling.demo.run_chain`, as the
  demo runs it, run summary posted to Slack included).

Each figure is for the whole child process tree: wall time from start to exit, CPU time
(user + system) from `RUSAGE_CHILDREN` deltas (step processes and dbt included; this process
is a child subreaper, so a forkserver orphaned by the run process is reaped here and its steps
count too), and peak RSS of the tree (sampled from /proc every 0.2 s). The
sandbox's own CPU is counted in none of them (it is the same external world for all); its peak
RSS is printed at the end. Rows shipped per destination are read back from the CRM stand-ins and
compared between runs of a pair. Each job execute run also prints where its time went, from its
event log (`run_phases`): stages that add up to its wall time, then costs inside them. Each bare
run prints its own stages (`bare_phases`), from marks the script prints after each. Each run
also prints the sandbox's CPU during it: on two cores the sandbox and the run share the CPU, so
the run's own CPU slows the stand-ins it waits on. The last line is `ratio wall=X cpu=Y`: medians
over the pairs of (job execute / bare).

Not in the bare script: the guard checks and Dagster's quality gate (that is Dagster work), and
`dagster job execute` posts no run summary (the daemon's summary sensor does, after the run).

Run: `PATH=$PWD/.venv/bin:$PATH .venv/bin/python benchmarks/bench_chain.py --rows 1000 --pairs 3`
The largest size that fits in 20 minutes on the 2-core development machine is 300,000 customers
(1.1 million rows shipped), without the in-process runs (which sync one destination after another):
`... bench_chain.py --rows 300000 --pairs 3 --no-in-process` took 18 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from activation.lib.paths import PROJECT_ROOT

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_SECONDS = 0.2
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Figure:
    name: str
    wall: float
    cpu: float
    peak_rss_mb: float
    shipped: dict[str, int]
    phases: dict[str, float] | None = None


# The run's wall time, end to end: each stage starts where the previous one ends, so they add up
# to the job's wall.
STAGES = ("to run start", "to dbt", "dbt step", "checks", "syncs", "to exit")
# Costs inside those stages: the forkserver starting and preloading (before the first step),
# step processes from launch to step start (summed over the steps), and the wait from a sync's
# end to the start of the sync declared `after` it (summed over the `after` pairs).
COSTS = ("forkserver", "step starts", "after handoff")
PHASES = STAGES + COSTS


def run_phases(home: Path, started: float, ended: float) -> dict[str, float]:
    """Where the newest run in `home` spent its time, from its event log; `started` and `ended`
    are when its process started and exited (epoch seconds).

    Stages: process start -> run start (interpreter, imports, definitions, the run and its
    planned events); -> dbt step start (the Airbyte step, step launches); the dbt step; -> first
    sync step start (the guards and the other checks on the marts, and the syncs' launch); ->
    last sync step end (the syncs, one after another where `after` says so); -> process exit."""
    import dagster as dg

    from activation.lib.destinations import load_destinations

    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            run = instance.get_runs(limit=1)[0]
            records = instance.get_records_for_run(run.run_id, limit=100_000).records
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
    times: dict[tuple[str, str], float] = {}
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is not None:
            times.setdefault((event.event_type_value, event.step_key or ""), entry.timestamp)
    launched = sorted((t, k) for (kind, k), t in times.items() if kind == "STEP_WORKER_STARTING")
    first_step = launched[0][1]
    destinations = load_destinations()
    syncs = {d.key: f"activate__{d.key}" for d in destinations if d.sync_id}
    sync_starts = [times[("STEP_START", step)] for step in syncs.values()]
    sync_ends = [times[("STEP_SUCCESS", step)] for step in syncs.values()]
    dbt_start, dbt_end = times[("STEP_START", "dbt_build")], times[("STEP_SUCCESS", "dbt_build")]
    handoffs = [
        times[("STEP_START", syncs[d.key])] - times[("STEP_SUCCESS", syncs[upstream])]
        for d in destinations
        if d.key in syncs
        for upstream in d.after
        if upstream in syncs
    ]
    return {
        "to run start": times[("PIPELINE_START", "")] - started,
        "to dbt": dbt_start - times[("PIPELINE_START", "")],
        "dbt step": dbt_end - dbt_start,
        "checks": min(sync_starts) - dbt_end,
        "syncs": max(sync_ends) - min(sync_starts),
        "to exit": ended - max(sync_ends),
        "forkserver": times[("STEP_WORKER_STARTED", first_step)] - launched[0][0],
        "step starts": sum(times[("STEP_START", key)] - t for t, key in launched[1:]),
        "after handoff": sum(handoffs),
    }


BARE_STAGES = ("start + airbyte", "dbt", "syncs", "to exit")


def bare_phases(log: Path, started: float, ended: float) -> dict[str, float]:
    """The bare script's stages, from the marks it prints (epoch seconds after each stage)."""
    marks = {
        fields[1]: float(fields[2])
        for line in log.read_text().splitlines()
        if (fields := line.split()) and fields[0] == "BENCH_MARK"
    }
    return {
        "start + airbyte": marks["airbyte"] - started,
        "dbt": marks["dbt"] - marks["airbyte"],
        "syncs": marks["syncs"] - marks["dbt"],
        "to exit": ended - marks["syncs"],
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) `pid` has used so far, with its waited-for children."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every descendant."""
    tree, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_SIZE
        except OSError:
            pass
        todo.extend(tree.get(current, []))
    return total


class PeakSampler:
    """The peak RSS of a process tree, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(SAMPLE_SECONDS)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def become_subreaper() -> None:
    """Orphans of the measured tree (a multiprocessing forkserver outliving the run process)
    are re-parented to this process rather than to init, so `reap_orphans` can wait for them and
    their CPU time (and that of the steps they forked) reaches `RUSAGE_CHILDREN`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans(keep: set[int], timeout: float = 30.0) -> None:
    """Wait for every child of this process except `keep` (the sandbox) to exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = set(_children().get(os.getpid(), [])) - keep
        if not mine:
            return
        for pid in mine:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    raise SystemExit(f"children still running {timeout:.0f} s after the run: {sorted(mine)}")


def measured(
    name: str, command: list[str], env: dict[str, str], log: Path, keep: set[int]
) -> tuple[float, float, float]:
    """Run `command` to completion: wall s, CPU s of the whole waited-for tree, peak RSS MB."""
    keep = keep | set(_children().get(os.getpid(), []))  # ours before the run (the sandbox...)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=out)
        sampler = PeakSampler(process.pid)
        code = process.wait()
    wall = time.perf_counter() - started
    peak = sampler.stop()
    reap_orphans(keep)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"{name} exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, peak / 1e6


BARE_SCRIPT = r"""
import concurrent.futures, os, subprocess, sys, time
from pathlib import Path
import httpx
from activation.lib.destinations import load_destinations
from activation.lib.environment import (
    SANDBOX_AIRBYTE_CONNECTION_ID, SANDBOX_AIRBYTE_REST_PREFIX, SANDBOX_HIGHTOUCH_PREFIX,
    SANDBOX_SLACK_WEBHOOK_PATH,
)
from activation.lib.hightouch import HightouchClient
from activation.lib.paths import DBT_PROJECT_DIR

base = os.environ["ACTIVATION_SANDBOX_URL"]
with httpx.Client(base_url=base + SANDBOX_AIRBYTE_REST_PREFIX, timeout=30) as http:
    job = http.post("/jobs", json={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID,
                                   "jobType": "sync"}).raise_for_status().json()["jobId"]
    while (status := http.get(f"/jobs/{job}").raise_for_status().json()["status"]) != "succeeded":
        if status in ("failed", "cancelled"):
            sys.exit(f"airbyte job {status}")
        time.sleep(0.25)
print("BENCH_MARK airbyte", time.time(), flush=True)
dbt = str(Path(sys.executable).parent / "dbt")
subprocess.run([dbt, "--no-use-colors", "build", "--project-dir", str(DBT_PROJECT_DIR),
                "--profiles-dir", str(DBT_PROJECT_DIR), "--target", "duckdb",
                "--target-path", os.environ["BENCH_DBT_TARGET_PATH"], "--quiet"], check=True)
print("BENCH_MARK dbt", time.time(), flush=True)
destinations = [d for d in load_destinations() if d.sync_id]

def sync(destination):
    with HightouchClient(base + SANDBOX_HIGHTOUCH_PREFIX, os.environ["HIGHTOUCH_API_TOKEN"],
                         max_requests_per_second=20.0 / len(destinations)) as client:
        return client.wait_for_run(destination.sync_id, client.trigger(destination.sync_id))

runs = []
if os.environ.get("BENCH_BARE_AFTER"):
    # The variant honouring `after`: waves of destinations whose `after` have all synced. One
    # without a sync_id never syncs here, so it counts as done (else its dependants never start).
    done = {d.key for d in load_destinations()} - {d.key for d in destinations}
    waves, left = [], list(destinations)
    while left:
        waves.append([d for d in left if set(d.after) <= done])
        done |= {d.key for d in waves[-1]}
        left = [d for d in left if d.key not in done]
else:
    waves = [destinations]
for wave in waves:
    with concurrent.futures.ThreadPoolExecutor(len(wave)) as pool:
        runs += list(pool.map(sync, wave))
print("BENCH_MARK syncs", time.time(), flush=True)
httpx.post(base + SANDBOX_SLACK_WEBHOOK_PATH,
           json={"text": f"{len(runs)} syncs done"}, timeout=30).raise_for_status()
"""

IN_PROCESS_SCRIPT = r"""
import dagster as dg
from activation.tooling.demo import run_chain
with dg.DagsterInstance.get() as instance:
    result = run_chain(instance, console_log_level="WARNING")
raise SystemExit(0 if result.success else 1)
"""


class Bench:
    def __init__(self, folder: Path, sandbox: object, env: dict[str, str]) -> None:
        self.folder, self.sandbox, self.env = folder, sandbox, env
        self.runs = 0

    def shipped(self) -> dict[str, int]:
        from activation.lib.destinations import load_destinations

        return {
            d.key: len(self.sandbox.records(d.destination_type, d.object))  # type: ignore[attr-defined]
            for d in load_destinations()
            if d.sync_id
        }

    def run(self, name: str, command: list[str]) -> Figure:
        env = {**self.env, "BENCH_BARE_AFTER": "1"} if name == "bare after" else self.env
        with self.sandbox.client() as http:  # type: ignore[attr-defined]
            # Not timed. At 300,000 customers the CRM stand-ins hold 1.1 million records, and
            # deleting them outlasts the client's default 30 s.
            http.post("/sandbox/reset", timeout=900).raise_for_status()
        self.runs += 1
        log = self.folder / f"run{self.runs:02d}-{name.replace(' ', '_')}.log"
        started = time.time()
        sandbox_before = process_cpu(self.sandbox.process.pid)  # type: ignore[attr-defined]
        wall, cpu, peak = measured(name, command, env, log, {self.sandbox.process.pid})  # type: ignore[attr-defined]
        sandbox_cpu = process_cpu(self.sandbox.process.pid) - sandbox_before  # type: ignore[attr-defined]
        phases = None
        if name == "job execute":
            phases = run_phases(Path(self.env["DAGSTER_HOME"]), started, started + wall)
        elif name.startswith("bare"):
            phases = bare_phases(log, started, started + wall)
        figure = Figure(name, wall, cpu, peak, self.shipped(), phases)
        print(
            f"  {name:<12} wall {wall:7.2f} s  cpu {cpu:7.2f} s  peak RSS {peak:7.0f} MB  "
            f"shipped {sum(figure.shipped.values())} rows  (sandbox cpu {sandbox_cpu:.2f} s)",
            flush=True,
        )
        if phases:
            for names in (STAGES, COSTS) if name == "job execute" else (BARE_STAGES,):
                print("               " + "  ".join(f"{k} {phases[k]:.2f} s" for k in names))
        return figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="Customers the sandbox lands.")
    parser.add_argument("--pairs", type=int, default=3, help="Alternating pairs (at least 3).")
    parser.add_argument(
        "--no-in-process", action="store_true", help="Skip the execute_in_process figure."
    )
    parser.add_argument(
        "--bare-after",
        action="store_true",
        help="Also run the bare script syncing in the order destinations.yaml declares with "
        "`after` (Salesforce contacts once accounts are done), as the job does, and print its "
        "ratio beside the issue's (whose bare script syncs all five at once).",
    )
    args = parser.parse_args()
    from activation.tooling.demo import prepare_code_location, sandbox_environment
    from activation.tooling.dev import set_pool_limits

    python = sys.executable
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="activation-bench-chain-") as temporary:
        folder = Path(temporary)
        os.environ.setdefault("HIGHTOUCH_API_TOKEN", "bench-token")
        with sandbox_environment(folder / "data", "--rows", str(args.rows)) as sandbox:
            home = folder / "dagster_home"
            home.mkdir()
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            env = {
                **os.environ,
                "DAGSTER_HOME": str(home),
                "DO_NOT_TRACK": "1",
                "BENCH_DBT_TARGET_PATH": str(folder / "bare_target"),
                "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            started = time.perf_counter()
            prepare_code_location()
            set_pool_limits(env)
            print(
                f"{args.rows} customers; manifest, Airbyte listing and Dagster home prepared in "
                f"{time.perf_counter() - started:.1f} s (not timed below). Logs in {folder}.",
                flush=True,
            )
            bench = Bench(folder, sandbox, env)
            commands = {
                "bare": [python, "-c", BARE_SCRIPT],
                "bare after": [python, "-c", BARE_SCRIPT],
                "job execute": [
                    python,
                    "-m",
                    "dagster",
                    "job",
                    "execute",
                    "-m",
                    "activation.definitions",
                    "-j",
                    "activate",
                ],
                "in process": [python, "-c", IN_PROCESS_SCRIPT],
            }
            if args.no_in_process:
                del commands["in process"]
            if not args.bare_after:
                del commands["bare after"]
            pairs: list[dict[str, Figure]] = []
            for n in range(1, args.pairs + 1):
                print(f"pair {n}:", flush=True)
                pair = {name: bench.run(name, command) for name, command in commands.items()}
                shipped = {name: f.shipped for name, f in pair.items()}
                if len({json.dumps(s, sort_keys=True) for s in shipped.values()}) != 1:
                    raise SystemExit(f"the runs shipped different rows: {shipped}")
                pairs.append(pair)
            sandbox_peak = tree_rss(sandbox.process.pid) / 1e6
        print()
        for name in commands:
            wall = statistics.median(p[name].wall for p in pairs)
            cpu = statistics.median(p[name].cpu for p in pairs)
            rss = max(p[name].peak_rss_mb for p in pairs)
            print(
                f"median {name:<12} wall {wall:7.2f} s  cpu {cpu:7.2f} s  "
                f"peak RSS of the process tree {rss:6.0f} MB"
            )
        for name, names in (("job execute", PHASES), ("bare", BARE_STAGES)):
            medians = {
                phase: statistics.median(p[name].phases[phase] for p in pairs)  # type: ignore[index]
                for phase in names
            }
            print(
                f"median phases of {name}: "
                + "  ".join(f"{phase} {value:.2f} s" for phase, value in medians.items())
            )
        print(f"sandbox RSS at the end ({args.rows} customers): {sandbox_peak:.0f} MB")
        print(f"shipped per destination (every run): {pairs[0]['bare'].shipped}")

        def ratio(name: str, field: str) -> float:
            return statistics.median(
                getattr(p[name], field) / getattr(p["bare"], field) for p in pairs
            )

        if "in process" in commands:
            print(
                f"in-process ratio wall={ratio('in process', 'wall'):.2f} "
                f"cpu={ratio('in process', 'cpu'):.2f}"
            )
        if "bare after" in commands:
            after = statistics.median(p["job execute"].wall / p["bare after"].wall for p in pairs)
            print(f"ratio against the bare script honouring `after`: wall={after:.2f}")
        print(
            f"ratio wall={ratio('job execute', 'wall'):.2f} cpu={ratio('job execute', 'cpu'):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
