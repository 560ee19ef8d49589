"""The schema contract at the activation edge: what a sync reads must still be what it was.

The costliest reverse-ETL failure passes every dbt test: a mart column renamed or retyped, and the
CRM field it feeds silently goes empty for every record. Before every trigger (production and
staging syncs alike) the sync path asks `contract_verdict` for the sync's `schema_contract`
check (activation/core/verdicts.py). It compares three things:

- the mart in the warehouse (`information_schema.columns`, the same query on DuckDB and
  PostgreSQL): every column the sync reads (primary key, declared mapped columns, the columns the
  live Hightouch sync references) must exist. A missing one refuses, naming the field it feeds;
- the types those columns had when this destination last synced successfully, recorded on the
  sync asset's materialization (`mart_column_types`, put there from `record_on_success`): a
  changed type refuses, naming the old and new type and the field. With no earlier record there is
  nothing to compare, and the check says so;
- the sync as Hightouch holds it now (`GET /syncs/{id}`) against destinations.yaml: a mapping
  added or removed in Hightouch's UI refuses or warns, as the destination's `mapping_drift`
  declares (default refuse); a different primary key always refuses.

Types are compared by their canonical names (`canonical_type`), so `character varying` and
`varchar` are the same type, and a decimal's precision and scale count.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext, OpExecutionContext

from activation.core.verdicts import PreSyncVerdict
from activation.dagster_api import events_of_run
from activation.lib.destinations import (
    Destination,
    load_destinations,
    mart_asset_key,
    sync_asset_key_for,
)
from activation.lib.hightouch import (
    HightouchClient,
    HightouchError,
    HightouchRequestRefused,
    HightouchSync,
)
from activation.lib.warehouse import warehouse_connection

CONTRACT_CHECK = "schema_contract"
COLUMN_TYPES_METADATA = "mart_column_types"
"""Materialization metadata of a sync: {"mart": name, "columns": {column: canonical type}}."""
MART_SCHEMA = "marts"
_HISTORY = 20  # materializations read back to find the last one recording the types

StepContext = AssetExecutionContext | OpExecutionContext

_SYNONYMS = {
    "character varying": "varchar",
    "text": "varchar",
    "string": "varchar",
    "char varying": "varchar",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "int2": "smallint",
    "long": "bigint",
    "numeric": "decimal",
    "float8": "double",
    "double precision": "double",
    "float4": "float",
    "real": "float",
    "bool": "boolean",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "timestamp_ns": "timestamp",
}


def canonical_type(
    data_type: str, precision: object = None, scale: object = None, length: object = None
) -> str:
    """One name per type across engines: `character varying` and `VARCHAR` are `varchar`,
    `numeric` with precision 12 and scale 2 and `DECIMAL(12,2)` are `decimal(12,2)`."""
    text = " ".join(str(data_type).lower().split())
    base, _, arguments = text.partition("(")
    base = _SYNONYMS.get(base.strip(), base.strip())
    if arguments:
        return f"{base}({arguments.replace(' ', '')}"
    if base == "decimal" and isinstance(precision, int) and isinstance(scale, int):
        return f"decimal({precision},{scale})"
    if base == "varchar" and isinstance(length, int):
        return f"varchar({length})"
    return base


# -- the check's definition --------------------------------------------------------------------


def contract_check_spec(destination: Destination) -> dg.AssetCheckSpec:
    """The `schema_contract` check every sync asset carries."""
    return dg.AssetCheckSpec(
        CONTRACT_CHECK,
        asset=sync_asset_key_for(destination.key),
        description=f"Before anything is sent to {destination.destination_type} "
        f"{destination.object}: every column this sync sends still exists in "
        f"{destination.mart} with the type it had at the last successful sync, and the field "
        "mappings in Hightouch match destinations.yaml. Otherwise the sync is held back, so no "
        "field is silently emptied or filled with the wrong kind of value; the check names the "
        "column and the field it feeds.",
    )


# -- reading what is compared ------------------------------------------------------------------


def mart_columns_sql(mart: str) -> str:
    """The mart's columns in order, from information_schema (DuckDB and PostgreSQL alike);
    `mart` is a validated identifier from destinations.yaml."""
    return (
        "SELECT column_name, data_type, numeric_precision, numeric_scale, "
        "character_maximum_length FROM information_schema.columns "
        f"WHERE table_schema = '{MART_SCHEMA}' AND table_name = '{mart}' "
        "ORDER BY ordinal_position"
    )


def read_mart_columns(mart: str) -> dict[str, str]:
    """Column -> canonical type of `marts.<mart>` in the warehouse (empty: no such table)."""
    with warehouse_connection(read_only=True) as session:
        rows = session.rows(mart_columns_sql(mart))
    return {
        str(name).lower(): canonical_type(str(kind), precision, scale, length)
        for name, kind, precision, scale, length in rows
    }


@dataclass(frozen=True)
class RecordedTypes:
    """The column types the last successful sync recorded, and the run that recorded them."""

    run_id: str
    columns: Mapping[str, str]


def recorded_types(
    instance: dg.DagsterInstance, destination: Destination, log: Any = None
) -> RecordedTypes | None:
    """The types on the newest materialization of the sync asset that recorded them for this
    destination's mart. A materialization reported outside any run is not the record of a sync
    (anyone can report one through the webserver): it is skipped, except the report of a
    detached sync, whose types are then read from the in-flight record its run wrote
    (`_detached_record`), never from the runless event itself."""
    key = sync_asset_key_for(destination.key)
    for record in instance.fetch_materializations(key, limit=_HISTORY).records:
        materialization = record.event_log_entry.asset_materialization
        value = materialization.metadata.get(COLUMN_TYPES_METADATA) if materialization else None
        if value is None:
            continue
        run_id = record.run_id
        if not run_id and materialization is not None:
            value, run_id = _detached_record(instance, key, materialization.metadata)
        if value is None or not run_id:
            if log is not None:
                log.warning(f"{destination.key}: column types reported outside a run ignored")
            continue
        recorded = value.value
        if isinstance(recorded, str):
            recorded = json.loads(recorded)
        if not isinstance(recorded, Mapping) or recorded.get("mart") != destination.mart:
            continue
        columns = recorded.get("columns")
        if isinstance(columns, Mapping):
            return RecordedTypes(run_id, {str(c): str(t) for c, t in columns.items()})
    return None


def _detached_record(
    instance: dg.DagsterInstance, key: dg.AssetKey, metadata: Mapping[str, dg.MetadataValue]
) -> tuple[dg.MetadataValue | None, str]:
    """For the detached-sync sensor's report of a Hightouch run: the column types the run that
    left it in flight recorded in its in-flight mark (written inside that run), and that run's
    id; (None, "") when no such run recorded this Hightouch run."""
    run_value, hightouch_value = metadata.get("dagster_run_id"), metadata.get("hightouch_run_id")
    if run_value is None or hightouch_value is None:
        return None, ""
    run_id, hightouch_run_id = str(run_value.value), str(hightouch_value.value)
    if instance.get_run_by_id(run_id) is None:
        return None, ""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION
    ).records
    for entry in records:
        observation = entry.event_log_entry.asset_observation
        if observation is None or observation.asset_key != key:
            continue
        marked = observation.metadata
        if (
            str(getattr(marked.get("activation_trigger"), "value", "")) == "detached"
            and str(getattr(marked.get("hightouch_run_id"), "value", "")) == hightouch_run_id
        ):
            return marked.get(COLUMN_TYPES_METADATA), run_id
    return None, ""


# -- judging -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """How the live mappings differ from the declared ones."""

    only_in_hightouch: tuple[tuple[str | None, str], ...] = ()
    only_declared: tuple[tuple[str, str], ...] = ()
    external_id: str | None = None

    def __bool__(self) -> bool:
        return bool(self.only_in_hightouch or self.only_declared or self.external_id)

    def lines(self, target: str) -> list[str]:
        lines = [
            f"+ {target}.{name} <- {column or '(no column)'}  (in Hightouch, not declared)"
            for column, name in self.only_in_hightouch
        ]
        lines += [
            f"- {target}.{name} <- {column}  (declared, not in Hightouch)"
            for column, name in self.only_declared
        ]
        if self.external_id:
            lines.append(f"~ {self.external_id}")
        return lines


@dataclass
class Findings:
    """Everything the contract check found wrong, as refusals and warnings."""

    problems: list[str] = field(default_factory=list)
    refusing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warning_names: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    """Type changes declared as reviewed (`accepted_type_changes`): said, not refused."""


def mapping_drift(destination: Destination, live: HightouchSync) -> Drift | None:
    """The difference between Hightouch's mappings and the declared ones; None when Hightouch's
    configuration holds no readable mappings (nothing to compare)."""
    if live.mappings is None:
        return None
    declared = list(destination.field_mappings)
    live_pairs = [(m.column, m.field) for m in live.mappings]
    external = None
    declared_key = (destination.primary_key, destination.field_for(destination.primary_key))
    mapping = live.external_id_mapping
    if mapping is not None and (mapping.column, mapping.field) != declared_key:
        external = (
            f"external id: Hightouch matches records on {mapping.field} <- "
            f"{mapping.column or '(no column)'}, declared {declared_key[1]} <- {declared_key[0]}"
        )
    return Drift(
        only_in_hightouch=tuple(pair for pair in live_pairs if pair not in declared),
        only_declared=tuple(pair for pair in declared if pair not in live_pairs),
        external_id=external,
    )


def _fields_fed(destination: Destination, live: HightouchSync | None) -> dict[str, list[str]]:
    """Each column the sync reads -> the destination fields it feeds (declared, then live)."""
    fed: dict[str, list[str]] = {
        destination.primary_key: [destination.field_for(destination.primary_key)]
    }
    for column, name in destination.field_mappings:
        fed.setdefault(column, []).append(name)
    if live is not None:
        for mapping in live.mappings or ():
            if mapping.column and mapping.field not in fed.get(mapping.column, []):
                fed.setdefault(mapping.column, []).append(mapping.field)
        for column in (*live.referenced_columns, live.primary_key or destination.primary_key):
            fed.setdefault(column, [])
    return fed


def _feeds(destination: Destination, names: Sequence[str]) -> str:
    return ", ".join(f"{destination.object}.{name}" for name in names) or "no mapped field"


def _renamed_hint(
    column: str,
    mart_columns: Mapping[str, str],
    fed: Mapping[str, object],
    recorded: RecordedTypes | None,
) -> str:
    """`, perhaps renamed email_address` when a column new to the mart looks like `column`."""
    new = [
        c for c in mart_columns if c not in fed and (recorded is None or c not in recorded.columns)
    ]
    close = difflib.get_close_matches(column, new, n=1, cutoff=0.5)
    return f", perhaps renamed {close[0]}" if close else ""


def judge_contract(
    destination: Destination,
    *,
    sync_id: str,
    mart_columns: Mapping[str, str],
    live: HightouchSync,
    recorded: RecordedTypes | None,
) -> PreSyncVerdict:
    """The `schema_contract` verdict from what was read (pure: no I/O)."""
    fed = _fields_fed(destination, live)
    findings = Findings()
    where = f"{MART_SCHEMA}.{destination.mart}"
    if not mart_columns:
        findings.problems.append(f"{where} does not exist in the warehouse")
        findings.refusing.append(f"mart {where}")
    for column, names in fed.items():
        feeds = _feeds(destination, names)
        short = f"column {column} ({feeds})"
        if mart_columns and column not in mart_columns:
            findings.problems.append(
                f"column {column} is missing from {where} (it feeds {feeds})"
                + _renamed_hint(column, mart_columns, fed, recorded)
            )
            findings.refusing.append(short)
            continue
        before = recorded.columns.get(column) if recorded else None
        now = mart_columns.get(column)
        accepted = dict(destination.accepted_type_changes).get(column)
        if before is not None and now is not None and before != now:
            if accepted is not None and canonical_type(accepted) == now:
                findings.accepted.append(
                    f"column {column} changed type from {before} to {now}, as accepted in "
                    "destinations.yaml (accepted_type_changes)"
                )
                continue
            findings.problems.append(
                f"column {column} changed type from {before} to {now} since the last successful "
                f"sync (run {recorded.run_id if recorded else '?'}) (it feeds {feeds})"
            )
            findings.refusing.append(short)
    if live.primary_key and live.primary_key != destination.primary_key:
        findings.problems.append(
            f"Hightouch matches records on primary key {live.primary_key}, destinations.yaml "
            f"declares {destination.primary_key} (the guards and snapshots measure the "
            "declared one)"
        )
        findings.refusing.append("primary key")
    drift = mapping_drift(destination, live)
    drift_lines = drift.lines(destination.object) if drift else []
    if drift:
        sentence = "the field mappings in Hightouch differ from destinations.yaml: " + "; ".join(
            line[2:] for line in drift_lines
        )
        names = [
            f"mapping {destination.object}.{name} (only in Hightouch)"
            for _, name in drift.only_in_hightouch
        ] + [
            f"mapping {destination.object}.{name} (not in Hightouch)"
            for _, name in drift.only_declared
        ]
        names += ["external id mapping"] if drift.external_id else []
        if destination.mapping_drift == "refuse":
            findings.problems.append(sentence + " (mapping_drift: refuse)")
            findings.refusing.extend(names)
        else:
            findings.warnings.append(sentence + " (mapping_drift: warn)")
            findings.warning_names.extend(names)
    metadata = _metadata(destination, sync_id, mart_columns, live, recorded, drift_lines)
    record = (
        {
            COLUMN_TYPES_METADATA: dg.MetadataValue.json(
                {"mart": destination.mart, "columns": dict(mart_columns)}
            )
        }
        if mart_columns
        else {}
    )
    label = f"{destination.key} (Hightouch sync {sync_id})"
    if findings.problems:
        metadata["contract_problems"] = dg.MetadataValue.text(", ".join(findings.refusing))
        return PreSyncVerdict(
            CONTRACT_CHECK,
            passed=False,
            description=f"Schema contract broken for {label}: "
            + "; ".join(findings.problems + findings.warnings)
            + ".",
            metadata=metadata,
            refusing=tuple(findings.refusing),
            record_on_success=record,
        )
    if findings.warnings:
        metadata["contract_problems"] = dg.MetadataValue.text(", ".join(findings.warning_names))
        return PreSyncVerdict(
            CONTRACT_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"Schema contract of {label} holds for the declared columns, but "
            + "; ".join(findings.warnings)
            + ". The sync goes ahead.",
            metadata=metadata,
            refusing=tuple(findings.warning_names),
            record_on_success=record,
        )
    compared = (
        f"with the types of the last successful sync (run {recorded.run_id})"
        if recorded
        else "(no earlier successful sync recorded their types, so types were not compared)"
    )
    mapped = (
        f"the {len(live.mappings)} field mappings in Hightouch match destinations.yaml"
        if live.mappings is not None
        else "Hightouch's configuration lists no mappings to compare with destinations.yaml"
    )
    return PreSyncVerdict(
        CONTRACT_CHECK,
        passed=True,
        description=f"Schema contract holds for {label}: {where} has the {len(fed)} columns "
        f"the sync reads {compared}, and {mapped}."
        + "".join(f" Note: {note}." for note in findings.accepted),
        metadata=metadata,
        record_on_success=record,
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def _metadata(
    destination: Destination,
    sync_id: str,
    mart_columns: Mapping[str, str],
    live: HightouchSync,
    recorded: RecordedTypes | None,
    drift_lines: list[str],
) -> dict[str, dg.MetadataValue]:
    """The mart's column schema and the mapping table a reviewer reads on the check."""
    live_fields: dict[str, list[str]] = {}
    for mapping in live.mappings or ():
        live_fields.setdefault(mapping.column or "(no column)", []).append(mapping.field)
    rows = [(destination.primary_key, [destination.field_for(destination.primary_key)])]
    rows += [(column, [name]) for column, name in destination.field_mappings]
    rows += [(column, []) for column in live_fields if column not in {c for c, _ in rows}]
    table = [
        "| mart column | type now | type at last sync | declared field | field in Hightouch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for column, declared in rows:
        in_hightouch = live_fields.get(column, [])
        if column == destination.primary_key and live.external_id_mapping is not None:
            in_hightouch = [*in_hightouch, live.external_id_mapping.field]
        cells = (
            column,
            mart_columns.get(column, "MISSING"),
            (recorded.columns.get(column) if recorded else None) or "-",
            ", ".join(f"{destination.object}.{n}" for n in declared) or "-",
            ", ".join(f"{destination.object}.{n}" for n in in_hightouch)
            if live.mappings is not None
            else "?",
        )
        table.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    return {
        "mart_column_schema": dg.MetadataValue.table_schema(
            dg.TableSchema(
                columns=[dg.TableColumn(name, kind) for name, kind in mart_columns.items()]
            )
        ),
        "field_mappings": dg.MetadataValue.md("\n".join(table)),
        "mapping_drift": dg.MetadataValue.md(
            "```\n" + "\n".join(drift_lines) + "\n```" if drift_lines else "none"
        ),
        "mapping_drift_policy": dg.MetadataValue.text(destination.mapping_drift),
        "hightouch_sync_id": dg.MetadataValue.text(sync_id),
        "types_compared_with_run": dg.MetadataValue.text(
            recorded.run_id if recorded else "none (no earlier successful sync recorded types)"
        ),
    }


# -- the decision on the sync path -------------------------------------------------------------


def contract_verdict(
    context: StepContext, destination: Destination, client: HightouchClient, sync_id: str
) -> PreSyncVerdict:
    """The `schema_contract` decision for the sync `sync_id` of `destination` (its production
    sync or its staging twin), taken on the sync path before any trigger.

    A mart that cannot be read refuses (it cannot be vouched for). Hightouch not answering is a
    failure of the step, not a verdict: retried when transient, not when Hightouch refuses the
    request (an unknown sync id).
    """
    try:
        live = client.get_sync(sync_id)
    except HightouchRequestRefused as error:
        raise dg.Failure(
            description=f"{destination.key}: schema contract not checked: {error}",
            allow_retries=False,
        ) from None
    except HightouchError as error:
        raise dg.Failure(
            description=f"{destination.key}: schema contract not checked: {error}",
            allow_retries=True,
        ) from None
    try:
        columns = read_mart_columns(destination.mart)
    except Exception as error:  # noqa: BLE001 - DuckDB's or PostgreSQL's errors alike
        where = f"{MART_SCHEMA}.{destination.mart}"
        verdict = PreSyncVerdict(
            CONTRACT_CHECK,
            passed=False,
            description=f"Schema contract of {destination.key} (Hightouch sync {sync_id}) not "
            f"checked: the columns of {where} could not be read ({error}).",
            metadata={"hightouch_sync_id": dg.MetadataValue.text(sync_id)},
            refusing=(f"mart {where} unreadable",),
        )
        context.log.error(verdict.description)
        return verdict
    recorded = recorded_types(context.instance, destination, context.log)
    verdict = judge_contract(
        destination, sync_id=sync_id, mart_columns=columns, live=live, recorded=recorded
    )
    if verdict.passed:
        context.log.info(verdict.description)
    elif verdict.blocks:
        context.log.error(verdict.description)
    else:
        context.log.warning(verdict.description)
    return verdict


# -- definition-time metadata of the sync asset ------------------------------------------------


@lru_cache(maxsize=4)
def _model_columns(manifest_path: str, mtime_ns: int) -> dict[str, dict[str, str | None]]:
    """Model name -> column -> contract `data_type` (None when undeclared), from the manifest."""
    manifest = json.loads(Path(manifest_path).read_bytes())
    models: dict[str, dict[str, str | None]] = {}
    for node in (manifest.get("nodes") or {}).values():
        if node.get("resource_type") == "model":
            models.setdefault(
                node["name"],
                {
                    str(name).lower(): (column or {}).get("data_type")
                    for name, column in (node.get("columns") or {}).items()
                },
            )
    return models


def sync_column_metadata(destination: Destination, manifest_path: Path) -> dict[str, object]:
    """`dagster/column_schema` (the destination fields and their types, from the mart's dbt
    contract) and `dagster/column_lineage` (each field <- its mart column) of the sync asset.
    Reads the manifest only (cached per file version): cheap enough for definitions load."""
    path = Path(manifest_path)
    columns = _model_columns(str(path), path.stat().st_mtime_ns).get(destination.mart, {})
    mart = mart_asset_key(destination.mart)
    synced = [(destination.primary_key, destination.field_for(destination.primary_key))]
    synced += list(destination.field_mappings)
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                columns.get(column) or "?",
                description=f"From {MART_SCHEMA}.{destination.mart}.{column}"
                + (" (primary key)" if column == destination.primary_key else ""),
            )
            for column, name in synced
        ]
    )
    lineage = dg.TableColumnLineage(
        deps_by_column={
            name: [dg.TableColumnDep(asset_key=mart, column_name=column)] for column, name in synced
        }
    )
    return {
        "dagster/column_schema": dg.MetadataValue.table_schema(schema),
        "dagster/column_lineage": dg.MetadataValue.column_lineage(lineage),
    }


