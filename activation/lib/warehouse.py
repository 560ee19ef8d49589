"""The one way to connect to the warehouse dbt builds.

Which warehouse follows dbt's target (`ACTIVATION_DBT_TARGET`, see `activation.lib.paths`):

- `duckdb` (default): the file dbt builds (`warehouse_path()`). DuckDB lets one process write a
  file only while no other process holds it open, even read-only, so connections are short-lived
  and a lock conflict (`duckdb.IOException`) is retried a bounded number of times with a doubling
  delay (`retry_while_locked`).
- `postgres`: the database the `ACTIVATION_PG_*` variables name (the ones dbt's `postgres`
  profile reads); the password is read at connection time and never logged.

Every failure is a `WarehouseError` (or the error class the caller asks for) whose message names
the file or the database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from activation.lib.environment import MissingSettingError
from activation.lib.paths import warehouse_path, warehouse_target

_T = TypeVar("_T")


class WarehouseError(RuntimeError):
    """The warehouse could not be read or written; the message names the file or database."""


# -- settings --------------------------------------------------------------------------------------

POSTGRES_VARIABLES = (
    "ACTIVATION_PG_HOST",
    "ACTIVATION_PG_USER",
    "ACTIVATION_PG_PASSWORD",
    "ACTIVATION_PG_DATABASE",
)


@dataclass(frozen=True)
class PostgresSettings:
    """The PostgreSQL warehouse, from the variables dbt's `postgres` profile reads."""

    host: str
    port: int
    user: str
    database: str
    password: str = field(repr=False)
    sslmode: str = "prefer"

    def __str__(self) -> str:
        """The database as errors name it (never the password)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def connect_arguments(self) -> dict[str, object]:
        """Keyword arguments of `psycopg2.connect` (the password included: never log them)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.database,
            "sslmode": self.sslmode,
            "connect_timeout": 10,
        }


def postgres_settings(error: type[Exception] = MissingSettingError) -> PostgresSettings:
    """The ACTIVATION_PG_* settings; raises `error` naming every missing or malformed one."""
    missing = [name for name in POSTGRES_VARIABLES if not os.environ.get(name, "").strip()]
    if missing:
        raise error(
            "ACTIVATION_DBT_TARGET=postgres needs these environment variables, which are not "
            "set: " + ", ".join(missing)
        )
    port = os.environ.get("ACTIVATION_PG_PORT", "").strip() or "5432"
    if not port.isdigit():
        raise error(f"ACTIVATION_PG_PORT must be a port number, got {port!r}")
    return PostgresSettings(
        host=os.environ["ACTIVATION_PG_HOST"].strip(),
        port=int(port),
        user=os.environ["ACTIVATION_PG_USER"].strip(),
        database=os.environ["ACTIVATION_PG_DATABASE"].strip(),
        password=os.environ["ACTIVATION_PG_PASSWORD"],
        sslmode=os.environ.get("ACTIVATION_PG_SSLMODE", "").strip() or "prefer",
    )


# -- DuckDB ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockRetry:
    """How long to wait for another process to let go of a DuckDB file: `attempts` tries, the
    delay between two doubling from `first_delay` up to `max_delay` seconds."""

    attempts: int
    first_delay: float
    max_delay: float


CONNECT_RETRY = LockRetry(attempts=8, first_delay=0.2, max_delay=3.0)
"""Opening a connection: about 15 s in all, longer than one dbt model write holds the file."""


def retry_while_locked(
    action: Callable[[], _T],
    retry: LockRetry,
    gave_up: Callable[[int, duckdb.IOException], Exception],
) -> _T:
    """`action()`, tried again while it fails with `duckdb.IOException` (another process holds
    the file). After the last attempt raises `gave_up(attempts, last error)`."""
    delay = retry.first_delay
    for attempt in range(1, retry.attempts + 1):
        try:
            return action()
        except duckdb.IOException as error:
            if attempt == retry.attempts:
                raise gave_up(attempt, error) from error
            time.sleep(delay)
            delay = min(delay * 2, retry.max_delay)
    raise AssertionError("LockRetry.attempts must be at least 1")


def connect_duckdb(
    path: Path, *, read_only: bool, retry: LockRetry = CONNECT_RETRY
) -> duckdb.DuckDBPyConnection:
    """A connection to the DuckDB file `path`, which must exist (DuckDB would create it)."""
    if not path.exists():
        raise WarehouseError(f"{path}: warehouse not found (has dbt built the marts?)")

    def locked(attempts: int, error: duckdb.IOException) -> WarehouseError:
        return WarehouseError(f"{path}: still locked after {attempts} attempts: {error}")

    return retry_while_locked(lambda: duckdb.connect(str(path), read_only=read_only), retry, locked)


def fetch_int(connection: duckdb.DuckDBPyConnection, sql: str) -> int:
    """The integer in the first column of the one row `sql` answers (a count)."""
    row = connection.execute(sql).fetchone()
    if row is None:
        raise WarehouseError(f"no row answered {sql[:80]!r}")
    return int(row[0])


# -- PostgreSQL ------------------------------------------------------------------------------------


@contextmanager
def postgres_cursor(
    settings: PostgresSettings,
    *,
    options: str | None = None,
    error: type[Exception] = WarehouseError,
) -> Iterator[Any]:
    """A psycopg2 cursor in one transaction, committed when the block ends without error, on a
    connection closed after. `options` are server settings (`-c TimeZone=UTC ...`); a refused
    connection raises `error` naming the database."""
    import psycopg2

    arguments = settings.connect_arguments()
    if options is not None:
        arguments["options"] = options
    try:
        connection = psycopg2.connect(**arguments)
    except psycopg2.OperationalError as refused:
        raise error(
            f"could not connect to the warehouse {settings}: {str(refused).strip()}"
        ) from refused
    try:
        with connection, connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


# -- sessions --------------------------------------------------------------------------------------


class Session:
    """One short-lived warehouse connection, for SQL written to run the same on DuckDB and
    PostgreSQL (no parameters: every name in it must be a validated identifier)."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        self._cursor.execute(sql)
        return list(self._cursor.fetchall())

    def one(self, sql: str) -> tuple[Any, ...]:
        return self.rows(sql)[0]

    def run(self, sql: str) -> None:
        self._cursor.execute(sql)


@contextmanager
def warehouse_connection(path: Path | None = None, *, read_only: bool) -> Iterator[Session]:
    """A connection to the warehouse dbt builds: the DuckDB file (`path`, default
    `warehouse_path()`), or PostgreSQL when ACTIVATION_DBT_TARGET=postgres and no path is given.
    Writes are committed when the block ends without error."""
    if path is None and warehouse_target() == "postgres":
        with _postgres() as session:
            yield session
        return
    with _duckdb(path or warehouse_path(), read_only=read_only) as session:
        yield session


@contextmanager
def _duckdb(path: Path, *, read_only: bool) -> Iterator[Session]:
    """Retried while another process holds the file's lock (DuckDB allows one writer process)."""
    connection = connect_duckdb(path, read_only=read_only)
    try:
        connection.begin()
        yield Session(connection)
        connection.commit()
    finally:
        connection.close()


@contextmanager
def _postgres() -> Iterator[Session]:
    """From the ACTIVATION_PG_* variables dbt's `postgres` profile reads (the password is read
    here at run time and never logged)."""
    with postgres_cursor(postgres_settings(WarehouseError)) as cursor:
        yield Session(cursor)
