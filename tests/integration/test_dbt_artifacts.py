"""The dbt step keeps the artifacts of the newest builds only: real sandbox, real dbt on DuckDB,
real Dagster execution of the dbt assets (and the Airbyte assets they read), with dagster-dbt's
per-build target folders in a folder of this module's own (`DBT_TARGET_PATH`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from activation.core.dbt_artifacts import KEPT_VARIABLE, PARTIAL_PARSE_FILE
from activation.sandbox.launcher import SandboxProcess
from tests.support.gate_support import (
    chain_sandbox,
    launch,
    step_failures,
    transform_and_its_sources,
)

DBT_STEP = "dbt_build"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with chain_sandbox(tmp_path_factory.mktemp("dbt_artifacts") / "data") as box:
        yield box


@pytest.fixture(scope="module")
def definitions(sandbox: SandboxProcess) -> dg.Definitions:
    from activation.definitions import build_definitions

    return build_definitions()


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, definitions: dg.Definitions) -> Path:
    """dagster-dbt's target folder for this test, which holds no parse state: the dbt step
    seeds each build's folder from the target the code location was prepared in (the sandbox
    fixture ran `dbt parse` there), not from here."""
    folder = tmp_path / "dbt_target"
    folder.mkdir()
    monkeypatch.setenv("DBT_TARGET_PATH", str(folder))
    return folder


def _earlier_build(target: Path, name: str, hours_ago: float) -> Path:
    folder = target / name
    folder.mkdir()
    (folder / "dbt.log").write_text("{}\n")
    moment = time.time() - hours_ago * 3600
    os.utime(folder / "dbt.log", (moment, moment))
    os.utime(folder, (moment, moment))
    return folder


def test_a_build_removes_earlier_builds_beyond_the_newest_kept(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEPT_VARIABLE, "2")
    newest, older, oldest = (
        _earlier_build(target, f"{DBT_STEP}-{n}{n}{n}{n}{n}{n}{n}-abcdef0", hours_ago)
        for n, hours_ago in ((1, 2), (2, 3), (3, 4))
    )

    result = launch(instance, *transform_and_its_sources(definitions), definitions=definitions)

    assert result.success, step_failures(result)
    built = [p for p in target.iterdir() if p.name.startswith(f"{DBT_STEP}-{result.run_id[:7]}-")]
    assert len(built) == 1 and (built[0] / "run_results.json").is_file()
    # dbt reused the prepared parse: a full parse costs every build about 3.5 s of CPU.
    log = (built[0] / "dbt.log").read_text()
    assert "Unable to do partial parsing" not in log, log[:2000]
    assert (built[0] / PARTIAL_PARSE_FILE).is_file()
    assert newest.exists()
    assert not older.exists() and not oldest.exists()


def test_a_malformed_setting_fails_the_step_before_dbt_runs(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEPT_VARIABLE, "all of them")
    earlier = _earlier_build(target, f"{DBT_STEP}-5555555-abcdef0", hours_ago=9)

    result = launch(instance, *transform_and_its_sources(definitions), definitions=definitions)

    assert not result.success
    failures = {f.step: f.description for f in step_failures(result)}
    assert KEPT_VARIABLE in failures.get(DBT_STEP, ""), failures
    # dbt never started a build
    assert sorted(p.name for p in target.iterdir()) == [earlier.name]
    built = [
        e.asset_key for e in result.get_asset_materialization_events() if e.asset_key is not None
    ]
    assert not any(key.path[0] in ("staging", "marts") for key in built), built


def test_artifacts_that_cannot_be_listed_never_fail_a_good_build(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The target folder refuses to be listed (permissions, a vanished mount): the build's
    results stand, and the step says why nothing was removed."""
    earlier = _earlier_build(target, f"{DBT_STEP}-6666666-abcdef0", hours_ago=9)
    listable = Path.iterdir

    def refuse_the_target(self: Path) -> Iterator[Path]:
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return listable(self)

    monkeypatch.setenv(KEPT_VARIABLE, "1")
    monkeypatch.setattr(Path, "iterdir", refuse_the_target)

    result = launch(instance, *transform_and_its_sources(definitions), definitions=definitions)

    assert result.success, step_failures(result)
    assert earlier.exists()
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.step_key == DBT_STEP and e.level == logging.WARNING
    ]
    assert any("Could not remove the dbt artifacts" in m for m in warnings), warnings
