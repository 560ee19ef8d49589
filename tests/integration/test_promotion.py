"""The `promote` job with a human sign-off, end to end: real Dagster execution, real dbt checks
on a real DuckDB file, the sandbox's Hightouch over HTTP, decisions from the CLI in a child
process, the CLI in process, the `sign_off_decision` job and raw observations, all against one
SQLite Dagster home. Side effects are counted where they land: triggers at the Hightouch
stand-in, records at the CRM stand-in."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import dagster as dg
import duckdb
import pytest

from activation.core.approvals import (
    APPROVALS_KEY,
    DECISION,
    REVIEW_REQUESTED,
    ReviewRequest,
    Verdict,
    code_proof,
    code_verifier,
    first_decision,
    latest_request,
    new_approval_code,
    read_entries,
    refusal,
)
from activation.dagster_api import tag_run
from activation.defs.promotion.promote import PromotionFormError
from activation.lib.destinations import load_destinations
from activation.lib.environment import SANDBOX_URL_VAR
from activation.lib.review_messages import ADAPTIVE_CARD_CONTENT_TYPE, RunSummary
from activation.resources import build_teams_resource
from activation.sandbox.launcher import SandboxProcess
from activation.tooling import cli as activation_cli
from activation.tooling.demo import prepare_code_location
from tests.support.gate_support import ROUTING_KEYS
from tests.support.promotion_helpers import (
    PRODUCTION_STEP,
    STAGING_STEP,
    Invitation,
    Reviewer,
    check_marts,
    failure_message,
    launch_sign_off_job,
    location_definitions,
    promote_config,
    promote_job,
    run_cli,
    run_cli_here,
    run_step_metadata,
    step_metadata,
)
from tests.support.sandbox_marts import reset
from tests.support.warehouse_path import worker_sandbox

TOKEN = "promotion-test-token-7d3e91aa"
STAGING_SYNC_ID = "403"  # salesforce_contacts' staging twin, declared in destinations.yaml
PRODUCTION_SYNC_ID = "102"  # salesforce-contacts


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = str(tmp_path_factory.mktemp("dagster_home"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", folder)
        yield folder


@pytest.fixture(scope="module")
def instance(home: str) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=home) as inst:
        yield inst


@pytest.fixture(scope="module")
def promo_sandbox(
    tmp_path_factory: pytest.TempPathFactory, instance: dg.DagsterInstance
) -> Iterator[SandboxProcess]:
    """The sandbox selected through the environment, with the marts built and checked once (no
    sync): the state in which a team would start a promotion."""
    folder = tmp_path_factory.mktemp("promotion") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HIGHTOUCH_API_TOKEN", TOKEN)
        patch.setenv("ACTIVATION_SYNC_RETRY_DELAY_SECONDS", "0")
        for name, value in ROUTING_KEYS.items():
            patch.setenv(name, value)
        load_destinations.cache_clear()
        with worker_sandbox(folder, "--phase-seconds", "0.05", "--rows", "300") as sandbox:
            prepare_code_location()
            check_marts(instance)
            yield sandbox


@pytest.fixture(scope="module")
def mart_rows(promo_sandbox: SandboxProcess) -> int:
    path = promo_sandbox.data_dir / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute("select count(*) from marts.mart_salesforce_contacts").fetchone()[
            0
        ]


@pytest.fixture
def sandbox(promo_sandbox: SandboxProcess) -> SandboxProcess:
    return reset(promo_sandbox)


@pytest.fixture(scope="module")
def defs(promo_sandbox: SandboxProcess) -> dg.Definitions:
    return location_definitions()


def promote(
    defs: dg.Definitions, instance: dg.DagsterInstance, **config: object
) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("promote").execute_in_process(
        run_config=promote_config(**config), instance=instance, raise_on_error=False
    )


def production_records(sandbox: SandboxProcess) -> dict[str, dict]:
    return sandbox.records("salesforce", "Contact")


def approve_args(invitation: Invitation, reviewer: str = "alice", **extra: str) -> list[str]:
    args = ["approve", invitation.run_id, "--reviewer", reviewer, "--code", invitation.code]
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", value]
    return args


def reject_args(invitation: Invitation, reviewer: str = "bob", reason: str = "too many") -> list:
    return [
        "reject", invitation.run_id, "--reviewer", reviewer, "--code", invitation.code,
        "--reason", reason,
    ]  # fmt: skip


# -- approval -------------------------------------------------------------------------------------


def test_cli_approval_promotes_once_and_records_the_decision_in_the_run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sandbox: SandboxProcess,
    home: str,
    mart_rows: int,
) -> None:
    reviewer = Reviewer(
        sandbox, lambda inv: run_cli(home, *approve_args(inv, "Alice", comment="counts look right"))
    ).start()
    result = promote(defs, instance)
    answer = reviewer.join()

    assert answer.returncode == 0, answer.stderr
    assert "Recorded: approve of promotion run" in answer.stdout and "by Alice" in answer.stdout
    assert result.success
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    assert len(production_records(sandbox)) == mart_rows
    assert len(sandbox.records("salesforce", "Contact_staging")) == mart_rows

    staging = step_metadata(result, STAGING_STEP)
    signed = step_metadata(result, "sign_off")
    assert staging["planned_added"] == mart_rows
    assert signed["reviewer"] == "Alice" and signed["decision"] == "approve"
    assert signed["comment"] == "counts look right"
    assert signed["staging_run_id"] == staging["hightouch_run_id"]
    assert signed["staging_planned_added"] == mart_rows and signed["staging_failed_added"] == 0
    assert datetime.fromisoformat(signed["decided_at"]).utcoffset().total_seconds() == 0
    assert "proof" not in signed
    production = step_metadata(result, PRODUCTION_STEP)
    assert production["hightouch_sync_id"] == PRODUCTION_SYNC_ID
    assert production["successful_added"] == mart_rows and production["approved_by"] == "Alice"

    tags = instance.get_run_by_id(result.run_id).tags
    assert tags["activation/sign_off/reviewer"] == "Alice"
    assert tags["activation/sign_off/decision"] == "approve"
    assert tags["activation/sign_off/staging_run_id"] == staging["hightouch_run_id"]

    # The decision reads back from the approvals asset, as any process would read it.
    entries = read_entries(instance, since=time.time() - 600)
    request = latest_request(entries, result.run_id)
    decision = first_decision(request, entries)
    assert decision is not None and decision.reviewer == "Alice"
    assert abs(decision.decided_at - time.time()) < 120 and decision.source == "cli"
    in_run = [
        e.event_specific_data.asset_observation.metadata  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION" and e.asset_key == APPROVALS_KEY
    ]
    assert [m["kind"].value for m in in_run] == ["review_requested", "sign_off"]

    # Nothing but the review channel holds the code; the promote run stores only its verifier.
    assert answer and reviewer.invitation is not None
    code = reviewer.invitation.code
    for entry in instance.all_logs(result.run_id):
        assert code not in (entry.user_message or "") and code not in repr(entry.dagster_event)
    assert request.verifier == code_verifier(code_proof(result.run_id, code))


def test_review_message_and_card_carry_the_counts_and_how_to_answer(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess, mart_rows: int
) -> None:
    reviewer = Reviewer(
        sandbox, lambda inv: activation_cli.main(reject_args(inv, reason="checking the message"))
    ).start()
    result = promote(defs, instance)
    assert reviewer.join() == 0
    invitation = reviewer.invitation
    assert invitation is not None

    staging_run = step_metadata(result, STAGING_STEP)["hightouch_run_id"]
    slack = invitation.slack_text
    assert f"Staging Hightouch run {staging_run} (success)" in slack
    assert f"+{mart_rows} added, ~0 changed, -0 removed" in slack
    assert "0 failed (0 added, 0 changed, 0 removed)" in slack
    assert f"activation reject {invitation.run_id} --reviewer YOUR_NAME --code" in slack
    assert "job `sign_off_decision`" in slack and "Allowed reviewers: alice, bob" in slack

    (card_message,) = [n["body"] for n in sandbox.notifications("teams")][:1]
    assert card_message["type"] == "message"
    (attachment,) = card_message["attachments"]
    assert attachment["contentType"] == ADAPTIVE_CARD_CONTENT_TYPE
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet"
             for f in b["facts"]}  # fmt: skip
    assert facts["Staging Hightouch run"] == f"{staging_run} (success)"
    assert facts["Planned"] == f"+{mart_rows} added, ~0 changed, -0 removed"
    assert facts["Failed"].startswith("0 failed")
    assert facts["Approval code"] == invitation.code
    assert any(a["url"].endswith(f"/runs/{staging_run}") for a in card["actions"])
    texts = json.dumps(card["body"])
    assert f"activation approve {invitation.run_id}" in texts


def test_sign_off_job_approves_from_the_launchpad_form(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess, mart_rows: int
) -> None:
    def launch(inv: Invitation) -> str:
        form = {
            "promotion_run_id": inv.run_id,
            "decision": "approve",
            "reviewer": "bob",
            "approval_code": inv.code,
            "comment": "from the UI",
            "staging_run_id": inv.staging_run_id,
        }
        # As from the Launchpad: a run of its own, in a process of its own.
        return launch_sign_off_job(instance, form)

    reviewer = Reviewer(sandbox, launch).start()
    result = promote(defs, instance)
    launched_run_id = reviewer.join()

    launched = instance.get_run_by_id(launched_run_id)
    assert launched is not None and launched.status == dg.DagsterRunStatus.SUCCESS
    assert result.success
    recorded = run_step_metadata(instance, launched_run_id, "record_sign_off")
    assert recorded["reviewer"] == "bob" and recorded["source"].startswith("sign_off_decision run")
    signed = step_metadata(result, "sign_off")
    assert (signed["reviewer"], signed["comment"], signed["decision"]) == (
        "bob",
        "from the UI",
        "approve",
    )
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    assert len(production_records(sandbox)) == mart_rows
    announced = sandbox.notifications("slack")[-1]["body"]["text"]
    production_run = step_metadata(result, PRODUCTION_STEP)["hightouch_run_id"]
    assert (
        "Promoted salesforce_contacts to production sync 102" in announced
        and production_run in announced
    )


# -- no production sync without a valid decision --------------------------------------------------


def test_rejection_fails_the_run_naming_reviewer_and_reason(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess, home: str
) -> None:
    reviewer = Reviewer(
        sandbox, lambda inv: run_cli(home, *reject_args(inv, "bob", "removed count too high"))
    ).start()
    result = promote(defs, instance)
    answer = reviewer.join()

    assert answer.returncode == 0, answer.stderr
    assert not result.success
    message = failure_message(result, "sign_off")
    assert "rejected by bob" in message and "removed count too high" in message
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1}
    assert production_records(sandbox) == {}
    assert instance.get_run_by_id(result.run_id).tags["activation/sign_off/decision"] == "reject"


def test_no_decision_expires_and_production_never_fires(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess, home: str
) -> None:
    result = promote(defs, instance, approval_timeout_seconds=1.5)

    assert not result.success
    assert "approval expired" in failure_message(result, "sign_off")
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1}
    assert production_records(sandbox) == {}
    texts = [n["body"]["text"] for n in sandbox.notifications("slack")]
    assert any(t.startswith("Promotion expired") for t in texts)
    late = run_cli(home, "approve", result.run_id, "--reviewer", "alice", "--code", "AAAA-BBBB")
    assert late.returncode == 1 and "has already ended" in late.stderr


def _forge(instance: dg.DagsterInstance, inv: Invitation) -> str:
    """An observation claiming an approval, written by someone who has UI access only."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=APPROVALS_KEY,
            metadata={
                "kind": DECISION,
                "decision_id": uuid.uuid4().hex,
                "promotion_run_id": inv.run_id,
                "decision": "approve",
                "reviewer": "alice",
                "decided_at_ts": time.time(),
                "staging_run_id": inv.staging_run_id,
                "proof": code_proof(inv.run_id, new_approval_code()),
            },
        )
    )
    return "forged"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-run", "no Dagster run"),
        ("other-finished-run", "has not requested a review"),
        ("stale-staging-run", "is not the one under review"),
        ("wrong-code", "wrong code"),
        ("missing-code", "approval code: missing"),
        ("reviewer-not-allowed", "'mallory' is not allowed"),
    ],
)
def test_refused_decision_leaves_production_untouched(
    case: str,
    expected: str,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sandbox: SandboxProcess,
    home: str,
) -> None:
    finished = dg.materialize([_noop_asset], instance=instance)  # a run that is no promotion

    def act(inv: Invitation) -> tuple[object, object]:
        args = approve_args(inv)
        if case == "unknown-run":
            args[1] = str(uuid.uuid4())
        elif case == "other-finished-run":
            args[1] = finished.run_id
        elif case == "stale-staging-run":
            args = approve_args(inv, staging_run="999999")
        elif case == "wrong-code":
            args[args.index("--code") + 1] = "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ"
        elif case == "missing-code":
            args[args.index("--code") + 1] = ""
        elif case == "reviewer-not-allowed":
            args = approve_args(inv, "mallory")
        refused = run_cli_here(*args)
        time.sleep(0.6)  # several sign_off polls: it must not move on
        # End the run quickly and legitimately, so the test does not wait for the timeout.
        return refused, run_cli_here(*reject_args(inv, "bob", f"closing {case}"))

    reviewer = Reviewer(sandbox, act).start()
    result = promote(defs, instance)
    refused, closing = reviewer.join()

    assert refused.returncode == 1 and expected in refused.stderr, refused.stderr
    assert closing.returncode == 0, closing.stderr
    assert not result.success
    assert f"closing {case}" in failure_message(result, "sign_off")
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1}
    assert production_records(sandbox) == {}
    refusals = [
        e.meta for e in read_entries(instance, since=time.time() - 120) if e.kind == "refused"
    ]
    assert any(expected in str(m["refusal"]) for m in refusals)
    assert all("proof" not in m for m in refusals)


