"""The code location loaded as a deployment loads it, with no service reachable: shared by the
unit tests that read the assembled definitions (snapshot, descriptions and owners)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from tests.support.warehouse_path import stable_data_dir

HERE = Path(__file__).resolve().parent
LISTING = HERE.parent / "fixtures" / "airbyte_listing.json"
# Real-service settings that point nowhere: loading must not call any of them.
NOWHERE = {
    "AIRBYTE_REST_API_BASE_URL": "http://127.0.0.1:9/api/public/v1",
    "AIRBYTE_CONFIGURATION_API_BASE_URL": "http://127.0.0.1:9/api/v1",
    "AIRBYTE_WORKSPACE_ID": "snapshot-workspace",
    "HIGHTOUCH_API_TOKEN": "snapshot-token",
    "SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack",
}


@pytest.fixture(scope="module")
def location(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.Definitions]:
    from activation.lib.destinations import load_destinations
    from activation.tooling.demo import prepare_dbt_manifest

    folder = tmp_path_factory.mktemp("snapshot_data")
    shutil.copy(LISTING, folder / "airbyte_listing.json")
    with stable_data_dir(folder) as data, pytest.MonkeyPatch.context() as patch:
        patch.delenv("ACTIVATION_SANDBOX_URL", raising=False)
        patch.setenv("ACTIVATION_DATA_DIR", str(data))
        for name, value in NOWHERE.items():
            patch.setenv(name, value)
        load_destinations.cache_clear()
        prepare_dbt_manifest()
        from activation.definitions import build_definitions

        yield build_definitions()
    load_destinations.cache_clear()
