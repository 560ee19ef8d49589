"""The dbt project, constructed once and imported everywhere else.

Constructing `DbtProject` does no parsing. The manifest is prepared before the code location
loads (`activation prepare`, run by `make demo`, `make dev` and the tests; in a deployment, at
image build), because `@dbt_assets` reads it when definitions load.
"""

from __future__ import annotations

from dagster_dbt import DbtProject

from activation.lib.paths import DBT_PROJECT_DIR, warehouse_target

_target = warehouse_target()

# The manifest records the adapter (asset kinds and storage metadata come from it), so a target
# other than the default duckdb keeps its own manifest in `target/<target>/`: a postgres code
# location and a duckdb one can be prepared side by side without overwriting each other.
dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=_target,
    target_path="target" if _target == "duckdb" else f"target/{_target}",
)
