"""The map of the code location: assembles definitions from the modules that define them.

Loaded lazily through `@dg.definitions`: importing this module does no dbt parse and no HTTP.
When Dagster loads the definitions, dagster-airbyte lists the Airbyte streams over HTTP (its
loader requires it) and `@dbt_assets` reads the prepared manifest.
"""

from __future__ import annotations

import dagster as dg
from dagster_airbyte import AirbyteWorkspace

from activation.activate import build_report_asset, build_sync_asset
from activation.destinations import load_destinations
from activation.environment import resolve_endpoints
from activation.ingest import build_ingest_assets
from activation.resources import HightouchResource, SlackWebhookResource
from activation.transform import build_dbt_assets, build_dbt_resource


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
    )
    hightouch = HightouchResource(
        api_base_url=endpoints.hightouch_api_base_url,
        api_token=dg.EnvVar("HIGHTOUCH_API_TOKEN"),
        app_url=endpoints.hightouch_app_url,
        poll_interval_seconds=endpoints.poll_interval_seconds,
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
        build_report_asset(destinations),
    ]
    activate_job = dg.define_asset_job(
        "activate",
        selection=dg.AssetSelection.groups("ingest", "transform", "activate"),
        description="The whole chain: Airbyte sync, dbt build with blocking tests, then the "
        "Hightouch syncs and the Slack report.",
    )
    core = dg.Definitions(
        assets=assets,
        jobs=[activate_job],
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
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
