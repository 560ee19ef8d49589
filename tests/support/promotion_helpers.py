"""Helpers for tests/integration/test_promotion.py and test_slack_approval.py: run `promote`
while a reviewer answers.

The reviewer reads the review message from the sandbox's Slack sink (where a real reviewer reads
it), takes the run id, staging run id and approval code from it, and decides through the CLI (in
a subprocess or in process), the `sign_off_decision` job, a raw observation, or by clicking the
message's buttons through the sandbox's Slack stand-in (`SlackStandIn`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import httpx

from activation.sandbox.launcher import SandboxProcess
from activation.tooling import cli
from tests.support.polling import wait_for

_APPROVE = re.compile(
    r"activation approve (?P<run>\S+) --reviewer YOUR_NAME --code (?P<code>\S+) "
    r"--staging-run (?P<staging>\S+)"
)


@dataclass(frozen=True)
class Invitation:
    """What a reviewer learns from the review message."""

    run_id: str
    code: str
    staging_run_id: str
    slack_text: str


def wait_for_invitation(
    sandbox: SandboxProcess, timeout: float = 60.0, skip: frozenset[str] = frozenset()
) -> Invitation:
    """The first review message in the Slack sink whose promote run is not in `skip`."""

    def invitation() -> Invitation | None:
        for message in sandbox.notifications("slack"):
            match = _APPROVE.search(message["body"].get("text", ""))
            if match and match["run"] not in skip:
                return Invitation(
                    match["run"], match["code"], match["staging"], message["body"]["text"]
                )
        return None

    return wait_for("a review message in the Slack sink", invitation, timeout, interval=0.1)


def run_cli(home: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`activation ...` in a child process using the Dagster home `home` (as a reviewer would)."""
    return subprocess.run(
        [sys.executable, "-m", "activation.tooling.cli", *args],
        env={**os.environ, "DAGSTER_HOME": home},
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_cli_here(*args: str) -> subprocess.CompletedProcess[str]:
    """`activation ...` in this process (DAGSTER_HOME set by the test), output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@dataclass
class Reviewer:
    """Runs `act(invitation)` in a thread once the review message is out; keeps what it saw."""

    sandbox: SandboxProcess
    act: Callable[[Invitation], Any]
    skip: frozenset[str] = frozenset()
    """Promote runs whose review messages are not this reviewer's (earlier runs)."""
    invitation: Invitation | None = None
    outcome: Any = None
    error: BaseException | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Reviewer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.invitation = wait_for_invitation(self.sandbox, skip=self.skip)
            self.outcome = self.act(self.invitation)
        except BaseException as error:  # re-raised in the test thread by `join`
            self.error = error

    def join(self) -> Any:
        assert self._thread is not None
        self._thread.join(timeout=120)
        if self.error is not None:
            raise self.error
        return self.outcome


PROMOTED = "salesforce_contacts"
STAGING_STEP = f"staging_sync__{PROMOTED}"
PRODUCTION_STEP = f"production_sync__{PROMOTED}"


def promote_config(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "destination": PROMOTED,
        "allowed_reviewers": ["alice", "bob"],
        "approval_timeout_seconds": 30.0,
        "poll_interval_seconds": 0.2,
    }
    return {**values, **changes}


def location_definitions() -> dg.Definitions:
    """The code location's definitions, with step outputs kept on disk as a deployment keeps
    them (execute_in_process would keep them in memory, and a re-execution could not load
    the approval that `sign_off` handed to production)."""
    from activation.definitions import build_definitions

    return dg.Definitions.merge(
        build_definitions(), dg.Definitions(resources={"io_manager": dg.FilesystemIOManager()})
    )


def promote_job() -> dg.JobDefinition:
    """The promote job, rebuilt from the environment (a re-execution's step processes call
    this again)."""
    return location_definitions().resolve_job_def("promote")


def check_marts(instance: dg.DagsterInstance) -> None:
    """Airbyte, dbt build with every test, the guards and the Python check: everything the
    gate needs before a sync, and no sync."""
    from activation.definitions import build_definitions

    job = build_definitions().resolve_job_def("activate")
    selection = [key for key in job.asset_layer.executable_asset_keys if key.path[0] != "activate"]
    result = job.execute_in_process(
        instance=instance, asset_selection=selection, raise_on_error=False
    )
    assert result.success, [e.step_key for e in result.all_events if e.is_step_failure]


def step_metadata(result: dg.ExecuteInProcessResult, step: str) -> dict[str, Any]:
    """Plain values of the metadata of the step's output."""
    for event in result.all_events:
        if event.step_key == step and event.event_type_value == "STEP_OUTPUT":
            metadata = event.event_specific_data.metadata  # type: ignore[union-attr]
            return {k: v.value for k, v in metadata.items()}
    raise AssertionError(f"step {step} produced no output")


def failure_message(result: dg.ExecuteInProcessResult, step: str) -> str:
    for event in result.all_events:
        if event.step_key == step and event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error  # type: ignore[union-attr]
            return error.message if error else ""
    raise AssertionError(f"step {step} did not fail")


def _run_sign_off_job(instance_ref: Any, form: dict, answer: Any) -> None:
    from activation.defs.promotion.sign_off import sign_off_job

    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        job = sign_off_job
        result = job.execute_in_process(
            run_config={"ops": {"record_sign_off": {"config": form}}},
            instance=instance,
            raise_on_error=False,
        )
        answer.put(result.run_id)


def launch_sign_off_job(instance: dg.DagsterInstance, form: dict) -> str:
    """Run the sign_off_decision job in a child process (two in-process Dagster runs in one
    process contend for Python's logging locks and can deadlock); returns its run id."""
    spawn = multiprocessing.get_context("spawn")
    answer = spawn.Queue()
    child = spawn.Process(target=_run_sign_off_job, args=(instance.get_ref(), form, answer))
    child.start()
    run_id = answer.get(timeout=180)
    child.join(timeout=60)
    return run_id


def run_step_metadata(instance: dg.DagsterInstance, run_id: str, step: str) -> dict[str, Any]:
    """Output metadata of `step` in a finished run, read back from the event log."""
    values: dict[str, Any] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key != step or event.event_type_value != "STEP_OUTPUT":
            continue
        for name, value in event.event_specific_data.metadata.items():
            values[name] = value.value
    return values


# -- Slack: the sandbox's Slack app stand-in, and requests to the intake as an attacker sends them -


@dataclass
class SlackStandIn:
    """Clicks buttons of posted messages as a given Slack user, through the sandbox."""

    sandbox: SandboxProcess

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.sandbox.client() as http:
            response = http.request(method, path, **kwargs)
            response.raise_for_status()
            return response.json()

    def click(
        self,
        action_id: str,
        user_id: str,
        user_name: str,
        *,
        reason: str = "",
        message_ts: str | None = None,
        send: bool = True,
    ) -> dict[str, Any]:
        """The sandbox's answer: the intake's `status`, `outcome` and the signed `request`."""
        body: dict[str, Any] = {
            "action_id": action_id,
            "user_id": user_id,
            "user_name": user_name,
            "reason": reason,
            "send": send,
        }
        if message_ts is not None:
            body["message_ts"] = message_ts
        return self._call("POST", "/sandbox/slack/click", json=body)

    def messages(self) -> list[dict[str, Any]]:
        return self._call("GET", "/sandbox/slack/messages")

    def message(self, ts: str) -> dict[str, Any]:
        (found,) = [m for m in self.messages() if m["ts"] == ts]
        return found

    def ephemeral(self, user_id: str | None = None) -> list[dict[str, Any]]:
        params = {"user": user_id} if user_id else None
        return self._call("GET", "/sandbox/slack/ephemeral", params=params)

    def set_usergroup(self, group_id: str, users: list[str]) -> None:
        self._call("POST", "/sandbox/slack/usergroups", json={"id": group_id, "users": users})

    def review_message(self, promotion_run_id: str) -> dict[str, Any]:
        """The posted message whose buttons are bound to this promote run."""
        for message in self.messages():
            binding = button_binding(message["posted"])
            if binding and binding["promotion_run_id"] == promotion_run_id:
                return message
        raise AssertionError(f"no review message with buttons for promotion run {promotion_run_id}")

    def wait_for_ephemeral(
        self, user_id: str, contains: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        def answer() -> dict[str, Any] | None:
            return next((a for a in self.ephemeral(user_id) if contains in a.get("text", "")), None)

        return wait_for(
            f"an ephemeral answer to {user_id} containing {contains!r}",
            answer,
            timeout,
            interval=0.1,
        )


def button_binding(message: dict[str, Any]) -> dict[str, Any] | None:
    """The value of the message's Approve button, decoded (None without buttons)."""
    for block in message.get("blocks") or []:
        if block.get("type") == "actions":
            for element in block.get("elements") or []:
                if element.get("action_id") == "activation_approve":
                    return json.loads(element["value"])
    return None


def post_interaction(
    request: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    """Send a (captured) interaction request to the intake as is, or with other headers."""
    return httpx.post(
        request["url"],
        content=request["body"].encode(),
        headers=headers or request["headers"],
        timeout=10,
    )


def signed_headers(body: str, secret: str, timestamp: int) -> dict[str, str]:
    """Slack's signature headers for `body`, computed here (as someone holding `secret` would)."""
    base = f"v0:{timestamp}:".encode() + body.encode()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest(),
    }
