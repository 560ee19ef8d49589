"""The dbt project as assets: `dbt build` materializes the models and runs every test.

dbt tests become asset checks; error-severity tests are blocking, so a failing test stops the
chain inside the run before any sync step starts. A failed test's check carries a sample of the
rows that failed it, read from the table dbt stores them in (`store_failures`).

Each model's materialization carries its column lineage (`dagster/column_lineage`: which parent
columns feed each column), traced from the SQL dbt compiled in this build
(`activation.lib.column_lineage`); the marts' column schema (`dagster/column_schema`) comes from
their enforced contracts when definitions load. dagster-dbt's `fetch_column_metadata` is not used:
it opens the warehouse from this process while dbt writes it, which DuckDB does not allow, and it
cannot trace sources read from files (`read_parquet`).

Each build's artifacts stay in its own target folder; after a build, the folders of earlier builds
beyond the newest `ACTIVATION_DBT_ARTIFACT_RUNS_KEPT` are removed (`activation.core.dbt_artifacts`).
"""

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from activation.core.dbt_artifacts import (
    KEPT_VARIABLE,
    prune_earlier_builds,
    runs_kept,
    seeded_build_folder,
)
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


def _is_failed_check(event: object) -> TypeGuard[CheckEvent]:
    return isinstance(event, CheckEvent) and not event.passed


def _held_until_dbt_exits(event: object) -> TypeGuard[CheckEvent]:
    """Check results whose metadata needs the warehouse, which dbt holds until it exits."""
    return _checks_a_mart(event) or _is_failed_check(event)


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


def with_column_lineage(
    event: Any, manifest: Mapping[str, Any], target_path: Path | None, log: Any
) -> Any:
    """`event` with `dagster/column_lineage` when it materializes a model whose compiled SQL
    this build wrote; any other event, or a model that cannot be traced (logged), unchanged."""
    if not isinstance(event, dg.Output | dg.AssetMaterialization) or target_path is None:
        return event
    unique_id = _metadata_text(event, "unique_id")
    if not unique_id or not unique_id.startswith("model."):
        return event
    from activation.lib.column_lineage import (
        LineageError,
        compiled_sql_path,
        model_column_lineage,
        node_props,
    )

    translator = ActivationDbtTranslator()
    try:
        path = compiled_sql_path(target_path, node_props(manifest, unique_id))
        traced = model_column_lineage(manifest, unique_id, path.read_text())
    except (LineageError, OSError) as error:
        log.warning(f"No column lineage for {unique_id}: {error}")
        return event
    lineage = dg.TableColumnLineage(
        deps_by_column={
            column: [
                dg.TableColumnDep(
                    asset_key=translator.get_asset_key(node_props(manifest, ref.node_id)),
                    column_name=ref.column,
                )
                for ref in refs
            ]
            for column, refs in traced.items()
        }
    )
    return event.with_metadata(
        {**event.metadata, "dagster/column_lineage": dg.MetadataValue.column_lineage(lineage)}
    )


FAILING_ROWS_SHOWN = 20
"""At most this many of a failed test's stored rows are shown on its check."""
FAILING_ROWS_CELL_CHARS = 200
"""A longer value is cut to this many characters in the table."""
# dbt quotes each part of a relation name: "database"."schema"."identifier" (or two parts).
_RELATION_NAME = re.compile(r'^"[^"]+"(\."[^"]+"){1,2}$')
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]+$")
STORED_FAILURE_STATUSES = frozenset({"fail", "warn"})


def stored_failure_nodes(manifest_path: Path) -> dict[str, Mapping[str, Any]]:
    """Test unique id -> the manifest node of each test whose failing rows dbt stores (its
    `relation_name` is set when `store_failures` is on)."""
    nodes = json.loads(manifest_path.read_text()).get("nodes", {})
    return {
        unique_id: node
        for unique_id, node in nodes.items()
        if node.get("resource_type") == "test" and node.get("relation_name")
    }


