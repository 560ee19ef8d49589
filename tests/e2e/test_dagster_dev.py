"""End to end: `dagster dev` (webserver + daemon), the sandbox and the webhook intake as separate
processes; a signed signal makes the daemon's sensor launch one run whose syncs land rows in the
CRM stand-in; a forged signal launches nothing. Every process is stopped by its group id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from activation.lib.destinations import load_destinations
from activation.tooling.stack import Stack, post_signal
from activation.webhooks.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER, generic_signature
from tests.support.e2e_stack import e2e_stack, wait_for

SECRET = "e2e-webhook-secret-93b1f0c2"
TOKEN = "e2e-hightouch-token-4a8d6e17"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with e2e_stack(tmp_path_factory, "e2e", token=TOKEN, secret=SECRET) as running:
        yield running


FAILURES_QUERY = """
query ($id: ID!) { runOrError(runId: $id) { ... on Run { eventConnection { events {
  __typename ... on ExecutionStepFailureEvent { stepKey error { message } }
  ... on RunFailureEvent { message } } } } } }
"""


def _failures(stack: Stack, run_id: str) -> str:
    events = stack.graphql(FAILURES_QUERY, {"id": run_id})["runOrError"]["eventConnection"]
    return "\n".join(
        f"{e.get('stepKey')}: {(e.get('error') or {}).get('message') or e.get('message')}"
        for e in events["events"]
        if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
    )


def test_forged_signal_launches_nothing(stack: Stack) -> None:
    body = b'{"event_id": "forged-1"}'
    stamp = str(int(time.time()))
    forged = httpx.post(
        f"{stack.intake_url}/webhooks/signal",
        content=body,
        headers={
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: generic_signature("guessed", stamp, body),
        },
    )
    assert forged.status_code == 403
    time.sleep(15)  # three webhook-sensor intervals
    assert stack.runs() == []


def test_signed_signal_syncs_rows_into_the_crm_stand_in_once(stack: Stack) -> None:
    contacts = next(d for d in load_destinations() if d.key == "salesforce_contacts")
    assert stack.sandbox.records("salesforce", contacts.object) == {}
    accepted = post_signal(stack.intake_url, SECRET, "landed-1", source="e2e")
    assert accepted.status_code == 202, accepted.text

    records = wait_for(
        "no contact reached the Salesforce stand-in",
        lambda: stack.sandbox.records("salesforce", contacts.object),
        240,
        stack,
    )
    assert len(records) > 0

    def finished() -> list[dict]:
        runs = stack.runs()
        return runs if runs and all(r["status"] in ("SUCCESS", "FAILURE") for r in runs) else []

    runs = wait_for("the run did not finish", finished, 240, stack)
    assert len(runs) == 1, runs
    (run,) = runs
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert run["jobName"] == "build_after_upstream"
    assert tags["activation/webhook-event-id"] == "signal:landed-1"
    assert tags["dagster/sensor_name"] == "webhook_event_sensor"
    assert run["status"] == "SUCCESS", _failures(stack, run["runId"])

    # The same event again is refused, and the mart sensor does not sync the marts a second
    # time (the run that built them synced them itself).
    assert post_signal(stack.intake_url, SECRET, "landed-1").status_code == 409
    time.sleep(15)
    assert [r["runId"] for r in stack.runs()] == [run["runId"]]
    assert TOKEN not in stack.dagster.log() and SECRET not in stack.dagster.log()
