"""Paging the owner when the gate blocks: PagerDuty Events v2 and Slack, on the sandbox sinks.

A refused sync is one page per destination (`activation/activate/<key>/gate_closed`) naming every
refusing check. A run whose blocking dbt test fails pages (through the run-failure sensor) the
owners of the syncs it blocked, routed to each owner's key; a later refusal by the same checks
does not page again; the next successful sync resolves the page. A PagerDuty sink that answers
500 is logged and leaves the gate closed.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import httpx
import pytest

from activation.core.gate import build_blocked_sync_sensor
from activation.core.paging import (
    PagingError,
    dedup_key,
    resolve_event,
    routing_key,
    trigger_event,
)
from activation.lib.destinations import load_destinations
from activation.resources import PagerDutyResource, SlackWebhookResource, pagerduty_events_url
from activation.sandbox.launcher import SandboxProcess
from activation.sandbox.notifications import pagerduty_errors
from tests.support.gate_support import (
    ROUTING_KEYS,
    all_log_text,
    chain_sandbox,
    held_back,
    launch,
    step_failures,
    sync_key,
    synced,
)

CONTACTS = "salesforce_contacts"
STG_CHECK = "staging/stg_customers:unique_stg_customers_customer_id"
REVOPS = ROUTING_KEYS["PAGERDUTY_ROUTING_KEY_REVENUE_OPS"]
MKTOPS = ROUTING_KEYS["PAGERDUTY_ROUTING_KEY_MARKETING_OPS"]


def _destination(key: str):
    return next(d for d in load_destinations() if d.key == key)


# -- the event shapes (pure) ----------------------------------------------------------------------


def test_events_are_valid_pagerduty_events_v2() -> None:
    key = dedup_key(dg.AssetKey(["marts", "m"]), "unique_m_id")
    assert key == "activation/marts/m/unique_m_id"
    event = trigger_event("k" * 32, key, "summary", "activation/x", {"destination": "x"})
    assert pagerduty_errors(event) == []
    assert event["payload"]["severity"] == "error"
    assert pagerduty_errors(resolve_event("k" * 32, key)) == []


def test_long_check_names_keep_distinct_dedup_keys_within_255() -> None:
    asset = dg.AssetKey(["marts", "m"])
    first, second = dedup_key(asset, "a" * 300), dedup_key(asset, "a" * 299 + "b")
    assert len(first) <= 255 and len(second) <= 255 and first != second


def test_missing_routing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGERDUTY_ROUTING_KEY_REVENUE_OPS", raising=False)
    load_destinations.cache_clear()
    with pytest.raises(PagingError, match="PAGERDUTY_ROUTING_KEY_REVENUE_OPS is not set"):
        routing_key(_destination(CONTACTS))


# -- on the sandbox -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with chain_sandbox(tmp_path_factory.mktemp("paging") / "data") as box:
        yield box


def _run_activate(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    from activation.definitions import build_definitions

    return (
        build_definitions()
        .resolve_job_def("activate")
        .execute_in_process(instance=instance, raise_on_error=False)
    )


def _pages(sandbox: SandboxProcess) -> list[dict]:
    return [n["body"] for n in sandbox.notifications("pagerduty")]


def _run_sensor(instance: dg.DagsterInstance, failed: dg.ExecuteInProcessResult) -> None:
    from activation.definitions import build_definitions

    sensor = build_blocked_sync_sensor(load_destinations())
    location = build_definitions()
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=failed.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(failed.run_id),
        repository_def=location.get_repository_def(),
        resources={
            "pagerduty": PagerDutyResource(events_url=pagerduty_events_url()),
            "slack": SlackWebhookResource(webhook_url=_slack_url()),
            "quality_gate": location.resources["quality_gate"],
        },
    )
    sensor(context)


def _slack_url() -> str:
    from activation.lib.environment import resolve_endpoints

    return resolve_endpoints().slack_webhook_url or ""


def _gate_key(destination_key: str) -> str:
    return f"activation/activate/{destination_key}/gate_closed"


def test_refused_sync_on_a_fresh_instance_pages_once_naming_every_check(
    sandbox: SandboxProcess, tmp_path
) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as fresh:
        start = len(_pages(sandbox))

        refused = launch(fresh, sync_key(CONTACTS))

        assert not synced(refused, sync_key(CONTACTS))
        [failure] = held_back(refused)
        checks = {r["check"] for r in failure.metadata["refused_checks"]}  # type: ignore[union-attr]
        assert len(checks) > 10  # every dbt test upstream, the guard, the Python check
        [page] = _pages(sandbox)[start:]
        assert page["event_action"] == "trigger"
        assert page["dedup_key"] == _gate_key(CONTACTS)
        assert page["routing_key"] == REVOPS
        details = page["payload"]["custom_details"]
        assert details["cause"] == "gate_closed"
        assert {r["check"] for r in details["refused_checks"]} == checks
        assert details["blocked_dagster_run_id"] == refused.run_id
        summary = page["payload"]["summary"]
        assert f"{len(checks)} check(s)" in summary
        assert pagerduty_errors(page) == []

        # Refused again by the same checks: no new page.
        assert not synced(launch(fresh, sync_key(CONTACTS)), sync_key(CONTACTS))
        assert len(_pages(sandbox)) == start + 1

        # The next successful sync resolves it, once.
        good = _run_activate(fresh)
        assert good.success, step_failures(good)
        resolves = [p for p in _pages(sandbox)[start + 1 :] if p["event_action"] == "resolve"]
        assert [(p["dedup_key"], p["routing_key"]) for p in resolves] == [
            (_gate_key(CONTACTS), REVOPS)
        ]
        assert all(p["event_action"] == "resolve" for p in _pages(sandbox)[start + 1 :])
        count = len(_pages(sandbox))
        assert synced(launch(fresh, sync_key(CONTACTS)), sync_key(CONTACTS))
        assert len(_pages(sandbox)) == count


def test_blocked_run_pages_owners_once_then_a_successful_sync_resolves(
    sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    assert _run_activate(instance).success
    start = len(_pages(sandbox))

    sandbox.set_scenario(bad_rows=True)
    try:
        bad = _run_activate(instance)
    finally:
        sandbox.set_scenario()
    assert not bad.success
    assert _pages(sandbox)[start:] == []  # the sync steps never started
    _run_sensor(instance, bad)

    triggers = [p for p in _pages(sandbox)[start:] if p["event_action"] == "trigger"]
    by_destination: dict[str, list[dict]] = {}
    for page in triggers:
        by_destination.setdefault(page["payload"]["custom_details"]["destination"], []).append(page)
    # Every sync downstream of stg_customers is blocked; one page each, to its own owner.
    assert set(by_destination) == {d.key for d in load_destinations()}
    assert all(len(pages) == 1 for pages in by_destination.values()), by_destination
    [contacts_page] = by_destination[CONTACTS]
    assert contacts_page["routing_key"] == REVOPS
    assert contacts_page["dedup_key"] == _gate_key(CONTACTS)
    assert by_destination["hubspot_contacts"][0]["routing_key"] == MKTOPS
    refused = {r["check"] for r in contacts_page["payload"]["custom_details"]["refused_checks"]}
    assert STG_CHECK in refused
    assert STG_CHECK in contacts_page["payload"]["summary"]
    assert all(p["payload"]["severity"] == "error" for p in triggers)
    slack_texts = [n["body"]["text"] for n in sandbox.notifications("slack")]
    assert any(
        "sync salesforce_contacts was blocked" in t and "#revops-alerts" in t for t in slack_texts
    )

    # The sensor does not page again for the same run.
    _run_sensor(instance, bad)
    assert len(_pages(sandbox)) == start + len(triggers)

    # A hand launch refused by the same checks does not page again.
    refused_launch = launch(instance, sync_key(CONTACTS))
    assert not synced(refused_launch, sync_key(CONTACTS))
    assert len(_pages(sandbox)) == start + len(triggers)

    good = _run_activate(instance)
    assert good.success, step_failures(good)
    resolves = [p for p in _pages(sandbox)[start:] if p["event_action"] == "resolve"]
    for destination in load_destinations():
        resolved = {
            p["dedup_key"]
            for p in resolves
            if p["routing_key"] == ROUTING_KEYS[destination.owner.pagerduty_routing_key_env]
        }
        assert _gate_key(destination.key) in resolved, destination.key
    # Resolved once: a further successful sync sends nothing.
    count = len(_pages(sandbox))
    assert synced(launch(instance, sync_key(CONTACTS)), sync_key(CONTACTS))
    assert len(_pages(sandbox)) == count

    text = all_log_text(instance)
    for key in ROUTING_KEYS.values():
        assert key not in text


def test_failing_pagerduty_sink_is_logged_and_the_gate_stays_closed(
    sandbox: SandboxProcess, instance: dg.DagsterInstance
) -> None:
    sandbox.set_scenario(bad_rows=True)
    try:
        assert not _run_activate(instance).success
    finally:
        sandbox.set_scenario()
    with httpx.Client(base_url=sandbox.url) as http:
        http.post(
            "/sandbox/notifications/faults", json={"sink": "pagerduty", "status": 500, "count": 50}
        ).raise_for_status()
    pages_before = len(_pages(sandbox))
    triggers_before = sandbox.trigger_counts()

    result = launch(instance, sync_key(CONTACTS))

    assert not synced(result, sync_key(CONTACTS))
    assert sandbox.trigger_counts() == triggers_before
    assert len(_pages(sandbox)) == pages_before
    [failure] = held_back(result)
    assert "refused to trigger Hightouch" in failure.description
    messages = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.user_message and "PAGING FAILED" in entry.user_message
    ]
    assert messages and "HTTP 500" in messages[0]
    with httpx.Client(base_url=sandbox.url) as http:  # clear the remaining faults
        http.post("/sandbox/reset")


def test_page_sync_failure_pages_only_that_destinations_owner(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from activation.core.paging import page_sync_failure
    from activation.sandbox.launcher import start_sandbox

    for name, value in ROUTING_KEYS.items():
        monkeypatch.setenv(name, value)
    load_destinations.cache_clear()
    box = start_sandbox(tmp_path / "data", "--phase-seconds", "0.05")
    try:
        pagerduty = PagerDutyResource(events_url=box.url + "/pagerduty/v2/enqueue", attempts=2)
        log = logging.getLogger("test_paging")
        hubspot = _destination("hubspot_contacts")
        assert page_sync_failure(log, pagerduty, None, hubspot, dagster_run_id="r1", reason="x")
        [page] = [n["body"] for n in box.notifications("pagerduty")]
        assert page["routing_key"] == MKTOPS
        assert page["dedup_key"] == "activation/activate/hubspot_contacts/sync_failed"
        assert box.notifications("slack") == []

        with httpx.Client(base_url=box.url) as http:
            http.post(
                "/sandbox/notifications/faults",
                json={"sink": "pagerduty", "status": 500, "count": 5},
            ).raise_for_status()
        with caplog.at_level(logging.ERROR):
            delivered = page_sync_failure(
                log, pagerduty, None, hubspot, dagster_run_id="r2", reason="x"
            )
        assert not delivered
        assert "PAGING FAILED" in caplog.text and MKTOPS not in caplog.text
    finally:
        box.stop()
        load_destinations.cache_clear()
