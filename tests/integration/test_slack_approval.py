"""One-click Approve / Reject in Slack, end to end: real HTTP from the sandbox's Slack stand-in to
the intake (`activation webhooks` in a child process), real Dagster execution of `promote` with
real dbt checks on a real DuckDB file, one SQLite Dagster home.

Two promote runs share one checked warehouse:

- run 1: an outsider's click is refused, a Reject without a reason is refused, then a member of
  the allowed Slack user group rejects with a reason: production never runs;
- run 2, while it waits: a click with a bad signature, one older than five minutes, one on run 1's
  message (made there before run 1 was decided) and one on a planted copy of the message naming
  an earlier staging run all change nothing; then an allowed user approves and production runs
  once. Afterwards a replay of that click and a second
  click by another reviewer change nothing either.

Side effects are counted where they land: triggers at the Hightouch stand-in, records at the CRM
stand-in, messages at the Slack stand-in.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import dagster as dg
import duckdb
import httpx
import pytest

from activation.core.approvals import (
    ReviewRequest,
    SlackIdentity,
    Verdict,
    code_proof,
    code_verifier,
    read_entries,
    refusal,
)
from activation.defs.promotion.promote import DAGSTER_URL_VAR, default_dagster_url
from activation.lib.destinations import load_destinations
from activation.lib.environment import SANDBOX_SLACK_WEBHOOK_PATH
from activation.lib.review_messages import ButtonBinding, RunSummary
from activation.sandbox.launcher import SandboxProcess, free_port
from activation.tooling.demo import prepare_code_location
from activation.tooling.stack import Process, start_intake
from activation.webhooks import slack, slack_store
from activation.webhooks.signatures import Rejection
from tests.support.gate_support import ROUTING_KEYS
from tests.support.promotion_helpers import (
    PRODUCTION_STEP,
    Invitation,
    Reviewer,
    SlackStandIn,
    button_binding,
    check_marts,
    failure_message,
    location_definitions,
    post_interaction,
    promote_config,
    signed_headers,
    step_metadata,
)
from tests.support.warehouse_path import worker_sandbox

SIGNING_SECRET = "slack-signing-secret-test-0b7d4e"
BOT_TOKEN = "xoxb-slack-bot-token-test-61c2f9"
WEBHOOK_SECRET = "whsec-slack-approval-test-2a94"
TOKEN = "slack-approval-hightouch-token-c81f"
STAGING_SYNC_ID = "403"
PRODUCTION_SYNC_ID = "102"
APPROVE, REJECT = "activation_approve", "activation_reject"
GROUP = "S0REVIEWERS"


@dataclass(frozen=True)
class User:
    id: str
    name: str


ALICE = User("U0ALICE", "alice")  # named in slack_reviewer_ids
BOB = User("U0BOB", "bob")  # a member of GROUP
MALLORY = User("U0MALLORY", "mallory")  # neither


@dataclass
class World:
    home: str
    sandbox: SandboxProcess
    slack: SlackStandIn
    intake: Process
    instance: dg.DagsterInstance
    defs: dg.Definitions
    mart_rows: int

    def promote(self, skip: frozenset[str], act: Any) -> tuple[dg.ExecuteInProcessResult, Any]:
        """Run promote (Slack reviewers: alice, and GROUP) while `act(invitation)` answers."""
        reviewer = Reviewer(self.sandbox, act, skip=skip).start()
        result = self.defs.resolve_job_def("promote").execute_in_process(
            run_config=promote_config(slack_reviewer_ids=[ALICE.id], slack_reviewer_group=GROUP),
            instance=self.instance,
            raise_on_error=False,
        )
        return result, reviewer.join()

    def store_clicks(self) -> list[slack_store.StoredClick]:
        return slack_store.all_clicks(self.sandbox.data_dir / "slack_interactions.sqlite")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The sandbox (with the Slack app's signing secret and the intake as interactivity URL), the
    intake, and the marts built and checked once (no sync)."""
    root = tmp_path_factory.mktemp("slack_approval")
    folder, home = root / "data", root / "dagster_home"
    home.mkdir()
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home))
        patch.setenv("HIGHTOUCH_API_TOKEN", TOKEN)
        patch.setenv("ACTIVATION_SYNC_RETRY_DELAY_SECONDS", "0")
        patch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
        patch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
        patch.setenv(
            "ACTIVATION_SANDBOX_SLACK_INTERACTIVITY_URL",
            f"http://127.0.0.1:{port}/webhooks/slack/interactions",
        )
        for name, value in ROUTING_KEYS.items():
            patch.setenv(name, value)
        load_destinations.cache_clear()
        with (
            dg.instance_for_test(temp_dir=str(home)) as instance,
            worker_sandbox(folder, "--phase-seconds", "0.05", "--rows", "300") as sandbox,
        ):
            env = {**os.environ, "ACTIVATION_WEBHOOK_SECRET": WEBHOOK_SECRET}
            intake = start_intake(port, env, root / "intake.log")
            try:
                prepare_code_location()
                check_marts(instance)
                slack = SlackStandIn(sandbox)
                slack.set_usergroup(GROUP, [BOB.id])
                path = folder / "warehouse.duckdb"
                with duckdb.connect(str(path), read_only=True) as connection:
                    rows = connection.execute(
                        "select count(*) from marts.mart_salesforce_contacts"
                    ).fetchone()[0]
                defs = location_definitions()
                yield World(str(home), sandbox, slack, intake, instance, defs, rows)
            finally:
                intake.stop()
    load_destinations.cache_clear()


