"""The destinations declaration: loaded and validated once, used by the assets and the sandbox.

A YAML file rather than dbt `meta`: the sandbox and the sync assets need the declaration without a
dbt parse, operators edit one short file per destination change, and validation errors can name
the file and the field precisely.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from activation.lib.paths import destinations_file

SYNC_KEY_PREFIX = "activate"


def sync_asset_key_for(destination_key: str) -> dg.AssetKey:
    """`activate/<key>`: the asset of a destination's Hightouch sync (one place builds it)."""
    return dg.AssetKey([SYNC_KEY_PREFIX, destination_key])


def mart_asset_key(model_name: str) -> dg.AssetKey:
    """`marts/<model>`: the asset of a dbt model in the `marts` schema, which syncs read."""
    return dg.AssetKey(["marts", model_name])


DestinationType = Literal["salesforce", "hubspot", "iterable", "braze"]
WaitMode = Literal["attached", "detached", "auto"]
_IDENTIFIER = r"^[a-z][a-z0-9_]*$"
_SYNC_ID = r"^[0-9]+$"
_SYNC_SLUG = r"^[a-z0-9][a-z0-9-]*$"


class DestinationsFileError(ValueError):
    """The declaration is malformed; the message names the file and the field."""


class Owner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    team: str = Field(description="Team that owns the destination; shown in the asset graph.")
    slack_channel: str = Field(description="Slack channel told about this destination's runs.")
    pagerduty_routing_key_env: str = Field(
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Name of the environment variable holding the owner's PagerDuty routing key.",
    )


class FailurePolicy(BaseModel):
    """How many rows a Hightouch run may fail before the sync step fails (or warns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_failed_rows: int | None = Field(
        default=None, ge=0, description="Most failed rows a run may have; unset means no limit."
    )
    max_failed_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Largest share of planned rows that may fail (0.01 = 1 %); unset: no limit.",
    )
    on_exceed: Literal["fail", "warn"] = Field(
        default="fail", description="Fail the step, or only warn, when a limit is exceeded."
    )


class Guards(BaseModel):
    """Limits checked in the warehouse before a trigger; over a limit the sync is blocked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_removed_ratio: float | None = Field(default=None, ge=0, le=1)
    max_changed_ratio: float | None = Field(default=None, ge=0, le=1)
    max_removed_rows: int | None = Field(default=None, ge=0)
    max_changed_rows: int | None = Field(default=None, ge=0)
    required_columns: tuple[str, ...] = Field(
        default=(), description="Mapped columns that must never be null (primary key always is)."
    )


