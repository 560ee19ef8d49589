"""`activation-dbt`, the dbt resource's executable: it answers dagster-dbt's `--version` itself
and hands every other command to the real dbt."""

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from activation.resources import build_dbt_resource

LAUNCHER = Path(sys.executable).parent / "activation-dbt"


def test_the_dbt_resource_runs_dbt_through_the_launcher() -> None:
    assert build_dbt_resource().dbt_executable == str(LAUNCHER)


def test_version_is_answered_without_starting_dbt_and_matches_dbt_core() -> None:
    answer = subprocess.run(
        [str(LAUNCHER), "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert f"installed: {version('dbt-core')}" in answer.stdout
    real = subprocess.run(
        [str(LAUNCHER.parent / "dbt"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert version("dbt-core") in real.stdout  # the same version the real dbt reports


def test_other_commands_reach_the_real_dbt_with_their_exit_code() -> None:
    shown = subprocess.run(
        [str(LAUNCHER), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert shown.returncode == 0 and "Usage: dbt" in shown.stdout
    unknown = subprocess.run(
        [str(LAUNCHER), "no-such-command"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unknown.returncode != 0
    assert "no-such-command" in unknown.stdout + unknown.stderr
