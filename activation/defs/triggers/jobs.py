"""The jobs the trigger sensors launch: the syncs of an updated mart, and a dbt build plus the
syncs after data landed upstream (an Airbyte job started outside Dagster, a signed webhook)."""

import dagster as dg

from activation.defs.triggers.common import BUILD_JOB_NAME, BUILD_SELECTION, SYNC_JOB_NAME
from activation.lib.destinations import load_destinations, sync_asset_key_for


@dg.definitions
def defs() -> dg.Definitions:
    sync_keys = [sync_asset_key_for(d.key) for d in load_destinations()]
    sync_job = dg.define_asset_job(
        SYNC_JOB_NAME,
        selection=dg.AssetSelection.assets(*sync_keys),
        description="Hightouch syncs launched by mart_update_sensor (the sensor picks which).",
    )
    upstream_job = dg.define_asset_job(
        BUILD_JOB_NAME,
        selection=BUILD_SELECTION,
        description="dbt build (blocking tests) then the Hightouch syncs, launched when data "
        "landed upstream: an Airbyte job started outside Dagster, or a signed webhook. The "
        "sensors scope each run to the models and syncs downstream of what landed.",
    )
    return dg.Definitions(jobs=[sync_job, upstream_job])
