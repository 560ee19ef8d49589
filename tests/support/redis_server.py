"""A real Redis server for a test module: Debian's `redis-server` on a free loopback port, with a
password, no persistence, stopped (and waited for) when the context exits.

When `redis-server` is not installed, callers skip with `INSTALL_HINT` outside CI and fail
under CI (`CI=true`), where the suite must not silently lose the Celery test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from activation.sandbox.launcher import free_port

INSTALL_HINT = (
    "redis-server not found on PATH: install it with `sudo apt-get install redis-server` "
    "(Debian/Ubuntu) to run the Celery end-to-end test"
)
START_TIMEOUT_SECONDS = 20


class RedisUnavailableError(RuntimeError):
    """redis-server is missing; the message says how to install it."""


@dataclass
class RedisServer:
    host: str
    port: int
    password: str = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)

    def url(self, database: int = 0) -> str:
        """A redis:// URL with the password (a secret: pass it through the environment only)."""
        return f"redis://:{self.password}@{self.host}:{self.port}/{database}"

    def client(self, database: int = 0) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, password=self.password, db=database, socket_timeout=5
        )


def find_redis_server() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RedisUnavailableError(INSTALL_HINT)
    return found


@contextmanager
def running_redis(folder: Path) -> Iterator[RedisServer]:
    binary = find_redis_server()
    folder.mkdir(parents=True, exist_ok=True)
    password = "redis-" + secrets.token_hex(12)
    port = free_port()
    config = folder / "redis.conf"
    # The password goes in a config file (0600), not on the command line other users can read.
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nrequirepass {password}\ndir {folder}\n"
        'save ""\nappendonly no\ndaemonize no\nlogfile ' + str(folder / "redis.log") + "\n"
    )
    config.chmod(0o600)
    process = subprocess.Popen([binary, str(config)], cwd=folder, stdin=subprocess.DEVNULL)
    server = RedisServer("127.0.0.1", port, password, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                log = folder / "redis.log"
                raise RuntimeError(
                    f"redis-server exited with {process.returncode}:\n"
                    + (log.read_text() if log.exists() else "")
                )
            try:
                if server.client().ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def redis_or_skip() -> str:
    """redis-server's path; outside CI a missing server skips, under CI it fails."""
    import pytest

    try:
        return find_redis_server()
    except RedisUnavailableError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{error} (CI never skips this test)")
        pytest.skip(str(error))
