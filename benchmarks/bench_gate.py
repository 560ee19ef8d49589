"""How long the quality gate and the guard checks take, on the sandbox.

Runs the `activate` job once on the sandbox (N customers), then times, per destination:
- `gate_refusals`: reading every upstream blocking check's latest result from the instance;
- `measure` + `record_synced_snapshot`: the guard's warehouse queries on the mart.

    .venv/bin/python benchmarks/bench_gate.py --rows 100000 --repeat 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="customers the sandbox lands")
    parser.add_argument("--repeat", type=int, default=10, help="timings per destination")
    args = parser.parse_args()

    from activation.activate import sync_asset_key
    from activation.demo import prepare_dbt_manifest, run_chain, sandbox_environment
    from activation.destinations import load_destinations
    from activation.gate import gate_refusals, upstream_blocking_checks
    from activation.guards import measure, record_synced_snapshot, warehouse_connection

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        phase = ("--phase-seconds", "0.05", "--rows", str(args.rows))
        with sandbox_environment(data, *phase), dg.instance_for_test(temp_dir=folder) as instance:
            prepare_dbt_manifest()
            started = time.perf_counter()
            result = run_chain(instance, console_log_level="ERROR")
            print(
                f"activate job, {args.rows} customers: {time.perf_counter() - started:.1f} s, "
                f"success={result.success}"
            )
            from activation.definitions import build_definitions

            repository = build_definitions().get_repository_def()
            print(
                f"{'destination':<22}{'checks':>7}{'gate ms':>10}{'guard ms':>10}"
                f"{'snapshot ms':>13}{'mart rows':>11}"
            )
            for destination in load_destinations():
                key = sync_asset_key(destination)
                checks = sum(len(c) for c in upstream_blocking_checks(repository, key).values())
                gate, guard, snapshot = [], [], []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    assert gate_refusals(instance, repository, destination, key) == []
                    gate.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    with warehouse_connection(read_only=True) as session:
                        counts = measure(session, destination)
                    guard.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    record_synced_snapshot(destination)
                    snapshot.append(time.perf_counter() - t)
                print(
                    f"{destination.key:<22}{checks:>7}"
                    f"{statistics.median(gate) * 1000:>10.1f}"
                    f"{statistics.median(guard) * 1000:>10.1f}"
                    f"{statistics.median(snapshot) * 1000:>13.1f}{counts.rows:>11}"
                )
            print("(medians of", args.repeat, "runs each)")


if __name__ == "__main__":
    main()
