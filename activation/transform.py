"""The dbt project as assets: `dbt build` materializes the models and runs every test.

dbt tests become asset checks; error-severity tests are blocking, so a failing test stops the
chain inside the run before any sync step starts.
"""

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from activation.dbt_project import dbt_project


class ManifestMissingError(RuntimeError):
    """The dbt manifest has not been prepared, so the dbt assets cannot be defined."""


def mart_asset_key(model_name: str) -> dg.AssetKey:
    """Asset key of a dbt model in the `marts` schema (the sync assets depend on these)."""
    return dg.AssetKey(["marts", model_name])


class ActivationDbtTranslator(DagsterDbtTranslator):
    """Keys mirror the warehouse: `raw/<table>` sources, `staging/<model>`, `marts/<model>`."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        schema = dbt_resource_props["config"].get("schema") or "transform"
        return dg.AssetKey([schema, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "transform"


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
        yield from dbt.cli(["build"], context=context).stream()

    return dbt_build


def build_dbt_resource() -> DbtCliResource:
    # The dbt installed beside this interpreter, so a run works whether or not the virtualenv's
    # bin folder is on PATH (pytest, the daemon and `dagster dev` are not always started from it).
    beside_python = Path(sys.executable).parent / "dbt"
    executable = str(beside_python) if beside_python.exists() else "dbt"
    return DbtCliResource(
        project_dir=dbt_project, target=dbt_project.target, dbt_executable=executable
    )
