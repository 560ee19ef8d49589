"""`make dev`: the sandbox plus `dagster dev`, so the chain can be launched from the Dagster UI."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from activation.lib.destinations import load_destinations
from activation.lib.paths import PROJECT_ROOT, data_dir
from activation.tooling.demo import prepare_code_location, sandbox_environment
from activation.tooling.stack import Process, start_intake


def _default_signals() -> None:
    # A background shell starts children with SIGINT ignored, and dagster dev maps SIGTERM to
    # its SIGINT handler, so it would ignore both Ctrl-C and SIGTERM. Restore the defaults.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def set_pool_limits(env: dict[str, str]) -> None:
    """One sync at a time per destination: per-pool limits live in the instance, set through
    `dagster instance concurrency set` (dagster.yaml only sets a default limit). Creating the
    SQLite home here, once, also keeps the webserver and daemon from migrating it together."""
    for destination in load_destinations():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "instance",
                "concurrency",
                "set",
                destination.pool,
                "1",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )


SECRET_FILE = "webhook_secret"


def start_dev_intake(folder: Path, env: dict[str, str], port: int) -> Process:
    """The signal intake beside dagster dev. Its HMAC secret is ACTIVATION_WEBHOOK_SECRET when
    set, else a random one kept in a file readable only by this user (never printed)."""
    secret = env.get("ACTIVATION_WEBHOOK_SECRET", "").strip()
    if not secret:
        path = folder / SECRET_FILE
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        secret = path.read_text().strip()
    env["ACTIVATION_WEBHOOK_SECRET"] = secret
    return start_intake(port, env, folder / "webhook_intake.log")


def run_dev(port: int, sandbox_port: int, webhook_port: int = 8766) -> int:
    folder = data_dir()
    home = folder / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    with sandbox_environment(folder, port=sandbox_port) as sandbox:
        prepare_code_location()
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        set_pool_limits(env)
        intake = start_dev_intake(folder, env, webhook_port)
        print(f"Sandbox on {sandbox.url}; Dagster UI on http://127.0.0.1:{port}")
        print(
            f"Webhook intake on http://127.0.0.1:{webhook_port} (secret in {folder}/"
            f"{SECRET_FILE}; see docs/event-driven.md)"
        )
        dagster = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(PROJECT_ROOT / "workspace.yaml"),
                "-p",
                str(port),
            ],
            env=env,
            preexec_fn=_default_signals,
        )
        # A SIGTERM to this process (a supervisor, `kill`) stops dagster dev too, as Ctrl-C does;
        # otherwise its webserver and daemon would outlive the sandbox.
        signal.signal(signal.SIGTERM, lambda *_: dagster.send_signal(signal.SIGINT))
        try:
            return dagster.wait()
        except KeyboardInterrupt:
            dagster.send_signal(signal.SIGINT)
            return dagster.wait()
        finally:
            intake.stop()
