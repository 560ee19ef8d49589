"""A failed dbt test shows the rows that failed it, and dbt's output reaches Dagster without
ANSI colour codes: real sandbox, real dbt on DuckDB, real Dagster execution of `activate`."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from activation.sandbox.generator import DUPLICATE_ID_ROWS, NULL_EMAIL_ROWS
from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import (
    ChainResult,
    prepare_code_location,
    run_chain,
)
from tests.support.warehouse_path import worker_sandbox

ROWS = 300
UNIQUE_CUSTOMER_ID = "unique_stg_customers_customer_id"
NOT_NULL_EMAIL = "not_null_stg_customers_email"
ANSI_ESCAPE = "\x1b["


@pytest.fixture(scope="module")
def failing_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    folder = tmp_path_factory.mktemp("failing_rows") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HIGHTOUCH_API_TOKEN", "failing-rows-test-token")
        with worker_sandbox(folder, "--phase-seconds", "0.05", "--rows", str(ROWS)) as box:
            prepare_code_location()
            yield box


@pytest.fixture(scope="module")
def bad_run(failing_sandbox: SandboxProcess, instance: dg.DagsterInstance) -> ChainResult:
    """A good run, then one on bad customer rows (as test_chain runs them)."""
    good = run_chain(instance, console_log_level="WARNING")
    assert good.success, good.failed_steps
    failing_sandbox.set_scenario(bad_rows=True)
    try:
        bad = run_chain(instance, console_log_level="WARNING")
    finally:
        failing_sandbox.set_scenario()
    assert not bad.success
    return bad


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> dict[str, dg.AssetCheckEvaluation]:
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [
        entry.dagster_event.event_specific_data for entry in entries if entry.dagster_event
    ]
    return {
        e.check_name: e
        for e in evaluations
        if isinstance(e, dg.AssetCheckEvaluation) and not e.passed
    }


def _table(evaluation: dg.AssetCheckEvaluation) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows of the check's `failing_rows` Markdown table."""
    assert "failing_rows" in evaluation.metadata, sorted(evaluation.metadata)
    value = evaluation.metadata["failing_rows"]
    assert isinstance(value, dg.MarkdownMetadataValue)
    lines = (value.md_str or "").splitlines()
    assert len(lines) >= 2
    assert all(line.startswith("|") and line.endswith("|") for line in lines), lines
    assert set(lines[1]) <= set("|- :"), lines[1]  # the delimiter row under the header

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip("|").split("|")]

    return cells(lines[0]), [cells(line) for line in lines[2:]]


def _duplicated_ids() -> set[str]:
    """The customer ids the bad rows repeat (see activation.sandbox.generator)."""
    spacing = max(1, ROWS // DUPLICATE_ID_ROWS)
    return {f"C{(j * spacing) % ROWS + 1:07d}" for j in range(DUPLICATE_ID_ROWS)}


def test_failed_unique_check_shows_the_duplicated_ids(
    bad_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    evaluation = _failed_checks(instance, bad_run.run_id)[UNIQUE_CUSTOMER_ID]
    header, rows = _table(evaluation)
    assert "unique_field" in header or "customer_id" in header, header
    assert 1 <= len(rows) <= 20
    assert all(len(row) == len(header) for row in rows)
    shown = {cell for row in rows for cell in row}
    assert _duplicated_ids() <= shown, (shown, _duplicated_ids())
    assert evaluation.metadata["failing_rows_sampled"].value == len(rows)
    assert evaluation.metadata["dagster_dbt/failed_row_count"].value == DUPLICATE_ID_ROWS


def test_failed_not_null_check_shows_the_rows_without_email(
    bad_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    evaluation = _failed_checks(instance, bad_run.run_id)[NOT_NULL_EMAIL]
    header, rows = _table(evaluation)
    assert len(rows) == NULL_EMAIL_ROWS
    assert "customer_id" in header and "email" in header, header
    assert {row[header.index("email")] for row in rows} == {"NULL"}
    assert {row[header.index("first_name")] for row in rows} == {"Mallory"}
    assert evaluation.metadata["failing_rows_sampled"].value == NULL_EMAIL_ROWS


def test_every_failed_dbt_check_carries_its_failing_rows(
    bad_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    failed = _failed_checks(instance, bad_run.run_id)
    assert {UNIQUE_CUSTOMER_ID, NOT_NULL_EMAIL} <= set(failed), sorted(failed)
    for name, evaluation in failed.items():
        _header, rows = _table(evaluation)
        assert 1 <= len(rows) <= 20, name


def test_no_event_log_message_of_the_bad_run_has_ansi_codes(
    bad_run: ChainResult, instance: dg.DagsterInstance
) -> None:
    entries = instance.all_logs(bad_run.run_id)
    assert entries
    failures = [e for e in entries if e.dagster_event and e.dagster_event.is_step_failure]
    assert failures  # dbt's error, with its "FAIL" lines, is in the log
    for entry in entries:
        assert ANSI_ESCAPE not in (entry.user_message or ""), entry.user_message
        assert ANSI_ESCAPE not in entry.message, entry.message
        serialized = dg.serialize_value(entry)
        assert ANSI_ESCAPE not in serialized and "\\u001b[" not in serialized