@dg.asset
def _noop_asset() -> None:
    return None


def test_observation_without_the_code_is_ignored(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess, home: str
) -> None:
    def act(inv: Invitation) -> object:
        _forge(instance, inv)
        time.sleep(0.6)
        return run_cli_here(*reject_args(inv, "bob", "closing forged"))

    reviewer = Reviewer(sandbox, act).start()
    result = promote(defs, instance)
    assert reviewer.join().returncode == 0
    assert not result.success and "closing forged" in failure_message(result, "sign_off")
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1}
    warnings = [
        e.user_message for e in instance.all_logs(result.run_id) if "Ignored a decision" in
        (e.user_message or "")
    ]  # fmt: skip
    assert any("wrong code" in w for w in warnings), warnings


def test_second_decision_is_refused_and_logged(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess, home: str
) -> None:
    def act(inv: Invitation) -> tuple[object, object]:
        first = run_cli(home, *approve_args(inv, "alice"))
        return first, run_cli(home, *reject_args(inv, "bob", "second thoughts"))

    reviewer = Reviewer(sandbox, act).start()
    result = promote(defs, instance)
    first, second = reviewer.join()

    assert first.returncode == 0, first.stderr
    assert second.returncode == 1 and "already decided: approve by alice" in second.stderr
    assert result.success
    assert step_metadata(result, "sign_off")["reviewer"] == "alice"
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    refusals = [e.meta for e in read_entries(instance, since=time.time() - 120)]
    assert any(
        m.get("kind") == "refused" and m.get("reviewer") == "bob" and
        m.get("promotion_run_id") == result.run_id for m in refusals
    )  # fmt: skip


