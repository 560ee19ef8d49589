"""The `activate` job: the whole chain in one run, Airbyte -> dbt build (tests are blocking
checks) -> one Hightouch sync per destination, in parallel."""

import dagster as dg

from activation.core.executors import fan_out_executor
from activation.defs.ingest.airbyte import INGEST_GROUP
from activation.defs.transform.dbt import TRANSFORM_GROUP
from activation.lib.destinations import load_destinations, sync_asset_key_for

ACTIVATE_JOB = "activate"


@dg.definitions
def defs() -> dg.Definitions:
    sync_keys = [sync_asset_key_for(d.key) for d in load_destinations()]
    activate = dg.define_asset_job(
        ACTIVATE_JOB,
        selection=dg.AssetSelection.groups(INGEST_GROUP, TRANSFORM_GROUP)
        | dg.AssetSelection.assets(*sync_keys),
        description="The whole chain: Airbyte sync, dbt build with blocking tests, then one "
        "Hightouch sync per destination in parallel; the summary sensors report each run.",
        executor_def=fan_out_executor(),
    )
    return dg.Definitions(jobs=[activate])
