"""Read a mart from the DuckDB warehouse into the sandbox store, as Hightouch queries a model.

dbt writes the warehouse from another process, and a DuckDB file that one process holds open
cannot be written by any other. So the warehouse is attached read-only only for the moment of one
copy, then detached, and a lock conflict (dbt writing right now) is retried a bounded number of
times before the run gives up with a clear error.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

from activation.sandbox.context import SandboxStore

ATTEMPTS = 20
FIRST_DELAY_SECONDS = 0.1
MAX_DELAY_SECONDS = 1.0
_aliases = itertools.count(1)


class MartUnavailableError(RuntimeError):
    """The mart cannot be read: no warehouse file, no such table or column, or locked too long."""


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def copy_mart(
    store: SandboxStore,
    warehouse_path: Path,
    mart: str,
    *,
    key: str,
    columns: Sequence[str],
    into: str,
) -> int:
    """Copy `marts.<mart>` (`key` as VARCHAR, then `columns`) into store table `into`.

    Record ids are strings in every CRM, so the key is cast once here. Returns the row count.
    """
    if not warehouse_path.exists():
        raise MartUnavailableError(
            f"the warehouse {warehouse_path} does not exist yet: run dbt to build marts.{mart}"
        )
    delay = FIRST_DELAY_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _copy_once(store, warehouse_path, mart, key, columns, into)
        except duckdb.IOException as error:
            if attempt == ATTEMPTS:
                raise MartUnavailableError(
                    f"could not read {warehouse_path} after {ATTEMPTS} attempts (is dbt "
                    f"holding it?): {error}"
                ) from error
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
    raise AssertionError("unreachable")


def _copy_once(
    store: SandboxStore,
    warehouse_path: Path,
    mart: str,
    key: str,
    columns: Sequence[str],
    into: str,
) -> int:
    alias = f"warehouse_{next(_aliases)}"
    select = ", ".join([f"CAST({quote(key)} AS VARCHAR) AS {quote(key)}", *map(quote, columns)])
    with store.cursor() as cursor:
        path = str(warehouse_path).replace("'", "''")
        cursor.execute(f"ATTACH '{path}' AS {alias} (READ_ONLY)")
        try:
            cursor.execute(
                f"CREATE OR REPLACE TABLE {quote(into)} AS "
                f"SELECT {select} FROM {alias}.marts.{quote(mart)}"
            )
        except duckdb.CatalogException as error:
            raise MartUnavailableError(
                f"table marts.{mart} is not in the warehouse {warehouse_path}: has dbt built it?"
            ) from error
        except duckdb.BinderException as error:
            raise MartUnavailableError(
                f"marts.{mart} lacks a column the sync maps ({key}, {', '.join(columns)}): "
                f"{str(error).splitlines()[0]}"
            ) from error
        finally:
            cursor.execute(f"DETACH {alias}")
        return cursor.execute(f"SELECT count(*) FROM {quote(into)}").fetchone()[0]
