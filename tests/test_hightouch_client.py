"""The Hightouch client's own rules, at the HTTP edge (httpx.MockTransport plays Hightouch)."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from activation.hightouch import (
    HightouchClient,
    HightouchError,
    PollSchedule,
    RowCounts,
    retry_delay,
)

TOKEN = "secret-token-9c41"


def _client(handler, **kwargs) -> HightouchClient:
    return HightouchClient(
        "https://ht.test/api/v1",
        TOKEN,
        transport=httpx.MockTransport(handler),
        sleep=lambda seconds: None,
        **kwargs,
    )


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {})


def test_retry_after_seconds_and_http_date_are_honoured() -> None:
    assert retry_delay(1, _response(429, {"Retry-After": "7"}), base=0.5, cap=30) == 7
    soon = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3 <= retry_delay(1, _response(429, {"Retry-After": soon}), base=0.5, cap=30) <= 5
    assert retry_delay(1, _response(429, {"Retry-After": "600"}), base=0.5, cap=30) == 30


def test_backoff_without_retry_after_grows_and_stays_capped() -> None:
    for attempt in range(1, 10):
        delay = retry_delay(attempt, _response(503), base=0.5, cap=4)
        assert 0 <= delay <= min(4, 0.5 * 2 ** (attempt - 1))


def _trigger_handler(trigger_answers, runs: list[dict]):
    """Plays Hightouch: scripted answers to triggers, the runs list as given."""
    posts = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(request)
            return next(trigger_answers)
        return httpx.Response(200, json={"data": runs})

    return handler, posts


def test_server_errors_are_retried_then_the_answer_is_used() -> None:
    answers = iter([_response(503), _response(429), httpx.Response(200, json={"id": "77"})])
    handler, posts = _trigger_handler(answers, runs=[])
    client = _client(handler)
    assert client.trigger("101") == "77"
    # Before each new POST the client looked for a run the failed attempt might have started.
    assert len(posts) == 3
    assert client.request_count == 5


def test_a_trigger_whose_answer_was_lost_is_adopted_not_repeated() -> None:
    started = datetime.now(UTC).isoformat()
    runs = [{"id": "88", "status": "queued", "createdAt": started}]
    handler, posts = _trigger_handler(iter([_response(502)]), runs=runs)
    assert _client(handler).trigger("101") == "88"
    assert len(posts) == 1


def test_an_older_run_in_the_list_is_not_mistaken_for_ours() -> None:
    old = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    runs = [{"id": "12", "status": "success", "createdAt": old}]
    answers = iter([_response(504), httpx.Response(200, json={"id": "90"})])
    handler, posts = _trigger_handler(answers, runs=runs)
    assert _client(handler).trigger("101") == "90"
    assert len(posts) == 2


def test_polling_lands_near_the_estimated_end_of_a_progressing_run() -> None:
    # A 30 s run whose completion ratio grows linearly: reads are few and the end is seen
    # within a second of it.
    schedule = PollSchedule(0.5, 30)
    now, reads = 0.0, 0
    while True:
        reads += 1
        ratio = min(now / 30, 1.0)
        if ratio >= 1:
            break
        now += schedule.next_delay(now, ratio)
    assert now - 30 <= 1.0
    assert reads <= 10


def test_polling_without_progress_backs_off_to_the_cap() -> None:
    schedule = PollSchedule(0.5, 8)
    delays = [schedule.next_delay(float(i), 0.0) for i in range(8)]
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert max(delays) == 8


@pytest.mark.parametrize(
    ("status", "hint"),
    [(401, "HIGHTOUCH_API_TOKEN"), (404, "sync id or slug"), (422, "configuration")],
)
def test_client_errors_fail_at_once_without_the_token(status: int, hint: str) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"message": "nope"})

    with pytest.raises(HightouchError) as error:
        _client(handler).trigger("101")
    assert len(calls) == 1
    assert f"HTTP {status}" in str(error.value) and "sync 101" in str(error.value)
    assert hint in str(error.value)
    assert TOKEN not in str(error.value)
    assert calls[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_retries_are_bounded() -> None:
    answers = iter([_response(502)] * 3)
    handler, posts = _trigger_handler(answers, runs=[])
    client = _client(handler, max_retries=2)
    with pytest.raises(HightouchError, match="gave up after 3 attempts.*no run of the sync"):
        client.trigger("101")
    assert len(posts) == 3


def test_a_trigger_is_never_repeated_while_its_outcome_is_unknown() -> None:
    # Hightouch answers nothing usable: the client cannot tell whether the first POST started a
    # run, so it stops rather than risk a second sync of the same rows.
    posts = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request) if request.method == "POST" else None
        return _response(502)

    with pytest.raises(HightouchError, match="list runs of sync 101"):
        _client(handler, max_retries=2).trigger("101")
    assert len(posts) == 1


def test_run_parsing_tolerates_unknown_and_missing_fields() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "data": [
                    {
                        "id": "5",
                        "status": "success",
                        "plannedRows": {"addedCount": 3, "changedCount": 1},
                        "brandNewField": {"x": 1},
                    }
                ]
            },
        )

    run = _client(handler).get_run("101", "5")
    assert run is not None and run.finished
    assert run.planned == RowCounts(added=3, changed=1, removed=0)
    assert run.failed == RowCounts()


def test_an_empty_runs_list_means_not_visible_yet() -> None:
    answers = iter(
        [
            httpx.Response(200, json={"data": []}),
            httpx.Response(200, json={"data": [{"id": "5", "status": "mystery"}]}),
            httpx.Response(200, json={"data": [{"id": "5", "status": "success"}]}),
        ]
    )
    run = _client(lambda request: next(answers)).wait_for_run("101", "5", poll_interval=0)
    assert run.status == "success"


def test_a_failed_run_raises_with_its_error_and_link() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"data": [{"id": "5", "status": "failed", "error": "NON_UNIQUE_PRIMARY_KEY"}]}
        )

    with pytest.raises(HightouchError, match="ended failed: NON_UNIQUE_PRIMARY_KEY") as error:
        _client(handler).wait_for_run("101", "5", poll_interval=0)
    assert "/syncs/101/runs/5" in str(error.value)


def test_the_request_budget_spaces_requests() -> None:
    slept: list[float] = []
    client = HightouchClient(
        "https://ht.test/api/v1",
        TOKEN,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"data": []})),
        sleep=lambda seconds: (slept.append(seconds), time.sleep(seconds)),
        max_requests_per_second=20,
    )
    started = time.monotonic()
    for _ in range(6):
        client.recent_runs("101")
    # Six requests at 20 per second need at least five gaps of 50 ms.
    assert time.monotonic() - started >= 0.25
    assert client.request_count == 6
