"""One Hightouch sync asset per declared destination, and the report that follows them.

Each sync asset sits downstream of its mart, so inside a run a failed blocking dbt test stops it
before it triggers anything. Its materialization carries the Hightouch run id, a link to the run
and the planned / successful / failed added / changed / removed counts.
"""

import dagster as dg
from dagster import AssetExecutionContext

from activation.destinations import Destination
from activation.hightouch import SyncRun
from activation.notify import SyncOutcome, sync_summary_message
from activation.resources import HightouchResource, SlackWebhookResource
from activation.transform import mart_asset_key

ACTIVATE_GROUP = "activate"
REPORT_KEY = dg.AssetKey(["activate", "activation_report"])


def sync_asset_key(destination: Destination) -> dg.AssetKey:
    return dg.AssetKey(["activate", destination.key])


def sync_run_metadata(run: SyncRun, run_url: str) -> dict[str, dg.MetadataValue]:
    """Materialization metadata of a finished Hightouch run (the names the report reads back)."""
    values: dict[str, object] = {
        "hightouch_sync_id": run.sync_id,
        "hightouch_run_id": run.id,
        "hightouch_status": run.status,
        "query_size": run.query_size,
    }
    for prefix, counts in (
        ("planned", run.planned),
        ("successful", run.successful),
        ("failed", run.failed),
    ):
        values[f"{prefix}_added"] = counts.added
        values[f"{prefix}_changed"] = counts.changed
        values[f"{prefix}_removed"] = counts.removed
    metadata = {
        name: dg.MetadataValue.text(v) if isinstance(v, str) else dg.MetadataValue.int(v)
        for name, v in values.items()
    }
    metadata["hightouch_run_url"] = dg.MetadataValue.url(run_url)
    return metadata


def build_sync_asset(destination: Destination) -> dg.AssetsDefinition:
    @dg.asset(
        key=sync_asset_key(destination),
        deps=[mart_asset_key(destination.mart)],
        group_name=ACTIVATE_GROUP,
        kinds={"hightouch", destination.destination_type},
        owners=[f"team:{destination.owner.team}"],
        tags={"destination": destination.destination_type},
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
    def _sync(context: AssetExecutionContext, hightouch: HightouchResource) -> dg.MaterializeResult:
        with hightouch.get_client() as client:
            sync_id = destination.sync_id or client.resolve_sync_id(destination.sync_slug or "")
            run_id = client.trigger(sync_id)
            context.log.info(f"Triggered Hightouch run {run_id} of sync {sync_id}")
            run = client.wait_for_run(
                sync_id,
                run_id,
                poll_interval=hightouch.poll_interval_seconds,
                poll_timeout=hightouch.poll_timeout_seconds,
            )
            context.log.info(
                f"Hightouch run {run_id} {run.status}: planned +{run.planned.added} "
                f"~{run.planned.changed} -{run.planned.removed}, failed {run.failed.total}"
            )
            return dg.MaterializeResult(
                metadata=sync_run_metadata(run, client.run_url(sync_id, run_id))
            )

    return _sync


def _outcome(destination: Destination, event: dg.EventLogEntry | None) -> SyncOutcome:
    materialization = event.asset_materialization if event else None
    if materialization is None:
        return SyncOutcome(destination.key, "not synced", None, None)
    meta = materialization.metadata

    def number(name: str) -> int:
        value = meta.get(name)
        return int(value.value) if value is not None else 0

    run_id = meta.get("hightouch_run_id")
    url = meta.get("hightouch_run_url")
    return SyncOutcome(
        destination=destination.key,
        status=str(meta["hightouch_status"].value) if "hightouch_status" in meta else "unknown",
        hightouch_run_id=str(run_id.value) if run_id else None,
        run_url=str(url.value) if url else None,
        added=number("successful_added"),
        changed=number("successful_changed"),
        removed=number("successful_removed"),
        failed=number("failed_added") + number("failed_changed") + number("failed_removed"),
    )


def build_report_asset(destinations: tuple[Destination, ...]) -> dg.AssetsDefinition:
    @dg.asset(
        key=REPORT_KEY,
        deps=[sync_asset_key(d) for d in destinations],
        group_name=ACTIVATE_GROUP,
        kinds={"slack"},
        description="Posts each destination's Hightouch run id and row counts to Slack.",
    )
    def activation_report(
        context: AssetExecutionContext, slack: SlackWebhookResource
    ) -> dg.MaterializeResult:
        outcomes = []
        for destination in destinations:
            event = context.instance.get_latest_materialization_event(sync_asset_key(destination))
            # Only syncs of this run count: an older materialization is not this run's outcome.
            outcomes.append(
                _outcome(destination, event if event and event.run_id == context.run_id else None)
            )
        slack.post(sync_summary_message(context.run_id, outcomes))
        table = "\n".join(
            f"| {o.destination} | {o.status} | {o.hightouch_run_id or '-'} | {o.added} | "
            f"{o.changed} | {o.removed} | {o.failed} |"
            for o in outcomes
        )
        return dg.MaterializeResult(
            metadata={
                "summary": dg.MetadataValue.md(
                    "| destination | status | Hightouch run | added | changed | removed "
                    "| failed |\n"
                    "|---|---|---|---|---|---|---|\n" + table
                )
            }
        )

    return activation_report
