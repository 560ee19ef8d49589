"""The webhook intake over real HTTP: `activation webhooks` in a child process on a free port.

Each request kind gets the status the intake promises, and only accepted events are recorded in
the intake's SQLite file (which the sensor reads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activation.sandbox.launcher import free_port
from activation.tooling.stack import Process, post_fivetran, post_signal, start_intake
from activation.webhooks import store
from activation.webhooks.intake import MAX_BODY_BYTES
from activation.webhooks.signatures import (
    FIVETRAN_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Rejection,
    fivetran_signature,
    generic_signature,
    verify_fivetran,
    verify_generic,
)

SECRET = "whsec-test-7d0c41a9e2b35f86"


def fivetran_payload(sync_id: str, *, event: str = "sync_end", status: str = "SUCCESSFUL") -> dict:
    return {
        "event": event,
        "created": "2026-11-29T04:00:00.000Z",
        "connector_type": "postgres",
        "connector_id": "crm_postgres",
        "connector_name": "crm",
        "sync_id": sync_id,
        "destination_group_id": "warehouse",
        "data": {"status": status},
    }


class Intake:
    def __init__(self, process: Process, url: str, data_dir: Path) -> None:
        self.process, self.url, self.data_dir = process, url, data_dir

    def recorded(self) -> list[str]:
        return [e.event_id for e in store.events_after(self.data_dir / "webhooks.sqlite", 0)]


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    data_dir = tmp_path_factory.mktemp("intake") / "data"
    env = {**os.environ, "ACTIVATION_WEBHOOK_SECRET": SECRET, "ACTIVATION_DATA_DIR": str(data_dir)}
    port = free_port()
    process = start_intake(port, env, data_dir / "intake.log")
    try:
        yield Intake(process, f"http://127.0.0.1:{port}", data_dir)
    finally:
        process.stop()


def _signed(body: bytes, *, timestamp: int | None = None, secret: str = SECRET) -> dict:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: generic_signature(secret, stamp, body),
    }


def test_valid_signal_is_accepted_and_recorded_once(intake: Intake) -> None:
    response = post_signal(intake.url, SECRET, "evt-valid-1", source="snowflake-task")
    assert response.status_code == 202, response.text
    assert response.json()["event_id"] == "signal:evt-valid-1"
    assert "signal:evt-valid-1" in intake.recorded()


def test_valid_fivetran_sync_end_is_accepted_and_other_events_ignored(intake: Intake) -> None:
    accepted = post_fivetran(intake.url, SECRET, fivetran_payload("sync-a1"))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["event_id"] == "fivetran:sync-a1"
    started = post_fivetran(intake.url, SECRET, fivetran_payload("sync-a2", event="sync_start"))
    failed = post_fivetran(intake.url, SECRET, fivetran_payload("sync-a3", status="FAILURE"))
    assert (started.status_code, started.json()["status"]) == (200, "ignored")
    assert (failed.status_code, failed.json()["status"]) == (200, "ignored")
    recorded = intake.recorded()
    assert "fivetran:sync-a1" in recorded
    assert not {"fivetran:sync-a2", "fivetran:sync-a3"} & set(recorded)


def test_unsigned_requests_get_401_and_record_nothing(intake: Intake) -> None:
    before = intake.recorded()
    body = json.dumps({"event_id": "evt-unsigned"}).encode()
    plain = httpx.post(f"{intake.url}/webhooks/signal", content=body)
    no_stamp = httpx.post(
        f"{intake.url}/webhooks/signal",
        content=body,
        headers={SIGNATURE_HEADER: generic_signature(SECRET, "1", body)},
    )
    fivetran = httpx.post(
        f"{intake.url}/webhooks/fivetran", content=json.dumps(fivetran_payload("sync-u"))
    )
    assert [r.status_code for r in (plain, no_stamp, fivetran)] == [401, 401, 401]
    assert "unsigned" in plain.json()["reason"]
    assert intake.recorded() == before


def test_wrong_signature_gets_403_and_records_nothing(intake: Intake) -> None:
    before = intake.recorded()
    body = json.dumps({"event_id": "evt-forged"}).encode()
    forged = httpx.post(
        f"{intake.url}/webhooks/signal", content=body, headers=_signed(body, secret="guessed")
    )
    tampered = httpx.post(
        f"{intake.url}/webhooks/signal",
        content=json.dumps({"event_id": "evt-forged-2"}).encode(),
        headers=_signed(body),  # signed for another body
    )
    payload = json.dumps(fivetran_payload("sync-f")).encode()
    fivetran = httpx.post(
        f"{intake.url}/webhooks/fivetran",
        content=payload,
        headers={FIVETRAN_SIGNATURE_HEADER: fivetran_signature("guessed", payload)},
    )
    assert [r.status_code for r in (forged, tampered, fivetran)] == [403, 403, 403]
    assert "forged" in forged.json()["reason"]
    assert intake.recorded() == before


def test_stale_or_future_timestamp_gets_403(intake: Intake) -> None:
    before = intake.recorded()
    stale = post_signal(intake.url, SECRET, "evt-stale", timestamp=int(time.time()) - 3600)
    future = post_signal(intake.url, SECRET, "evt-future", timestamp=int(time.time()) + 3600)
    assert (stale.status_code, future.status_code) == (403, 403)
    assert "stale" in stale.json()["reason"]
    assert intake.recorded() == before


def test_replayed_event_id_gets_409_and_is_recorded_once(intake: Intake) -> None:
    first = post_signal(intake.url, SECRET, "evt-replay")
    again = post_signal(intake.url, SECRET, "evt-replay")  # fresh timestamp, valid signature
    assert (first.status_code, again.status_code) == (202, 409)
    assert "replayed" in again.json()["reason"]
    payload = fivetran_payload("sync-replay")
    assert post_fivetran(intake.url, SECRET, payload).status_code == 202
    assert post_fivetran(intake.url, SECRET, payload).status_code == 409
    recorded = intake.recorded()
    assert recorded.count("signal:evt-replay") == 1
    assert recorded.count("fivetran:sync-replay") == 1


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"source": "no id"}', b'{"event_id": ""}', b'{"event_id": 7}'],
    ids=["not-json", "not-object", "no-event-id", "empty-id", "id-not-string"],
)
def test_malformed_signed_body_gets_400(intake: Intake, body: bytes) -> None:
    before = intake.recorded()
    response = httpx.post(f"{intake.url}/webhooks/signal", content=body, headers=_signed(body))
    assert response.status_code == 400, response.text
    assert "malformed" in response.json()["reason"]
    assert intake.recorded() == before


def test_signed_fivetran_body_without_an_event_gets_400(intake: Intake) -> None:
    payload = fivetran_payload("sync-m")
    del payload["event"]
    response = post_fivetran(intake.url, SECRET, payload)
    assert response.status_code == 400
    assert "event" in response.json()["reason"]


def test_malformed_unsigned_body_is_refused_as_unsigned_before_parsing(intake: Intake) -> None:
    assert httpx.post(f"{intake.url}/webhooks/signal", content=b"{not json").status_code == 401


def test_oversized_body_gets_413(intake: Intake) -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    response = httpx.post(f"{intake.url}/webhooks/signal", content=body, headers=_signed(body))
    assert response.status_code == 413
    assert "over" in response.json()["reason"]


def _status_kib(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/<pid>/status (VmRSS now, VmHWM its peak), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """`total` bytes in chunks; a generator body makes httpx send it chunked, without a length."""
    chunk = b"x" * size
    sent = 0
    while sent < total:
        piece = chunk[: min(size, total - sent)]
        sent += len(piece)
        yield piece


def test_huge_chunked_body_is_refused_without_being_held_in_memory(intake: Intake) -> None:
    pid = intake.process.process.pid
    before = _status_kib(pid, "VmRSS")
    total = 200 << 20
    response = httpx.post(
        f"{intake.url}/webhooks/signal",
        content=_chunks(total),
        headers=_signed(b"whatever"),
        timeout=120,
    )
    assert response.status_code == 413, response.text
    assert "content-length" not in response.request.headers
    # The peak since start (VmHWM) bounds whatever the intake held while the body streamed in.
    grown_mib = (_status_kib(pid, "VmHWM") - before) / 1024
    assert grown_mib < 50, f"the intake grew by {grown_mib:.0f} MiB for a {total >> 20} MiB body"
    assert post_signal(intake.url, SECRET, "evt-after-huge").status_code == 202


def _padded_signal(event_id: str, size: int) -> bytes:
    body = json.dumps({"event_id": event_id}).encode()
    return body + b" " * (size - len(body))


def test_chunked_body_up_to_the_limit_is_read_whole_and_one_byte_more_refused(
    intake: Intake,
) -> None:
    at_limit = _padded_signal("evt-chunked-limit", MAX_BODY_BYTES)
    accepted = httpx.post(
        f"{intake.url}/webhooks/signal",
        content=(at_limit[i : i + 100_000] for i in range(0, len(at_limit), 100_000)),
        headers=_signed(at_limit),
    )
    assert accepted.status_code == 202, accepted.text
    over = _padded_signal("evt-chunked-over", MAX_BODY_BYTES + 1)
    refused = httpx.post(
        f"{intake.url}/webhooks/signal",
        content=(over[i : i + 100_000] for i in range(0, len(over), 100_000)),
        headers=_signed(over),
    )
    assert refused.status_code == 413
    assert "signal:evt-chunked-over" not in intake.recorded()


def test_secret_never_reaches_the_intake_log(intake: Intake) -> None:
    post_signal(intake.url, SECRET, "evt-log-check")
    httpx.post(f"{intake.url}/webhooks/signal", content=b"{}", headers=_signed(b"{}", secret="x"))
    log = intake.process.log()
    assert "accepted webhook event signal:evt-log-check" in log
    assert SECRET not in log


def test_missing_secret_fails_at_start_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACTIVATION_WEBHOOK_SECRET"}
    env["ACTIVATION_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "activation.tooling.cli", "webhooks", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ACTIVATION_WEBHOOK_SECRET is not set" in result.stderr


def test_signature_rules_directly() -> None:
    body = b'{"event_id": "x"}'
    verify_fivetran(SECRET, body, fivetran_signature(SECRET, body))  # upper-case, as Fivetran
    verify_fivetran(SECRET, body, fivetran_signature(SECRET, body).lower())
    now = 1_800_000_000
    verify_generic(SECRET, body, str(now), generic_signature(SECRET, now, body), now=now + 299)
    with pytest.raises(Rejection) as stale:
        verify_generic(SECRET, body, str(now), generic_signature(SECRET, now, body), now=now + 301)
    assert stale.value.status == 403
    with pytest.raises(Rejection) as forged_and_stale:
        verify_generic(SECRET, body, str(now), generic_signature("x", now, body), now=now + 999)
    assert "forged" in forged_and_stale.value.reason  # the signature is judged before the clock
    with pytest.raises(Rejection) as bad_stamp:
        verify_generic(SECRET, body, "yesterday", "sha256=00")
    assert bad_stamp.value.status == 401
