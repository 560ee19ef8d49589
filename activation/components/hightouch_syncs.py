"""The Hightouch component: one sync asset per destination declared in destinations.yaml.

Instantiated by activation/defs/activate/defs.yaml. No Hightouch component exists for a whole
workspace (dagster-hightouch wraps one sync in an op), so this one builds every sync asset from
the one declaration, checked against the dbt manifest when it loads.

Each sync asset sits downstream of its mart, so inside a run a failed blocking dbt test stops it
before it triggers anything. Its materialization carries the Hightouch run id, a link to the run
and the planned / successful / failed added / changed / removed counts.

Its checks are the sync path's pre-sync decisions (activation/core/verdicts.py). A sync they hold
back ends its step without a materialization: the run does not fail, the asset keeps its last
sync, and the failed check names what refused. Its output is therefore optional, which also
skips the syncs declared `after` it.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from activation.core.contract import contract_check_spec, sync_column_metadata
from activation.core.dbt_project import dbt_project
from activation.core.gate import gate_check_spec
from activation.core.sync_path import SyncOptions, sync_destination
from activation.core.verdicts import PreSyncVerdict, SyncHeldBack
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
# time across runs. Step processes fork from a forkserver that has already imported Dagster,
# dagster-dbt, dagster-airbyte and the code location's modules, rather than each importing them
# afresh (seconds per step); each step still runs in its own process.
PARALLEL_SYNCS = dg.multiprocess_executor.configured(
    {
        "max_concurrent": 16,
        "start_method": {
            "forkserver": {
                "preload_modules": [
                    "activation.definitions",
                    "activation.defs.ingest.airbyte",
                    "activation.defs.transform.dbt",
                    "activation.components.hightouch_syncs",
                ]
            }
        },
    }
)


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
        check_specs=[gate_check_spec(destination), contract_check_spec(destination)],
        output_required=False,
        description=destination.description
        or f"Hightouch sync of {destination.mart} to {destination.destination_type}.",
        metadata={
            # Destination fields, their types and the mart column feeding each (manifest only).
            **sync_column_metadata(destination, dbt_project.manifest_path),
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
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        # The one sync path: the gate reads check results across runs, so whatever launched
        # this step, untested, failed or changed marts stop it before anything reaches Hightouch.
        decided: list[PreSyncVerdict] = []
        try:
            result = sync_destination(
                context,
                destination,
                hightouch=hightouch,
                gate=quality_gate,
                pagerduty=pagerduty,
                slack=slack,
                options=SyncOptions(full_resync=config.full_resync, reset_cdc=config.reset_cdc),
                verdicts=decided,
            )
        except SyncHeldBack:
            # Held back, not failed: the checks say why, and no materialization is recorded.
            yield from (verdict.check_result() for verdict in decided)
            return
        except BaseException:
            # The decisions taken before the failure stay on record.
            yield from (verdict.check_result() for verdict in decided)
            raise
        yield from (verdict.check_result() for verdict in decided)
        yield dg.MaterializeResult(metadata=result.metadata)

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
