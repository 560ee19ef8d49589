"""The Hightouch client's own rules, at the HTTP edge (httpx.MockTransport plays Hightouch)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx

from activation.lib.hightouch import (
    HightouchClient,
    HightouchError,
    HightouchRequestRefused,
    HightouchUnavailable,
    PollSchedule,
    RequestBudget,
    RowCounts,
    SyncRun,
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


def test_a_client_s_first_requests_go_at_once_then_the_budget_spaces_them() -> None:
    """A sync step's client (4 requests per second, the demo's share) reads the sync, its runs
    and triggers without waiting; past its burst the budget spaces requests again."""
    slept: list[float] = []
    client = HightouchClient(
        "https://ht.test/api/v1",
        TOKEN,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"data": []})),
        sleep=slept.append,  # passes no time: each wait shows in full
        max_requests_per_second=4,
    )
    burst = RequestBudget.for_share(4)
    assert burst is not None and burst.burst == 4
    for _ in range(4):
        client.recent_runs("101")
    assert slept == []
    client.recent_runs("101")
    client.recent_runs("101")
    # One interval past the burst, then two (the fake sleep let no time pass in between).
    assert len(slept) == 2
    assert 0.2 < slept[0] <= burst.interval < slept[1] <= 2 * burst.interval
    assert client.request_count == 6


def test_the_first_read_of_a_run_just_triggered_waits_half_a_poll_interval() -> None:
    """The run the client triggered is first read half a poll interval after the trigger; a run
    it did not trigger (re-attached after a crash) is read at once."""
    slept: list[float] = []
    done = {"id": "5", "status": "success", "completionRatio": 1.0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"id": "5"})
        return httpx.Response(200, json={"data": [done]})

    client = HightouchClient(
        "https://ht.test/api/v1",
        TOKEN,
        transport=httpx.MockTransport(handler),
        sleep=slept.append,
        poll_interval=0.5,
    )
    run_id = client.trigger("101")
    assert client.wait_for_run("101", run_id).status == "success"
    assert len(slept) == 1 and 0.2 < slept[0] <= 0.25
    slept.clear()
    assert [run.id for run in client.first_read("202", "5")] == ["5"]  # not triggered here
    assert [run.id for run in client.first_read("101", run_id)] == ["5"]  # read before
    assert slept == []


@pytest.mark.parametrize("share", [50.0, 4.0, 0.5])
def test_the_budget_never_exceeds_its_share_of_any_window(share: float) -> None:
    """The bound Hightouch enforces (requests per window), checked on every window of a real
    burst-then-steady sequence: a one-second window keeps the test short; the arithmetic is the
    same at ten."""
    budget = RequestBudget.for_share(share, window=1.0)
    assert budget is not None
    sent: list[float] = []
    for _ in range(int(share * 2.5) + budget.burst):
        budget.take(time.sleep)
        sent.append(time.monotonic())
    most_in_a_window = max(
        sum(1 for t in sent if start <= t < start + budget.window) for start in sent
    )
    assert most_in_a_window <= share * budget.window + 1
    # And it is no stricter than it needs to be: the burst went at once.
    assert sent[budget.burst - 1] - sent[0] < 0.05 * budget.window


def test_no_share_means_no_budget() -> None:
    assert RequestBudget.for_share(0.0) is None


# -- odd answers: retried like a server error, never a crash ---------------------------------------
# sync_step turns a HightouchError that is not a refusal, a poll timeout or a failed run into a
# retryable dg.Failure; a ValueError or AttributeError would fail the step as a bug instead.

BASE = "https://ht.test/api/v1"
GOOD_RUN = {"id": "5", "status": "success", "completionRatio": 1.0}


@pytest.fixture
def hightouch() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def _respx_client(slept: list[float] | None = None, **kwargs) -> HightouchClient:
    record = slept.append if slept is not None else (lambda seconds: None)
    return HightouchClient(BASE, TOKEN, sleep=record, backoff_base=0.5, **kwargs)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("1.5", 1.5), (" 2 ", 2.0), ("0", 0.0)],
    ids=["fraction", "padded", "zero"],
)
def test_numeric_retry_after_is_honoured(header: str, expected: float) -> None:
    assert retry_delay(1, _response(429, {"Retry-After": header}), base=0.5, cap=30) == expected


@pytest.mark.parametrize(
    "header",
    ["-1", "soon", "", "   ", "nan", "inf", "1e400", "Mon, 99 Foo 2026 99:99:99 GMT"],
    ids=["negative", "word", "empty", "blank", "nan", "inf", "overflow", "bad-date"],
)
def test_unusable_retry_after_falls_back_to_the_backoff(header: str) -> None:
    for attempt in (1, 3):
        delay = retry_delay(attempt, _response(429, {"Retry-After": header}), base=0.5, cap=30)
        assert 0 <= delay <= 0.5 * 2 ** (attempt - 1)


@pytest.mark.parametrize("header", ["1.5", "-1", "soon", ""], ids=str)
def test_a_throttled_call_with_an_odd_retry_after_is_retried(
    hightouch: respx.MockRouter, header: str
) -> None:
    hightouch.get("/syncs/101/runs").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": header}),
            httpx.Response(200, json={"data": [GOOD_RUN]}),
        ]
    )
    slept: list[float] = []
    runs = _respx_client(slept).recent_runs("101")
    assert [run.id for run in runs] == ["5"]
    assert len(slept) == 1
    assert slept[0] == 1.5 if header == "1.5" else 0 <= slept[0] <= 0.5


MALFORMED_RUN_ANSWERS = {
    "list-not-object": httpx.Response(200, json=[GOOD_RUN]),
    "data-is-text": httpx.Response(200, json={"data": "x"}),
    "no-data": httpx.Response(200, json={"runs": [GOOD_RUN]}),
    "item-not-object": httpx.Response(200, json={"data": ["5"]}),
    "run-without-id": httpx.Response(200, json={"data": [{"status": "processing"}]}),
    "run-id-null": httpx.Response(200, json={"data": [{"id": None, "status": "processing"}]}),
    "not-json": httpx.Response(200, text="<html>upstream hiccup</html>"),
    "empty-body": httpx.Response(200, content=b""),
    "ratio-text": httpx.Response(
        200, json={"data": [{"id": "5", "status": "processing", "completionRatio": "abc"}]}
    ),
    "ratio-object": httpx.Response(
        200, json={"data": [{"id": "5", "status": "processing", "completionRatio": {}}]}
    ),
    "counts-text": httpx.Response(
        200,
        json={"data": [{"id": "5", "status": "processing", "plannedRows": {"addedCount": "x"}}]},
    ),
    "counts-list": httpx.Response(
        200, json={"data": [{"id": "5", "status": "processing", "failedRows": [1]}]}
    ),
    "status-object": httpx.Response(200, json={"data": [{"id": "5", "status": {"x": 1}}]}),
    "created-number": httpx.Response(200, json={"data": [{"id": "5", "createdAt": 17}]}),
}


@pytest.mark.parametrize("answer", MALFORMED_RUN_ANSWERS.values(), ids=MALFORMED_RUN_ANSWERS)
def test_a_malformed_runs_answer_is_retried_then_the_good_one_used(
    hightouch: respx.MockRouter, answer: httpx.Response
) -> None:
    route = hightouch.get("/syncs/101/runs").mock(
        side_effect=[answer, httpx.Response(200, json={"data": [GOOD_RUN]})]
    )
    run = _respx_client().get_run("101", "5")
    assert run is not None and run.status == "success"
    assert route.call_count == 2
    route.side_effect = [answer, httpx.Response(200, json={"data": [GOOD_RUN]})]
    assert [run.id for run in _respx_client().recent_runs("101")] == ["5"]


@pytest.mark.parametrize("answer", MALFORMED_RUN_ANSWERS.values(), ids=MALFORMED_RUN_ANSWERS)
def test_a_runs_answer_that_stays_malformed_is_a_transient_hightouch_error(
    hightouch: respx.MockRouter, answer: httpx.Response
) -> None:
    route = hightouch.get("/syncs/101/runs").mock(return_value=answer)
    with pytest.raises(HightouchUnavailable, match="gave up after 3 attempts.*malformed") as error:
        _respx_client(max_retries=2).wait_for_run("101", "5", poll_interval=0, poll_timeout=2)
    assert route.call_count == 3
    assert not isinstance(error.value, HightouchRequestRefused)
    assert TOKEN not in str(error.value)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json=["77"]),
        httpx.Response(200, json={"status": "queued"}),
        httpx.Response(200, json={"id": None}),
        httpx.Response(200, json={"id": {}}),
        httpx.Response(200, json={"id": ""}),
        httpx.Response(200, text="OK"),
    ],
    ids=["list", "no-id", "id-null", "id-object", "id-empty", "not-json"],
)
def test_a_malformed_trigger_answer_adopts_or_retries_without_crashing(
    hightouch: respx.MockRouter, answer: httpx.Response
) -> None:
    trigger = hightouch.post("/syncs/101/trigger").mock(
        side_effect=[answer, httpx.Response(200, json={"id": "77"})]
    )
    hightouch.get("/syncs/101/runs").mock(return_value=httpx.Response(200, json={"data": []}))
    assert _respx_client().trigger("101") == "77"
    assert trigger.call_count == 2

    # The malformed 200 may well have started a run: it is adopted, not triggered again.
    started = datetime.now(UTC).isoformat()
    trigger.side_effect = [answer]
    trigger.reset()
    hightouch.get("/syncs/101/runs").mock(
        return_value=httpx.Response(
            200,
            json={"data": [{"id": "88", "status": "queued", "createdAt": started}]},
        )
    )
    assert _respx_client().trigger("101") == "88"
    assert trigger.call_count == 1


def test_a_malformed_list_while_adopting_is_still_a_transient_error(
    hightouch: respx.MockRouter,
) -> None:
    hightouch.post("/syncs/101/trigger").mock(return_value=httpx.Response(502))
    hightouch.get("/syncs/101/runs").mock(return_value=httpx.Response(200, json={"data": "x"}))
    with pytest.raises(HightouchUnavailable, match="list runs of sync 101.*malformed"):
        _respx_client(max_retries=1).trigger("101")


def test_polling_survives_a_run_with_a_non_numeric_completion_ratio(
    hightouch: respx.MockRouter,
) -> None:
    odd = {"id": "5", "status": "processing", "completionRatio": "abc"}
    hightouch.get("/syncs/101/runs").mock(
        side_effect=[
            httpx.Response(200, json={"data": [odd]}),
            httpx.Response(200, json={"data": [{**odd, "completionRatio": 0.5}]}),
            httpx.Response(200, json={"data": [GOOD_RUN]}),
        ]
    )
    run = _respx_client().wait_for_run("101", "5", poll_interval=0, poll_timeout=2)
    assert run.status == "success" and run.completion_ratio == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json=[]),
        httpx.Response(200, json={"data": "x"}),
        httpx.Response(200, json={"data": [{"slug": "crm"}]}),
    ],
    ids=["list", "data-is-text", "sync-without-id"],
)
def test_a_malformed_sync_lookup_is_a_transient_error(
    hightouch: respx.MockRouter, answer: httpx.Response
) -> None:
    hightouch.get("/syncs").mock(return_value=answer)
    with pytest.raises(HightouchUnavailable, match="find crm"):
        _respx_client(max_retries=1).resolve_sync_id("crm")


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, json=["not", "an", "object"]),
        httpx.Response(404, text="Not Found"),
        httpx.Response(404, json={"message": {"nested": True}}),
    ],
    ids=["list", "text", "message-object"],
)
def test_an_odd_refusal_body_still_gives_the_refusal(
    hightouch: respx.MockRouter, answer: httpx.Response
) -> None:
    hightouch.post("/syncs/101/trigger").mock(return_value=answer)
    with pytest.raises(HightouchRequestRefused, match="HTTP 404.*sync id or slug"):
        _respx_client().trigger("101")


def test_a_null_completion_ratio_means_no_progress_known() -> None:
    run = SyncRun.from_api("7", {"id": "5", "status": "queued", "completionRatio": None})
    assert run.completion_ratio == 0.0
