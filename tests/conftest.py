from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

# Under pytest-xdist each worker parses the dbt project into its own target folder (read when
# activation.core.dbt_project is first imported, so set before any test module imports it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["ACTIVATION_DBT_TARGET_PATH"] = f"target/{os.environ['PYTEST_XDIST_WORKER']}"

import pytest  # noqa: E402

from activation.sandbox.launcher import SandboxProcess, start_sandbox  # noqa: E402
from tests.support.postgres_server import (  # noqa: E402
    PostgresServer,
    PostgresUnavailableError,
    find_server_binaries,
    running_postgres,
)

os.environ.setdefault("DO_NOT_TRACK", "1")

# A suite started in the background by a non-interactive shell (`make test &`, `nohup`) inherits
# SIGINT ignored. After each run on the main thread Dagster points SIGTERM at SIGINT's handler
# (its `setup_interrupt_handlers`), so SIGTERM becomes ignored as well, and so it is in every
# process started afterwards. The `tail` processes that capture the logs of a run executed on
# another thread then outlive the SIGTERM that should end them, and the run's teardown waits out
# two 30 s timeouts (it failed test_sensors' in-flight sync in a CI run). Python's default SIGINT
# handler, which a suite started in the foreground has, is reset by exec in child processes.
if (
    threading.current_thread() is threading.main_thread()
    and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
):
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
