"""A real PostgreSQL server for the test session: initdb into a temporary folder, one free port.

The server listens on 127.0.0.1 and on a Unix socket inside its own folder only, uses password
authentication (scram-sha-256) for every connection, and is stopped with `pg_ctl stop -m fast`
when the session ends. PostgreSQL refuses to run as root: under root (CI containers) `initdb` and
`pg_ctl` run as the `postgres` system user, in a folder that user owns. That folder cannot live
under pytest's base temp dir (pytest keeps it private to root, mode 0700), so it is a fresh
`tempfile.mkdtemp()` folder, removed at the end.

When the server binaries are not installed, tests that need the server are skipped with a message
saying how to install them. CI never skips: `.ci/run` installs them first.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import sql

from activation.sandbox.launcher import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
    "/usr/lib/postgresql/*/bin: install them with `sudo apt-get install postgresql` (Debian/"
    "Ubuntu) to run the PostgreSQL tests"
)
SUPERUSER = "activation"
SERVICE_USER = "postgres"
START_TIMEOUT_SECONDS = 60


class PostgresUnavailableError(RuntimeError):
    """The server binaries are missing; the message says how to install them."""


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    folder: Path

    def connect(self, database: str = "postgres"):  # -> psycopg2 connection
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """A fresh empty database (dropped first if a previous test left one)."""
        connection = self.connect()
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()
        return name

    def warehouse_environment(self, database: str) -> dict[str, str]:
        """The ACTIVATION_PG_* variables the dbt profile and the sandbox read."""
        return {
            "ACTIVATION_PG_HOST": self.host,
            "ACTIVATION_PG_PORT": str(self.port),
            "ACTIVATION_PG_USER": self.user,
            "ACTIVATION_PG_PASSWORD": self.password,
            "ACTIVATION_PG_DATABASE": database,
        }

    def dagster_environment(self, database: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": database,
        }


def find_server_binaries() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then the newest Debian install."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise PostgresUnavailableError(INSTALL_HINT)


def _version(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


@contextmanager
def running_postgres(base: Path) -> Iterator[PostgresServer]:
    """Start a server in a new folder (under `base` unless run as root), stop it on exit."""
    binaries = find_server_binaries()
    as_root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="activation-pg-")) if as_root else base / "postgres"
    folder.mkdir(parents=True, exist_ok=True)
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    password = "pg-" + secrets.token_hex(12)
    password_file = folder / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    if as_root:
        shutil.chown(folder, SERVICE_USER, SERVICE_USER)
        for path in (sockets, password_file):
            shutil.chown(path, SERVICE_USER, SERVICE_USER)

    def run(*command: str) -> None:
        prefix = ["runuser", "-u", SERVICE_USER, "--"] if as_root else []
        result = subprocess.run(
            [*prefix, *command], cwd=folder, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            log = folder / "server.log"
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}{log.read_text() if log.exists() else ''}"
            )

    port = free_port()
    started = False
    try:
        run(
            str(binaries / "initdb"),
            "--pgdata", str(data),
            "--username", SUPERUSER,
            "--pwfile", str(password_file),
            "--auth", "scram-sha-256",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
        )  # fmt: skip
        password_file.unlink()
        # Test data is disposable: skip fsync for speed. Listen on loopback and our socket only.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        run(
            str(binaries / "pg_ctl"),
            "--pgdata", str(data),
            "--log", str(folder / "server.log"),
            "--options", options,
            "--wait", "--timeout", str(START_TIMEOUT_SECONDS),
            "start",
        )  # fmt: skip
        started = True
        yield PostgresServer("127.0.0.1", port, SUPERUSER, password, folder)
    finally:
        try:
            if started:
                run(str(binaries / "pg_ctl"), "--pgdata", str(data), "-m", "fast", "-w", "stop")
        finally:
            if as_root:
                shutil.rmtree(folder, ignore_errors=True)