@dataclass
class Rejected:
    result: dg.ExecuteInProcessResult
    clicks: dict[str, dict[str, Any]]
    triggers: dict[str, int]
    production_records: int


@pytest.fixture(scope="module")
def rejected(world: World) -> Rejected:
    """Run 1: mallory approves (refused), bob rejects without a reason (refused), bob rejects.
    Alice's click on its message, made before bob's, reaches the intake only during run 2."""

    def act(inv: Invitation) -> dict[str, dict[str, Any]]:
        clicks = {"mallory": world.slack.click(APPROVE, MALLORY.id, MALLORY.name)}
        world.slack.wait_for_ephemeral(MALLORY.id, "not allowed")
        clicks["no_reason"] = world.slack.click(REJECT, BOB.id, BOB.name)
        world.slack.wait_for_ephemeral(BOB.id, "must say why")
        # Alice clicks Approve on this message too; Slack delivers it during run 2.
        clicks["alice_late"] = world.slack.click(APPROVE, ALICE.id, ALICE.name, send=False)
        clicks["reject"] = world.slack.click(
            REJECT, BOB.id, BOB.name, reason="removed count too high"
        )
        return clicks

    result, clicks = world.promote(frozenset(), act)
    return Rejected(
        result,
        clicks,
        world.sandbox.trigger_counts(),
        len(world.sandbox.records("salesforce", "Contact")),
    )


@dataclass
class Approved:
    result: dg.ExecuteInProcessResult
    probes: dict[str, Any]
    triggers_at_decision: dict[str, int]


