"""Where the project's files live. The project root is named once, here."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # activation/lib/paths.py -> the checkout
# `ACTIVATION_DBT_PROJECT_DIR` points the code location at another dbt project (the load-time
# benchmark generates one); read once, when this module is imported.
DBT_PROJECT_DIR = Path(
    os.environ.get("ACTIVATION_DBT_PROJECT_DIR") or PROJECT_ROOT / "dbt_project"
).resolve()
DBT_TARGET_VAR = "ACTIVATION_DBT_TARGET"
DEFAULT_DESTINATIONS_FILE = PROJECT_ROOT / "destinations.yaml"


def data_dir() -> Path:
    """Local runtime state: the DuckDB warehouse, raw landing files, sandbox state.

    `ACTIVATION_DATA_DIR` moves it (tests point it at a temporary folder); the default is a
    git-ignored `.activation/` folder in the project root.
    """
    return Path(os.environ.get("ACTIVATION_DATA_DIR") or PROJECT_ROOT / ".activation").resolve()


def warehouse_path() -> Path:
    """The DuckDB warehouse file that dbt builds (the dbt profile reads the same variable)."""
    return data_dir() / "warehouse.duckdb"


def warehouse_target() -> str:
    """The dbt target, and so the warehouse: `duckdb` (default, the file above) or `postgres`
    (ACTIVATION_PG_* variables; the sandbox then lands raw tables there and reads marts there)."""
    return os.environ.get(DBT_TARGET_VAR, "").strip() or "duckdb"


def raw_dir() -> Path:
    """Where the Airbyte stand-in lands raw streams as Parquet files, one per stream."""
    return data_dir() / "raw"


def destinations_file() -> Path:
    """The destinations declaration; `ACTIVATION_DESTINATIONS_FILE` points at another one."""
    return Path(os.environ.get("ACTIVATION_DESTINATIONS_FILE") or DEFAULT_DESTINATIONS_FILE)
