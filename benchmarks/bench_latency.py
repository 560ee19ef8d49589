"""Delay from an accepted webhook signal to the Hightouch trigger, and where it goes.

Starts the sandbox, the intake (`activation webhooks`) and `dagster dev` (webserver + daemon) on
free ports, then sends N signed signals one after another (each waits for the previous run to
finish, so no signal queues behind another). For each it prints:

  pickup   accepted by the intake -> run created by webhook_event_sensor (sensor interval, 5 s,
           plus the daemon's evaluation loop)
  launch   run created -> run started (the run worker process starts and loads the code
           location: dbt manifest, Airbyte specs over HTTP)
  upstream run started -> first sync step starts (dbt build with its tests, the guard checks)
  trigger  first sync step starts -> first Hightouch run created (the gate, then the API call)
  total    accepted -> first Hightouch trigger (and -> last trigger, all destinations)

Run: `PATH=.venv/bin:$PATH .venv/bin/python benchmarks/bench_latency.py [--signals N]`
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from activation.defs.triggers.webhook_events import EVENT_ID_TAG
from activation.lib.destinations import load_destinations
from activation.tooling.stack import Stack, post_signal, running_stack

SYNC_STEP_PREFIX = "activate__"


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
            if tags.get(EVENT_ID_TAG) == event_id and run["status"] in (
                "SUCCESS",
                "FAILURE",
                "CANCELED",
            ):
                return run
        time.sleep(0.5)
    raise RuntimeError(f"no finished run for {event_id} within {timeout}s")


def measure(stack: Stack, secret: str, index: int) -> dict[str, float]:
    event = f"bench-{index}-{secrets.token_hex(4)}"
    response = post_signal(stack.intake_url, secret, event, source="benchmark")
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
    triggers = _hightouch_triggers(stack, accepted)
    if not sync_starts or not triggers:
        raise RuntimeError(f"run {run['runId']} started no sync or triggered no Hightouch run")
    return {
        "pickup": run["creationTime"] - accepted,
        "launch": run["startTime"] - run["creationTime"],
        "upstream": min(sync_starts) - run["startTime"],
        "trigger": triggers[0] - min(sync_starts),
        "total": triggers[0] - accepted,
        "last": triggers[-1] - accepted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=5, help="How many signals to send.")
    parser.add_argument("--rows", type=int, default=1000, help="Customers in the sandbox.")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    secret = "bench-" + secrets.token_hex(16)
    os.environ["ACTIVATION_WEBHOOK_SECRET"] = secret
    os.environ.setdefault("HIGHTOUCH_API_TOKEN", "bench-" + secrets.token_hex(8))
    columns = ("pickup", "launch", "upstream", "trigger", "total", "last")
    with tempfile.TemporaryDirectory() as folder:
        print(f"Starting sandbox ({args.rows} customers), intake and dagster dev ...", flush=True)
        with running_stack(Path(folder), "--phase-seconds", "0.05", "--rows", str(args.rows)) as s:
            print("signal " + "".join(f"{c:>10}" for c in columns) + "   (seconds)")
            results = []
            for index in range(1, args.signals + 1):
                figures = measure(s, secret, index)
                results.append(figures)
                print(f"{index:>6} " + "".join(f"{figures[c]:>10.2f}" for c in columns), flush=True)
            print(
                "median "
                + "".join(f"{statistics.median(r[c] for r in results):>10.2f}" for c in columns)
            )
    print(
        "pickup = sensor interval + daemon loop; launch = run worker start and code location "
        "load; upstream = dbt build, tests and guards; trigger = gate and Hightouch API call."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
