"""Delay from an accepted webhook signal to the Hightouch trigger, and where it goes.

Starts the sandbox, the intake (`activation webhooks`) and `dagster dev` (webserver + daemon) on
free ports, then sends N signed signals one after another (each waits for the previous run to
finish, so no signal queues behind another, and then a seeded random part of the sensor daemon's
5 s pass, so the signals do not all arrive at the same point of it). For each it prints:

  pickup   accepted by the intake -> run created by webhook_event_sensor (the wait for the
           sensor daemon's next 5 s pass, then the sensor's evaluation)
  launch   run created -> run started (the run queue, then the run worker process starts and
           loads the code location)
  upstream run started -> first sync step starts (dbt build with its tests, the guard checks)
  trigger  first sync step starts -> first Hightouch run created (the gate, then the API call)
  total    accepted -> first Hightouch trigger (and -> last trigger, all destinations)
  dbt      the dbt step itself, start to end (inside upstream): the work the signal makes
           necessary, which the target leaves out
  overhead total - dbt: what orchestration adds (target: <= 10 s)

With `--burst M` it then sends M signals for the same source at once and prints how they were
coalesced: runs launched, dbt builds, Hightouch syncs triggered, and the time from the first
signal accepted to the last trigger.

Run: `PATH=.venv/bin:$PATH .venv/bin/python benchmarks/bench_latency.py [--signals N]
[--burst M] [--source NAME]`
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from activation.defs.triggers.common import TRIGGER_TAG
from activation.defs.triggers.webhook_events import EVENT_COUNT_TAG, EVENT_ID_TAG, SCOPE_TAG
from activation.lib.destinations import load_destinations
from activation.tooling.stack import Stack, post_signal, running_stack

SYNC_STEP_PREFIX = "activate__"
DBT_STEP = "dbt_build"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def _hightouch_triggers(stack: Stack, after: float) -> list[float]:
    """Creation times of the Hightouch runs created after `after`, over every destination."""
    times = []
    with stack.sandbox.client() as http:
        for destination in load_destinations():
            response = http.get(
                f"/hightouch/api/v1/syncs/{destination.sync_id}/runs",
                params={"limit": 5, "orderBy": "createdAt"},
            )
            response.raise_for_status()
            for run in response.json()["data"]:
                created = datetime.fromisoformat(run["createdAt"].replace("Z", "+00:00"))
                if created.timestamp() >= after:
                    times.append(created.timestamp())
    return sorted(times)


def _wait_for_run(stack: Stack, event_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in stack.runs():
            tags = {t["key"]: t["value"] for t in run["tags"]}
            if tags.get(EVENT_ID_TAG) == event_id and run["status"] in FINISHED:
                return run
        time.sleep(0.5)
    raise RuntimeError(f"no finished run for {event_id} within {timeout}s")


DAEMON_LOOP_SECONDS = 5.0  # Dagster's sensor daemon evaluates sensors once per 5 s pass


def measure(stack: Stack, secret: str, index: int, source: str) -> dict:
    # Each signal follows the previous run's end, which falls at much the same point of the
    # daemon's 5 s pass each time; a real signal arrives at any point of it. A delay drawn from
    # a seeded generator (the same for every run of the benchmark) spreads them over the pass.
    time.sleep(random.Random(index).uniform(0, DAEMON_LOOP_SECONDS))
    event = f"bench-{index}-{secrets.token_hex(4)}"
    response = post_signal(stack.intake_url, secret, event, source=source)
    accepted = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"signal refused: {response.status_code} {response.text}")
    run = _wait_for_run(stack, f"signal:{event}")
    if run["status"] != "SUCCESS":
        raise RuntimeError(f"run {run['runId']} ended {run['status']}")
    sync_starts = [
        s["startTime"]
        for s in run["stepStats"]
        if s["stepKey"].startswith(SYNC_STEP_PREFIX) and s["startTime"]
    ]
    dbt_steps = [s for s in run["stepStats"] if s["stepKey"] == DBT_STEP and s["endTime"]]
    triggers = _hightouch_triggers(stack, accepted)
    if not sync_starts or not triggers or not dbt_steps:
        raise RuntimeError(
            f"run {run['runId']} ran no dbt step, started no sync or triggered no Hightouch run"
        )
    tags = {t["key"]: t["value"] for t in run["tags"]}
    dbt = dbt_steps[0]["endTime"] - dbt_steps[0]["startTime"]
    return {
        "scope": tags.get(SCOPE_TAG, "?"),
        "pickup": run["creationTime"] - accepted,
        "launch": run["startTime"] - run["creationTime"],
        "upstream": min(sync_starts) - run["startTime"],
        "trigger": triggers[0] - min(sync_starts),
        "total": triggers[0] - accepted,
        "last": triggers[-1] - accepted,
        "dbt": dbt,
        "overhead": triggers[0] - accepted - dbt,
    }


def burst(stack: Stack, secret: str, size: int, source: str, timeout: float = 600) -> str:
    """`size` signals at once; the line saying how they were served."""
    known = {run["runId"] for run in stack.runs()}
    started = time.time()
    for index in range(size):
        event = f"burst-{index}-{secrets.token_hex(4)}"
        response = post_signal(stack.intake_url, secret, event, source=source)
        if response.status_code != 202:
            raise RuntimeError(f"signal refused: {response.status_code} {response.text}")
    deadline = time.monotonic() + timeout
    while True:
        runs = [
            run
            for run in stack.runs()
            if run["runId"] not in known
            and {t["key"]: t["value"] for t in run["tags"]}.get(TRIGGER_TAG) == "webhook"
        ]
        served = sum(
            int({t["key"]: t["value"] for t in run["tags"]}.get(EVENT_COUNT_TAG, "1"))
            for run in runs
        )
        if served >= size and all(run["status"] in FINISHED for run in runs):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{served} of {size} burst signals served within {timeout}s")
        time.sleep(0.5)
    failed = [run["runId"] for run in runs if run["status"] != "SUCCESS"]
    if failed:
        raise RuntimeError(f"burst runs did not succeed: {failed}")
    builds = sum(1 for run in runs for step in run["stepStats"] if step["stepKey"] == DBT_STEP)
    triggers = _hightouch_triggers(stack, started)
    last = f"{triggers[-1] - started:.2f} s" if triggers else "-"
    return (
        f"burst of {size} signals ({source}): {len(runs)} run(s) launched, {builds} dbt "
        f"build(s), {len(triggers)} Hightouch sync(s) triggered; first accepted -> last "
        f"trigger {last}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=5, help="How many signals to send.")
    parser.add_argument("--rows", type=int, default=1000, help="Customers in the sandbox.")
    parser.add_argument(
        "--source",
        default="events",
        help="The signals' source: a raw stream or an Airbyte connection scopes the run to "
        "what depends on it; any other name builds the whole job.",
    )
    parser.add_argument(
        "--burst", type=int, default=0, help="Then send this many signals at once (0: none)."
    )
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    secret = "bench-" + secrets.token_hex(16)
    os.environ["ACTIVATION_WEBHOOK_SECRET"] = secret
    os.environ.setdefault("HIGHTOUCH_API_TOKEN", "bench-" + secrets.token_hex(8))
    columns = ("pickup", "launch", "upstream", "trigger", "total", "last", "dbt", "overhead")
    with tempfile.TemporaryDirectory() as folder:
        print(f"Starting sandbox ({args.rows} customers), intake and dagster dev ...", flush=True)
        with running_stack(Path(folder), "--phase-seconds", "0.05", "--rows", str(args.rows)) as s:
            print("signal  scope " + "".join(f"{c:>10}" for c in columns) + "   (seconds)")
            results = []
            for index in range(1, args.signals + 1):
                figures = measure(s, secret, index, args.source)
                results.append(figures)
                print(
                    f"{index:>6} {figures['scope']:>6} "
                    + "".join(f"{figures[c]:>10.2f}" for c in columns),
                    flush=True,
                )
            # A fresh deployment's first signal builds the whole job (nothing was built yet):
            # the medians are per scope.
            for scope in sorted({r["scope"] for r in results}, reverse=True):
                rows = [r for r in results if r["scope"] == scope]
                print(
                    f"median {scope:>6} "
                    + "".join(f"{statistics.median(r[c] for r in rows):>10.2f}" for c in columns)
                    + f"   ({len(rows)} signal(s))"
                )
            if args.burst:
                print(burst(s, secret, args.burst, args.source), flush=True)
    print(
        "pickup = sensor interval + daemon loop; launch = run worker start and code location "
        "load; upstream = dbt build, tests and guards; trigger = gate and Hightouch API call; "
        "dbt = the dbt step alone; overhead = total - dbt."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
