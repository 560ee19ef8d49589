"""How long one landing takes at 10k, 100k and 1M customers (not a test: 1M is too slow for CI).

Run: `.venv/bin/python benchmarks/bench_generator.py [ROWS ...]`
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from activation.sandbox.generator import Scenario, land_streams

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


def main(sizes: list[int]) -> None:
    extracted_at = datetime(2026, 1, 1, 12, 0, 0)
    with tempfile.TemporaryDirectory() as folder:
        for rows in sizes:
            started = time.perf_counter()
            written = land_streams(Path(folder), rows, Scenario(), extracted_at)
            seconds = time.perf_counter() - started
            counts = ", ".join(f"{stream}={count}" for stream, count in written.items())
            print(f"{rows:>9} customers: {seconds:6.2f} s ({counts})")


if __name__ == "__main__":
    main([int(argument) for argument in sys.argv[1:]] or list(DEFAULT_SIZES))
