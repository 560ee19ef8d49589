"""Column lineage of dbt models, from their compiled SQL and the manifest. No Dagster inside.

For each column a model selects, which columns of its direct parents (models and sources) feed
it: `email <- stg_customers.email`, `total_mrr_usd <- stg_subscriptions.mrr_cents, .status`. The
SQL is parsed with sqlglot (the parser dagster-dbt uses for the same purpose); parents' columns
come from the manifest (the columns listed in the schema yml files), so no warehouse is read.

A parent is recognised in the compiled SQL by its schema and name (`staging.stg_customers`,
`raw.customers`), whatever database the relation names, or, for a source read from files through
`meta.external_location` (`read_parquet('.../raw/customers.parquet')` on DuckDB), by the file's
name. Both hold whichever data folder the manifest was parsed with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.lineage import lineage
from sqlglot.optimizer.qualify import qualify

_PLACEHOLDER = "__parent_{}"
_UNKNOWN_TYPE = "text"  # parents' types do not change lineage; sqlglot only needs one


class LineageError(ValueError):
    """A model's lineage could not be worked out (SQL sqlglot cannot read, an unknown parent)."""


@dataclass(frozen=True, order=True)
class ColumnRef:
    """A column of a dbt node (model or source), by the node's unique id."""

    node_id: str
    column: str


Lineage = dict[str, tuple[ColumnRef, ...]]
"""Column of a model -> the parent columns feeding it (empty: a constant, or not traced)."""


def load_manifest(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(path.read_bytes())
    return manifest


def node_props(manifest: Mapping[str, Any], unique_id: str) -> Mapping[str, Any]:
    """The manifest entry of a model, seed, snapshot or source."""
    props = (manifest.get("nodes") or {}).get(unique_id) or (manifest.get("sources") or {}).get(
        unique_id
    )
    if not isinstance(props, Mapping):
        raise LineageError(f"{unique_id} is not in the dbt manifest")
    return props


def model_ids(manifest: Mapping[str, Any]) -> list[str]:
    return sorted(
        unique_id
        for unique_id, props in (manifest.get("nodes") or {}).items()
        if props.get("resource_type") == "model"
    )


def compiled_sql_path(target_path: Path, props: Mapping[str, Any]) -> Path:
    """Where dbt writes a node's compiled SQL under its target path."""
    return target_path / "compiled" / str(props["package_name"]) / str(props["original_file_path"])


def _relation_name(props: Mapping[str, Any]) -> str:
    return str(props.get("identifier") or props.get("alias") or props.get("name") or "")


def _matches(table: exp.Table, props: Mapping[str, Any]) -> bool:
    """Whether `table` in the compiled SQL reads the node `props`."""
    if isinstance(table.this, exp.Identifier):
        return (
            table.name.lower() == _relation_name(props).lower()
            and table.db.lower() == str(props.get("schema") or "").lower()
        )
    # A table function (read_parquet('.../customers.parquet')): the file's name is the source's.
    literal = table.find(exp.Literal)
    if literal is None or not literal.is_string:
        return False
    stem = PurePosixPath(str(literal.this)).name.split(".")[0]
    return stem.lower() == _relation_name(props).lower()


def model_column_lineage(manifest: Mapping[str, Any], unique_id: str, compiled_sql: str) -> Lineage:
    """The lineage of every column the model `unique_id` selects, to its direct parents.

    Raises `LineageError` when the SQL cannot be parsed or a relation it reads is not one of the
    model's parents in the manifest.
    """
    props = node_props(manifest, unique_id)
    dialect = str((manifest.get("metadata") or {}).get("adapter_type") or "") or None
    parents = list((props.get("depends_on") or {}).get("nodes") or [])
    parent_props = {parent: node_props(manifest, parent) for parent in parents}
    placeholders = {_PLACEHOLDER.format(i): parent for i, parent in enumerate(parents)}
    try:
        tree = sqlglot.parse_one(compiled_sql, dialect=dialect)
    except sqlglot.errors.SqlglotError as error:
        raise LineageError(f"{unique_id}: sqlglot cannot parse the compiled SQL: {error}") from None
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}

    def replace(node: exp.Expression) -> exp.Expression:
        if not isinstance(node, exp.Table):
            return node
        if isinstance(node.this, exp.Identifier) and not node.db and node.name.lower() in ctes:
            return node
        for placeholder, parent in placeholders.items():
            if _matches(node, parent_props[parent]):
                renamed = exp.to_table(placeholder)
                alias = node.args.get("alias")
                renamed.set("alias", alias or exp.TableAlias(this=exp.to_identifier(placeholder)))
                return renamed
        raise LineageError(f"{unique_id} reads {node.sql(dialect=dialect)}, not a known parent")

    schema: dict[str, object] = {
        placeholder: {
            str(column).lower(): _UNKNOWN_TYPE
            for column in (parent_props[parent].get("columns") or {})
        }
        for placeholder, parent in placeholders.items()
    }
    try:
        query = qualify(tree.transform(replace), schema=schema, dialect=dialect)
        if not isinstance(query, exp.Query):
            raise LineageError(f"{unique_id}: the compiled SQL is not a query")
        result: Lineage = {}
        for column in query.named_selects:
            feeding: set[ColumnRef] = set()
            for node in lineage(column, query, schema=schema, dialect=dialect).walk():
                if node.downstream:
                    continue
                table = node.expression.find(exp.Table)
                if table is not None and table.name in placeholders:
                    parent_column = exp.to_column(node.name).name.lower()
                    feeding.add(ColumnRef(placeholders[table.name], parent_column))
            result[column.lower()] = tuple(sorted(feeding))
    except LineageError:
        raise
    except Exception as error:  # noqa: BLE001 - sqlglot's optimizer raises many kinds
        raise LineageError(f"{unique_id}: column lineage not traced: {error}") from None
    return result


def project_column_lineage(
    manifest: Mapping[str, Any], target_path: Path, unique_ids: Iterable[str] | None = None
) -> dict[str, Lineage]:
    """`model_column_lineage` of each model (default: every model) whose compiled SQL is under
    `target_path`; raises `LineageError` naming the first model that cannot be traced."""
    result: dict[str, Lineage] = {}
    for unique_id in model_ids(manifest) if unique_ids is None else unique_ids:
        path = compiled_sql_path(target_path, node_props(manifest, unique_id))
        if not path.exists():
            raise LineageError(f"{unique_id}: no compiled SQL at {path} (run dbt compile)")
        result[unique_id] = model_column_lineage(manifest, unique_id, path.read_text())
    return result