@pytest.fixture(scope="module")
def approved(world: World, rejected: Rejected) -> Approved:
    """Run 2: forged, stale and misplaced clicks while it waits, then alice approves; then a
    replay of her click and bob's late click."""
    probes: dict[str, Any] = {}

    def act(inv: Invitation) -> None:
        message = world.slack.review_message(inv.run_id)
        # Built and signed by Slack now, delivered below: alice's click, and bob's (his screen
        # still shows the buttons), which reaches the intake only after the decision.
        alice = world.slack.click(
            APPROVE, ALICE.id, ALICE.name, message_ts=message["ts"], send=False
        )["request"]
        probes["alice"], probes["bob_late"] = (
            alice,
            world.slack.click(APPROVE, BOB.id, BOB.name, message_ts=message["ts"], send=False)[
                "request"
            ],
        )
        probes["forged"] = post_interaction(
            alice, signed_headers(alice["body"], "not-the-signing-secret", int(time.time()))
        )
        probes["stale"] = post_interaction(
            alice, signed_headers(alice["body"], SIGNING_SECRET, int(time.time()) - 301)
        )
        probes["earlier_message"] = post_interaction(rejected.clicks["alice_late"]["request"])
        world.slack.wait_for_ephemeral(
            ALICE.id, f"promotion run {rejected.result.run_id} is closed"
        )
        probes["planted"] = world.slack.click(
            APPROVE, ALICE.id, ALICE.name, message_ts=plant_stale_copy(world, message)
        )
        world.slack.wait_for_ephemeral(ALICE.id, "staging run 1 is not the one under review")
        time.sleep(0.6)  # several sign_off polls: nothing may have moved production
        probes["triggers_before_approval"] = world.sandbox.trigger_counts()
        probes["approve"] = post_interaction(alice)

    result, _ = world.promote(frozenset({rejected.result.run_id}), act)
    at_decision = world.sandbox.trigger_counts()
    probes["replay"] = post_interaction(probes["alice"])
    probes["second"] = post_interaction(probes["bob_late"])
    world.slack.wait_for_ephemeral(BOB.id, f"promotion run {result.run_id} is closed")
    return Approved(result, probes, at_decision)


def plant_stale_copy(world: World, message: dict[str, Any]) -> str:
    """Someone holding the webhook URL posts a copy of the review message whose buttons name an
    earlier staging run; returns its ts. Slack signs clicks on it like any other."""
    body = message["posted"]
    stale_value = json.dumps({**button_binding(body), "staging_run_id": "1"})
    blocks = [
        {**b, "elements": [{**e, "value": stale_value} for e in b["elements"]]}
        if b.get("type") == "actions"
        else b
        for b in body["blocks"]
    ]
    before = {m["ts"] for m in world.slack.messages()}
    httpx.post(
        world.sandbox.url + SANDBOX_SLACK_WEBHOOK_PATH,
        json={"text": body["text"], "blocks": blocks},
        timeout=10,
    ).raise_for_status()
    (planted,) = [m["ts"] for m in world.slack.messages() if m["ts"] not in before]
    return planted


# -- an allowed click approves, once --------------------------------------------------------------


def test_an_allowed_click_approves_and_production_runs_once(
    world: World, approved: Approved
) -> None:
    result = approved.result
    assert result.success
    assert approved.probes["approve"].status_code == 200
    assert approved.triggers_at_decision == {STAGING_SYNC_ID: 2, PRODUCTION_SYNC_ID: 1}
    assert len(world.sandbox.records("salesforce", "Contact")) == world.mart_rows

    signed = step_metadata(result, "sign_off")
    assert signed["decision"] == "approve" and signed["reviewer"] == "@alice"
    assert signed["path"] == "slack" and signed["identity_verified"] is True
    assert (signed["slack_user_id"], signed["slack_user_name"], signed["slack_team_id"]) == (
        ALICE.id,
        ALICE.name,
        "T0SANDBOX",
    )
    assert step_metadata(result, PRODUCTION_STEP)["approved_by_slack_user_id"] == ALICE.id
    tags = world.instance.get_run_by_id(result.run_id).tags
    assert tags["activation/sign_off/path"] == "slack"
    assert tags["activation/sign_off/slack_user_id"] == ALICE.id

    # As stored on promotion/approvals: one decision for the run, by the run's own sign_off.
    entries = read_entries(world.instance, since=time.time() - 900)
    decisions = [
        e for e in entries if e.kind == "decision" and e.meta["promotion_run_id"] == result.run_id
    ]
    (decision,) = decisions
    assert (decision.run_id, decision.step_key) == (result.run_id, "sign_off")
    assert decision.meta["slack_user_id"] == ALICE.id and decision.meta["proof"] == ""
    assert decision.meta["source"].startswith("slack click #")


