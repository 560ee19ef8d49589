"""End to end in a real browser: the Dagster UI of `dagster dev`, run against the sandbox on free
ports, opened in headless Chromium (Debian's `chromium` package driven by playwright; never a
browser build downloaded by `playwright install`).

What someone on call reads there must be right: a sync asset's page shows its Hightouch run id,
its counts and a link that opens that run; after bad data, the held-back sync's `quality_gate`
check names the check that refused it; and no check of the code location is shown without a
description. Each assertion leaves a full-page screenshot in `.activation/screenshots/`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from activation.lib.destinations import load_destinations
from activation.lib.paths import PROJECT_ROOT
from activation.tooling.stack import Stack
from tests.support.e2e_stack import e2e_stack, wait_for

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
# The machine has no network: without these Chromium keeps calling home and logs every refusal.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = PROJECT_ROOT / ".activation" / "screenshots"
TOKEN = "browser-hightouch-token-7c1e52a9"
SECRET = "browser-webhook-secret-0f3b6d84"
# hubspot_contacts reads one staging model only: the smallest chain, so the fastest runs.
DESTINATION = "hubspot_contacts"
GATE_CHECK = "quality_gate"
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_S = 420.0
SUMMARY_TIMEOUT_S = 90.0

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not IN_CI,
    reason=f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it in .ci/run)",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with e2e_stack(tmp_path_factory, "browser", token=TOKEN, secret=SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run must install Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    # Tall enough that a sync page shows its whole metadata table: the UI scrolls inside a
    # panel, so a full-page screenshot holds only what the viewport shows.
    viewport = {"width": 1600, "height": 2000}
    context = browser.new_context(base_url=stack.dagster_url, viewport=viewport)
    context.set_default_timeout(UI_TIMEOUT_MS)
    # The webserver's first-visit "Join the Dagster community" dialog covers the page; a
    # visitor who dismissed it once has this key in local storage.
    context.add_init_script("window.localStorage.setItem('communityNux', 'true')")
    yield context.new_page()
    context.close()


def check_detail_heading(page: Page) -> Locator:
    """The name above the selected check's detail, on an asset's Checks tab."""
    return page.locator('div:has(> [aria-label="asset_check"]) > span')


def screenshot(page: Page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


ASSET_GRAPH_QUERY = """
{ assetNodes { assetKey { path } dependencyKeys { path }
  assetChecksOrError { ... on AssetChecks { checks { name description } } } } }
"""


def asset_graph(stack: Stack) -> dict[str, dict]:
    """Asset key (a/b) -> {"deps": [keys], "checks": {name: description}}."""
    nodes = stack.graphql(ASSET_GRAPH_QUERY)["assetNodes"]
    return {
        "/".join(n["assetKey"]["path"]): {
            "deps": ["/".join(d["path"]) for d in n["dependencyKeys"]],
            "checks": {
                c["name"]: c["description"] for c in n["assetChecksOrError"].get("checks", [])
            },
        }
        for n in nodes
    }


def upstream_and_self(graph: dict[str, dict], key: str) -> list[str]:
    seen, todo = set(), [key]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current]["deps"])
    return sorted(seen)


LAUNCH_MUTATION = """
mutation ($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message } ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }
"""


def launch_activate(stack: Stack, destination: str) -> str:
    """Launch the `activate` job for one destination, as the Launchpad's asset selection would:
    its sync, everything upstream of it, and every raw and staging asset (dbt's relationships
    tests on one staging model read the others, which a fresh warehouse would not hold). Returns
    the run id without waiting; one sync instead of all of them halves the run on two cores."""
    graph = asset_graph(stack)
    layers = [key for key in graph if key.split("/")[0] in ("raw", "staging")]
    keys = sorted({*upstream_and_self(graph, f"activate/{destination}"), *layers})
    selector = {
        "repositoryLocationName": "activation",
        "repositoryName": "__repository__",
        "jobName": "activate",
        "assetSelection": [{"path": key.split("/")} for key in keys],
    }
    launched = stack.graphql(LAUNCH_MUTATION, {"params": {"selector": selector}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


RUN_QUERY = """
query ($id: ID!) { runOrError(runId: $id) { ... on Run { status startTime eventConnection {
  events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message } }
    ... on AssetCheckEvaluationEvent { evaluation { checkName success severity } }
} } } } }
"""


def finished_run(stack: Stack, run_id: str) -> dict:
    def done() -> dict | None:
        run = stack.graphql(RUN_QUERY, {"id": run_id})["runOrError"]
        return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    return wait_for(f"run {run_id} did not finish", done, RUN_TIMEOUT_S, stack)


def step_failures(run: dict) -> str:
    return "\n".join(
        f"{e['stepKey']}: {e['error']['message'] if e['error'] else ''}"
        for e in run["eventConnection"]["events"]
        if e["__typename"] == "ExecutionStepFailureEvent"
    )


def failed_blocking_checks(run: dict) -> set[str]:
    """Names of the checks that failed in `run` with severity ERROR (WARN never holds a sync)."""
    evaluations = [
        e["evaluation"]
        for e in run["eventConnection"]["events"]
        if e["__typename"] == "AssetCheckEvaluationEvent"
    ]
    return {e["checkName"] for e in evaluations if not e["success"] and e["severity"] == "ERROR"}


LATEST_MATERIALIZATION_QUERY = """
query ($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
  assetMaterializations(limit: 1) { runId metadataEntries { label
    ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue }
    ... on UrlMetadataEntry { url } } } } } }
