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
skips the syncs declared `after` it. The `failed_rows` check judges the ended Hightouch run
against the destination's failure policy.

A destination that waits detached (`wait` in destinations.yaml) ends its step right after the
trigger, without a materialization: the detached_sync_sensor reports the materialization and
`failed_rows` when the run ends (activation/core/detached.py, docs/detached-syncs.md).
"""

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from activation.core.contract import contract_check_spec, sync_column_metadata
from activation.core.dbt_project import dbt_project
from activation.core.executors import launch_priority_tags
from activation.core.gate import gate_check_spec
from activation.core.step_forkserver import STEP_PRELOAD_MODULES
from activation.core.sync_path import SyncOptions, sync_destination
from activation.core.verdicts import PreSyncVerdict, SyncHeldBack, failed_rows_check_spec
from activation.lib.destinations import (
    Destination,
    load_destinations,
    mart_asset_key,
    parse_destinations,
    sync_asset_key_for,
    syncs_waiting_behind,
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
# rather than one per core (the default); it is the code location's default executor too. Pools
# still hold each destination to one sync at a time across runs. Step processes fork from a
# forkserver that has already imported Dagster, dagster-dbt, dagster-airbyte and the code
# location's modules and built its definitions once, rather than each importing and building
# them afresh (seconds per step); each step still runs in its own process.
PARALLEL_SYNCS = dg.multiprocess_executor.configured(
    {
        "max_concurrent": 16,
        "start_method": {"forkserver": {"preload_modules": list(STEP_PRELOAD_MODULES)}},
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


def build_sync_asset(destination: Destination, waiting_behind: int = 0) -> dg.AssetsDefinition:
    """The sync asset of `destination`; `waiting_behind`: how many syncs wait on it in line
    (`syncs_waiting_behind`), which launches its step before the run's other syncs."""
    key = sync_asset_key(destination)
    spec = dg.AssetSpec(
        key=key,
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
        skippable=True,
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
            "wait": destination.wait,
        },
    )

    # A multi-asset of one, subsettable, only so that its outputs are optional: a held-back or
    # detached sync yields no materialization, and a detached one no failed_rows result (the
    # sensor reports both when the run ends). Op name and step key stay `activate__<key>`.
    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[spec],
        check_specs=[
            gate_check_spec(destination),
            contract_check_spec(destination),
            failed_rows_check_spec(destination),
        ],
        can_subset=True,
        pool=destination.pool,
        retry_policy=sync_retry_policy(),
        op_tags=launch_priority_tags(waiting_behind),
    )
    def _sync(
        context: AssetExecutionContext,
        config: SyncRunConfig,
        hightouch: HightouchResource,
        pagerduty: PagerDutyResource,
        slack: SlackWebhookResource,
        quality_gate: dg.ResourceParam[QualityGate],
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        if key not in context.selected_asset_keys:
            # Only checks selected: they are decided by a sync, and a sync was not asked for.
            context.log.info(f"{key.to_user_string()} not selected: nothing synced.")
            return
        selected = {check.name for check in context.selected_asset_check_keys}

        def results(decided: list[PreSyncVerdict]) -> Iterator[dg.AssetCheckResult]:
            return (v.check_result() for v in decided if v.check_name in selected)

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
                may_detach=True,
            )
        except SyncHeldBack:
            # Held back, not failed: the checks say why, and no materialization is recorded.
            yield from results(decided)
            return
        except BaseException:
            # The decisions taken before the failure stay on record.
            yield from results(decided)
            raise
        yield from results(decided)
        if result.in_flight:
            # Detached: the run goes on in Hightouch without a worker waiting; the sensor reports
            # the materialization and the failed_rows check when it ends (logged by the path).
            return
        yield dg.MaterializeResult(asset_key=key, metadata=result.metadata)

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
        waiting_behind = syncs_waiting_behind(destinations)
        return dg.Definitions(
            assets=[build_sync_asset(d, waiting_behind[d.key]) for d in destinations]
        )
