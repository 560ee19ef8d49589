"""Whether a sync step waits for its Hightouch run or leaves it in flight (`wait` in
destinations.yaml): decided from the sync's recent run durations, as the client reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from activation.core.sync_path import _detach_reason, failed_rows_verdict
from activation.lib.destinations import parse_destinations
from activation.lib.hightouch import RowCounts, SyncRun
from activation.lib.paths import DEFAULT_DESTINATIONS_FILE

BRAZE = next(d for d in parse_destinations(DEFAULT_DESTINATIONS_FILE) if d.key == "braze_users")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _run(run_id: str, status: str, started: datetime, seconds: float | None = None, **rows):
    finished = _iso(started + timedelta(seconds=seconds)) if seconds is not None else None
    return SyncRun(
        run_id, "401", status, _iso(started), _iso(started), finished, 0, 0.0, None,
        rows.get("planned", RowCounts()), rows.get("successful", RowCounts()),
        rows.get("failed", RowCounts()),
    )  # fmt: skip


def test_auto_detaches_only_syncs_whose_recent_runs_took_longer_than_the_threshold() -> None:
    now = datetime.now(UTC)
    ours = _run("9", "processing", now - timedelta(seconds=1))
    short = [ours, _run("8", "success", now - timedelta(hours=1), 40)]
    long = [ours, _run("8", "success", now - timedelta(hours=3), 3600)]
    assert _detach_reason(BRAZE, ours, short) is None
    reason = _detach_reason(BRAZE, ours, long)
    assert reason is not None and "detach_after_seconds=900" in reason
    # No history: nothing says the run is long, so the step waits.
    assert _detach_reason(BRAZE, ours, [ours]) is None


def test_explicit_waits_are_obeyed() -> None:
    now = datetime.now(UTC)
    ours = _run("9", "processing", now)
    long = [ours, _run("8", "success", now - timedelta(hours=3), 3600)]
    attached = BRAZE.model_copy(update={"wait": "attached"})
    detached = BRAZE.model_copy(update={"wait": "detached"})
    assert _detach_reason(attached, ours, long) is None
    assert _detach_reason(detached, ours, [ours]) == "wait: detached in destinations.yaml"


def test_failed_rows_verdict_matches_the_policy() -> None:
    now = datetime.now(UTC)
    url = "https://app/run/9"
    clean = _run("9", "success", now, 5, planned=RowCounts(added=10))
    verdict, violation = failed_rows_verdict(BRAZE, clean, url)
    assert verdict.passed and violation is None and verdict.check_name == "failed_rows"
    rejected = _run("9", "success", now, 5, planned=RowCounts(added=10), failed=RowCounts(added=2))
    verdict, violation = failed_rows_verdict(BRAZE, rejected, url)
    assert (
        not verdict.passed and verdict.blocks
    )  # no limit declared: any failed row, on_exceed fail
    assert "max_failed_rows=0" in (violation or "")
    assert verdict.metadata["hightouch_run_id"].value == "9"
    warned = BRAZE.model_copy(
        update={"failure_policy": BRAZE.failure_policy.model_copy(update={"on_exceed": "warn"})}
    )
    verdict, _ = failed_rows_verdict(warned, rejected, url)
    assert not verdict.passed and not verdict.blocks
    failed = _run("9", "failed", now, 5)
    verdict, violation = failed_rows_verdict(BRAZE, failed, url)
    assert not verdict.passed and "ended failed" in (violation or "")
