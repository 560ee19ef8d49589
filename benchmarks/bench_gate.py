"""How long the quality gate and the guard checks take, on the sandbox.

Runs the `activate` job once on the sandbox (N customers), then times, per destination:
- `gate_refusals`: reading every upstream blocking check's latest result from the instance;
- `measure` + `record_synced_snapshot`: the guard's warehouse queries on the mart;
- `fingerprint`: the gate's one-pass hash of a mart (what each check on a mart records and the gate
  recomputes before a trigger), on DuckDB marts of 100,000 and 1,000,000 rows shaped like each
  destination's mart (its primary key and mapped columns).

    .venv/bin/python benchmarks/bench_gate.py --rows 100000 --repeat 10
    .venv/bin/python benchmarks/bench_gate.py --fingerprint-only
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
    parser.add_argument(
        "--fingerprint-rows",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000],
        help="mart sizes the fingerprint is timed on",
    )
    parser.add_argument(
        "--fingerprint-only", action="store_true", help="time the fingerprint only (no sandbox)"
    )
    args = parser.parse_args()
    bench_fingerprint(args.fingerprint_rows, min(args.repeat, 5))
    if args.fingerprint_only:
        return

    from activation.core.gate import gate_refusals
    from activation.core.guards import measure, record_synced_snapshot, warehouse_connection
    from activation.lib.destinations import load_destinations
    from activation.tooling.demo import prepare_code_location, run_chain, sandbox_environment

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        phase = ("--phase-seconds", "0.05", "--rows", str(args.rows))
        with sandbox_environment(data, *phase), dg.instance_for_test(temp_dir=folder) as instance:
            prepare_code_location()
            started = time.perf_counter()
            result = run_chain(instance, console_log_level="ERROR")
            print(
                f"activate job, {args.rows} customers: {time.perf_counter() - started:.1f} s, "
                f"success={result.success}"
            )
            from activation.definitions import build_definitions

            quality_gate = build_definitions().resources["quality_gate"]
            print(
                f"{'destination':<22}{'checks':>7}{'gate ms':>10}{'guard ms':>10}"
                f"{'snapshot ms':>13}{'mart rows':>11}"
            )
            for destination in load_destinations():
                checks = sum(len(c) for c in quality_gate.checks_for(destination.key).values())
                gate, guard, snapshot = [], [], []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    assert gate_refusals(instance, quality_gate, destination) == []
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


def bench_fingerprint(sizes: list[int], repeat: int) -> None:
    """Time `fingerprint` on a DuckDB mart of each size, per destination shape."""
    import duckdb

    from activation.core.guards import fingerprint, warehouse_connection
    from activation.lib.destinations import load_destinations

    print(f"{'destination':<22}{'mart rows':>11}{'fingerprint ms':>16}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "warehouse.duckdb"
        for destination in load_destinations():
            columns = (destination.primary_key, *destination.mapped_columns)
            for rows in sizes:
                # Distinct values per column and row, so the hash input is as wide as a real
                # mart's; 1 row in 50 has a null to exercise the null marker.
                select = ", ".join(
                    f"CASE WHEN range % 50 = {i} THEN NULL ELSE '{c}-' || range END AS {c}"
                    if i
                    else f"'{c}-' || range AS {c}"
                    for i, c in enumerate(columns)
                )
                with duckdb.connect(str(path)) as connection:
                    connection.execute("CREATE SCHEMA IF NOT EXISTS marts")
                    connection.execute(
                        f"CREATE OR REPLACE TABLE marts.{destination.mart} AS "
                        f"SELECT {select} FROM range({rows})"
                    )
                timings = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    with warehouse_connection(path, read_only=True) as session:
                        judged = fingerprint(session, destination)
                    timings.append(time.perf_counter() - t)
                assert judged.rows == rows
                print(f"{destination.key:<22}{rows:>11}{statistics.median(timings) * 1000:>16.1f}")
    print(f"(medians of {repeat} runs each, connection included)")


if __name__ == "__main__":
    main()
