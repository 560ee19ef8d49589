"""The dbt project, constructed once and imported everywhere else.

Constructing `DbtProject` does no parsing. The manifest is prepared before the code location
loads (`activation prepare`, run by `make demo`, `make dev` and the tests; in a deployment, at
image build), because `@dbt_assets` reads it when definitions load.
"""

from __future__ import annotations

import os

from dagster_dbt import DbtProject

from activation.paths import DBT_PROJECT_DIR

DBT_TARGET_VAR = "ACTIVATION_DBT_TARGET"

dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=os.environ.get(DBT_TARGET_VAR) or "duckdb",
)
