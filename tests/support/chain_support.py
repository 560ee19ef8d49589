"""A sandbox selected through the environment, a prepared dbt manifest and a Dagster instance:
the setup shared by the modules that run the code location's jobs against the sandbox."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from activation.sandbox.launcher import SandboxProcess
from activation.tooling.demo import prepare_code_location
from tests.support.warehouse_path import worker_sandbox

QUICK_SANDBOX = ("--phase-seconds", "0.05", "--rows", "300")


@dataclass
class SandboxChain:
    sandbox: SandboxProcess
    instance: dg.DagsterInstance
    folder: Path


@contextmanager
def sandbox_chain(
    factory: pytest.TempPathFactory, name: str, env: Mapping[str, str]
) -> Iterator[SandboxChain]:
    """`env` is set for the whole block (token, retry delays, routing keys...)."""
    folder = factory.mktemp(name) / "data"
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in env.items():
            patch.setenv(variable, value)
        with worker_sandbox(folder, *QUICK_SANDBOX) as sandbox:
            prepare_code_location()
            home = factory.mktemp(f"{name}_home")
            with dg.instance_for_test(temp_dir=str(home)) as instance:
                yield SandboxChain(sandbox, instance, folder)