def test_invalid_form_is_refused_before_the_run_exists(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess
) -> None:
    runs_before = len(instance.get_run_records(limit=1000))
    with pytest.raises(dg.DagsterConfigMappingFunctionError) as raised:
        promote(defs, instance, destination="salesforce_contact", notify_slack=False,
                notify_teams=False)  # fmt: skip
    error = raised.value.__cause__
    assert isinstance(error, PromotionFormError)
    message = str(error)
    assert "destination: 'salesforce_contact' is not a declared destination" in message
    for key in ("salesforce_accounts", "salesforce_contacts", "hubspot_contacts"):
        assert key in message
    assert "notify_slack / notify_teams" in message
    assert len(instance.get_run_records(limit=1000)) == runs_before
    assert sandbox.trigger_counts() == {}


# -- records, secrets, and the one non-public call -----------------------------------------------


def test_the_api_token_never_reaches_runs_or_logs(instance: dg.DagsterInstance) -> None:
    records = instance.get_run_records(limit=200)
    assert records
    for record in records:
        run = record.dagster_run
        assert TOKEN not in repr(run.run_config) and TOKEN not in repr(run.tags)
        for entry in instance.all_logs(run.run_id):
            assert TOKEN not in (entry.user_message or "")
            assert TOKEN not in repr(entry.dagster_event)


