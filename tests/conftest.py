from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from activation.sandbox.launcher import SandboxProcess, start_sandbox
from tests.postgres_server import (
    PostgresServer,
    PostgresUnavailableError,
    find_server_binaries,
    running_postgres,
)

os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """A fresh sandbox server on a free port with its own data folder, stopped after the test."""
    process = start_sandbox(tmp_path / "data", "--phase-seconds", "0.05")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session; skipped, saying how to install it, if absent."""
    try:
        find_server_binaries()
    except PostgresUnavailableError as error:
        pytest.skip(str(error))
    with running_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server