# -- the demo's one line per destination --------------------------------------------------------


def contract_summary_lines_from(
    evaluations: Iterable[dg.AssetCheckEvaluation],
    destinations: Sequence[Destination] | None = None,
) -> list[str]:
    """One line per destination saying whether its contract held, from a run's check
    evaluations (the last `schema_contract` evaluation of each sync asset counts)."""
    latest: dict[dg.AssetKey, dg.AssetCheckEvaluation] = {}
    for evaluation in evaluations:
        if evaluation.check_name == CONTRACT_CHECK:
            latest[evaluation.asset_key] = evaluation
    lines = []
    for destination in destinations if destinations is not None else load_destinations():
        found = latest.get(sync_asset_key_for(destination.key))
        target = f"{destination.destination_type} {destination.object}"
        if found is None:
            status = "contract not checked in this run (the sync did not start)"
        elif found.passed:
            status = f"contract holds (marts.{destination.mart} -> {target})"
        else:
            problems = found.metadata.get("contract_problems")
            named = str(problems.value) if problems is not None else "see the check"
            if found.severity == dg.AssetCheckSeverity.WARN:
                status = f"contract holds, with a warning: {named}"
            else:
                status = f"contract BROKEN, sync held back: {named}"
        lines.append(f"{destination.key}: {status}")
    return lines


def contract_summary_lines(
    instance: dg.DagsterInstance, run_id: str, destinations: Sequence[Destination] | None = None
) -> list[str]:
    """`contract_summary_lines_from` the check evaluations recorded in the run `run_id`."""
    entries = events_of_run(instance, run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [e.dagster_event.asset_check_evaluation_data for e in entries if e.dagster_event]
    return contract_summary_lines_from(evaluations, destinations)
