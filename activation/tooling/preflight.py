"""What `activation dev` checks before it starts anything, and the lock it holds on its home.

A second `activation dev` on the same ports or the same data folder used to start anyway: its
sandbox died on the DuckDB lock, its webserver on "address already in use", and its daemon ran
against the first stack's Dagster home. These checks only read (a port bind, a read-only DuckDB
open, a pid file), so refusing leaves every file as it was.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb

PID_FILE = ".activation-dev.pid"
_LOCK_HOLDER = re.compile(r"\(PID (\d+)\)")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not bind `host:port` now (SO_REUSEADDR, as servers set it, so a
    connection in TIME_WAIT from a stack just stopped does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def busy_ports(ports: Iterable[tuple[str, int]]) -> list[str]:
    """One problem per (name, port) that is taken, or given twice."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for name, port in ports:
        if port in seen:
            problems.append(f"the {seen[port]} and the {name} are both given port {port}")
        elif port_in_use(port):
            problems.append(f"port {port} ({name}) is already in use")
        seen.setdefault(port, name)
    return problems


def duckdb_lock_holder(path: Path) -> str | None:
    """Who holds the write lock on an existing DuckDB file ("pid N"), or None if nobody does.

    Opened read-only and closed at once: nothing is written to the file.
    """
    if not path.exists():
        return None
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.IOException as error:
        if "lock" not in str(error).lower():
            return None  # not a lock: the sandbox reports a damaged file itself, with context
        match = _LOCK_HOLDER.search(str(error))
        return f"pid {match[1]}" if match else "another process"
    return None


def locked_files(paths: Iterable[Path]) -> list[str]:
    return [
        f"the DuckDB file {path} is locked by {holder}"
        for path in paths
        if (holder := duckdb_lock_holder(path)) is not None
    ]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    with suppress(OSError, IndexError):  # a zombie has exited; Linux shows it as state Z
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def home_holder(home: Path) -> int | None:
    """The live pid recorded in `<home>/.activation-dev.pid` (other than ours), else None."""
    try:
        pid = int((home / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and pid_alive(pid) else None


def home_in_use(home: Path, pid: int) -> str:
    return (
        f"the Dagster home {home} is in use by another activation dev (pid {pid}); stop it, or "
        f"delete {home / PID_FILE} if that process is not one"
    )


class HomeInUse(RuntimeError):
    """Another live `activation dev` holds the home; the message names its pid."""


@contextmanager
def hold_home(home: Path) -> Iterator[Path]:
    """Write our pid to `<home>/.activation-dev.pid` for as long as the stack runs.

    Created exclusively, so two stacks starting together cannot both take it; a file left by a
    dead process is taken over. Removed on exit if it still holds our pid.
    """
    path = home / PID_FILE
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = home_holder(home)
            if holder is not None:
                raise HomeInUse(home_in_use(home, holder)) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(descriptor, "w") as file:
            file.write(f"{os.getpid()}\n")
        break
    else:
        raise HomeInUse(f"could not take {path}: another process keeps re-creating it")
    try:
        yield path
    finally:
        with suppress(OSError, ValueError):
            if int(path.read_text().strip()) == os.getpid():
                path.unlink()
