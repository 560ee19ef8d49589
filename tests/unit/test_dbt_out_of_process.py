"""Loading the code location imports no dbt-core: dagster-dbt runs in its mode for a dbt outside
the interpreter (activation/dbt_out_of_process.py), and builds the same assets and checks as
with dbt-core imported beside it.

Each case is a fresh interpreter, as a code server, a run worker or `dagster job execute` is:
what a process has imported is the subject.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from activation.lib.paths import PROJECT_ROOT
from tests.support.child_process import last_json, run_python
from tests.support.warehouse_path import prepare_manifest_in
from tests.unit.conftest import LISTING, NOWHERE

PROBE = r"""
import json, sys

if sys.argv[1] == "dagster-dbt-first":
    import dagster_dbt  # before this package: dagster-dbt decides with dbt-core importable

import activation.definitions as location
import dagster_dbt.compat

graph = location.build_definitions().get_repository_def().asset_graph
loaded = sorted(m for m in sys.modules if m == "dbt" or m.startswith("dbt."))
import dbt.version  # dbt-core itself stays importable

print(json.dumps({
    "dbt_core_modules": loaded,
    "dbt_core_seen_by_dagster_dbt": dagster_dbt.compat.DBT_PYTHON_VERSION is not None,
    "dbt_core_importable_after": dbt.version.__version__,
    "assets": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
    "checks": sorted(
        (key.to_user_string(), graph.get(key).blocking) for key in graph.asset_check_keys
    ),
}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dbt_out_of_process")
    shutil.copy(LISTING, folder / "airbyte_listing.json")
    prepare_manifest_in(folder)
    (folder / "probe.py").write_text(PROBE)
    return folder


def _load(folder: Path, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ACTIVATION_SANDBOX_URL"}
    env.update(NOWHERE, ACTIVATION_DATA_DIR=str(folder), PYTHONPATH=str(PROJECT_ROOT))
    return last_json(run_python(str(folder / "probe.py"), mode, env=env))


@pytest.fixture(scope="module")
def product_load(probe: Path) -> dict:
    """A load as every Dagster process of this product makes it: this package first."""
    return _load(probe, "activation-first")


def test_a_load_imports_no_dbt_core_and_leaves_it_importable(product_load: dict) -> None:
    loaded = product_load
    assert loaded["dbt_core_modules"] == []
    assert loaded["dbt_core_seen_by_dagster_dbt"] is False
    assert loaded["dbt_core_importable_after"]
    # The dbt models and their tests are all there: the stand-in is not an empty project.
    assert "marts/mart_braze_users" in loaded["assets"]
    assert sum(1 for _, blocking in loaded["checks"] if blocking) > 20


def test_the_same_assets_and_checks_as_with_dbt_core_imported(
    probe: Path, product_load: dict
) -> None:
    without = product_load
    with_dbt_core = _load(probe, "dagster-dbt-first")
    # The control: imported first, dagster-dbt loads dbt-core's adapter classes itself.
    assert with_dbt_core["dbt_core_seen_by_dagster_dbt"] is True
    assert "dbt.adapters.base" in with_dbt_core["dbt_core_modules"]
    assert without["assets"] == with_dbt_core["assets"]
    assert without["checks"] == with_dbt_core["checks"]
