"""When the client reads a run that reports no progress: near the end its sync's recent runs
predict, sparse before it (httpx.MockTransport plays Hightouch, a fake clock plays time)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from unittest import mock

import httpx
import pytest

from activation.lib import hightouch
from activation.lib.hightouch import (
    WINDOW_STEP,
    HightouchClient,
    PollSchedule,
    SyncRun,
    expected_end,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _stamp(seconds: float) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _run(run_id: str, status: str, started: float, finished: float | None = None) -> dict:
    answer = {"id": run_id, "status": status, "createdAt": _stamp(started)}
    answer["startedAt"] = _stamp(started)
    if finished is not None:
        answer["finishedAt"] = _stamp(finished)
    return answer


def _history(durations: list[float]) -> list[dict]:
    return [
        _run(f"old{n}", "success", -1000.0 * (n + 1), -1000.0 * (n + 1) + d)
        for n, d in enumerate(durations)
    ]


def _wait_on_a_fake_clock(
    duration: float, answer: Callable[[float, httpx.Request], list[dict]]
) -> tuple[float, int]:
    """`wait_for_run` for run "7" with Hightouch's answers from `answer(now, request)` and time
    played by a fake clock; how long after `duration` the end was noticed, and the requests."""
    clock = SimpleNamespace(now=0.0)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": answer(clock.now, request)})

    def sleep(seconds: float) -> None:
        clock.now += seconds

    fake_time = SimpleNamespace(
        monotonic=lambda: clock.now, time=lambda: EPOCH.timestamp() + clock.now, sleep=sleep
    )
    with mock.patch.object(hightouch, "time", fake_time):
        client = HightouchClient(
            "https://ht.test/api/v1", "t", transport=httpx.MockTransport(handler), sleep=sleep
        )
        run = client.wait_for_run("101", "7")
    assert run.status == "success"
    return clock.now - duration, client.request_count


def follow(duration: float, durations: list[float]) -> tuple[float, int]:
    """Wait for a silent run of `duration` s started at 0 s; the notice delay and requests."""

    def answer(now: float, request: httpx.Request) -> list[dict]:
        ours = (
            _run("7", "success", 0.0, duration)
            if now >= duration
            else {**_run("7", "querying", 0.0), "completionRatio": 0}
        )
        if "runId" in request.url.params:
            return [ours]
        return [ours, *_history(durations)]

    return _wait_on_a_fake_clock(duration, answer)


def fixed_poll_requests(duration: float, interval: float = 3.0) -> int:
    """Reads a fixed poll spends on the same run (dagster-hightouch: every 3 s)."""
    return math.ceil(duration / interval) + 1


@pytest.mark.parametrize("duration", [5.0, 30.0, 300.0], ids=["5s", "30s", "300s"])
def test_a_silent_run_ending_as_its_predecessors_is_noticed_within_a_second(
    duration: float,
) -> None:
    jittered = [duration * f for f in (0.95, 1.0, 1.05, 0.98, 1.02)]
    delay, requests = follow(duration, jittered)
    assert 0 <= delay <= 1.0
    assert requests <= fixed_poll_requests(duration)


def test_a_run_longer_than_every_predecessor_backs_off_to_the_cap() -> None:
    delay, requests = follow(300.0, [30.0] * 5)
    assert delay <= 30.0
    assert requests < fixed_poll_requests(300.0)


def test_without_history_the_delay_doubles_as_before() -> None:
    delay, requests = follow(20.0, [])
    assert requests <= 8


def test_the_window_is_measured_from_the_run_start_and_skips_other_runs() -> None:
    runs = [
        SyncRun.from_api("101", r)
        for r in [
            _run("7", "processing", 0.0),
            _run("6", "success", -100.0, -90.0),
            _run("5", "failed", -200.0, -100.0),  # a failed run's length says nothing
            _run("4", "success", -300.0, -288.0),
        ]
    ]
    assert expected_end(runs[0], runs, EPOCH.timestamp() + 4.0) == (6.0, 8.0)
    # A run without a start time, or a sync without a successful run, gives no estimate.
    assert expected_end(runs[0], runs[:1], EPOCH.timestamp()) is None


def test_the_schedule_lands_after_the_window_opens_then_steps_through_it() -> None:
    schedule = PollSchedule(0.5, 30)
    schedule.expect_end(100.0, 104.0)
    assert schedule.next_delay(0.0, 0.0) == 30.0  # sparse before the window
    assert schedule.next_delay(90.0, 0.0) == pytest.approx(10.2)
    assert schedule.next_delay(100.2, 0.0) == WINDOW_STEP
    late = [schedule.next_delay(105.0 + n, 0.0) for n in range(12)]
    assert late[0] == WINDOW_STEP and late == sorted(late) and max(late) == 30.0


def follow_progressing(
    duration: float, skew: float = 0.0, *, with_start: bool = True
) -> tuple[float, int]:
    """Wait for a run of `duration` s started at 0 s whose completion ratio grows steadily;
    Hightouch's clock is `skew` s ahead of ours; `with_start=False` leaves both start times
    (`startedAt`, `createdAt`) out. The notice delay and requests."""

    def answer(now: float, request: httpx.Request) -> list[dict]:
        if now >= duration:
            ours = _run("7", "success", skew, skew + duration)
        else:
            ours = {**_run("7", "processing", skew), "completionRatio": now / duration}
        if not with_start:
            ours.pop("startedAt")
            ours.pop("createdAt")
        return [ours]

    return _wait_on_a_fake_clock(duration, answer)


def test_a_short_progressing_run_is_read_just_after_the_end_its_pace_since_start_gives() -> None:
    """A 0.7 s run is 71% done at the 0.5 s read: read just after its projected end, not a
    second later for a rate reading (which noticed it 0.8 s late)."""
    delay, requests = follow_progressing(0.7)
    assert 0 <= delay <= 0.3
    assert requests == 3  # the first read, the one that saw progress, the one that saw the end


@pytest.mark.parametrize("duration", [5.0, 30.0, 300.0], ids=["5s", "30s", "300s"])
def test_longer_progressing_runs_cost_no_more_reads_for_the_start_time(duration: float) -> None:
    delay, requests = follow_progressing(duration)
    without_delay, without_requests = follow_progressing(duration, with_start=False)
    assert 0 <= delay <= 1.0 and 0 <= without_delay <= 1.0
    assert requests <= without_requests


@pytest.mark.parametrize("skew", [-5.0, 5.0], ids=["hightouch-behind", "hightouch-ahead"])
def test_a_skewed_clock_costs_at_most_the_early_end(skew: float) -> None:
    """startedAt on another clock: behind, the pace looks slow and the second reading comes as
    before; ahead, the start looks later than it was (or in the future) and the read at worst
    comes early, then the two readings take over."""
    delay, requests = follow_progressing(0.7, skew=skew)
    assert 0 <= delay <= 0.8
    assert requests <= 4