def test_the_message_is_updated_with_the_deciders_name(
    world: World, rejected: Rejected, approved: Approved
) -> None:
    message = world.slack.review_message(approved.result.run_id)
    current = message["current"]
    assert re.search(r"Approved by @alice at \d\d:\d\d UTC", current["text"]), current["text"]
    assert button_binding(current) is None  # the buttons are gone
    code = re.search(r"--code (\S+)", message["posted"]["text"])[1]
    assert code not in str(current)  # and so is the spent code

    earlier = world.slack.review_message(rejected.result.run_id)["current"]
    assert "Rejected by @bob at" in earlier["text"]
    assert "removed count too high" in str(earlier["blocks"])


def test_sign_off_logs_once_how_to_decide_and_never_the_code(
    world: World, approved: Approved
) -> None:
    run_id = approved.result.run_id
    logged = [
        e.user_message
        for e in world.instance.all_logs(run_id)
        if "Decide with one of" in (e.user_message or "")
    ]
    (text,) = logged  # once, however long the wait
    home = f"--dagster-home {world.home}"
    assert f"activation approve {run_id} --reviewer YOUR_NAME --code <code from the review " in text
    assert f"activation reject {run_id} --reviewer YOUR_NAME" in text and home in text
    assert "job `sign_off_decision`" in text and "Approve / Reject in the Slack" in text
    posted = world.slack.review_message(run_id)["posted"]["text"]
    code = re.search(r"--code (\S+)", posted)[1]
    assert code not in text and home in posted  # the message carries both


# -- a click outside the allow-list ---------------------------------------------------------------


def test_a_click_outside_the_allow_list_is_refused_and_production_does_not_run(
    world: World, rejected: Rejected
) -> None:
    assert rejected.clicks["mallory"]["status"] == 200
    assert rejected.clicks["mallory"]["outcome"] == "pending"
    sent = [c for c in rejected.clicks.values() if "seconds" in c]
    assert sent and all(c["seconds"] < 3 for c in sent)  # Slack gives up after 3 s
    (answer,) = [a for a in world.slack.ephemeral(MALLORY.id) if "not allowed" in a["text"]]
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    assert "Slack user @mallory (U0MALLORY) is not allowed" in answer["text"]

    result = rejected.result
    assert not result.success
    message = failure_message(result, "sign_off")
    assert "rejected by @bob (Slack U0BOB)" in message and "removed count too high" in message
    assert rejected.triggers == {STAGING_SYNC_ID: 1}
    assert rejected.production_records == 0

    refusals = [
        e.meta
        for e in read_entries(world.instance, since=time.time() - 900)
        if e.kind == "refused" and e.meta["promotion_run_id"] == result.run_id
    ]
    assert {(m["slack_user_id"], m["decision"]) for m in refusals} == {
        (MALLORY.id, "approve"),
        (BOB.id, "reject"),  # without a reason
    }
    assert all(m["path"] == "slack" and m["identity_verified"] is True for m in refusals)


# -- clicks that must change nothing ---------------------------------------------------------------


def test_a_bad_signature_or_a_stale_timestamp_is_refused_before_anything_is_recorded(
    world: World, approved: Approved
) -> None:
    forged, stale = approved.probes["forged"], approved.probes["stale"]
    assert forged.status_code == 403 and "forged" in forged.json()["reason"]
    assert stale.status_code == 403 and "stale" in stale.json()["reason"]
    assert approved.probes["triggers_before_approval"] == {STAGING_SYNC_ID: 2}
    alice_on_run_2 = [
        c
        for c in world.store_clicks()
        if c.click.user_id == ALICE.id
        and c.click.binding.promotion_run_id == approved.result.run_id
    ]
    # Only the planted copy's click and the real one reached the store.
    assert sorted(c.status for c in alice_on_run_2) == ["accepted", "refused"]


