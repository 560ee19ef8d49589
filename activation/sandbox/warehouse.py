"""The warehouse as the stand-ins use it: Airbyte lands raw streams in it, Hightouch reads marts.

Which warehouse follows dbt's target (`ACTIVATION_DBT_TARGET`, see `activation.lib.paths`):

- `duckdb` (default): the file dbt builds. dbt's sources read the Parquet files the Airbyte
  stand-in writes, so landing needs nothing more. A DuckDB file that one process holds open cannot
  be written by any other, so a mart is read by attaching the file read-only for the moment of one
  copy, and a lock conflict (dbt writing right now) is retried a bounded number of times.
- `postgres`: a real PostgreSQL database (the `ACTIVATION_PG_*` variables dbt's profile reads).
  Each landing is also loaded into the tables `raw.<stream>` (dbt's sources there) in one
  transaction, so dbt sees every stream of one landing or none; marts are read over a connection.

Either way the mart ends up as a table in the sandbox's own DuckDB store, with the key cast to
VARCHAR and the mapped columns keeping their types, so the sync plan is the same for both.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb

from activation.lib.warehouse import (
    LockRetry,
    PostgresSettings,
    WarehouseError,
    fetch_int,
    postgres_cursor,
    postgres_settings,
    retry_while_locked,
)

if TYPE_CHECKING:
    from activation.sandbox.context import SandboxStore

# Reading a mart waits longer than a connection in the code location: dbt may hold the file
# for a whole build.
MART_READ_RETRY = LockRetry(attempts=20, first_delay=0.1, max_delay=1.0)
RAW_SCHEMA = "raw"
MARTS_SCHEMA = "marts"
_aliases = itertools.count(1)


class WarehouseUnavailableError(WarehouseError):
    """The warehouse cannot be reached (the PostgreSQL server refused or did not answer)."""


class MartUnavailableError(WarehouseUnavailableError):
    """The mart cannot be read: no warehouse, no such table or column, or locked too long."""


class WarehouseSettingError(RuntimeError):
    """The selected warehouse is not configured; the message names the variables to set."""


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Warehouse(Protocol):
    def land_raw(self, raw_dir: Path, streams: Sequence[str]) -> None:
        """Make the Parquet files just landed in `raw_dir` visible to dbt's sources."""

    def copy_mart(
        self, store: SandboxStore, mart: str, *, key: str, columns: Sequence[str], into: str
    ) -> int:
        """Copy `marts.<mart>` (`key` as VARCHAR, then `columns`) into store table `into`.

        Record ids are strings in every CRM, so the key is cast once here. Returns the row count.
        """


def open_warehouse(target: str, duckdb_path: Path) -> Warehouse:
    """The warehouse of dbt target `target`; raises `WarehouseSettingError` if misconfigured."""
    if target == "duckdb":
        return DuckDBWarehouse(duckdb_path)
    if target == "postgres":
        return PostgresWarehouse.from_environment()
    raise WarehouseSettingError(
        f"ACTIVATION_DBT_TARGET={target!r} is not a warehouse the sandbox knows: use duckdb "
        "(default) or postgres"
    )


