"""The dbt project, constructed once and imported everywhere else.

Constructing `DbtProject` does no parsing. The manifest is prepared before the code location
loads (`activation prepare`, run by `make demo`, `make dev` and the tests; in a deployment, at
image build), because `@dbt_assets` reads it when definitions load.
"""

from __future__ import annotations

import os

from dagster_dbt import DbtProject

from activation.lib.paths import DBT_PROJECT_DIR, warehouse_target

_target = warehouse_target()
# ACTIVATION_DBT_TARGET_PATH gives a process its own manifest folder (relative to dbt_project/):
# parallel test workers each parse into their own, so none reads a manifest another is writing.
_target_base = os.environ.get("ACTIVATION_DBT_TARGET_PATH", "").strip() or "target"

# The manifest records the adapter (asset kinds and storage metadata come from it), so a target
# other than the default duckdb keeps its own manifest in `target/<target>/`: a postgres code
# location and a duckdb one can be prepared side by side without overwriting each other.
dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=_target,
    target_path=_target_base if _target == "duckdb" else f"{_target_base}/{_target}",
)