def test_tag_run_adds_tags_to_a_run(instance: dg.DagsterInstance) -> None:
    result = dg.materialize([_noop_asset], instance=instance)
    tag_run(instance, result.run_id, {"activation/sign_off/reviewer": "alice"})
    assert instance.get_run_by_id(result.run_id).tags["activation/sign_off/reviewer"] == "alice"


def _request(**changes: object) -> ReviewRequest:
    values: dict = {
        "promotion_run_id": "run-1",
        "staging": RunSummary("403", "7", "http://x/7", "success", planned_added=3),
        "production_sync": "102",
        "verifier": code_verifier(code_proof("run-1", "ABCD-EFGH")),
        "allowed_reviewers": ("alice",),
        "requested_at": 1000.0,
        "expires_at": 2000.0,
    }
    return ReviewRequest(**{**values, **changes})


def test_the_rules_as_pure_functions() -> None:
    request = _request()
    good = {
        "verdict": Verdict.APPROVE,
        "reviewer": "ALICE",
        "note": "",
        "staging_run_id": "7",
        "proof": code_proof("run-1", "abcd efgh"),  # case and spacing do not matter
        "at": 1500.0,
        "earlier": None,
    }
    assert refusal(request, **good) is None
    assert "expired" in refusal(request, **{**good, "at": 2000.5})
    assert "not the one under review" in refusal(request, **{**good, "staging_run_id": "6"})
    assert "not allowed" in refusal(request, **{**good, "reviewer": "eve"})
    assert "wrong code" in refusal(request, **{**good, "proof": code_proof("run-2", "ABCD-EFGH")})
    assert "must say why" in refusal(request, **{**good, "verdict": Verdict.REJECT})
    assert refusal(_request(allowed_reviewers=()), **{**good, "reviewer": "eve"}) is None
    codes = {new_approval_code() for _ in range(50)}
    assert len(codes) == 50 and all(len(c) == 29 and c[0] != "-" for c in codes)


