"""The dbt project as assets: `dbt build` materializes the models and runs every test.

dbt tests become asset checks; error-severity tests are blocking, so a failing test stops the
chain inside the run before any sync step starts.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeGuard

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from activation.core.dbt_project import dbt_project
from activation.lib.destinations import mart_asset_key

TRANSFORM_GROUP = "transform"


class ManifestMissingError(RuntimeError):
    """The dbt manifest has not been prepared, so the dbt assets cannot be defined."""


class ActivationDbtTranslator(DagsterDbtTranslator):
    """Keys mirror the warehouse: `raw/<table>` sources, `staging/<model>`, `marts/<model>`.

    Owners come from each model's `meta.owner` (a string or a list, set as `config.meta` in the
    dbt YAML); each dbt test's `description` becomes its asset check's description (dagster-dbt
    only reads `meta.description`, which no test here sets)."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        schema = dbt_resource_props["config"].get("schema") or "transform"
        return dg.AssetKey([schema, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return TRANSFORM_GROUP

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        owner = dbt_resource_props.get("meta", {}).get("owner")
        if isinstance(owner, str) and owner:
            return [owner]
        if isinstance(owner, list) and owner:
            return [str(o) for o in owner]
        return super().get_owners(dbt_resource_props)

    def get_asset_check_spec(
        self,
        asset_spec: dg.AssetSpec,
        manifest: Mapping[str, Any],
        unique_id: str,
        project: DbtProject | None,
    ) -> dg.AssetCheckSpec | None:
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None or spec.description:
            return spec
        test = manifest.get("nodes", {}).get(unique_id, {})
        description = " ".join(str(test.get("description") or "").split())
        return spec._replace(description=description) if description else spec


CheckEvent = dg.AssetCheckResult | dg.AssetCheckEvaluation


def _checks_a_mart(event: object) -> TypeGuard[CheckEvent]:
    if not isinstance(event, CheckEvent):
        return False
    key = event.asset_key
    return key is not None and len(key.path) == 2 and key == mart_asset_key(key.path[1])


def with_fingerprints(results: list[CheckEvent], log: Any) -> Iterator[CheckEvent]:
    """`results` (checks on marts), each with the fingerprint of its mart per destination that
    reads it, computed once per mart in one warehouse connection. A mart that cannot be
    fingerprinted keeps its results without one, which the gate refuses to trust."""
    if not results:
        return
    # guards imports this module (for `mart_asset_key`), so it is imported when first needed.
    from activation.core.guards import fingerprint_metadata, mart_fingerprints
    from activation.lib.destinations import load_destinations
    from activation.lib.warehouse import warehouse_connection

    marts = sorted({r.asset_key.path[1] for r in results if r.asset_key is not None})
    destinations = load_destinations()
    fingerprints: dict[str, dict[str, dg.MetadataValue]] = {}
    try:
        with warehouse_connection(read_only=True) as session:
            for mart in marts:
                try:
                    fingerprints[mart] = fingerprint_metadata(
                        mart_fingerprints(session, mart, destinations)
                    )
                except Exception as error:  # noqa: BLE001 - any engine's error: no fingerprint
                    log.warning(f"Could not fingerprint marts.{mart}: {error}")
    except Exception as error:  # noqa: BLE001 - as above, for the connection itself
        log.warning(f"Could not fingerprint the marts, their checks carry none: {error}")
    for result in results:
        added = fingerprints.get(result.asset_key.path[1]) if result.asset_key else None
        yield result.with_metadata({**result.metadata, **added}) if added else result


def build_dbt_assets() -> dg.AssetsDefinition:
    manifest = dbt_project.manifest_path
    if not manifest.exists():
        raise ManifestMissingError(
            f"dbt manifest not found at {manifest}: run `activation prepare` (dbt parse) before "
            "loading the code location"
        )

    @dbt_assets(
        manifest=manifest,
        project=dbt_project,
        name="dbt_build",
        dagster_dbt_translator=ActivationDbtTranslator(),
    )
    def dbt_build(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
        # dbt-duckdb holds the warehouse file locked while dbt runs, so the data a mart's tests
        # judged can only be fingerprinted once dbt has exited: their results wait until then.
        held: list[CheckEvent] = []
        for event in dbt.cli(["build"], context=context).stream():
            if _checks_a_mart(event):
                held.append(event)
            else:
                yield event
        yield from with_fingerprints(held, context.log)

    return dbt_build


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[build_dbt_assets()])
