"""`activation dev` refuses to start next to another stack, in one line, before it writes anything:
a taken port, a live pid in the Dagster home's pid file, a locked DuckDB file. No dagster dev is
started here: every case is refused within seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from activation.lib.paths import PROJECT_ROOT
from activation.sandbox.launcher import free_port
from activation.tooling.preflight import PID_FILE

PREVIOUS_LOG = "the first stack's sandbox log\n"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data folder as a running first stack leaves it: a sandbox log and a Dagster home."""
    folder = tmp_path / "data"
    (folder / "dagster_home").mkdir(parents=True)
    (folder / "dagster_home" / "dagster.yaml").write_text("")
    (folder / "sandbox.log").write_text(PREVIOUS_LOG)
    return folder


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def run_dev(data: Path, **ports: int) -> subprocess.CompletedProcess[str]:
    ports = {"port": free_port(), "sandbox_port": free_port(), "webhook_port": free_port(), **ports}
    flags = [f"--{name.replace('_', '-')}={port}" for name, port in ports.items()]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "activation.tooling.cli", "dev", *flags],
        env={**os.environ, "ACTIVATION_DATA_DIR": str(data), "DO_NOT_TRACK": "1"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30, "refusing must not wait for anything to start"
    return result


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", "nothing is announced as started"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("activation dev: not starting: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("option", "name"),
    [("port", "Dagster UI"), ("sandbox_port", "sandbox"), ("webhook_port", "webhook intake")],
)
def test_a_taken_port_is_named_and_nothing_is_overwritten(
    data: Path, busy_port: int, option: str, name: str
) -> None:
    before = snapshot(data)

    line = refusal(run_dev(data, **{option: busy_port}))

    assert f"port {busy_port} ({name}) is already in use" in line
    assert snapshot(data) == before
    assert (data / "sandbox.log").read_text() == PREVIOUS_LOG


def test_a_missing_data_folder_is_not_created_when_refusing(tmp_path: Path, busy_port: int) -> None:
    line = refusal(run_dev(tmp_path / "data", port=busy_port))

    assert str(busy_port) in line
    assert list(tmp_path.iterdir()) == []


def test_a_home_held_by_a_live_pid_is_refused_naming_it(data: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (data / "dagster_home" / PID_FILE).write_text(f"{holder.pid}\n")
        before = snapshot(data)

        line = refusal(run_dev(data))

        assert f"in use by another activation dev (pid {holder.pid})" in line
        assert snapshot(data) == before
        assert (data / "dagster_home" / PID_FILE).read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()


def test_a_locked_sandbox_store_is_refused_naming_the_file_and_its_holder(data: Path) -> None:
    store = data / "sandbox.duckdb"
    with duckdb.connect(str(store)) as held:  # this test's process plays the first sandbox
        held.execute("create table t (a int)")
        before = snapshot(data)

        line = refusal(run_dev(data))
        after = snapshot(data)

    assert f"the DuckDB file {store} is locked by pid {os.getpid()}" in line
    assert after == before


def test_every_conflict_is_named_in_the_one_line(data: Path, busy_port: int) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (data / "dagster_home" / PID_FILE).write_text(f"{holder.pid}\n")

        line = refusal(run_dev(data, port=busy_port, sandbox_port=busy_port))
    finally:
        holder.kill()
        holder.wait()

    assert f"port {busy_port} (Dagster UI) is already in use" in line
    assert f"the Dagster UI and the sandbox are both given port {busy_port}" in line
    assert f"pid {holder.pid}" in line
