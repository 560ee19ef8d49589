"""Webhook URLs and API tokens never reach logs, even when a deployment captures httpx's loggers.

httpx logs every request's full URL at INFO, and a Slack or Teams webhook URL is a secret. The
run below captures httpx and httpcore at DEBUG the way dagster.yaml's `python_logs` would, posts
through `activation.lib.notify.post_json` and reads Hightouch with a token, all against a local HTTP
server; then nothing the run logged, nor any record a handler received, may carry the secrets.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from activation.lib.hightouch import HightouchClient
from activation.lib.notify import post_json
from activation.lib.redaction import HTTP_LOGGERS, install_http_log_redaction, redact

WEBHOOK_SECRET = "B0002/s3cr3tW3bh00kP4th"
QUERY_SECRET = "q5ecretQu3ry"
TOKEN = "ht-token-5e8a0c71d4"
PYTHON_LOGS = {"managed_python_loggers": ["httpx", "httpcore"], "python_log_level": "DEBUG"}


class _Answers(BaseHTTPRequestHandler):
    """Answers every POST like a webhook sink and every GET like an empty Hightouch runs list."""

    protocol_version = "HTTP/1.1"

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer({"ok": True})

    def do_GET(self) -> None:
        self._answer({"data": []})

    def log_message(self, *args: object) -> None:
        pass  # the server's own access log is not under test


@pytest.fixture
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept_records() -> Iterator[list[logging.LogRecord]]:
    """Every record of the http loggers, as a handler of any deployment would receive it; the
    loggers' levels (which Dagster raises to DEBUG for the run) are put back afterwards."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    keep = _Keep()
    for logger in loggers:
        logger.addHandler(keep)
    try:
        yield keep.records
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(keep)
            logger.setLevel(level)


def test_a_run_capturing_httpx_logs_never_records_the_webhook_url_or_token(
    local_server: str, kept_records: list[logging.LogRecord]
) -> None:
    webhook_url = f"{local_server}/services/T0001/{WEBHOOK_SECRET}?sig={QUERY_SECRET}"

    @dg.op
    def notify_and_read_hightouch() -> None:
        post_json(webhook_url, {"text": "hello"}, timeout=5, attempts=1, what="Slack message")
        with HightouchClient(f"{local_server}/api/v1", TOKEN) as client:
            assert client.recent_runs("101") == []

    @dg.job
    def leaky() -> None:
        notify_and_read_hightouch()

    with dg.instance_for_test(overrides={"python_logs": PYTHON_LOGS}) as instance:
        result = leaky.execute_in_process(instance=instance)
        assert result.success
        entries = instance.all_logs(result.run_id)

    logged = [f"{entry.user_message}\n{entry.dagster_event!r}\n{entry!r}" for entry in entries] + [
        f"{record.getMessage()}\n{record.args!r}\n{vars(record)!r}" for record in kept_records
    ]
    for secret in (WEBHOOK_SECRET, QUERY_SECRET, TOKEN, "/services/"):
        assert not [text for text in logged if secret in text], f"{secret} reached the log"

    # The capture did work: httpx's request lines and httpcore's debug trace are in the run's log.
    messages = [entry.user_message for entry in entries]
    assert f"HTTP Request: POST {local_server}/[redacted]" in "\n".join(messages)
    assert f"HTTP Request: GET {local_server}/[redacted]" in "\n".join(messages)
    assert any("send_request_headers" in message for message in messages)
    assert kept_records and all(record.args == () for record in kept_records)


def test_the_filter_is_installed_once_whatever_imports_it() -> None:
    import activation.lib.hightouch  # noqa: F401  (each installs at import)
    import activation.lib.notify  # noqa: F401

    install_http_log_redaction()
    install_http_log_redaction()
    for name in HTTP_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(getattr(f, "redacts_http_secrets", False) for f in filters) == 1, name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'HTTP Request: POST https://hooks.slack.com/services/T1/B2/xyz "HTTP/1.1 200 OK"',
            'HTTP Request: POST https://hooks.slack.com/[redacted] "HTTP/1.1 200 OK"',
        ),
        (
            "URL('https://prod.westus.logic.azure.com:443/workflows/1/triggers?sig=abc')",
            "URL('https://prod.westus.logic.azure.com:443/[redacted]')",
        ),
        ("GET http://user:pw@example.com?q=1 done", "GET http://example.com/[redacted] done"),
        ("GET https://api.hightouch.com done", "GET https://api.hightouch.com done"),
        ("Authorization: Bearer abc.def-123", "Authorization: [redacted]"),
        ("(b'authorization', b'Bearer abc')]", "(b'authorization', b'[redacted]')]"),
        ("token=Bearer abc", "token=Bearer [redacted]"),
    ],
    ids=["webhook", "url-repr", "userinfo-query", "host-only", "header", "header-tuple", "bearer"],
)
def test_redact_keeps_scheme_and_host_only(text: str, expected: str) -> None:
    assert redact(text) == expected
