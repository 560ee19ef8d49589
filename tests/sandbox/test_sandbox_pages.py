"""The Hightouch stand-in's app pages: the `hightouch_run_url` of a run opens a read-only HTML page
of that run, the sync page lists its runs, unknown ids are 404 pages, and values are escaped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from activation.lib.environment import SANDBOX_URL_VAR, resolve_endpoints
from activation.lib.hightouch import HightouchClient
from activation.sandbox.hightouch import served_sync_definitions
from activation.sandbox.launcher import SandboxProcess
from activation.sandbox.pages import render_run_page, render_sync_page
from activation.sandbox.sync_engine import DeliveredRow, RowCounts, Run
from tests.support.sandbox_marts import (
    build_mart,
    destination,
    execute,
    reset,
    running_sandbox,
    sync_once,
    trigger,
    wait_for_run,
)

HUBSPOT = destination("hubspot_contacts")  # sync 201, key contact_id, maps first_name
SCRIPT = "<script>alert('x')</script>"
SCRIPT_SQL = SCRIPT.replace("'", "''")


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    yield from running_sandbox(tmp_path_factory.mktemp("hightouch_pages"))


@pytest.fixture
def sandbox(module_sandbox: SandboxProcess) -> SandboxProcess:
    return reset(module_sandbox)


def _browser(sandbox: SandboxProcess) -> httpx.Client:
    """A client without the API key, as a browser opening the link."""
    return sandbox.client(token=None)


def _assert_html(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<script" not in response.text.lower()
    return response.text


def _run_link(sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch, run_id: str) -> str:
    """The link the sync assets record as `hightouch_run_url`, built by the real client."""
    monkeypatch.setenv(SANDBOX_URL_VAR, sandbox.url)
    monkeypatch.setenv("HIGHTOUCH_API_TOKEN", "test-token")
    endpoints = resolve_endpoints()
    with HightouchClient(
        endpoints.hightouch_api_base_url, "test-token", app_url=endpoints.hightouch_app_url
    ) as client:
        return client.run_url("201", run_id)


def test_the_run_link_opens_the_run_page(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 120)
    execute(
        sandbox.data_dir,
        f"UPDATE marts.{HUBSPOT.mart} SET first_name = '{SCRIPT_SQL}' "
        "WHERE contact_id = 'C0000000'",
    )
    with sandbox.client() as api:
        run_id = trigger(api, "201")
        run = wait_for_run(api, "201", run_id)
    assert run["status"] == "success"

    with _browser(sandbox) as browser:
        page = _assert_html(browser.get(_run_link(sandbox, monkeypatch, run_id)), 200)

    assert f"Hightouch run {run_id} of sync 201 (hubspot-marketing-contacts)" in page
    assert "<tr><th>Status</th><td>success</td></tr>" in page
    assert "<tr><th>Destination</th><td>hubspot contacts</td></tr>" in page
    for label in ("Created", "Started", "Finished"):
        timestamp = run[f"{label.lower()}At"]
        assert f"<tr><th>{label}</th><td>{timestamp}</td></tr>" in page
    assert "<tr><td>Planned</td><td>120</td><td>0</td><td>0</td><td>120</td></tr>" in page
    assert "<tr><td>Successful</td><td>120</td><td>0</td><td>0</td><td>120</td></tr>" in page
    assert "<tr><td>Failed</td><td>0</td><td>0</td><td>0</td><td>0</td></tr>" in page
    # the delivered rows: the first 50 of 120, key then mapped fields
    assert "50 of 120 rows delivered to hubspot contacts by this run" in page
    delivered = re.findall(r"<tr><td>added</td><td>(C\d{7})</td>", page)
    assert delivered == [f"C{i:07d}" for i in range(50)]
    assert (
        "<tr><td>added</td><td>C0000001</td><td>person.1@example.com</td><td>First1</td>"
        "<td>Last1</td><td>customer</td><td>GB</td></tr>"
    ) in page
    # the mart value reached the CRM as sent, and the page shows it escaped
    assert sandbox.records("hubspot", "contacts")["C0000000"]["first_name"] == SCRIPT
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_the_sync_page_lists_its_runs_newest_first(sandbox: SandboxProcess) -> None:
    build_mart(sandbox.data_dir, HUBSPOT.mart, 10)
    with sandbox.client() as api:
        first = sync_once(api, "201")["id"]
        second = sync_once(api, "201")["id"]
    with _browser(sandbox) as browser:
        page = _assert_html(browser.get("/hightouch/app/syncs/201"), 200)
        run_page = _assert_html(browser.get(f"/hightouch/app/syncs/201/runs/{second}"), 200)

    assert "Hightouch sync 201 (hubspot-marketing-contacts)" in page
    assert f"<tr><th>Mart</th><td>{HUBSPOT.mart}</td></tr>" in page
    assert "<tr><th>Destination</th><td>hubspot contacts</td></tr>" in page
    links = re.findall(r'<a href="/hightouch/app/syncs/201/runs/(\d+)">', page)
    assert links == [second, first]
    # the second run planned nothing, so it delivered nothing
    assert "No rows were delivered by this run (0 in total)." in run_page
    assert '<a href="/hightouch/app/syncs/201">' in run_page


def test_unknown_sync_or_run_is_a_404_page(sandbox: SandboxProcess) -> None:
    with _browser(sandbox) as browser:
        no_run = _assert_html(browser.get("/hightouch/app/syncs/201/runs/999"), 404)
        no_sync = _assert_html(browser.get("/hightouch/app/syncs/999"), 404)
        no_sync_run = _assert_html(browser.get("/hightouch/app/syncs/999/runs/1"), 404)
        escaped = _assert_html(browser.get("/hightouch/app/syncs/201/runs/%3Cscript%3E"), 404)
        post = browser.post("/hightouch/app/syncs/201")
    assert "Run 999 of sync 201 not found." in no_run
    assert "Sync 999 not found." in no_sync
    assert "Sync 999 not found." in no_sync_run
    assert "Run &lt;script&gt; of sync 201 not found." in escaped
    assert post.status_code == 405


def test_the_renderer_escapes_every_value() -> None:
    sync = next(s for s in served_sync_definitions([HUBSPOT]) if s.id == "201")
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    run = Run(
        id="7",
        sync_id="201",
        created_at=moment,
        full_resync=False,
        reset_cdc=False,
        generation=0,
        status="warning",
        started_at=moment,
        finished_at=moment,
        error=f"1 of 2 rows were rejected (first: INVALID_EMAIL: {SCRIPT!r})",
        planned=RowCounts(added=2),
        successful=RowCounts(added=1),
        failed=RowCounts(added=1),
        delivered=[DeliveredRow("added", "<b>C1</b>", {"first_name": SCRIPT, "email": "a&b"})],
    )
    for html in (render_run_page(sync, run), render_sync_page(sync, [run])):
        assert "<script" not in html.lower() and "<b>" not in html
    page = render_run_page(sync, run)
    assert "INVALID_EMAIL: &quot;&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;" in page
    assert "<td>&lt;b&gt;C1&lt;/b&gt;</td>" in page
    assert "<td>a&amp;b</td>" in page
    assert "<tr><th>Created</th><td>2026-01-02T03:04:05.000Z</td></tr>" in page