def test_a_click_on_an_earlier_review_message_changes_nothing(
    world: World, approved: Approved
) -> None:
    earlier = approved.probes["earlier_message"]
    assert earlier.status_code == 200 and earlier.headers["X-Activation-Click"] == "refused"
    planted = approved.probes["planted"]
    assert (planted["status"], planted["outcome"]) == (200, "pending")
    texts = [a["text"] for a in world.slack.ephemeral(ALICE.id)]
    assert any("is closed (Rejected by @bob at" in t for t in texts), texts
    assert any("staging run 1 is not the one under review" in t for t in texts), texts
    assert approved.probes["triggers_before_approval"] == {STAGING_SYNC_ID: 2}
    assert step_metadata(approved.result, "sign_off")["staging_run_id"] != "1"


def test_a_replayed_click_and_a_second_click_after_the_decision_change_nothing(
    world: World, approved: Approved
) -> None:
    replay, second = approved.probes["replay"], approved.probes["second"]
    assert replay.status_code == 409 and "replayed" in replay.json()["reason"]
    assert second.status_code == 200 and second.headers["X-Activation-Click"] == "refused"
    assert world.sandbox.trigger_counts() == {STAGING_SYNC_ID: 2, PRODUCTION_SYNC_ID: 1}
    assert len(world.sandbox.records("salesforce", "Contact")) == world.mart_rows
    message = world.slack.review_message(approved.result.run_id)
    assert len(message["updates"]) == 1 and "@alice" in message["current"]["text"]
    decisions = [
        e
        for e in read_entries(world.instance, since=time.time() - 900)
        if e.kind == "decision" and e.meta["promotion_run_id"] == approved.result.run_id
    ]
    assert len(decisions) == 1


# -- secrets --------------------------------------------------------------------------------------


def test_no_secret_code_or_response_url_reaches_the_logs(
    world: World, rejected: Rejected, approved: Approved
) -> None:
    codes = [
        re.search(r"--code (\S+)", m["posted"]["text"])[1]
        for m in world.slack.messages()
        if "--code" in m["posted"].get("text", "")
    ]
    response_urls = [c.click.response_url for c in world.store_clicks()]
    secrets = [SIGNING_SECRET, BOT_TOKEN, WEBHOOK_SECRET, TOKEN, *codes, *response_urls]
    assert codes and response_urls
    for run in (rejected.result, approved.result):
        logs = [(e.user_message or "") + repr(e.dagster_event) for e in
                world.instance.all_logs(run.run_id)]  # fmt: skip
        record = repr(world.instance.get_run_by_id(run.run_id))
        for secret in secrets:
            assert not any(secret in text for text in logs), secret
            assert secret not in record
    intake_log = world.intake.log()
    assert "Slack click: approve of promotion run" in intake_log
    for secret in secrets:
        assert secret not in intake_log
    # The store keeps the click's fields, never the raw body (it echoes the code).
    store = world.sandbox.data_dir / "slack_interactions.sqlite"
    raw = b"".join(p.read_bytes() for p in store.parent.glob(store.name + "*"))
    assert store.exists() and not any(code.encode() in raw for code in codes)


# -- the rules, as pure functions ------------------------------------------------------------------


