"""Airbyte connections as assets: each selected stream is a `raw/<stream>` asset.

The streams are listed from the Airbyte API when definitions load: dagster-airbyte's
`load_airbyte_asset_specs` requires it (Dagster's own loading), so the Airbyte server (or the
sandbox) must answer before the code location loads. Nothing calls Airbyte at import time.
"""

from collections.abc import Iterator

import dagster as dg
from dagster import AssetExecutionContext
from dagster_airbyte import (
    AirbyteConnectionTableProps,
    AirbyteWorkspace,
    DagsterAirbyteTranslator,
    airbyte_assets,
    load_airbyte_asset_specs,
)
from dagster_airbyte.translator import AirbyteMetadataSet


class RawStreamTranslator(DagsterAirbyteTranslator):
    """`raw/<stream>`: the same key dbt gives its `raw` source, so the graph joins up."""

    def get_asset_spec(self, props: AirbyteConnectionTableProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        return spec.replace_attributes(
            key=dg.AssetKey(["raw", props.table_name]), group_name="ingest"
        )


def build_ingest_assets(workspace: AirbyteWorkspace) -> list[dg.AssetsDefinition]:
    translator = RawStreamTranslator()
    connections: dict[str, str] = {}
    for spec in load_airbyte_asset_specs(workspace, dagster_airbyte_translator=translator):
        airbyte_metadata = AirbyteMetadataSet.extract(spec.metadata)
        connections[airbyte_metadata.connection_id] = airbyte_metadata.connection_name
    return [
        _connection_assets(workspace, translator, connection_id, name)
        for connection_id, name in sorted(connections.items(), key=lambda item: item[1])
    ]


def _connection_assets(
    workspace: AirbyteWorkspace,
    translator: RawStreamTranslator,
    connection_id: str,
    connection_name: str,
) -> dg.AssetsDefinition:
    @airbyte_assets(
        connection_id=connection_id,
        workspace=workspace,
        name=f"airbyte_{dg_safe(connection_name)}",
        dagster_airbyte_translator=translator,
    )
    def _sync(
        context: AssetExecutionContext, airbyte: AirbyteWorkspace
    ) -> Iterator[dg.MaterializeResult]:
        # The job id is the link between this step and the Airbyte UI; dagster-airbyte only logs
        # it, so it is put on every stream's materialization here.
        output = airbyte.get_client().sync_and_poll(connection_id=connection_id)
        job = output.job_details
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


def dg_safe(name: str) -> str:
    """An op name made of the connection name (letters, digits and underscores only)."""
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
    return cleaned or "connection"
