"""How late a silent Hightouch run's end is noticed, and at how many requests.

Not a test: it prints figures. A silent run reports no progress (`completionRatio` 0) until it
ends, as a run still querying a large model does. The far edge is faked: an
`httpx.MockTransport` plays Hightouch's runs endpoint and a virtual clock plays time (the client's
`time` is patched in this process only), so runs of 5 s, 30 s and 300 s take no real time and the
figures are exact (request latency is zero here; add the API's latency to each delay).

The sync's five previous runs took 0.95, 1.0, 1.05, 0.98 and 1.02 times the nominal length; the
run followed lasts 0.95x, 1.0x or 1.05x of it (the worst of the three is printed). Followed by:

- before: `HightouchClient.wait_for_run` without an expected end (the doubling poll, cap 30 s,
  which is what it did before it read the sync's history);
- now: `HightouchClient.wait_for_run` as it is (default settings);
- fixed 3 s: a read every 3 s, as dagster-hightouch's `sync_and_poll` does.

Requests are those spent waiting (the trigger is the same one request for every client).

Run: `.venv/bin/python benchmarks/bench_poll.py [--seconds 5,30,300]`
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from unittest import mock

import httpx

from activation.lib import hightouch
from activation.lib.hightouch import HightouchClient

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
HISTORY_FACTORS = (0.95, 1.0, 1.05, 0.98, 1.02)
RUN_FACTORS = (0.95, 1.0, 1.05)
FIXED_POLL_SECONDS = 3.0


def _stamp(seconds: float) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


class FakeHightouch:
    """One silent run started at virtual 0 s, lasting `duration`, and the sync's history."""

    def __init__(self, duration: float, history: list[float]) -> None:
        self.duration, self.history, self.now, self.requests = duration, history, 0.0, 0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def _ours(self) -> dict:
        run = {"id": "7", "createdAt": _stamp(0), "startedAt": _stamp(0), "completionRatio": 0}
        if self.now >= self.duration:
            return {**run, "status": "success", "finishedAt": _stamp(self.duration)}
        return {**run, "status": "querying"}

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if "runId" in request.url.params:
            return httpx.Response(200, json={"data": [self._ours()]})
        older = [
            {
                "id": f"old{n}",
                "status": "success",
                "startedAt": _stamp(-3600.0 * (n + 1)),
                "finishedAt": _stamp(-3600.0 * (n + 1) + d),
            }
            for n, d in enumerate(self.history)
        ]
        return httpx.Response(200, json={"data": [self._ours(), *older]})


def follow_with_client(fake: FakeHightouch, *, estimate: bool) -> None:
    clock = SimpleNamespace(
        monotonic=lambda: fake.now, time=lambda: EPOCH.timestamp() + fake.now, sleep=fake.sleep
    )
    patches = [mock.patch.object(hightouch, "time", clock)]
    if not estimate:
        patches.append(mock.patch.object(hightouch, "expected_end", lambda *args: None))
    for patch in patches:
        patch.start()
    try:
        client = HightouchClient(
            "https://ht.test/api/v1",
            "token",
            transport=httpx.MockTransport(fake.handle),
            sleep=fake.sleep,
        )
        client.wait_for_run("101", "7")
    finally:
        for patch in patches:
            patch.stop()


def follow_fixed_poll(fake: FakeHightouch) -> None:
    with httpx.Client(transport=httpx.MockTransport(fake.handle)) as http:
        while True:
            answer = http.get("https://ht.test/api/v1/syncs/101/runs", params={"runId": "7"})
            if answer.json()["data"][0]["status"] == "success":
                return
            fake.sleep(FIXED_POLL_SECONDS)


CLIENTS: dict[str, Callable[[FakeHightouch], None]] = {
    "before (doubling, cap 30 s)": lambda fake: follow_with_client(fake, estimate=False),
    "now (expected end window)": lambda fake: follow_with_client(fake, estimate=True),
    "fixed 3 s (dagster-hightouch)": follow_fixed_poll,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", default="5,30,300", help="Nominal run lengths, comma-separated."
    )
    args = parser.parse_args()
    lengths = [float(s) for s in args.seconds.split(",") if s.strip()]
    header = f"{'run s':>6}  {'client':<30} {'worst notice delay s':>21} {'worst requests':>15}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for nominal in lengths:
        history = [nominal * f for f in HISTORY_FACTORS]
        worst: dict[str, tuple[float, int]] = {}
        for name, follow in CLIENTS.items():
            delays, counts = [], []
            for factor in RUN_FACTORS:
                fake = FakeHightouch(nominal * factor, history)
                follow(fake)
                delays.append(fake.now - fake.duration)
                counts.append(fake.requests)
            worst[name] = (max(delays), max(counts))
            print(f"{nominal:>6g}  {name:<30} {max(delays):>21.2f} {max(counts):>15}")
        now, fixed = worst["now (expected end window)"], worst["fixed 3 s (dagster-hightouch)"]
        met = now[0] <= 1.0 and now[1] <= fixed[1]
        verdicts.append(
            f"{nominal:g} s run: notice within 1 s at no more requests than a fixed 3 s poll: "
            f"{'met' if met else 'NOT met'} ({now[0]:.2f} s, {now[1]} vs {fixed[1]} requests)"
        )
    print()
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
