"""`make dev`: the sandbox plus `dagster dev`, so the chain can be launched from the Dagster UI.

It refuses to start next to another stack (ports taken, DuckDB files locked, the Dagster home held)
before it writes anything, and says the UI is up only once it answers.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import IO

import dagster as dg

from activation.lib.destinations import load_destinations
from activation.lib.paths import PROJECT_ROOT, data_dir
from activation.sandbox.context import SandboxSettings
from activation.tooling.dagster_home import dev_home, write_local_instance_config
from activation.tooling.demo import prepare_code_location, sandbox_environment
from activation.tooling.preflight import (
    HomeInUse,
    busy_ports,
    hold_home,
    home_holder,
    home_in_use,
    locked_files,
)
from activation.tooling.stack import Process, dagster_dev_environment, start_intake, wait_for_answer

DAGSTER_LOG = "dagster_dev.log"


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
SLACK_SECRET_FILE = "slack_signing_secret"


def _secret_in_file(path: Path) -> str:
    """A random secret kept in a file readable only by this user (never printed)."""
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def wire_slack_app(folder: Path, webhook_port: int) -> None:
    """The sandbox's Slack app posts button clicks to the intake, signed with the secret the
    intake and the waiting `sign_off` verify: both read SLACK_SIGNING_SECRET (a random one kept
    in `folder` unless set). Set before the sandbox starts, so its stand-in signs with it."""
    if not os.environ.get("SLACK_SIGNING_SECRET", "").strip():
        os.environ["SLACK_SIGNING_SECRET"] = _secret_in_file(folder / SLACK_SECRET_FILE)
    os.environ.setdefault(
        "ACTIVATION_SANDBOX_SLACK_INTERACTIVITY_URL",
        f"http://127.0.0.1:{webhook_port}/webhooks/slack/interactions",
    )


def start_dev_intake(folder: Path, env: dict[str, str], port: int) -> Process:
    """The signal intake beside dagster dev. Its HMAC secret is ACTIVATION_WEBHOOK_SECRET when
    set, else a random one kept in a file readable only by this user (never printed)."""
    secret = env.get("ACTIVATION_WEBHOOK_SECRET", "").strip()
    env["ACTIVATION_WEBHOOK_SECRET"] = secret or _secret_in_file(folder / SECRET_FILE)
    return start_intake(port, env, folder / "webhook_intake.log")


def conflicts(
    folder: Path, home: Path, port: int, sandbox_port: int, webhook_port: int
) -> list[str]:
    """What another running stack holds that this one needs; checked without writing anything."""
    ports = [("Dagster UI", port), ("sandbox", sandbox_port), ("webhook intake", webhook_port)]
    problems = busy_ports(ports)
    settings = SandboxSettings(data_dir=folder)
    problems += locked_files([settings.store_path, settings.warehouse_path])
    if (holder := home_holder(home)) is not None:
        problems.append(home_in_use(home, holder))
    return problems


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_dev(port: int, sandbox_port: int, webhook_port: int = 8766) -> int:
    # The notices come from Dagster's own Beta and Preview APIs the code location uses; the
    # processes started below get the same through dagster_dev_environment.
    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    folder, home = data_dir(), dev_home()
    problems = conflicts(folder, home, port, sandbox_port, webhook_port)
    if problems:
        print(f"activation dev: not starting: {'; '.join(problems)}", file=sys.stderr)
        return 2
    # A SIGTERM (a supervisor, `kill`) unwinds like Ctrl-C, so what was started is stopped and
    # the home's pid file removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    home.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    wire_slack_app(folder, webhook_port)
    try:
        with hold_home(home), sandbox_environment(folder, port=sandbox_port) as sandbox:
            write_local_instance_config(home)
            print(f"Sandbox on {sandbox.url} (data in {folder})")
            return _serve(folder, home, port, webhook_port)
    except HomeInUse as error:
        print(f"activation dev: not starting: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a process that did not start; its message holds its log
        print(f"activation dev: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _serve(folder: Path, home: Path, port: int, webhook_port: int) -> int:
    prepare_code_location()
    env = dagster_dev_environment({**os.environ, "DAGSTER_HOME": str(home)}, port)
    set_pool_limits(env)
    intake = start_dev_intake(folder, env, webhook_port)
    try:
        print(
            f"Webhook intake on http://127.0.0.1:{webhook_port} (secret in {folder}/"
            f"{SECRET_FILE}; see docs/event-driven.md); Slack buttons clicked in the sandbox's "
            "Slack stand-in reach it (docs/promotion.md)"
        )
        return run_dagster_dev(port, env, folder / DAGSTER_LOG)
    finally:
        intake.stop()


def run_dagster_dev(port: int, env: dict[str, str], log_path: Path) -> int:
    """`dagster dev` on `port` until it stops, its output shown and kept in `log_path`. The UI
    address is printed once the webserver answers; if dagster dev exits first, that is said,
    with the log, and its exit code (at least 1) returned."""
    url = f"http://127.0.0.1:{port}"
    # Flushed: dagster dev's lines reach the terminal below this Python's text buffer.
    print(
        f"Starting dagster dev (log: {log_path}); the UI address follows once it answers",
        flush=True,
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
            "-h",
            "127.0.0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_signals,
    )
    assert dagster.stdout is not None
    copier = _tee(dagster.stdout, log_path)
    # From here a SIGTERM stops dagster dev too, as Ctrl-C does; otherwise its webserver and
    # daemon would outlive the sandbox.
    previous = signal.signal(signal.SIGTERM, lambda *_: dagster.send_signal(signal.SIGINT))
    try:
        if wait_for_answer(f"{url}/server_info", lambda: dagster.poll() is None, interval=0.5):
            print(f"Dagster UI on {url}", flush=True)
        else:
            code = dagster.wait()
            copier.join(timeout=5)
            print(
                f"activation dev: dagster dev exited (code {code}) before its UI answered on "
                f"{url}; see {log_path}",
                file=sys.stderr,
            )
            return code or 1
        return dagster.wait()
    except KeyboardInterrupt:
        dagster.send_signal(signal.SIGINT)
        return dagster.wait()
    finally:
        copier.join(timeout=5)
        if previous is not None:  # None: a handler not set from Python, left as it is
            signal.signal(signal.SIGTERM, previous)


def _tee(source: IO[bytes], log_path: Path) -> threading.Thread:
    """Copy dagster dev's output to this terminal and to `log_path`, line by line. The pipe is
    drained to the end even if the terminal goes away, so dagster dev never blocks writing."""
    terminal: IO[bytes] | None = sys.stdout.buffer

    def copy() -> None:
        nonlocal terminal
        with log_path.open("wb") as log:
            for line in iter(source.readline, b""):
                log.write(line)
                log.flush()
                if terminal is not None:
                    try:
                        terminal.write(line)
                        terminal.flush()
                    except OSError:  # a closed pipe (`make dev | head`): keep the log going
                        terminal = None

    thread = threading.Thread(target=copy, name="dagster-dev-log", daemon=True)
    thread.start()
    return thread
