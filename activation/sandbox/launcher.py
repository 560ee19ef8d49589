"""Start and stop a sandbox server process on a free port, and read its state over HTTP.

Used by `activation demo`, `activation dev` and the test fixtures. It only spawns
`activation sandbox` and speaks HTTP to it, like any other client of the stand-ins.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SandboxProcess:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, token: str | None = "test-token") -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def set_scenario(self, *, bad_rows: bool = False, changed_rows: int = 0) -> None:
        """What the next Airbyte sync lands (see `activation.sandbox.generator.Scenario`)."""
        with self.client() as http:
            http.post(
                "/sandbox/scenario", json={"bad_rows": bad_rows, "changed_rows": changed_rows}
            ).raise_for_status()

    def records(self, destination_type: str, object_name: str) -> dict[str, dict]:
        """What a CRM stand-in holds for one object: record id -> fields."""
        with self.client() as http:
            response = http.get(
                f"/sandbox/destinations/{destination_type}/records", params={"object": object_name}
            )
            response.raise_for_status()
            return {str(r["id"]): r["fields"] for r in response.json()["records"]}

    def trigger_counts(self) -> dict[str, int]:
        """Triggers the Hightouch stand-in received, per sync id."""
        with self.client() as http:
            response = http.get("/sandbox/hightouch/triggers")
            response.raise_for_status()
            return {str(k): int(v) for k, v in response.json().items()}

    def inject_fault(self, **spec: Any) -> dict[str, Any]:
        """Add a fault (spec in `activation.sandbox.faults`); returns it with its `id`.

        Example: `sandbox.inject_fault(kind="status", status=429, retry_after=1, sync_id="101")`.
        A spec the sandbox refuses raises `ValueError` with its explanation.
        """
        with self.client() as http:
            response = http.post("/sandbox/faults", json=spec)
            if response.status_code == 422:
                raise ValueError(response.json()["message"])
            response.raise_for_status()
            return response.json()

    def faults(self) -> list[dict[str, Any]]:
        """Every fault added since the last clear, with `remaining` and `hits`."""
        with self.client() as http:
            response = http.get("/sandbox/faults")
            response.raise_for_status()
            return response.json()["faults"]

    def clear_faults(self) -> None:
        with self.client() as http:
            http.delete("/sandbox/faults").raise_for_status()

    def request_counts(self) -> dict[str, int]:
        """Requests received per "METHOD /path" (control paths under /sandbox/ excluded)."""
        with self.client() as http:
            response = http.get("/sandbox/requests")
            response.raise_for_status()
            return {str(k): int(v) for k, v in response.json()["counts"].items()}

    def clear_request_counts(self) -> None:
        with self.client() as http:
            http.delete("/sandbox/requests").raise_for_status()

    def notifications(self, sink: str) -> list[dict]:
        with self.client() as http:
            response = http.get("/sandbox/notifications", params={"sink": sink})
            response.raise_for_status()
            return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_sandbox(
    data_dir: Path, *extra_args: str, port: int | None = None, timeout: float = 30.0
) -> SandboxProcess:
    """Run `activation sandbox` in a child process and wait until it answers."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "sandbox.log"
    env = {**os.environ, "ACTIVATION_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "activation.tooling.cli", "sandbox", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--data-dir", str(data_dir), *extra_args],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sandbox exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/sandbox/health", timeout=1).status_code == 200:
                return SandboxProcess(url, data_dir, process, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"sandbox did not answer within {timeout}s:\n{log_path.read_text()}")