class StagingSync(BaseModel):
    """The staging twin of a destination's sync: same mart and mappings, a staging object.
    The promote job runs it first and asks for sign-off before the production sync."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sync_id: str | None = Field(default=None, pattern=_SYNC_ID)
    sync_slug: str | None = Field(default=None, pattern=_SYNC_SLUG)

    @model_validator(mode="after")
    def _needs_a_sync_reference(self) -> StagingSync:
        if not self.sync_id and not self.sync_slug:
            raise ValueError("give sync_id or sync_slug (or both) to name the staging sync")
        return self

    @property
    def sync_reference(self) -> str:
        """How the sync is named in messages: its id when known, else its slug."""
        return self.sync_id or f"slug {self.sync_slug}"


class Destination(BaseModel):
    """One Hightouch sync fed by one activation mart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=_IDENTIFIER, description="Stable name; becomes the asset key.")
    description: str = ""
    destination_type: DestinationType
    object: str = Field(description="The CRM object the sync writes (Account, contacts, users).")
    sync_id: str | None = Field(default=None, pattern=_SYNC_ID)
    sync_slug: str | None = Field(default=None, pattern=_SYNC_SLUG)
    staging: StagingSync | None = Field(
        default=None, description="The staging twin the promote job runs before this sync."
    )
    mart: str = Field(pattern=_IDENTIFIER, description="dbt model the sync reads.")
    primary_key: str = Field(pattern=_IDENTIFIER)
    mapped_columns: tuple[str, ...] = Field(min_length=1)
    owner: Owner
    after: tuple[str, ...] = Field(
        default=(), description="Keys of destinations whose sync must succeed before this one."
    )
    wave: int = Field(
        default=1, ge=1, description="Full-resync wave; wave 2 starts after wave 1 and a pause."
    )
    failure_policy: FailurePolicy = FailurePolicy()
    guards: Guards = Guards()
    destination_fields: tuple[tuple[str, str], ...] = Field(
        default=(),
        description="The destination field each mapped column (or the primary key) feeds, by "
        "column, e.g. {email: Email}; a column not named here feeds the field of its own name. "
        "Kept as (column, field) pairs so a destination stays hashable.",
    )
    mapping_drift: Literal["refuse", "warn"] = Field(
        default="refuse",
        description="When the sync's field mappings in Hightouch differ from this declaration "
        "(a field added or removed in Hightouch's UI): refuse the sync, or only warn.",
    )
    accepted_type_changes: tuple[tuple[str, str], ...] = Field(
        default=(),
        description="A reviewed type change of a synced column, by column, e.g. "
        "{login_count: bigint}: the schema contract lets the mart's column have this type "
        "although the last successful sync recorded another. Remove it once a sync shipped.",
    )
    wait: WaitMode = Field(
        default="auto",
        description="How the sync step waits for its Hightouch run. attached: the step follows "
        "the run to its end (a worker waits). detached: the step triggers (after the quality "
        "gate and the schema contract), records the run as in flight and ends; the "
        "detached_sync_sensor reports the sync's materialization and failed_rows check when the "
        "run ends (docs/detached-syncs.md). auto (default): detached when the sync's recent "
        "runs in Hightouch took longer than detach_after_seconds, else attached. A destination "
        "that another declares `after` always waits attached.",
    )
    detach_after_seconds: float = Field(
        default=900.0,
        gt=0,
        description="With wait: auto, the sync detaches when its recent successful runs in "
        "Hightouch took longer than this (the longest of them counts).",
    )

    @field_validator("destination_fields", "accepted_type_changes", mode="before")
    @classmethod
    def _text_by_column(cls, value: Any, info: ValidationInfo) -> Any:
        """The YAML gives a mapping {column: text}; each value must be a non-empty string."""
        what = "destination field's name" if info.field_name == "destination_fields" else "type"
        if isinstance(value, Mapping):
            for column, text in value.items():
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{column}: give the {what} as text")
            return tuple((str(column), text.strip()) for column, text in value.items())
        if value is None:
            return ()
        if isinstance(value, tuple):
            return value
        raise ValueError("give a mapping by mart column, e.g. {email: Email}")

    @model_validator(mode="after")
    def _needs_a_sync_reference(self) -> Destination:
        if not self.sync_id and not self.sync_slug:
            raise ValueError("give sync_id or sync_slug (or both) to name the Hightouch sync")
        for column in self.mapped_columns:
            if not re.match(_IDENTIFIER, column):
                raise ValueError(f"mapped column {column!r} is not a plain lower-case identifier")
        for column in self.guards.required_columns:
            if column not in self.mapped_columns:
                raise ValueError(f"guards.required_columns names {column!r}, not a mapped column")
        self._check_destination_fields()
        return self

    def _check_destination_fields(self) -> None:
        synced = (self.primary_key, *self.mapped_columns)
        for name, pairs in (
            ("destination_fields", self.destination_fields),
            ("accepted_type_changes", self.accepted_type_changes),
        ):
            for column, _ in pairs:
                if column not in synced:
                    raise ValueError(
                        f"{name} names {column!r}, neither the primary key nor a mapped column"
                    )
        fed: dict[str, str] = {}
        for column in synced:
            name = self.field_for(column)
            if name in fed:
                raise ValueError(
                    f"destination field {name!r} is fed by two columns ({fed[name]} and {column})"
                )
            fed[name] = column

    def field_for(self, column: str) -> str:
        """The destination field `column` feeds (the column's own name unless declared)."""
        return dict(self.destination_fields).get(column, column)

    @property
    def field_mappings(self) -> tuple[tuple[str, str], ...]:
        """(mart column, destination field) of each mapped column, in declared order."""
        return tuple((column, self.field_for(column)) for column in self.mapped_columns)

    @property
    def pool(self) -> str:
        """Dagster concurrency pool: runs take turns syncing the destination (docs/deployment.md
        notes the one race Dagster leaves open)."""
        return f"hightouch_{self.key}"

    @property
    def sync_reference(self) -> str:
        """How the sync is named in messages: its id when known, else its slug."""
        return self.sync_id or f"slug {self.sync_slug}"


class DestinationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    destinations: tuple[Destination, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_are_consistent(self) -> DestinationsFile:
        keys = [d.key for d in self.destinations]
        _refuse_duplicates("key", [(key, f"destinations[{i}]") for i, key in enumerate(keys)])
        # Production and staging references share one namespace: one Hightouch workspace.
        references: list[tuple[Destination | StagingSync, str]] = [
            (d, d.key) for d in self.destinations
        ]
        references += [(d.staging, f"{d.key}.staging") for d in self.destinations if d.staging]
        for field in ("sync_id", "sync_slug"):
            values = [(getattr(sync, field), where) for sync, where in references]
            _refuse_duplicates(field, [(value, where) for value, where in values if value])
        for destination in self.destinations:
            for upstream in destination.after:
                if upstream not in keys:
                    raise ValueError(
                        f"destination {destination.key!r}: after names unknown destination "
                        f"{upstream!r} (known: {', '.join(keys)})"
                    )
        _refuse_cycles({d.key: d.after for d in self.destinations})
        return self._resolve_waits()

    def _resolve_waits(self) -> DestinationsFile:
        """A destination that another runs `after` must wait attached: its dependants read its
        materialization in the same run. `detached` there is refused, `auto` becomes attached."""
        dependants = declared_dependants(self.destinations)
        resolved = []
        for index, destination in enumerate(self.destinations):
            after_it = dependants.get(destination.key)
            if after_it and destination.wait == "detached":
                raise ValueError(
                    f"destinations[{index}] ({destination.key}).wait: detached, but "
                    f"{', '.join(after_it)} declare(s) after: [{destination.key}] and need its "
                    "sync to end in the same run; use wait: attached (or auto)"
                )
            if after_it and destination.wait == "auto":
                destination = destination.model_copy(update={"wait": "attached"})
            resolved.append(destination)
        return self.model_copy(update={"destinations": tuple(resolved)})


def declared_dependants(destinations: Sequence[Destination]) -> dict[str, list[str]]:
    """Each destination key -> the keys of the destinations that declare `after` it, in file
    order (a destination nobody names is absent)."""
    dependants: dict[str, list[str]] = {}
    for destination in destinations:
        for upstream in destination.after:
            dependants.setdefault(upstream, []).append(destination.key)
    return dependants


def _refuse_duplicates(field: str, values: list[tuple[str, str]]) -> None:
    """`values` pairs each value with where it is declared, so the message names both places."""
    seen: dict[str, str] = {}
    for value, where in values:
        if value in seen:
            raise ValueError(f"{field} {value!r} is declared twice ({seen[value]} and {where})")
        seen[value] = where


def _refuse_cycles(after: dict[str, tuple[str, ...]]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(key: str, path: list[str]) -> None:
        if key in done:
            return
        if key in visiting:
            raise ValueError(f"after forms a cycle: {' -> '.join([*path, key])}")
        visiting.add(key)
        for upstream in after[key]:
            visit(upstream, [*path, key])
        visiting.discard(key)
        done.add(key)

    for key in after:
        visit(key, [])


def _location(loc: tuple[int | str, ...], raw: object) -> str:
    """`destinations[1] (hubspot_contacts).primary_key` from a pydantic error location."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            name = (
                node[item].get("key")
                if isinstance(node, list) and isinstance(node[item], dict)
                else None
            )
            parts[-1] = f"{parts[-1]}[{item}]" + (f" ({name})" if name else "")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: key {key!r} is repeated (first at line {first_line})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice. PyYAML keeps the last one silently:
    a second `destinations:` once dropped four of the five destinations without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[object, int] = {}
        for key_node, _ in node.value:
            # A `<<` merge may legitimately be overridden by an explicit key; only explicit
            # keys given twice are mistakes.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise _DuplicateKey(key, line, first_lines[key])
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_destinations(path: Path) -> tuple[Destination, ...]:
    """Read and validate a declaration file; errors name the file and the field."""
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError as error:
        raise DestinationsFileError(
            f"{path}: destinations file not found (set ACTIVATION_DESTINATIONS_FILE to another)"
        ) from error
    except _DuplicateKey as error:
        raise DestinationsFileError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise DestinationsFileError(f"{path}: not valid YAML: {error}") from error
    try:
        return DestinationsFile.model_validate(raw).destinations
    except ValidationError as error:
        problems = "; ".join(f"{_location(e['loc'], raw)}: {e['msg']}" for e in error.errors())
        raise DestinationsFileError(f"{path}: {problems}") from None


def validate_against_manifest(
    destinations: Sequence[Destination], manifest: Mapping[str, Any], path: Path
) -> None:
    """Refuse a declared mart that is not a dbt model, or a key or mapped column that is not
    one of that model's columns in the manifest (the columns listed in its schema yml).

    Without this a typo surfaces only when the sync runs (Hightouch reports a missing column),
    long after the code location loaded cleanly.
    """
    models: dict[str, dict[str, Any]] = {}
    for node in (manifest.get("nodes") or {}).values():
        if node.get("resource_type") == "model":
            models.setdefault(node["name"], node)
    problems: list[str] = []
    for index, destination in enumerate(destinations):
        where = f"{path}: destinations[{index}] ({destination.key})"
        model = models.get(destination.mart)
        if model is None:
            close = difflib.get_close_matches(destination.mart, models, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(
                f"{where}.mart: {destination.mart!r} is not a model in the dbt manifest{hint}"
            )
            continue
        columns = [name.lower() for name in model.get("columns") or {}]
        listed = ", ".join(columns) or "none listed in its schema yml"
        for field, names in (
            ("primary_key", (destination.primary_key,)),
            ("mapped_columns", destination.mapped_columns),
            ("guards.required_columns", destination.guards.required_columns),
        ):
            problems.extend(
                f"{where}.{field}: column {name!r} is not a column of model {destination.mart} "
                f"in the dbt manifest (columns: {listed})"
                for name in names
                if name not in columns
            )
    if problems:
        raise DestinationsFileError("; ".join(problems))


def validate_against_manifest_file(
    destinations: Sequence[Destination], manifest_path: Path, path: Path | None = None
) -> None:
    """`validate_against_manifest` on the prepared manifest. dagster-dbt parses the same file
    when definitions load; this is a second `json.loads` of it (tens of ms for a large one)."""
    manifest = json.loads(manifest_path.read_bytes())
    validate_against_manifest(destinations, manifest, path or destinations_file())


def syncs_waiting_behind(destinations: Sequence[Destination]) -> dict[str, int]:
    """Each destination key -> the length of the longest line of syncs waiting on it through
    `after` (directly or through others): 1 for Salesforce accounts, whose contacts wait on it;
    0 for a destination nobody waits on."""
    dependants = declared_dependants(destinations)

    @cache
    def line(key: str) -> int:  # `after` has no cycles: the declaration refuses them
        return max((1 + line(k) for k in dependants.get(key, ())), default=0)

    return {d.key: line(d.key) for d in destinations}


@cache
def load_destinations(path: Path | None = None) -> tuple[Destination, ...]:
    """The declaration in force (cached: it is read once per process)."""
    return parse_destinations(path or destinations_file())
