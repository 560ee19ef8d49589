"""The Hightouch client's own rules, at the HTTP edge (httpx.MockTransport plays Hightouch)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from activation.hightouch import HightouchClient, HightouchError, RowCounts, retry_delay

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


def test_server_errors_are_retried_then_the_answer_is_used() -> None:
    answers = iter([_response(503), _response(429), httpx.Response(200, json={"id": "77"})])
    client = _client(lambda request: next(answers))
    assert client.trigger("101") == "77"
    assert client.request_count == 3


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
    client = _client(lambda request: _response(502), max_retries=2)
    with pytest.raises(HightouchError, match="gave up after 3 attempts"):
        client.trigger("101")
    assert client.request_count == 3


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
