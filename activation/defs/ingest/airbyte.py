"""Airbyte connections as assets: each selected stream is a `raw/<stream>` asset.

The streams come from the stored listing (activation/core/airbyte_listing.py, written by
`activation refresh`), never from the Airbyte API while the code location loads: Airbyte being
down stops the ingest steps, not the whole location. Each asset's metadata says when the
listing was taken.
"""

from collections.abc import Iterator

import dagster as dg
from dagster import AssetExecutionContext
from dagster_airbyte import AirbyteConnectionTableProps, AirbyteWorkspace, DagsterAirbyteTranslator

from activation.core.airbyte_listing import (
    REFRESHED_AT,
    AirbyteListing,
    load_listing,
)
from activation.dagster_api import airbyte_connection_of, airbyte_sync_and_poll

INGEST_GROUP = "ingest"
INGEST_OWNER = "team:data-platform"


class RawStreamTranslator(DagsterAirbyteTranslator):
    """`raw/<stream>`: the same key dbt gives its `raw` source, so the graph joins up. Owned by
    the data platform team, who run the Airbyte connections."""

    def get_asset_spec(self, props: AirbyteConnectionTableProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        return spec.replace_attributes(
            key=dg.AssetKey(["raw", props.table_name]),
            group_name=INGEST_GROUP,
            owners=[INGEST_OWNER],
            description=spec.description
            or (
                f"The `{props.table_name}` stream as landed by the Airbyte connection "
                f"{props.connection_name} in {props.fully_qualified_table_name or 'the warehouse'}"
                ", with Airbyte's meta columns; read by dbt as the `raw` source."
            ),
        )


def build_ingest_assets(listing: AirbyteListing) -> list[dg.AssetsDefinition]:
    """One multi-asset per connection, from the stored listing (no HTTP): each stream's spec
    as dagster-airbyte builds it, keyed `raw/<stream>`, with the listing's age in metadata."""
    translator = RawStreamTranslator()
    refreshed = {REFRESHED_AT: dg.MetadataValue.timestamp(listing.refreshed_at)}
    specs_by_connection: dict[tuple[str, str], list[dg.AssetSpec]] = {}
    for props in listing.workspace.to_airbyte_connection_table_props_data():
        spec = translator.get_asset_spec(props).merge_attributes(metadata=refreshed)
        specs_by_connection.setdefault(airbyte_connection_of(spec), []).append(spec)
    return [
        _connection_assets(connection_id, name, specs)
        for (connection_id, name), specs in sorted(
            specs_by_connection.items(), key=lambda item: item[0][1]
        )
    ]


def _connection_assets(
    connection_id: str, connection_name: str, specs: list[dg.AssetSpec]
) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name=f"airbyte_{dg_safe(connection_name)}",
        specs=specs,
        can_subset=True,
        description=f"Airbyte sync of connection {connection_name}.",
    )
    def _sync(
        context: AssetExecutionContext, airbyte: AirbyteWorkspace
    ) -> Iterator[dg.MaterializeResult]:
        # The job id is the link between this step and the Airbyte UI; dagster-airbyte only logs
        # it, so it is put on every stream's materialization here.
        try:
            job = airbyte_sync_and_poll(airbyte, connection_id)
        except dg.Failure as error:
            raise explain_airbyte_failure(connection_name, connection_id, error) from None
        metadata = {
            "airbyte_job_id": job.get("jobId"),
            "airbyte_job_status": job.get("status"),
            "airbyte_connection": connection_name,
            "rows_synced_by_job": job.get("rowsSynced"),
        }
        context.log.info(
            f"Airbyte job {job.get('jobId')} for {connection_name}: {job.get('status')}"
        )
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            yield dg.MaterializeResult(asset_key=key, metadata=metadata)

    return _sync


def explain_airbyte_failure(
    connection_name: str, connection_id: str, error: dg.Failure
) -> dg.Failure:
    """dagster-airbyte's terse failures ("Job failed: 12"), said with the connection and what to
    check. Never retried by Dagster: a failed or timed-out Airbyte job needs a look in Airbyte
    first, and the job was cancelled on timeout so nothing is left running."""
    detail = error.description or "the Airbyte sync failed"
    hint = "open the job in Airbyte for its logs"
    if detail.startswith("Timeout"):
        hint = (
            "Dagster stopped waiting and cancelled the Airbyte job "
            "(ACTIVATION_AIRBYTE_POLL_TIMEOUT_SECONDS sets the wait)"
        )
    elif "Max retries" in detail and "/jobs" in detail:
        hint = (
            "Airbyte refused to start a sync; a 409 means one is already running for this "
            "connection and started in the moment between Dagster's check and its request: "
            "re-run once it has finished"
        )
    return dg.Failure(
        description=f"Airbyte connection {connection_name} ({connection_id}): {detail}; {hint}.",
        metadata=error.metadata,
        allow_retries=False,
    )


def dg_safe(name: str) -> str:
    """An op name made of the connection name (letters, digits and underscores only)."""
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
    return cleaned or "connection"


@dg.definitions
def defs() -> dg.Definitions:
    listing = load_listing()
    return dg.Definitions(assets=build_ingest_assets(listing))