"""


def latest_sync_metadata(stack: Stack, destination: str) -> tuple[str, dict[str, str]]:
    """Run id and metadata (label -> value as text) of the sync asset's latest materialization."""
    key = {"path": ["activate", destination]}
    found = stack.graphql(LATEST_MATERIALIZATION_QUERY, {"key": key})["assetOrError"]
    (latest,) = found["assetMaterializations"]
    values = {
        entry["label"]: str(next((v for k, v in entry.items() if k != "label"), ""))
        for entry in latest["metadataEntries"]
    }
    return latest["runId"], values


@pytest.fixture(scope="module")
def good_run(stack: Stack) -> str:
    """The `activate` run on good data, launched once; tests that need it finished wait."""
    return launch_activate(stack, DESTINATION)


def test_every_check_of_the_code_location_has_a_description(
    page: Page, stack: Stack, good_run: str
) -> None:
    # Runs while the good run executes: definitions only, no run results needed.
    graph = asset_graph(stack)
    checked = {key: node["checks"] for key, node in graph.items() if node["checks"]}
    assert checked, "the code location defines no asset check"
    undescribed = [f"{k}:{c}" for k, checks in checked.items() for c, d in checks.items() if not d]
    assert undescribed == [], f"checks without a description: {undescribed}"

    detail_heading = check_detail_heading(page)
    for key, checks in sorted(checked.items()):
        first = sorted(checks)[0]
        page.goto(f"/assets/{key}?view=checks&checkDetail={first}")
        expect(page.get_by_text(f"Checks ({len(checks)})", exact=True)).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
        for name in sorted(checks):
            page.locator(f'[class*="checkRow"]:has([title="{name}"])').click()
            expect(detail_heading).to_have_text(name, timeout=UI_TIMEOUT_MS)
            expect(page.get_by_text("About", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
            if "No description provided" in page.inner_text("body"):
                path = screenshot(page, f"check_without_description_{name}")
                pytest.fail(f"{key}:{name} shows 'No description provided' (see {path})")
        screenshot(page, f"check_descriptions_{key.replace('/', '__')}")


def test_sync_page_shows_the_hightouch_run_with_counts_and_a_working_link(
    page: Page, stack: Stack, good_run: str
) -> None:
    run = finished_run(stack, good_run)
    assert run["status"] == "SUCCESS", step_failures(run)
    run_id, metadata = latest_sync_metadata(stack, DESTINATION)
    assert run_id == good_run
    hightouch_run = metadata["hightouch_run_id"]
    run_url = metadata["hightouch_run_url"]
    assert run_url.startswith(f"{stack.sandbox.url}/hightouch/app/syncs/"), run_url
    assert run_url.endswith(f"/runs/{hightouch_run}"), run_url
    # The first sync into an empty CRM stand-in adds every row it delivers.
    destination = next(d for d in load_destinations() if d.key == DESTINATION)
    delivered = stack.sandbox.records(destination.destination_type, destination.object)
    assert int(metadata["successful_added"]) == len(delivered) > 0

    page.goto(f"/assets/activate/{DESTINATION}")
    shown = {
        label: metadata[label]
        for label in (
            "hightouch_run_id", "hightouch_status",
            "successful_added", "successful_changed", "successful_removed",
            "failed_added", "failed_changed", "failed_removed",
        )
    }  # fmt: skip
    link = page.locator(f'a[href="{run_url}"]').first
    try:
        for label, value in shown.items():
            row = page.locator("tr").filter(has=page.get_by_text(label, exact=True))
            expect(row.locator("td").last).to_have_text(value, timeout=UI_TIMEOUT_MS)
        expect(link).to_be_visible(timeout=UI_TIMEOUT_MS)
    finally:
        screenshot(page, f"sync_asset_{DESTINATION}")

    with page.context.expect_page() as opened:
        link.click()
    hightouch_page = opened.value
    hightouch_page.wait_for_load_state()
    expect(hightouch_page.locator("h1")).to_contain_text(
        f"Hightouch run {hightouch_run} of sync {metadata['hightouch_sync_id']}",
        timeout=UI_TIMEOUT_MS,
    )
    successful = hightouch_page.locator("tr").filter(has_text=re.compile(r"^\s*Successful"))
    try:
        expect(successful.locator("td").nth(1)).to_have_text(metadata["successful_added"])
    finally:
        screenshot(hightouch_page, f"hightouch_run_{DESTINATION}")
    answer = page.context.request.get(run_url)
    assert answer.status == 200 and f"Hightouch run {hightouch_run}" in answer.text()
    hightouch_page.close()


def test_after_bad_data_the_blocked_sync_names_the_refusing_check(
    page: Page, stack: Stack, good_run: str
) -> None:
    good = finished_run(stack, good_run)
    assert good["status"] == "SUCCESS", step_failures(good)
    stack.sandbox.set_scenario(bad_rows=True)
    try:
        bad_run = launch_activate(stack, DESTINATION)
        run = finished_run(stack, bad_run)
    finally:
        stack.sandbox.set_scenario()
    assert run["status"] == "FAILURE"
    refusing = failed_blocking_checks(run)
    assert refusing, "bad data failed no blocking check"
    synced_in, _ = latest_sync_metadata(stack, DESTINATION)
    assert synced_in == good_run, "the sync was materialized in the bad run"

    gate_checks = asset_graph(stack)[f"activate/{DESTINATION}"]["checks"]
    if GATE_CHECK in gate_checks:
        wait_for(
            f"no failed {GATE_CHECK} on activate/{DESTINATION} after the bad run",
            lambda: gate_failed_since(stack, run["startTime"]),
            SUMMARY_TIMEOUT_S,
            stack,
        )
    page.goto(f"/assets/activate/{DESTINATION}?view=checks&checkDetail={GATE_CHECK}")
    heading = check_detail_heading(page)
    no_checks = page.get_by_text("No checks defined for this asset")
    expect(heading.or_(no_checks)).to_be_visible(timeout=UI_TIMEOUT_MS)
    try:
        assert GATE_CHECK in gate_checks, (
            f"activate/{DESTINATION} has no `{GATE_CHECK}` check (it has {sorted(gate_checks)})"
        )
        expect(heading).to_have_text(GATE_CHECK, timeout=UI_TIMEOUT_MS)
        # The innermost block holding the check's heading and its latest execution.
        detail = (
            page.locator("div")
            .filter(has=heading)
            .filter(has=page.get_by_text("Latest execution", exact=True))
            .last
        )
        expect(detail).to_contain_text("Failed", timeout=UI_TIMEOUT_MS)
        for name in sorted(refusing):
            expect(detail).to_contain_text(name, timeout=UI_TIMEOUT_MS)
    finally:
        screenshot(page, f"blocked_sync_{DESTINATION}")


GATE_EXECUTIONS_QUERY = """
query ($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 1) {
    status evaluation { success timestamp } } }
"""


def gate_failed_since(stack: Stack, since: float) -> bool:
    variables = {"key": {"path": ["activate", DESTINATION]}, "check": GATE_CHECK}
    executions = stack.graphql(GATE_EXECUTIONS_QUERY, variables)["assetCheckExecutions"]
    return any(
        e["evaluation"] and not e["evaluation"]["success"] and e["evaluation"]["timestamp"] >= since
        for e in executions
    )