def test_definitions_load_with_teams_from_the_environment(
    defs: dg.Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    dg.Definitions.validate_loadable(defs)
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"promote", "sign_off_decision"}
    monkeypatch.delenv(SANDBOX_URL_VAR)
    teams = build_teams_resource()
    assert isinstance(teams.webhook_url, dg.EnvVar) and teams.webhook_url.env_var_name == (
        "TEAMS_WEBHOOK_URL"
    )


# -- attacks on the guarded path: each counts triggers at the Hightouch stand-in ------------------


def reexecute(
    instance: dg.DagsterInstance,
    parent_run_id: str,
    steps: list[str] | None = None,
    **config: object,
) -> dg.ExecuteJobResult:
    """Re-execute a promote run as the UI does: from failure, or chosen steps, with the run
    config given (the form may be changed on re-execution)."""
    options = (
        dg.ReexecutionOptions.from_failure(parent_run_id, instance)
        if steps is None
        else dg.ReexecutionOptions(parent_run_id=parent_run_id, step_selection=steps)
    )
    return dg.execute_job(
        dg.reconstructable(promote_job),
        instance=instance,
        reexecution_options=options,
        run_config=promote_config(**config),
        raise_on_error=False,
    )


def approved_promotion(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess, home: str
) -> dg.ExecuteInProcessResult:
    reviewer = Reviewer(sandbox, lambda inv: run_cli(home, *approve_args(inv, "alice"))).start()
    result = promote(defs, instance)
    assert reviewer.join().returncode == 0
    return result


def test_a_closed_gate_refuses_promote_before_the_staging_sync(
    defs: dg.Definitions, sandbox: SandboxProcess
) -> None:
    # A fresh instance: no check of the mart ever ran in a run of this code location.
    with dg.instance_for_test() as fresh:
        result = promote(defs, fresh)
    assert not result.success
    message = failure_message(result, STAGING_STEP)
    assert "refused to trigger Hightouch" in message and "Nothing was sent" in message
    assert sandbox.trigger_counts() == {}
    assert sandbox.records("salesforce", "Contact_staging") == {}
    assert not any("activation approve" in n["body"].get("text", "")
                   for n in sandbox.notifications("slack"))  # fmt: skip