def _click_body(user_id: str = "U0ALICE") -> bytes:
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": "alice", "team_id": "T1"},
        "team": {"id": "T1"},
        "response_url": "https://hooks.slack.com/actions/T1/1/x",
        "state": {"values": {"activation_reason": {"reason": {"value": " too many "}}}},
        "actions": [
            {
                "action_id": REJECT,
                "value": ButtonBinding("run-1", "run-1", "7", "102", "sc").to_value(),
                "action_ts": "1.5",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def test_slack_signature_click_and_seal_as_pure_functions() -> None:
    body, now = _click_body(), int(time.time())
    signed = slack.signature(SIGNING_SECRET, now, body)
    slack.verify(SIGNING_SECRET, body, str(now), signed)  # accepted
    for args, status, word in [
        ((body + b"x", str(now), signed), 403, "forged"),
        ((body, str(now - 301), slack.signature(SIGNING_SECRET, now - 301, body)), 403, "stale"),
        ((body, str(now), None), 401, "unsigned"),
        ((body, str(now), slack.signature("other", now, body)), 403, "forged"),
    ]:
        with pytest.raises(Rejection) as refused:
            slack.verify(SIGNING_SECRET, *args)
        assert (refused.value.status, refused.value.reason.split(":")[0]) == (status, word)

    click = slack.parse_click(body, now)
    assert click is not None
    assert (click.verdict, click.reason, click.user_id, click.team_id) == (
        "reject",
        "too many",
        "U0ALICE",
        "T1",
    )
    assert click.binding.staging_run_id == "7"
    seal = slack.attest(SIGNING_SECRET, click)
    assert slack.attestation_matches(SIGNING_SECRET, click, seal)
    assert not slack.attestation_matches("other", click, seal)
    forged = slack.Click.from_fields({**click.fields(), "user_id": "U0MALLORY"})
    assert not slack.attestation_matches(SIGNING_SECRET, forged, seal)
    assert (
        slack.parse_click(urlencode({"payload": '{"type": "view_submission"}'}).encode(), now)
        is None
    )


def test_slack_rules_as_pure_functions() -> None:
    request = ReviewRequest(
        promotion_run_id="run-1",
        staging=RunSummary("403", "7", "http://x/7", "success"),
        production_sync="102",
        verifier=code_verifier(code_proof("run-1", "ABCD")),
        allowed_reviewers=("alice",),
        requested_at=1000.0,
        expires_at=2000.0,
        slack_buttons=True,
        slack_reviewer_ids=("U0ALICE",),
        slack_reviewer_group="S0REVIEWERS",
        slack_group_members=("U0BOB",),
    )
    alice, bob, eve = (SlackIdentity(u, n, "T1") for u, n in
                       [("U0ALICE", "alice"), ("U0BOB", "bob"), ("U0EVE", "eve")])  # fmt: skip
    good = {"verdict": Verdict.APPROVE, "reviewer": "@x", "note": "", "staging_run_id": "7",
            "proof": "", "at": 1500.0, "earlier": None}  # fmt: skip
    assert refusal(request, **good, slack=alice) is None
    assert refusal(request, **good, slack=bob) is None  # a member of the group
    assert "U0EVE) is not allowed" in refusal(request, **good, slack=eve)
    assert "not the one under review" in refusal(request, **{**good, "staging_run_id": "6"},
                                                 slack=alice)  # fmt: skip
    no_list = replace(request, slack_reviewer_ids=(), slack_reviewer_group="")
    assert "names its reviewers but no Slack identities" in refusal(no_list, **good, slack=eve)
    assert refusal(replace(no_list, allowed_reviewers=()), **good, slack=eve) is None
    assert "not offered to Slack" in refusal(replace(request, slack_buttons=False), **good,
                                             slack=alice)  # fmt: skip
    strict = replace(request, require_verified_identity=True)
    by_code = {**good, "reviewer": "alice", "proof": code_proof("run-1", "ABCD")}
    assert refusal(request, **by_code) is None
    assert "accepts only Slack decisions" in refusal(strict, **by_code)


def test_dagster_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DAGSTER_URL_VAR, "http://127.0.0.1:3417/")
    assert default_dagster_url() == "http://127.0.0.1:3417"
    monkeypatch.delenv(DAGSTER_URL_VAR)
    assert default_dagster_url() == "http://127.0.0.1:3000"