# -- DuckDB ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DuckDBWarehouse:
    path: Path

    def land_raw(self, raw_dir: Path, streams: Sequence[str]) -> None:
        """Nothing to do: dbt's sources read the Parquet files (`meta.external_location`)."""

    def copy_mart(
        self, store: SandboxStore, mart: str, *, key: str, columns: Sequence[str], into: str
    ) -> int:
        if not self.path.exists():
            raise MartUnavailableError(
                f"the warehouse {self.path} does not exist yet: run dbt to build marts.{mart}"
            )

        def locked(attempts: int, error: duckdb.IOException) -> MartUnavailableError:
            return MartUnavailableError(
                f"could not read {self.path} after {attempts} attempts (is dbt holding it?): "
                f"{error}"
            )

        return retry_while_locked(
            lambda: self._copy_once(store, mart, key, columns, into), MART_READ_RETRY, locked
        )

    def _copy_once(
        self, store: SandboxStore, mart: str, key: str, columns: Sequence[str], into: str
    ) -> int:
        alias = f"warehouse_{next(_aliases)}"
        select = ", ".join([f"CAST({quote(key)} AS VARCHAR) AS {quote(key)}", *map(quote, columns)])
        with store.cursor() as cursor:
            cursor.execute(f"ATTACH {_literal(str(self.path))} AS {alias} (READ_ONLY)")
            try:
                cursor.execute(
                    f"CREATE OR REPLACE TABLE {quote(into)} AS "
                    f"SELECT {select} FROM {alias}.{MARTS_SCHEMA}.{quote(mart)}"
                )
            except duckdb.CatalogException as error:
                raise MartUnavailableError(
                    f"table marts.{mart} is not in the warehouse {self.path}: has dbt built it?"
                ) from error
            except duckdb.BinderException as error:
                raise MartUnavailableError(
                    f"marts.{mart} lacks a column the sync maps ({key}, {', '.join(columns)}): "
                    f"{str(error).splitlines()[0]}"
                ) from error
            finally:
                cursor.execute(f"DETACH {alias}")
            return fetch_int(cursor, f"SELECT count(*) FROM {quote(into)}")


# -- PostgreSQL ------------------------------------------------------------------------------------

# DuckDB types of the landed Parquet columns -> PostgreSQL column types (as format_type prints
# them, so an existing table can be compared with what a landing needs).
_POSTGRES_TYPES = {
    "VARCHAR": "text",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "SMALLINT": "smallint",
    "BOOLEAN": "boolean",
    "DOUBLE": "double precision",
    "FLOAT": "real",
    "DATE": "date",
    "TIMESTAMP": "timestamp without time zone",
    "TIMESTAMP WITH TIME ZONE": "timestamp with time zone",
}


def postgres_type(duckdb_type: str) -> str:
    """The PostgreSQL column type for a DuckDB column type of a landed stream."""
    decimal = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", duckdb_type)
    if decimal:
        return f"numeric({decimal[1]},{decimal[2]})"
    try:
        return _POSTGRES_TYPES[duckdb_type]
    except KeyError:
        raise ValueError(f"no PostgreSQL type for the landed DuckDB type {duckdb_type}") from None


def duckdb_type(postgres_type_name: str) -> str:
    """The DuckDB type a mart column of this PostgreSQL type is copied as (text if unknown)."""
    name = postgres_type_name.lower()
    numeric = re.fullmatch(r"numeric\((\d+),(\d+)\)", name)
    if numeric and int(numeric[1]) <= 38:
        return f"DECIMAL({numeric[1]},{numeric[2]})"
    if name.startswith("numeric") or name == "double precision":
        return "DOUBLE"
    if name.startswith("timestamp") and "with time zone" in name and "without" not in name:
        return "TIMESTAMPTZ"
    if name.startswith("timestamp"):
        return "TIMESTAMP"
    simple = {
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "smallint": "SMALLINT",
        "boolean": "BOOLEAN",
        "real": "FLOAT",
        "date": "DATE",
    }
    return simple.get(name, "VARCHAR")


