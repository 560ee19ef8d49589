"""The pieces `activation dev` is built from, each without a stack: the wait for the UI to
answer, the pid lock on the Dagster home, the port check, and the environment that keeps
Dagster's Beta/Preview/supersession notices out of the dev log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from activation.lib.paths import PROJECT_ROOT
from activation.sandbox.launcher import free_port
from activation.tooling.dev import run_dagster_dev
from activation.tooling.preflight import PID_FILE, HomeInUse, hold_home, port_in_use
from activation.tooling.stack import DAGSTER_URL_VAR, dagster_dev_environment, wait_for_answer


class _SlowToStart(BaseHTTPRequestHandler):
    ready_at = 0.0

    def do_GET(self) -> None:  # noqa: N802 (the handler's API)
        self.send_response(200 if time.monotonic() >= self.ready_at else 503)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server_answering_after_one_second() -> Iterator[str]:
    handler = type("Handler", (_SlowToStart,), {"ready_at": time.monotonic() + 1.0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/server_info"
    finally:
        server.shutdown()
        server.server_close()


def test_the_wait_returns_only_once_the_server_answers(
    server_answering_after_one_second: str,
) -> None:
    started = time.monotonic()

    assert wait_for_answer(server_answering_after_one_second, lambda: True, interval=0.05)
    assert time.monotonic() - started >= 0.95


def test_the_wait_gives_up_when_the_process_died(server_answering_after_one_second: str) -> None:
    started = time.monotonic()

    assert not wait_for_answer(server_answering_after_one_second, lambda: False)
    assert time.monotonic() - started < 0.5


def test_the_wait_gives_up_at_its_timeout_on_a_port_nobody_serves() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/server_info"  # bound, not listening

        assert not wait_for_answer(url, lambda: True, timeout=0.5, interval=0.05)


def test_dagster_dev_exiting_before_its_ui_answers_is_reported_with_its_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "missing"), "DO_NOT_TRACK": "1"}
    log = tmp_path / "dagster_dev.log"

    code = run_dagster_dev(free_port(), env, log)

    out, err = capfd.readouterr()
    assert code != 0
    assert "Dagster UI on" not in out
    assert f"dagster dev exited (code {code}) before its UI answered" in err
    assert f"see {log}" in err
    assert "is not a directory or does not exist" in log.read_text()


def test_a_listening_port_is_in_use_and_a_closed_one_is_not() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_the_home_lock_holds_our_pid_and_is_removed_on_exit(tmp_path: Path) -> None:
    with hold_home(tmp_path) as pid_file:
        assert pid_file == tmp_path / PID_FILE
        assert pid_file.read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / PID_FILE).exists()


def test_a_stale_pid_file_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / PID_FILE).write_text(f"{dead.pid}\n")

    with hold_home(tmp_path) as pid_file:
        assert pid_file.read_text() == f"{os.getpid()}\n"


def test_a_live_pid_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / PID_FILE).write_text(f"{holder.pid}\n")

        with pytest.raises(HomeInUse, match=f"pid {holder.pid}"), hold_home(tmp_path):
            pass
        assert (tmp_path / PID_FILE).read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()


def test_dagster_dev_learns_its_own_url() -> None:
    env = dagster_dev_environment({"PYTHONPATH": "/somewhere"}, 3123)

    assert env[DAGSTER_URL_VAR] == "http://127.0.0.1:3123"
    assert env["PYTHONPATH"].endswith(os.pathsep + "/somewhere")


EMIT = """
import warnings
from dagster_shared.utils.warnings import beta_warning, preview_warning, supersession_warning
from dagster_airbyte import AirbyteWorkspace
beta_warning("Class `X`")
preview_warning("Function `y`")
supersession_warning("Function `dev_command`", "Use 'dg dev' instead.")
AirbyteWorkspace(  # a real BetaWarning, from a public class
    workspace_id="w",
    client_id="c",
    client_secret="s",
    rest_api_base_url="http://127.0.0.1:9/api/public/v1",
    configuration_api_base_url="http://127.0.0.1:9/api/v1",
)
warnings.warn("not one of Dagster's notices")
"""


def _emit(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", EMIT], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_dagster_notices_are_silenced_in_the_processes_dagster_dev_starts() -> None:
    plain = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}

    noisy = _emit(plain)
    quiet = _emit(dagster_dev_environment(plain, 3000))

    assert noisy.count("BetaWarning") >= 2 and "PreviewWarning" in noisy  # the test means it
    assert "SupersessionWarning" in noisy
    assert quiet.strip().splitlines() == [
        "<string>:15: UserWarning: not one of Dagster's notices"
    ], "only the other warning is left, and nothing else (no 'Invalid -W option')"


def test_a_sitecustomize_further_down_the_path_still_runs(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import sys; sys.stderr.write('site ran\\n')")
    env = dagster_dev_environment({**os.environ, "PYTHONPATH": str(tmp_path)}, 3000)

    result = subprocess.run(
        [sys.executable, "-c", "pass"], env=env, capture_output=True, text=True, check=True
    )

    assert result.stderr == "site ran\n"