def _cell(value: object) -> str:
    text = "NULL" if value is None else " ".join(str(value).split())
    if len(text) > FAILING_ROWS_CELL_CHARS:
        text = text[: FAILING_ROWS_CELL_CHARS - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """`rows` under a header of `columns`, as a Markdown table."""
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def read_failing_rows(
    session: Any, node: Mapping[str, Any], limit: int = FAILING_ROWS_SHOWN
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns and at most `limit` rows of the table dbt stored a test's failing rows in.

    Every name comes from the manifest and is checked before it reaches SQL (a `Session` takes
    no parameters)."""
    from activation.lib.warehouse import WarehouseError

    relation = str(node.get("relation_name") or "")
    schema, table = str(node.get("schema") or ""), str(node.get("alias") or "")
    if not _RELATION_NAME.match(relation):
        raise WarehouseError(f"unexpected relation name {relation!r}")
    if not (_IDENTIFIER.match(schema) and _IDENTIFIER.match(table)):
        raise WarehouseError(f"unexpected schema or table name {schema!r}.{table!r}")
    columns = [
        str(row[0])
        for row in session.rows(
            "SELECT column_name FROM information_schema.columns "
            f"WHERE table_schema = '{schema}' AND table_name = '{table}' "
            "ORDER BY ordinal_position"
        )
    ]
    if not columns:
        raise WarehouseError(f"{relation} does not exist (did the test run?)")
    selected = ", ".join('"' + column.replace('"', '""') + '"' for column in columns)
    rows = session.rows(f"SELECT {selected} FROM {relation} LIMIT {int(limit)}")
    return columns, rows


def _metadata_text(
    result: CheckEvent | dg.Output | dg.AssetMaterialization, key: str
) -> str | None:
    value = result.metadata.get(key)
    text = getattr(value, "value", value)
    return text if isinstance(text, str) else None


def _has_stored_rows(result: CheckEvent) -> bool:
    """A test that found failing rows (`fail`, or `warn` at warn severity); one that errored
    stored nothing, and its table may still hold an earlier run's rows."""
    return not result.passed and _metadata_text(result, "status") in STORED_FAILURE_STATUSES


def with_failing_rows(
    results: list[CheckEvent], manifest_path: Path, log: Any
) -> Iterator[CheckEvent]:
    """`results`, each failed one with a sample of the rows that failed it: `failing_rows` (a
    Markdown table of at most FAILING_ROWS_SHOWN rows) and `failing_rows_sampled` (how many it
    shows; `dagster_dbt/failed_row_count` says how many failed). Read in one warehouse
    connection after dbt has exited; a sample that cannot be read is logged, never raised."""
    failed = [index for index, result in enumerate(results) if _has_stored_rows(result)]
    samples: dict[int, dict[str, dg.MetadataValue]] = {}
    if failed:
        from activation.lib.warehouse import warehouse_connection

        try:
            nodes = stored_failure_nodes(manifest_path)
            with warehouse_connection(read_only=True) as session:
                for index in failed:
                    name = results[index].check_name
                    node = nodes.get(_metadata_text(results[index], "unique_id") or "")
                    if node is None:
                        log.warning(f"dbt stores no failing rows for {name} (store_failures)")
                        continue
                    try:
                        columns, rows = read_failing_rows(session, node)
                    except Exception as error:  # noqa: BLE001 - any engine's error: no sample
                        log.warning(f"Could not read the failing rows of {name}: {error}")
                        continue
                    samples[index] = {
                        "failing_rows": dg.MetadataValue.md(markdown_table(columns, rows)),
                        "failing_rows_sampled": dg.MetadataValue.int(len(rows)),
                    }
        except Exception as error:  # noqa: BLE001 - as above, for the manifest or the connection
            log.warning(f"Could not read the failing rows of the failed dbt tests: {error}")
    for index, result in enumerate(results):
        added = samples.get(index)
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
        # judged can only be fingerprinted, and a failed test's stored rows only read, once dbt
        # has exited: those results wait until then, and dbt's error is raised after them.
        held: list[CheckEvent] = []
        kept = runs_kept()  # a malformed setting fails the step here, before dbt runs
        folder = seeded_build_folder(
            dbt_project.project_dir,
            dbt_project.target_path,
            context.op_execution_context.op.name,
            context.run.run_id,
        )
        invocation = dbt.cli(["build"], context=context, target_path=folder, raise_on_error=False)
        for event in invocation.stream():
            if _held_until_dbt_exits(event):
                held.append(event)
            else:
                # The compiled SQL of a model is on disk before dbt reports it built.
                yield with_column_lineage(
                    event, invocation.manifest, invocation.target_path, context.log
                )
        marts = [r for r in held if _checks_a_mart(r)]
        others = [r for r in held if not _checks_a_mart(r)]
        completed = [*with_fingerprints(marts, context.log), *others]
        yield from with_failing_rows(completed, dbt_project.manifest_path, context.log)
        try:
            removed = prune_earlier_builds(invocation.target_path, kept)
        except OSError as listing_error:  # housekeeping: it never fails a build that succeeded
            context.log.warning(
                f"Could not remove the dbt artifacts of earlier builds: {listing_error}"
            )
            removed = []
        if removed:
            context.log.info(
                f"Removed the dbt artifacts of {len(removed)} earlier builds, keeping the newest "
                f"{kept} ({KEPT_VARIABLE})"
            )
        error = invocation.get_error()
        if error is not None:
            raise error

    return dbt_build


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[build_dbt_assets()])
