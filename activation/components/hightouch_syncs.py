"""The Hightouch component: one sync asset per destination declared in destinations.yaml.

Instantiated by activation/defs/activate/defs.yaml. No Hightouch component exists for a whole
workspace (dagster-hightouch wraps one sync in an op), so this one builds every sync asset from
the one declaration, checked against the dbt manifest when it loads.

Each sync asset sits downstream of its mart, so inside a run a failed blocking dbt test stops it
before it triggers anything. Its materialization carries the Hightouch run id, a link to the run
and the planned / successful / failed added / changed / removed counts.
"""

import os
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from activation.core.dbt_project import dbt_project
from activation.core.sync_path import SyncOptions, sync_destination
from activation.lib.destinations import (
    Destination,
    load_destinations,
    mart_asset_key,
    parse_destinations,
    sync_asset_key_for,
    validate_against_manifest_file,
)
from activation.resources import (
    HightouchResource,
    PagerDutyResource,
    QualityGate,
    SlackWebhookResource,
)

ACTIVATE_GROUP = "activate"

# Sync steps mostly wait on Hightouch: jobs that fan out to destinations run them all at once
# rather than one per core (the default). Pools still hold each destination to one sync at a
# time across runs.
PARALLEL_SYNCS = dg.multiprocess_executor.configured({"max_concurrent": 16})


def sync_asset_key(destination: Destination) -> dg.AssetKey:
    return sync_asset_key_for(destination.key)


class SyncRunConfig(dg.Config):
    """Launchpad options of one sync (defaults: an ordinary incremental sync)."""

    full_resync: bool = Field(
        default=False,
        description="Resend every row instead of the changes since the last run. A full resync "
        "does no diffing, so it never removes rows at the destination.",
    )
    reset_cdc: bool = Field(
        default=False,
        description="Forget Hightouch's change-data-capture state, so the next diff starts over.",
    )


def sync_retry_policy() -> dg.RetryPolicy:
    """Step retries for transient faults (the client already retried each request).

    Only this destination's step is retried; refusals (4xx, failed-rows policy, poll timeout,
    a cancelled run) are raised with `allow_retries=False` and never retried. The delay is
    ACTIVATION_SYNC_RETRY_DELAY_SECONDS (default 30 s), read when definitions load.
    """
    return dg.RetryPolicy(
        max_retries=2,
        delay=float(os.environ.get("ACTIVATION_SYNC_RETRY_DELAY_SECONDS", "30")),
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def build_sync_asset(destination: Destination) -> dg.AssetsDefinition:
    @dg.asset(
        key=sync_asset_key(destination),
        # `after`: a destination that must sync after another depends on its sync asset, so a
        # failure upstream skips it (and no one else).
        deps=[
            mart_asset_key(destination.mart),
            *(sync_asset_key_for(k) for k in destination.after),
        ],
        group_name=ACTIVATE_GROUP,
        kinds={"hightouch", destination.destination_type},
        owners=[f"team:{destination.owner.team}"],
        tags={"destination": destination.destination_type},
        pool=destination.pool,
        retry_policy=sync_retry_policy(),
        description=destination.description
        or f"Hightouch sync of {destination.mart} to {destination.destination_type}.",
        metadata={
            "mart": destination.mart,
            "primary_key": destination.primary_key,
            "mapped_columns": ", ".join(destination.mapped_columns),
            "hightouch_sync": destination.sync_reference,
            "slack_channel": destination.owner.slack_channel,
        },
    )
    def _sync(
        context: AssetExecutionContext,
        config: SyncRunConfig,
        hightouch: HightouchResource,
        pagerduty: PagerDutyResource,
        slack: SlackWebhookResource,
        quality_gate: dg.ResourceParam[QualityGate],
    ) -> dg.MaterializeResult:
        # The one sync path: the gate reads check results across runs, so whatever launched
        # this step, untested, failed or changed marts stop it before anything reaches Hightouch.
        result = sync_destination(
            context,
            destination,
            hightouch=hightouch,
            gate=quality_gate,
            pagerduty=pagerduty,
            slack=slack,
            options=SyncOptions(full_resync=config.full_resync, reset_cdc=config.reset_cdc),
        )
        return dg.MaterializeResult(metadata=result.metadata)

    return _sync


class HightouchSyncs(dg.Component, dg.Resolvable, dg.Model):
    """One Hightouch sync asset per declared destination, each going through the one sync path
    (`activation.core.sync_path.sync_destination`)."""

    destinations_file: str | None = Field(
        default=None,
        description="Declaration to read; default: ACTIVATION_DESTINATIONS_FILE, else the "
        "project's destinations.yaml.",
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        path = Path(self.destinations_file) if self.destinations_file else None
        destinations = parse_destinations(path) if path else load_destinations()
        # A declared mart or mapped column the dbt project lacks fails loading, naming the field.
        validate_against_manifest_file(destinations, dbt_project.manifest_path, path)
        return dg.Definitions(assets=[build_sync_asset(d) for d in destinations])
