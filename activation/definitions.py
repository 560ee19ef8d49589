"""The map of the code location: assembles definitions from the modules that define them.

Loaded lazily through `@dg.definitions`: importing this module does no dbt parse and no HTTP.
When Dagster loads the definitions, dagster-airbyte lists the Airbyte streams over HTTP (its
loader requires it) and `@dbt_assets` reads the prepared manifest.
"""

from __future__ import annotations

import dagster as dg
from dagster_airbyte import AirbyteWorkspace

from activation.activate import PARALLEL_SYNCS, build_sync_asset, sync_asset_key
from activation.automation import build_automation_definitions
from activation.dbt_project import dbt_project
from activation.destinations import load_destinations, validate_against_manifest_file
from activation.environment import resolve_endpoints
from activation.ingest import build_ingest_assets
from activation.promotion import build_promotion_definitions
from activation.quality import build_quality_definitions
from activation.resources import HightouchResource, SlackWebhookResource
from activation.resync import build_resync_definitions
from activation.run_summary import build_report_spec, build_summary_sensors
from activation.transform import build_dbt_assets, build_dbt_resource

# Hightouch answers 429 past 200 requests per 10 s per workspace.
HIGHTOUCH_WORKSPACE_REQUESTS_PER_SECOND = 20.0


def build_definitions() -> dg.Definitions:
    endpoints = resolve_endpoints()
    destinations = load_destinations()
    airbyte = AirbyteWorkspace(
        rest_api_base_url=endpoints.airbyte_rest_api_base_url,
        configuration_api_base_url=endpoints.airbyte_configuration_api_base_url,
        workspace_id=endpoints.airbyte_workspace_id,
        client_id=dg.EnvVar("AIRBYTE_CLIENT_ID") if endpoints.airbyte_client_id else None,
        client_secret=dg.EnvVar("AIRBYTE_CLIENT_SECRET") if endpoints.airbyte_client_id else None,
        poll_interval=endpoints.poll_interval_seconds,
        # Follow a sync already running for the connection (409 otherwise), and cancel the
        # Airbyte job when Dagster stops waiting, so no job outlives the step that started it.
        poll_timeout=endpoints.airbyte_poll_timeout_seconds,
        poll_previous_running_sync=True,
        cancel_on_termination=True,
    )
    hightouch = HightouchResource(
        api_base_url=endpoints.hightouch_api_base_url,
        api_token=dg.EnvVar("HIGHTOUCH_API_TOKEN"),
        app_url=endpoints.hightouch_app_url,
        max_requests_per_second=HIGHTOUCH_WORKSPACE_REQUESTS_PER_SECOND / len(destinations),
    )
    slack = SlackWebhookResource(
        webhook_url=dg.EnvVar(endpoints.slack_webhook_url_var)
        if endpoints.slack_webhook_url_var
        else endpoints.slack_webhook_url
    )
    assets = [
        *build_ingest_assets(airbyte),
        build_dbt_assets(),
        *(build_sync_asset(d) for d in destinations),
    ]
    # After the dbt assets, so a missing manifest is reported by them with its own fix.
    validate_against_manifest_file(destinations, dbt_project.manifest_path)
    activate_job = dg.define_asset_job(
        "activate",
        selection=dg.AssetSelection.groups("ingest", "transform")
        | dg.AssetSelection.assets(*(sync_asset_key(d) for d in destinations)),
        description="The whole chain: Airbyte sync, dbt build with blocking tests, then one "
        "Hightouch sync per destination in parallel; the summary sensors report each run.",
        executor_def=PARALLEL_SYNCS,
    )
    core = dg.Definitions(
        assets=[*assets, build_report_spec(destinations)],
        jobs=[activate_job],
        sensors=build_summary_sensors(destinations),
        resources={
            "airbyte": airbyte,
            "dbt": build_dbt_resource(),
            "hightouch": hightouch,
            "slack": slack,
        },
    )
    # One builder per concern, each in its own module, each returning its own Definitions.
    # Resource keys must not repeat across builders (merge refuses a conflicting key).
    return dg.Definitions.merge(
        core,
        build_quality_definitions(destinations),
        build_automation_definitions(assets, destinations),
        build_promotion_definitions(destinations),
        build_resync_definitions(destinations),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
