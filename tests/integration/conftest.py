"""Fixtures the integration modules share. Each module that uses them defines its own
`sandbox` (a chain sandbox in a folder of its own); these resolve against it, per module."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import ChainResult, run_chain


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance of the module's own, in a temporary home."""
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_home"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def good_run(sandbox: SandboxProcess, instance: dg.DagsterInstance) -> ChainResult:
    """The `activate` job once on the module's sandbox, every check passed and every sync done."""
    result = run_chain(instance, console_log_level="WARNING")
    assert result.success, result.failed_steps
    return result
