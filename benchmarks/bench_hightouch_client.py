"""How fast each Hightouch client notices a run ending, and how many requests it spends on it.

The same Hightouch run of a fixed duration (an injected `running_seconds` fault on the sandbox)
is followed by:

- `activation.lib.hightouch.HightouchClient` (`trigger` then `wait_for_run`, default settings);
- dagster-hightouch's `ConfigurableHightouchResource.sync_and_poll` (default settings).

For each it prints the delay between the run finishing (the sandbox's `finishedAt`) and the
client returning, and the HTTP requests it made (counted by the sandbox, `GET /sandbox/requests`).
Two kinds of run are timed: one whose completion ratio rises steadily ("progress"), and one that
reports no progress until it ends ("silent"), as a run still querying a large model does.

dagster-hightouch's base URL is a module constant (`HIGHTOUCH_API_BASE`), not a setting; this
script patches that constant for its own process only, to point the resource at the sandbox.

Run: `.venv/bin/pip install -c constraints.txt -e '.[bench]'` once, then
`.venv/bin/python benchmarks/bench_hightouch_client.py [--seconds 30] [--kinds progress,silent]`
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from unittest import mock

import duckdb

from activation.lib.destinations import Destination, load_destinations
from activation.lib.environment import SANDBOX_HIGHTOUCH_PREFIX
from activation.lib.hightouch import HightouchClient
from activation.sandbox.launcher import SandboxProcess, start_sandbox

TOKEN = "bench-token"
DESTINATION_KEY = "salesforce_accounts"
MART_ROWS = 200
KINDS = {"progress": True, "silent": False}
TARGET_NOTICE_SECONDS = 1.0


@dataclass(frozen=True)
class Result:
    client: str
    kind: str
    run_seconds: float
    notice_delay: float
    requests: int
    run_reads: int
    status: str


def build_mart(data_dir: Path, destination: Destination, rows: int) -> None:
    """A small mart for the sync to read: key and mapped columns as text, emails valid."""
    columns = [
        f"'person' || i || '@example.com' AS {c}" if c == "email" else f"'v' || i AS {c}"
        for c in destination.mapped_columns
    ]
    select = ", ".join([f"'K' || lpad(i::VARCHAR, 6, '0') AS {destination.primary_key}", *columns])
    with duckdb.connect(str(data_dir / "warehouse.duckdb")) as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS marts")
        connection.execute(
            f"CREATE OR REPLACE TABLE marts.{destination.mart} AS "
            f"SELECT {select} FROM range({rows}) AS t(i)"
        )


def follow_with_product_client(sandbox: SandboxProcess, sync_id: str) -> None:
    with HightouchClient(sandbox.url + SANDBOX_HIGHTOUCH_PREFIX, TOKEN) as client:
        client.wait_for_run(sync_id, client.trigger(sync_id))


def follow_with_dagster_hightouch(sandbox: SandboxProcess, sync_id: str) -> None:
    from dagster_hightouch import resources
    from dagster_hightouch.resources import ConfigurableHightouchResource

    base = sandbox.url + SANDBOX_HIGHTOUCH_PREFIX + "/"  # urljoin needs the trailing slash
    with mock.patch.object(resources, "HIGHTOUCH_API_BASE", base):
        ConfigurableHightouchResource(api_key=TOKEN).sync_and_poll(sync_id)


CLIENTS: dict[str, Callable[[SandboxProcess, str], None]] = {
    "activation HightouchClient": follow_with_product_client,
    "dagster-hightouch 0.29.27": follow_with_dagster_hightouch,
}


def measure(
    sandbox: SandboxProcess,
    sync_id: str,
    name: str,
    follow: Callable[[SandboxProcess, str], None],
    kind: str,
    seconds: float,
) -> Result:
    with sandbox.client() as http:
        http.post("/sandbox/reset").raise_for_status()  # runs, faults, request counts
    sandbox.inject_fault(
        kind="run", sync_id=sync_id, running_seconds=seconds, report_progress=KINDS[kind]
    )
    follow(sandbox, sync_id)
    noticed = time.time()
    counts = sandbox.request_counts()
    requests = sum(n for path, n in counts.items() if SANDBOX_HIGHTOUCH_PREFIX in path)
    run_reads = sum(n for path, n in counts.items() if path.endswith(f"/syncs/{sync_id}/runs"))
    with sandbox.client(TOKEN) as http:
        response = http.get(f"{SANDBOX_HIGHTOUCH_PREFIX}/syncs/{sync_id}/runs", params={"limit": 1})
        response.raise_for_status()
        (run,) = response.json()["data"]
    started = datetime.fromisoformat(run["startedAt"]).timestamp()
    finished = datetime.fromisoformat(run["finishedAt"]).timestamp()
    return Result(
        name, kind, finished - started, noticed - finished, requests, run_reads, run["status"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="How long the run lasts.")
    parser.add_argument(
        "--kinds",
        default="progress,silent",
        help="Comma-separated: progress (completion ratio rises), silent (no progress).",
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown --kinds {', '.join(unknown)} (known: {', '.join(KINDS)})")
    logging.disable(logging.WARNING)  # both clients log every poll; only the table matters
    destination = next(d for d in load_destinations() if d.key == DESTINATION_KEY)
    sync_id = str(destination.sync_id)
    print(
        f"Hightouch run of {args.seconds:g} s on the sandbox (sync {sync_id}, {MART_ROWS} rows).\n"
        "dagster-hightouch cannot be given a base URL: this script patches its module constant "
        "HIGHTOUCH_API_BASE to the sandbox's (in this process only).\n",
        flush=True,
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        sandbox = start_sandbox(data_dir, "--phase-seconds", "0.05", "--hightouch-token", TOKEN)
        try:
            build_mart(data_dir, destination, MART_ROWS)
            for kind in kinds:
                for name, follow in CLIENTS.items():
                    results.append(measure(sandbox, sync_id, name, follow, kind, args.seconds))
                    print(f"  measured: {name}, {kind} run", file=sys.stderr, flush=True)
        finally:
            sandbox.stop()
    header = (
        f"{'client':<28} {'run':<9} {'run s':>7} {'notice delay s':>15} {'requests':>9} "
        f"{'of which run reads':>19}  final status"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.client:<28} {r.kind:<9} {r.run_seconds:>7.2f} {r.notice_delay:>15.3f} "
            f"{r.requests:>9} {r.run_reads:>19}  {r.status}"
        )
    print()
    for kind in kinds:
        ours, theirs = (
            next(r for r in results if r.kind == kind and r.client == c) for c in CLIENTS
        )
        met = ours.notice_delay <= TARGET_NOTICE_SECONDS and ours.requests * 3 <= theirs.requests
        print(
            f"{kind} run, target (notice within {TARGET_NOTICE_SECONDS:g} s with at most a third "
            f"of dagster-hightouch's requests): {'met' if met else 'NOT met'} "
            f"({ours.notice_delay:.2f} s, {ours.requests} vs {theirs.requests} requests)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
