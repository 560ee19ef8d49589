"""Start and stop the local processes of the event-driven chain: the webhook intake and
`dagster dev` (webserver + daemon). The sandbox has its own launcher (activation/sandbox).

Used by the end-to-end test and the latency benchmark. Every process is started in its own
process group with SIGINT/SIGTERM at their defaults (a background shell would start it with SIGINT
ignored, and dagster dev maps SIGTERM to that handler), and stopped by that group id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from activation.lib.environment import SANDBOX_AIRBYTE_CONNECTION_ID, SANDBOX_AIRBYTE_REST_PREFIX
from activation.lib.paths import PROJECT_ROOT
from activation.sandbox.launcher import SandboxProcess, free_port
from activation.tooling.dagster_home import write_local_instance_config
from activation.webhooks.signatures import (
    FIVETRAN_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    fivetran_signature,
    generic_signature,
)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setpgrp()


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process group, then SIGKILL to whatever is left."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # children that outlived their parent
        if self.process.poll() is None:
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _spawn(name: str, command: list[str], env: dict[str, str], log_path: Path) -> Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=_default_signals,
    )
    return Process(name, process, log_path)


def wait_for_answer(
    url: str, alive: Callable[[], bool], timeout: float | None = None, interval: float = 0.25
) -> bool:
    """True as soon as `url` answers 200; False once `alive()` is false or `timeout` passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        if not alive():
            return False
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(interval)
    return False


def _wait_for(process: Process, url: str, timeout: float) -> None:
    if wait_for_answer(url, lambda: process.process.poll() is None, timeout):
        return
    if process.process.poll() is not None:
        raise RuntimeError(f"{process.name} exited early:\n{process.log()[-4000:]}")
    process.stop()
    raise RuntimeError(f"{process.name} did not answer {url} within {timeout}s")


def start_intake(port: int, env: dict[str, str], log_path: Path, timeout: float = 30.0) -> Process:
    """`activation webhooks --port N`; `env` must hold ACTIVATION_WEBHOOK_SECRET and the
    ACTIVATION_DATA_DIR shared with the Dagster daemon."""
    command = [sys.executable, "-m", "activation.tooling.cli", "webhooks", "--port", str(port)]
    intake = _spawn("webhook intake", command, env, log_path)
    _wait_for(intake, f"http://127.0.0.1:{port}/webhooks/health", timeout)
    return intake


def migrate_dagster_home(home: Path, env: dict[str, str]) -> None:
    """Create the Dagster home once, before several processes open it (NOTES.md: two processes
    creating a fresh SQLite home at once broke it)."""
    home.mkdir(parents=True, exist_ok=True)
    write_local_instance_config(home)
    subprocess.run(
        [sys.executable, "-m", "dagster", "instance", "migrate"],
        env={**env, "DAGSTER_HOME": str(home)},
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
    )


DAGSTER_URL_VAR = "ACTIVATION_DAGSTER_URL"
STARTUP_DIR = Path(__file__).resolve().parent / "python_startup"


def dagster_dev_environment(env: Mapping[str, str], port: int) -> dict[str, str]:
    """`env` for a `dagster dev` serving its UI on `port`: ACTIVATION_DAGSTER_URL names that UI
    (the promote job's review links point there), and python_startup/ goes first on PYTHONPATH so
    every process it starts keeps Dagster's Beta/Preview/supersession notices out of the log."""
    python_path = [str(STARTUP_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        **env,
        DAGSTER_URL_VAR: f"http://127.0.0.1:{port}",
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(python_path)),
    }


def start_dagster_dev(
    port: int,
    env: dict[str, str],
    log_path: Path,
    timeout: float = 180.0,
    workspace: Path = PROJECT_ROOT / "workspace.yaml",
) -> Process:
    """`dagster dev -w workspace.yaml` (webserver + daemon) with `env` (DAGSTER_HOME set)."""
    env = dagster_dev_environment(env, port)
    command = [
        sys.executable, "-m", "dagster", "dev",
        "-w", str(workspace),
        "-p", str(port), "-h", "127.0.0.1",
    ]  # fmt: skip
    dagster = _spawn("dagster dev", command, env, log_path)
    url = f"http://127.0.0.1:{port}"
    _wait_for(dagster, f"{url}/server_info", timeout)
    try:
        wait_for_code_location(url, timeout)
    except RuntimeError:
        dagster.stop()
        raise
    return dagster


