"""A fresh Python interpreter started from the project root, for tests whose subject is what a new
process imports, builds or finds (as Dagster's own processes start fresh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from activation.lib.paths import PROJECT_ROOT

CHILD_TIMEOUT_SECONDS = 600


def run_python(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = CHILD_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` from the project root with `env` (default: this process's environment),
    asserting that it exits 0; a failure shows the ends of its output."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-4000:]}{result.stderr[-8000:]}"
    return result


def last_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document the child printed on its last line."""
    return json.loads(result.stdout.strip().splitlines()[-1])


# Probe code for a child: from here on, every Alembic migration script the child executes is
# appended to `reads` (`Script._from_path` executes one script file).
COUNT_MIGRATION_SCRIPT_READS = r"""
from alembic.script import base as _alembic_script
reads = []
_execute_script = _alembic_script.Script._from_path.__func__
def _counted(cls, scriptdir, path):
    reads.append(path)
    return _execute_script(cls, scriptdir, path)
_alembic_script.Script._from_path = classmethod(_counted)
"""
