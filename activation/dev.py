"""`make dev`: the sandbox plus `dagster dev`, so the chain can be launched from the Dagster UI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from activation.demo import prepare_dbt_manifest, sandbox_environment
from activation.destinations import load_destinations
from activation.paths import PROJECT_ROOT, data_dir


def _default_signals() -> None:
    # A background shell starts children with SIGINT ignored; dagster dev would then ignore
    # Ctrl-C and SIGTERM (see ../shared/NOTES.md). Restore the defaults before exec.
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


def run_dev(port: int, sandbox_port: int) -> int:
    folder = data_dir()
    home = folder / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    # The promote job needs a staging twin of each sync; the sandbox serves them on request.
    os.environ.setdefault("ACTIVATION_SANDBOX_STAGING_SYNCS", "1")
    with sandbox_environment(folder, port=sandbox_port) as sandbox:
        prepare_dbt_manifest()
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        set_pool_limits(env)
        print(f"Sandbox on {sandbox.url}; Dagster UI on http://127.0.0.1:{port}")
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