def test_a_reexecution_after_a_lost_poll_reattaches_to_the_approved_run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sandbox: SandboxProcess,
    home: str,
    mart_rows: int,
) -> None:
    def approve_then_lose_the_polls(inv: Invitation) -> object:
        # Hightouch accepts the production trigger; every read of its runs then answers 503.
        sandbox.inject_fault(
            kind="status", status=503, path_regex=f"/syncs/{PRODUCTION_SYNC_ID}/runs",
            method="GET", count=10_000,
        )  # fmt: skip
        return run_cli(home, *approve_args(inv, "alice"))

    reviewer = Reviewer(sandbox, approve_then_lose_the_polls).start()
    failed = promote(defs, instance)
    assert reviewer.join().returncode == 0
    assert not failed.success
    assert "503" in failure_message(failed, PRODUCTION_STEP)
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    sandbox.clear_faults()

    rerun = reexecute(instance, failed.run_id)
    assert rerun.success
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    assert len(production_records(sandbox)) == mart_rows
    log = " ".join(e.user_message or "" for e in instance.all_logs(rerun.run_id))
    assert "Re-attaching to Hightouch run" in log


def test_a_replay_or_a_retarget_of_an_approved_run_is_refused(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sandbox: SandboxProcess,
    home: str,
    mart_rows: int,
) -> None:
    done = approved_promotion(defs, instance, sandbox, home)
    assert done.success
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    steps = [PRODUCTION_STEP, "announce"]

    replay = reexecute(instance, done.run_id, steps)
    assert not replay.success
    assert "already used by Hightouch run" in failure_message(replay, PRODUCTION_STEP)

    flag = reexecute(instance, done.run_id, steps, full_resync=True)
    assert not flag.success
    message = failure_message(flag, PRODUCTION_STEP)
    assert "does not cover" in message and "full_resync=False" in message

    other = reexecute(instance, done.run_id, steps, destination="salesforce_accounts")
    assert not other.success
    message = failure_message(other, PRODUCTION_STEP)
    assert "destination salesforce_contacts" in message and "salesforce_accounts" in message

    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    assert len(production_records(sandbox)) == mart_rows
    approvals = [
        e.user_message
        for e in instance.all_logs(other.run_id)
        if "Promoted" in (e.user_message or "")
    ]
    assert approvals == []


def test_a_review_request_planted_from_outside_the_run_is_ignored(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess
) -> None:
    planted_code = new_approval_code()

    def plant_then_decide(inv: Invitation) -> tuple[object, object]:
        # Someone with instance access writes a review request for the run, with a code they
        # know, hoping to approve with it (or to block the real reviewer).
        request = ReviewRequest(
            promotion_run_id=inv.run_id,
            staging=RunSummary(STAGING_SYNC_ID, inv.staging_run_id, "http://x", "success"),
            production_sync=PRODUCTION_SYNC_ID,
            verifier=code_verifier(code_proof(inv.run_id, planted_code)),
            allowed_reviewers=("mallory",),
            requested_at=time.time(),
            expires_at=time.time() + 600,
            destination="salesforce_contacts",
            run_family=inv.run_id,
        )
        instance.report_runless_asset_event(
            dg.AssetObservation(asset_key=APPROVALS_KEY, metadata=request.metadata())
        )
        forged = run_cli_here(
            "approve", inv.run_id, "--reviewer", "mallory", "--code", planted_code
        )
        return forged, run_cli_here(*approve_args(inv, "alice"))

    reviewer = Reviewer(sandbox, plant_then_decide).start()
    result = promote(defs, instance)
    forged, real = reviewer.join()
    assert forged.returncode == 1, forged.stdout
    assert real.returncode == 0, real.stderr
    assert result.success
    assert step_metadata(result, "sign_off")["reviewer"] == "alice"
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1, PRODUCTION_SYNC_ID: 1}
    entries = read_entries(instance, since=time.time() - 120)
    planted = [e for e in entries if e.kind == REVIEW_REQUESTED and not e.run_id]
    assert planted, "the planted request must be on record, and ignored"


def test_a_slack_failure_still_tries_teams_then_fails_the_review(
    defs: dg.Definitions, instance: dg.DagsterInstance, sandbox: SandboxProcess
) -> None:
    sandbox.inject_fault(kind="status", status=500, path="/slack/", count=10_000)
    result = promote(defs, instance)
    assert not result.success
    message = failure_message(result, "request_review")
    assert "slack" in message and "reached: teams" in message
    (card,) = [n["body"] for n in sandbox.notifications("teams")]
    assert "activation approve" in json.dumps(card)
    assert sandbox.trigger_counts() == {STAGING_SYNC_ID: 1}
    assert production_records(sandbox) == {}
