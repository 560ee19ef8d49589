"""`activation approve|reject` finds the instance the promote run lives in, or says in one line
what to pass; it never opens (and so never creates) an instance in a wrong home.

The real command runs in a subprocess, as a reviewer runs it from the review message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from activation.lib.paths import PROJECT_ROOT

RUN_ID = "0f0e0d0c-aaaa-bbbb-cccc-123456789abc"


def decide(
    tmp_path: Path, *options: str, dagster_home: str | None = None, verb: str = "approve"
) -> subprocess.CompletedProcess[str]:
    """The CLI with ACTIVATION_DATA_DIR in `tmp_path` (so no dev instance unless a test makes
    one) and DAGSTER_HOME set to `dagster_home`, or unset."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(ACTIVATION_DATA_DIR=str(tmp_path / "data"), DO_NOT_TRACK="1")
    if dagster_home is not None:
        env["DAGSTER_HOME"] = dagster_home
    reason = ["--reason", "not today"] if verb == "reject" else []
    command = [verb, RUN_ID, "--reviewer", "alice", "--code", "AAAA-BBBB", *reason, *options]
    return subprocess.run(
        [sys.executable, "-m", "activation.tooling.cli", *command],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("activation: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_unset_home_and_no_dev_instance_names_both_ways_to_give_one(
    tmp_path: Path, verb: str
) -> None:
    before = listing(tmp_path)

    result = decide(tmp_path, verb=verb)

    assert result.returncode == 2
    line = one_error_line(result)
    assert "DAGSTER_HOME" in line and "--dagster-home" in line
    assert listing(tmp_path) == before


def test_nonexistent_home_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_home"

    result = decide(tmp_path, dagster_home=str(missing))

    assert result.returncode == 2
    line = one_error_line(result)
    assert str(missing) in line and "does not exist" in line and "(from DAGSTER_HOME)" in line
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "content", [[], ["notes.txt", "project/readme.md"]], ids=["empty", "wrong"]
)
def test_a_folder_without_an_instance_is_refused_and_left_as_it_was(
    tmp_path: Path, content: list[str]
) -> None:
    home = tmp_path / "home"
    for name in content:
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text("not dagster")
    home.mkdir(exist_ok=True)
    before = listing(tmp_path)

    result = decide(tmp_path, dagster_home=str(home))

    assert result.returncode == 2
    line = one_error_line(result)
    assert str(home) in line and "holds no Dagster instance" in line
    assert listing(tmp_path) == before


def test_the_option_wins_over_the_variable(tmp_path: Path) -> None:
    wrong = tmp_path / "given_by_option"
    elsewhere = tmp_path / "from_the_variable"
    elsewhere.mkdir()

    result = decide(tmp_path, "--dagster-home", str(wrong), dagster_home=str(elsewhere))

    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{wrong} (from --dagster-home)" in line
    assert listing(tmp_path) == ["from_the_variable"]


def test_an_unknown_run_names_the_run_and_the_home_searched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    dg.DagsterInstance.from_config(str(home)).dispose()  # a real, migrated SQLite instance

    result = decide(tmp_path, "--dagster-home", str(home))

    assert result.returncode == 1
    line = one_error_line(result)
    assert repr(RUN_ID) in line and str(home) in line


def test_without_dagster_home_the_dev_instance_is_used_and_announced(tmp_path: Path) -> None:
    home = tmp_path / "data" / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("")

    result = decide(tmp_path, verb="reject")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    announce, error = result.stderr.strip().splitlines()
    assert announce == f"activation: using the dev instance at {home} (DAGSTER_HOME is unset)"
    assert error.startswith("activation: error: no Dagster run") and str(home) in error
