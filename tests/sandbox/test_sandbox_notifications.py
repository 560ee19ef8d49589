"""Contract of the notification sinks (Slack, Teams, PagerDuty), over real HTTP to a sandbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from activation.lib.environment import SANDBOX_SLACK_WEBHOOK_PATH
from activation.sandbox.launcher import SandboxProcess
from activation.sandbox.notifications import pagerduty_errors

TEAMS_PATH = "/teams/webhook/workflows/0123abcd/triggers/manual/paths/invoke"
ROUTING_KEY = "R" * 32
ADAPTIVE_CARD = {
    "type": "message",
    "attachments": [
        {
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [{"type": "TextBlock", "text": "Sync failed"}],
            },
        }
    ],
}
MESSAGE_CARD = {"@type": "MessageCard", "@context": "http://schema.org/extensions", "text": "hi"}


def trigger_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "dbt test failed", "source": "activation", "severity": "error"},
    }
    return {**event, **changes}


def test_slack_accepts_text_or_blocks_and_records_them(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        text = http.post(SANDBOX_SLACK_WEBHOOK_PATH, json={"text": "run 1 failed"})
        assert text.status_code == 200 and text.text == "ok"
        assert text.headers["content-type"].startswith("text/plain")
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*run 2*"}}]
        assert http.post("/slack/services/T1/B2/other", json={"blocks": blocks}).text == "ok"

    received = sandbox.notifications("slack")
    assert [r["body"] for r in received] == [{"text": "run 1 failed"}, {"blocks": blocks}]
    assert [r["path"] for r in received] == [
        SANDBOX_SLACK_WEBHOOK_PATH,
        "/slack/services/T1/B2/other",
    ]
    assert all(r["sink"] == "slack" for r in received)
    assert datetime.fromisoformat(received[0]["received_at"]) <= datetime.fromisoformat(
        received[1]["received_at"]
    )


def test_slack_rejects_what_slack_rejects_and_records_nothing(sandbox: SandboxProcess) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"content": b"not json", "headers": {"content-type": "application/json"}},
            "invalid_payload",
        ),
        ({"json": ["a", "list"]}, "invalid_payload"),
        ({"json": {"text": 42}}, "invalid_payload"),
        ({"json": {}}, "no_text"),
        ({"json": {"text": "", "blocks": []}}, "no_text"),
        ({"json": {"blocks": "not a list"}}, "invalid_blocks"),
    ]
    with sandbox.client() as http:
        for request, error in cases:
            response = http.post(SANDBOX_SLACK_WEBHOOK_PATH, **request)
            assert (response.status_code, response.text) == (400, error), request
    assert sandbox.notifications("slack") == []


def test_teams_accepts_cards_with_202_and_rejects_non_json(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        for message in (ADAPTIVE_CARD, MESSAGE_CARD):
            accepted = http.post(TEAMS_PATH, json=message)
            assert accepted.status_code == 202 and accepted.content == b""
        rejected = http.post(TEAMS_PATH, content=b"<xml/>")
        assert rejected.status_code == 400
        assert rejected.json()["error"]["code"] == "InvalidRequestContent"

    received = sandbox.notifications("teams")
    assert [r["body"] for r in received] == [ADAPTIVE_CARD, MESSAGE_CARD]
    assert {r["path"] for r in received} == {TEAMS_PATH}


def test_pagerduty_trigger_then_resolve_share_a_dedup_key(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        triggered = http.post("/pagerduty/v2/enqueue", json=trigger_event())
        assert triggered.status_code == 202
        body = triggered.json()
        assert body["status"] == "success" and body["message"] == "Event processed"
        key = body["dedup_key"]
        assert isinstance(key, str) and key

        resolve = {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key}
        resolved = http.post("/pagerduty/v2/enqueue", json=resolve)
        assert resolved.status_code == 202 and resolved.json()["dedup_key"] == key
        given = http.post("/pagerduty/v2/enqueue", json=trigger_event(dedup_key="run-7"))
        assert given.json()["dedup_key"] == "run-7"

    received = sandbox.notifications("pagerduty")
    assert [r["body"]["event_action"] for r in received] == ["trigger", "resolve", "trigger"]
    assert received[0]["body"]["dedup_key"] == key  # the generated key is recorded with the event


def with_payload(**payload: str) -> dict[str, Any]:
    return trigger_event(payload=payload)


NO_ROUTING_KEY = {k: v for k, v in trigger_event().items() if k != "routing_key"}
INVALID_EVENTS: list[tuple[str, Any, str]] = [
    ("short routing key", trigger_event(routing_key="abc"), "routing_key"),
    ("missing routing key", NO_ROUTING_KEY, "routing_key"),
    ("unknown action", trigger_event(event_action="escalate"), "event_action"),
    ("no payload", {"routing_key": ROUTING_KEY, "event_action": "trigger"}, "payload"),
    ("blank summary", with_payload(summary=" ", source="s", severity="info"), "payload.summary"),
    ("no source", with_payload(summary="x", severity="info"), "payload.source"),
    ("bad severity", with_payload(summary="x", source="s", severity="fatal"), "payload.severity"),
    ("ack without key", {"routing_key": ROUTING_KEY, "event_action": "acknowledge"}, "dedup_key"),
    ("resolve without key", {"routing_key": ROUTING_KEY, "event_action": "resolve"}, "dedup_key"),
    ("not an object", ["trigger"], "JSON object"),
]


@pytest.mark.parametrize(
    ("event", "named"), [c[1:] for c in INVALID_EVENTS], ids=[c[0] for c in INVALID_EVENTS]
)
def test_pagerduty_rules_name_the_invalid_field(event: Any, named: str) -> None:
    errors = pagerduty_errors(event)
    assert errors and any(named in error for error in errors), errors


def test_pagerduty_answers_invalid_events_with_400_and_records_none(
    sandbox: SandboxProcess,
) -> None:
    with sandbox.client() as http:
        for name, event, named in INVALID_EVENTS:
            response = http.post("/pagerduty/v2/enqueue", json=event)
            assert response.status_code == 400, name
            body = response.json()
            assert (
                body["status"] == "invalid event" and body["message"] == "Event object is invalid"
            )
            assert any(named in error for error in body["errors"]), (name, body)
        not_json = http.post("/pagerduty/v2/enqueue", content=b"{oops")
        assert not_json.status_code == 400 and not_json.json()["status"] == "invalid event"
    assert sandbox.notifications("pagerduty") == []


def test_listing_filters_by_sink_and_reset_clears(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        http.post(SANDBOX_SLACK_WEBHOOK_PATH, json={"text": "one"}).raise_for_status()
        http.post(TEAMS_PATH, json=MESSAGE_CARD).raise_for_status()
        http.post("/pagerduty/v2/enqueue", json=trigger_event()).raise_for_status()
        everything = http.get("/sandbox/notifications").json()
        assert [r["sink"] for r in everything] == ["slack", "teams", "pagerduty"]
        assert len(sandbox.notifications("teams")) == 1

        unknown = http.get("/sandbox/notifications", params={"sink": "email"})
        assert unknown.status_code == 422 and unknown.json()["field"] == "sink"

        http.post("/sandbox/reset").raise_for_status()
        assert http.get("/sandbox/notifications").json() == []


def test_injected_faults_answer_the_next_calls_then_clear(sandbox: SandboxProcess) -> None:
    with sandbox.client() as http:
        fault = {"sink": "pagerduty", "status": 503, "count": 2}
        assert http.post("/sandbox/notifications/faults", json=fault).status_code == 200
        statuses = [
            http.post("/pagerduty/v2/enqueue", json=trigger_event()).status_code for _ in range(3)
        ]
        assert statuses == [503, 503, 202]
        assert len(sandbox.notifications("pagerduty")) == 1  # failed calls reached nobody
        # Other sinks are not affected.
        assert http.post(SANDBOX_SLACK_WEBHOOK_PATH, json={"text": "x"}).status_code == 200

        http.post("/sandbox/notifications/faults", json={"sink": "slack", "status": 500})
        http.post("/sandbox/reset").raise_for_status()  # reset clears pending faults too
        assert http.post(SANDBOX_SLACK_WEBHOOK_PATH, json={"text": "y"}).status_code == 200

        for body, field in [
            ({"sink": "email", "status": 500}, "sink"),
            ({"sink": "slack", "status": 200}, "status"),
            ({"sink": "slack", "status": 500, "count": 0}, "count"),
            ({"sink": "slack", "status": 500, "extra": 1}, "extra"),
        ]:
            rejected = http.post("/sandbox/notifications/faults", json=body)
            assert rejected.status_code == 422 and rejected.json()["field"] == field, body


def test_sinks_answer_only_post(sandbox: SandboxProcess) -> None:
    assert httpx.get(sandbox.url + SANDBOX_SLACK_WEBHOOK_PATH).status_code == 405