@dataclass(frozen=True)
class PostgresWarehouse:
    settings: PostgresSettings

    @classmethod
    def from_environment(cls) -> PostgresWarehouse:
        """From the variables dbt's `postgres` profile reads; names every one that is missing."""
        return cls(postgres_settings(WarehouseSettingError))

    def __str__(self) -> str:
        return str(self.settings)

    @contextmanager
    def _transaction(
        self, unavailable: type[WarehouseUnavailableError] = WarehouseUnavailableError
    ) -> Iterator[Any]:
        """A cursor in one transaction (committed on success), on a connection closed after.
        UTC and ISO dates, so the CSV copies read the same whatever the server's defaults."""
        with postgres_cursor(
            self.settings, options="-c TimeZone=UTC -c DateStyle=ISO", error=unavailable
        ) as cursor:
            yield cursor

    @staticmethod
    def _column_types(cursor: Any, schema: str, table: str) -> list[tuple[str, str]]:
        """(name, type) of each column of `schema.table` in order; empty if there is no table."""
        cursor.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (schema, table),
        )
        return [(name, type_name) for name, type_name in cursor.fetchall()]

    def land_raw(self, raw_dir: Path, streams: Sequence[str]) -> None:
        """Load each stream's Parquet file into `raw.<stream>`, all streams in one transaction.

        The table is emptied and refilled (Airbyte's full refresh - overwrite); dbt's staging
        views on it stay in place. Only if the landed columns changed is it dropped and created
        again, which drops the views on it too (dbt creates them again on its next build).
        """
        with tempfile.TemporaryDirectory(prefix="activation-landing-") as folder:
            files = _parquet_to_csv(raw_dir, streams, Path(folder))
            with self._transaction() as cursor:
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {RAW_SCHEMA}")
                for stream, (columns, csv_path) in files.items():
                    table = f"{RAW_SCHEMA}.{quote(stream)}"
                    existing = self._column_types(cursor, RAW_SCHEMA, stream)
                    if existing == columns:
                        cursor.execute(f"TRUNCATE {table}")
                    else:
                        if existing:
                            cursor.execute(f"DROP TABLE {table} CASCADE")
                        definition = ", ".join(f"{quote(name)} {kind}" for name, kind in columns)
                        cursor.execute(f"CREATE TABLE {table} ({definition})")
                    with csv_path.open() as rows:
                        cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv)", rows)

    def copy_mart(
        self, store: SandboxStore, mart: str, *, key: str, columns: Sequence[str], into: str
    ) -> int:
        with tempfile.TemporaryDirectory(prefix="activation-mart-") as folder:
            csv_path = Path(folder) / f"{mart}.csv"
            with self._transaction(MartUnavailableError) as cursor:
                types = dict(self._column_types(cursor, MARTS_SCHEMA, mart))
                if not types:
                    raise MartUnavailableError(
                        f"table marts.{mart} is not in the warehouse {self}: has dbt built it?"
                    )
                missing = [name for name in (key, *columns) if name not in types]
                if missing:
                    raise MartUnavailableError(
                        f"marts.{mart} lacks a column the sync maps ({key}, {', '.join(columns)}):"
                        f" no column {', '.join(missing)} in {self}"
                    )
                select = ", ".join(
                    [f"CAST({quote(key)} AS text) AS {quote(key)}", *map(quote, columns)]
                )
                with csv_path.open("w") as out:
                    cursor.copy_expert(
                        f"COPY (SELECT {select} FROM {MARTS_SCHEMA}.{quote(mart)}) "
                        "TO STDOUT WITH (FORMAT csv)",
                        out,
                    )
            shapes = {key: "VARCHAR", **{name: duckdb_type(types[name]) for name in columns}}
            struct = ", ".join(
                f"{_literal(name)}: {_literal(kind)}" for name, kind in shapes.items()
            )
            with store.cursor() as cursor:
                # A quoted empty field is an empty string, an unquoted one NULL (as COPY wrote).
                cursor.execute(
                    f"CREATE OR REPLACE TABLE {quote(into)} AS SELECT * FROM read_csv("
                    f"{_literal(str(csv_path))}, columns = {{{struct}}}, header = false, "
                    "auto_detect = false, allow_quoted_nulls = false)"
                )
                return fetch_int(cursor, f"SELECT count(*) FROM {quote(into)}")


def _parquet_to_csv(
    raw_dir: Path, streams: Sequence[str], folder: Path
) -> dict[str, tuple[list[tuple[str, str]], Path]]:
    """Each stream as CSV (NULL unquoted-empty, '' quoted, as COPY FROM reads them) + columns."""
    files: dict[str, tuple[list[tuple[str, str]], Path]] = {}
    with duckdb.connect(":memory:") as connection:
        for stream in streams:
            source = f"read_parquet({_literal(str(raw_dir / f'{stream}.parquet'))})"
            described = connection.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
            columns = [(str(row[0]), postgres_type(str(row[1]))) for row in described]
            csv_path = folder / f"{stream}.csv"
            connection.execute(
                f"COPY (SELECT * FROM {source}) TO {_literal(str(csv_path))} "
                "(FORMAT csv, HEADER false)"
            )
            files[stream] = (columns, csv_path)
    return files