LOCATION_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def wait_for_code_location(dagster_url: str, timeout: float) -> None:
    """Until every code location has loaded; raises with Dagster's message if one failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.post(f"{dagster_url}/graphql", json={"query": LOCATION_QUERY}, timeout=30)
        entries = response.json()["data"]["workspaceOrError"]["locationEntries"]
        loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
        if entries and len(loaded) == len(entries):
            errors = [
                f"{e['name']}: {e['locationOrLoadError'].get('message', '')}"
                for e in entries
                if e["locationOrLoadError"]["__typename"] == "PythonError"
            ]
            if errors:
                raise RuntimeError("code location failed to load:\n" + "\n".join(errors))
            return
        time.sleep(0.5)
    raise RuntimeError(f"code location not loaded within {timeout}s")


def post_signal(
    intake_url: str,
    secret: str,
    event_id: str,
    *,
    source: str = "script",
    timestamp: int | None = None,
) -> httpx.Response:
    """Send a generic signed signal, as a caller would."""
    body = json.dumps({"event_id": event_id, "source": source}).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: generic_signature(secret, stamp, body),
    }
    return httpx.post(f"{intake_url}/webhooks/signal", content=body, headers=headers, timeout=10)


def post_fivetran(intake_url: str, secret: str, payload: dict) -> httpx.Response:
    """Send a Fivetran-style webhook signed as Fivetran signs it."""
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        FIVETRAN_SIGNATURE_HEADER: fivetran_signature(secret, body),
    }
    return httpx.post(f"{intake_url}/webhooks/fivetran", content=body, headers=headers, timeout=10)


@dataclass
class Stack:
    """The sandbox, the intake and `dagster dev`, running on free ports."""

    sandbox: SandboxProcess
    intake_url: str
    dagster_url: str
    dagster: Process
    intake: Process

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(
            f"{self.dagster_url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=30,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def runs(self) -> list[dict]:
        """Every run: id, status, job, tags, creation/start/end times and per-step start times."""
        return self.graphql(RUNS_QUERY)["runsOrError"]["results"]


RUNS_QUERY = """
{ runsOrError { ... on Runs { results {
    runId status jobName creationTime startTime endTime
    tags { key value }
    stepStats { stepKey startTime endTime }
} } } }
"""


def start_airbyte_job(sandbox_url: str) -> int:
    """Start one sync job on the Airbyte stand-in directly, as Airbyte's own scheduler would."""
    job = httpx.post(
        f"{sandbox_url}{SANDBOX_AIRBYTE_REST_PREFIX}/jobs",
        json={"connectionId": SANDBOX_AIRBYTE_CONNECTION_ID, "jobType": "sync"},
    )
    job.raise_for_status()
    return int(job.json()["jobId"])


def wait_for_airbyte_job(sandbox_url: str, job_id: int, timeout: float = 60.0) -> None:
    """Until the stand-in's job succeeded; raises if it ended otherwise or took too long."""
    url = f"{sandbox_url}{SANDBOX_AIRBYTE_REST_PREFIX}/jobs/{job_id}"
    deadline = time.monotonic() + timeout
    while (status := httpx.get(url).json()["status"]) != "succeeded":
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"Airbyte stand-in job {job_id} ended {status}")
        time.sleep(0.1)


def land_raw_data(sandbox: SandboxProcess, timeout: float = 60.0) -> int:
    """Run one Airbyte job on the stand-in directly (outside Dagster) and wait for it to land."""
    job_id = start_airbyte_job(sandbox.url)
    wait_for_airbyte_job(sandbox.url, job_id, timeout)
    return job_id


@contextmanager
def running_stack(
    root: Path, *sandbox_args: str, workspace: Path = PROJECT_ROOT / "workspace.yaml"
) -> Iterator[Stack]:
    """Everything the event-driven chain needs, started in order and stopped by process group.

    The caller sets HIGHTOUCH_API_TOKEN and ACTIVATION_WEBHOOK_SECRET in the environment. Raw
    data is landed by an Airbyte job started before Dagster, so the Airbyte sensor's first tick
    takes it as already answered and only the signals sent by the caller launch runs.
    """
    from activation.tooling.demo import prepare_code_location, sandbox_environment

    folder, home = root / "data", root / "dagster_home"
    started: list[Process] = []
    with sandbox_environment(folder, *sandbox_args) as sandbox:
        try:
            land_raw_data(sandbox)
            prepare_code_location()
            env = {**os.environ, "DAGSTER_HOME": str(home), "DO_NOT_TRACK": "1"}
            migrate_dagster_home(home, env)
            intake_port, dagster_port = free_port(), free_port()
            started.append(start_intake(intake_port, env, root / "intake.log"))
            dagster_log = root / "dagster.log"
            started.append(start_dagster_dev(dagster_port, env, dagster_log, workspace=workspace))
            yield Stack(
                sandbox=sandbox,
                intake_url=f"http://127.0.0.1:{intake_port}",
                dagster_url=f"http://127.0.0.1:{dagster_port}",
                dagster=started[1],
                intake=started[0],
            )
        finally:
            for process in reversed(started):
                process.stop()
