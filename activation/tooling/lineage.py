"""`activation lineage <destination>.<field>`: which raw source column feeds a CRM field.

The chain is read from the code, not from a run: the field's mart column comes from
destinations.yaml, and each model's column lineage from the SQL dbt compiles now (`dbt compile`
into a temporary folder: no warehouse is opened), traced by `activation.lib.column_lineage`, the
same tracing the dbt assets record on every build. For example:

    $ activation lineage salesforce_contacts.Email
    salesforce_contacts.Email: Salesforce Contact.Email (Hightouch sync 102)
      <- marts/mart_salesforce_contacts.email (varchar)
        <- staging/stg_customers.email
          <- raw/customers.email (source)

A destination is named by its key in destinations.yaml, or by its type and object
(`salesforce.Contact.Email`); the field by its destination field name or by its mart column.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activation.lib.column_lineage import (
    ColumnRef,
    Lineage,
    LineageError,
    load_manifest,
    node_props,
    project_column_lineage,
)
from activation.lib.destinations import Destination, load_destinations

DISPLAY_NAMES = {
    "salesforce": "Salesforce",
    "hubspot": "HubSpot",
    "iterable": "Iterable",
    "braze": "Braze",
}


class LineageRequestError(ValueError):
    """The field asked for is not a declared destination field; the message lists the known."""


@dataclass(frozen=True)
class FieldRequest:
    destination: Destination
    column: str
    field: str


def resolve_field(spec: str, destinations: Sequence[Destination]) -> FieldRequest:
    """`<destination key>.<field>` or `<type>.<object>.<field>`; the field by its destination
    name (case-insensitive when unambiguous) or by the mart column feeding it."""
    head, dot, wanted = spec.strip().rpartition(".")
    if not dot or not head or not wanted:
        raise LineageRequestError(f"{spec!r}: give <destination>.<field>, e.g. braze_users.email")
    matches = [d for d in destinations if d.key == head] or [
        d for d in destinations if f"{d.destination_type}.{d.object}".lower() == head.lower()
    ]
    if not matches:
        known = ", ".join(d.key for d in destinations)
        raise LineageRequestError(f"{spec!r}: no destination {head!r} (known: {known})")
    if len(matches) > 1:
        keys = ", ".join(d.key for d in matches)
        raise LineageRequestError(f"{spec!r}: {head!r} names several destinations ({keys})")
    destination = matches[0]
    synced = [(destination.primary_key, destination.field_for(destination.primary_key))]
    synced += list(destination.field_mappings)
    exact = [pair for pair in synced if pair[1] == wanted]
    loose = [pair for pair in synced if pair[1].lower() == wanted.lower()]
    by_column = [pair for pair in synced if pair[0] == wanted.lower()]
    found = exact or (loose if len(loose) == 1 else []) or by_column
    if not found:
        fields = ", ".join(name for _, name in synced)
        raise LineageRequestError(
            f"{spec!r}: {destination.key} has no field {wanted!r} (fields: {fields})"
        )
    column, name = found[0]
    return FieldRequest(destination, column, name)


@dataclass
class LineageNode:
    """A column in the chain and the columns feeding it."""

    label: str
    parents: list[LineageNode] = field(default_factory=list)


def _asset_label(manifest: Mapping[str, Any], ref: ColumnRef) -> str:
    from activation.defs.transform.dbt import ActivationDbtTranslator

    props = node_props(manifest, ref.node_id)
    key = ActivationDbtTranslator().get_asset_key(props).to_user_string()
    declared = ((props.get("columns") or {}).get(ref.column) or {}).get("data_type")
    if props.get("resource_type") == "source":
        return f"{key}.{ref.column} (source)"
    return f"{key}.{ref.column}" + (f" ({declared})" if declared else "")


def _column_node(
    manifest: Mapping[str, Any], lineage: Mapping[str, Lineage], ref: ColumnRef
) -> LineageNode:
    node = LineageNode(_asset_label(manifest, ref))
    if ref.node_id not in lineage:
        return node  # a source (or a node that is not a model): the chain ends here
    feeding = lineage[ref.node_id].get(ref.column)
    if feeding is None:
        node.parents.append(LineageNode(f"(column {ref.column} is not selected by the model)"))
    elif not feeding:
        node.parents.append(LineageNode("(no source column: a constant or a computed value)"))
    node.parents.extend(_column_node(manifest, lineage, parent) for parent in feeding or ())
    return node


def field_lineage(
    request: FieldRequest, manifest: Mapping[str, Any], lineage: Mapping[str, Lineage]
) -> LineageNode:
    """The chain from the destination field back to the raw source columns."""
    d = request.destination
    models = [
        unique_id
        for unique_id, props in (manifest.get("nodes") or {}).items()
        if props.get("resource_type") == "model" and props.get("name") == d.mart
    ]
    if not models:
        raise LineageRequestError(f"{d.mart} (the mart of {d.key}) is not a dbt model")
    title = (
        f"{d.key}.{request.field}: {DISPLAY_NAMES.get(d.destination_type, d.destination_type)} "
        f"{d.object}.{request.field} (Hightouch sync {d.sync_reference})"
    )
    root = LineageNode(title)
    root.parents.append(_column_node(manifest, lineage, ColumnRef(models[0], request.column)))
    return root


def render(node: LineageNode, depth: int = 0) -> list[str]:
    prefix = "" if depth == 0 else "  " * depth + "<- "
    lines = [prefix + node.label]
    for parent in node.parents:
        lines.extend(render(parent, depth + 1))
    return lines


def compile_project(target_path: Path) -> Path:
    """`dbt compile` of the project in force into `target_path`, without opening the warehouse
    (no cache population, no introspective queries); returns the manifest it wrote."""
    from activation.core.dbt_project import dbt_project

    beside_python = Path(sys.executable).parent / "dbt"
    dbt = str(beside_python) if beside_python.exists() else "dbt"
    result = subprocess.run(
        [
            *(dbt, "--no-use-colors", "compile", "--quiet"),
            *("--no-populate-cache", "--no-introspect"),
            *("--project-dir", str(dbt_project.project_dir)),
            *("--profiles-dir", str(dbt_project.profiles_dir)),
            *("--target", str(dbt_project.target)),
            *("--target-path", str(target_path)),
            *("--log-path", str(target_path / "logs")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LineageError(f"dbt compile failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return target_path / "manifest.json"


def lineage_report(specs: Sequence[str], target_path: Path) -> list[str]:
    """The chains of `specs`, one block each, from the project compiled into `target_path`."""
    destinations = load_destinations()
    requests = [resolve_field(spec, destinations) for spec in specs]
    manifest = load_manifest(compile_project(target_path))
    lineage = project_column_lineage(manifest, target_path)
    lines: list[str] = []
    for request in requests:
        if lines:
            lines.append("")
        lines.extend(render(field_lineage(request, manifest, lineage)))
    return lines


def run_lineage(specs: Sequence[str]) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="activation-lineage-") as folder:
            lines = lineage_report(specs, Path(folder))
    except (LineageRequestError, LineageError) as error:
        print(f"activation lineage: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
